"""The short-axis pass of :mod:`spdnn.generate.features` on the CPU: fused numba kernels.

For every image (one per parallel iteration, all cores) and every column ``c`` of it,
the kernels form the ``s_r`` values of ``X`` from the long rows at ``x = s_c n + c``
(``re = er[c, :] + g0[x] + sum_j (Re g[j, x] wr[j, :] + Im g[j, x] wi[j, :])``, ``im``
from the edge row and ``ei``), four columns at a time, and either keep the largest ``|X|^2``
(:func:`spdnn_features_max`) or write the features ``c * s_r + r`` whose ``|X|^2``
exceeds the threshold and count the pixels within the ambiguity band
(:func:`spdnn_features_threshold`). Nothing larger than four columns of one image is
formed; the inner loops run over ``r`` (contiguous, vectorized). An image's numbers do
not depend on the number of threads.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._features_array import ShortAxis

__all__ = ["CpuShortAxis", "spdnn_features_max", "spdnn_features_threshold"]

_FLAGS = dict(cache=True, nogil=True, fastmath={"contract"})

@njit(inline="always", **_FLAGS)
def _columns(g0, gf, wr, wi, di, er, ei, x, c, re, im):
    """``re[q]``, ``im[q]`` (each length s_r) of X at long positions x + q, columns c + q
    of their image, q < 4: ``re`` and ``im`` are tuples of four arrays, ``gf`` is the
    plan's ``g`` viewed as float64 (re, im interleaved). Four columns (every image width
    s_c is a multiple of 4) share each load of ``wr`` and ``wi``: 2.5x faster than one
    column at a time, measured."""
    hr, s_r = wr.shape
    r0, r1, r2, r3 = re
    for r in range(s_r):
        r0[r] = er[c, r] + g0[x]
        r1[r] = er[c + 1, r] + g0[x + 1]
        r2[r] = er[c + 2, r] + g0[x + 2]
        r3[r] = er[c + 3, r] + g0[x + 3]
    for j in range(hr):
        a0 = gf[j, 2 * x]
        b0 = gf[j, 2 * x + 1]
        a1 = gf[j, 2 * x + 2]
        b1 = gf[j, 2 * x + 3]
        a2 = gf[j, 2 * x + 4]
        b2 = gf[j, 2 * x + 5]
        a3 = gf[j, 2 * x + 6]
        b3 = gf[j, 2 * x + 7]
        for r in range(s_r):
            d = wr[j, r]
            e = wi[j, r]
            r0[r] += a0 * d + b0 * e
            r1[r] += a1 * d + b1 * e
            r2[r] += a2 * d + b2 * e
            r3[r] += a3 * d + b3 * e
    for q in range(4):
        a = gf[hr - 1, 2 * (x + q)]
        b = gf[hr - 1, 2 * (x + q) + 1]
        iq = im[q]
        for r in range(s_r):
            iq[r] = ei[c + q, r] + a * di[0, r] + b * di[1, r]


@njit(inline="always", **_FLAGS)
def _squared_columns(g0, gf, wr, wi, di, er, ei, x, c, re, im):
    """:func:`_columns`, then ``re[q][r]`` becomes ``|X|^2`` of that pixel."""
    _columns(g0, gf, wr, wi, di, er, ei, x, c, re, im)
    for q in range(4):
        rq = re[q]
        iq = im[q]
        for r in range(rq.size):
            rq[r] = rq[r] * rq[r] + iq[r] * iq[r]


@njit(parallel=True, **_FLAGS)
def spdnn_features_max(g0, gf, wr, wi, di, er, ei, first, stop, s_c):
    """Largest ``|X|^2`` over images ``first .. stop-1`` (float64)."""
    s_r = wr.shape[1]
    best = np.zeros(stop - first)
    for i in prange(stop - first):
        re = (np.empty(s_r), np.empty(s_r), np.empty(s_r), np.empty(s_r))
        im = (np.empty(s_r), np.empty(s_r), np.empty(s_r), np.empty(s_r))
        top = 0.0
        for c in range(0, s_c, 4):
            _squared_columns(g0, gf, wr, wi, di, er, ei, (first + i) * s_c + c, c, re, im)
            for q in range(4):
                top = max(top, re[q].max())
        best[i] = top
    return best.max()


@njit(parallel=True, **_FLAGS)
def spdnn_features_threshold(g0, gf, wr, wi, di, er, ei, first, stop, s_c, thr2, lo2, hi2, out, counts,
                             ambiguous):
    """Features of images ``first .. stop-1``: image ``first + i`` gets ``counts[i]`` sorted
    0-based features in ``out[i, :counts[i]]`` (pixels with ``|X|^2 > thr2``), and
    ``ambiguous[i]`` pixels with ``lo2 < |X|^2 <= hi2``."""
    s_r = wr.shape[1]
    for i in prange(stop - first):
        re = (np.empty(s_r), np.empty(s_r), np.empty(s_r), np.empty(s_r))
        im = (np.empty(s_r), np.empty(s_r), np.empty(s_r), np.empty(s_r))
        k = 0
        amb = 0
        for c in range(0, s_c, 4):
            _squared_columns(g0, gf, wr, wi, di, er, ei, (first + i) * s_c + c, c, re, im)
            for q in range(4):
                sq = re[q]
                base = (c + q) * s_r
                for r in range(s_r):
                    v = sq[r]
                    if v > thr2:
                        out[i, k] = base + r
                        k += 1
                    if v > lo2 and v <= hi2:
                        amb += 1
        counts[i] = k
        ambiguous[i] = amb


@njit(parallel=True, cache=True, nogil=True)
def _compact(out, counts, offsets, dest):
    for i in prange(counts.shape[0]):
        o = offsets[i]
        for k in range(counts[i]):
            dest[o + k] = out[i, k]


class CpuShortAxis(ShortAxis):
    """The short-axis pass over a :class:`~spdnn.generate.features.FeaturePlan` of numpy arrays.

    ``chunk_bytes`` bounds the feature buffer of one step (images x N int32).
    """

    @staticmethod
    def long_batch() -> int:
        """Long rows transformed per call: one a core (scipy.fft's workers split a batch)."""
        from .features import _workers

        return max(2, _workers())

    def __init__(self, plan, *, chunk_bytes: int = 1 << 27):
        super().__init__(plan, step_bytes=chunk_bytes, value_bytes=4)

    def _args(self):
        p = self.plan
        return p.g0, p.g.view(np.float64), p.wr, p.wi, p.di, p.er, p.ei

    def _step_max(self, first: int, stop: int) -> float:
        return float(spdnn_features_max(*self._args(), first, stop, self.plan.s_c))

    def threshold(self, samples: int, thr2: float, lo2: float, hi2: float, *, progress=None,
                  desc: str = "features") -> tuple[np.ndarray, list, int]:
        """``(counts, parts, ambiguous)`` of the first ``samples`` images: features a row
        (int64, (samples,)), their sorted 0-based features (int32 arrays, to be
        concatenated in order), and the number of pixels in the ambiguity band."""
        counts = np.zeros(samples, dtype=np.int64)
        parts = []
        ambiguous = 0
        buf = np.empty((min(self.step, max(samples, 1)), self.neurons), dtype=np.int32)
        amb = np.empty(buf.shape[0], dtype=np.int64)
        for first, stop in self._steps(samples, progress, f"{desc}: threshold"):
            k = stop - first
            spdnn_features_threshold(*self._args(), first, stop, self.plan.s_c, thr2, lo2, hi2, buf[:k],
                                     counts[first:stop], amb[:k])
            ambiguous += int(amb[:k].sum())
            offsets = np.zeros(k, dtype=np.int64)
            np.cumsum(counts[first:stop - 1], out=offsets[1:])
            dest = np.empty(int(counts[first:stop].sum()), dtype=np.int32)
            _compact(buf[:k], counts[first:stop], offsets, dest)
            parts.append(dest)
        return counts, parts, ambiguous
