"""MatrixMarket coordinate files (``.mtx`` / ``.mtx.gz``), as public Sparse DNN subsets ship.

Supported: ``%%MatrixMarket matrix coordinate {pattern|real|integer} general``; indices
1-based; a pattern entry has the value 1. The declared entry count is checked.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO

import numpy as np
import scipy.sparse as sp

from ..errors import FormatError
from .text import COMPRESSION_ERRORS, TextEntries, check_rows_fit, entries_to_csr, open_data, read_entries

_INT32_MAX = 2**31 - 1

__all__ = ["MtxHeader", "read_mtx_header", "read_mtx_entries", "check_count", "read_mtx", "is_mtx"]

_FIELDS = ("pattern", "real", "integer")


def is_mtx(path: str | os.PathLike) -> bool:
    """True when the name ends in ``.mtx`` or ``.mtx.gz``."""
    name = os.fspath(path).lower()
    return name.endswith(".mtx") or name.endswith(".mtx.gz")


@dataclass(frozen=True)
class MtxHeader:
    """The banner and size line of a coordinate MatrixMarket file.

    Attributes
    ----------
    rows, cols, nnz : int
        Declared shape and number of entry lines.
    field : {'pattern', 'real', 'integer'}
    lines : int
        Number of lines up to and including the size line (entries start on ``lines + 1``).
    """

    rows: int
    cols: int
    nnz: int
    field: str
    lines: int


def _readline(stream: IO[bytes], where: str) -> bytes:
    try:
        return stream.readline()
    except COMPRESSION_ERRORS as exc:
        raise FormatError(f"compressed data is truncated or corrupt ({type(exc).__name__}: {exc})",
                          path=where) from None


def read_mtx_header(stream: IO[bytes], where: str) -> MtxHeader:
    """Read the banner, comments and size line from ``stream`` (left at the first entry).

    Raises
    ------
    FormatError
        Not a MatrixMarket coordinate file, an unsupported field or symmetry, or a bad
        size line (file and line named).
    """
    banner = _readline(stream, where).decode("ascii", "replace").strip()
    if not banner:
        raise FormatError("empty file: expected a '%%MatrixMarket matrix coordinate ...' banner", path=where, line=1)
    words = banner.split()
    if len(words) != 5 or words[0].lower() != "%%matrixmarket" or words[1].lower() != "matrix":
        raise FormatError(f"bad MatrixMarket banner {banner[:80]!r}: expected "
                          "'%%MatrixMarket matrix coordinate <pattern|real|integer> general'", path=where, line=1)
    layout, field, symmetry = (w.lower() for w in words[2:])
    if layout != "coordinate":
        raise FormatError(f"unsupported MatrixMarket layout {layout!r}: expected 'coordinate'", path=where, line=1)
    if field not in _FIELDS:
        raise FormatError(f"unsupported MatrixMarket field {field!r}: expected one of {', '.join(_FIELDS)}",
                          path=where, line=1)
    if symmetry != "general":
        raise FormatError(f"unsupported MatrixMarket symmetry {symmetry!r}: expected 'general'", path=where, line=1)
    line = 1
    while True:
        raw = _readline(stream, where)
        line += 1
        if not raw:
            raise FormatError("missing size line 'rows cols entries' after the header", path=where, line=line)
        text = raw.decode("ascii", "replace").strip()
        if text.startswith("%") or not text:
            continue
        break
    parts = text.split()
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise FormatError(f"bad size line {text[:80]!r}: expected three non-negative integers 'rows cols entries'",
                          path=where, line=line)
    if any(len(p.lstrip("0")) > 10 for p in parts) or max(int(p) for p in parts[:2]) > _INT32_MAX:
        raise FormatError(f"bad size line {text[:80]!r}: rows and columns must be at most {_INT32_MAX:,} (the "
                          f"largest index the readers accept)", path=where, line=line)
    rows, cols, nnz = (int(p) for p in parts)
    if nnz > rows * cols:
        raise FormatError(f"size line declares {nnz} entries for a {rows} x {cols} matrix", path=where, line=line)
    return MtxHeader(rows=rows, cols=cols, nnz=nnz, field=field, lines=line)


def read_mtx_entries(stream: IO[bytes], where: str, *, names=("row", "column", "value"),
                     on_block=None) -> tuple[MtxHeader, TextEntries]:
    """Read a coordinate MatrixMarket stream: header and 1-based entries (count checked)."""
    header = read_mtx_header(stream, where)
    return header, _read_entries(stream, where, header, names=names, on_block=on_block)


def _read_entries(stream: IO[bytes], where: str, header: MtxHeader, *, names, on_block=None) -> TextEntries:
    want_value = header.field != "pattern"
    entries = read_entries(stream, where, nint=2, want_value=want_value, bounds=(header.rows, header.cols),
                           names=names, first_line=header.lines + 1, on_block=on_block)
    check_count(header, entries.count, where)
    return entries


def check_count(header: MtxHeader, count: int, where: str) -> None:
    """Raise :class:`FormatError` unless ``count`` entries were read, as the size line declares."""
    if count > header.nnz:
        raise FormatError(f"wrong count of entries: the size line declares {header.nnz}, found more",
                          path=where, line=header.lines + 1 + header.nnz)
    if count < header.nnz:
        raise FormatError(f"wrong count of entries: the size line (line {header.lines}) declares {header.nnz}, "
                          f"found {count} (end of file)", path=where, line=header.lines + 1 + count)


def read_mtx(path: str | os.PathLike) -> sp.csr_matrix:
    """Read a coordinate MatrixMarket file (plain or gzip) as a canonical float64 CSR matrix.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    scipy.sparse.csr_matrix, float64, shape (rows, cols) as declared
        Pattern entries are 1.0. Duplicate entries raise :class:`FormatError`.
    """
    where = os.fspath(path)
    with open_data(path) as stream:
        header = read_mtx_header(stream, where)
        check_rows_fit(header.rows, where, f"a matrix of {header.rows:,} rows (the size line)")
        entries = _read_entries(stream, where, header, names=("row", "column", "value"))
    if entries.count == 0:
        return sp.csr_matrix((header.rows, header.cols), dtype=np.float64)
    rows, cols = entries.ints
    return entries_to_csr(rows, cols, entries.values, (header.rows, header.cols), where,
                          first_line=entries.first_line)
