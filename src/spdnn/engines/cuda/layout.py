"""Weight layout of the CUDA engine: plain numpy, no GPU needed (tested in CI).

The layer kernel (``kernels/layer.cu``) is a *gather*: each thread owns ``cols_per_thread`` output
neurons and, for a tile of ``rows_per_tile`` samples held in registers, sums
``y[s, i] * w[i, j]`` over the inputs ``i`` of its columns ``j``. A thread block
works on one *slice* of ``threads * cols_per_thread`` output neurons; the inputs are staged in
shared memory one *chunk* of ``chunk`` consecutive input neurons at a time (a chunk
of every sample of the tile: the block's input buffer), and the weights of that
chunk are read from a warp-sliced ELLPACK:

* a *warp slice* is (slice, chunk, t, warp): the 32 columns
  ``j = slice*threads*cols_per_thread + t*threads + warp*32 + lane``, lane = 0..31;
* its entries are stored lane-interleaved, entry k of lane l at ``offset + 32*k + l``,
  ``width`` entries per lane (the most any of the 32 columns has in that chunk);
  missing entries are padding that point to the buffer's zero slot (index ``chunk``)
  with weight 0, which adds an exact zero;
* indices are 16-bit and buffer-local (``i - chunk_index * chunk``), in ascending
  order within a column: the accumulation order is ascending input neuron, the fp64
  exactness contract of :mod:`spdnn.engines.base`.

``meta[sid] = (offset, width)`` for warp slice ``sid = ((slice*nchunks + c)*cols_per_thread + t)*nwarps
+ warp``. Everything here is 0-based.

Two kernels read this layout. ``kernels/layer.cu`` runs one layer per launch, staging
each chunk of the inputs from device memory. ``kernels/stationary.cu`` (a
:class:`KernelConfig` with ``stationary=True``: one chunk holding the whole row, one
slice) keeps a tile of rows in shared memory across many layers.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ...errors import OptionError
from ..base import is_power_of_two, sum_then_scale_exact
from ..columns import unique_columns

__all__ = ["KernelConfig", "PackedLayer", "ValuePlan", "choose_config", "pack_layer", "value_plan",
           "narrowest_exact_dtype", "entry_values", "stationary_smem_bytes", "choose_general_config",
           "compose_indices", "distinct_reps", "distinct_tail_smem_bytes", "NO_REP",
           "VALUE_SUM_THEN_SCALE", "VALUE_SCALAR", "VALUE_ARRAY"]

#: Value modes (the kernels' VMODE, ``spdnn::ValueMode`` in ``kernels/common.cuh``): every
#: weight of a layer is one power of two (sum the inputs, multiply once), one other value
#: (multiply each term by the scalar, no value loads), or per-entry values (loaded in the
#: narrowest exact type).
VALUE_SUM_THEN_SCALE, VALUE_SCALAR, VALUE_ARRAY = 0, 1, 2

#: Largest zero-slot index a 16-bit buffer-local index can hold.
_MAX_CHUNK = 65535


@dataclass(frozen=True)
class KernelConfig:
    """Blocking of the layer kernels.

    Attributes
    ----------
    threads : int
        Threads per block (a multiple of 32, at most 1024).
    cols_per_thread : int
        Columns per thread (the register tile's second axis): outputs, or distinct columns
        with ``dedupe``.
    rows_per_tile : int
        Rows per tile (the register tile's first axis; each weight load is reused ``rows_per_tile``
        times).
    chunk : int
        Input neurons staged in shared memory at once (per row of the tile).
    dedupe : bool
        Compute each distinct weight column once ("virtual outputs"), keep the sums in
        shared memory and expand them to the N outputs in the epilogue through a map.
        Identical columns give identical sums (same entries, same order), so this is
        exact; RadiX-Net layers have N/16 distinct columns.
    stationary : bool
        Use ``kernels/stationary.cu``: a tile of ``rows_per_tile`` rows stays in shared memory across
        the layers of a segment. Needs the whole row in one chunk and one slice.
    prefetch : bool
        (stationary) Copy the coming layers' warp-slice tables, indices, values and out_maps
        into shared memory while the current layer runs (cp.async).
    stages : int
        (prefetch) Shared-memory stages: the layer running and the ``stages - 1`` after it
        in flight (at least 2).
    pipelined : bool
        (general sparse kernel) Two input buffers: the next tile's inputs are copied in
        (cp.async) while the current tile is summed. Needs the whole row in one chunk.
    bank_order : bool
        (general sparse kernel, float32 only) Order each column's entries so that the lanes
        of one shared-memory phase read different banks where they can
        (:func:`bank_order_ranks`); this changes the order of each output's sum, so it is
        not the reference's order (float64 keeps ascending inputs).
    """

    threads: int
    cols_per_thread: int
    rows_per_tile: int
    chunk: int
    dedupe: bool = False
    stationary: bool = False
    prefetch: bool = False
    stages: int = 3
    pipelined: bool = False
    bank_order: bool = False

    def __post_init__(self):
        if not (32 <= self.threads <= 1024 and self.threads % 32 == 0):
            raise OptionError(f"threads={self.threads}: expected a multiple of 32 in 32..1024")
        if not 1 <= self.cols_per_thread <= 256:
            raise OptionError(f"cols_per_thread={self.cols_per_thread}: expected 1..256")
        if self.rows_per_tile not in (1, 2, 4, 8, 16):
            raise OptionError(f"rows_per_tile={self.rows_per_tile}: expected 1, 2, 4, 8 or 16")
        if not 1 <= self.chunk <= _MAX_CHUNK:
            raise OptionError(f"chunk={self.chunk}: expected 1..{_MAX_CHUNK} (16-bit buffer indices)")
        if self.prefetch and not self.stationary:
            raise OptionError("prefetch=True needs stationary=True")
        if not 2 <= self.stages <= 16:
            raise OptionError(f"stages={self.stages}: expected 2..16")
        for name in ("pipelined", "bank_order"):
            if getattr(self, name) and (self.stationary or self.dedupe):
                raise OptionError(f"{name}=True is for the general sparse kernel (not stationary, not dedupe)")

    @property
    def prefetch_stages(self) -> int:
        """Stages of the prefetch ring (the kernel's STAGES): ``stages``, or 0 without prefetch."""
        return self.stages if self.prefetch else 0

    @property
    def nwarps(self) -> int:
        return self.threads // 32

    @property
    def outputs_per_block(self) -> int:
        """Columns of one slice."""
        return self.threads * self.cols_per_thread

    def slices(self, neurons: int) -> int:
        """Slices of output neurons (1: a block owns whole rows, compaction is fused)."""
        if self.dedupe:
            return 1
        return -(-neurons // self.outputs_per_block)

    def nchunks(self, neurons: int) -> int:
        """Input chunks staged one after the other."""
        return -(-neurons // self.chunk)

    def fits_stationary(self, neurons: int) -> bool:
        """Whether ``kernels/stationary.cu`` can run this blocking (whole rows, one slice)."""
        return self.nchunks(neurons) == 1 and self.slices(neurons) == 1

    def staging_bytes(self, itemsize: int) -> int:
        """The input buffer: ``(chunk + 1) * rows_per_tile`` activations (+1: the zero slot), two of
        them when ``pipelined``, 16-byte aligned."""
        return _align16((2 if self.pipelined else 1) * (self.chunk + 1) * self.rows_per_tile * itemsize)

    def sums_bytes(self, itemsize: int) -> int:
        """Shared memory of the distinct columns' sums (``dedupe``), else 0."""
        return self.outputs_per_block * self.rows_per_tile * itemsize if self.dedupe else 0

    def smem_bytes(self, itemsize: int) -> int:
        """Dynamic shared memory of one block of ``kernels/layer.cu``: input buffer (+ sums)."""
        return self.staging_bytes(itemsize) + self.sums_bytes(itemsize)


def _align16(nbytes: int) -> int:
    return -(-int(nbytes) // 16) * 16


def stationary_smem_bytes(config: KernelConfig, itemsize: int, *, max_entries: int = 0,
                          value_bytes: int = 0) -> int:
    """Dynamic shared memory of one block of ``kernels/stationary.cu``.

    The tile's rows and zero slot, the distinct columns' sums (``dedupe``), and with
    ``prefetch`` ``config.stages`` stages of a layer's warp-slice table (``cols_per_thread *
    nwarps`` pairs of int32), ``max_entries`` 16-bit indices, their values (``value_bytes``
    each; 0 when values are not loaded) and out_map (``dedupe``). The same arithmetic as
    the kernel's carving of its shared memory.
    """
    total = config.staging_bytes(itemsize) + config.sums_bytes(itemsize)
    if config.prefetch:
        stage = (_align16(8 * config.cols_per_thread * config.nwarps) + max_entries * (2 + value_bytes)
                 + (2 * config.chunk if config.dedupe else 0))
        total += config.prefetch_stages * _align16(stage)
    return total


def choose_config(neurons: int, itemsize: int, *, smem_limit: int = 227 * 1024,
                  max_accumulators: int = 64, threads: int | None = None, rows_per_tile: int | None = None,
                  cols_per_thread: int | None = None, virtual: int | None = None,
                  stationary: bool | None = None) -> KernelConfig:
    """A blocking for N neurons and activations of ``itemsize`` bytes (4 or 8).

    Stationary first (``stationary`` None or True): the tile of rows stays in shared memory
    (``kernels/stationary.cu``) when whole rows of the largest tile among 4, 2, 1 rows fit
    ``smem_limit`` beside the sums, leaving room for two blocks a multiprocessor where
    possible; N must fit 16-bit indices and one slice. Otherwise the per-layer kernel:
    256 threads up to N = 2048, else 512; each thread owns ``ceil(N / threads)`` outputs,
    at most 32 (wider layers are sliced over blocks); the tile has the most rows (8, 4,
    2, 1) whose ``cols_per_thread * rows_per_tile`` accumulators fit ``max_accumulators`` and whose rows fit the
    shared memory, preferring whole rows (one chunk) and else equal chunks.

    Parameters
    ----------
    neurons : int
    itemsize : int
        4 (fp32) or 8 (fp64).
    smem_limit : int
        Dynamic shared memory a block may use, in bytes (227 KiB on an H100 or H200).
    max_accumulators : int
        Register budget of the tile, ``cols_per_thread * rows_per_tile``.
    threads, rows_per_tile, cols_per_thread : int, optional
        Force these (benchmark variants); the others follow the rules.
    virtual : int, optional
        Deduplicate (see :class:`KernelConfig`): the most distinct columns of a layer.
        Each thread then owns ``ceil(virtual / threads)`` of them (at most 32) and the
        block owns whole rows.
    stationary : bool, optional
        True: only a stationary blocking (OptionError if none fits); False: only the
        per-layer kernel; None: stationary where it fits.
    """
    n = int(neurons)
    if n < 1:
        raise OptionError(f"neurons={neurons}: expected >= 1")
    if stationary is not False:
        cfg = _choose_stationary(n, itemsize, virtual, smem_limit, max_accumulators, threads, rows_per_tile)
        if cfg is not None:
            return cfg
        if stationary:
            raise OptionError(f"N={n}: no stationary blocking fits {smem_limit} bytes of shared memory")
    if virtual is not None:
        return _choose_dedupe(n, itemsize, int(virtual), smem_limit, max_accumulators, threads, rows_per_tile)
    if threads is None:
        threads = 256 if n <= 2048 else 512
        threads = min(threads, -(-n // 32) * 32)
    if cols_per_thread is None:
        cols_per_thread = min(-(-n // threads), 32)
    if rows_per_tile is None:
        rows_per_tile = 1
        for cand in (8, 4, 2):
            if cand * cols_per_thread <= max_accumulators and (n + 1) * cand * itemsize <= smem_limit:
                rows_per_tile = cand
                break
        else:
            if n > 16384 and 2 * cols_per_thread <= max_accumulators:
                rows_per_tile = 2                      # rows do not fit anyway: reuse weights, chunk the rows
    return KernelConfig(threads=threads, cols_per_thread=cols_per_thread, rows_per_tile=rows_per_tile,
                        chunk=_chunk(n, rows_per_tile, itemsize, smem_limit))


def choose_general_config(n_in: int, n_out: int, itemsize: int, *, smem_limit: int = 227 * 1024,
                          max_accumulators: int = 64, threads: int | None = None, cols_per_thread: int | None = None,
                          rows_per_tile: int | None = None, chunk: int | None = None,
                          pipelined: bool = False, bank_order: bool = False) -> KernelConfig:
    """A blocking of ``kernels/general.cu``'s sparse kernel for a layer of n_in inputs and
    n_out outputs (activations of ``itemsize`` bytes).

    The rules of :func:`choose_config`'s per-layer kernel with the two widths apart: 256
    threads up to n_out = 2048, else 512 (fewer for narrow layers); each thread owns
    ``ceil(n_out / threads)`` outputs, at most 32 (wider layers are sliced over blocks); the
    tile has the most rows (8, 4, 2, 1) whose ``cols_per_thread * rows_per_tile`` accumulators fit
    ``max_accumulators`` and whose n_in inputs fit the shared memory of two resident blocks
    (tiles of 4 rows or more; N = 4096 fp32: 4 rows, 43.6 ms against 52.8 for 8 rows and one
    block, wide4096 on an H100, benchmarks/RESULTS.md), else of one block, else the rows are
    staged in equal chunks. ``threads``, ``cols_per_thread`` and ``rows_per_tile`` force those (benchmarks);
    ``chunk`` stages at most that many inputs at once (cut into equal chunks; benchmarks: more
    resident blocks for larger tiles). ``pipelined`` forces two input buffers
    (:class:`KernelConfig`); the whole row of inputs must then fit twice. ``bank_order``
    forces the bank-aware entry order (float32 activations only: it is not the
    reference's order of summation).
    """
    n_in, n_out = int(n_in), int(n_out)
    if n_in < 1 or n_out < 1:
        raise OptionError(f"layer {n_in} x {n_out}: expected widths >= 1")
    if threads is None:
        threads = min(256 if n_out <= 2048 else 512, -(-n_out // 32) * 32)
    if cols_per_thread is None:
        cols_per_thread = min(-(-n_out // threads), 32)
    if rows_per_tile is None:
        fits = [c for c in (8, 4, 2, 1) if c * cols_per_thread <= max_accumulators]
        once = [c for c in fits if (n_in + 1) * c * itemsize <= smem_limit]        # whole inputs, one block
        twice = [c for c in once if c >= 4 and 2 * (n_in + 1) * c * itemsize <= smem_limit]
        rows_per_tile = (twice or once or fits or [1])[0]
    most = _chunk(n_in, rows_per_tile, itemsize, smem_limit)
    if chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or not 1 <= chunk <= most:
            raise OptionError(f"chunk={chunk!r}: expected an integer from 1 to {most} (inputs of "
                              f"{rows_per_tile} rows that fit {smem_limit} bytes of shared memory)")
        most = _equal_chunks(n_in, int(chunk))
    for name, flag in (("pipelined", pipelined), ("bank_order", bank_order)):
        if not isinstance(flag, (bool, np.bool_)):
            raise OptionError(f"{name}={flag!r}: expected True or False")
    if bank_order and itemsize != 4:
        raise OptionError("bank_order=True: float32 only (float64 sums every output in ascending input "
                          "order, the reference's, to be exact)")
    if pipelined and (most < n_in or 2 * (n_in + 1) * rows_per_tile * itemsize > smem_limit):
        raise OptionError(f"pipelined=True: two buffers of {rows_per_tile} rows of {n_in} inputs do not fit "
                          f"{smem_limit} bytes of shared memory (the whole row must be staged at once)")
    return KernelConfig(threads=threads, cols_per_thread=cols_per_thread, rows_per_tile=rows_per_tile,
                        chunk=most, pipelined=bool(pipelined), bank_order=bool(bank_order))


def _equal_chunks(n_in: int, most: int) -> int:
    """The size of the fewest equal chunks of at most ``most`` inputs that cover ``n_in``
    (less padding in the last one)."""
    return -(-n_in // -(-n_in // most))


def _chunk(n_in: int, rows_per_tile: int, itemsize: int, smem_limit: int) -> int:
    """Inputs staged at once: all ``n_in`` when ``rows_per_tile`` rows of them (and the zero slot) fit
    ``smem_limit`` bytes, else equal chunks (less padding in the last one)."""
    chunk = min(n_in, smem_limit // (rows_per_tile * itemsize) - 1, _MAX_CHUNK)
    if chunk < 1:
        raise OptionError(f"rows_per_tile={rows_per_tile}: no room in {smem_limit} bytes of shared memory")
    return _equal_chunks(n_in, chunk)


def _choose_stationary(n, itemsize, virtual, smem_limit, max_accumulators, threads,
                       rows_per_tile) -> KernelConfig | None:
    """The stationary blocking of :func:`choose_config`, or None when whole rows do not fit."""
    if n > _MAX_CHUNK:                      # the zero slot's index, n, must fit 16 bits
        return None
    columns = n if virtual is None else int(virtual)
    if threads is None:                     # every thread has outputs to expand (n of them)
        threads = min(256 if n <= 4096 else 512, -(-n // 32) * 32)
    cols_per_thread = -(-columns // threads)
    if cols_per_thread > 32:
        return None                         # would need output slices: not stationary
    for cand in (rows_per_tile,) if rows_per_tile is not None else (4, 2, 1):
        if cand * cols_per_thread > max_accumulators and rows_per_tile is None:
            continue
        cfg = KernelConfig(threads=threads, cols_per_thread=cols_per_thread, rows_per_tile=cand, chunk=n,
                           dedupe=virtual is not None, stationary=True)
        need = stationary_smem_bytes(cfg, itemsize)
        if need > smem_limit or (rows_per_tile is None and cand > 1 and 2 * need > smem_limit):
            continue                        # prefer two resident blocks to a bigger tile
        return cfg
    return None


def _choose_dedupe(n, itemsize, virtual, smem_limit, max_accumulators, threads, rows_per_tile) -> KernelConfig:
    if threads is None:
        threads = 256 if n <= 2048 else 512
        threads = min(threads, -(-max(virtual, n) // 32) * 32)
    cols_per_thread = -(-virtual // threads)
    if cols_per_thread > 32:
        raise OptionError(f"virtual={virtual}: too many distinct columns to deduplicate with {threads} threads")
    # At most 4 rows a tile: measured on an H100 (1024x120, 4096x120), 4 beats 8 and 2
    # (more blocks in flight per SM while the tile's rows are staged and written).
    cands = (rows_per_tile,) if rows_per_tile is not None else (4, 2, 1)
    for cand in cands:
        if cand * cols_per_thread > max_accumulators and rows_per_tile is None:
            continue
        room = smem_limit - threads * cols_per_thread * cand * itemsize
        chunk = min(n, room // (cand * itemsize) - 2, _MAX_CHUNK)
        if chunk < 1:
            continue
        parts = -(-n // chunk)
        if parts > 4 and cand > 1 and rows_per_tile is None:
            continue
        chunk = -(-n // parts)
        return KernelConfig(threads=threads, cols_per_thread=cols_per_thread, rows_per_tile=cand, chunk=chunk,
                            dedupe=True)
    raise OptionError(f"no blocking fits {smem_limit} bytes of shared memory for N={n}, virtual={virtual}")


def distinct_tail_smem_bytes(config: KernelConfig, itemsize: int, *, max_entries: int, value_bytes: int = 0) -> int:
    """Dynamic shared memory of one block of ``kernels/tail.cu`` (one row as its distinct
    values): two buffers of ``outputs_per_block + 1`` activations (the distinct columns and
    the zero slot), then ``config.stages`` stages of a layer's warp-slice table, composed
    indices and values (``value_bytes`` each; 0 when not loaded). The kernel's carving."""
    values = _align16((config.outputs_per_block + 1) * itemsize)
    stage = _align16(8 * config.cols_per_thread * config.nwarps) + max_entries * (2 + value_bytes)
    return 2 * values + config.stages * _align16(stage)


#: ``distinct_reps``' mark of a distinct-column slot no output belongs to (read as 0).
NO_REP = 0xFFFF


def compose_indices(idx: np.ndarray, prev_out_map: np.ndarray, neurons: int, zero_slot: int) -> np.ndarray:
    """The distinct tail's indices of one packed layer (``kernels/tail.cu``).

    ``idx`` (entries,) uint16: input neurons, ``neurons`` for padding (the zero slot);
    ``prev_out_map`` (neurons,): the previous layer's distinct column of each of its outputs.
    Returns (entries,) uint16: ``prev_out_map[idx]``, and ``zero_slot`` for padding. The
    entries keep their order, so a sum over them adds the same terms in the same order.
    """
    idx = np.asarray(idx)
    pad = idx >= neurons
    out = np.asarray(prev_out_map, dtype=np.uint16)[np.where(pad, 0, idx)]
    out[pad] = zero_slot
    return out


def distinct_reps(out_map: np.ndarray, slots: int) -> np.ndarray:
    """(slots,) uint16: one output of each distinct column (``out_map[j]``: output j's
    column), :data:`NO_REP` for slots no output belongs to."""
    if len(out_map) > NO_REP:
        raise OptionError(f"{len(out_map)} outputs do not fit 16-bit reps")
    cols, first = np.unique(np.asarray(out_map), return_index=True)
    if cols.size and cols[-1] >= slots:
        raise OptionError(f"distinct column {int(cols[-1])} does not fit {slots} slots")
    reps = np.full(int(slots), NO_REP, dtype=np.uint16)
    reps[cols] = first
    return reps


@dataclass
class PackedLayer:
    """One layer in the warp-sliced ELLPACK of a :class:`KernelConfig`.

    Attributes
    ----------
    idx : ndarray uint16 (entries,)
        Buffer-local input index of each entry (``chunk`` for padding).
    values : ndarray float64 (entries,)
        Weight of each entry (0 for padding). Callers may drop it (uniform layers).
    meta : ndarray int32 (slices*nchunks*cols_per_thread*nwarps, 2)
        ``(offset, width)`` per warp slice.
    nnz : int
        Real entries (the layer's nonzeros).
    uniform_value : float or None
        The single value of every nonzero, if there is one.
    out_map : ndarray uint16 (N,) or None
        With deduplication: the virtual column (distinct column) of each output.
    virtual : int
        Columns packed (distinct columns with deduplication, else N).
    packed_nnz : int
        Nonzeros packed (those of the distinct columns with deduplication).
    """

    idx: np.ndarray
    values: np.ndarray
    meta: np.ndarray
    nnz: int
    uniform_value: float | None
    out_map: np.ndarray | None = None
    virtual: int = 0
    packed_nnz: int = 0

    @property
    def entries(self) -> int:
        return int(self.idx.size)

    @property
    def padding_ratio(self) -> float:
        """Entries processed per packed nonzero (1.0: no padding)."""
        return self.entries / self.packed_nnz if self.packed_nnz else 1.0


def pack_layer(w: sp.spmatrix, config: KernelConfig, neurons: int | None = None, *,
               columns: tuple[np.ndarray, np.ndarray] | None = None, itemsize: int | None = None) -> PackedLayer:
    """Pack one layer (rows = input neurons, columns = output neurons) for ``config``.

    Chunks of ``config.chunk`` cut the n_in inputs, slices the n_out outputs (the
    general path packs rectangular layers; the challenge's are square).

    Parameters
    ----------
    w : scipy sparse matrix (n_in, n_out)
    config : KernelConfig
    neurons : int, optional
        N of a square layer: ``w`` must be (N, N).
    columns : (reps, inverse), optional
        :func:`unique_columns` of ``w`` when already known (``config.dedupe``).
    itemsize : int, optional
        Bytes of an activation; needed with ``config.bank_order`` (the staged Tile is
        ``rows_per_tile * itemsize`` bytes). Without bank order each column's entries are
        in ascending input order (the reference's).

    Returns
    -------
    PackedLayer
    """
    if neurons is not None and w.shape != (int(neurons), int(neurons)):
        raise OptionError(f"layer shape {w.shape}, expected ({neurons}, {neurons})")
    n = int(w.shape[0])                                           # inputs, cut into chunks
    cfg = config
    csc = sp.csc_matrix(w)
    if not csc.has_sorted_indices:
        csc = csc.copy()
        csc.sort_indices()
    data_all = csc.data
    uniform = float(data_all[0]) if data_all.size and np.all(data_all == data_all[0]) else None
    out_map = None
    if cfg.dedupe:
        reps, inverse = unique_columns(csc) if columns is None else columns
        if reps.size > cfg.outputs_per_block or reps.size > _MAX_CHUNK:
            raise OptionError(f"{reps.size} distinct columns do not fit {cfg} (at most "
                              f"{min(cfg.outputs_per_block, _MAX_CHUNK)})")
        csc = csc[:, reps]
        csc.sort_indices()
        out_map = inverse.astype(np.uint16)
    nv = csc.shape[1]
    nchunks, slices = cfg.nchunks(n), cfg.slices(nv)
    ncols = slices * cfg.outputs_per_block
    col_counts = np.diff(csc.indptr)
    j = np.repeat(np.arange(nv, dtype=np.int64), col_counts)     # (virtual) output of each nonzero
    i = csc.indices.astype(np.int64)                              # input neuron, ascending per column
    c = i // cfg.chunk
    key = j * nchunks + c                                         # non-decreasing over the nonzeros
    group = np.bincount(key, minlength=ncols * nchunks)
    group_start = np.concatenate(([0], np.cumsum(group)[:-1]))
    rank = np.arange(i.size, dtype=np.int64) - group_start[key]  # position within (column, chunk)

    # Width of every warp slice: the most entries any of its 32 columns has.
    counts = group.reshape(slices, cfg.cols_per_thread, cfg.nwarps, 32, nchunks)
    width = counts.max(axis=3).transpose(0, 3, 1, 2)              # (slices, nchunks, cols_per_thread, nwarps)
    width = np.ascontiguousarray(width).reshape(-1).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(width * 32)[:-1]))
    total = int(width.sum() * 32)

    sl, rem = np.divmod(j, cfg.outputs_per_block)
    t, tid = np.divmod(rem, cfg.threads)
    warp, lane = np.divmod(tid, 32)
    sid = ((sl * nchunks + c) * cfg.cols_per_thread + t) * cfg.nwarps + warp
    if cfg.bank_order:
        if itemsize is None:
            raise OptionError("bank_order=True: pack_layer needs the activations' itemsize")
        rank = bank_order_ranks(sid, lane, i - c * cfg.chunk, cfg.rows_per_tile * int(itemsize), cfg.chunk)
    pos = offsets[sid] + rank * 32 + lane

    idx = np.full(total, cfg.chunk, dtype=np.uint16)
    idx[pos] = (i - c * cfg.chunk).astype(np.uint16)
    values = np.zeros(total, dtype=np.float64)
    values[pos] = csc.data
    if total >= 2**31:
        raise OptionError("layer too large for 32-bit entry offsets")
    meta = np.stack([offsets, width], axis=1).astype(np.int32)
    return PackedLayer(idx=idx, values=values, meta=meta, nnz=int(data_all.size), uniform_value=uniform,
                       out_map=out_map, virtual=nv, packed_nnz=int(csc.nnz))


def bank_phase(tile_bytes: int) -> tuple[int, int, int]:
    """How a warp's gather of ``tile_bytes``-byte Tiles from shared memory is served:
    ``(lanes a phase, bank groups, slots a Tile)``. Shared memory has 32 banks of 4 bytes
    (128 bytes a wavefront); a 4-, 8- or 16-byte load serves 32, 16 or 8 lanes a phase, and
    Tile i sits at byte ``tile_bytes * i``, so in bank group ``(i * slots) mod groups`` of
    ``groups = 128 / min(tile_bytes, 16)``; a wider Tile is loaded 16 bytes at a time."""
    unit = min(int(tile_bytes), 16)
    if unit not in (4, 8, 16) or tile_bytes % unit:
        raise OptionError(f"tile of {tile_bytes} bytes: expected 4, 8 or a multiple of 16")
    return 128 // unit, 128 // unit, int(tile_bytes) // unit


def bank_order_ranks(sid: np.ndarray, lane: np.ndarray, index: np.ndarray, tile_bytes: int,
                     zero_slot: int) -> np.ndarray:
    """A step for every entry (its new ``rank`` in its column) such that the lanes of one
    shared-memory phase read different bank groups at one step where they can.

    Entries are given by warp slice ``sid``, ``lane`` (0..31) and buffer-local input
    ``index``. A phase is ``lanes`` consecutive lanes of a
    warp slice (:func:`bank_phase`). Greedy, phase by phase and step by step: the lane with
    the fewest groups still unread at this step chooses next (ties: the most entries left),
    and takes an entry of the least read group it has entries in (ties: the group it has
    most of); the zero slot's group (``zero_slot``) counts as read where a lane of the phase
    has nothing left (it reads the zero slot). Each lane takes one entry a step, so every
    column keeps its count of steps (the warp slice's width is unchanged); within a group a
    lane takes its entries in ascending input order. Returns int64 ranks, a permutation of
    0..count-1 within each column of ``count`` entries.
    """
    lanes, groups, slots = bank_phase(tile_bytes)
    sid, lane, index = (np.asarray(a, dtype=np.int64) for a in (sid, lane, index))
    if sid.size == 0:
        return np.zeros(0, dtype=np.int64)
    group = (index * slots) % groups
    phases, phase = np.unique(sid * (32 // lanes) + lane // lanes, return_inverse=True)
    sub = lane % lanes
    # Entries sorted by (phase, lane, group, input): a lane takes a group's entries in this order.
    order = np.lexsort((index, group, sub, phase))
    cell = (phase * lanes + sub) * groups + group                   # (phase, lane, group) of an entry
    counts = np.bincount(cell, minlength=phases.size * lanes * groups)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    steps = np.empty(sid.size, dtype=np.int64)
    _greedy_bank_steps()(counts.reshape(phases.size, lanes, groups), starts.reshape(phases.size, lanes, groups),
                         order, steps, (int(zero_slot) * slots) % groups)
    return steps


@functools.cache
def _greedy_bank_steps():
    """bank_order_ranks' greedy, phase by phase: ``greedy(counts, starts, order, steps,
    zero_group)`` (numba, compiled at first use, cached on disk)."""
    from numba import njit, prange

    @njit(parallel=True, cache=True, nogil=True)
    def greedy(counts, starts, order, steps, zero_group):
        phases, lanes, groups = counts.shape
        for ph in prange(phases):
            c = counts[ph].copy()
            cursor = starts[ph].copy()
            left = c.sum(axis=1)
            step = 0
            while left.sum() > 0:
                load = np.zeros(groups, dtype=np.int64)     # distinct Tiles read a group
                done = np.zeros(lanes, dtype=np.bool_)
                for s in range(lanes):
                    if left[s] == 0:
                        load[zero_group] = 1                # a padding lane reads the zero slot
                for _ in range(lanes):
                    best, best_key = -1, 0
                    for s in range(lanes):              # fewest free groups first, then most left
                        if done[s] or left[s] == 0:
                            continue
                        free = 0
                        for g in range(groups):
                            if c[s, g] > 0 and load[g] == 0:
                                free += 1
                        key = free * (1 << 20) - left[s]
                        if best < 0 or key < best_key:
                            best, best_key = s, key
                    if best < 0:
                        break
                    s = best
                    done[s] = True
                    pick = -1                           # the least loaded group, then its most entries
                    for g in range(groups):
                        if c[s, g] > 0 and (pick < 0 or load[g] < load[pick]
                                            or (load[g] == load[pick] and c[s, g] > c[s, pick])):
                            pick = g
                    steps[order[cursor[s, pick]]] = step
                    cursor[s, pick] += 1
                    c[s, pick] -= 1
                    left[s] -= 1
                    load[pick] += 1
                step += 1

    return greedy


def gather_wavefronts(idx: np.ndarray, meta: np.ndarray, tile_bytes: int) -> tuple[int, int]:
    """(wavefronts, steps) of every phase-step of a packed layer's shared-memory gathers:
    at each step of a warp slice, each phase (:func:`bank_phase`) costs the most distinct
    Tiles its lanes read in one bank group (reads of one Tile are one broadcast); ``steps``
    counts phase-steps (the wavefronts without conflicts). A model of the sum phase's
    shared-memory traffic (tests, benchmarks), not a measurement."""
    lanes, groups, slots = bank_phase(tile_bytes)
    waves = steps = 0
    for offset, width in np.asarray(meta, dtype=np.int64):
        if width == 0:
            continue
        tiles = np.sort(np.asarray(idx[offset:offset + 32 * width], dtype=np.int64)
                        .reshape(width, 32 // lanes, lanes), axis=2)
        first = np.ones(tiles.shape, dtype=bool)
        first[..., 1:] = tiles[..., 1:] != tiles[..., :-1]          # one read of each distinct Tile
        g = (tiles * slots) % groups
        per_group = (first[..., None] & (g[..., None] == np.arange(groups))).sum(axis=2)
        waves += int(per_group.max(axis=2).sum())
        steps += tiles.shape[0] * tiles.shape[1]
    return waves, steps


def narrowest_exact_dtype(values: np.ndarray, activation_dtype) -> np.dtype:
    """The narrowest of float16/float32/float64 (at most the activation type) holding ``values`` exactly.

    For fp32 activations a value that float32 cannot hold is rounded to float32, as
    the reference does with ``w.astype(float32)``.
    """
    act = np.dtype(activation_dtype)
    for dt in (np.float16, np.float32, np.float64):
        if np.dtype(dt).itemsize >= act.itemsize:
            return act
        with np.errstate(over="ignore"):
            if np.array_equal(values.astype(dt).astype(np.float64), values):
                return np.dtype(dt)
    return act


def entry_values(layer: PackedLayer, chunk: int) -> np.ndarray:
    """Per-entry weights of a layer (0 on padding), rebuilt for uniform layers whose values were dropped."""
    if layer.values is not None and layer.values.size == layer.idx.size:
        return layer.values
    if layer.uniform_value is None:
        raise OptionError("a non-uniform layer needs its values")
    return np.where(layer.idx == chunk, 0.0, layer.uniform_value)


@dataclass(frozen=True)
class ValuePlan:
    """How the weights' values reach the kernel (one choice for the whole network).

    Attributes
    ----------
    mode : int
        :data:`VALUE_SUM_THEN_SCALE`, :data:`VALUE_SCALAR` or :data:`VALUE_ARRAY`.
    value_dtype : numpy dtype or None
        For :data:`VALUE_ARRAY`: float16, float32 or float64, the narrowest type that
        holds every weight exactly (never wider than the activations).
    """

    mode: int
    value_dtype: np.dtype | None


def value_plan(uniforms: list, exact_dtypes: list, activation_dtype) -> ValuePlan:
    """Pick the value mode from each layer's single value (or None) and exact value type.

    One value per layer everywhere gives :data:`VALUE_SUM_THEN_SCALE` in float32 when every
    such value is a power of two (float32 is not bound to bits), and in float64 only where
    :func:`spdnn.engines.base.sum_then_scale_exact` proves it exact, which it never does
    here: the kernels know no bounds on the activations. Otherwise one value per layer
    gives :data:`VALUE_SCALAR`, and other layers load values in the widest of their exact
    types.
    """
    act = np.dtype(activation_dtype)
    if all(u is not None for u in uniforms):
        if act == np.float32 and all(is_power_of_two(u) for u in uniforms):
            return ValuePlan(VALUE_SUM_THEN_SCALE, None)
        if act == np.float64 and all(sum_then_scale_exact(u, act) for u in uniforms):
            return ValuePlan(VALUE_SUM_THEN_SCALE, None)
        return ValuePlan(VALUE_SCALAR, None)
    widest = max((np.dtype(d) for d in exact_dtypes), key=lambda d: d.itemsize, default=act)
    return ValuePlan(VALUE_ARRAY, widest)
