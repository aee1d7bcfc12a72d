"""Identical weight columns: detected once, used by every engine that computes each distinct
column once ("deduplication"; RadiX-Net layers, the official ones included, have N/16
distinct columns). Identical columns (same input indices, same values, same order) give
identical sums, so computing one and copying it is exact.

Detection hashes each column (a sum of one mixed word per entry, so the hash does not
depend on the order the entries are visited in: CSR and CSC give the same), groups equal
hashes, and confirms every column against its group's first column entry by entry: a hash
collision can cost a copy, never give a wrong one. Two numba passes over the entries.
"""
from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

__all__ = ["unique_columns", "pays_to_dedupe"]

_ROW_MIX = np.uint64(0x9E3779B97F4A7C15)
_VALUE_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
_SPREAD = np.uint64(0xBF58476D1CE4E5B9)
_COUNT_MIX = np.uint64(0x94D049BB133111EB)


def pays_to_dedupe(distinct: int, neurons: int) -> bool:
    """Whether computing ``distinct`` columns instead of ``neurons`` is worth a map lookup per
    output: at most half of them ('auto' deduplication of the engines)."""
    return distinct <= neurons // 2


@numba.njit(cache=True, nogil=True)
def _column_keys(indptr, indices, bits, ncols, by_rows):
    """Each column's key: the sum of its entries' mixed (row, value bits), xor its length.

    ``by_rows``: (indptr, indices) are CSR (rows of the matrix), else CSC.
    """
    h = np.zeros(ncols, dtype=np.uint64)
    counts = np.zeros(ncols, dtype=np.int64)
    for a in range(indptr.size - 1):
        for e in range(indptr[a], indptr[a + 1]):
            if by_rows:
                row, col = np.int64(a), np.int64(indices[e])
            else:
                row, col = np.int64(indices[e]), np.int64(a)
            m = (np.uint64(row) + np.uint64(1)) * _ROW_MIX ^ bits[e] * _VALUE_MIX
            m ^= m >> np.uint64(29)
            h[col] += m * _SPREAD
            counts[col] += 1
    for j in range(ncols):
        h[j] ^= np.uint64(counts[j]) * _COUNT_MIX
    return h, counts


@numba.njit(cache=True, nogil=True)
def _differs_csc(indptr, indices, bits, counts, rep_of):
    """Columns that are not entry for entry their candidate representative (CSC)."""
    ncols = counts.size
    wrong = np.zeros(ncols, dtype=np.bool_)
    for j in range(ncols):
        r = rep_of[j]
        if r == j:
            continue
        if counts[j] != counts[r]:
            wrong[j] = True
            continue
        a, b = indptr[j], indptr[r]
        for t in range(counts[j]):
            if indices[a + t] != indices[b + t] or bits[a + t] != bits[b + t]:
                wrong[j] = True
                break
    return wrong


@numba.njit(cache=True, nogil=True)
def _differs_csr(indptr, indices, bits, counts, rep_of):
    """As :func:`_differs_csc` for CSR with sorted rows: every entry (i, j) must find (i, rep)
    with the same bits in row i (binary search); equal lengths make the match complete."""
    ncols = counts.size
    wrong = np.zeros(ncols, dtype=np.bool_)
    for j in range(ncols):
        wrong[j] = counts[j] != counts[rep_of[j]]
    for i in range(indptr.size - 1):
        lo0, hi0 = indptr[i], indptr[i + 1]
        for e in range(lo0, hi0):
            j = indices[e]
            r = rep_of[j]
            if r == j or wrong[j]:
                continue
            lo, hi = lo0, hi0
            while lo < hi:
                mid = (lo + hi) // 2
                if indices[mid] < r:
                    lo = mid + 1
                else:
                    hi = mid
            if lo == hi0 or indices[lo] != r or bits[lo] != bits[e]:
                wrong[j] = True
    return wrong


def unique_columns(w: sp.csc_matrix | sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Distinct columns of a sparse matrix (same row indices and values).

    ``w``: CSC, or CSR (read as it is, no conversion); duplicate entries are summed and
    rows sorted first if the matrix is not canonical.

    Returns
    -------
    reps : int64 (u,)
        One representative column per distinct column (the first of its kind), ascending.
    inverse : int64 (ncols,)
        ``inverse[j]`` = position in ``reps`` of the column equal to column j.
    """
    by_rows = getattr(w, "format", None) == "csr"
    if not by_rows:
        w = sp.csc_matrix(w)
    if not w.has_canonical_format:
        w = w.copy()
        w.sum_duplicates()
    bits = np.ascontiguousarray(w.data, dtype=np.float64).view(np.uint64)
    keys, counts = _column_keys(w.indptr, w.indices, bits, w.shape[1], by_rows)
    return _group(w, bits, keys, counts, by_rows)


def _group(w, bits: np.ndarray, keys: np.ndarray, counts: np.ndarray,
           by_rows: bool) -> tuple[np.ndarray, np.ndarray]:
    """Columns grouped by ``keys``, each confirmed against its group's first column
    (``bits``: the values of ``w.data`` as float64 bit patterns)."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rep_of = first[inverse.reshape(-1)]
    differs = _differs_csr if by_rows else _differs_csc
    wrong = differs(w.indptr, w.indices, bits, counts, rep_of)
    rep_of = np.where(wrong, np.arange(rep_of.size), rep_of)
    reps, inverse = np.unique(rep_of, return_inverse=True)
    return reps.astype(np.int64), inverse.reshape(-1).astype(np.int64)
