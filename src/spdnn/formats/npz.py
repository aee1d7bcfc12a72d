"""The features ``.npz`` layout: a sparse feature matrix as uncompressed numpy arrays.

One file holds a CSR matrix of samples x N (docs/challenge.md, Formats) as 1-D ``.npy``
members of an uncompressed zip (what :func:`numpy.savez` writes)::

    indptr   (samples + 1,)  int64 or int32   row pointers
    indices  (nnz,)          int32            0-based feature ids, ascending within a row
    shape    (2,)            int64            (samples, N)
    data     (nnz,)          float64          optional: absent means every value is 1

Stored members are memory-mapped, so a reader touches only the bytes of the rows it
uses (an MPI rank reads its own share; the binary cache serves 392 million features of
N=65536 without a copy). The generated-data cache, the binary cache of official
features and :class:`~spdnn.formats.sources.NpzSource` all use this one layout.
"""
from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

from .._atomic import atomic_path
from ..errors import FormatError

__all__ = ["write_features_npz", "write_features_npz_files", "features_npz_arrays", "read_features_npz",
           "check_csr_rows", "npz_member", "NpyAppender"]

#: Size of a zip local file header before its variable fields (APPNOTE.TXT 4.3.7).
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_MAGIC = b"PK\x03\x04"


def write_features_npz(path: str | os.PathLike, features, *, values: bool | None = None,
                       extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write a feature matrix in the ``.npz`` layout, atomically.

    Parameters
    ----------
    path : str or os.PathLike
    features : scipy.sparse matrix (samples, N)
        Written as canonical CSR (int32 column ids).
    values : bool, optional
        Whether to store ``data``. None (default): only when some value is not 1.
    extra : dict of str to numpy.ndarray, optional
        More members (e.g. a cache key); readers of the layout ignore them.

    Returns
    -------
    pathlib.Path
    """
    m = sp.csr_matrix(features)
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    arrays = {"indptr": m.indptr, "indices": m.indices.astype(np.int32, copy=False),
              "shape": np.asarray(m.shape, dtype=np.int64)}
    if values or (values is None and m.nnz and not np.all(m.data == 1)):
        arrays["data"] = np.asarray(m.data, np.float64)
    arrays.update(extra or {})
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def write_features_npz_files(path: str | os.PathLike, members: dict[str, str | os.PathLike]) -> Path:
    """Assemble a ``.npz`` from ``.npy`` files already on disk (streamed, no array in memory).

    ``members`` maps a member name (``indptr``, ``indices``, ``shape``, ``data``, ...)
    to an ``.npy`` file; each is copied uncompressed into the archive, atomically.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, source in members.items():
                zf.write(source, arcname=f"{name}.npy")
    return path


class NpyAppender:
    """A 1-D ``.npy`` file written in pieces, its length unknown until the end.

    The header is written first for length 0 and rewritten in place by :meth:`close`;
    numpy pads ``.npy`` headers so that the shape can grow without moving the data.

    Parameters
    ----------
    path : str or os.PathLike
        Created (truncated).
    dtype : numpy dtype
    """

    def __init__(self, path: str | os.PathLike, dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._fh = open(self.path, "wb")
        self._header = self._write_header(0)

    def _write_header(self, count: int) -> int:
        self._fh.seek(0)
        np.lib.format.write_array_header_1_0(
            self._fh, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (count,)})
        return self._fh.tell()

    def append(self, values: np.ndarray) -> None:
        """Append ``values`` (cast to the file's dtype)."""
        np.ascontiguousarray(values, dtype=self.dtype).tofile(self._fh)
        self.count += int(np.size(values))

    def close(self) -> int:
        """Write the final length into the header and close; returns the number of items."""
        if not self._fh.closed:
            try:
                self._fh.flush()
                if self._write_header(self.count) != self._header:  # pragma: no cover - numpy's padding changed
                    raise OSError(f"{self.path}: .npy header changed size")
            finally:
                self._fh.close()
        return self.count


def _numeric(info: zipfile.ZipInfo, path, shape, fortran, dtype) -> None:
    if dtype.hasobject or dtype.kind not in "biuf" or fortran or len(shape) != 1:
        raise FormatError(f"member {info.filename}: expected a 1-D numeric array", path=path)


def _npy_header(fh) -> tuple:
    """(shape, fortran_order, dtype) of the .npy header at ``fh``'s position."""
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read_header(fh)


def _fills(info: zipfile.ZipInfo, path, shape, dtype, header_bytes: int, member_bytes: int) -> None:
    """The .npy header's items fill the member exactly (no more, no fewer bytes)."""
    if header_bytes + int(shape[0]) * dtype.itemsize != member_bytes:
        raise FormatError(f"member {info.filename}: {shape[0]} items of {dtype.itemsize} bytes do not fill "
                          f"the member's {member_bytes} bytes", path=path)


def npz_member(path: str | os.PathLike, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    """Member ``name`` (without ``.npy``) of an open ``.npz``: memory-mapped when stored, else read.

    A stored member is mapped, not read, so its zip CRC is not checked; its local header,
    its ``.npy`` header and its length are.

    Raises
    ------
    FormatError
        No such member, not a 1-D numeric array, or a member the archive does not hold
        whole (a damaged or truncated file).
    """
    try:
        info = zf.getinfo(name + ".npy")
    except KeyError:
        raise FormatError(f"no array {name!r} (expected indptr, indices, shape[, data])", path=path) from None
    if info.compress_type != zipfile.ZIP_STORED:
        try:
            with zf.open(info) as fh:
                shape, fortran, dtype = _npy_header(fh)
                _numeric(info, path, shape, fortran, dtype)
                _fills(info, path, shape, dtype, fh.tell(), info.file_size)
                array = np.frombuffer(fh.read(), dtype=dtype)
        except FormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - zlib, zipfile, numpy: a damaged member, whatever the error
            raise FormatError(f"member {info.filename}: unreadable ({type(exc).__name__}: {exc})"[:300],
                              path=path) from None
        if array.shape != tuple(shape):
            raise FormatError(f"member {info.filename}: truncated", path=path)
        return array
    size = os.path.getsize(path)
    if not 0 <= info.header_offset <= size - _LOCAL_HEADER.size:
        raise FormatError(f"member {info.filename}: local zip header beyond the file", path=path)
    with open(path, "rb") as fh:
        # The member's bytes start after its local header, whose name and extra fields
        # may differ in length from the central directory's copy (zip64 extras).
        fh.seek(info.header_offset)
        head = fh.read(_LOCAL_HEADER.size)
        if len(head) != _LOCAL_HEADER.size or head[:4] != _LOCAL_MAGIC:
            raise FormatError(f"member {info.filename}: bad local zip header", path=path)
        name_len, extra_len = _LOCAL_HEADER.unpack(head)[-2:]
        if fh.read(name_len) != info.orig_filename.encode("utf-8", "replace"):
            raise FormatError(f"member {info.filename}: bad local zip header (another name)", path=path)
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        fh.seek(start)
        try:
            shape, fortran, dtype = _npy_header(fh)
        except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many kinds
            raise FormatError(f"member {info.filename}: not a .npy array ({type(exc).__name__}: {exc})"[:300],
                              path=path) from None
        _numeric(info, path, shape, fortran, dtype)
        offset = fh.tell()
    _fills(info, path, shape, dtype, offset - start, info.file_size)
    if offset + int(shape[0]) * dtype.itemsize > size:
        raise FormatError(f"member {info.filename}: beyond the end of the file (truncated?)", path=path)
    if shape[0] == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def features_npz_arrays(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple]:
    """The arrays of a features ``.npz``, memory-mapped and checked for consistency.

    Returns
    -------
    (indptr, indices, data or None, (samples, N))

    Raises
    ------
    FormatError
        Not a zip, a member missing or malformed, or arrays that do not describe a CSR
        matrix of the stored shape (the message names the file).
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, EOFError, ValueError, struct.error, zipfile.BadZipFile) as exc:
        raise FormatError(f"cannot open as .npz: {exc}"[:300], path=path) from None
    with zf:
        shape = np.asarray(npz_member(path, zf, "shape"))
        indptr = npz_member(path, zf, "indptr")
        indices = npz_member(path, zf, "indices")
        data = npz_member(path, zf, "data") if "data.npy" in zf.namelist() else None
    for name, array in (("shape", shape), ("indptr", indptr), ("indices", indices)):
        if array.dtype.kind not in "iu":
            raise FormatError(f"member {name}.npy: expected integers, found {array.dtype}", path=path)
    if shape.shape != (2,) or shape.min() < 0:
        raise FormatError(f"shape: expected 2 non-negative numbers, got {shape.tolist()}", path=path)
    samples, neurons = int(shape[0]), int(shape[1])
    if indptr.shape != (samples + 1,) or int(indptr[0]) != 0 or int(indptr[-1]) != indices.shape[0]:
        raise FormatError(f"indptr/indices do not describe {samples} rows of {indices.shape[0]} nonzeros",
                          path=path)
    if data is not None and data.shape != indices.shape:
        raise FormatError("data and indices differ in length", path=path)
    return indptr, indices, data, (samples, neurons)


@numba.njit(cache=True, nogil=True)
def _csr_problem(indptr, indices, data, neurons):
    """(code, row) of the first problem of CSR rows; code 0: none, 1: row pointers decrease or
    leave the arrays, 2: a feature id out of range, 3: ids not strictly ascending, 4: a value
    not finite."""
    n = indptr.size - 1
    nnz = indices.size
    for r in range(n):
        a = indptr[r]
        b = indptr[r + 1]
        if a < indptr[0] or b < a or b > indptr[0] + nnz:
            return 1, r
        prev = -1
        for k in range(a - indptr[0], b - indptr[0]):
            c = indices[k]
            if c < 0 or c >= neurons:
                return 2, r
            if c <= prev:
                return 3, r
            prev = c
            if data.size and not np.isfinite(data[k]):
                return 4, r
    return 0, 0


def check_csr_rows(path, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray | None, neurons: int,
                   first_row: int = 0) -> None:
    """Raise :class:`FormatError` unless ``indptr`` (of rows ``first_row``...) and the
    ``indices`` (and ``data``) they point into describe canonical CSR rows of ``neurons`` columns.

    ``indices`` and ``data`` hold exactly the entries of those rows (``indptr[0]`` is their
    offset in the file's arrays).
    """
    values = np.zeros(0) if data is None else data
    code, row = _csr_problem(np.asarray(indptr, np.int64), indices, values, int(neurons))
    if code:
        what = {1: "row pointers decrease or point beyond the feature ids",
                2: f"a feature id beyond 0..{int(neurons) - 1}",
                3: "feature ids not strictly ascending (or repeated)",
                4: "a value that is not finite"}[code]
        raise FormatError(f"row {first_row + row + 1}: {what} (a damaged .npz?)", path=path)


def read_features_npz(path: str | os.PathLike, neurons: int | None = None) -> sp.csr_matrix:
    """A features ``.npz`` as a canonical float64 CSR matrix (samples, N), memory-mapped.

    ``indices`` (and ``data``) map the file; a file without ``data`` gets a read-only
    broadcast of 1.0 (no memory per nonzero). The rows are checked in one pass (row
    pointers ascending, feature ids in range and strictly ascending within a row,
    values finite), so a damaged file is an error here, not a crash in an engine.

    Raises
    ------
    FormatError
        See :func:`features_npz_arrays` and :func:`check_csr_rows`; or N differs from ``neurons``.
    """
    indptr, indices, data, shape = features_npz_arrays(path)
    if neurons is not None and shape[1] != neurons:
        raise FormatError(f"holds {shape[1]} features (columns), expected neurons={neurons}", path=path)
    check_csr_rows(path, indptr, indices, data, shape[1])
    if data is None:
        data = np.broadcast_to(np.float64(1.0), indices.shape)
    elif data.dtype != np.float64:
        data = data.astype(np.float64)
    m = sp.csr_matrix((data, indices, np.asarray(indptr)), shape=shape)
    m.has_sorted_indices = True
    m.has_canonical_format = True
    return m
