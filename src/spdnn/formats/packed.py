"""Bit-packed binary features: the compact form in which challenge inputs travel.

The challenge inputs are binary (every value 1), so a sample is N bits. One ``.npz``
(zip, deflate-compressed) holds::

    bits   (samples, ceil(N / 8))  uint8   row i = numpy.packbits of sample i's dense row
                                           (big-endian bit order: feature 0 is the high
                                           bit of byte 0)
    n      ()                      int64   N
    nnz    ()                      int64   number of set bits (checked on reading)

At N = 1024 the 60,000 inputs take about 2 MB this way, against 26 MB as a CSR cache
entry, which is what lets them be carried to a machine that has no time to generate
them (``benchmarks/devdata.py``). Reading returns CSR with value 1 (float64, sorted
indices), exactly the matrix that was written when it was binary.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._atomic import atomic_open
from ..errors import FormatError, OptionError

__all__ = ["write_packed_features", "read_packed_features"]

#: Dense bits expanded at a time when packing or unpacking (bounds memory at any N).
_CHUNK_BITS = 1 << 27


def _rows_per_chunk(neurons: int) -> int:
    return max(1, _CHUNK_BITS // max(int(neurons), 1))


def write_packed_features(path: str | os.PathLike, features) -> Path:
    """Write binary features bit-packed, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` to write.
    features : scipy.sparse matrix (samples, N)
        Every stored value must be 1 (explicit zeros are dropped).

    Raises
    ------
    OptionError
        A stored value other than 0 or 1 (the format keeps only the pattern).
    """
    m = sp.csr_matrix(features)
    if m.nnz and not np.all((m.data == 1) | (m.data == 0)):
        raise OptionError(f"{path}: the bit-packed format holds binary features only (values 1), "
                          f"these have other values")
    m = m.copy()
    m.eliminate_zeros()
    samples, n = m.shape
    bits = np.zeros((samples, (n + 7) // 8), dtype=np.uint8)
    step = _rows_per_chunk(n)
    for first in range(0, samples, step):
        dense = m[first:first + step].toarray() != 0
        bits[first:first + dense.shape[0]] = np.packbits(dense, axis=1)
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, bits=bits, n=np.int64(n), nnz=np.int64(m.nnz))
    return path


def read_packed_features(path: str | os.PathLike) -> sp.csr_matrix:
    """Read features written by :func:`write_packed_features`.

    Returns
    -------
    scipy.sparse.csr_matrix, float64, shape (samples, N)
        Value 1 at every set bit; indices sorted.

    Raises
    ------
    FormatError
        Not such a file (missing member, wrong shape or type), or the number of set bits
        differs from the recorded ``nnz`` (a damaged file); the message names the file.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            members = {name: z[name] for name in ("bits", "n", "nnz") if name in z.files}
    except FileNotFoundError:
        raise FormatError("no such file", path=path) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FormatError(f"not a readable .npz ({exc})", path=path) from None
    missing = {"bits", "n", "nnz"} - set(members)
    if missing:
        raise FormatError(f"not bit-packed features: no member {', '.join(sorted(missing))}", path=path)
    if np.ndim(members["n"]) or np.ndim(members["nnz"]):
        raise FormatError("members n and nnz must be scalars", path=path)
    bits, n, nnz = members["bits"], int(members["n"]), int(members["nnz"])
    if bits.dtype != np.uint8 or bits.ndim != 2 or n < 1 or bits.shape[1] != (n + 7) // 8:
        raise FormatError(f"bits {bits.dtype} {bits.shape} do not hold rows of n={n} bits", path=path)
    samples = bits.shape[0]
    indptr = np.zeros(samples + 1, dtype=np.int64)
    chunks = []
    step = _rows_per_chunk(n)
    for first in range(0, samples, step):
        dense = np.unpackbits(bits[first:first + step], axis=1, count=n)
        rows, cols = np.nonzero(dense)
        indptr[first + 1:first + 1 + dense.shape[0]] = np.bincount(rows, minlength=dense.shape[0])
        chunks.append(cols.astype(np.int32))
    np.cumsum(indptr, out=indptr)
    indices = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    if len(indices) != nnz:
        raise FormatError(f"{len(indices)} set bits, the file records nnz={nnz} (damaged)", path=path)
    out = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(samples, n))
    out.has_sorted_indices = True
    return out
