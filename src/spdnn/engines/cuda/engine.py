"""The CUDA engine: CuPy for memory and launches, CUDA C++ kernels compiled at run time.

Design (kernels in ``kernels/*.cu``, each naming the headers it uses, ``kernels/*.cuh``,
with ``#include "name.cuh"`` lines that :func:`kernel_source` replaces by their text;
weight layout in :mod:`.layout`):

* activations are dense, sample-major rows of the alive samples in two device buffers
  used in turn; each row carries a sample id and a weight (the samples it stands for);
* **stationary tiles** wherever a tile of whole rows fits a block's shared memory
  (``kernels/stationary.cu``): a block keeps a few rows in shared memory through a whole
  segment of layers, so activations cross device memory once per segment and a layer
  costs a block a few barriers; rows are independent, so no block waits for another.
  A segment after a merge is queued twice, as tiles of ``mb`` rows and as one-row tiles
  with a deeper prefetch (the **tail** instance); the row count on the device decides
  which of the two runs (one-row tiles when at most one row per multiprocessor is left);
* otherwise **one kernel per layer** (``kernels/layer.cu``): inputs staged in chunks, fused
  bias/ReLU/cap, dead rows dropped by the block that owns them (or by a compaction kernel
  when outputs are sliced over blocks). After the first merge a layer is queued twice in
  the same way: the per-layer kernel for many rows, and for a few rows (at most
  :data:`WIDE_ROWS`) the **wide path**, which spreads each row over the whole grid (a block
  a row would leave the rest of the device idle);
* identical weight columns are summed once (``dedupe``; RadiX-Net layers have N/16 distinct
  ones) and expanded to the outputs through a map: exact, the same terms in the same order;
* **merging** (``merge``): after layers 16, 32, 64, ... rows that have become identical are
  merged into one representative (``kernels/merge.cu``: a row hash, every candidate
  confirmed bit for bit), which carries its members' weight; survivors and categories
  count every member, and the bits are those of computing every copy;
* every count stays on the device and kernels read their work size from it, so a whole
  :meth:`infer` (segments, merges) is one CUDA graph launch; counts, ids and merge parents
  are read back once at the end;
* weights: one value per layer (no value loads; summed then scaled once in fp32 when it is
  a power of two), else half precision when exact, else the activation type;
* memory: weights that do not fit beside the activations keep a resident prefix and
  stream the rest from pinned host memory through two device slots, a chunk of layers at
  a time (the copy of chunk c+1 overlaps chunk c); features that do not fit run in
  batches (:meth:`Engine.run` with :meth:`CudaEngine._batch_size`).

Nothing here imports CuPy at module import time.
"""
from __future__ import annotations

import functools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ...config import cupy_status, env_bytes, env_flag
from ...errors import DeviceMemoryError, OptionError, SpdnnError
from ...network import Network
from ...options import check_merge, check_tristate, optional_index, optional_positive_int
from .._cupy import cupy, device, device_name, free_device_bytes, pinned_empty
from ..base import Engine
from .layout import (VALUE_ARRAY, KernelConfig, PackedLayer, choose_config, entry_values, narrowest_exact_dtype,
                     pack_layer, stationary_smem_bytes, value_plan)
from ..columns import pays_to_dedupe, unique_columns

__all__ = ["CudaEngine", "merge_points", "kernel_instances", "kernel_source", "PREFETCH_STAGES", "TAIL_STAGES",
           "TAIL_ROWS_PER_SM", "WIDE_ROWS"]

#: Prefetch stages of the stationary kernel (the layer running and the next two in flight),
#: and of its one-row tail instance.
PREFETCH_STAGES = 3
TAIL_STAGES = 4

#: A segment after a merge runs one-row tiles (the tail instance) when at most this many
#: rows a multiprocessor enter it: each row then has a block, and a multiprocessor, to itself.
TAIL_ROWS_PER_SM = 1

#: A per-layer (deduplicated) layer after the first merge takes the wide path when at most
#: this many rows enter it.
WIDE_ROWS = 16

#: The arrays :meth:`CudaEngine._allocate` makes beside the activation buffers (released
#: with them).
_RUN_ARRAYS = ("_flags", "_rep", "_wadd", "_parent", "_keys", "_vals", "_stats", "_wide_sums", "_wide_z",
               "_wide_live")

#: Upper end of a launch's row range (rows_lo..rows_hi) when it runs for any count.
_ANY_ROWS = np.int32(np.iinfo(np.int32).max)

KERNEL_DIR = Path(__file__).parent / "kernels"
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
           np.dtype(np.float16): "unsigned short"}
_VALUE_MODE_NAMES = ("sum_then_scale", "scalar", "array")


def merge_points(depth: int, *, first: int = 16) -> list[int]:
    """Layers before which identical rows are merged: first, 2*first, 4*first, ... < depth.

    A merge pass costs a few launches and one read of the rows; rows that became equal stay
    equal, so doubling intervals catch convergence with log2(L) passes.
    """
    points, k = [], int(first)
    while k < depth:
        points.append(k)
        k *= 2
    return points


@functools.lru_cache(maxsize=None)
def _module(device_id: int, filename: str, names: tuple[str, ...]):
    """The RawModule of :func:`kernel_source` (``kernels/<filename>``, its headers included)
    with these template instances.

    Compiled on first use per device (CuPy also keeps the binary in its on-disk cache, keyed
    by the whole source, the headers included).
    """
    cp = cupy("cuda")
    with cp.cuda.Device(device_id):
        return cp.RawModule(code=kernel_source(filename), options=("-std=c++17",), name_expressions=list(names))


def kernel_instances(config: KernelConfig, neurons: int, dtype, value_dtype, value_mode: int, *,
                     tail: KernelConfig | None = None) -> dict[str, dict[str, str]]:
    """The kernel template instances a run needs: {file: {role: instance}}.

    Roles: 'stationary' or 'layer' (the layer kernel of ``config``), 'tail' (the stationary
    kernel of ``tail``, if given), 'wide_sums', 'wide_expand' and 'wide_place' (the wide path of per-layer
    deduplicated blockings), 'compact', 'densify', 'copy' (``layer.cu``), 'find' and
    'mcompact' (``merge.cu``). ``value_dtype`` is the stored weight type for
    :data:`.layout.VALUE_ARRAY` (else None).
    """
    cfg = config
    t = _CTYPES[np.dtype(dtype)]
    v = t if value_dtype is None else _CTYPES[np.dtype(value_dtype)]
    flag = {True: "true", False: "false"}
    layer = {"compact": f"spdnn_compact<{t}>", "densify": f"spdnn_densify<{t}>", "copy": "spdnn_copy_count"}
    out = {}

    def stationary(c: KernelConfig) -> str:
        return (f"spdnn_stationary<{t}, {v}, {value_mode}, {c.threads}, {c.mb}, {c.opt}, {flag[c.dedupe]}, "
                f"{c.prefetch_stages}>")

    if cfg.stationary:
        out["stationary.cu"] = {"stationary": stationary(cfg)}
        if tail is not None:
            out["stationary.cu"]["tail"] = stationary(tail)
    else:
        fused = cfg.slices(neurons) == 1
        layer["layer"] = (f"spdnn_layer<{t}, {v}, {value_mode}, {cfg.threads}, {cfg.mb}, {cfg.opt}, "
                          f"{flag[fused]}, {flag[cfg.dedupe]}>")
        if cfg.dedupe:
            layer["wide_sums"] = f"spdnn_wide_sums<{t}, {v}, {value_mode}>"
            layer["wide_expand"] = f"spdnn_wide_expand<{t}, {value_mode}>"
            layer["wide_place"] = f"spdnn_wide_place<{t}>"
    out["layer.cu"] = layer
    out["merge.cu"] = {"find": f"spdnn_merge_find<{t}>", "mcompact": f"spdnn_merge_compact<{t}>"}
    return out


#: A kernel file's request for a header of ``kernels/``: a line ``#include "name.cuh"``.
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"\n]+)"[ \t]*$', re.MULTILINE)


def kernel_source(filename: str) -> str:
    """The source compiled for ``kernels/<filename>``: the file with its includes resolved.

    NVRTC is given text, not an include path, so each line ``#include "name.cuh"`` is
    replaced by the text of ``kernels/name.cuh`` (its own includes resolved the same way,
    recursively and in order); a header comes in once, where first named, and a later
    line naming it again is dropped. CuPy's compile cache is keyed by the whole resulting
    text, so a change to any header recompiles the files that include it.

    Raises
    ------
    SpdnnError
        A file names a header that is not in ``kernels/`` (the error names both).
    """
    included: set[str] = set()

    def resolve(name: str, named_by: str | None) -> str:
        path = KERNEL_DIR / name
        if not path.is_file():
            if named_by is None:
                raise SpdnnError(f"no kernel file {name!r} in {KERNEL_DIR}")
            raise SpdnnError(f"kernel file {named_by!r} includes {name!r}, which is not in {KERNEL_DIR}")
        text = path.read_text()

        def header(match: re.Match) -> str:
            wanted = match.group(1)
            if wanted in included:
                return ""
            included.add(wanted)
            return resolve(wanted, name)

        return _INCLUDE.sub(header, text)

    included.add(filename)
    return resolve(filename, None)


@dataclass(frozen=True)
class _Kernel:
    """A compiled kernel and the template instance it is (named in debug-mode errors)."""

    fn: object
    name: str


def _kernels(device_id: int, filename: str, names: dict[str, str]) -> dict[str, _Kernel]:
    """{role: _Kernel} for ``names`` = {role: template instance} of one kernel file."""
    module = _module(device_id, filename, tuple(names.values()))
    with cupy("cuda").cuda.Device(device_id):
        return {role: _Kernel(module.get_function(name), name) for role, name in names.items()}


def _map_layers(fn, depth: int, *, start: int = 0) -> list:
    """[fn(k) for k in start..depth-1], on host threads (numpy releases the GIL)."""
    workers = min(16, os.cpu_count() or 1, max(depth - start, 1))
    if workers <= 1:
        return [fn(k) for k in range(start, depth)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, range(start, depth)))


def _blocks_per_sm(kernel: _Kernel, threads: int, smem: int, dev) -> int:
    """Resident blocks per multiprocessor (registers, threads, shared memory)."""
    attrs = dev.attributes
    regs = max(int(kernel.fn.num_regs), 1)
    regs_per_warp = -(-regs * 32 // 256) * 256
    by_regs = attrs.get("MaxRegistersPerMultiprocessor", 65536) // (regs_per_warp * (threads // 32))
    by_threads = attrs.get("MaxThreadsPerMultiProcessor", 2048) // threads
    static = int(kernel.fn.shared_size_bytes)
    by_smem = attrs.get("MaxSharedMemoryPerMultiprocessor", 228 * 1024) // (smem + static + 1024)
    return max(1, min(by_regs, by_threads, by_smem, 32))


@dataclass(frozen=True)
class _Phase:
    """One step of a run: 'stationary' (layers a..b-1 in one launch), 'layer' (layer a) or
    'merge' (before layer a). ``chunk``: the streamed weight chunk it reads (-1: resident);
    ``few``: rows may be few (after a merge): a stationary segment is queued with its tail
    instance, a deduplicated layer with the wide path."""

    kind: str
    a: int
    b: int
    chunk: int = -1
    few: bool = False


@dataclass(frozen=True)
class _WeightView:
    """Where a phase finds its layers' weights: layer k's entries at ``eidx[entry_off[k] - ebase]``
    (and ``evals``), its out_map at ``out_map[(k - kbase) * N]``."""

    eidx: object
    evals: object
    out_map: object
    ebase: int
    kbase: int


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
        Device memory the engine may use (default: ``SPDNN_CUDA_MEMORY_CAP`` if set, else 90%
        of what is free, counting the buffers of its previous batch as free).
    batch_samples : int, optional
        Most samples on the device at once (default: as many as fit).
    stream_weights : {'auto', True, False}
        Keep the weights (beyond a resident prefix) in pinned host memory and stream them
        a chunk of layers at a time; 'auto': only when they do not fit beside the
        activations.
    config : KernelConfig or dict, optional
        Force a blocking (benchmarks, tests); default :func:`.layout.choose_config`.
    debug : bool, optional
        Run without a graph, synchronize and check after every launch, and poison the
        activation buffers (default: ``SPDNN_CUDA_DEBUG=1``). A failed launch raises
        :class:`SpdnnError` naming the kernel and the layer.
    poison : float, optional
        Fill the activation buffers with this value at every :meth:`load` (tests: a
        kernel that reads a row nothing wrote then gives wrong categories).
    dedupe : {'auto', True, False}
        Compute each distinct weight column once per layer (exact: identical columns give
        identical sums). 'auto': when every layer has at most N/2 distinct columns.
    merge : {'auto', True, False}
        Merge identical rows into one representative after layers 16, 32, 64, ...
        (exact). 'auto' is on: a pass costs a few launches (see benchmarks/RESULTS.md).
    blocking : dict, optional
        General networks: ``threads``, ``opt`` and ``mb`` forced on every sparse layer
        (:func:`.layout.choose_general_config`; benchmarks).

    Networks not of the challenge's form (``network.challenge_form`` False: several widths,
    dense layers, a dense bias, other caps or none, identity layers) run on the general path
    (:mod:`.general`): one launch a layer, exact in fp64, pruning only where the network
    allows it, nothing merged (``merge`` and ``dedupe`` apply to the challenge's path).
    """

    name = "cuda"
    device = "gpu"

    def __init__(self, *, precision: str = "fp32", progress: bool = False, device: int | None = None,
                 memory_cap_bytes: int | None = None, batch_samples: int | None = None,
                 stream_weights="auto", config=None, debug: bool | None = None, poison: float | None = None,
                 dedupe="auto", merge="auto", blocking: dict | None = None):
        super().__init__(precision=precision, progress=progress)
        self.device_id = optional_index(device, "device")
        self.memory_cap_bytes = optional_positive_int(memory_cap_bytes, "memory_cap_bytes")
        if self.memory_cap_bytes is None:
            self.memory_cap_bytes = env_bytes("SPDNN_CUDA_MEMORY_CAP")
        self.batch_samples = optional_positive_int(batch_samples, "batch_samples")
        self.stream_weights = check_tristate("auto" if stream_weights is None else stream_weights, "stream_weights")
        if isinstance(config, dict):
            config = KernelConfig(**config)
        if config is not None and not isinstance(config, KernelConfig):
            raise OptionError(f"config={config!r}: expected a KernelConfig or a dict of its fields")
        self.forced_config = config
        self.debug = env_flag("SPDNN_CUDA_DEBUG") if debug is None else bool(debug)
        self.poison = poison
        self.dedupe = check_tristate(dedupe, "dedupe")
        self.merge = check_merge(merge)
        self._capacity = 0
        self._parent_size = 0
        self._graphs: dict = {}
        if blocking is not None and (not isinstance(blocking, dict) or set(blocking) - {"threads", "opt", "mb"}):
            raise OptionError(f"blocking={blocking!r}: expected a dict of 'threads', 'opt', 'mb'")
        self.blocking = blocking
        self._general = None

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return cupy_status()

    @classmethod
    def supports(cls, network: Network) -> tuple[bool, str]:
        """(True, why): every network runs, the challenge's on their own path, others on the general one."""
        return True, "challenge networks on the stationary path, every other on the general path"

    def _dev(self):
        return device(self.name, self.device_id)

    @property
    def merging(self) -> bool:
        """Whether identical rows are merged ('auto' means on)."""
        return self.merge is not False

    # ------------------------------------------------------------------ prepare
    def prepare(self, network: Network) -> None:
        """Choose the blocking, pack every layer (host), plan the memory, upload, compile."""
        self.network = network
        self.features = None
        self._general = None
        self._release_run()                           # release a previous run's buffers
        if not network.challenge_form:
            self._general = self._general_path(network)
            return
        dev = self._dev()
        self._device = dev
        self._device_label = device_name(dev)           # a properties query costs milliseconds
        with dev:
            cfg, columns = self._configure(network)
            packed = self._pack(network, cfg, columns)
            self._plan_memory(network, packed)
            self._upload(network, packed)
            self._compile()
            dev.synchronize()

    def _general_path(self, network: Network):
        """The general path of ``network`` (:mod:`.general`): layers planned, uploaded, compiled."""
        from .general import CupyKernels, GeneralPath, general_instances, plan_general

        dev = self._dev()
        self._device = dev
        self._device_label = device_name(dev)
        with dev:
            layers = plan_general(network, self.dtype, smem_limit=self._smem_limit(), blocking=self.blocking)
            backend = CupyKernels(self, general_instances(layers, self.dtype))
            return GeneralPath(network, self.dtype, backend, layers, budget_bytes=self._budget,
                               weights_count=self.memory_cap_bytes is not None,
                               poison=self.poison if self.poison is not None else (np.nan if self.debug else None),
                               batch_samples=self.batch_samples, label=self._device_label)

    def _smem_limit(self) -> int:
        return int(self._device.attributes.get("MaxSharedMemoryPerBlockOptin", 227 * 1024))

    def _configure(self, network: Network) -> tuple[KernelConfig, list | None]:
        """The blocking, and each layer's distinct columns when deduplicating (else None)."""
        n, itemsize = network.neurons, np.dtype(self.dtype).itemsize
        limit = self._smem_limit()
        cfg = self.forced_config
        if cfg is not None:
            if cfg.stationary and not cfg.fits_stationary(n):
                raise OptionError(f"config={cfg}: stationary needs chunk == N ({n}) and one slice")
            columns = self._distinct_columns(network, force=True) if cfg.dedupe else None
            return cfg, columns
        columns = self._distinct_columns(network)
        if columns is not None:
            try:
                return choose_config(n, itemsize, virtual=max(r.size for r, _ in columns), smem_limit=limit), columns
            except OptionError:
                if self.dedupe is True:
                    raise
        return choose_config(n, itemsize, smem_limit=limit), None

    def _distinct_columns(self, network: Network, *, force: bool = False):
        """unique_columns of every layer, or None when deduplication is off or does not pay."""
        if self.dedupe is False and not force:
            return None
        n = network.neurons
        judge = not force and self.dedupe == "auto"
        first = unique_columns(network.layers[0])
        if judge and not pays_to_dedupe(first[0].size, n):
            return None
        rest = _map_layers(lambda k: unique_columns(network.layers[k]), network.depth, start=1)
        out = [first, *rest]
        if judge and not all(pays_to_dedupe(r.size, n) for r, _ in out):
            return None
        return out

    def _pack(self, network: Network, cfg: KernelConfig, columns) -> list[PackedLayer]:
        """Pack every layer for ``cfg`` (host threads); choose the value mode and the blocking's prefetch."""
        n = network.neurons

        def pack(k):
            p = pack_layer(self.weights(k), cfg, n, columns=None if columns is None else columns[k])
            if p.uniform_value is None:
                dt = narrowest_exact_dtype(np.unique(p.values[p.idx != cfg.chunk]), self.dtype)
            else:
                dt = narrowest_exact_dtype(np.array([p.uniform_value]), self.dtype)
                p.values = None                      # rebuilt only if values must be stored
            return p, dt

        packed, exact = zip(*_map_layers(pack, network.depth))
        packed = list(packed)
        uniforms = [p.uniform_value for p in packed]
        self.plan = value_plan(uniforms, list(exact), self.dtype)
        self._vdtype = self.plan.value_dtype if self.plan.mode == VALUE_ARRAY else None
        self._scalars = np.array([u if u is not None else 0.0 for u in uniforms], dtype=self.dtype)
        entry_off = np.zeros(network.depth + 1, dtype=np.int64)
        entry_off[1:] = np.cumsum([p.entries for p in packed])
        self._entry_off = entry_off
        self._max_entries = int(max(p.entries for p in packed))
        self.padding_ratio = float(entry_off[-1] / max(sum(p.packed_nnz for p in packed), 1))
        self.distinct_columns = float(np.mean([p.virtual for p in packed]))
        self.adds_per_row = [int(p.packed_nnz) for p in packed]     # the floor's arithmetic (spdnn.floor)
        if cfg.stationary and self.forced_config is None:
            # Prefetch the next layers into shared memory when the stages fit beside the tile.
            cfg = self._with_prefetch(cfg, PREFETCH_STAGES)
        self.config = cfg
        self.tail_config = self._tail(cfg)
        return packed

    @property
    def _value_bytes(self) -> int:
        """Bytes of one stored weight value (0: values are not stored, one per layer)."""
        return 0 if self._vdtype is None else np.dtype(self._vdtype).itemsize

    def _stationary_smem(self, cfg: KernelConfig) -> int:
        return stationary_smem_bytes(cfg, np.dtype(self.dtype).itemsize, max_entries=self._max_entries,
                                     value_bytes=self._value_bytes)

    def _with_prefetch(self, cfg: KernelConfig, stages: int) -> KernelConfig:
        """``cfg`` with ``stages`` prefetch stages if they fit shared memory beside the tile,
        else ``cfg`` unchanged (out_map copies need 16-byte rows: N a multiple of 8)."""
        staged = KernelConfig(**{**cfg.__dict__, "prefetch": True, "stages": stages})
        if self._stationary_smem(staged) <= self._smem_limit() and (not cfg.dedupe or self.network.neurons % 8 == 0):
            return staged
        return cfg

    def _tail(self, cfg: KernelConfig) -> KernelConfig | None:
        """The blocking of the one-row tail instance of stationary segments (same packing:
        threads, opt and chunk fix the layout; mb does not), or None when it would be ``cfg``."""
        if not cfg.stationary or self.forced_config is not None:
            return None
        tail = self._with_prefetch(KernelConfig(**{**cfg.__dict__, "mb": 1, "prefetch": False}), TAIL_STAGES)
        return None if tail == cfg else tail

    def _layer_bytes(self, p: PackedLayer) -> int:
        return p.entries * (2 + self._value_bytes) + (2 * self.network.neurons if self.config.dedupe else 0)

    def _plan_memory(self, network: Network, packed: list[PackedLayer]) -> None:
        """Resident layers [0, R) and streamed chunks of layers [R, L) (see the module docstring)."""
        sizes = np.array([self._layer_bytes(p) for p in packed], dtype=np.int64)
        total = int(sizes.sum())
        self.weight_bytes = total + int(sum(p.meta.nbytes for p in packed))     # read once a layer (spdnn.floor)
        small = self._entry_off.nbytes + sum(p.meta.nbytes for p in packed) + network.bias.nbytes
        budget = self._budget()
        per_sample = self._bytes_per_sample()
        stream = self.stream_weights
        if stream == "auto":
            stream = total + small + 64 * per_sample > budget or total > budget // 2
        depth = network.depth
        self._resident, self._chunks = depth, []
        if stream:
            room = budget - small - 64 * per_sample
            slot = int(max(sizes.max(), min(total // 4 if self.stream_weights is True else total, room // 4)))
            if 2 * slot > room:
                raise DeviceMemoryError(f"cuda engine: even streaming, two slots of {slot} bytes of weights and "
                                        f"64 samples exceed the memory budget of {budget} bytes")
            resident = 0
            if self.stream_weights != True:            # noqa: E712 - 'auto' keeps what fits
                prefix = np.cumsum(sizes)
                resident = int(np.searchsorted(prefix, room - 2 * slot, side="right"))
            start = resident
            while start < depth:
                stop, used = start, 0
                while stop < depth and (stop == start or used + sizes[stop] <= slot):
                    used += int(sizes[stop])
                    stop += 1
                self._chunks.append((start, stop))
                start = stop
            self._resident = resident
            self._slot_bytes = slot
        self.streaming = bool(self._chunks)

    def _upload(self, network: Network, packed: list[PackedLayer]) -> None:
        """Copy the layout to the device (resident layers) and to pinned host memory (streamed)."""
        cp = cupy(self.name)
        cfg, n, depth = self.config, network.neurons, network.depth
        off = self._entry_off
        self._meta = cp.asarray(np.concatenate([p.meta for p in packed]))
        self._meta_off = np.concatenate(([0], np.cumsum([p.meta.shape[0] for p in packed]))).astype(np.int64)
        self._entry_off_dev = cp.asarray(off)
        self._scalars_dev = cp.asarray(self._scalars)
        self._one_bias = network.uniform_bias()
        if self._one_bias is not None:
            self._bias = cp.full((1, n), self._one_bias, dtype=self.dtype)
        else:
            self._bias = cp.asarray(np.ascontiguousarray(network.bias, dtype=self.dtype))
        self._bias_stride = 0 if self._bias.shape[0] == 1 else n
        vdtype = self._vdtype
        self._dummy_vals = cp.zeros(8, dtype=vdtype or self.dtype)
        self._dummy_map = cp.zeros(8, dtype=np.uint16)

        def host(a, b):
            """Layers a..b-1: (indices, values or None, out_map or None) as host arrays."""
            if b <= a:
                return np.zeros(0, np.uint16), None, None
            idx = np.concatenate([p.idx for p in packed[a:b]])
            vals = None if vdtype is None else np.concatenate(
                [entry_values(p, cfg.chunk).astype(vdtype) for p in packed[a:b]])
            omap = np.concatenate([p.out_map for p in packed[a:b]]) if cfg.dedupe else None
            return idx, vals, omap

        r = self._resident
        idx, vals, omap = host(0, r)
        self._eidx = cp.asarray(idx if idx.size else np.zeros(8, np.uint16))
        self._evals = self._dummy_vals if vals is None or not vals.size else cp.asarray(vals)
        self._out_map = self._dummy_map if omap is None or not omap.size else cp.asarray(omap)
        if self.streaming:
            idx, vals, omap = host(r, depth)
            self._host_idx = pinned_empty(idx.size, np.uint16)
            self._host_idx[:idx.size] = idx
            self._host_vals = None if vals is None else pinned_empty(vals.size, vdtype)
            if vals is not None:
                self._host_vals[:vals.size] = vals
            self._host_map = None if omap is None else pinned_empty(omap.size, np.uint16)
            if omap is not None:
                self._host_map[:omap.size] = omap
            most_entries = max(int(off[b] - off[a]) for a, b in self._chunks)
            most_layers = max(b - a for a, b in self._chunks)
            self._slots = [(cp.empty(max(most_entries, 8), dtype=np.uint16),
                            cp.empty(max(most_entries, 8), dtype=vdtype) if vdtype is not None else self._dummy_vals,
                            cp.empty(max(most_layers * n, 8), dtype=np.uint16) if cfg.dedupe else self._dummy_map)
                           for _ in range(2)]

    def _budget(self, reclaimable: int = 0) -> int:
        """Device bytes the engine may use in all: 90% of the free memory and of
        ``reclaimable`` (bytes this engine holds now and would free first), at most
        ``memory_cap_bytes`` (or ``SPDNN_CUDA_MEMORY_CAP``): a cap never grants memory
        that is not free (what another engine or the generator holds stays theirs)."""
        free = int(0.9 * (free_device_bytes() + reclaimable))
        return free if self.memory_cap_bytes is None else min(self.memory_cap_bytes, free)

    def _bytes_per_sample(self) -> int:
        """Device bytes of one alive sample: two activation rows, ids, weights, flags, merge
        arrays and hash-table slots, its parent entry."""
        n = self.network.neurons
        return 2 * n * np.dtype(self.dtype).itemsize + 4 * (2 + 2 + 1 + 1 + 1 + 1) + 2 * (8 + 4)

    def _compile(self) -> None:
        """Get (compile on first use) the kernels this network needs."""
        cfg, dev, n = self.config, self._device, self.network.neurons
        itemsize = np.dtype(self.dtype).itemsize
        self._fused = cfg.slices(n) == 1
        kernels = {}
        tail = self.tail_config
        for filename, names in kernel_instances(cfg, n, self.dtype, self._vdtype, self.plan.mode, tail=tail).items():
            kernels.update(_kernels(dev.id, filename, names))
        if cfg.stationary:
            main = kernels["stationary"]
            self._smem = self._stationary_smem(cfg)
            if tail is not None:
                self._tail_smem = self._stationary_smem(tail)
                if self._tail_smem > 48 * 1024:
                    kernels["tail"].fn.max_dynamic_shared_size_bytes = self._tail_smem
        else:
            main = kernels["layer"]
            self._smem = cfg.smem_bytes(itemsize)
        if self._smem > self._smem_limit():
            raise OptionError(f"config={cfg}: needs {self._smem} bytes of shared memory a block for this network, "
                              f"the device allows {self._smem_limit()}")
        if self._smem > 48 * 1024:
            main.fn.max_dynamic_shared_size_bytes = self._smem
        self._k = kernels
        self._sms = dev.attributes["MultiProcessorCount"]
        self._blocks_per_sm = _blocks_per_sm(main, cfg.threads, self._smem, dev)

    # ------------------------------------------------------------------ load
    def max_batch(self, features: sp.csr_matrix | None = None) -> int:
        """Most samples one batch may hold under the memory budget (and ``batch_samples``),
        for features like ``features`` (their nonzeros a live row are uploaded too)."""
        if self._general is not None:
            return self._general.max_batch(features)
        if features is None or not features.shape[0]:
            return self._most(self._activation_budget(), 0, 0)
        live = int(np.count_nonzero(np.diff(features.indptr)))
        return self._most(self._activation_budget(), live, int(features.nnz))

    def _activation_budget(self) -> int:
        """Device bytes left for a batch's buffers: the budget less the weights (with a cap;
        without, they are already out of the free memory), counting the run arrays held
        now as free (:meth:`_allocate` releases them before allocating)."""
        with self._dev():
            free = self._budget(self._run_bytes())          # the free memory (weights already out of it)
            if self.memory_cap_bytes is not None:          # a cap counts the weights in it
                slots = 2 * self._slot_bytes if self.streaming else 0
                capped = self.memory_cap_bytes - int(self._eidx.nbytes + self._evals.nbytes + self._out_map.nbytes
                                                     + self._meta.nbytes + slots)
                return min(capped, free)
            return free

    def _most(self, budget: int, live: int, nnz: int) -> int:
        """Samples that fit ``budget`` when ``live`` rows carry ``nnz`` nonzeros."""
        per = self._bytes_per_sample()
        if live:
            per += -(-nnz // live) * (4 + np.dtype(self.dtype).itemsize) + 8
        most = max(budget // per, 0)
        return int(most if self.batch_samples is None else min(most, self.batch_samples))

    def _run_bytes(self) -> int:
        """Device bytes of the run arrays held now (activation buffers and their companions)."""
        held = [*(self._y or ()), *(self._ids or ()), *(self._wts or ())]
        held += [getattr(self, name, None) for name in _RUN_ARRAYS]
        return int(sum(a.nbytes for a in held if a is not None))

    def _release_run(self) -> None:
        """Drop the run arrays (before allocating others: the pool then reuses their memory)."""
        self._y = self._ids = self._wts = None
        for name in _RUN_ARRAYS:
            setattr(self, name, None)
        self._graphs = {}
        self._capacity = self._parent_size = 0

    def _batch_size(self, features: sp.csr_matrix) -> int:
        """The most samples a load may hold such that every batch of that many consecutive
        samples passes :meth:`_allocate`'s check (a batch's live rows may carry more
        nonzeros than the average)."""
        if self._general is not None:
            return self._general.batch_size(features)
        total = features.shape[0]
        if not total:
            return 1
        budget = self._activation_budget()
        live_before = np.concatenate(([0], np.cumsum(np.diff(features.indptr) > 0)))
        indptr = features.indptr
        batch = max(1, min(total, self.max_batch(features)))
        while batch > 1:
            excess = 0
            for b0 in range(0, total, batch):
                b1 = min(total, b0 + batch)
                live = int(live_before[b1] - live_before[b0])
                excess = max(excess, live - self._most(budget, live, int(indptr[b1] - indptr[b0])))
            if excess <= 0:
                break
            batch = max(1, batch - excess)
        if batch < min(total, self.config.mb):
            raise DeviceMemoryError(f"cuda engine: not even {self.config.mb} samples fit the device memory budget")
        return batch

    def load(self, features) -> None:
        """Upload features (samples x N); rows with no nonzero are dead from the start."""
        if self._general is not None:
            super().load(features)
            self._general.load(self.features)
            return
        cp = cupy(self.name)
        super().load(features)
        f = self.features
        loaded, n = f.shape[0], self.network.neurons
        rows = np.flatnonzero(np.diff(f.indptr) > 0).astype(np.int32)
        live = f[rows] if rows.size != loaded else f
        m = int(rows.size)
        with self._dev():
            if m > self._capacity or loaded > self._parent_size or self._y is None:
                self._allocate(m, loaded, live)
            if self.poison is not None or self.debug:
                # every row a kernel reads must have been written: poison the buffers
                for y in self._y:
                    y.fill(np.nan if self.poison is None else self.poison)
                for ids in self._ids:
                    ids.fill(-7)
            self._cur = 0
            if m:
                indptr = cp.asarray(live.indptr.astype(np.int64))
                indices = cp.asarray(live.indices.astype(np.int32))
                data = cp.asarray(live.data.astype(self.dtype))
                self._launch("densify", min(m, 65535), 256,
                             (indptr, indices, data, self._y[0], np.int32(m), np.int32(n)), what="load")
                self._ids[0][:m].set(rows)
                self._wts[0][:m].fill(1)
            self._parent[:loaded].fill(-1)
            self._stats.fill(0)
            self._count_cur.fill(m)
            self._device.synchronize()
        self._alive_rows = self._alive_samples = m
        self._alive_ids = rows.astype(np.int64)
        self._loaded = loaded
        self._parents = None            # host copy of the merge parents, fetched when needed

    def _allocate(self, m: int, loaded: int, live: sp.csr_matrix) -> None:
        """(Re)allocate the activation buffers and the run's arrays for ``m`` alive rows."""
        cp = cupy(self.name)
        self._release_run()                          # free the old buffers before asking
        fit = self.max_batch(live)
        if m > fit:
            raise DeviceMemoryError(f"cuda engine: {m} samples do not fit the device memory budget (at most "
                                    f"{fit}); use run() (which batches) or pass batch_samples=")
        cap = max(m, 1)
        n, depth = self.network.neurons, self.network.depth
        self._y = [cp.empty((cap, n), dtype=self.dtype) for _ in range(2)]
        self._ids = [cp.empty(cap, dtype=np.int32) for _ in range(2)]
        self._wts = [cp.empty(cap, dtype=np.int32) for _ in range(2)]
        self._flags = cp.zeros(cap, dtype=np.int32)
        self._rep = cp.empty(cap, dtype=np.int32)
        self._wadd = cp.zeros(cap, dtype=np.int32)
        self._parent_size = max(loaded, 1)
        self._parent = cp.empty(self._parent_size, dtype=np.int32)
        slots = 1 << max(int(2 * cap - 1).bit_length(), 4)      # a power of two >= 2 * cap
        self._keys = cp.empty(slots, dtype=np.uint64)
        self._vals = cp.empty(slots, dtype=np.int32)
        # Counters, one int32 array read back at once: counts[L+1] and wcounts[L+1] (rows and
        # samples alive after each layer run by the per-layer kernel), deaths[L+1] and
        # wdeaths[L+1] (rows and samples dying at each layer of a stationary segment),
        # ctr[P] and tickets[P] (per phase), the current row count.
        phases = 2 * depth + 8
        sizes = {"counts": depth + 1, "wcounts": depth + 1, "deaths": depth + 1, "wdeaths": depth + 1,
                 "ctr": phases, "tickets": phases, "cur": 1}
        self._stat_off = dict(zip(sizes, np.concatenate(([0], np.cumsum(list(sizes.values()))[:-1])).tolist()))
        self._stats = cp.zeros(sum(sizes.values()), dtype=np.int32)
        self._stats_host = pinned_empty(self._stats.size, np.int32)
        self._ids_host = pinned_empty(cap, np.int32)
        self._parent_host = pinned_empty(self._parent_size, np.int32)
        self._count_cur = self._stat(("cur", 0))
        self._capacity = cap
        self._wide_rows = min(WIDE_ROWS, cap) if "wide_sums" in self._k else 0
        if self._wide_rows:                   # the wide path's sums and expanded rows
            self._wide_sums = cp.empty(self._wide_rows * self.config.outputs_per_block, dtype=self.dtype)
            self._wide_z = cp.empty((self._wide_rows, n), dtype=self.dtype)
            self._wide_live = cp.zeros(self._wide_rows, dtype=np.int32)

    def _stat(self, where: tuple[str, int]):
        """One counter of ``_stats`` as a 1-element device array (a kernel argument)."""
        i = self._stat_off[where[0]] + int(where[1])
        return self._stats[i:i + 1]

    # ------------------------------------------------------------------ launches
    def _launch(self, role: str, grid, block, args, smem=0, *, what: str = ""):
        kernel = self._k[role]
        try:
            kernel.fn((int(grid),), (int(block),), args, shared_mem=int(smem))
            if self.debug:
                self._device.synchronize()
        except Exception as exc:
            if not self.debug:
                raise
            raise SpdnnError(f"cuda engine: kernel {kernel.name} failed ({what}): {exc}") from exc

    def _phases(self, start: int, stop: int) -> list[_Phase]:
        """The steps of layers start..stop-1: cut at merge points and streamed chunks."""
        points = merge_points(self.network.depth) if self.merging else []
        merges = [k for k in points if start < k < stop]
        first_merge = points[0] if points else self.network.depth
        edges = {start, stop, *merges}
        edges.update(a for a, _ in self._chunks if start < a < stop)
        if self._chunks and start < self._resident < stop:
            edges.add(self._resident)
        cuts = sorted(edges)
        phases = []
        for a, b in zip(cuts, cuts[1:]):
            chunk = self._chunk_of(a)
            if a in merges:
                phases.append(_Phase("merge", a, a, chunk))
            if self.config.stationary:
                phases.append(_Phase("stationary", a, b, chunk, few=a in merges))
            else:
                phases.extend(_Phase("layer", k, k + 1, chunk, few=first_merge <= k) for k in range(a, b))
        return phases

    def _chunk_of(self, k: int) -> int:
        for i, (a, b) in enumerate(self._chunks):
            if a <= k < b:
                return i
        return -1

    def _view(self, chunk: int) -> _WeightView:
        if chunk < 0:
            return _WeightView(self._eidx, self._evals, self._out_map, 0, 0)
        a, _ = self._chunks[chunk]
        idx, vals, omap = self._slots[chunk % 2]
        return _WeightView(idx, vals, omap, int(self._entry_off[a]), a)

    def _enqueue(self, phases: list[_Phase], first: int, src):
        """Queue ``phases`` (numbered from ``first``) on the current stream (capturable).

        ``src`` is the counter holding the rows entering the first phase; returns the
        counter holding the rows after the last.
        """
        for i, ph in enumerate(phases, start=first):
            if ph.kind == "merge":
                src = self._enqueue_merge(i, src)
            elif ph.kind == "stationary":
                src = self._enqueue_stationary(ph, i, src)
            else:
                src = self._enqueue_layer(ph, src)
        return src

    def _enqueue_stationary(self, ph: _Phase, i: int, src):
        """Queue layers ph.a..ph.b-1 as one stationary launch, or, for a segment after a
        merge, as the main and the tail instance, of which the row count in ``src`` runs one."""
        cfg, n, cur = self.config, self.network.neurons, self._cur
        view = self._view(ph.chunk)
        out = self._stat(("ctr", i))
        one = self._one_bias is not None
        args = (self._y[cur], self._y[1 - cur], self._ids[cur], self._ids[1 - cur], self._wts[cur],
                self._wts[1 - cur], src, out, self._stat(("tickets", i)),
                self._stats[self._stat_off["deaths"]:], self._stats[self._stat_off["wdeaths"]:],
                view.eidx, view.evals, self._meta, self._entry_off_dev, np.int64(view.ebase),
                np.int32(self._max_entries), view.out_map, np.int32(view.kbase), self._bias,
                np.int64(-1 if one else self._bias_stride), self.dtype(self._one_bias if one else 0),
                self._scalars_dev, self.dtype(self.network.ymax), np.int32(n), np.int32(ph.a), np.int32(ph.b))
        what = f"layers {ph.a + 1}..{ph.b}"
        tail = self.tail_config if ph.few else None
        few = self._sms * TAIL_ROWS_PER_SM      # rows the tail instance takes
        grid = max(1, min(-(-self._capacity // cfg.mb), self._sms * self._blocks_per_sm))
        self._launch("stationary", grid, cfg.threads, args + (np.int32(0 if tail is None else few + 1), _ANY_ROWS),
                     self._smem, what=what)
        if tail is not None:
            self._launch("tail", max(1, min(self._capacity, few)), tail.threads, args + (np.int32(0), np.int32(few)),
                         self._tail_smem, what=what + " (tail)")
        self._cur = 1 - cur
        return out

    def _enqueue_layer(self, ph: _Phase, src):
        """Queue layer ph.a with the per-layer kernel (and the compaction when sliced)."""
        cfg, n, k = self.config, self.network.neurons, ph.a
        cur, nxt = self._cur, 1 - self._cur
        view = self._view(ph.chunk)
        a, b = int(self._entry_off[k] - view.ebase), int(self._entry_off[k + 1] - view.ebase)
        evals = view.evals[a:b] if self._vdtype is not None else view.evals
        out_map = view.out_map[(k - view.kbase) * n:(k - view.kbase + 1) * n] if cfg.dedupe else view.out_map
        meta = self._meta[int(self._meta_off[k]):int(self._meta_off[k + 1])]
        bias = self._bias[k if self._bias_stride else 0]
        count_out = self._stat(("counts", k + 1))
        wcount_out = self._stat(("wcounts", k + 1))
        args = (self._y[cur], self._y[nxt], self._ids[cur], self._ids[nxt], self._wts[cur], self._wts[nxt],
                src, count_out, wcount_out, self._flags, view.eidx[a:b], evals, meta, bias, out_map,
                self._scalars[k], self.dtype(self.network.ymax), np.int32(n), np.int32(cfg.chunk),
                np.int32(cfg.nchunks(n)), np.int32(cfg.slices(n)))
        items = -(-self._capacity // cfg.mb) * cfg.slices(n)
        grid = max(1, min(items, self._sms * self._blocks_per_sm))
        wide = self._wide_rows if ph.few else 0
        self._launch("layer", grid, cfg.threads, args + (np.int32(wide + 1 if wide else 0), _ANY_ROWS), self._smem,
                     what=f"layer {k + 1}")
        if wide:
            self._enqueue_wide(k, wide, src, count_out, wcount_out, view.eidx[a:b], evals, meta, bias, out_map)
        if self._fused:
            self._cur = nxt
            return count_out
        # Sliced: rows were written in place into buffer nxt and flagged; the survivors move
        # back into buffer cur while their ids and weights move cur -> nxt, so the id and
        # weight buffers swap roles.
        self._launch("compact", max(1, min(self._capacity, self._sms * 16)), 256,
                     (self._y[nxt], self._y[cur], self._ids[cur], self._ids[nxt], self._wts[cur], self._wts[nxt],
                      self._flags, src, count_out, wcount_out, np.int32(n), np.int32(0), _ANY_ROWS),
                     what=f"layer {k + 1}, compaction")
        self._ids[cur], self._ids[nxt] = self._ids[nxt], self._ids[cur]
        self._wts[cur], self._wts[nxt] = self._wts[nxt], self._wts[cur]
        return count_out

    def _enqueue_wide(self, k: int, rows: int, src, count_out, wcount_out, eidx, evals, meta, bias, out_map):
        """Queue layer k's wide path (``kernels/layer.cu``), run on the device when 1..rows rows
        enter it: sums of the distinct columns over the grid, expansion, then the live rows
        into the next buffer with their ids and weights (where the per-layer kernel would
        have put them)."""
        cfg, n, cur, nxt = self.config, self.network.neurons, self._cur, 1 - self._cur
        lo, hi = np.int32(1), np.int32(rows)
        warps = rows * cfg.opt * cfg.nwarps
        self._launch("wide_sums", max(1, min(-(-warps // 8), self._sms * 8)), 256,
                     (self._y[cur], src, lo, hi, eidx, evals, meta, self._scalars[k], self._wide_sums,
                      self._wide_live, np.int32(n),
                      np.int32(cfg.chunk), np.int32(cfg.nchunks(n)), np.int32(cfg.opt), np.int32(cfg.nwarps)),
                     what=f"layer {k + 1}, wide sums")
        self._launch("wide_expand", max(1, min(-(-n // 256), self._sms * 4)), 256,
                     (self._wide_sums, np.int32(cfg.outputs_per_block), src, lo, hi, out_map, bias, self._scalars[k],
                      self.dtype(self.network.ymax), self._wide_z, self._wide_live, np.int32(n)),
                     what=f"layer {k + 1}, wide expansion")
        self._launch("wide_place", max(1, min(-(-n // 256), self._sms * 4)), 256,
                     (self._wide_z, self._y[nxt], self._ids[cur], self._ids[nxt], self._wts[cur], self._wts[nxt],
                      self._wide_live, src, lo, hi, count_out, wcount_out, np.int32(n)),
                     what=f"layer {k + 1}, wide placement")

    def _enqueue_merge(self, i: int, src):
        """Queue a merge pass over the current rows (see ``kernels/merge.cu``)."""
        cp = cupy(self.name)
        cur, n = self._cur, self.network.neurons
        stream = cp.cuda.get_current_stream()
        for table in (self._keys, self._vals):
            cp.cuda.runtime.memsetAsync(table.data.ptr, 0, table.nbytes, stream.ptr)
        grid = max(1, min(self._capacity, self._sms * 16))
        self._launch("find", grid, 256, (self._y[cur], self._wts[cur], src, self._keys, self._vals,
                                         np.int32(self._keys.size - 1), self._rep, self._wadd, np.int32(n)),
                     what="merge")
        out = self._stat(("ctr", i))
        self._launch("mcompact", grid, 256, (self._y[cur], self._y[1 - cur], self._ids[cur], self._ids[1 - cur],
                                             self._wts[cur], self._wts[1 - cur], src, out, self._rep, self._wadd,
                                             self._parent, np.int32(n)), what="merge, compaction")
        self._cur = 1 - cur
        return out

    def _clear_counters(self, start: int) -> None:
        """Zero the per-layer counters after layer ``start`` and every phase counter (capturable)."""
        cp = cupy(self.name)
        stream = cp.cuda.get_current_stream()
        base, depth = self._stats.data.ptr, self.network.depth
        for name in ("counts", "wcounts", "deaths"):
            first = self._stat_off[name] + start + 1
            cp.cuda.runtime.memsetAsync(base + 4 * first, 0, 4 * (depth - start), stream.ptr)
        first = self._stat_off["wdeaths"] + start + 1                 # wdeaths, ctr, tickets
        cp.cuda.runtime.memsetAsync(base + 4 * first, 0, 4 * (self._stat_off["cur"] - first), stream.ptr)

    def _enqueue_run(self, start: int, phases: list[_Phase]) -> None:
        """Queue a whole run of ``phases`` on the current stream (capturable, no streaming)."""
        self._clear_counters(start)
        end = self._enqueue(phases, 0, self._count_cur)
        self._launch("copy", 1, 32, (end, self._count_cur), what="count")

    def _graph(self, start: int, stop: int, phases: list[_Phase]):
        """The captured graph of a run (built once per range and buffer arrangement)."""
        cp = cupy(self.name)
        key = (start, stop, self._cur, tuple(a.data.ptr for a in (*self._ids, *self._wts)))
        if key not in self._graphs:
            before = (self._cur, list(self._ids), list(self._wts))
            stream = cp.cuda.Stream(non_blocking=True)
            with stream:
                stream.begin_capture()
                self._enqueue_run(start, phases)
                graph = stream.end_capture()
            after = (self._cur, list(self._ids), list(self._wts))
            self._cur, self._ids, self._wts = before[0], list(before[1]), list(before[2])
            self._graphs[key] = (graph, stream, after)
        return self._graphs[key]

    def _run_streaming(self, start: int, phases: list[_Phase]) -> None:
        """Run ``phases`` with streamed chunks copied into two slots one chunk ahead.

        The copy of a chunk waits until the phases that read its slot two chunks earlier
        are done; the phases of a chunk wait for its copy.
        """
        cp = cupy(self.name)
        compute = cp.cuda.get_current_stream()
        copy = cp.cuda.Stream(non_blocking=True)
        copied = [cp.cuda.Event(), cp.cuda.Event()]
        freed = [cp.cuda.Event(), cp.cuda.Event()]
        for e in freed:
            e.record(compute)
        order = sorted({ph.chunk for ph in phases if ph.chunk >= 0})
        vbytes = self._value_bytes
        n, r0 = self.network.neurons, int(self._entry_off[self._resident])

        def fetch(c):
            slot = c % 2
            a, b = self._chunks[c]
            e0, e1 = int(self._entry_off[a]) - r0, int(self._entry_off[b]) - r0
            idx, vals, omap = self._slots[slot]
            copy.wait_event(freed[slot])
            cp.cuda.runtime.memcpyAsync(idx.data.ptr, self._host_idx[e0:].ctypes.data, (e1 - e0) * 2, 1, copy.ptr)
            if vbytes:
                cp.cuda.runtime.memcpyAsync(vals.data.ptr, self._host_vals[e0:].ctypes.data, (e1 - e0) * vbytes, 1,
                                            copy.ptr)
            if self.config.dedupe:
                m0 = (a - self._resident) * n
                cp.cuda.runtime.memcpyAsync(omap.data.ptr, self._host_map[m0:].ctypes.data, (b - a) * n * 2, 1,
                                            copy.ptr)
            copied[slot].record(copy)

        for c in order[:2]:
            fetch(c)
        self._clear_counters(start)
        src, i, pending = self._count_cur, 0, list(order[2:])
        while i < len(phases):
            chunk = phases[i].chunk
            j = i
            while j < len(phases) and phases[j].chunk == chunk:
                j += 1
            if chunk >= 0:
                compute.wait_event(copied[chunk % 2])
            src = self._enqueue(phases[i:j], i, src)
            if chunk >= 0:
                freed[chunk % 2].record(compute)
                if pending:
                    fetch(pending.pop(0))
            i = j
        self._launch("copy", 1, 32, (src, self._count_cur), what="count")

    # ------------------------------------------------------------------ infer
    def warm_up(self, start: int, stop: int) -> None:
        """Capture and upload the CUDA graph of layers ``start..stop-1`` for the samples
        loaded, so that :meth:`infer` launches a ready graph: capturing and instantiating
        (with the kernels' lazy loading) cost milliseconds once per range and buffer
        arrangement, which a single run would otherwise count as inference. Nothing to do
        when the weights stream or in debug mode (no graph)."""
        if (self._general is not None or self.network is None or self.features is None or stop <= start
                or self.streaming or self.debug):
            return
        with self._dev():
            graph, stream, _ = self._graph(start, stop, self._phases(start, stop))
            graph.upload(stream)
            stream.synchronize()

    def _infer(self, start: int, stop: int):
        if self._general is not None:
            ids, survivors, extra = self._general.infer(start, stop)
            return ids + 1, survivors, extra
        cp = cupy(self.name)
        phases = self._phases(start, stop) if stop > start else []
        graphed = False
        merged = self._parents is not None or any(ph.kind == "merge" for ph in phases)
        with self._dev():
            stream = cp.cuda.get_current_stream()
            if not phases:
                pass
            elif self.streaming:
                self._run_streaming(start, phases)
            elif self.debug:
                self._enqueue_run(start, phases)
            else:
                graph, stream, after = self._graph(start, stop, phases)
                graph.launch(stream)
                self._cur, self._ids, self._wts = after[0], list(after[1]), list(after[2])
                graphed = True
            # Everything the host needs, in one synchronization: the counters, the ids of
            # every row the buffers can hold, and the merge parents.
            copies = [(self._stats_host, self._stats), (self._ids_host, self._ids[self._cur])]
            if merged:
                copies.append((self._parent_host, self._parent))
            for host, dev in copies:
                cp.cuda.runtime.memcpyAsync(host.ctypes.data, dev.data.ptr, min(host.nbytes, dev.nbytes), 2,
                                            stream.ptr)
            stream.synchronize()
        stats = self._stats_host.astype(np.int64)
        alive = int(stats[self._stat_off["cur"]])
        ids = self._ids_host[:alive].astype(np.int64)
        if merged:
            self._parents = self._parent_host[:self._loaded].copy()
        survivors, entering, leaving = self._counts(start, stop, phases, stats)
        self._alive_rows, self._alive_ids = alive, ids
        self._alive_samples = int(survivors[-1]) if stop > start else self._alive_samples
        categories = self._members(ids, self._roots())
        cfg = self.config
        extra = {
            "device": self._device_label,
            "config": {"threads": cfg.threads, "opt": cfg.opt, "mb": cfg.mb, "chunk": cfg.chunk,
                       "dedupe": cfg.dedupe, "stationary": cfg.stationary, "prefetch": cfg.prefetch,
                       "stages": cfg.prefetch_stages,
                       "tail": None if self.tail_config is None else {
                           "mb": self.tail_config.mb, "stages": self.tail_config.prefetch_stages},
                       "slices": cfg.slices(self.network.neurons), "nchunks": cfg.nchunks(self.network.neurons)},
            "value_mode": _VALUE_MODE_NAMES[self.plan.mode],
            "value_dtype": None if self.plan.value_dtype is None else str(self.plan.value_dtype),
            "padding_ratio": self.padding_ratio,
            "distinct_columns": self.distinct_columns,
            "graph": graphed,
            "stream_weights": self.streaming,
            "weight_chunks": len(self._chunks),
            "merge": self.merging,
            "merged_samples": int(categories.size - ids.size),
            "rows_computed": entering.tolist(),
            # the schedule, for spdnn.floor: [first, stop, scope] of each segment (layers from start)
            "segments": [[ph.a - start, ph.b - start, "block" if ph.kind == "stationary" else "grid"]
                         for ph in phases if ph.kind != "merge"],
            "rows_left": leaving.tolist(), "adds_per_row": self.adds_per_row[start:stop],
            "weight_bytes": self.weight_bytes,
        }
        return categories + 1, survivors, extra

    def _counts(self, start: int, stop: int, phases: list[_Phase], stats: np.ndarray):
        """Samples alive after each layer run, rows entering each and rows left after each (before a
        merge that follows; int64 arrays, stop - start).

        Per-layer kernels count survivors directly (counts, wcounts); stationary segments
        count deaths (deaths, wdeaths), subtracted here from what entered the segment;
        a merge changes the rows, not the samples.
        """
        off = self._stat_off
        survivors = np.zeros(stop - start, dtype=np.int64)
        entering = np.zeros(stop - start, dtype=np.int64)
        leaving = np.zeros(stop - start, dtype=np.int64)
        rows, samples = self._alive_rows, self._alive_samples
        for i, ph in enumerate(phases):
            if ph.kind == "merge":
                rows = int(stats[off["ctr"] + i])
                continue
            a, b = ph.a - start, ph.b - start
            entering[a] = rows
            if ph.kind == "stationary":
                lost = np.cumsum(stats[off["deaths"] + ph.a + 1:off["deaths"] + ph.b + 1])
                lost_samples = np.cumsum(stats[off["wdeaths"] + ph.a + 1:off["wdeaths"] + ph.b + 1])
                entering[a + 1:b] = rows - lost[:-1]
                leaving[a:b] = rows - lost
                survivors[a:b] = samples - lost_samples
                rows, samples = rows - int(lost[-1]), int(survivors[b - 1])
            else:
                rows = leaving[a] = int(stats[off["counts"] + ph.a + 1])
                samples = survivors[a] = int(stats[off["wcounts"] + ph.a + 1])
        return survivors, entering, leaving

    def _roots(self) -> np.ndarray | None:
        """Each loaded sample's representative after every merge so far (itself if never
        merged), int64 (loaded,); None when nothing was merged."""
        parents = self._parents
        if parents is None or not (parents >= 0).any():
            return None
        root = np.where(parents >= 0, parents, np.arange(parents.size)).astype(np.int64)
        while True:                                     # follow chains of merges to their end
            nxt = root[root]
            if np.array_equal(nxt, root):
                return root
            root = nxt

    def _members(self, ids: np.ndarray, root: np.ndarray | None) -> np.ndarray:
        """Sorted 0-based sample ids of the alive rows ``ids`` and of every sample merged into
        them (``root``: :meth:`_roots`)."""
        if root is None:
            return np.sort(ids)
        alive = np.zeros(root.size, dtype=bool)
        alive[ids] = True
        return np.flatnonzero(alive[root])

    def _activations(self):
        """Every alive sample's row (merged samples share their representative's), sorted by id."""
        if self._general is not None:
            return self._general.activations()
        with self._dev():
            y = self._y[self._cur][:self._alive_rows].get()
        ids, root = self._alive_ids, self._roots()
        members = self._members(ids, root)
        position = np.full(max(self._loaded, 1), -1, dtype=np.int64)
        position[ids] = np.arange(ids.size)
        rows = position[members if root is None else root[members]]
        return members, sp.csr_matrix(y[rows].astype(np.float64))
