"""The CUDA engine: CuPy for memory and launches, CUDA C++ kernels compiled at run time.

Modules: :mod:`.plan` decides what runs where (blocking, packing, memory, phases,
counters; pure numpy, tested on the CPU), :mod:`.layout` packs the weights,
:mod:`.compilation` compiles the kernels (``kernels/*.cu``), :mod:`.general` runs networks
not of the challenge's form; this module allocates, uploads, launches and reads back
(docs/cuda-engine.md: which module to change for what, and how to check it without a GPU).

Design:

* activations are dense, sample-major rows of the alive samples in two device buffers
  used in turn; each row carries a sample id and a weight (the samples it stands for);
* **stationary tiles** wherever a tile of whole rows fits a block's shared memory
  (``kernels/stationary.cu``): a block keeps a few rows in shared memory through a whole
  segment of layers, so activations cross device memory once per segment and a layer
  costs a block a few barriers; rows are independent, so no block waits for another.
  A segment after a merge is queued twice, as tiles of ``rows_per_tile`` rows and as one-row tiles
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

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ...config import cupy_status, env_bytes, env_flag
from ...errors import DeviceMemoryError, OptionError
from ...network import Network
from ...options import check_merge, check_tristate, optional_index, optional_positive_int
from .._cupy import cupy, device, device_name, free_device_bytes, pinned_empty
from ..base import Engine
from .compilation import blocks_per_sm, compiled_kernels, kernel_instances
from .kernel_args import row_arguments
from .layout import KernelConfig, PackedLayer, compose_indices, distinct_reps, entry_values
from .plan import (ChallengePlan, Counters, Phase, batch_size, count_survivors, merge_roots,
                   merged_members, plan_challenge, samples_fitting)

__all__ = ["CudaEngine", "TAIL_ROWS_PER_SM", "WIDE_ROWS"]

#: The arguments the distinct tail (``kernels/tail.cu``) shares with the stationary kernel.
_TAIL_SHARED = ("y_in", "y_out", "ids_in", "ids_out", "mult_in", "mult_out", "count_in", "count_out", "ticket",
                "deaths", "sample_deaths", "entry_val", "warp_slices", "entry_off", "max_entries", "out_map",
                "ubias", "scalars", "ymax", "n", "k0", "k1")

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
        General networks: ``threads``, ``cols_per_thread``, ``rows_per_tile``, ``chunk`` (inputs staged
        at once), ``pipelined`` (two input buffers) and ``bank_order`` (float32: entries ordered
        for the shared-memory banks) forced on every sparse layer
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
        fields = {"threads", "cols_per_thread", "rows_per_tile", "chunk", "pipelined", "bank_order"}
        if blocking is not None and (not isinstance(blocking, dict) or set(blocking) - fields):
            raise OptionError(f"blocking={blocking!r}: expected a dict of 'threads', 'cols_per_thread', "
                              "'rows_per_tile', 'chunk', 'pipelined', 'bank_order'")
        self.blocking = blocking
        self._general = None
        self._plan: ChallengePlan | None = None

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
        """Plan (blocking, packing, memory; :mod:`.plan`), upload, compile."""
        self.network = network
        self.features = None
        self._general = None
        self._plan = None
        self._release_run()                           # release a previous run's buffers
        if not network.challenge_form:
            self._general = self._general_path(network)
            return
        dev = self._dev()
        self._device = dev
        self._device_label = device_name(dev)           # a properties query costs milliseconds
        with dev:
            self._plan, packed = plan_challenge(
                network, self.dtype, self.weights, smem_limit=self._smem_limit(), budget=self._budget(),
                forced=self.forced_config, dedupe=self.dedupe, merge=self.merging,
                stream_weights=self.stream_weights)
            self._upload(network, packed)
            del packed
            self._compile()
            dev.synchronize()

    @property
    def config(self) -> KernelConfig | None:
        """The blocking of the challenge path (None before :meth:`prepare` or on the general path)."""
        return None if self._plan is None else self._plan.config

    @property
    def tail_config(self) -> KernelConfig | None:
        """The one-row tail instance's blocking (None: none)."""
        return None if self._plan is None else self._plan.tail_config

    @property
    def streaming(self) -> bool:
        """Whether weights stream from host memory."""
        return self._plan is not None and self._plan.streaming

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

    def _upload(self, network: Network, packed: list[PackedLayer]) -> None:
        """Copy the layout to the device (resident layers) and to pinned host memory (streamed)."""
        cp = cupy(self.name)
        plan = self._plan
        cfg, n, depth, off = plan.config, plan.neurons, plan.depth, plan.entry_off
        self._meta = cp.asarray(np.concatenate([p.meta for p in packed]))
        self._entry_off_dev = cp.asarray(off)
        self._scalars_dev = cp.asarray(plan.scalars)
        self._one_bias = network.uniform_bias()
        if self._one_bias is not None:
            self._bias = cp.full((1, n), self._one_bias, dtype=self.dtype)
        else:
            self._bias = cp.asarray(np.ascontiguousarray(network.bias, dtype=self.dtype))
        self._bias_stride = 0 if self._bias.shape[0] == 1 else n
        vdtype = plan.value_dtype
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

        if plan.distinct_tail:          # kernels/tail.cu: composed indices and reps, resident
            cols = plan.tail_config.outputs_per_block
            cidx = [np.full(packed[0].entries, cols, np.uint16)]      # layer 0 never runs there
            cidx += [compose_indices(packed[k].idx, packed[k - 1].out_map, n, cols) for k in range(1, depth)]
            self._ecidx = cp.asarray(np.concatenate(cidx))
            self._reps = cp.asarray(np.concatenate([distinct_reps(p.out_map, cols) for p in packed]))
        r = plan.resident
        idx, vals, omap = host(0, r)
        self._eidx = cp.asarray(idx if idx.size else np.zeros(8, np.uint16))
        self._evals = self._dummy_vals if vals is None or not vals.size else cp.asarray(vals)
        self._out_map = self._dummy_map if omap is None or not omap.size else cp.asarray(omap)
        if plan.streaming:
            idx, vals, omap = host(r, depth)
            self._host_idx = pinned_empty(idx.size, np.uint16)
            self._host_idx[:idx.size] = idx
            self._host_vals = None if vals is None else pinned_empty(vals.size, vdtype)
            if vals is not None:
                self._host_vals[:vals.size] = vals
            self._host_map = None if omap is None else pinned_empty(omap.size, np.uint16)
            if omap is not None:
                self._host_map[:omap.size] = omap
            most_entries = max(int(off[b] - off[a]) for a, b in plan.chunks)
            most_layers = max(b - a for a, b in plan.chunks)
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

    def _compile(self) -> None:
        """Get (compile on first use) the kernels of the plan; their launch limits."""
        plan, dev = self._plan, self._device
        cfg = plan.config
        kernels = {}
        for filename, names in kernel_instances(cfg, plan.neurons, self.dtype, plan.value_dtype, plan.values.mode,
                                                tail=plan.tail_config, distinct_tail=plan.distinct_tail).items():
            kernels.update(compiled_kernels(dev.id, filename, names))
        main = kernels["stationary" if cfg.stationary else "layer"]
        for kernel, smem in ((main, plan.smem), (kernels.get("tail"), plan.tail_smem)):
            if kernel is not None and smem > 48 * 1024:        # beyond the default: opt in
                kernel.fn.max_dynamic_shared_size_bytes = smem
        self._k = kernels
        self._sms = dev.attributes["MultiProcessorCount"]
        self._blocks_per_sm = blocks_per_sm(main, cfg.threads, plan.smem, dev)

    # ------------------------------------------------------------------ load
    def max_batch(self, features: sp.csr_matrix | None = None) -> int:
        """Most samples one batch may hold under the memory budget (and ``batch_samples``),
        for features like ``features`` (their nonzeros a live row are uploaded too)."""
        if self._general is not None:
            return self._general.max_batch(features)
        live = 0 if features is None else int(np.count_nonzero(np.diff(features.indptr)))
        nnz = 0 if features is None else int(features.nnz)
        return samples_fitting(self._activation_budget(), self._plan.bytes_per_sample(),
                               np.dtype(self.dtype).itemsize, live, nnz, self.batch_samples)

    def _activation_budget(self) -> int:
        """Device bytes left for a batch's buffers: the budget less the weights (with a cap;
        without, they are already out of the free memory), counting the run arrays held
        now as free (:meth:`_allocate` releases them before allocating)."""
        with self._dev():
            free = self._budget(self._run_bytes())          # the free memory (weights already out of it)
            if self.memory_cap_bytes is not None:          # a cap counts the weights in it
                slots = 2 * self._plan.slot_bytes
                tail = 0 if not self._plan.distinct_tail else self._ecidx.nbytes + self._reps.nbytes
                capped = self.memory_cap_bytes - int(self._eidx.nbytes + self._evals.nbytes + self._out_map.nbytes
                                                     + self._meta.nbytes + slots + tail)
                return min(capped, free)
            return free

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
        samples passes :meth:`_allocate`'s check (:func:`.plan.batch_size`)."""
        if self._general is not None:
            return self._general.batch_size(features)
        return batch_size(features, self._activation_budget(), self._plan.bytes_per_sample(),
                          np.dtype(self.dtype).itemsize, cap=self.batch_samples, least=self.config.rows_per_tile)

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
                             {"indptr": indptr, "indices": indices, "data": data, "y": self._y[0], "rows": m, "n": n},
                             what="load")
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
        self._counters = Counters(depth)             # every count, one array read back at once
        self._stats = cp.zeros(self._counters.size, dtype=np.int32)
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
        i = self._counters.at(*where)
        return self._stats[i:i + 1]

    # ------------------------------------------------------------------ launches
    def _launch(self, role: str, grid, block, args: dict, smem=0, *, what: str = ""):
        """Queue kernel ``role`` with its arguments by name (checked: :mod:`.kernel_args`)."""
        self._k[role].launch(grid, block, args, smem, debug_device=self._device if self.debug else None, what=what)

    def _view(self, chunk: int) -> _WeightView:
        if chunk < 0:
            return _WeightView(self._eidx, self._evals, self._out_map, 0, 0)
        a, _ = self._plan.chunks[chunk]
        idx, vals, omap = self._slots[chunk % 2]
        return _WeightView(idx, vals, omap, int(self._plan.entry_off[a]), a)

    def _enqueue(self, phases: list[Phase], first: int, src):
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

    def _enqueue_stationary(self, ph: Phase, i: int, src):
        """Queue layers ph.a..ph.b-1 as one stationary launch, or, for a segment after a
        merge, as the main and the tail instance, of which the row count in ``src`` runs one."""
        cfg, n, cur = self.config, self.network.neurons, self._cur
        view = self._view(ph.chunk)
        out = self._stat(("ctr", i))
        one = self._one_bias is not None
        args = {**row_arguments(cur, self._ids, self._wts, self._y), "count_in": src, "count_out": out,
                "ticket": self._stat(("tickets", i)), "deaths": self._stats[self._counters.at("deaths"):],
                "sample_deaths": self._stats[self._counters.at("wdeaths"):],
                "entry_idx": view.eidx, "entry_val": view.evals, "warp_slices": self._meta,
                "entry_off": self._entry_off_dev, "ebase": view.ebase, "max_entries": self._plan.max_entries,
                "out_map": view.out_map, "kbase": view.kbase, "bias": self._bias,
                "bias_stride": -1 if one else self._bias_stride, "ubias": self._one_bias if one else 0.0,
                "scalars": self._scalars_dev, "ymax": self.network.ymax, "n": n, "k0": ph.a, "k1": ph.b}
        what = f"layers {ph.a + 1}..{ph.b}"
        tail = self.tail_config if ph.few else None
        few = self._sms * TAIL_ROWS_PER_SM      # rows the tail instance takes
        grid = max(1, min(-(-self._capacity // cfg.rows_per_tile), self._sms * self._blocks_per_sm))
        self._launch("stationary", grid, cfg.threads,
                     {**args, "rows_lo": 0 if tail is None else few + 1, "rows_hi": _ANY_ROWS},
                     self._plan.smem, what=what)
        if tail is not None:
            if self._plan.distinct_tail:          # kernels/tail.cu: resident weights, one bias value
                args = {**{a: args[a] for a in _TAIL_SHARED}, "entry_cidx": self._ecidx, "reps": self._reps}
            self._launch("tail", max(1, min(self._capacity, few)), tail.threads,
                         {**args, "rows_lo": 0, "rows_hi": few}, self._plan.tail_smem, what=what + " (tail)")
        self._cur = 1 - cur
        return out

    def _enqueue_layer(self, ph: Phase, src):
        """Queue layer ph.a with the per-layer kernel (and the compaction when sliced)."""
        cfg, n, k = self.config, self.network.neurons, ph.a
        cur, nxt = self._cur, 1 - self._cur
        view = self._view(ph.chunk)
        plan = self._plan
        a, b = int(plan.entry_off[k] - view.ebase), int(plan.entry_off[k + 1] - view.ebase)
        evals = view.evals[a:b] if plan.value_dtype is not None else view.evals
        out_map = view.out_map[(k - view.kbase) * n:(k - view.kbase + 1) * n] if cfg.dedupe else view.out_map
        meta = self._meta[int(plan.meta_off[k]):int(plan.meta_off[k + 1])]
        bias = self._bias[k if self._bias_stride else 0]
        count_out = self._stat(("counts", k + 1))
        wcount_out = self._stat(("wcounts", k + 1))
        args = {**row_arguments(cur, self._ids, self._wts, self._y), "count_in": src, "count_out": count_out,
                "samples_out": wcount_out, "flags": self._flags, "entry_idx": view.eidx[a:b], "entry_val": evals,
                "warp_slices": meta, "bias": bias, "out_map": out_map, "scalar": plan.scalars[k],
                "ymax": self.network.ymax, "n": n, "chunk": cfg.chunk, "nchunks": cfg.nchunks(n),
                "slices": cfg.slices(n)}
        items = -(-self._capacity // cfg.rows_per_tile) * cfg.slices(n)
        grid = max(1, min(items, self._sms * self._blocks_per_sm))
        wide = self._wide_rows if ph.few else 0
        self._launch("layer", grid, cfg.threads, {**args, "rows_lo": wide + 1 if wide else 0, "rows_hi": _ANY_ROWS},
                     plan.smem, what=f"layer {k + 1}")
        if wide:
            self._enqueue_wide(k, wide, src, count_out, wcount_out, view.eidx[a:b], evals, meta, bias, out_map)
        if plan.fused:
            self._cur = nxt
            return count_out
        # Sliced: rows were written in place into buffer nxt and flagged; the survivors move
        # back into buffer cur while their ids and weights move cur -> nxt, so the id and
        # weight buffers swap roles.
        self._launch("compact", max(1, min(self._capacity, self._sms * 16)), 256,
                     {"src": self._y[nxt], "dst": self._y[cur], **row_arguments(cur, self._ids, self._wts),
                      "flags": self._flags, "count_in": src, "count_out": count_out, "samples_out": wcount_out, "n": n,
                      "rows_lo": 0, "rows_hi": _ANY_ROWS},
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
        span = {"count_in": src, "rows_lo": 1, "rows_hi": rows}
        scalar = self._plan.scalars[k]
        warps = rows * cfg.cols_per_thread * cfg.nwarps
        self._launch("wide_sums", max(1, min(-(-warps // 8), self._sms * 8)), 256,
                     {"y_in": self._y[cur], **span, "entry_idx": eidx, "entry_val": evals, "warp_slices": meta,
                      "scalar": scalar, "sums": self._wide_sums, "live": self._wide_live, "n": n, "chunk": cfg.chunk,
                      "nchunks": cfg.nchunks(n), "cols_per_thread": cfg.cols_per_thread, "layout_warps": cfg.nwarps},
                     what=f"layer {k + 1}, wide sums")
        self._launch("wide_expand", max(1, min(-(-n // 256), self._sms * 4)), 256,
                     {"sums": self._wide_sums, "vcols": cfg.outputs_per_block, **span, "out_map": out_map,
                      "bias": bias, "scalar": scalar, "ymax": self.network.ymax, "z_out": self._wide_z,
                      "live": self._wide_live, "n": n},
                     what=f"layer {k + 1}, wide expansion")
        self._launch("wide_place", max(1, min(-(-n // 256), self._sms * 4)), 256,
                     {"z": self._wide_z, "y_out": self._y[nxt], **row_arguments(cur, self._ids, self._wts),
                      "live": self._wide_live, **span, "count_out": count_out, "samples_out": wcount_out, "n": n},
                     what=f"layer {k + 1}, wide placement")

    def _enqueue_merge(self, i: int, src):
        """Queue a merge pass over the current rows (see ``kernels/merge.cu``)."""
        cp = cupy(self.name)
        cur, n = self._cur, self.network.neurons
        stream = cp.cuda.get_current_stream()
        for table in (self._keys, self._vals):
            cp.cuda.runtime.memsetAsync(table.data.ptr, 0, table.nbytes, stream.ptr)
        grid = max(1, min(self._capacity, self._sms * 16))
        self._launch("find", grid, 256, {"y": self._y[cur], "mult": self._wts[cur], "count_in": src,
                                         "keys": self._keys, "vals": self._vals, "tmask": self._keys.size - 1,
                                         "rep": self._rep, "mult_add": self._wadd, "n": n}, what="merge")
        out = self._stat(("ctr", i))
        self._launch("mcompact", grid, 256, {**row_arguments(cur, self._ids, self._wts, self._y), "count_in": src,
                                             "count_out": out, "rep": self._rep, "mult_add": self._wadd,
                                             "parent": self._parent, "n": n},
                     what="merge, compaction")
        self._cur = 1 - cur
        return out

    def _clear_counters(self, start: int) -> None:
        """Zero the per-layer counters after layer ``start`` and every phase counter (capturable)."""
        cp = cupy(self.name)
        stream = cp.cuda.get_current_stream()
        base, depth = self._stats.data.ptr, self.network.depth
        for name in ("counts", "wcounts", "deaths"):
            first = self._counters.at(name, start + 1)
            cp.cuda.runtime.memsetAsync(base + 4 * first, 0, 4 * (depth - start), stream.ptr)
        first = self._counters.at("wdeaths", start + 1)                 # wdeaths, ctr, tickets
        cp.cuda.runtime.memsetAsync(base + 4 * first, 0, 4 * (self._counters.at("cur") - first), stream.ptr)

    def _enqueue_run(self, start: int, phases: list[Phase]) -> None:
        """Queue a whole run of ``phases`` on the current stream (capturable, no streaming)."""
        self._clear_counters(start)
        end = self._enqueue(phases, 0, self._count_cur)
        self._launch("copy", 1, 32, {"src": end, "dst": self._count_cur}, what="count")

    def _graph(self, start: int, stop: int, phases: list[Phase]):
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

    def _run_streaming(self, start: int, phases: list[Phase]) -> None:
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
        plan = self._plan
        vbytes, off = plan.value_bytes, plan.entry_off
        n, r0 = plan.neurons, int(off[plan.resident])

        def fetch(c):
            slot = c % 2
            a, b = plan.chunks[c]
            e0, e1 = int(off[a]) - r0, int(off[b]) - r0
            idx, vals, omap = self._slots[slot]
            copy.wait_event(freed[slot])
            cp.cuda.runtime.memcpyAsync(idx.data.ptr, self._host_idx[e0:].ctypes.data, (e1 - e0) * 2, 1, copy.ptr)
            if vbytes:
                cp.cuda.runtime.memcpyAsync(vals.data.ptr, self._host_vals[e0:].ctypes.data, (e1 - e0) * vbytes, 1,
                                            copy.ptr)
            if plan.config.dedupe:
                m0 = (a - plan.resident) * n
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
        self._launch("copy", 1, 32, {"src": src, "dst": self._count_cur}, what="count")

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
            graph, stream, _ = self._graph(start, stop, self._plan.phases(start, stop))
            graph.upload(stream)
            stream.synchronize()

    def _infer(self, start: int, stop: int):
        if self._general is not None:
            ids, survivors, extra = self._general.infer(start, stop)
            return ids + 1, survivors, extra
        cp = cupy(self.name)
        phases = self._plan.phases(start, stop) if stop > start else []
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
        alive = int(stats[self._counters.at("cur")])
        ids = self._ids_host[:alive].astype(np.int64)
        if merged:
            self._parents = self._parent_host[:self._loaded].copy()
        survivors, entering, leaving = count_survivors(self._counters, stats, phases, start, stop,
                                                       self._alive_rows, self._alive_samples)
        self._alive_rows, self._alive_ids = alive, ids
        self._alive_samples = int(survivors[-1]) if stop > start else self._alive_samples
        categories = merged_members(ids, merge_roots(self._parents))
        extra = {
            "device": self._device_label,
            **self._plan.describe(),
            "graph": graphed,
            "merged_samples": int(categories.size - ids.size),
            "rows_computed": entering.tolist(),
            # the schedule, for spdnn.floor: [first, stop, scope] of each segment (layers from start)
            "segments": [[ph.a - start, ph.b - start, "block" if ph.kind == "stationary" else "grid"]
                         for ph in phases if ph.kind != "merge"],
            "rows_left": leaving.tolist(), "adds_per_row": self._plan.adds_per_row[start:stop],
        }
        return categories + 1, survivors, extra

    def _activations(self):
        """Every alive sample's row (merged samples share their representative's), sorted by id."""
        if self._general is not None:
            return self._general.activations()
        with self._dev():
            y = self._y[self._cur][:self._alive_rows].get()
        ids, root = self._alive_ids, merge_roots(self._parents)
        members = merged_members(ids, root)
        position = np.full(max(self._loaded, 1), -1, dtype=np.int64)
        position[ids] = np.arange(ids.size)
        rows = position[members if root is None else root[members]]
        return members, sp.csr_matrix(y[rows].astype(np.float64))
