"""The plan of a challenge run on the CUDA engine: what runs where, decided on the host.

Plain numpy, no CuPy (tested on the CPU in CI). From a network, the arithmetic type, the
device's shared memory a block and a memory budget, :func:`plan_challenge` chooses

* the blocking (:func:`choose_blocking`: stationary tiles or the per-layer kernel,
  deduplicated columns or not), its prefetch stages and the one-row tail instance;
* the packed layout of every layer (:mod:`.layout`) and how weight values are stored
  (one value a layer, half precision, or the activation type);
* which layers stay resident on the device and which stream from host memory, a chunk
  of layers at a time (:func:`plan_streaming`);
* the counters the kernels write (:class:`Counters`).

:meth:`ChallengePlan.phases` cuts a range of layers into launches (segments, layers,
merge passes); :func:`count_survivors`, :func:`merge_roots` and :func:`merged_members`
turn what the device counted back into survivors and categories. The engine
(:mod:`.engine`) allocates, uploads, launches and reads back; it decides nothing here.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from ...errors import DeviceMemoryError, OptionError, SpdnnError
from ...network import Network
from ..columns import pays_to_dedupe, unique_columns
from .layout import (VALUE_ARRAY, KernelConfig, PackedLayer, ValuePlan, choose_config, distinct_tail_smem_bytes,
                     narrowest_exact_dtype, pack_layer, stationary_smem_bytes, value_plan)

__all__ = ["ChallengePlan", "Phase", "Counters", "plan_challenge", "choose_blocking", "plan_streaming",
           "merge_points", "samples_fitting", "batch_size", "bytes_per_sample", "count_survivors",
           "merge_roots", "merged_members", "map_layers", "check_invariants", "PREFETCH_STAGES", "TAIL_STAGES"]

#: Prefetch stages of the stationary kernel (the layer running and the next two in flight),
#: and of its one-row tail instance.
PREFETCH_STAGES = 3
TAIL_STAGES = 4

#: Samples that must fit beside the weights for a plan to be worth running.
_MIN_SAMPLES = 64


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


def map_layers(fn, depth: int, *, start: int = 0) -> list:
    """[fn(k) for k in start..depth-1], on host threads (numpy releases the GIL)."""
    workers = min(16, os.cpu_count() or 1, max(depth - start, 1))
    if workers <= 1:
        return [fn(k) for k in range(start, depth)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, range(start, depth)))


@dataclass(frozen=True)
class Phase:
    """One step of a run: 'stationary' (layers a..b-1 in one launch), 'layer' (layer a) or
    'merge' (before layer a). ``chunk``: the streamed weight chunk it reads (-1: resident);
    ``few``: rows may be few (after a merge): a stationary segment is queued with its tail
    instance, a deduplicated layer with the wide path."""

    kind: str
    a: int
    b: int
    chunk: int = -1
    few: bool = False


def bytes_per_sample(neurons: int, itemsize: int) -> int:
    """Device bytes of one alive sample: two activation rows, ids, weights, flags, merge
    arrays and hash-table slots, its parent entry."""
    return 2 * neurons * itemsize + 4 * (2 + 2 + 1 + 1 + 1 + 1) + 2 * (8 + 4)


def samples_fitting(budget: int, per_sample: int, itemsize: int, live: int, nnz: int,
                    cap: int | None = None) -> int:
    """Samples that fit ``budget`` bytes when ``live`` rows carry ``nnz`` feature nonzeros
    (uploaded as CSR beside the buffers), at most ``cap``."""
    per = per_sample
    if live:
        per += -(-nnz // live) * (4 + itemsize) + 8
    most = max(budget // per, 0)
    return int(most if cap is None else min(most, cap))


def batch_size(features: sp.csr_matrix, budget: int, per_sample: int, itemsize: int, *,
               cap: int | None = None, least: int = 1) -> int:
    """The most samples a load may hold such that every batch of that many consecutive
    samples fits ``budget`` (:func:`samples_fitting`; a batch's live rows may carry more
    nonzeros than the average). Raises DeviceMemoryError when fewer than ``least`` would."""
    total = features.shape[0]
    if not total:
        return 1
    indptr = features.indptr
    live_before = np.concatenate(([0], np.cumsum(np.diff(indptr) > 0)))
    everything = samples_fitting(budget, per_sample, itemsize, int(live_before[-1]), int(features.nnz), cap)
    batch = max(1, min(total, everything))
    while batch > 1:
        excess = 0
        for b0 in range(0, total, batch):
            b1 = min(total, b0 + batch)
            live = int(live_before[b1] - live_before[b0])
            fit = samples_fitting(budget, per_sample, itemsize, live, int(indptr[b1] - indptr[b0]), cap)
            excess = max(excess, live - fit)
        if excess <= 0:
            break
        batch = max(1, batch - excess)
    if batch < min(total, least):
        raise DeviceMemoryError(f"cuda engine: not even {least} samples fit the device memory budget")
    return batch


class Counters:
    """Where the kernels count, in one int32 array read back at once.

    ``counts[L+1]`` and ``wcounts[L+1]``: rows and samples alive after each layer run by
    the per-layer kernel; ``deaths[L+1]`` and ``wdeaths[L+1]``: rows and samples dying at
    each layer of a stationary segment; ``ctr[P]`` and ``tickets[P]``: per phase (rows
    leaving it, blocks done); ``cur``: the current row count.
    """

    def __init__(self, depth: int):
        phases = 2 * depth + 8
        sizes = {"counts": depth + 1, "wcounts": depth + 1, "deaths": depth + 1, "wdeaths": depth + 1,
                 "ctr": phases, "tickets": phases, "cur": 1}
        starts = np.concatenate(([0], np.cumsum(list(sizes.values()))[:-1])).tolist()
        self.depth = depth
        self.offset = dict(zip(sizes, starts))
        self.size = int(sum(sizes.values()))

    def at(self, name: str, i: int = 0) -> int:
        """Index of entry ``i`` of counter ``name``."""
        return self.offset[name] + int(i)


@dataclass
class ChallengePlan:
    """Every host-side decision of a challenge run (see the module docstring).

    Attributes
    ----------
    neurons, depth : int
    dtype : numpy.dtype
        The activations' type (float32 or float64).
    config : KernelConfig
        The blocking (with its prefetch stages).
    tail_config : KernelConfig or None
        The one-row tail instance of stationary segments after a merge (None: none).
    distinct_tail : bool
        The tail instance is ``kernels/tail.cu`` (a row held as its distinct values; needs
        deduplicated columns, one bias value and resident weights), else ``stationary.cu``.
    values : ValuePlan
        How weight values are stored (one a layer, or per entry in ``values.value_dtype``).
    value_dtype : numpy.dtype or None
        The stored per-entry value type (None: not stored).
    scalars : ndarray (depth,), ``dtype``
        Each layer's one weight value (0 where values are stored per entry).
    entry_off : ndarray (depth + 1,), int64
        First packed entry of each layer (the layers' entries concatenated).
    meta_off : ndarray (depth + 1,), int64
        First warp-slice row of each layer in the concatenated ``meta`` tables.
    max_entries : int
        Most packed entries of a layer (the stationary kernel's prefetch stage size).
    smem, tail_smem : int
        Dynamic shared memory of the main and the tail kernel (bytes a block).
    layer_bytes : ndarray (depth,), int64
        Device bytes of each layer's indices, values and out_map.
    weight_bytes : int
        Bytes of weights read once a layer (``layer_bytes`` and the meta tables).
    resident : int
        Layers 0..resident-1 stay on the device; ``chunks`` [(a, b), ...] stream the rest.
    slot_bytes : int
        Size of each of the two device slots streamed chunks are copied into (0: none).
    merging : bool
        Identical rows are merged before the :func:`merge_points`.
    padding_ratio, distinct_columns : float
        Packed entries over nonzeros; mean distinct columns a layer.
    adds_per_row : list of int
        Additions a row costs at each layer (the floor's arithmetic).
    """

    neurons: int
    depth: int
    dtype: np.dtype
    config: KernelConfig
    tail_config: KernelConfig | None
    values: ValuePlan
    value_dtype: np.dtype | None
    scalars: np.ndarray
    entry_off: np.ndarray
    meta_off: np.ndarray
    max_entries: int
    smem: int
    tail_smem: int
    layer_bytes: np.ndarray
    weight_bytes: int
    merging: bool
    padding_ratio: float
    distinct_columns: float
    adds_per_row: list
    resident: int = 0
    chunks: list = field(default_factory=list)
    slot_bytes: int = 0
    distinct_tail: bool = False

    @property
    def streaming(self) -> bool:
        """Whether some layers stream from host memory."""
        return bool(self.chunks)

    @property
    def value_bytes(self) -> int:
        """Bytes of one stored weight value (0: values are not stored, one per layer)."""
        return 0 if self.value_dtype is None else np.dtype(self.value_dtype).itemsize

    @property
    def fused(self) -> bool:
        """The per-layer kernel writes whole rows (one slice): no compaction launch."""
        return self.config.slices(self.neurons) == 1

    def bytes_per_sample(self) -> int:
        return bytes_per_sample(self.neurons, np.dtype(self.dtype).itemsize)

    def chunk_of(self, k: int) -> int:
        """The streamed chunk holding layer ``k`` (-1: resident)."""
        for i, (a, b) in enumerate(self.chunks):
            if a <= k < b:
                return i
        return -1

    def phases(self, start: int, stop: int) -> list[Phase]:
        """The steps of layers start..stop-1: cut at merge points and streamed chunks."""
        points = merge_points(self.depth) if self.merging else []
        merges = [k for k in points if start < k < stop]
        first_merge = points[0] if points else self.depth
        edges = {start, stop, *merges}
        edges.update(a for a, _ in self.chunks if start < a < stop)
        if self.chunks and start < self.resident < stop:
            edges.add(self.resident)
        cuts = sorted(edges)
        phases = []
        for a, b in zip(cuts, cuts[1:]):
            chunk = self.chunk_of(a)
            if a in merges:
                phases.append(Phase("merge", a, a, chunk))
            if self.config.stationary:
                phases.append(Phase("stationary", a, b, chunk, few=a in merges))
            else:
                phases.extend(Phase("layer", k, k + 1, chunk, few=first_merge <= k) for k in range(a, b))
        return phases

    def describe(self) -> dict:
        """The blocking and layout, as the engine reports them in ``InferenceResult.extra``."""
        cfg, n = self.config, self.neurons
        return {
            "config": {"threads": cfg.threads, "cols_per_thread": cfg.cols_per_thread,
                       "rows_per_tile": cfg.rows_per_tile, "chunk": cfg.chunk,
                       "dedupe": cfg.dedupe, "stationary": cfg.stationary, "prefetch": cfg.prefetch,
                       "stages": cfg.prefetch_stages,
                       "tail": None if self.tail_config is None else {
                           "rows_per_tile": self.tail_config.rows_per_tile, "stages": self.tail_config.prefetch_stages,
                           "distinct": self.distinct_tail},
                       "slices": cfg.slices(n), "nchunks": cfg.nchunks(n)},
            "value_mode": VALUE_MODE_NAMES[self.values.mode],
            "value_dtype": None if self.values.value_dtype is None else str(self.values.value_dtype),
            "padding_ratio": self.padding_ratio,
            "distinct_columns": self.distinct_columns,
            "stream_weights": self.streaming,
            "weight_chunks": len(self.chunks),
            "merge": self.merging,
            "weight_bytes": self.weight_bytes,
        }


#: Names of the value modes (:data:`.layout.VALUE_SUM_THEN_SCALE`, ...), as reported.
VALUE_MODE_NAMES = ("sum_then_scale", "scalar", "array")


def choose_blocking(network: Network, itemsize: int, *, smem_limit: int, forced: KernelConfig | None = None,
                    dedupe="auto") -> tuple[KernelConfig, list | None]:
    """The blocking of a challenge network, and each layer's distinct columns
    (:func:`.columns.unique_columns`) when deduplicating, else None.

    ``forced``: a blocking to use as given (checked: a stationary one needs the whole row
    in one chunk). ``dedupe``: True, False or 'auto' (when every layer has few enough
    distinct columns to pay, :func:`.columns.pays_to_dedupe`).
    """
    n = network.neurons
    if forced is not None:
        if forced.stationary and not forced.fits_stationary(n):
            raise OptionError(f"config={forced}: stationary needs chunk == N ({n}) and one slice")
        return forced, (_distinct_columns(network, judge=False) if forced.dedupe else None)
    columns = None if dedupe is False else _distinct_columns(network, judge=dedupe == "auto")
    if columns is not None:
        try:
            return choose_config(n, itemsize, virtual=max(r.size for r, _ in columns), smem_limit=smem_limit), columns
        except OptionError:
            if dedupe is True:
                raise
    return choose_config(n, itemsize, smem_limit=smem_limit), None


def _distinct_columns(network: Network, *, judge: bool):
    """unique_columns of every layer; with ``judge``, None unless deduplicating pays on every layer."""
    n = network.neurons
    first = unique_columns(network.layers[0])
    if judge and not pays_to_dedupe(first[0].size, n):
        return None
    rest = map_layers(lambda k: unique_columns(network.layers[k]), network.depth, start=1)
    out = [first, *rest]
    if judge and not all(pays_to_dedupe(r.size, n) for r, _ in out):
        return None
    return out


def plan_streaming(layer_bytes: np.ndarray, small: int, budget: int, per_sample: int,
                   stream_weights="auto") -> tuple[int, list, int]:
    """(resident, chunks, slot_bytes): layers [0, resident) stay on the device, the rest
    stream in ``chunks`` of consecutive layers through two slots of ``slot_bytes``.

    ``small``: bytes of the per-layer tables held beside; ``budget``: device bytes the
    engine may use; ``per_sample``: bytes of one sample (64 must fit). ``stream_weights``:
    True (stream everything in chunks of about a quarter), False (never) or 'auto' (when
    the weights do not fit beside the activations; keep a resident prefix).
    """
    sizes = np.asarray(layer_bytes, dtype=np.int64)
    depth, total = sizes.size, int(sizes.sum())
    stream = stream_weights
    if stream == "auto":
        stream = total + small + _MIN_SAMPLES * per_sample > budget or total > budget // 2
    if not stream:
        return depth, [], 0
    room = budget - small - _MIN_SAMPLES * per_sample
    slot = int(max(sizes.max(), min(total // 4 if stream_weights is True else total, room // 4)))
    if 2 * slot > room:
        raise DeviceMemoryError(f"cuda engine: even streaming, two slots of {slot} bytes of weights and "
                                f"{_MIN_SAMPLES} samples exceed the memory budget of {budget} bytes")
    resident = 0
    if stream_weights is not True:                     # 'auto' keeps what fits
        resident = int(np.searchsorted(np.cumsum(sizes), room - 2 * slot, side="right"))
    chunks, start = [], resident
    while start < depth:
        stop, used = start, 0
        while stop < depth and (stop == start or used + sizes[stop] <= slot):
            used += int(sizes[stop])
            stop += 1
        chunks.append((start, stop))
        start = stop
    return resident, chunks, slot


def _with_prefetch(cfg: KernelConfig, stages: int, fits) -> KernelConfig:
    """``cfg`` with ``stages`` prefetch stages if ``fits`` it (shared memory beside the tile;
    out_map copies need 16-byte rows), else ``cfg`` unchanged."""
    staged = replace(cfg, prefetch=True, stages=stages)
    return staged if fits(staged) else cfg


def plan_challenge(network: Network, dtype, weights, *, smem_limit: int, budget: int,
                   forced: KernelConfig | None = None, dedupe="auto", merge=True,
                   stream_weights="auto") -> tuple[ChallengePlan, list[PackedLayer]]:
    """Plan a challenge network: (the plan, every layer packed for it).

    Parameters
    ----------
    network : Network
        Of the challenge's form (``network.challenge_form``).
    dtype : numpy dtype
        float32 or float64: the activations' type.
    weights : callable
        ``weights(k)``: layer k's CSR as the engine computes with it (checked for range).
    smem_limit : int
        Shared memory a block may use on the device (bytes).
    budget : int
        Device bytes the engine may use in all.
    forced : KernelConfig, optional
        A blocking to use as given (no prefetch or tail added).
    dedupe, merge, stream_weights
        As the engine's options.

    The packed layers hold the host arrays to upload; the plan keeps no reference to them.
    """
    dtype = np.dtype(dtype)
    itemsize, n, depth = dtype.itemsize, network.neurons, network.depth
    cfg, columns = choose_blocking(network, itemsize, smem_limit=smem_limit, forced=forced, dedupe=dedupe)

    def pack(k):
        p = pack_layer(weights(k), cfg, n, columns=None if columns is None else columns[k])
        if p.uniform_value is None:
            exact = narrowest_exact_dtype(np.unique(p.values[p.idx != cfg.chunk]), dtype)
        else:
            exact = narrowest_exact_dtype(np.array([p.uniform_value]), dtype)
            p.values = None                      # rebuilt only if values must be stored
        return p, exact

    packed, exact = zip(*map_layers(pack, depth))
    packed = list(packed)
    uniforms = [p.uniform_value for p in packed]
    values = value_plan(uniforms, list(exact), dtype)
    value_dtype = values.value_dtype if values.mode == VALUE_ARRAY else None
    value_bytes = 0 if value_dtype is None else np.dtype(value_dtype).itemsize
    entry_off = np.zeros(depth + 1, dtype=np.int64)
    entry_off[1:] = np.cumsum([p.entries for p in packed])
    max_entries = int(max(p.entries for p in packed))

    def stationary_smem(c: KernelConfig) -> int:
        return stationary_smem_bytes(c, itemsize, max_entries=max_entries, value_bytes=value_bytes)

    def fits(c: KernelConfig) -> bool:
        return stationary_smem(c) <= smem_limit and (not c.dedupe or n % 8 == 0)

    tail = None
    if cfg.stationary and forced is None:
        # Prefetch the next layers into shared memory when the stages fit beside the tile;
        # the one-row tail instance keeps the packing (threads, cols_per_thread, chunk), not rows_per_tile.
        cfg = _with_prefetch(cfg, PREFETCH_STAGES, fits)
        tail = _with_prefetch(replace(cfg, rows_per_tile=1, prefetch=False), TAIL_STAGES, fits)
        tail = None if tail == cfg else tail
    smem = stationary_smem(cfg) if cfg.stationary else cfg.smem_bytes(itemsize)
    if smem > smem_limit:
        raise OptionError(f"config={cfg}: needs {smem} bytes of shared memory a block for this network, "
                          f"the device allows {smem_limit}")
    layer_bytes = np.array([p.entries * (2 + value_bytes) + (2 * n if cfg.dedupe else 0) for p in packed],
                           dtype=np.int64)
    meta_rows = [p.meta.shape[0] for p in packed]
    meta_bytes = int(sum(p.meta.nbytes for p in packed))
    plan = ChallengePlan(
        neurons=n, depth=depth, dtype=dtype, config=cfg, tail_config=tail, values=values, value_dtype=value_dtype,
        scalars=np.array([u if u is not None else 0.0 for u in uniforms], dtype=dtype),
        entry_off=entry_off, meta_off=np.concatenate(([0], np.cumsum(meta_rows))).astype(np.int64),
        max_entries=max_entries, smem=smem, tail_smem=0 if tail is None else stationary_smem(tail),
        layer_bytes=layer_bytes, weight_bytes=int(layer_bytes.sum()) + meta_bytes, merging=bool(merge),
        padding_ratio=float(entry_off[-1] / max(sum(p.packed_nnz for p in packed), 1)),
        distinct_columns=float(np.mean([p.virtual for p in packed])),
        adds_per_row=[int(p.packed_nnz) for p in packed])
    small = entry_off.nbytes + meta_bytes + network.bias.nbytes
    distinct = None
    if cfg.stationary and cfg.dedupe and forced is None and network.uniform_bias() is not None and plan.merging:
        distinct = _distinct_tail_config(cfg, lambda c: distinct_tail_smem_bytes(
            c, itemsize, max_entries=max_entries, value_bytes=value_bytes) <= smem_limit)
    # The distinct tail's composed indices and reps stay beside the layers; never streamed.
    extra = 0 if distinct is None else np.diff(entry_off) * 2 + 2 * distinct.outputs_per_block
    streaming = plan_streaming(layer_bytes + extra, small, budget, plan.bytes_per_sample(), stream_weights)
    if distinct is not None and streaming[1]:
        distinct, extra = None, 0
        streaming = plan_streaming(layer_bytes, small, budget, plan.bytes_per_sample(), stream_weights)
    plan.resident, plan.chunks, plan.slot_bytes = streaming
    if distinct is not None:
        plan.tail_config, plan.distinct_tail = distinct, True
        plan.tail_smem = distinct_tail_smem_bytes(distinct, itemsize, max_entries=max_entries, value_bytes=value_bytes)
        plan.weight_bytes += int(extra.sum())
    check_invariants(plan)
    return plan, packed


def _distinct_tail_config(cfg: KernelConfig, fits) -> KernelConfig | None:
    """The distinct tail's blocking (``kernels/tail.cu``): ``cfg``'s packing, one-row tiles
    and the deepest prefetch ring of :data:`TAIL_STAGES` down to 2 stages that ``fits``."""
    for stages in range(TAIL_STAGES, 1, -1):
        c = replace(cfg, rows_per_tile=1, prefetch=True, stages=stages)
        if fits(c):
            return c
    return None


def check_invariants(plan: ChallengePlan) -> None:
    """Check what the kernels assume of a plan and do not check themselves (a check in a
    kernel would cost every layer; ``kernels/*.cu`` state them): 16-bit indices reach the
    zero slot (``chunk + 1 <= 65536``); with prefetch, every layer's first entry and the
    largest layer's entries are multiples of 8 (16-byte ``cp.async`` of 16-bit indices) and
    a deduplicated row's out_map copies in 16-byte pieces (``N % 8 == 0``; the distinct
    tail copies none); the dynamic
    shared memory is the blocking's. Raises SpdnnError (an internal error: the layout broke
    its own rule)."""
    cfg, n = plan.config, plan.neurons
    broken = []
    if cfg.chunk + 1 > 65536:
        broken.append(f"chunk {cfg.chunk} + 1 exceeds 16-bit indices")
    for c, maps in ((cfg, True), (plan.tail_config, not plan.distinct_tail)):   # the distinct tail stages no out_map
        if c is None or not c.prefetch:
            continue
        if np.any(plan.entry_off % 8) or plan.max_entries % 8:
            broken.append("prefetched layers' entries are not multiples of 8")
        if maps and c.dedupe and n % 8:
            broken.append(f"prefetched out_maps need N % 8 == 0, N = {n}")
    if cfg.stationary and not cfg.fits_stationary(n):
        broken.append(f"a stationary blocking needs one chunk and one slice of {n}")
    if broken:
        raise SpdnnError(f"cuda engine (internal): the plan breaks what the kernels assume: {'; '.join(broken)}")


def count_survivors(counters: Counters, stats: np.ndarray, phases: list[Phase], start: int, stop: int,
                    rows: int, samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(survivors, entering, leaving), int64 arrays of stop - start: samples alive after each
    layer, rows entering each, rows left after each (before a merge that follows).

    ``stats``: the counters read back (:class:`Counters`); ``rows``, ``samples``: alive
    before layer ``start``. Per-layer kernels count survivors directly (counts, wcounts);
    stationary segments count deaths (deaths, wdeaths), subtracted here from what entered
    the segment; a merge changes the rows, not the samples.
    """
    off = counters.offset
    survivors = np.zeros(stop - start, dtype=np.int64)
    entering = np.zeros(stop - start, dtype=np.int64)
    leaving = np.zeros(stop - start, dtype=np.int64)
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


def merge_roots(parents: np.ndarray | None) -> np.ndarray | None:
    """Each loaded sample's representative after every merge (itself if never merged),
    int64 (loaded,), from the merge parents (-1: not merged); None when nothing was."""
    if parents is None or not (parents >= 0).any():
        return None
    root = np.where(parents >= 0, parents, np.arange(parents.size)).astype(np.int64)
    while True:                                     # follow chains of merges to their end
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def merged_members(ids: np.ndarray, root: np.ndarray | None) -> np.ndarray:
    """Sorted 0-based sample ids of the alive rows ``ids`` and of every sample merged into
    them (``root``: :func:`merge_roots`)."""
    if root is None:
        return np.sort(ids)
    alive = np.zeros(root.size, dtype=bool)
    alive[ids] = True
    return np.flatnonzero(alive[root])
