"""The fast CPU engine: numba kernels, every core busy, dead samples pruned every layer.

Per layer (kernels in :mod:`spdnn.engines._cpu_kernels`)::

    for every tile of T held samples, in parallel (prange): # y[tile]: (n_in, T), neuron-major
        z = 0
        for every input neuron i, ascending, nonzero in the tile:
            for every output j of row i of W:            # z[j] = ((0 + t1) + t2) + ...
                z[j] += y[i] * w[i, j]                   # no FMA; vectorized over the tile
        y' = min(max(z + b * (z != 0), 0), cap)          # fused bias, ReLU, cap (the challenge)
    move the samples that have a nonzero to the front    # compaction (pruning)

Any network of :mod:`spdnn.network` runs: layers of any widths (the tiles are
``(n_in, T)`` in and ``(n_out, T)`` out, views of two flat buffers sized for the widest
layer), dense layers (their ``(n_in, n_out)`` array read in the same order, zero weights
skipped), the dense bias rule (bias on every output), ReLU with any cap or none, and
identity layers (negative values: a sample's row is *nonzero* when any value is, and
that is what categories and survivors count). Zero rows are dropped only after a layer
``k`` with ``network.prunes_after(k + 1)`` (every later layer keeps zero rows zero);
elsewhere they are kept, and computed.

Fast paths, detected per layer in :meth:`CpuEngine.prepare`:

- *ELLPACK*: every row of ``W_k`` has the same count, no row pointers are read;
  otherwise CSR (any row lengths, empty rows and columns included).
- *one value per layer*: the value is not loaded per term. In 'fp32' the float32 sum is
  multiplied once by the value. In 'fp64' the value multiplies every term, except where
  :func:`spdnn.engines.base.sum_then_scale_exact` proves (every layer, from the smallest
  nonzero and the largest input of the batch) that summing first and multiplying once
  gives the same bits.
- *uniform bias*: one bias value read per layer instead of one per neuron.
- *distinct columns* (``dedupe``): a layer whose columns repeat is summed one column of
  each kind and the outputs copied from their column's sum (exact: the same terms in the
  same order); RadiX-Net layers have N/16 distinct columns.

Identical samples (``merge``, on by default): samples whose rows become the
same constant vector (on RadiX-Net every survivor ends saturated at ``ymax``; any value,
negative or zero included where zero rows are kept) are merged into one representative
that carries the others' ids; identical inputs give identical outputs in every later
layer under every rule (each sample's arithmetic is the same sequence of operations
whatever its place in a tile: an all-zero input row of a tile is skipped only because
it adds exact zeros), so the results are bit for bit those of computing every copy, and
the late layers cost one sample instead of thousands. Survivor counts and categories
count every member.

Numerics: 'fp64' follows the exactness contract of :mod:`spdnn.engines.base` (equal to
the reference bit for bit). 'fp32' accumulates in float32 in the same order (inputs
ascending), multiplying a uniform weight once after the sum; it may differ from the
float64 reference on ill-conditioned samples (docs/challenge.md, Numerics; see
:mod:`spdnn.verify`).

Threads: numba's pool (every core; ``NUMBA_NUM_THREADS`` limits it), one tile per
task; a layer whose samples fit one tile runs on one thread, since waking the pool
costs more than such a layer (and far more on a loaded machine).

Memory: two dense buffers of ``batch x W`` activations (W: the widest of the network's
widths, N for the challenge), tiled neuron-major (``(tiles, n, T)`` for a layer's width
n, see :mod:`spdnn.engines._cpu_kernels`); samples are processed in
batches of at most ``batch_samples`` rows (default: what fits in :data:`BUFFER_BYTES` a
buffer, so all 60,000 samples of N=1024 in one batch). Compilation is cached on disk
(``cache=True``) and done in :meth:`prepare`, outside the inference time.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import OptionError
from ..network import LayerRule, LazyLayers, Network
from ..options import check_merge, check_tristate, optional_positive_int
from .._progress import progress_bar
from .base import Engine, is_power_of_two, sum_then_scale_exact
from .columns import pays_to_dedupe, unique_columns

__all__ = ["CpuEngine"]

#: Bytes of one activation buffer when ``batch_samples`` is not given (two are held):
#: all 60,000 samples of N = 1024 in one batch, and a run at N = 65536 within 4 GB.
BUFFER_BYTES = 512 << 20
#: Converted layers above this size are not kept; lazy layers are converted per use.
LAYER_CACHE_BYTES = 4 << 30
#: Bytes of a kept converted layer's edge (int32 output ids; one value a layer, ELLPACK).
KEPT_EDGE_BYTES = 4
#: Fewest samples of a batch.
MIN_BATCH = 64
#: Bytes of one tile of inputs (N x T values): a core's share of L2 cache.
_TILE_BYTES = 1 << 18


def _kernels():
    """The numba kernels (numba is a dependency of spdnn; imported on first use, since
    importing numba costs a second)."""
    from . import _cpu_kernels

    return _cpu_kernels


@dataclass
class _Block:
    """Samples held between calls: 0-based rows and their activations.

    ``values`` is dense tiled ``(tiles, n, T)`` of the engine's dtype (sample ``rows[c]``
    at ``[c // T, :, c % T]``; a view of the flat ``buffer``), or the loaded CSR
    features; ``smallest``/``largest`` bound the nonzero magnitudes (for the fp64
    sum-then-multiply guard); ``alive[c]``: whether row ``c`` has a nonzero (rows that
    may not be dropped are held when zero).
    """

    rows: np.ndarray
    values: object
    smallest: float
    largest: float
    #: representative row -> rows merged into it (identical activations), int64 arrays
    members: dict = None
    #: (len(rows),) bool: the row has a nonzero; None: every row has
    alive: np.ndarray = None
    #: the flat array ``values`` views (dense blocks), or None
    buffer: np.ndarray = None

    def __post_init__(self):
        if self.members is None:
            self.members = {}
        if self.alive is None:
            self.alive = (np.diff(self.values.indptr) > 0) if sp.issparse(self.values) \
                else np.ones(len(self.rows), dtype=bool)

    def alive_rows(self) -> np.ndarray:
        """Every sample held whose row has a nonzero (members of such representatives too)."""
        if self.alive.all():
            return self.all_rows()
        reps = self.rows[self.alive]
        extra = [self.members[r] for r in reps.tolist() if r in self.members]
        return np.concatenate([reps, *extra]) if extra else reps

    def all_rows(self) -> np.ndarray:
        """Every sample held (representatives and their members), unsorted."""
        return np.concatenate([self.rows, *self.members.values()]) if self.members else self.rows

    def weights(self) -> np.ndarray:
        """Samples each representative stands for (1 + its members), aligned with rows."""
        w = np.ones(len(self.rows), dtype=np.int64)
        if self.members:
            position = {int(r): c for c, r in enumerate(self.rows)}
            for rep, extra in self.members.items():
                w[position[rep]] += len(extra)
        return w


def _magnitude_range(values: np.ndarray, *, chunk: int = 1 << 22) -> tuple[float, float]:
    """(smallest nonzero |v|, largest |v|) of ``values`` (inf, 0 when none is nonzero),
    a chunk at a time: no copy of a whole features' values (3 GB at N = 65536)."""
    smallest, largest = math.inf, 0.0
    for i in range(0, values.size, chunk):
        part = np.abs(values[i:i + chunk])
        nonzero = part[part != 0]
        if nonzero.size:
            smallest = min(smallest, float(nonzero.min()))
            largest = max(largest, float(nonzero.max()))
    return smallest, largest


@dataclass
class _LayerForm:
    """One layer as the kernel reads it (see :mod:`spdnn.engines._cpu_kernels`)."""

    indptr: np.ndarray          # (n_in+1,) int64 row pointers, or (1,) when ELLPACK or dense
    indices: np.ndarray         # (nnz,) int32 output neurons, ascending per input row
    values: np.ndarray          # (nnz,) dtype, or (1,) when the layer has one value
    row_width: int              # nonzeros per row (ELLPACK) or -1 (CSR)
    weight: object              # the one value (dtype scalar), or 0
    mode: int                   # MODE_VALUES, MODE_UNIFORM or MODE_SUM
    max_terms: int              # largest column count: most terms summed into one output
    bias: np.ndarray            # (n_out,) dtype, contiguous
    uniform_bias: bool
    virtual: int                # distinct columns the indices name (deduplicated), or -1
    out_map: np.ndarray         # (n_out,) int32: each output's distinct column, or (1,) unused
    dense: bool = False         # the weights are dense_w
    dense_w: np.ndarray = None  # (n_in, n_out) dtype of a dense layer, or (1, 1) unused
    dense_bias: bool = False    # bias rule 'dense' (every output), else 'structural'
    relu: bool = True           # ReLU and cap, else identity
    cap: float = math.inf       # the ReLU's cap (inf: none)
    n_out: int = 0              # outputs of the layer


def _layer_form(w, bias: np.ndarray, dtype, *, dedupe="auto", rule=None) -> _LayerForm:
    """Convert layer ``w`` (CSR, rows = inputs, or a dense ``numpy.ndarray``) and its bias
    row for the kernel.

    ``dedupe``: keep one column of each kind (see :mod:`spdnn.engines.columns`) when
    True, or when 'auto' and that is at most half of them; False keeps every column.
    ``rule``: the layer's :class:`spdnn.network.LayerRule` (default: the challenge's).
    """
    k = _kernels()
    rule = LayerRule() if rule is None else rule
    n_in, n_out = (int(v) for v in w.shape)
    b = np.ascontiguousarray(bias, dtype=dtype)
    if b.shape != (n_out,):
        raise OptionError(f"bias row: shape {b.shape}, expected ({n_out},)")
    uniform_bias = bool(np.all(b == b[0])) if n_out else True
    finish = {"bias": b, "uniform_bias": uniform_bias, "dense_bias": rule.bias_rule == "dense",
              "relu": rule.activation == "relu", "cap": float(rule.cap), "n_out": n_out}
    if isinstance(w, np.ndarray):
        return _LayerForm(indptr=np.zeros(1, np.int64), indices=np.zeros(1, np.int32), values=np.zeros(1, dtype),
                          row_width=-1, weight=dtype(0), mode=k.MODE_VALUES, max_terms=n_in, virtual=-1,
                          out_map=np.zeros(1, np.int32), dense=True,
                          dense_w=np.ascontiguousarray(w, dtype=dtype), **finish)
    csr = sp.csr_matrix(w)
    if not csr.has_sorted_indices:
        csr = csr.copy()
        csr.sort_indices()
    virtual, out_map = -1, np.zeros(1, np.int32)
    if dedupe is not False:
        reps, inverse = unique_columns(csr)
        if dedupe is True or pays_to_dedupe(reps.size, n_out):
            csr = csr[:, reps]            # columns renumbered 0..u-1, ascending rows kept
            csr.sort_indices()
            virtual, out_map = int(reps.size), inverse.astype(np.int32)
    counts = np.diff(csr.indptr)
    data = csr.data.astype(dtype)
    indices = csr.indices.astype(np.int32)
    ell = counts.size > 0 and bool(np.all(counts == counts[0]))
    max_terms = int(np.bincount(indices).max()) if indices.size else 0
    uniform = data.size > 0 and bool(np.all(data == data[0]))
    weight = dtype(data[0]) if uniform else dtype(0)
    if not uniform:
        mode = k.MODE_VALUES
    elif dtype == np.float32 or is_power_of_two(float(weight)):
        mode = k.MODE_SUM          # fp64: each batch's bounds are checked in _infer
    else:
        mode = k.MODE_UNIFORM
    return _LayerForm(
        indptr=np.zeros(1, np.int64) if ell else csr.indptr.astype(np.int64),
        indices=indices,
        values=np.zeros(1, dtype) if uniform else data,
        row_width=int(counts[0]) if ell else -1,
        weight=weight,
        mode=mode,
        max_terms=max_terms,
        virtual=virtual,
        out_map=out_map,
        dense_w=np.zeros((1, 1), dtype),
        **finish,
    )


def _run_layer(layer: _LayerForm, y, out, count, mode, row_max, row_min, tile_min) -> None:
    """The kernel on one layer (``mode``: the layer's, or MODE_UNIFORM where summing first
    is not proved exact)."""
    dtype = y.dtype.type
    _kernels().spdnn_cpu_layer(y, out, count, layer.indptr, layer.indices, layer.values, layer.row_width,
                               layer.weight, mode, layer.bias, layer.uniform_bias, dtype(layer.cap), row_max,
                               row_min, tile_min, layer.virtual, layer.out_map, layer.dense,
                               layer.dense_w if layer.dense_w is not None else np.zeros((1, 1), y.dtype),
                               layer.dense_bias, layer.relu)


def _tiled(buffer: np.ndarray, tiles: int, width: int, tile: int) -> np.ndarray:
    """The first ``tiles * width * tile`` values of a flat buffer as tiles ``(tiles, width, tile)``."""
    return buffer[:tiles * width * tile].reshape(tiles, width, tile)


_WARM: set = set()


def _warm_up(dtype) -> None:
    """Compile (or load from numba's cache) every kernel for ``dtype`` once per process."""
    if dtype in _WARM:
        return
    k = _kernels()
    n = 4
    y = np.ones((1, n, 8), dtype)
    out = np.empty_like(y)
    row_max = np.empty(8, dtype)
    row_min = np.empty(8, dtype)
    tile_min = np.empty(1, dtype)
    layer = _layer_form(sp.csr_matrix(np.eye(n) * 0.5), np.full(n, -0.1), dtype, dedupe=False)
    for mode in (k.MODE_VALUES, k.MODE_UNIFORM, k.MODE_SUM):
        _run_layer(layer, y, out, 2, mode, row_max, row_min, tile_min)
    _run_layer(_layer_form(np.eye(n) * 0.5, np.full(n, 0.1), dtype), y, out, 2, k.MODE_VALUES, row_max, row_min,
               tile_min)
    k.spdnn_cpu_compact(out, y, np.arange(1, dtype=np.int64))
    f = sp.csr_matrix(np.ones((2, n)))
    k.spdnn_cpu_densify(f.indptr, f.indices, f.data, 0, 2, out)
    _WARM.add(dtype)


class CpuEngine(Engine):
    """numba CPU engine (see the module docstring).

    Parameters
    ----------
    precision : {'fp32', 'fp64'}
        'fp32' (default) accumulates in float32; 'fp64' equals the reference exactly.
    progress : bool
        Progress bar over layers.
    batch_samples : int, optional
        Most samples held densely at once (default: :data:`BUFFER_BYTES` of activations).
    tile : int, optional
        Samples per tile of the kernel, T (default: ``N*T`` values in 256 KiB, 8..64).
    merge : {'auto', True, False}
        Merge samples whose rows become the same constant vector (exact; see the module
        docstring): True or 'auto' (the same here: merging costs a min/max per row that
        the kernel computes anyway). False computes every sample separately.
    dedupe : {'auto', True, False}
        Sum each distinct weight column once per layer (exact: identical columns give
        identical sums; RadiX-Net layers have N/16 of them). 'auto': in the layers where
        at most half the columns are distinct.
    """

    name = "cpu"

    def __init__(self, *, precision: str = "fp32", progress: bool = False, batch_samples: int | None = None,
                 tile: int | None = None, merge="auto", dedupe="auto"):
        super().__init__(precision=precision, progress=progress)
        self.merge = check_merge(merge)
        self.dedupe = check_tristate(dedupe, "dedupe")
        self.batch_samples = optional_positive_int(batch_samples, "batch_samples")
        self.tile = optional_positive_int(tile, "tile")
        self._layers: list[_LayerForm] | None = None
        self._blocks: list[_Block] = []
        self._spare: np.ndarray | None = None

    # -- preprocessing -------------------------------------------------------------------

    def prepare(self, network: Network) -> None:
        """Convert every layer for the kernel and compile the kernels (not timed as inference).

        Lazy networks whose converted layers would exceed 4 GiB are converted layer by
        layer during :meth:`infer` instead (that time then counts as inference).
        """
        self.network = network
        self._layers = None
        self._widest = max(network.widths)
        per_edge = 4 + np.dtype(self.dtype).itemsize
        if not isinstance(network.layers, LazyLayers) or network.edges * per_edge <= LAYER_CACHE_BYTES:
            self._layers = [self._convert(k) for k in range(network.depth)]
        _warm_up(self.dtype)
        self.features = None
        self._blocks = []
        self._width = network.inputs

    def _convert(self, k: int) -> _LayerForm:
        net = self.network
        return _layer_form(self.weights(k), net.bias[k], self.dtype, dedupe=self.dedupe, rule=net.rule(k))

    def _layer(self, k: int) -> _LayerForm:
        return self._layers[k] if self._layers is not None else self._convert(k)

    def _batch_rows(self) -> int:
        if self.batch_samples is not None:
            return self.batch_samples
        return max(MIN_BATCH, BUFFER_BYTES // (self._widest * np.dtype(self.dtype).itemsize))

    def load(self, features) -> None:
        """Take the features (or activations from :meth:`activations`), samples x n (the
        inputs' width, or a later layer's for a segment that starts there).

        When all samples fit one batch they are made dense here (preprocessing), with
        the second buffer of the layer loop; otherwise each batch is made dense when
        :meth:`infer` reaches it.
        """
        super().load(features)
        f = self.features
        rows = np.arange(f.shape[0], dtype=np.int64)
        smallest, largest = _magnitude_range(f.data)
        self._spare = None
        self._width = int(f.shape[1])
        buffer = None
        if f.shape[0] <= self._batch_rows():
            values, buffer = self._densify(f, 0, f.shape[0])
            self._spare = np.empty_like(buffer)
            self._spare.fill(0)          # touch the pages now rather than in the first layer
        else:
            values = f
        self._blocks = [_Block(rows, values, smallest, largest, alive=np.diff(f.indptr) > 0, buffer=buffer)]

    def _tile(self) -> int:
        """Samples per tile, T: W*T values in about 256 KiB (8..64; W the widest layer), unless given."""
        if self.tile is not None:
            return self.tile
        width = _TILE_BYTES // (self._widest * np.dtype(self.dtype).itemsize)
        return min(64, max(8, 1 << (max(width, 1).bit_length() - 1)))

    def _densify(self, f: sp.csr_matrix, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``r0..r1-1`` of ``f`` as dense tiles ``(tiles, n, T)``, a view of a new flat
        buffer sized for the widest layer; returns (tiles, buffer)."""
        tile = self._tile()
        tiles = max(1, -(-(r1 - r0) // tile))
        buffer = np.empty(tiles * self._widest * tile, dtype=self.dtype)
        y = _tiled(buffer, tiles, f.shape[1], tile)
        _kernels().spdnn_cpu_densify(f.indptr, f.indices, f.data, r0, r1, y)
        return y, buffer

    # -- inference -----------------------------------------------------------------------

    @staticmethod
    def _threads_for(count: int, tile: int) -> int:
        """Threads for a layer over ``count`` samples: one when they fit one tile (waking
        the other threads would cost more than the work, far more on a loaded machine)."""
        from numba import get_num_threads

        return 1 if count <= tile else get_num_threads()

    def _sum_exact(self, layer: _LayerForm, smallest: float, largest: float) -> bool:
        """Whether sum-then-multiply gives the per-term bits for inputs in [smallest, largest]."""
        return sum_then_scale_exact(float(layer.weight), self.dtype, smallest=smallest, largest=largest,
                                    max_terms=layer.max_terms)

    def _infer(self, start: int, stop: int):
        survivors = np.zeros(stop - start, dtype=np.int64)
        computed = np.zeros(stop - start, dtype=np.int64)      # rows the kernel ran, per layer
        batch = self._batch_rows()
        work = []                        # (block, first row, end row): dense blocks are one batch already
        for block in self._blocks:
            step = batch if sp.issparse(block.values) else max(1, len(block.rows))
            work += [(block, r0, min(len(block.rows), r0 + step)) for r0 in range(0, len(block.rows), step)]
        steps = iter(progress_bar(range(len(work) * (stop - start)), enabled=self.progress,
                                  desc=f"cpu {self.precision} layers"))
        modes = {"values": 0, "uniform": 0, "sum": 0, "dense": 0}
        blocks = []
        for block, r0, r1 in work:
            if sp.issparse(block.values):
                (y, buffer), spare = self._densify(block.values, r0, r1), None
            else:
                y, buffer, spare = block.values, block.buffer, self._spare
            self._spare = None
            rows = block.rows[r0:r1].copy()
            members = {rep: block.members[rep] for rep in rows.tolist() if rep in block.members}
            sub = _Block(rows, y, block.smallest, block.largest, members, alive=block.alive[r0:r1].copy(),
                         buffer=buffer)
            blocks.append(self._run_batch(sub, spare, start, stop, survivors, computed, steps, modes))
        for _ in steps:
            pass
        self._blocks = blocks
        self._width = self.network.widths[stop]
        categories = np.concatenate([b.alive_rows() for b in blocks]) + 1 if blocks else np.zeros(0, np.int64)
        extra = {"batches": len(work), "threads": _num_threads(), "layer_modes": modes,
                 "merged_samples": int(sum(len(m) for b in blocks for m in b.members.values())),
                 "rows_computed": [int(c) for c in computed]}
        return np.sort(categories), survivors, extra

    def _run_batch(self, block: _Block, spare, start, stop, survivors, computed, steps, modes) -> _Block:
        """Layers ``start..stop-1`` over one dense batch; returns the rows it still holds.
        Adds the samples with a nonzero row after each layer to ``survivors`` and the rows
        run to ``computed``."""
        kern = _kernels()
        net = self.network
        dtype = self.dtype
        rows, smallest, largest, alive = block.rows, block.smallest, block.largest, block.alive
        count = len(rows)
        y = block.values
        tiles, width, tile = y.shape
        size = tiles * self._widest * tile
        here = block.buffer
        if here is None or here.size < size or y.base is not here:
            here = np.empty(size, dtype)          # a block kept from a previous infer: widen its buffer
            _tiled(here, tiles, width, tile)[...] = y
        there = spare if spare is not None and spare.size >= size else np.empty(size, dtype)
        members = dict(block.members)
        weights = block.weights()
        for k in range(start, stop):
            next(steps, None)
            if count == 0:
                width = net.widths[k + 1]
                continue
            layer = self._layer(k)
            mode = layer.mode
            if not layer.dense and mode == kern.MODE_SUM and not self._sum_exact(layer, smallest, largest):
                mode = kern.MODE_UNIFORM
            modes["dense" if layer.dense else ("values", "uniform", "sum")[mode]] += 1
            computed[k - start] += count
            row_max = np.empty(count, dtype)
            row_min = np.empty(count, dtype)
            used = -(-count // tile)
            tile_min = np.empty(used, dtype)
            y = _tiled(here, tiles, width, tile)
            out = _tiled(there, tiles, layer.n_out, tile)
            with _threads(self._threads_for(count, tile)):
                _run_layer(layer, y, out, count, mode, row_max, row_min, tile_min)
                alive = (row_max > 0) | (row_min < 0)                # the row has a nonzero
                keep = alive.copy() if net.prunes_after(k + 1) else np.ones(count, dtype=bool)
                if self.merge:
                    self._merge(keep, row_max, row_min, rows, weights, members)
                survivors[k - start] += int(weights[keep & alive].sum())
                if keep.all():
                    here, there = there, here
                else:
                    keep = np.flatnonzero(keep)
                    kern.spdnn_cpu_compact(out, _tiled(here, tiles, layer.n_out, tile), keep)  # kept rows, in order
                    if members:
                        dropped = np.ones(count, dtype=bool)
                        dropped[keep] = False
                        for rep in rows[dropped].tolist():
                            members.pop(rep, None)           # a dropped representative's members go with it
                    rows, weights, alive = rows[keep], weights[keep], alive[keep]
                    count = len(keep)
            width = layer.n_out
            smallest = float(tile_min.min())
            largest = float(max(np.abs(row_max).max(), np.abs(row_min).max())) if len(row_max) else 0.0
        need = max(1, -(-count // tile))
        if need < tiles:
            # keep only the held rows' tiles: a batch-sized buffer per finished batch would
            # pile up (N=65536 fp64: dozens of batches of 512 MiB)
            here = _tiled(here, need, width, tile).ravel().copy()
            tiles = need
        return _Block(rows, _tiled(here, tiles, width, tile), smallest, largest, members, alive=alive, buffer=here)

    @staticmethod
    def _merge(keep, row_max, row_min, rows, weights, members) -> None:
        """Fold kept samples with the same constant row (any value: positive, negative, or
        zero where zero rows are kept) into the first of them.

        Updates ``keep`` (merged samples become False), ``weights`` and ``members`` in place.
        """
        constant = np.flatnonzero(keep & (row_min == row_max))
        if constant.size < 2:
            return
        values, first, group = np.unique(row_max[constant], return_index=True, return_inverse=True)
        if values.size == constant.size:
            return
        joined: dict[int, list] = {}
        for c, g in zip(constant.tolist(), group.reshape(-1).tolist()):
            rep = int(constant[first[g]])               # the group's first (lowest) position
            if c == rep:
                continue
            keep[c] = False
            weights[rep] += weights[c]
            parts = joined.setdefault(int(rows[rep]), [members.pop(int(rows[rep]), np.zeros(0, np.int64))])
            parts += [rows[c:c + 1], members.pop(int(rows[c]), np.zeros(0, np.int64))]
        for rep_row, parts in joined.items():
            members[rep_row] = np.concatenate(parts)

    def _activations(self):
        width = getattr(self, "_width", 0)
        if not self._blocks:
            return np.zeros(0, np.int64), sp.csr_matrix((0, width))
        all_rows, parts = [], []
        for b in self._blocks:
            if sp.issparse(b.values):
                values = b.values
            else:
                values = sp.csr_matrix(_kernels().spdnn_cpu_undensify(b.values, len(b.rows)).astype(np.float64))
            all_rows.append(b.rows)
            parts.append(values)
            if b.members:
                # merged samples share their representative's row
                position = {int(r): c for c, r in enumerate(b.rows)}
                for rep, extra in b.members.items():
                    all_rows.append(extra)
                    parts.append(values[np.full(len(extra), position[rep])])
        rows = np.concatenate(all_rows)
        values = sp.vstack(parts, format="csr").astype(np.float64)
        values.eliminate_zeros()
        keep = np.diff(values.indptr) > 0       # rows held but zero are not listed
        order = np.argsort(rows, kind="stable")
        order = order[keep[order]]
        return rows[order], values[order]


@contextlib.contextmanager
def _threads(count: int):
    """Run numba parallel regions of this thread on ``count`` threads inside the block."""
    from numba import get_num_threads, set_num_threads

    before = get_num_threads()
    set_num_threads(min(count, before))
    try:
        yield
    finally:
        set_num_threads(before)


def _num_threads() -> int:
    from numba import get_num_threads

    return int(get_num_threads())
