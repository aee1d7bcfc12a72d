"""Feature sources: row-range access to a feature set, so that a process reads only its rows.

The FeatureSource protocol
--------------------------
An object with

``samples`` : int
    Number of rows (samples) in the whole set.
``neurons`` : int
    Number of columns N.
``rows(start, stop)`` -> scipy.sparse.csr_matrix (stop - start, N)
    Rows ``start..stop-1`` (0-based; global sample id = row + 1), values as float.

and optionally ``take(ranges)`` -> csr_matrix, the rows of a list of (start, stop) ranges
stacked in order (one call instead of one per range). :func:`spdnn.distributed.run_distributed`
accepts one, so that each MPI rank reads only its own share.

:class:`CsrSource` wraps a matrix in memory; :class:`NpzSource` memory-maps a file of the
features ``.npz`` layout (:mod:`spdnn.formats.npz`: the generated-data cache, the binary
cache of official features, :func:`save_npz_source`); :class:`HeadSource` keeps the first
S rows of another source.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from ..errors import FormatError, OptionError
from ..network import as_features
from .npz import check_csr_rows, features_npz_arrays, write_features_npz

__all__ = ["FeatureSource", "CsrSource", "NpzSource", "HeadSource", "save_npz_source", "as_source", "read_ranges"]


@runtime_checkable
class FeatureSource(Protocol):
    """Row-range access to a feature set; see the module docstring."""

    samples: int
    neurons: int

    def rows(self, start: int, stop: int) -> sp.csr_matrix: ...


def _check_range(start: int, stop: int, samples: int) -> None:
    if not (0 <= start <= stop <= samples):
        raise OptionError(f"rows({start}, {stop}): expected 0 <= start <= stop <= {samples}")


def _check_ranges(ranges, samples: int) -> None:
    for a, b in ranges:
        _check_range(a, b, samples)


class CsrSource:
    """A :class:`FeatureSource` over a matrix in memory (samples x N)."""

    def __init__(self, matrix):
        self._m = matrix if sp.issparse(matrix) and matrix.format == "csr" else sp.csr_matrix(matrix)
        self.samples, self.neurons = (int(v) for v in self._m.shape)

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        _check_range(start, stop, self.samples)
        return sp.csr_matrix(self._m[start:stop])

    def take(self, ranges) -> sp.csr_matrix:
        """Rows of several (start, stop) ranges, stacked in order."""
        _check_ranges(ranges, self.samples)
        idx = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges] or [np.zeros(0, np.int64)])
        return sp.csr_matrix(self._m[idx])


class NpzSource:
    """A :class:`FeatureSource` over a file of the features ``.npz`` layout, memory-mapped.

    Uncompressed members are mapped, so a rank reads only the bytes of its rows;
    compressed members (``numpy.savez_compressed``) are read whole. A file without
    ``data`` reads back every value as 1. The rows read are checked (as
    :func:`~spdnn.formats.npz.check_csr_rows`): a damaged file is a FormatError.

    Raises
    ------
    FormatError
        The file is not of the layout (see :func:`spdnn.formats.npz.features_npz_arrays`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._indptr, self._indices, self._data, shape = features_npz_arrays(self.path)
        self.samples, self.neurons = shape

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        _check_range(start, stop, self.samples)
        return self.take([(start, stop)])

    def take(self, ranges) -> sp.csr_matrix:
        """Rows of several (start, stop) ranges, stacked in order (one read per range)."""
        _check_ranges(ranges, self.samples)
        counts, idx, val = [np.zeros(1, np.int64)], [], []
        for a, b in ranges:
            ptr = np.array(self._indptr[a:b + 1], dtype=np.int64)
            if ptr[0] < 0 or ptr[-1] > len(self._indices) or np.any(ptr[1:] < ptr[:-1]):
                raise FormatError(f"rows {a + 1}..{b}: row pointers decrease or point beyond the feature ids "
                                  f"(a damaged .npz?)", path=self.path)
            rows_idx = np.array(self._indices[ptr[0]:ptr[-1]])
            rows_val = (None if self._data is None
                        else np.array(self._data[ptr[0]:ptr[-1]], dtype=np.float64))
            check_csr_rows(self.path, ptr, rows_idx, rows_val, self.neurons, first_row=a)
            counts.append(np.diff(ptr))
            idx.append(rows_idx)
            if rows_val is not None:
                val.append(rows_val)
        indptr = np.cumsum(np.concatenate(counts))
        indices = np.concatenate(idx) if idx else np.zeros(0, np.int32)
        data = np.concatenate(val) if self._data is not None and val else np.ones(len(indices))
        return sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, self.neurons))


class HeadSource:
    """The first ``samples`` rows of another :class:`FeatureSource` (``--samples S``)."""

    def __init__(self, source: FeatureSource, samples: int):
        if not 0 <= int(samples) <= int(source.samples):
            raise OptionError(f"samples={samples}: expected 0..{source.samples}")
        self._source, self.samples, self.neurons = source, int(samples), int(source.neurons)

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        _check_range(start, stop, self.samples)
        return self._source.rows(start, stop)

    def take(self, ranges) -> sp.csr_matrix:
        """Rows of several (start, stop) ranges, stacked in order."""
        _check_ranges(ranges, self.samples)
        return read_ranges(self._source, ranges, self.neurons)


def save_npz_source(path: str | os.PathLike, features, *, values: bool = True) -> Path:
    """Write features for :class:`NpzSource` (the features ``.npz`` layout, atomically).

    Parameters
    ----------
    path : path of the ``.npz`` to write
    features : sparse matrix (samples, N)
    values : bool
        False omits ``data`` (every value is then read back as 1: the challenge inputs).
    """
    return write_features_npz(path, as_features(features), values=values)


def read_ranges(source, ranges: list, neurons: int) -> sp.csr_matrix:
    """Rows of several (start, stop) ranges of a source, stacked in order (``source.take`` when it has one)."""
    if not ranges:
        return sp.csr_matrix((0, neurons))
    take = getattr(source, "take", None)
    if take is not None:
        return as_features(take(ranges), neurons)
    parts = [as_features(source.rows(a, b), neurons) for a, b in ranges]
    return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")


def as_source(features, neurons: int | None = None) -> FeatureSource:
    """A :class:`FeatureSource` for a matrix or a source (checked against ``neurons``)."""
    if sp.issparse(features) or isinstance(features, np.ndarray):
        source = CsrSource(features)
    elif isinstance(features, FeatureSource):
        source = features
    else:
        raise OptionError(f"features: expected a sparse matrix or a FeatureSource (samples, neurons, "
                          f"rows(start, stop)), got {type(features).__name__}")
    if neurons is not None and int(source.neurons) != neurons:
        raise OptionError(f"features: {source.neurons} columns, expected {neurons} (one per neuron)")
    return source
