"""Tab-separated triples (the official layer and feature files): fast reading and writing.

The official text formats are lines of whitespace-separated fields, 1-based::

    row \\t col \\t value          (layers  n{N}-l{k}.tsv:       input \\t output \\t 6.250000e-02)
    sample \\t feature \\t value   (inputs  sparse-images-{N}.tsv: value 1)
    id                           (truth   neuron{N}-l{L}-categories.tsv)

Reading is one compiled pass (numba) over large byte blocks, which checks every line
(field count, digits-only indices, index range) while converting it. Values take the
exact fast path ``m * 10**e`` (correctly rounded when the mantissa has at most 15-16
digits and ``|e| <= 22``, e.g. ``6.250000e-02``); any other spelling is converted by
numpy's string parser. When a check fails, the offending line is re-examined in Python
to say precisely what was wrong (file, 1-based line, field).
"""
from __future__ import annotations

import gzip
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Full, Queue
from typing import IO

import numba
import numpy as np
import scipy.sparse as sp

from .._atomic import atomic_open
from ..errors import DataNotFoundError, FormatError, OptionError

__all__ = ["read_layer", "write_layer_tsv", "write_features_tsv", "write_categories", "read_tsv_entries",
           "read_id_list", "open_data", "entries_to_csr", "TextEntries"]

#: Bytes read from a (decompressed) stream per parsing step.
CHUNK_BYTES = 32 << 20

_INT32_MAX = 2**31 - 1
# Exact powers of ten representable in float64 (10**22 is the largest).
_POW10 = np.array([10.0**k for k in range(23)], dtype=np.float64)


# --- opening files -------------------------------------------------------------------------

def open_data(path: str | os.PathLike) -> IO[bytes]:
    """Open a data file for binary reading, decompressing gzip (detected by its magic bytes).

    Raises
    ------
    DataNotFoundError
        The file does not exist.
    """
    p = Path(path)
    try:
        raw = open(p, "rb")
    except FileNotFoundError:
        raise DataNotFoundError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise DataNotFoundError(f"{p}: is a directory, expected a file") from None
    if raw.peek(2)[:2] == b"\x1f\x8b":
        raw.close()
        return gzip.open(p, "rb")
    return raw


def wrap_gzip(raw: IO[bytes]) -> IO[bytes]:
    """Return ``raw`` itself, or a gzip reader over it when it starts with the gzip magic.

    ``raw`` must be seekable or have ``peek`` (a buffered reader, a tar member).
    """
    if hasattr(raw, "peek"):
        head = raw.peek(2)[:2]
    else:
        pos = raw.tell()
        head = raw.read(2)
        raw.seek(pos)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return raw


#: Exceptions that mean "the compressed stream is truncated or corrupt".
COMPRESSION_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def iter_line_blocks(stream: IO[bytes], where: str, *, size: int | None = None) -> Iterator[bytes]:
    """Yield blocks of whole lines (each ends with a newline, except possibly the last).

    ``size`` is the number of bytes read per step (default :data:`CHUNK_BYTES`).
    Decompression errors become :class:`FormatError` naming ``where``.
    """
    size = size or CHUNK_BYTES
    carry = b""
    while True:
        try:
            block = stream.read(size)
        except COMPRESSION_ERRORS as exc:
            raise FormatError(f"compressed data is truncated or corrupt ({type(exc).__name__}: {exc})",
                              path=where) from None
        if not block:
            if carry:
                yield carry
            return
        data = carry + block if carry else block
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        if cut + 1 == len(data):
            carry = b""
            yield data
        else:
            carry = data[cut + 1:]
            yield data[:cut + 1]


# --- the compiled line scanner -------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _is_blank(c):
    return c == 32 or c == 9 or c == 13


@numba.njit(cache=True, nogil=True)
def _scan(buf, nint, want_value, hi0, hi1, idx0, idx1, vals, slow, pow10):
    """Parse lines of ``nint`` positive integers and optionally one number.

    Returns (lines parsed, error code, byte offset of the bad line). Codes: 0 ok,
    1 too few fields, 2 index not digits, 3 index out of range, 4 too many fields.
    Values the exact fast path cannot convert get ``slow[i] = 1`` (value NaN).
    """
    n = buf.size
    pos = 0
    line = 0
    while pos < n:
        start = pos
        while pos < n and _is_blank(buf[pos]):
            pos += 1
        for f in range(nint):
            if pos >= n or buf[pos] == 10:
                return line, 1, start
            v = 0
            bad = False
            big = False
            while pos < n:
                c = buf[pos]
                if c == 10 or _is_blank(c):
                    break
                if 48 <= c <= 57:
                    if not big:
                        v = v * 10 + (c - 48)
                        if v > 2147483647:
                            big = True
                else:
                    bad = True
                pos += 1
            if bad:
                return line, 2, start
            hi = hi0 if f == 0 else hi1
            if big or v < 1 or (hi > 0 and v > hi):
                return line, 3, start
            if f == 0:
                idx0[line] = v
            else:
                idx1[line] = v
            while pos < n and _is_blank(buf[pos]):
                pos += 1
        if want_value:
            if pos >= n or buf[pos] == 10:
                return line, 1, start
            neg = False
            c = buf[pos]
            if c == 45:
                neg = True
                pos += 1
            elif c == 43:
                pos += 1
            m = 0
            e = 0
            nd = 0
            ok = True
            while pos < n and 48 <= buf[pos] <= 57:
                if m < 900719925474099:
                    m = m * 10 + (buf[pos] - 48)
                else:
                    ok = False
                nd += 1
                pos += 1
            if pos < n and buf[pos] == 46:
                pos += 1
                while pos < n and 48 <= buf[pos] <= 57:
                    if m < 900719925474099:
                        m = m * 10 + (buf[pos] - 48)
                        e -= 1
                    else:
                        ok = False
                    nd += 1
                    pos += 1
            if nd == 0:
                ok = False
            if ok and pos < n and (buf[pos] == 101 or buf[pos] == 69):
                pos += 1
                eneg = False
                if pos < n and buf[pos] == 45:
                    eneg = True
                    pos += 1
                elif pos < n and buf[pos] == 43:
                    pos += 1
                ev = 0
                ed = 0
                while pos < n and 48 <= buf[pos] <= 57:
                    if ev < 100000:
                        ev = ev * 10 + (buf[pos] - 48)
                    ed += 1
                    pos += 1
                if ed == 0:
                    ok = False
                e += -ev if eneg else ev
            if pos < n and not (buf[pos] == 10 or _is_blank(buf[pos])):
                ok = False
                while pos < n and not (buf[pos] == 10 or _is_blank(buf[pos])):
                    pos += 1
            x = np.nan
            if ok:
                if m == 0:
                    x = 0.0
                elif 0 <= e <= 22:
                    x = np.float64(m) * pow10[e]
                elif -22 <= e < 0:
                    x = np.float64(m) / pow10[-e]
                else:
                    ok = False
                if neg:
                    x = x * -1.0  # keeps the sign of -0.0 (a compiled -x may not)
            vals[line] = x
            slow[line] = 0 if ok else 1
            while pos < n and _is_blank(buf[pos]):
                pos += 1
        if pos < n and buf[pos] != 10:
            return line, 4, start
        pos += 1
        line += 1
    return line, 0, 0


@numba.njit(cache=True, nogil=True)
def _value_spans(buf, nint, slow, count):
    """Byte spans [start, end) of the last field of the lines flagged in ``slow``."""
    starts = np.empty(count, np.int64)
    ends = np.empty(count, np.int64)
    n = buf.size
    pos = 0
    line = 0
    k = 0
    while pos < n and k < count:
        while pos < n and _is_blank(buf[pos]):
            pos += 1
        for f in range(nint):
            while pos < n and not (buf[pos] == 10 or _is_blank(buf[pos])):
                pos += 1
            while pos < n and _is_blank(buf[pos]):
                pos += 1
        s = pos
        while pos < n and not (buf[pos] == 10 or _is_blank(buf[pos])):
            pos += 1
        if slow[line]:
            starts[k] = s
            ends[k] = pos
            k += 1
        while pos < n and buf[pos] != 10:
            pos += 1
        pos += 1
        line += 1
    return starts, ends


@numba.njit(cache=True, nogil=True)
def _order_kind(rows, cols):
    """0: strictly sorted by (row, col); 1: strictly by (col, row); 2: neither.

    Also returns the index i of the first adjacent duplicate (i-1, i), or -1.
    """
    n = rows.size
    by_row = True
    by_col = True
    for i in range(1, n):
        r0 = rows[i - 1]
        r1 = rows[i]
        c0 = cols[i - 1]
        c1 = cols[i]
        if r0 == r1 and c0 == c1:
            return 2, i
        if not (r1 > r0 or (r1 == r0 and c1 > c0)):
            by_row = False
        if not (c1 > c0 or (c1 == c0 and r1 > r0)):
            by_col = False
        if not by_row and not by_col:
            return 2, -1
    return (0 if by_row else 1), -1


@numba.njit(cache=True, nogil=True)
def _counts_to_indptr(rows, nrows):
    indptr = np.zeros(nrows + 1, np.int64)
    for i in range(rows.size):
        indptr[rows[i] + 1] += 1
    for r in range(nrows):
        indptr[r + 1] += indptr[r]
    return indptr


# --- reading -------------------------------------------------------------------------------

@dataclass
class TextEntries:
    """Parsed lines: 1-based integer columns (int32) and optional values (float64).

    ``first_line`` is the 1-based file line of entry 0; entry i is on line
    ``first_line + i`` (blank and comment lines are errors inside the data).
    """

    ints: list
    values: np.ndarray | None
    first_line: int

    @property
    def count(self) -> int:
        return int(self.ints[0].size) if self.ints else 0

    def line_of(self, i: int) -> int:
        return self.first_line + int(i)


def _describe_bad_line(text: str, nint: int, want_value: bool, bounds: tuple, names: tuple) -> str:
    """Say what is wrong with one data line (the scanner only located it)."""
    fields = text.split()
    expected = nint + (1 if want_value else 0)
    if len(fields) != expected:
        shown = text if len(text) <= 80 else text[:77] + "..."
        return f"wrong number of fields: found {len(fields)}, expected {expected} ({' '.join(names[:expected])}): {shown!r}"
    for f in range(nint):
        tok = fields[f]
        hi = bounds[f]
        if not tok.isdigit() or not tok.isascii():
            try:
                x = float(tok)
            except ValueError:
                return f"non-numeric {names[f]} {tok!r}: expected a positive integer"
            if not x.is_integer():
                return f"non-integer {names[f]} {tok!r}: expected a positive integer"
            if x < 1:
                return f"{names[f]} {tok} out of range 1..{hi if hi else _INT32_MAX}"
            return f"{names[f]} {tok!r} is not written as plain digits: expected a positive integer such as 12"
        v = int(tok)
        if v < 1 or (hi and v > hi) or v > _INT32_MAX:
            upper = hi if hi else _INT32_MAX
            return f"{names[f]} {v} out of range 1..{upper}"
    return "malformed line: " + repr(text[:80])


def _slow_values(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, int]:
    """Convert value tokens numpy's way; returns (values, index of first bad token or -1)."""
    lengths = ends - starts
    width = int(lengths.max()) if lengths.size else 1
    cols = np.arange(width)
    gather = np.minimum(starts[:, None] + cols, buf.size - 1)
    mat = np.where(cols < lengths[:, None], buf[gather], 0).astype(np.uint8)
    tokens = np.ascontiguousarray(mat).view(f"S{width}").ravel()
    try:
        return tokens.astype(np.float64), -1
    except ValueError:
        out = np.empty(tokens.size, np.float64)
        for i, tok in enumerate(tokens):
            try:
                out[i] = float(tok.decode("ascii", "replace"))
            except ValueError:
                return out, i
        return out, -1  # pragma: no cover - numpy and float() disagree


def parse_blocks(blocks, where: str, *, nint: int, want_value: bool, bounds: tuple = (0, 0),
                 names: tuple = ("row", "column", "value"), first_line: int = 1,
                 on_block=None) -> TextEntries:
    """Parse blocks of whole lines (see :func:`iter_line_blocks`) into :class:`TextEntries`.

    Parameters
    ----------
    blocks : iterable of bytes
        The data lines, split at newlines.
    where : str
        File name for error messages.
    nint : {1, 2}
        Number of leading integer fields (1-based indices, checked in ``1..bounds[f]``;
        a bound of 0 means only ``>= 1``).
    want_value : bool
        Whether a numeric last field follows (NaN and inf are errors).
    names : tuple of str
        Field names for messages.
    first_line : int
        1-based line number of the first line of the first block.
    on_block : callable(int), optional
        Called with each block's byte length (progress).
    """
    hi0 = int(bounds[0] or 0)
    hi1 = int(bounds[1] or 0) if nint > 1 else 0
    parts0, parts1, partsv = [], [], []
    line0 = first_line
    source = iter(blocks)
    while True:
        try:
            block = next(source)
        except StopIteration:
            break
        except FormatError as exc:
            if exc.line is not None:
                raise
            raise FormatError(f"{exc.reason}; the data stops in line {line0} (after {line0 - first_line} "
                              f"complete lines)", path=exc.path, line=line0) from None
        buf = np.frombuffer(block, dtype=np.uint8)
        nlines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        idx0 = np.empty(nlines, np.int32)
        idx1 = np.empty(nlines if nint > 1 else 0, np.int32)
        vals = np.empty(nlines if want_value else 0, np.float64)
        slow = np.zeros(nlines if want_value else 0, np.uint8)
        done, code, bad_at = _scan(buf, nint, want_value, hi0, hi1, idx0, idx1, vals, slow, _POW10)
        if code:
            end = block.find(b"\n", bad_at)
            text = block[bad_at:end if end >= 0 else len(block)].decode("ascii", "replace").rstrip("\r")
            raise FormatError(_describe_bad_line(text, nint, want_value, (hi0, hi1), names),
                              path=where, line=line0 + int(done))
        if want_value:
            nslow = int(np.count_nonzero(slow))
            if nslow:
                starts, ends = _value_spans(buf, nint, slow, nslow)
                fixed, bad = _slow_values(buf, starts, ends)
                rows_slow = np.flatnonzero(slow)
                if bad >= 0:
                    tok = bytes(block[starts[bad]:ends[bad]]).decode("ascii", "replace")
                    raise FormatError(f"non-numeric {names[nint]} {tok!r}", path=where,
                                      line=line0 + int(rows_slow[bad]))
                vals[rows_slow] = fixed
            finite = np.isfinite(vals)
            if not finite.all():
                i = int(np.argmin(finite))
                raise FormatError(f"{names[nint]} {vals[i]!r} is not finite (NaN and inf are not allowed)",
                                  path=where, line=line0 + i)
            partsv.append(vals)
        parts0.append(idx0)
        if nint > 1:
            parts1.append(idx1)
        line0 += nlines
        if on_block is not None:
            on_block(len(block))
    ints = [_concat(parts0, np.int32)]
    if nint > 1:
        ints.append(_concat(parts1, np.int32))
    values = _concat(partsv, np.float64) if want_value else None
    return TextEntries(ints=ints, values=values, first_line=first_line)


def _concat(parts: list, dtype) -> np.ndarray:
    if not parts:
        return np.empty(0, dtype)
    if len(parts) == 1:
        return parts.pop()
    out = np.concatenate(parts)
    parts.clear()
    return out


def read_tsv_entries(stream: IO[bytes], where: str, *, nint: int, want_value: bool, bounds: tuple = (0, 0),
                     names: tuple = ("row", "column", "value"), first_line: int = 1, on_block=None) -> TextEntries:
    """Parse a whole (already opened, decompressed) stream; see :func:`parse_blocks`.

    A gzip stream is decompressed by a helper thread while the previous block is parsed
    (zlib and the compiled scanner both release the GIL).
    """
    blocks = iter_line_blocks(stream, where)
    if isinstance(stream, gzip.GzipFile):
        blocks = _prefetch(blocks)
    try:
        return parse_blocks(blocks, where, nint=nint, want_value=want_value, bounds=bounds,
                            names=names, first_line=first_line, on_block=on_block)
    finally:
        blocks.close()  # stops and joins a prefetch thread before the stream is closed


def _prefetch(blocks: Iterator[bytes], depth: int = 2) -> Iterator[bytes]:
    """Run ``blocks`` in a helper thread, ``depth`` items ahead; exceptions are re-raised here."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in blocks:
                while not stop.is_set():
                    try:
                        queue.put((item, None), timeout=0.05)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put((done, None))
        except BaseException as exc:  # handed to the consumer
            queue.put((done, exc))

    thread = threading.Thread(target=produce, name="spdnn-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = queue.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                queue.get(timeout=0.05)
            except Empty:
                pass
        thread.join()


def entries_to_csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray | None, shape: tuple[int, int],
                   where: str, *, first_line: int = 1, names: tuple = ("row", "column")) -> sp.csr_matrix:
    """Build a canonical float64 CSR matrix from 1-based (row, col, value) entries.

    ``rows`` and ``cols`` are 1-based int32 and are turned 0-based in place. Duplicate
    (row, col) pairs raise :class:`FormatError` naming both lines. Entries already
    sorted by row then column (or column then row) skip the sort.
    """
    nrows, ncols = shape
    np.subtract(rows, 1, out=rows)
    np.subtract(cols, 1, out=cols)
    if values is None:
        values = np.ones(rows.size, np.float64)
    kind, dup = _order_kind(rows, cols)
    if dup >= 0:
        _raise_duplicate(rows, cols, dup - 1, dup, where, first_line, names)
    if kind == 0:
        indptr = _counts_to_indptr(rows, nrows)
        m = sp.csr_matrix((values, cols, _small_index(indptr)), shape=shape)
    elif kind == 1:
        indptr = _counts_to_indptr(cols, ncols)
        m = sp.csc_matrix((values, rows, _small_index(indptr)), shape=shape).tocsr()
    else:
        order = np.lexsort((cols, rows))
        r = rows[order]
        c = cols[order]
        same = (r[1:] == r[:-1]) & (c[1:] == c[:-1])
        if same.any():
            i = int(np.argmax(same))
            a, b = sorted((int(order[i]), int(order[i + 1])))
            _raise_duplicate(rows, cols, a, b, where, first_line, names)
        del r
        indptr = _counts_to_indptr(rows, nrows)
        m = sp.csr_matrix((values[order], c, _small_index(indptr)), shape=shape)
    m.has_sorted_indices = True
    m.has_canonical_format = True
    return m


def _small_index(indptr: np.ndarray) -> np.ndarray:
    return indptr.astype(np.int32) if indptr[-1] <= _INT32_MAX else indptr


def _raise_duplicate(rows, cols, a, b, where, first_line, names):
    raise FormatError(f"duplicate entry ({names[0]} {int(rows[b]) + 1}, {names[1]} {int(cols[b]) + 1}), "
                      f"first given on line {first_line + a}", path=where, line=first_line + b)


def read_layer(path: str | os.PathLike, neurons: int | None = None) -> sp.csr_matrix:
    """Read one official layer file ``row \\t col \\t value`` (1-based; plain or gzip).

    Parameters
    ----------
    path : str or os.PathLike
        e.g. ``neuron1024/n1024-l1.tsv`` (or ``.tsv.gz``).
    neurons : int, optional
        N. When given, every index must lie in ``1..N``; otherwise N is the largest
        row or column index in the file.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (N, N), float64, canonical
        Rows are input neurons, columns output neurons (0-based).

    Raises
    ------
    FormatError
        Malformed content (message names the file, line and what was wrong).
    DataNotFoundError
        The file does not exist.
    """
    where = os.fspath(path)
    with open_data(path) as stream:
        return parse_layer_stream(stream, where, neurons)


def parse_layer_stream(stream: IO[bytes], where: str, neurons: int | None = None) -> sp.csr_matrix:
    """Parse an opened layer stream; see :func:`read_layer`."""
    if neurons is not None:
        neurons = positive_int(neurons, "neurons")
    bound = neurons or 0
    entries = read_tsv_entries(stream, where, nint=2, want_value=True, bounds=(bound, bound))
    if entries.count == 0:
        raise FormatError("empty file: expected lines 'row<TAB>col<TAB>value'", path=where)
    rows, cols = entries.ints
    n = neurons if neurons is not None else int(max(rows.max(), cols.max()))
    return entries_to_csr(rows, cols, entries.values, (n, n), where)


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1, else :class:`OptionError` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise OptionError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def read_id_list(stream: IO[bytes], where: str) -> np.ndarray:
    """Parse one positive integer a line (e.g. a categories file) -> int64 array, file order."""
    entries = read_tsv_entries(stream, where, nint=1, want_value=False, names=("id",))
    return entries.ints[0].astype(np.int64)


# --- writing -------------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _format_lines(a, b, code, texts, text_starts, out):
    """Write ``a[i] \\t b[i] \\t texts[code[i]] \\n`` (a, b already 1-based) into ``out``; return bytes used."""
    pos = 0
    digits = np.empty(20, np.uint8)
    for i in range(a.size):
        for v in (a[i], b[i]):
            x = v
            nd = 0
            while True:
                digits[nd] = 48 + x % 10
                x //= 10
                nd += 1
                if x == 0:
                    break
            for j in range(nd - 1, -1, -1):
                out[pos] = digits[j]
                pos += 1
            out[pos] = 9
            pos += 1
        c = code[i]
        for j in range(text_starts[c], text_starts[c + 1]):
            out[pos] = texts[j]
            pos += 1
        out[pos] = 10
        pos += 1
    return pos


def _value_texts(data: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Format each distinct value once with ``fmt`` (falling back to repr when ``fmt`` is lossy).

    Returns (concatenated text bytes, start offset of each text (k+1,), sorted distinct values (k,)).
    """
    if data.size == 0:
        uniq = np.empty(0)
    elif data.min() == data.max():
        uniq = data[:1].copy()
    else:
        uniq = np.unique(data)
    texts = []
    for u in uniq.tolist():
        s = fmt % u
        if float(s) != u or (u == 0 and np.signbit(u) != s.startswith("-")):
            s = repr(float(u))
        texts.append(s.encode("ascii"))
    starts = np.zeros(len(texts) + 1, np.int64)
    starts[1:] = np.cumsum([len(t) for t in texts])
    return np.frombuffer(b"".join(texts) or b"\0", np.uint8), starts, uniq


def _canonical(m):
    """``m`` itself when canonical, else a canonical copy (the caller's matrix is never modified)."""
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    return m


def _write_compressed(path, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, fmt: str, *,
                      major_first: bool, entries_per_block: int = 1 << 21) -> None:
    """Write a canonical CSR/CSC matrix as 1-based text lines, atomically (gzip for ``.gz``).

    Lines follow the storage order (major index, then minor); ``major_first`` says whether
    the major index is the first field (CSR: row first) or the second (CSC: column second).
    Works in blocks of about ``entries_per_block`` entries, so memory stays bounded.
    """
    data = np.asarray(data, np.float64)
    texts, starts, uniq = _value_texts(data, fmt)
    width = int(np.diff(starts).max()) if starts.size > 1 else 0
    nmajor = indptr.size - 1
    with atomic_open(path, "wb") as fh:
        m0 = 0
        while m0 < nmajor:
            m1 = int(np.searchsorted(indptr, indptr[m0] + entries_per_block, side="right")) - 1
            m1 = min(max(m1, m0 + 1), nmajor)
            s, e = int(indptr[m0]), int(indptr[m1])
            if e > s:
                major = np.repeat(np.arange(m0 + 1, m1 + 1, dtype=np.int64), np.diff(indptr[m0:m1 + 1]))
                minor = indices[s:e].astype(np.int64) + 1
                code = (np.zeros(e - s, np.int64) if uniq.size == 1
                        else np.searchsorted(uniq, data[s:e]).astype(np.int64))
                a, b = (major, minor) if major_first else (minor, major)
                out = np.empty((e - s) * (2 * 21 + width + 1), np.uint8)
                used = _format_lines(a, b, code, texts, starts, out)
                fh.write(out[:used].tobytes())
            m0 = m1


def write_layer_tsv(path: str | os.PathLike, w) -> None:
    """Write a layer in the official layout: ``row \\t col \\t value``, 1-based.

    Entries are sorted by column, then row; values are written ``'%.6e'`` (e.g.
    ``6.250000e-02``) when that is exact, else with the shortest exact repr, so a layer
    equal to an official one gives the official bytes. Atomic; gzip if the name ends in
    ``.gz``.

    Parameters
    ----------
    path : str or os.PathLike
    w : scipy.sparse matrix, shape (N, N)
        Rows are input neurons, columns output neurons. Explicit zeros are written.
    """
    m = _canonical(sp.csc_matrix(w))
    _write_compressed(path, m.indptr, m.indices, m.data, "%.6e", major_first=False)


def write_features_tsv(path: str | os.PathLike, x) -> None:
    """Write features ``sample \\t feature \\t value`` (1-based), sorted by sample then feature.

    Values use ``'%g'`` (``1``) when exact, else the shortest exact repr. Atomic; gzip
    if the name ends in ``.gz``.

    Parameters
    ----------
    path : str or os.PathLike
    x : scipy.sparse matrix, shape (samples, N)
    """
    m = _canonical(sp.csr_matrix(x))
    _write_compressed(path, m.indptr, m.indices, m.data, "%g", major_first=True)


def write_categories(path: str | os.PathLike, ids) -> None:
    """Write category ids one a line (1-based, sorted, unique); atomic; gzip for ``.gz``.

    Parameters
    ----------
    path : str or os.PathLike
    ids : array-like of int
        1-based sample ids; sorted and de-duplicated before writing.

    Raises
    ------
    OptionError
        An id is below 1.
    """
    arr = np.unique(np.asarray(ids, dtype=np.int64).ravel())
    if arr.size and arr[0] < 1:
        raise OptionError(f"categories: id {int(arr[0])} is not 1-based (expected >= 1)")
    text = "".join(f"{v}\n" for v in arr.tolist())
    with atomic_open(path, "wb") as fh:
        fh.write(text.encode("ascii"))
