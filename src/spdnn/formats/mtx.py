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

from ..errors import FormatError, format_bytes, quote
from .text import (COMPRESSION_ERRORS, MAX_LINE_BYTES, TextEntries, check_rows_fit, compression_problem,
                   entries_to_csr, open_data, read_entries)

__all__ = ["MtxHeader", "read_mtx_header", "read_mtx_entries", "check_count", "read_mtx", "is_mtx"]

_FIELDS = ("pattern", "real", "integer")
_INT32_MAX = 2**31 - 1


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


def _readline(stream: IO[bytes], where: str, line: int) -> bytes:
    """One header line (at most :data:`~.text.MAX_LINE_BYTES`; a longer one is an error)."""
    try:
        raw = stream.readline(MAX_LINE_BYTES + 1)
    except COMPRESSION_ERRORS as exc:
        raise FormatError(compression_problem(exc), path=where) from None
    if len(raw) > MAX_LINE_BYTES:
        raise FormatError(f"a header line longer than {format_bytes(MAX_LINE_BYTES)}: not a MatrixMarket file",
                          path=where, line=line)
    return raw


def read_mtx_header(stream: IO[bytes], where: str) -> MtxHeader:
    """Read the banner, comments and size line from ``stream`` (left at the first entry).

    Raises
    ------
    FormatError
        Not a MatrixMarket coordinate file, an unsupported field or symmetry, or a bad
        size line (file and line named).
    """
    raw = _readline(stream, where, 1)
    banner = raw.decode("ascii", "replace").strip()
    if not banner:
        raise FormatError("empty file: expected a '%%MatrixMarket matrix coordinate ...' banner", path=where, line=1)
    words = banner.split()
    if len(words) != 5 or words[0].lower() != "%%matrixmarket" or words[1].lower() != "matrix":
        raise FormatError(f"bad MatrixMarket banner {quote(raw.strip(), 80)}: expected "
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
        line += 1
        raw = _readline(stream, where, line)
        if not raw:
            raise FormatError("missing size line 'rows cols entries' after the header", path=where, line=line)
        text = raw.decode("ascii", "replace").strip()
        if text.startswith("%") or not text:
            continue
        break
    parts = raw.split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise FormatError(f"bad size line {quote(raw.strip(), 80)}: expected three non-negative integers "
                          f"'rows cols entries'", path=where, line=line)
    for name, p in zip(("rows", "columns"), parts):
        if len(p.lstrip(b"0")) > 10 or int(p) > _INT32_MAX:
            raise FormatError(f"size line declares {quote(p)} {name}: at most {_INT32_MAX} are supported",
                              path=where, line=line)
    if len(parts[2].lstrip(b"0")) > 18:
        raise FormatError(f"size line declares {quote(parts[2])} entries: too many", path=where, line=line)
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
