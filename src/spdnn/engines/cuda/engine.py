"""The CUDA engine: CuPy for memory and launches, CUDA C++ kernels compiled at run time.

Design (details in ``kernels/layer.cu`` and :mod:`.layout`):

* activations are dense, sample-major rows of the *alive* samples only, in two device
  buffers used in turn; ``ids`` says which sample each row is;
* one kernel per layer (gather, warp-sliced ELLPACK weights, inputs staged in shared
  memory, register tile over samples, fused bias/ReLU/cap). When a block owns whole
  samples it also drops the dead ones (an atomic counter hands out output rows); when
  the outputs are sliced over blocks a second kernel compacts the survivors;
* identical weight columns (RadiX-Net layers have N/16 distinct ones) are summed once
  and expanded to the outputs in the epilogue (``dedupe``; exact, same terms and order);
  a per-sample *warp kernel* (``kernel='warp'``: no block barrier, one warp a sample)
  is the measured alternative for small rows;
* the survivor count of every layer stays on the device (``counts[k]``); kernels read
  their own work size from it, so the whole layer loop is captured once in a CUDA
  graph and replayed with one launch; the counts are read back once at the end;
* weights: one value per layer (no value loads; summed then scaled once when it is a
  power of two), else half precision when exact, else the activation type;
* memory: when the weights do not fit beside the activations they stay in pinned host
  memory and stream through two device slots (copy of layer k+1 overlapped with layer
  k, two streams and events); when the features do not fit, :meth:`CudaEngine.run`
  runs them in batches.

Nothing here imports CuPy at module import time.
"""
from __future__ import annotations

import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ...config import cupy_status, env_flag
from ...errors import DeviceMemoryError, EngineUnavailableError, OptionError, SpdnnError
from ...network import Network, as_features
from ..base import Engine
from .layout import (VALUE_ARRAY, KernelConfig, choose_config, entry_values,
                     narrowest_exact_dtype, pack_layer, unique_columns, value_plan)

__all__ = ["CudaEngine"]

KERNEL_DIR = Path(__file__).parent / "kernels"
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
           np.dtype(np.float16): "unsigned short"}


def _cupy():
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise EngineUnavailableError(f"cuda engine: {exc}; install with: pip install 'spdnn[gpu]'") from exc
    return cupy


@functools.lru_cache(maxsize=None)
def _module(device_id: int, filename: str, names: tuple[str, ...]):
    """The RawModule of ``kernels/<filename>`` with these template instances, per device.

    Compiled on first use (CuPy also keeps the binary in its on-disk cache).
    """
    cp = _cupy()
    code = (KERNEL_DIR / filename).read_text()
    with cp.cuda.Device(device_id):
        return cp.RawModule(code=code, options=("-std=c++17",), name_expressions=list(names))


def _kernel(device_id: int, filename: str, names: tuple[str, ...], name: str):
    with _cupy().cuda.Device(device_id):
        return _module(device_id, filename, names).get_function(name)


def _map_layers(fn, depth: int, *, start: int = 0) -> list:
    """[fn(k) for k in start..depth-1], on host threads (numpy releases the GIL)."""
    workers = min(16, os.cpu_count() or 1, max(depth - start, 1))
    if workers <= 1:
        return [fn(k) for k in range(start, depth)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, range(start, depth)))


def _blocks_per_sm(kernel, threads: int, smem: int, device) -> int:
    """Resident blocks per multiprocessor (registers, shared memory, threads)."""
    attrs = device.attributes
    regs = max(int(kernel.num_regs), 1)
    regs_per_warp = -(-regs * 32 // 256) * 256
    by_regs = attrs.get("MaxRegistersPerMultiprocessor", 65536) // (regs_per_warp * (threads // 32))
    by_threads = attrs.get("MaxThreadsPerMultiProcessor", 2048) // threads
    static = int(kernel.shared_size_bytes)
    by_smem = attrs.get("MaxSharedMemoryPerMultiprocessor", 228 * 1024) // (smem + static + 1024)
    return max(1, min(by_regs, by_threads, by_smem, 32))


class CudaEngine(Engine):
    """CUDA engine (see the module docstring).

    Parameters
    ----------
    precision : {'fp32', 'fp64'}
        fp64 reproduces the float64 reference bit for bit.
    progress : bool
        Unused (the layer loop runs on the device).
    device : int, optional
        CUDA device id (default: the current device).
    memory_cap_bytes : int, optional
        Device memory the engine may use (default: 90% of what is free).
    batch_samples : int, optional
        Most samples on the device at once (default: as many as fit).
    stream_weights : {None, 'auto', True, False}
        Keep the weights in pinned host memory and stream them layer by layer;
        'auto'/None: only when they do not fit beside the activations.
    use_graph : bool
        Capture the layer loop in a CUDA graph (ignored while streaming or debugging).
    config : KernelConfig or dict, optional
        Force a blocking (benchmarks); default :func:`.layout.choose_config`.
    debug : bool, optional
        Synchronize and check after every launch (default: ``SPDNN_CUDA_DEBUG=1``).
    values : {'auto', 'array', 'full'}
        How weights reach the kernel: 'auto' uses one value per layer where it can,
        else the narrowest exact type; 'array' always loads per-entry values in the
        narrowest exact type (fp16 where exact); 'full' in the activation type
        (benchmarks of the value techniques).
    dedupe : {'auto', True, False}
        Compute each distinct weight column once per layer (exact: identical columns
        give identical sums). 'auto': when every layer has at most N/2 distinct columns.
    poison : float, optional
        Fill the activation buffers with this value at every :meth:`load` (tests: a
        kernel that reads a row nothing wrote then gives wrong categories).
    kernel : {'auto', 'block', 'warp'}
        Kernel for deduplicated layers: 'warp' (one warp per sample) or 'block' (register
        tile of samples per block; also 'auto', the faster on an H100).
    prefetch : bool
        Block kernel with whole rows staged (one chunk): load the next work item's inputs
        into registers while the current one is computed (see ``kernels/layer.cu``).
        Exact, but measured 9-15% slower on an H100 (fewer resident blocks), so off by
        default (benchmarks/RESULTS.md, v6).
    """

    name = "cuda"
    device = "gpu"

    def __init__(self, *, precision: str = "fp32", progress: bool = False, device: int | None = None,
                 memory_cap_bytes: int | None = None, batch_samples: int | None = None,
                 stream_weights=None, use_graph: bool = True, config=None, debug: bool | None = None,
                 poison: float | None = None, values: str = "auto", dedupe="auto", kernel: str = "auto",
                 prefetch: bool = False):
        super().__init__(precision=precision, progress=progress)
        if stream_weights not in (None, "auto", True, False):
            raise OptionError(f"stream_weights={stream_weights!r}: expected None, 'auto', True or False")
        if memory_cap_bytes is not None and int(memory_cap_bytes) <= 0:
            raise OptionError(f"memory_cap_bytes={memory_cap_bytes!r}: expected a positive integer")
        if batch_samples is not None and int(batch_samples) <= 0:
            raise OptionError(f"batch_samples={batch_samples!r}: expected a positive integer")
        if isinstance(config, dict):
            config = KernelConfig(**config)
        if config is not None and not isinstance(config, KernelConfig):
            raise OptionError(f"config={config!r}: expected a KernelConfig or a dict of its fields")
        self.device_id = device
        self.memory_cap_bytes = None if memory_cap_bytes is None else int(memory_cap_bytes)
        self.batch_samples = None if batch_samples is None else int(batch_samples)
        self.stream_weights = "auto" if stream_weights is None else stream_weights
        self.use_graph = bool(use_graph)
        self.forced_config = config
        self.debug = env_flag("SPDNN_CUDA_DEBUG") if debug is None else bool(debug)
        self.poison = poison
        if values not in ("auto", "array", "full"):
            raise OptionError(f"values={values!r}: expected 'auto', 'array' or 'full'")
        self.values = values
        if dedupe not in ("auto", True, False):
            raise OptionError(f"dedupe={dedupe!r}: expected 'auto', True or False")
        self.dedupe = dedupe
        if kernel not in ("auto", "block", "warp"):
            raise OptionError(f"kernel={kernel!r}: expected 'auto', 'block' or 'warp'")
        if kernel == "warp" and dedupe is False:
            raise OptionError("kernel='warp' needs dedupe='auto' or True")
        self.kernel = kernel
        self.prefetch = bool(prefetch)
        self._capacity = 0
        self._graphs: dict = {}

    # ------------------------------------------------------------------ availability
    @classmethod
    def availability(cls) -> tuple[bool, str]:
        ok, why = cupy_status()
        if not ok:
            return False, why
        return True, why

    def _dev(self):
        cp = _cupy()
        return cp.cuda.Device(self.device_id if self.device_id is not None else cp.cuda.runtime.getDevice())

    # ------------------------------------------------------------------ prepare
    def prepare(self, network: Network) -> None:
        """Pack every layer (host), choose value mode and kernels, upload or pin the weights."""
        cp = _cupy()
        self.network = network
        self.features = None
        self._y = self._ids = self._flags = None      # release a previous run's buffers
        self._eidx = self._evals = None
        self._capacity = 0
        self._graphs = {}
        dev = self._dev()
        self._device = dev
        n = network.neurons
        itemsize = np.dtype(self.dtype).itemsize
        columns = self._distinct_columns(network)
        cfg = self.forced_config
        if cfg is None and columns is not None:
            try:
                cfg = choose_config(n, itemsize, virtual=max(r.size for r, _ in columns), kernel=self.kernel)
            except OptionError:
                if self.dedupe is True or self.kernel == "warp":
                    raise
                columns = None
        if cfg is None:
            if self.kernel == "warp":
                raise OptionError("kernel='warp': the layers have too many distinct columns to deduplicate")
            cfg = choose_config(n, itemsize)
        if cfg.dedupe and columns is None:
            columns = [None] * network.depth          # computed by pack_layer
        if not cfg.dedupe:
            columns = None
        self.config = cfg
        self._fused = cfg.slices(n) == 1

        def pack(k):
            p = pack_layer(network.layers[k], cfg, n, columns=None if columns is None else columns[k])
            if p.uniform_value is None:
                dt = narrowest_exact_dtype(np.unique(p.values[p.idx != cfg.chunk]), self.dtype)
            else:
                dt = narrowest_exact_dtype(np.array([p.uniform_value]), self.dtype)
                p.values = None                      # rebuilt only if values must be stored
            return p, dt

        packed, exact = zip(*_map_layers(pack, network.depth)) if network.depth else ((), ())
        packed, exact = list(packed), list(exact)
        uniforms = [p.uniform_value for p in packed]
        if self.values == "auto":
            plan = value_plan(uniforms, exact, self.dtype)
        else:
            plan = value_plan([None] * len(exact), exact if self.values == "array" else [self.dtype], self.dtype)
        self.plan = plan
        vdtype = plan.value_dtype if plan.mode == VALUE_ARRAY else None
        self._scalars = [self.dtype(u if u is not None else 0.0) for u in uniforms]

        # Host arrays: all layers concatenated.
        entry_off = np.zeros(network.depth + 1, dtype=np.int64)
        entry_off[1:] = np.cumsum([p.entries for p in packed])
        meta_off = np.zeros(network.depth + 1, dtype=np.int64)
        meta_off[1:] = np.cumsum([p.meta.shape[0] for p in packed])
        self._entry_off, self._meta_off = entry_off, meta_off
        self._max_entries = max(p.entries for p in packed)
        self.padding_ratio = float(entry_off[-1] / max(sum(p.packed_nnz for p in packed), 1))
        self.distinct_columns = float(np.mean([p.virtual for p in packed]))
        vbytes = 0 if vdtype is None else np.dtype(vdtype).itemsize
        weight_bytes = int(entry_off[-1]) * (2 + vbytes)
        slot_bytes = 2 * self._max_entries * (2 + vbytes)
        small_bytes = int(meta_off[-1]) * 8 + network.bias.nbytes // (8 // itemsize) + (2 * n * network.depth if cfg.dedupe else 0)

        with dev:
            budget = self._budget()
            per_sample = self._bytes_per_sample()
            stream = self.stream_weights
            if stream == "auto":
                stream = weight_bytes + small_bytes + 64 * per_sample > budget or weight_bytes > budget // 2
            if stream and slot_bytes + small_bytes + per_sample * cfg.mb > budget:
                raise DeviceMemoryError(f"cuda engine: even streaming, {slot_bytes + small_bytes} bytes of weights "
                                        f"and one tile exceed the memory budget of {budget} bytes")
            self.streaming = bool(stream)
            self._weights_resident = (slot_bytes if self.streaming else weight_bytes) + small_bytes

            meta = np.concatenate([p.meta for p in packed])
            self._meta = cp.asarray(meta)
            uniform_bias = network.uniform_bias()
            if uniform_bias is not None:
                self._bias = cp.full((1, n), uniform_bias, dtype=self.dtype)
            else:
                self._bias = cp.asarray(np.ascontiguousarray(network.bias, dtype=self.dtype))
            if self.streaming:
                self._host_idx = self._pinned(int(entry_off[-1]), np.uint16)
                self._host_vals = None if vdtype is None else self._pinned(int(entry_off[-1]), vdtype)
                self._slots_idx = [cp.empty(self._max_entries, dtype=np.uint16) for _ in range(2)]
                self._slots_vals = [cp.empty(self._max_entries, dtype=vdtype) if vdtype is not None else None
                                    for _ in range(2)]
            else:
                self._eidx = cp.empty(int(entry_off[-1]), dtype=np.uint16)
                self._evals = cp.empty(int(entry_off[-1]), dtype=vdtype) if vdtype is not None else None
            for k, p in enumerate(packed):
                a, b = int(entry_off[k]), int(entry_off[k + 1])
                vals = None
                if vdtype is not None:
                    vals = entry_values(p, cfg.chunk).astype(vdtype)
                if self.streaming:
                    self._host_idx[a:b] = p.idx
                    if vals is not None:
                        self._host_vals[a:b] = vals
                else:
                    self._eidx[a:b].set(p.idx)
                    if vals is not None:
                        self._evals[a:b].set(vals)
            self._dummy_vals = cp.zeros(1, dtype=self.dtype)
            if cfg.dedupe:
                self._out_map = cp.asarray(np.concatenate([p.out_map for p in packed]))
            else:
                self._out_map = cp.zeros(1, dtype=np.uint16)
            self._compile()
            dev.synchronize()
        self._capacity = 0
        self._graphs = {}

    def _distinct_columns(self, network: Network):
        """unique_columns of every layer, or None when deduplication is off or does not pay."""
        if self.dedupe is False or (self.forced_config is not None and not self.forced_config.dedupe):
            return None
        n = network.neurons
        first = unique_columns(sp.csc_matrix(network.layers[0]))
        if self.dedupe == "auto" and first[0].size > n // 2:
            return None
        rest = _map_layers(lambda k: unique_columns(sp.csc_matrix(network.layers[k])), network.depth, start=1)
        out = [first, *rest]
        if self.dedupe == "auto" and any(r.size > n // 2 for r, _ in out):
            return None
        return out

    @staticmethod
    def _pinned(size: int, dtype):
        import cupyx

        return cupyx.empty_pinned(max(int(size), 1), dtype=dtype)

    def _budget(self) -> int:
        """Device bytes the engine may use in all."""
        cp = _cupy()
        if self.memory_cap_bytes is not None:
            return self.memory_cap_bytes
        free, _total = cp.cuda.runtime.memGetInfo()
        pool = cp.get_default_memory_pool()
        return int(0.9 * (free + pool.free_bytes()))

    def _bytes_per_sample(self) -> int:
        n = self.network.neurons
        return 2 * n * np.dtype(self.dtype).itemsize + 3 * 4

    def _compile(self) -> None:
        """Get (compile on first use) the kernels this network needs."""
        cfg, t = self.config, _CTYPES[np.dtype(self.dtype)]
        v = t if self.plan.mode != VALUE_ARRAY else _CTYPES[np.dtype(self.plan.value_dtype)]
        fused = "true" if self._fused else "false"
        dedupe = "true" if cfg.dedupe else "false"
        n = self.network.neurons
        per_thread = -(-n // cfg.threads)
        # register prefetch of whole rows: one chunk and at most 8 inputs a thread
        self._prefetch = per_thread if (self.prefetch and not cfg.warps and cfg.nchunks(n) == 1
                                        and per_thread <= 8) else 0
        if cfg.warps:
            layer = f"spdnn_layer_warp<{t}, {v}, {self.plan.mode}, {cfg.warps}>"
        else:
            layer = (f"spdnn_layer<{t}, {v}, {self.plan.mode}, {cfg.threads}, {cfg.mb}, {cfg.opt}, {fused}, "
                     f"{dedupe}, {self._prefetch}>")
        compact, densify = f"spdnn_compact<{t}>", f"spdnn_densify<{t}>"
        names = (layer, compact, densify, "spdnn_copy_count")
        dev_id = self._device.id
        self._k_layer = _kernel(dev_id, "layer.cu", names, layer)
        self._k_compact = _kernel(dev_id, "layer.cu", names, compact)
        self._k_densify = _kernel(dev_id, "layer.cu", names, densify)
        self._k_copy = _kernel(dev_id, "layer.cu", names, "spdnn_copy_count")
        self._smem = cfg.smem_bytes(np.dtype(self.dtype).itemsize)
        if self._smem > 48 * 1024:
            self._k_layer.max_dynamic_shared_size_bytes = self._smem
        self._sms = self._device.attributes["MultiProcessorCount"]
        self._layer_blocks_per_sm = _blocks_per_sm(self._k_layer, cfg.block_threads(), self._smem, self._device)

    # ------------------------------------------------------------------ load
    def max_batch(self, features: sp.csr_matrix | None = None) -> int:
        """Most samples one batch may hold under the memory budget (and ``batch_samples``)."""
        with self._dev():
            budget = self._budget() - self._weights_resident_now()
        per = self._bytes_per_sample()
        if features is not None and features.shape[0]:
            per += int(np.ceil(features.nnz / features.shape[0])) * (4 + np.dtype(self.dtype).itemsize) + 8
        most = max(budget // per, 0)
        if self.batch_samples is not None:
            most = min(most, self.batch_samples)
        return int(most)

    def _weights_resident_now(self) -> int:
        # Weights are already allocated after prepare, so the free memory excludes them,
        # while a cap counts them; the activation buffers held now would be reallocated.
        held = self._capacity * self._bytes_per_sample()
        if self.memory_cap_bytes is not None:
            return self._weights_resident
        return -held

    def load(self, features) -> None:
        """Upload features (samples x N); rows with no nonzero are dead from the start."""
        cp = _cupy()
        super().load(features)
        f = self.features
        n, N = f.shape[0], self.network.neurons
        rows = np.flatnonzero(np.diff(f.indptr) > 0).astype(np.int32)
        live = f[rows] if rows.size != n else f
        m = int(rows.size)
        with self._dev():
            if m > self._capacity or self._y is None:
                # free the old buffers before asking
                self._y = self._ids = self._flags = None
                self._graphs = {}
                self._capacity = 0
                fit = self.max_batch(live)
                if m > fit:
                    raise DeviceMemoryError(
                        f"cuda engine: {m} samples do not fit the device memory budget (at most {fit}); "
                        "use run() (which batches) or pass batch_samples=")
                cap = max(m, 1)
                self._y = [cp.empty((cap, N), dtype=self.dtype) for _ in range(2)]
                self._ids = [cp.empty(cap, dtype=np.int32) for _ in range(2)]
                self._flags = cp.zeros(cap, dtype=np.int32)
                self._counts = cp.zeros(self.network.depth + 1, dtype=np.int32)
                self._count_cur = cp.zeros(1, dtype=np.int32)
                self._capacity = cap
            if self.poison is not None or self.debug:
                # every row a kernel reads must have been written: poison the buffers
                value = np.nan if self.poison is None else self.poison
                for y in self._y:
                    y.fill(value)
                for ids in self._ids:
                    ids.fill(-7)
            self._cur = 0
            self._flags.fill(0)
            if m:
                indptr = cp.asarray(live.indptr.astype(np.int64))
                indices = cp.asarray(live.indices.astype(np.int32))
                data = cp.asarray(live.data.astype(self.dtype))
                self._launch(self._k_densify, min(m, 65535), 256,
                             (indptr, indices, data, self._y[0], np.int32(m), np.int32(N)))
                self._ids[0][:m].set(rows)
            self._count_cur.fill(m)
            self._loaded = m
            if not self.streaming and self.use_graph and not self.debug:
                self._graph(0, self.network.depth, self._cur)
            self._device.synchronize()
        self._last = None

    # ------------------------------------------------------------------ launches
    def _launch(self, kernel, grid, block, args, smem=0):
        kernel((int(grid),), (int(block),), args, shared_mem=int(smem))
        if self.debug:
            self._device.synchronize()

    def _layer_grid(self) -> int:
        cfg = self.config
        items = -(-self._capacity // cfg.samples_per_block()) * cfg.slices(self.network.neurons)
        return max(1, min(items, self._sms * self._layer_blocks_per_sm))

    def _enqueue_layer(self, k: int, parity: int, eidx, evals) -> int:
        """Queue layer k (0-based) reading buffer ``parity``; returns the parity of its output."""
        cfg, N = self.config, self.network.neurons
        src, dst = parity, 1 - parity
        bias = self._bias[k if self._bias.shape[0] > 1 else 0]
        meta = self._meta[int(self._meta_off[k]):int(self._meta_off[k + 1])]
        counts_in, counts_out = self._counts[k:k + 1], self._counts[k + 1:k + 2]
        vals = evals if evals is not None else self._dummy_vals
        out_map = self._out_map[k * N:(k + 1) * N] if cfg.dedupe else self._out_map
        if cfg.warps:
            itemsize = np.dtype(self.dtype).itemsize
            args = (self._y[src], self._y[dst], self._ids[src], self._ids[dst], counts_in, counts_out,
                    eidx, vals, meta, bias, out_map, self._scalars[k], self.dtype(self.network.ymax),
                    np.int32(N), np.int32(cfg.opt), np.int32(cfg.staging_bytes(itemsize) // itemsize))
            self._launch(self._k_layer, self._layer_grid(), cfg.block_threads(), args, self._smem)
            return dst
        args = (self._y[src], self._y[dst], self._ids[src], self._ids[dst], counts_in, counts_out,
                self._flags, eidx, vals, meta, bias, out_map, self._scalars[k], self.dtype(self.network.ymax),
                np.int32(N), np.int32(cfg.chunk), np.int32(cfg.nchunks(N)), np.int32(cfg.slices(N)))
        if self._fused:
            self._launch(self._k_layer, self._layer_grid(), cfg.threads, args, self._smem)
            return dst
        # Sliced: rows written in place into dst and flagged, then the survivors move back.
        self._launch(self._k_layer, self._layer_grid(), cfg.threads, args, self._smem)
        self._launch(self._k_compact, max(1, min(self._capacity, self._sms * 16)), 256,
                     (self._y[dst], self._y[src], self._ids[src], self._ids[dst], self._flags,
                      counts_in, counts_out, np.int32(N)))
        # ids moved src -> dst while rows moved dst -> src: bring the ids back beside the rows.
        self._ids[src], self._ids[dst] = self._ids[dst], self._ids[src]
        return src

    def _layer_weights(self, k: int):
        a, b = int(self._entry_off[k]), int(self._entry_off[k + 1])
        return self._eidx[a:b], (self._evals[a:b] if self._evals is not None else None)

    def _enqueue_segment(self, start: int, stop: int, parity: int) -> int:
        """Queue layers start..stop-1 on the current stream (capturable); returns the end parity."""
        cp = _cupy()
        stream = cp.cuda.get_current_stream()
        counts = self._counts
        if stop > start:
            cp.cuda.runtime.memsetAsync(counts[start + 1:].data.ptr, 0, (counts.size - start - 1) * 4, stream.ptr)
        self._launch(self._k_copy, 1, 32, (self._count_cur, counts[start:start + 1]))
        for k in range(start, stop):
            eidx, evals = self._layer_weights(k)
            parity = self._enqueue_layer(k, parity, eidx, evals)
        self._launch(self._k_copy, 1, 32, (counts[stop:stop + 1], self._count_cur))
        return parity

    def _graph(self, start: int, stop: int, parity: int):
        """The captured graph of a segment (built once per segment and buffer parity)."""
        cp = _cupy()
        key = (start, stop, parity, self._ids[0].data.ptr)
        if key not in self._graphs:
            ids_before = list(self._ids)
            stream = cp.cuda.Stream(non_blocking=True)
            with stream:
                stream.begin_capture()
                end = self._enqueue_segment(start, stop, parity)
                graph = stream.end_capture()
            ids_after = list(self._ids)
            self._ids = ids_before          # the graph swaps them when it runs
            self._graphs[key] = (graph, stream, end, ids_after)
        return self._graphs[key]

    def _run_streaming(self, start: int, stop: int, parity: int) -> int:
        """Layers start..stop-1 with weights copied from pinned host memory into two slots."""
        cp = _cupy()
        compute = cp.cuda.get_current_stream()
        copy = cp.cuda.Stream(non_blocking=True)
        copied = [cp.cuda.Event(), cp.cuda.Event()]
        freed = [cp.cuda.Event(), cp.cuda.Event()]
        vbytes = self._host_vals.itemsize if self._host_vals is not None else 0

        def fetch(k):
            slot = k % 2
            a, b = int(self._entry_off[k]), int(self._entry_off[k + 1])
            copy.wait_event(freed[slot])
            cp.cuda.runtime.memcpyAsync(self._slots_idx[slot].data.ptr, self._host_idx[a:].ctypes.data,
                                        (b - a) * 2, 1, copy.ptr)
            if vbytes:
                cp.cuda.runtime.memcpyAsync(self._slots_vals[slot].data.ptr, self._host_vals[a:].ctypes.data,
                                            (b - a) * vbytes, 1, copy.ptr)
            copied[slot].record(copy)

        for slot in range(2):
            freed[slot].record(compute)
        counts = self._counts
        cp.cuda.runtime.memsetAsync(counts[start + 1:].data.ptr, 0, (counts.size - start - 1) * 4, compute.ptr)
        self._launch(self._k_copy, 1, 32, (self._count_cur, counts[start:start + 1]))
        for k in range(start, min(start + 2, stop)):
            fetch(k)
        for k in range(start, stop):
            slot = k % 2
            compute.wait_event(copied[slot])
            a, b = int(self._entry_off[k]), int(self._entry_off[k + 1])
            evals = self._slots_vals[slot][:b - a] if vbytes else None
            parity = self._enqueue_layer(k, parity, self._slots_idx[slot][:b - a], evals)
            freed[slot].record(compute)
            if k + 2 < stop:
                fetch(k + 2)
        self._launch(self._k_copy, 1, 32, (counts[stop:stop + 1], self._count_cur))
        return parity

    # ------------------------------------------------------------------ infer
    def infer(self, start: int = 0, stop: int | None = None):
        cp = _cupy()
        net = self.network
        if net is None or self.features is None:
            raise SpdnnError("cuda: prepare(network) and load(features) must come before infer()")
        stop = net.depth if stop is None else int(stop)
        if not 0 <= start <= stop <= net.depth:
            raise OptionError(f"infer(start={start}, stop={stop}): expected 0 <= start <= stop <= {net.depth}")
        with self._dev():
            graphed = False
            if start == stop:
                pass
            elif self.streaming:
                self._cur = self._run_streaming(start, stop, self._cur)
            elif self.use_graph and not self.debug:
                graph, stream, end, ids_after = self._graph(start, stop, self._cur)
                graph.launch(stream)
                stream.synchronize()
                self._cur, self._ids = end, list(ids_after)
                graphed = True
            else:
                self._cur = self._enqueue_segment(start, stop, self._cur)
            survivors = self._counts[start + 1:stop + 1].get().astype(np.int64)
            alive = int(self._count_cur.get()[0])
            ids = self._ids[self._cur][:alive].get().astype(np.int64)
        ids.sort()
        extra = {
            "device": self._device_name(),
            "config": {"threads": self.config.threads, "opt": self.config.opt, "mb": self.config.mb,
                       "dedupe": self.config.dedupe, "warps": self.config.warps, "prefetch": self._prefetch,
                       "chunk": self.config.chunk, "slices": self.config.slices(net.neurons),
                       "nchunks": self.config.nchunks(net.neurons)},
            "value_mode": ["sum_then_scale", "scalar", "array"][self.plan.mode],
            "value_dtype": None if self.plan.value_dtype is None else str(self.plan.value_dtype),
            "padding_ratio": self.padding_ratio,
            "dedupe": self.config.dedupe,
            "distinct_columns": self.distinct_columns,
            "graph": graphed,
            "stream_weights": self.streaming,
        }
        self._alive = alive
        return ids + 1, survivors, extra

    def _device_name(self) -> str:
        cp = _cupy()
        try:
            return cp.cuda.runtime.getDeviceProperties(self._device.id)["name"].decode()
        except Exception:  # pragma: no cover - informative only
            return f"cuda:{self._device.id}"

    def activations(self):
        with self._dev():
            alive = int(self._count_cur.get()[0])
            ids = self._ids[self._cur][:alive].get().astype(np.int64)
            y = self._y[self._cur][:alive].get()
        order = np.argsort(ids, kind="stable")
        return ids[order], sp.csr_matrix(y[order].astype(np.float64))

    # ------------------------------------------------------------------ run (batches)
    def run(self, network: Network, features):
        """prepare, then load + infer one batch of samples at a time when they do not all fit."""
        t0 = time.perf_counter()
        self.prepare(network)
        feats = as_features(features, network.neurons)
        total = feats.shape[0]
        batch = max(1, min(total, self.max_batch(feats))) if total else 1
        if self.batch_samples is None and batch >= total:
            batch = max(total, 1)
        if batch < self.config.mb and batch < total:
            raise DeviceMemoryError(f"cuda engine: not even {self.config.mb} samples fit the device memory budget")
        preprocess = time.perf_counter() - t0
        inference = 0.0
        cats, survivors, extra, batches = [], np.zeros(network.depth, dtype=np.int64), {}, 0
        for b0 in range(0, max(total, 1), batch):
            t1 = time.perf_counter()
            self.load(feats[b0:b0 + batch])
            t2 = time.perf_counter()
            c, s, extra = self.infer()
            t3 = time.perf_counter()
            preprocess += t2 - t1
            inference += t3 - t2
            cats.append(c + b0)
            survivors += s
            batches += 1
        self.features = feats
        extra = dict(extra, batches=batches, batch_samples=int(batch))
        categories = np.sort(np.concatenate(cats)) if cats else np.zeros(0, dtype=np.int64)
        return self._result(categories, survivors, extra, inference=inference, preprocess=preprocess)
