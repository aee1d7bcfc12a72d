"""Helpers of the kept fuzzer (``test_fuzz.py``): byte mutations, reference parsers, outcome checks.

Mutations (:func:`mutated`) start from a valid file and damage it: truncate, flip or
set a byte, delete / duplicate / swap lines, insert a token (long digit runs, non-ASCII
and NUL bytes, other number spellings), replace one field, change line endings, add
blank or comment lines. :func:`damaged_gzip` does the same to compressed bytes (plus
appended members and trailing garbage). Neutral rewrites (:func:`reordered_lines`,
:func:`respaced`) change the bytes but not the meaning.

Reference parsers (:func:`ref_triples`, :func:`ref_ids`, :func:`ref_mtx`,
:func:`ref_idx`) are written from the format description of ``docs/challenge.md``
(Formats) in plain Python, independently of :mod:`spdnn.formats`; each returns the
parsed content or raises :class:`Invalid`.

Outcome checks: :func:`outcome` runs a reader in a time bound and returns its result or
the :class:`~spdnn.errors.SpdnnError` it raised; any other exception is a failure of the
property (re-raised).

Every example counts one input in ``SPDNN_FUZZ_COUNT`` (a file, when set): how
``benchmarks/fuzz.py`` reports the number of inputs tried.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import re
import signal
import threading
import time
import warnings
import zlib

import numpy as np
import scipy.sparse as sp
from hypothesis import strategies as st

from spdnn.errors import SpdnnError, SpdnnWarning

__all__ = ["Invalid", "Huge", "MAX_ROWS", "TOKENS", "mutated", "damaged_gzip", "reordered_lines", "respaced",
           "ref_decompress", "ref_triples", "ref_ids", "ref_mtx", "ref_idx", "to_csr", "same_matrix", "outcome", "time_bound",
           "count_example", "message_ok"]

INT32_MAX = 2**31 - 1
#: Seconds one reader call may take on these tiny inputs before it counts as a hang.
TIME_BOUND_S = float(os.environ.get("SPDNN_FUZZ_TIME_BOUND", "30"))
#: Longest error message accepted (the inputs' tokens are at most a few hundred bytes).
MAX_MESSAGE = 2000


class Invalid(Exception):
    """The reference parser refuses the input (the reason is the message)."""


class Huge(Invalid):
    """Valid, but a matrix of more rows than a test may build (:data:`MAX_ROWS`): the reader may
    refuse it for memory (MemoryLimitError) or read it; the result is not compared."""


#: Rows above which a reference result is :class:`Huge` (its row pointers alone: 16 bytes a row).
MAX_ROWS = 10**7


# --- tokens and byte mutations -------------------------------------------------------------

#: Tokens inserted or substituted by the mutations: other number spellings, signs, zero,
#: values beyond int32 / float64, non-ASCII and control bytes, separators.
TOKENS = st.one_of(
    st.sampled_from([b"0", b"-1", b"-0", b"+7", b"1.5", b"1e400", b"-1e-400", b"nan", b"inf", b"-inf", b"1_0",
                     b"0x10", b"1e", b".", b"-", b"+", b"e5", b"007", b"2147483647", b"2147483648", b"4294967297",
                     b"1" * 19, b"9" * 25, b"6.250000e-02", b"0.0625", b"1e308", b"3.5e38", b"1e-320",
                     b"\xef\xbb\xbf", "\u00e9".encode(), "\u0661".encode(), b"\xff\xfe", b"\x00", b"\x00" * 40,
                     b"\x0b", b"\x0c", b"\xa0", b"\t", b" ", b"\r", b"\n", b"", b"%", b"#", b"-"]),
    st.integers(min_value=0, max_value=10**60).map(lambda v: str(v).encode()),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: repr(v).encode()),
    st.binary(min_size=1, max_size=12),
    st.integers(min_value=20, max_value=300).map(lambda k: b"1" * k),
)

#: Bytes a "set byte" mutation writes: digits, signs, separators, NUL, high bytes.
_BYTES = st.sampled_from(list(b"0159-+.eE \t\r\n%") + [0, 0x0b, 0x80, 0xbf, 0xef, 0xff])


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _join(lines: list[bytes]) -> bytes:
    return b"\n".join(lines)


def _truncate(draw, data: bytes) -> bytes:
    return data[:draw(st.integers(0, len(data)))]


def _flip(draw, data: bytes) -> bytes:
    if not data:
        return data
    i = draw(st.integers(0, len(data) - 1))
    return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]


def _set_byte(draw, data: bytes) -> bytes:
    if not data:
        return data
    i = draw(st.integers(0, len(data) - 1))
    return data[:i] + bytes([draw(_BYTES)]) + data[i + 1:]


def _insert(draw, data: bytes) -> bytes:
    i = draw(st.integers(0, len(data)))
    return data[:i] + draw(TOKENS) + data[i:]


def _delete_line(draw, data: bytes) -> bytes:
    lines = _lines(data)
    del lines[draw(st.integers(0, len(lines) - 1))]
    return _join(lines)


def _duplicate_line(draw, data: bytes) -> bytes:
    lines = _lines(data)
    i = draw(st.integers(0, len(lines) - 1))
    lines.insert(draw(st.integers(0, len(lines))), lines[i])
    return _join(lines)


def _swap_lines(draw, data: bytes) -> bytes:
    lines = _lines(data)
    i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    return _join(lines)


def _replace_field(draw, data: bytes) -> bytes:
    lines = _lines(data)
    i = draw(st.integers(0, len(lines) - 1))
    fields = re.split(rb"([ \t]+)", lines[i])
    words = [k for k in range(0, len(fields), 2)]
    k = draw(st.sampled_from(words))
    fields[k] = draw(TOKENS)
    lines[i] = b"".join(fields)
    return _join(lines)


def _line_endings(draw, data: bytes) -> bytes:
    return data.replace(b"\n", draw(st.sampled_from([b"\r\n", b"\r", b"\n\n", b" \n", b"\x0b\n"])))


def _insert_line(draw, data: bytes) -> bytes:
    lines = _lines(data)
    extra = draw(st.sampled_from([b"", b"   ", b"\t", b"%comment", b"# comment", b"1", b"1 2", b"1 2 3 4",
                                  b"\x00\x00", b"\xef\xbb\xbf1\t1\t1"]))
    lines.insert(draw(st.integers(0, len(lines))), extra)
    return _join(lines)


_OPS = (_truncate, _flip, _set_byte, _insert, _delete_line, _duplicate_line, _swap_lines, _replace_field,
        _line_endings, _insert_line)


@st.composite
def mutated(draw, data: bytes, max_ops: int = 3) -> bytes:
    """``data`` after 1..``max_ops`` random mutations (see the module docstring)."""
    for op in draw(st.lists(st.sampled_from(_OPS), min_size=1, max_size=max_ops)):
        data = op(draw, data)
    return data


@st.composite
def damaged_gzip(draw, raw: bytes) -> bytes:
    """gzip bytes ``raw`` damaged: truncated, a byte flipped or set, garbage or another member appended."""
    kind = draw(st.sampled_from(["truncate", "flip", "set", "garbage", "member", "zeros", "header"]))
    if kind == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))]
    if kind == "flip":
        return _flip(draw, raw)
    if kind == "set":
        return _set_byte(draw, raw)
    if kind == "garbage":
        return raw + draw(st.binary(min_size=1, max_size=16))
    if kind == "member":
        return raw + gzip.compress(draw(st.sampled_from([b"", b"1\t1\t1\n", b"junk"])), mtime=0)
    if kind == "zeros":
        i = draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes(draw(st.integers(1, 64))) + raw[i + 64:]
    i = draw(st.integers(0, min(9, len(raw) - 1)))  # the 10-byte gzip header
    return raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]


# --- neutral rewrites ----------------------------------------------------------------------

@st.composite
def reordered_lines(draw, data: bytes, keep: int = 0) -> bytes:
    """The lines of ``data`` after the first ``keep`` in another order (the files are sets of lines)."""
    lines = data.rstrip(b"\n").split(b"\n") if data else []
    head, body = lines[:keep], lines[keep:]
    body = draw(st.permutations(body))
    return b"".join(line + b"\n" for line in head + list(body))


@st.composite
def respaced(draw, data: bytes) -> bytes:
    """``data`` with other blanks between fields (tabs, spaces), at the ends of lines, CRLF, no last newline."""
    sep = draw(st.sampled_from([b"\t", b" ", b"  ", b" \t", b"\t\t"]))
    lead = draw(st.sampled_from([b"", b" ", b"\t"]))
    tail = draw(st.sampled_from([b"", b" ", b"\t", b"\r", b" \r"]))
    out = b"".join(lead + sep.join(line.split()) + tail + b"\n" for line in data.splitlines())
    if draw(st.booleans()):
        out = out[:-1]
    return out


# --- reference parsers ---------------------------------------------------------------------

def ref_decompress(data: bytes) -> bytes:
    """The text of a file: gunzipped when it starts with the gzip magic (as the readers detect it)."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise Invalid(f"gzip: {exc}") from None


def _data_lines(text: bytes) -> list[list[bytes]]:
    """Fields of each line; lines end at \\n, fields are separated by spaces, tabs or \\r."""
    if not text:
        return []
    lines = text.split(b"\n")
    if text.endswith(b"\n"):
        lines.pop()
    return [[f for f in re.split(rb"[ \t\r]+", line) if f] for line in lines]


def _index(tok: bytes, bound: int | None, what: str) -> int:
    if not re.fullmatch(rb"[0-9]+", tok) or len(tok.lstrip(b"0")) > 10:
        raise Invalid(f"{what} {tok!r}")
    v = int(tok)
    if v < 1 or v > INT32_MAX or (bound is not None and v > bound):
        raise Invalid(f"{what} {v} out of range")
    return v


#: Longest value token the format allows (docs/challenge.md, Formats: at most 100 characters).
MAX_VALUE_CHARS = 100


def _value(tok: bytes) -> float:
    # a decimal number of at most MAX_VALUE_CHARS characters; Python-only spellings ('1_0') are not
    if len(tok) > MAX_VALUE_CHARS or b"_" in tok:
        raise Invalid(f"value {tok[:40]!r} ({len(tok)} bytes)")
    try:
        x = float(tok.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise Invalid(f"value {tok!r}") from None
    if not math.isfinite(x):
        raise Invalid(f"value {tok!r} not finite")
    return x


def ref_triples(text: bytes, bounds=(None, None), *, values: bool = True):
    """(rows, cols, values) of ``index index [value]`` lines, 1-based; duplicates are invalid."""
    rows, cols, vals, seen = [], [], [], set()
    for fields in _data_lines(text):
        if len(fields) != (3 if values else 2):
            raise Invalid(f"{len(fields)} fields")
        r, c = _index(fields[0], bounds[0], "row"), _index(fields[1], bounds[1], "column")
        if (r, c) in seen:
            raise Invalid(f"duplicate ({r}, {c})")
        seen.add((r, c))
        rows.append(r)
        cols.append(c)
        vals.append(_value(fields[2]) if values else 1.0)
    return np.array(rows, np.int64), np.array(cols, np.int64), np.array(vals, np.float64)


def ref_ids(text: bytes, bound: int | None = None) -> np.ndarray:
    """Sorted ids of a one-id-a-line file; a duplicate or an id beyond ``bound`` is invalid."""
    ids = []
    for fields in _data_lines(text):
        if len(fields) != 1:
            raise Invalid(f"{len(fields)} fields")
        ids.append(_index(fields[0], bound, "id"))
    if len(set(ids)) != len(ids):
        raise Invalid("duplicate id")
    return np.array(sorted(ids), np.int64)


def ref_mtx(text: bytes):
    """(rows, cols, field, body) of a coordinate MatrixMarket file; ``body`` is the text after the size line."""
    lines = text.split(b"\n")
    words = lines[0].decode("ascii", "replace").split()
    if (len(words) != 5 or words[0].lower() != "%%matrixmarket" or [w.lower() for w in words[1:3]]
            != ["matrix", "coordinate"] or words[3].lower() not in ("pattern", "real", "integer")
            or words[4].lower() != "general"):
        raise Invalid("banner")
    i = 1
    while i < len(lines):
        line = lines[i].decode("ascii", "replace").strip()
        if line and not line.startswith("%"):
            break
        i += 1
    else:
        raise Invalid("no size line")
    parts = lines[i].decode("ascii", "replace").split()
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise Invalid("size line")
    rows, cols, nnz = (int(p) for p in parts)
    if nnz > rows * cols:
        raise Invalid("nnz > rows * cols")
    if max(rows, cols) > INT32_MAX:  # no index could reach beyond
        raise Invalid("rows or columns beyond int32")
    body = b"\n".join(lines[i + 1:])
    return rows, cols, nnz, words[3].lower(), body


def ref_idx(raw: bytes) -> np.ndarray:
    """Images (count, rows, cols) of an IDX file of unsigned bytes in 3 dimensions (gzip detected)."""
    data = ref_decompress(raw)
    if len(data) < 16:
        raise Invalid("short header")
    magic, count, rows, cols = (int.from_bytes(data[k:k + 4], "big") for k in range(0, 16, 4))
    if magic != 0x803 or len(data) != 16 + count * rows * cols:
        raise Invalid("magic or size")
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)


def to_csr(rows, cols, vals, shape) -> sp.csr_matrix:
    """A CSR matrix of 1-based entries (explicit zeros kept); :class:`Huge` beyond :data:`MAX_ROWS` rows."""
    if shape[0] > MAX_ROWS:
        raise Huge(f"{shape[0]} rows")
    m = sp.coo_matrix((vals, (np.asarray(rows) - 1, np.asarray(cols) - 1)), shape=shape).tocsr()
    m.sort_indices()
    return m


def same_matrix(a, b) -> bool:
    """Same shape, pattern and value bits (explicit zeros and -0.0 included)."""
    a, b = sp.coo_matrix(a), sp.coo_matrix(b)
    if a.shape != b.shape or a.nnz != b.nnz:
        return False
    oa, ob = np.lexsort((a.col, a.row)), np.lexsort((b.col, b.row))
    return (np.array_equal(a.row[oa], b.row[ob]) and np.array_equal(a.col[oa], b.col[ob])
            and np.array_equal(np.asarray(a.data[oa], np.float64).view(np.int64),
                               np.asarray(b.data[ob], np.float64).view(np.int64)))


# --- running a reader ----------------------------------------------------------------------

class Hang(AssertionError):
    """A reader ran past :data:`TIME_BOUND_S`."""


@contextlib.contextmanager
def time_bound(seconds: float = TIME_BOUND_S):
    """Fail with :class:`Hang` when the block runs past ``seconds`` (SIGALRM; main thread only)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    outer = signal.getitimer(signal.ITIMER_REAL)[0]  # pytest-timeout's alarm, if any: kept
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer) if outer > 0 else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 0.001))


def message_ok(exc: BaseException, path) -> bool:
    """An error message names the file (its name at least) and is short."""
    text = str(exc)
    return os.path.basename(os.fspath(path)) in text and len(text) <= MAX_MESSAGE


def count_example() -> None:
    """Count one input tried (appended to the file ``SPDNN_FUZZ_COUNT``, when set)."""
    target = os.environ.get("SPDNN_FUZZ_COUNT")
    if target:
        with open(target, "a") as fh:
            fh.write("1\n")


def outcome(read, *args, **kwargs):
    """``read(*args, **kwargs)`` within the time bound: its result, or the SpdnnError it raised.

    Any other exception propagates (the property fails). Warnings of spdnn are allowed;
    any other warning is an error (pyproject's ``filterwarnings = error``).
    """
    count_example()
    try:
        with time_bound(), warnings.catch_warnings():
            warnings.simplefilter("ignore", SpdnnWarning)
            return read(*args, **kwargs)
    except SpdnnError as exc:
        return exc
