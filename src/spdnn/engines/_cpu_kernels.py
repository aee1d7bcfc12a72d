"""numba kernels of the CPU engine (private; :mod:`spdnn.engines.cpu` is the public side).

Layout
------
Activations of the alive samples are dense and *tiled neuron-major*: samples are grouped
in tiles of ``T`` and ``y[b, i, t]`` is neuron ``i`` of sample ``b*T + t``, shape
``(tiles, N, T)``, C order. Each tile is one contiguous block (``N*T`` values, 256 KiB
by default), so the kernel's inner loop over the tile's samples is unit-stride and the pages
a tile touches stay few. (Sample-major rows need a transpose of every tile in and out of
the kernel; one flat ``(N, samples)`` array makes every tile touch ``N`` pages.)
Weights are in *row* form, as stored (CSR of ``W``, rows = input neurons): for every
input neuron ``i`` the output neurons it feeds, ascending (``indices``), with their
``values``. When every row has the same count ``K`` the layout is ELLPACK: row ``i``
occupies ``indices[i*K:(i+1)*K]`` and no row pointer is read (``row_width = K``; CSR
when ``row_width < 0``).

One layer (:func:`spdnn_cpu_layer`) works one tile per parallel iteration (numba
``prange``). The input neurons are visited in ascending order; an input row that is
zero for every sample of the tile is skipped (it would add exact zeros: the inputs are
sparse in the first layers, about half the rows of a 64-sample MNIST tile); otherwise
its vector of ``T`` samples is loaded once and added (times the weight) into the rows
of the outputs it feeds. The inner loop runs over the tile's samples, contiguous
in memory and vectorized by LLVM, and each weight is loaded once per tile (the CPU
analogue of a GPU thread's register tile). Measured against the gather form (each
output pulling its inputs through CSC), this is as fast on dense activations and 1.7x
faster on the first layers' sparse ones, with the same bits. A second pass over the
tile's outputs applies the weight (``MODE_SUM``), bias, ReLU and cap, and records each
sample's largest, smallest and smallest nonzero value (alive, constant rows, and the
fp64 guard). :func:`spdnn_cpu_compact` then copies the alive samples, in order, into
the other buffer (pruning).

Layers of any widths: the input tiles are ``(tiles, n_in, T)`` and the output tiles
``(tiles, n_out, T)`` (the engine views one flat buffer a side with each layer's width).
A *dense* layer (``dense``) reads its weights from an ``(n_in, n_out)`` array instead of
the row form, the same loop (inputs ascending, each output's terms in that order), zero
weights skipped as they add exact zeros. The epilogue applies the layer's rule: the bias
only where the sum is nonzero (structural) or everywhere (``dense_bias``), then ReLU and
the cap (``relu``; cap ``inf``: none) or nothing (identity, negative values kept).

Deduplicated layers (``virtual >= 0``): a layer whose columns repeat (RadiX-Net's N/16
distinct ones) is stored restricted to one column of each kind, so an input row feeds
N/16 times fewer sums; the sums go to a scratch tile and the epilogue reads output ``j``'s
through ``out_map[j]``. The terms and their order are those of every copy: exact.

Accumulation modes (``mode``)
-----------------------------
``MODE_VALUES``
    ``z += x[i] * values[p]`` per term: any weights.
``MODE_UNIFORM``
    One value ``weight`` for the whole layer: ``z += x[i] * weight`` per term (no value
    loads). Same rounding as ``MODE_VALUES``.
``MODE_SUM``
    One value for the whole layer: ``z = (sum x[i]) * weight``. Bit-identical to the
    per-term sum only when ``weight`` is a power of two and no product ``x[i]*weight`` is
    subnormal or overflows (the caller checks, see ``spdnn.engines.cpu``); in float32 it
    is used for any uniform weight, since float32's summation order is free.

For every mode each output is accumulated as ``((0 + t1) + t2) + ...`` over the inputs
in ascending index order, without fused multiply-add (``fastmath=False``; LLVM does not
contract without it), which is the fp64 exactness contract of :mod:`spdnn.engines.base`.
Zero inputs contribute exact zeros, which leave a sum unchanged, so the dense tiles give
the same bits as the reference's sparse product.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["MODE_VALUES", "MODE_UNIFORM", "MODE_SUM", "spdnn_cpu_layer", "spdnn_cpu_compact",
           "spdnn_cpu_densify", "spdnn_cpu_undensify"]

MODE_VALUES = 0
MODE_UNIFORM = 1
MODE_SUM = 2


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def spdnn_cpu_layer(y, out, count, indptr, indices, values, row_width, weight, mode,
                    bias, uniform_bias, ymax, row_max, row_min, tile_min, virtual, out_map,
                    dense, dense_w, dense_bias, relu):
    """One layer over the first ``count`` samples of ``y``; results into ``out``.

    Parameters
    ----------
    y : (tiles, n_in, T) float32/float64 C array
        Input activations, tiled neuron-major (module docstring); samples
        ``0..count-1`` are used.
    out : (tiles, n_out, T) C array of ``y.dtype``
        Output activations (the tiles holding samples ``0..count-1`` are written).
    count : int
    indptr : (n_in+1,) int64 array
        Row pointers of ``W`` (CSR); ignored when ``row_width >= 0`` or ``dense``.
    indices : int32 array
        Output neuron (or, deduplicated, distinct column) of every weight, ascending
        within each input row.
    values : array of ``y.dtype``
        Weight values (read only in ``MODE_VALUES``).
    row_width : int
        Nonzeros per row for the ELLPACK layout, or -1 for CSR.
    weight : scalar of ``y.dtype``
        The one weight value (``MODE_UNIFORM``/``MODE_SUM``).
    mode : int
        ``MODE_VALUES``, ``MODE_UNIFORM`` or ``MODE_SUM`` (sparse layers).
    bias : (n_out,) array of ``y.dtype``
        Bias of every output neuron; only ``bias[0]`` is read when ``uniform_bias``.
    uniform_bias : bool
    ymax : scalar of ``y.dtype``
        Cap of the activations (``inf``: none); unused when not ``relu``.
    row_max, row_min : (>= count,) arrays of ``y.dtype``
        Output: largest and smallest value of each output sample's row (the sample's row
        is nonzero when either is; it is constant when ``row_min == row_max``).
    tile_min : (tiles,) array of ``y.dtype``
        Output: smallest nonzero magnitude of the output values of every tile used
        (``inf`` when none).
    virtual : int
        Deduplicated layer: the number of its distinct columns, which ``indices`` name;
        their sums go to a scratch tile and output ``j`` takes distinct column
        ``out_map[j]`` (identical columns give identical sums: exact). -1: ``indices``
        name the outputs and the sums are made in place.
    out_map : (n_out,) int32 array
        The distinct column of every output (read only when ``virtual >= 0``).
    dense : bool
        The weights are ``dense_w`` (a dense layer), not the row form.
    dense_w : (n_in, n_out) C array of ``y.dtype``
        A dense layer's weights (read only when ``dense``).
    dense_bias : bool
        Add the bias to every output (the 'dense' rule), not only where the sum is nonzero.
    relu : bool
        Clamp to ``[0, ymax]``; False: identity.
    """
    n = y.shape[1]
    n_out = out.shape[1]
    tile = y.shape[2]
    zero = np.zeros(1, dtype=y.dtype)[0]
    tiles = (count + tile - 1) // tile
    dedupe = virtual >= 0
    for it in prange(tiles):
        m = min(tile, count - it * tile)
        yt = y[it]
        zt = out[it]
        acc = np.empty((virtual, tile), dtype=y.dtype) if dedupe else zt
        for j in range(acc.shape[0]):
            zr = acc[j]
            for t in range(m):
                zr[t] = zero
        # input neurons in ascending order: every output sums its terms in that order
        for i in range(n):
            xr = yt[i]
            nonzero = False
            for t in range(m):
                nonzero |= xr[t] != zero
            if not nonzero:
                continue                    # all-zero input row of this tile: exact zeros only
            if dense:
                wr = dense_w[i]
                for j in range(n_out):
                    v = wr[j]
                    if v == zero:
                        continue            # a zero weight adds exact zeros
                    zr = acc[j]
                    for t in range(m):
                        zr[t] += xr[t] * v
                continue
            if row_width >= 0:
                p0 = i * row_width
                p1 = p0 + row_width
            else:
                p0 = indptr[i]
                p1 = indptr[i + 1]
            if mode == MODE_VALUES:
                for p in range(p0, p1):
                    zr = acc[indices[p]]
                    v = values[p]
                    for t in range(m):
                        zr[t] += xr[t] * v
            elif mode == MODE_UNIFORM:
                for p in range(p0, p1):
                    zr = acc[indices[p]]
                    for t in range(m):
                        zr[t] += xr[t] * weight
            else:
                for p in range(p0, p1):
                    zr = acc[indices[p]]
                    for t in range(m):
                        zr[t] += xr[t]
        # epilogue: (uniform weight once,) bias (where the sum is nonzero, or everywhere),
        # ReLU and cap (or identity); per sample the largest, smallest and smallest nonzero
        # magnitude. The challenge's rule (structural, ReLU) has its own loop, as fast as
        # before the general rules existed (values >= 0: magnitudes are the values).
        scale = mode == MODE_SUM and not dense
        smallest = np.full(m, np.inf, dtype=y.dtype)     # per sample: min nonzero |output|
        inf = smallest[0]                                # m >= 1: this tile holds samples
        b = bias[0]
        if relu and not dense_bias:
            largest = np.zeros(m, dtype=y.dtype)         # per sample: max output (>= 0)
            lowest = np.full(m, ymax, dtype=y.dtype)     # per sample: min output
            for j in range(n_out):
                sr = acc[out_map[j]] if dedupe else acc[j]
                zr = zt[j]
                if not uniform_bias:
                    b = bias[j]
                for t in range(m):
                    v = sr[t] * weight if scale else sr[t]
                    v = v + b if v != zero else v
                    v = zero if v < zero else v
                    v = ymax if v > ymax else v
                    zr[t] = v
                    largest[t] = max(largest[t], v)
                    lowest[t] = min(lowest[t], v)
                    smallest[t] = min(smallest[t], v if v > zero else inf)
        else:
            largest = np.full(m, -np.inf, dtype=y.dtype)     # per sample: max output
            lowest = np.full(m, np.inf, dtype=y.dtype)       # per sample: min output
            for j in range(n_out):
                sr = acc[out_map[j]] if dedupe else acc[j]
                zr = zt[j]
                if not uniform_bias:
                    b = bias[j]
                for t in range(m):
                    v = sr[t] * weight if scale else sr[t]
                    if dense_bias:
                        v = v + b
                    else:
                        v = v + b if v != zero else v
                    if relu:
                        v = zero if v < zero else v
                        v = ymax if v > ymax else v
                    zr[t] = v
                    largest[t] = max(largest[t], v)
                    lowest[t] = min(lowest[t], v)
                    a = abs(v)
                    smallest[t] = min(smallest[t], a if a != zero else inf)
        low = inf
        for t in range(m):
            row_max[it * tile + t] = largest[t]
            row_min[it * tile + t] = lowest[t]
            low = min(low, smallest[t])
        tile_min[it] = low


@njit(parallel=True, cache=True, nogil=True)
def spdnn_cpu_compact(src, dst, keep):
    """Copy samples ``keep`` (ascending positions) of tiled ``src`` to positions
    ``0..len(keep)-1`` of tiled ``dst`` (same width and tile), in order."""
    n = src.shape[1]
    tile = src.shape[2]
    k = keep.size
    for it in prange((k + tile - 1) // tile):
        zt = dst[it]
        m = min(tile, k - it * tile)
        source = keep[it * tile:it * tile + m] // tile
        lane = keep[it * tile:it * tile + m] % tile
        for i in range(n):
            zr = zt[i]
            for t in range(m):
                zr[t] = src[source[t], i, lane[t]]

@njit(parallel=True, cache=True, nogil=True)
def spdnn_cpu_densify(indptr, indices, data, r0, r1, y):
    """Write CSR rows ``r0..r1-1`` as samples ``0..r1-r0-1`` of tiled ``y`` (zeros elsewhere
    in the tiles they occupy)."""
    tile = y.shape[2]
    m = r1 - r0
    for it in prange((m + tile - 1) // tile):
        yt = y[it]
        yt[:, :] = 0
        for t in range(min(tile, m - it * tile)):
            r = r0 + it * tile + t
            for p in range(indptr[r], indptr[r + 1]):
                yt[indices[p], t] = data[p]


def spdnn_cpu_undensify(y, count):
    """Samples ``0..count-1`` of tiled ``y`` as a dense ``(count, N)`` array (a copy)."""
    tiles, n, tile = y.shape
    return np.ascontiguousarray(y.transpose(0, 2, 1).reshape(tiles * tile, n)[:count])
