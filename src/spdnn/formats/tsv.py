"""The official tab-separated files: layers and ids read, layers, features and categories written.

Formats (docs/challenge.md, Formats), 1-based::

    n{N}-l{k}.tsv                    row \\t col \\t value       (input neuron, output neuron, 6.250000e-02)
    sparse-images-{N}.tsv            sample \\t feature \\t 1
    neuron{N}-l{L}-categories.tsv    one sample id a line

Parsing is the shared scanner of :mod:`.text`; writing formats lines in a compiled loop,
each distinct value printed once, and goes through :mod:`spdnn._atomic` (a failed write
leaves nothing behind).
"""
from __future__ import annotations

import os
from typing import IO

import numba
import numpy as np
import scipy.sparse as sp

from .._atomic import atomic_open
from ..errors import FormatError, OptionError
from ..options import positive_int
from .text import check_rows_fit, entries_to_csr, open_data, read_entries

_INT32_MAX = 2**31 - 1

__all__ = ["read_layer", "parse_layer_stream", "read_id_list", "write_layer_tsv", "write_features_tsv",
           "write_categories"]


# --- reading -------------------------------------------------------------------------------

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
    entries = read_entries(stream, where, nint=2, want_value=True, bounds=(bound, bound))
    if entries.count == 0:
        raise FormatError("empty file: expected lines 'row<TAB>col<TAB>value'", path=where)
    rows, cols = entries.ints
    n = neurons if neurons is not None else int(max(rows.max(), cols.max()))
    check_rows_fit(n, where, f"a layer of N = {n:,} neurons" + (" (its largest index)" if neurons is None else ""))
    return entries_to_csr(rows, cols, entries.values, (n, n), where)



def read_id_list(stream: IO[bytes], where: str) -> np.ndarray:
    """Parse one positive integer a line (e.g. a categories file) -> int64 array, file order."""
    entries = read_entries(stream, where, nint=1, want_value=False, names=("id",))
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

    Values are distinct by their bits, so 0.0 and -0.0 keep their signs.

    Returns (concatenated text bytes, start offset of each text (k+1,), sorted distinct
    bit patterns (k,), int64: look a value up with ``searchsorted(uniq, values.view(np.int64))``).
    """
    bits = np.ascontiguousarray(data, np.float64).view(np.int64)
    if bits.size == 0:
        uniq = np.empty(0, np.int64)
    elif bits.min() == bits.max():
        uniq = bits[:1].copy()
    else:
        uniq = np.unique(bits)
    texts = []
    for u in uniq.view(np.float64).tolist():
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
                      major_first: bool, entries_per_block: int = 1 << 21, compresslevel: int = 6) -> None:
    """Write a canonical CSR/CSC matrix as 1-based text lines, atomically (gzip for ``.gz``).

    Lines follow the storage order (major index, then minor); ``major_first`` says whether
    the major index is the first field (CSR: row first) or the second (CSC: column second).
    Works in blocks of about ``entries_per_block`` entries, so memory stays bounded.
    """
    data = np.asarray(data, np.float64)
    texts, starts, uniq = _value_texts(data, fmt)
    width = int(np.diff(starts).max()) if starts.size > 1 else 0
    nmajor = indptr.size - 1
    with atomic_open(path, "wb", compresslevel=compresslevel) as fh:
        m0 = 0
        while m0 < nmajor:
            m1 = int(np.searchsorted(indptr, indptr[m0] + entries_per_block, side="right")) - 1
            m1 = min(max(m1, m0 + 1), nmajor)
            s, e = int(indptr[m0]), int(indptr[m1])
            if e > s:
                major = np.repeat(np.arange(m0 + 1, m1 + 1, dtype=np.int64), np.diff(indptr[m0:m1 + 1]))
                minor = indices[s:e].astype(np.int64) + 1
                code = (np.zeros(e - s, np.int64) if uniq.size == 1
                        else np.searchsorted(uniq, data[s:e].view(np.int64)).astype(np.int64))
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


def write_features_tsv(path: str | os.PathLike, x, *, compresslevel: int = 6) -> None:
    """Write features ``sample \\t feature \\t value`` (1-based), sorted by sample then feature.

    Values use ``'%g'`` (``1``) when exact, else the shortest exact repr. Atomic; gzip
    if the name ends in ``.gz``, at ``compresslevel`` (1 fastest .. 9 smallest).

    Parameters
    ----------
    path : str or os.PathLike
    x : scipy.sparse matrix, shape (samples, N)
    compresslevel : int
    """
    m = _canonical(sp.csr_matrix(x))
    _write_compressed(path, m.indptr, m.indices, m.data, "%g", major_first=True, compresslevel=compresslevel)


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
        An id is below 1, or beyond 2**31 - 1 (the readers' largest index: the file could
        not be read back).
    """
    arr = np.unique(np.asarray(ids, dtype=np.int64).ravel())
    if arr.size and arr[0] < 1:
        raise OptionError(f"categories: id {int(arr[0])} is not 1-based (expected >= 1)")
    if arr.size and arr[-1] > _INT32_MAX:
        raise OptionError(f"categories: id {int(arr[-1])} is beyond {_INT32_MAX} (the largest sample id "
                          f"the readers accept)")
    text = "".join(f"{v}\n" for v in arr.tolist())
    with atomic_open(path, "wb") as fh:
        fh.write(text.encode("ascii"))
