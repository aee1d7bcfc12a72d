"""The text scanner shared by the TSV and MatrixMarket readers: whitespace-separated lines.

Every official text file is lines of whitespace-separated fields with 1-based indices
(docs/challenge.md, Formats)::

    row \\t col \\t value          layers    n{N}-l{k}.tsv:          input \\t output \\t 6.250000e-02
    sample \\t feature \\t value   features  sparse-images-{N}.tsv:  value 1
    id                           truth     neuron{N}-l{L}-categories.tsv

and a MatrixMarket coordinate body is the same after its header. Reading is one
compiled pass (numba) over large byte blocks, which checks every line (field count,
digits-only indices, index range) while converting it. Values take the exact fast path
``m * 10**e`` (correctly rounded when the mantissa has at most 15-16 digits and
``|e| <= 22``, e.g. ``6.250000e-02``); any other spelling is converted by numpy's
string parser. When a check fails, the offending line is re-examined in Python to say
precisely what was wrong (file, 1-based line, field).

Layers: :func:`open_data` (plain or gzip) -> :func:`iter_line_blocks` (whole lines) ->
:func:`iter_entry_blocks` (parsed, one block at a time, for streaming readers) or
:func:`read_entries` (all at once) -> :func:`entries_to_csr`.
"""
from __future__ import annotations

import errno
import gzip
import os
import stat
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

from ..errors import QUOTE_CHARS, DataNotFoundError, FormatError, format_bytes, quote

__all__ = ["CHUNK_BYTES", "COMPRESSION_ERRORS", "MAX_LINE_BYTES", "compression_problem", "TextEntries", "input_file", "open_data", "wrap_gzip", "iter_line_blocks",
           "line_blocks", "iter_entry_blocks", "parse_blocks", "read_entries", "damage_instead", "compression_failure", "entries_to_csr",
           "check_row_sorted", "check_rows_fit"]

#: Bytes read from a (decompressed) stream per parsing step.
CHUNK_BYTES = 32 << 20

_INT32_MAX = 2**31 - 1
# Exact powers of ten representable in float64 (10**22 is the largest).
_POW10 = np.array([10.0**k for k in range(23)], dtype=np.float64)


# --- opening files -------------------------------------------------------------------------

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def input_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it is a regular file (or a symlink to one); checked before opening.

    Every reader of a data file calls it first, so that a file the user asked for is
    either read or refused by name: a FIFO or a device would block or never end
    (``/dev/zero``), and a dangling symlink, a symlink loop or a directory is not the
    file asked for.

    Raises
    ------
    DataNotFoundError
        No such file, a dangling symlink, a symlink loop, a directory, or a FIFO, device
        or socket; the message says which.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        if p.is_symlink():
            raise DataNotFoundError(f"{p}: dangling symbolic link (it points to {os.readlink(p)}, which does not "
                                    f"exist)") from None
        raise DataNotFoundError(f"{p}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataNotFoundError(f"{p}: symbolic link loop (the link points back to itself)") from None
        raise
    if stat.S_ISDIR(st.st_mode):
        raise DataNotFoundError(f"{p}: is a directory, expected a file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise DataNotFoundError(f"{p}: is {kind}, expected a regular file")
    return p


def open_data(path: str | os.PathLike) -> IO[bytes]:
    """Open a data file for binary reading, decompressing gzip (detected by its magic bytes).

    Raises
    ------
    DataNotFoundError
        The file does not exist or is not a regular file (:func:`input_file`).
    """
    p = input_file(path)
    try:
        raw = open(p, "rb")
    except FileNotFoundError:
        raise DataNotFoundError(f"{p}: no such file") from None
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

#: Longest line a reader accepts (official lines are under 40 bytes): a longer one is
#: not data of these formats, and is refused before it is gathered whole.
MAX_LINE_BYTES = 1 << 20


def compression_problem(exc: BaseException, what: str = "compressed data") -> str:
    """What a decompression error means, for a message: ``what`` is truncated (the stream
    ends early) or corrupt (a CRC or length check failed, or the bytes do not inflate)."""
    text = str(exc)
    if isinstance(exc, EOFError):
        return f"{what} is truncated (the gzip stream ends before its end marker: {text})"
    if text.startswith("CRC check failed"):
        return f"{what} is corrupt: its gzip CRC check failed (the bytes inflate to other data than were stored)"
    if text.startswith("Incorrect length"):
        return f"{what} is corrupt: its gzip length check failed ({text})"
    return f"{what} is corrupt ({type(exc).__name__}: {text})"


class CompressionDamage(FormatError):
    """Damaged compressed data (:func:`compression_problem` says how); never re-examined
    by :func:`damage_instead`, whose second reading of a damaged stream could only give
    a vaguer error."""


class _LineTooLong(FormatError):
    """A line longer than :data:`MAX_LINE_BYTES`; :func:`iter_entry_blocks` adds its number."""


def iter_line_blocks(stream: IO[bytes], where: str, *, size: int | None = None) -> Iterator[bytes]:
    """Yield blocks of whole lines (each ends with a newline, except possibly the last).

    ``size`` is the number of bytes gathered per block (default :data:`CHUNK_BYTES`),
    read in pieces (``read1`` where the stream has it), so that when decompression
    fails every complete line decoded before the damage is still yielded; then a
    :class:`FormatError` naming ``where`` (without a line: :func:`iter_entry_blocks`
    adds the line where the data stop) is raised.
    """
    size = size or CHUNK_BYTES
    read = getattr(stream, "read1", stream.read)
    carry = b""
    too_long = _LineTooLong(f"a line longer than {format_bytes(MAX_LINE_BYTES)} (no newline): not a text data "
                            f"file of this format", path=where)
    while True:
        if len(carry) > MAX_LINE_BYTES:
            raise too_long
        pieces, got, failure = [carry] if carry else [], 0, None
        while got < size:
            try:
                piece = read(size - got)
            except COMPRESSION_ERRORS as exc:
                failure = exc
                break
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        data = b"".join(pieces)
        if failure is not None or got == 0:
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data[:cut]
            if failure is not None:
                raise CompressionDamage(compression_problem(failure), path=where) from None
            if len(data) - cut > MAX_LINE_BYTES:
                raise too_long
            if cut < len(data):
                yield data[cut:]
            return
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield data[:cut]


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


#: Bytes of a bad line examined to describe it; a longer line is described by its length and start.
_DESCRIBE_BYTES = 64 << 10
#: Digits beyond which an index is out of range without converting it (int32 has 10).
_INDEX_DIGITS = 10
_BOM = b"\xef\xbb\xbf"


def _describe_bad_line(line: bytes, nint: int, want_value: bool, bounds: tuple, names: tuple) -> str:
    """Say what is wrong with one data line (the scanner only located it).

    Bounded whatever the line: tokens are quoted by :func:`~spdnn.errors.quote` (at most
    40 characters, escaped), a line over 64 KiB is described by its length and start, and
    no index is converted past 10 digits.
    """
    expected = nint + (1 if want_value else 0)
    wanted = " ".join(names[:expected])
    if line.startswith(_BOM):
        return ("the line starts with a UTF-8 byte order mark (BOM, bytes EF BB BF): save the file as plain text "
                "without a BOM")
    if len(line) > _DESCRIBE_BYTES:
        return f"a line of {len(line):,} bytes, expected {expected} short fields ({wanted}): {quote(line)}"
    fields = line.split()
    if len(fields) != expected:
        return f"wrong number of fields: found {len(fields)}, expected {expected} ({wanted}): {quote(line, 80)}"
    for f in range(nint):
        tok = fields[f]
        hi = bounds[f]
        upper = hi if hi else _INT32_MAX
        if not tok.isdigit():
            try:
                x = float(tok) if b"_" not in tok else None
            except ValueError:
                x = None
            if x is None or not np.isfinite(x):
                return f"non-numeric {names[f]} {quote(tok)}: expected a positive integer"
            if not x.is_integer():
                return f"non-integer {names[f]} {quote(tok)}: expected a positive integer"
            if x < 1:  # a number, so shown as written when short
                shown = tok.decode("ascii") if len(tok) <= QUOTE_CHARS and tok.isascii() else quote(tok)
                return f"{names[f]} {shown} out of range 1..{upper}"
            return f"{names[f]} {quote(tok)} is not written as plain digits: expected a positive integer such as 12"
        digits = tok.lstrip(b"0")
        if len(digits) > _INDEX_DIGITS:  # never converted: a 5,000-digit int() is refused by Python
            shown = tok.decode("ascii") if len(tok) <= QUOTE_CHARS else quote(tok)
            return f"{names[f]} {shown} out of range 1..{upper}"
        v = int(digits or b"0")
        if v < 1 or v > upper:
            return f"{names[f]} {v} out of range 1..{upper}"
    return "malformed line: " + quote(line, 80)


#: Characters of a number spelt beyond the exact fast path (``0.1000...0`` with many zeros); longer is an error.
_NUMBER_CHARS = 100


def _slow_values(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, int]:
    """Convert value tokens numpy's way; returns (values, index of first bad token or -1).

    A token is a decimal number: Python's spellings beyond that (``1_0``, which numpy
    reads as 10) and tokens over :data:`_NUMBER_CHARS` characters are bad tokens.
    """
    lengths = ends - starts
    too_long = np.flatnonzero(lengths > _NUMBER_CHARS)
    limit = int(too_long[0]) if too_long.size else starts.size
    width = int(lengths[:limit].max()) if limit else 1
    cols = np.arange(width)
    gather = np.minimum(starts[:limit, None] + cols, buf.size - 1)
    inside = cols < lengths[:limit, None]
    mat = np.where(inside, buf[gather], 0).astype(np.uint8)
    # numpy's bytes strings drop trailing NULs ('0.5\0' would read as 0.5) and numpy reads
    # '1_0' as 10: a token holding a NUL or an underscore is a bad token, refused before
    # the conversion
    bad = (inside & ((mat == 0) | (mat == ord("_")))).any(axis=1)
    flagged = np.flatnonzero(bad)
    if flagged.size:
        limit = int(flagged[0])
    tokens = np.ascontiguousarray(mat[:limit]).view(f"S{width}").ravel()
    out = np.empty(starts.size, np.float64)
    try:
        out[:limit] = tokens.astype(np.float64)
    except ValueError:
        for i, tok in enumerate(tokens):
            try:
                out[i] = float(tok.decode("ascii", "replace"))
            except ValueError:
                return out, i
    return out, (-1 if limit == starts.size else limit)


def iter_entry_blocks(blocks, where: str, *, nint: int, want_value: bool, bounds: tuple = (0, 0),
                      names: tuple = ("row", "column", "value"), first_line: int = 1,
                      on_block=None) -> Iterator[TextEntries]:
    """Parse blocks of whole lines (see :func:`iter_line_blocks`), one :class:`TextEntries` a block.

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
    bounds : (int, int)
        Upper bounds of the integer fields (0: none).
    names : tuple of str
        Field names for messages.
    first_line : int
        1-based line number of the first line of the first block.
    on_block : callable(int), optional
        Called with each block's byte length (progress).

    Yields
    ------
    TextEntries
        The entries of one block (int32 indices, still 1-based; float64 values); its
        ``first_line`` is the file line of its first entry.

    Raises
    ------
    FormatError
        The first bad line (file, line, what was wrong); or damaged compressed data,
        with the line where the readable data stop.
    """
    hi0 = int(bounds[0] or 0)
    hi1 = int(bounds[1] or 0) if nint > 1 else 0
    line0 = first_line
    source = iter(blocks)
    while True:
        try:
            block = next(source)
        except StopIteration:
            return
        except _LineTooLong as exc:
            raise FormatError(exc.reason, path=exc.path, line=line0) from None
        except FormatError as exc:
            if exc.line is not None:
                raise
            raise type(exc)(f"{exc.reason}; the data stop in line {line0} (after {line0 - first_line} "
                            f"complete lines)", path=exc.path, line=line0) from None
        nlines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        idx0, idx1, vals = _scan_block(block, nlines, where, line0, nint, want_value, hi0, hi1, names)
        yield TextEntries(ints=[idx0, idx1] if nint > 1 else [idx0], values=vals, first_line=line0)
        line0 += nlines
        if on_block is not None:
            on_block(len(block))


def _scan_block(block: bytes, nlines: int, where: str, line0: int, nint: int, want_value: bool, hi0: int,
                hi1: int, names: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Scan one block of ``nlines`` lines starting on file line ``line0``; see :func:`iter_entry_blocks`."""
    buf = np.frombuffer(block, dtype=np.uint8)
    idx0 = np.empty(nlines, np.int32)
    idx1 = np.empty(nlines if nint > 1 else 0, np.int32)
    vals = np.empty(nlines if want_value else 0, np.float64)
    slow = np.zeros(nlines if want_value else 0, np.uint8)
    done, code, bad_at = _scan(buf, nint, want_value, hi0, hi1, idx0, idx1, vals, slow, _POW10)
    if code:
        end = block.find(b"\n", bad_at)
        line = block[bad_at:end if end >= 0 else len(block)]
        raise FormatError(_describe_bad_line(line.rstrip(b"\r"), nint, want_value, (hi0, hi1), names),
                          path=where, line=line0 + int(done))
    if not want_value:
        return idx0, idx1, None
    nslow = int(np.count_nonzero(slow))
    if nslow:
        starts, ends = _value_spans(buf, nint, slow, nslow)
        fixed, bad = _slow_values(buf, starts, ends)
        rows_slow = np.flatnonzero(slow)
        if bad >= 0:
            tok = block[starts[bad]:ends[bad]]
            why = "a UTF-8 byte order mark (BOM) before it" if tok.startswith(_BOM) else "expected a decimal number"
            raise FormatError(f"non-numeric {names[nint]} {quote(tok)}: {why}", path=where,
                              line=line0 + int(rows_slow[bad]))
        vals[rows_slow] = fixed
    finite = np.isfinite(vals)
    if not finite.all():
        i = int(np.argmin(finite))
        raise FormatError(f"{names[nint]} {float(vals[i])} is not finite (NaN and inf are not allowed)",
                          path=where, line=line0 + i)
    return idx0, idx1, vals


def parse_blocks(blocks, where: str, *, nint: int, want_value: bool, bounds: tuple = (0, 0),
                 names: tuple = ("row", "column", "value"), first_line: int = 1,
                 on_block=None) -> TextEntries:
    """All entries of ``blocks`` in one :class:`TextEntries`; parameters of :func:`iter_entry_blocks`."""
    parts0, parts1, partsv = [], [], []
    for part in iter_entry_blocks(blocks, where, nint=nint, want_value=want_value, bounds=bounds, names=names,
                                  first_line=first_line, on_block=on_block):
        parts0.append(part.ints[0])
        if nint > 1:
            parts1.append(part.ints[1])
        if want_value:
            partsv.append(part.values)
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


def line_blocks(stream: IO[bytes], where: str) -> Iterator[bytes]:
    """:func:`iter_line_blocks` of an opened stream, decompressed ahead by a helper thread for gzip.

    zlib and the compiled scanner both release the GIL, so a gzip stream is inflated
    while the previous block is parsed. Close the returned generator (or exhaust it)
    before closing ``stream``: closing stops and joins the helper thread.
    """
    blocks = iter_line_blocks(stream, where)
    if isinstance(stream, gzip.GzipFile):
        blocks = _prefetch(blocks)
    return blocks


def read_entries(stream: IO[bytes], where: str, *, nint: int, want_value: bool, bounds: tuple = (0, 0),
                 names: tuple = ("row", "column", "value"), first_line: int = 1, on_block=None) -> TextEntries:
    """Parse a whole opened (decompressed) stream into one :class:`TextEntries`; see :func:`iter_entry_blocks`.

    A bad line inside gzip data is checked against the compressed stream's integrity
    (:func:`damage_instead`): damaged data is reported as such, not as a field error.
    """
    blocks = line_blocks(stream, where)
    try:
        return parse_blocks(blocks, where, nint=nint, want_value=want_value, bounds=bounds,
                            names=names, first_line=first_line, on_block=on_block)
    except FormatError as exc:
        blocks.close()
        raise damage_instead(exc, stream if isinstance(stream, gzip.GzipFile) else None) from None
    finally:
        blocks.close()  # stops and joins a prefetch thread before the stream is closed


def damage_instead(error: FormatError, compressed: IO[bytes] | None) -> FormatError:
    """The error to report for a bad line found in data decompressed from ``compressed``.

    Damaged gzip data (zeroed or flipped bytes) often inflate to garbage for a while
    before zlib or the CRC check notices, so the garbage reaches the line checks first.
    When :func:`compression_failure` finds ``compressed`` damaged, the returned error
    says so (at or before the bad line); else ``error`` itself is returned, as it is for
    plain text (``compressed`` None) or an error without a line.
    """
    if compressed is None or error.line is None or isinstance(error, CompressionDamage):
        return error
    failure = compression_failure(compressed)
    if failure is None:
        return error
    return CompressionDamage(f"{compression_problem(failure)}; the data are unreadable at or before this line",
                       path=error.path, line=error.line)


def compression_failure(compressed: IO[bytes]) -> BaseException | None:
    """Read a gzip stream to its end (checking its CRC); the decompression error, or None if intact."""
    try:
        while compressed.read(CHUNK_BYTES):
            pass
    except COMPRESSION_ERRORS as exc:
        return exc
    except (OSError, ValueError):
        return None
    return None


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


def check_row_sorted(rows: np.ndarray, cols: np.ndarray, where: str, first_line: int, *,
                     previous: tuple[int, int, int] | None = None,
                     names: tuple = ("row", "column")) -> bool:
    """Whether 0-based entries are strictly sorted by (row, col), after an optional previous entry.

    A streaming reader checks each block with this and the last entry of the block
    before (``previous`` = (row, col, line)). Adjacent duplicates raise
    :class:`FormatError` naming both lines; False means "not sorted" (the caller falls
    back to sorting everything), in which case duplicates further apart are left to
    :func:`entries_to_csr`.
    """
    if rows.size and previous is not None:
        r, c, line = previous
        if (int(rows[0]), int(cols[0])) == (r, c):
            raise FormatError(f"duplicate entry ({names[0]} {r + 1}, {names[1]} {c + 1}), first given on line "
                              f"{line}", path=where, line=first_line)
        if (int(rows[0]), int(cols[0])) < (r, c):
            return False
    kind, dup = _order_kind(rows, cols)
    if dup >= 0:
        _raise_duplicate(rows, cols, dup - 1, dup, where, first_line, names)
    return kind == 0


def check_rows_fit(rows: int, where: str, what: str) -> None:
    """Refuse (MemoryLimitError naming ``where``) a matrix of ``rows`` rows whose row pointers
    (and per-row counts, 16 bytes a row) cannot fit the host memory.

    The row count comes from the file (a MatrixMarket size line, the largest index of a
    layer): one damaged number must give an error, not a process killed for memory.
    """
    from ..memory import Estimate, check_fits

    check_fits(Estimate(job="read", host={"row pointers": 16 * (int(rows) + 1)}), f"{where}: {what}",
               advice="is the file damaged?")


def _small_index(indptr: np.ndarray) -> np.ndarray:
    return indptr.astype(np.int32) if indptr[-1] <= _INT32_MAX else indptr


def _raise_duplicate(rows, cols, a, b, where, first_line, names):
    raise FormatError(f"duplicate entry ({names[0]} {int(rows[b]) + 1}, {names[1]} {int(cols[b]) + 1}), "
                      f"first given on line {first_line + a}", path=where, line=first_line + b)

