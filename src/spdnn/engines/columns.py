"""Identical weight columns: detected once, used by every engine that computes each distinct
column once ("deduplication"; RadiX-Net layers, the official ones included, have N/16
distinct columns). Identical columns (same input indices, same values, same order) give
identical sums, so computing one and copying it is exact. Plain numpy.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["unique_columns", "pays_to_dedupe"]


def pays_to_dedupe(distinct: int, neurons: int) -> bool:
    """Whether computing ``distinct`` columns instead of ``neurons`` is worth a map lookup per
    output: at most half of them ('auto' deduplication of the engines)."""
    return distinct <= neurons // 2


def unique_columns(w: sp.csc_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Distinct columns of a canonical CSC matrix (same row indices and values, in order).

    Returns
    -------
    reps : int64 (u,)
        One representative column per distinct column, ascending.
    inverse : int64 (ncols,)
        ``inverse[j]`` = position in ``reps`` of the column equal to column j.
    """
    ncols = w.shape[1]
    counts = np.diff(w.indptr)
    idx = w.indices.astype(np.uint64)
    bits = np.ascontiguousarray(w.data, dtype=np.float64).view(np.uint64)
    with np.errstate(over="ignore"):
        mixed = (idx + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) ^ (bits * np.uint64(0xC2B2AE3D27D4EB4F))
        mixed ^= mixed >> np.uint64(29)
        mixed *= np.uint64(0xBF58476D1CE4E5B9)
    h = np.zeros(ncols, dtype=np.uint64)
    nonempty = counts > 0
    if w.nnz:
        with np.errstate(over="ignore"):
            h[nonempty] = np.add.reduceat(mixed, w.indptr[:-1][nonempty])
    with np.errstate(over="ignore"):
        key = h ^ (counts.astype(np.uint64) * np.uint64(0x94D049BB133111EB))
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    rep_of = first[inverse]                          # candidate representative of each column
    # Verify (hash collisions): every column must equal its representative entry by entry.
    same = counts == counts[rep_of]
    lengths = np.where(same, counts, 0)
    pos = np.repeat(w.indptr[:-1], lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    rpos = np.repeat(w.indptr[:-1][rep_of], lengths) + (pos - np.repeat(w.indptr[:-1], lengths))
    bad = (w.indices[pos] != w.indices[rpos]) | (bits[pos] != bits[rpos])
    col_of_entry = np.repeat(np.arange(ncols), lengths)
    wrong = ~same
    wrong[col_of_entry[bad]] = True
    rep_of = np.where(wrong, np.arange(ncols), rep_of)
    reps, inverse = np.unique(rep_of, return_inverse=True)
    return reps.astype(np.int64), inverse.reshape(-1).astype(np.int64)
