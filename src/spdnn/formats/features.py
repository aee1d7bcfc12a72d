"""Reading input features and truth categories (docs/challenge.md, Formats).

Features (``sparse-images-{N}.tsv[.gz]`` or a MatrixMarket ``.mtx[.gz]``) are parsed
block by block straight into a features ``.npz`` (:mod:`.npz`) in the binary cache,
then memory-mapped: reading holds one block of text at a time, and the matrix handed
back costs no memory per nonzero until it is used (values of 1 are not stored). Rows
out of order fall back to sorting in memory.

The number of samples is the official 60,000 for TSV unless told otherwise (the
MatrixMarket header declares its own); a sample id beyond it is an error naming the
file and line, and samples without any feature at the end still count.
"""
from __future__ import annotations

import functools
import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._progress import progress_bar
from ..errors import FormatError
from ..network import OFFICIAL_SAMPLES
from ..options import optional_positive_int
from . import cache as _cache
from .mtx import check_count, is_mtx, read_mtx_entries, read_mtx_header
from .npz import NpyAppender, read_features_npz, write_features_npz, write_features_npz_files
from .text import (TextEntries, check_row_sorted, check_rows_fit, damage_instead, entries_to_csr, iter_entry_blocks,
                   line_blocks, input_file, open_data, read_entries, wrap_gzip)
from .tsv import read_id_list

__all__ = ["read_features", "read_categories"]

#: Bytes above which reading shows a progress bar (when progress is not forced).
_PROGRESS_BYTES = 64 << 20
_NAMES = ("sample", "feature", "value")


class _Layout:
    """What a features file declares or is told: shape bounds, values, first data line."""

    def __init__(self, stream, where: str, mtx: bool, neurons: int | None, samples: int | None):
        self.where = where
        if mtx:
            header = read_mtx_header(stream, where)
            if neurons is not None and header.cols != neurons:
                raise FormatError(f"declares {header.cols} features (columns), expected neurons={neurons}",
                                  path=where, line=header.lines)
            if samples is not None and header.rows != samples:
                raise FormatError(f"declares {header.rows} samples (rows), expected samples={samples}",
                                  path=where, line=header.lines)
            self.header, self.samples, self.neurons = header, header.rows, header.cols
            self.want_value, self.first_line = header.field != "pattern", header.lines + 1
        else:
            self.header, self.samples, self.neurons = None, samples or OFFICIAL_SAMPLES, neurons
            self.want_value, self.first_line = True, 1
        check_rows_fit(self.samples, where, f"features of {self.samples:,} samples")

    def check_count(self, count: int) -> None:
        if self.header is not None:
            check_count(self.header, count, self.where)
        elif count == 0:
            raise FormatError("empty file: expected lines 'sample<TAB>feature<TAB>value'", path=self.where)

    def shape(self, max_col: int) -> tuple[int, int]:
        return self.samples, self.neurons if self.neurons is not None else max_col


class _CsrWriter:
    """Row-sorted entries appended to ``.npy`` files, assembled into a features ``.npz``."""

    def __init__(self, folder: Path, samples: int):
        self.folder = folder
        self.counts = np.zeros(samples, np.int64)
        self.indices = NpyAppender(folder / "indices.npy", np.int32)
        self.data: NpyAppender | None = None
        self.ones = 0                    # leading entries of value 1 not yet written to data
        self.previous = None             # (row, col, line) of the last entry
        self.max_col = 0

    def add(self, part: TextEntries, where: str) -> bool:
        """Append one block (1-based entries); False when it breaks the (row, col) order."""
        rows, cols = part.ints
        rows -= 1
        cols -= 1
        if not check_row_sorted(rows, cols, where, part.first_line, previous=self.previous, names=_NAMES[:2]):
            return False
        if rows.size == 0:
            return True
        self.previous = (int(rows[-1]), int(cols[-1]), part.first_line + rows.size - 1)
        self.counts += np.bincount(rows, minlength=self.counts.size)
        self.indices.append(cols)
        self.max_col = max(self.max_col, int(cols.max()) + 1)
        vals = part.values
        if self.data is None and (vals is None or np.all(vals == 1.0)):
            self.ones += rows.size
            return True
        if self.data is None:
            self.data = NpyAppender(self.folder / "data.npy", np.float64)
            for start in range(0, self.ones, 1 << 22):
                self.data.append(np.ones(min(1 << 22, self.ones - start)))
        self.data.append(np.ones(rows.size) if vals is None else vals)
        return True

    def finish(self, shape: tuple[int, int]) -> Path:
        """Write the ``.npz`` (``features.npz`` in the folder) and remove the pieces; returns its path."""
        self.indices.close()
        members = {"indptr": self.folder / "indptr.npy", "indices": self.folder / "indices.npy",
                   "shape": self.folder / "shape.npy"}
        indptr = np.zeros(self.counts.size + 1, np.int64)
        np.cumsum(self.counts, out=indptr[1:])
        np.save(members["indptr"], indptr)
        np.save(members["shape"], np.asarray(shape, np.int64))
        if self.data is not None:
            self.data.close()
            members["data"] = self.folder / "data.npy"
        out = write_features_npz_files(self.folder / "features.npz", members)
        for piece in members.values():
            piece.unlink()
        return out

    def close(self) -> None:
        self.indices.close()
        if self.data is not None:
            self.data.close()


def _progress_bar(p: Path, progress):
    size = p.stat().st_size
    return progress_bar(None, enabled=progress if progress is not None else (None if size > _PROGRESS_BYTES else False),
                        desc=f"reading {p.name}", unit="B")


def _stream_to_npz(p: Path, neurons, samples, folder: Path, progress) -> tuple[Path, str] | None:
    """Parse ``p`` block by block into ``folder/features.npz``; (path, SHA-256), or None if rows are unsorted."""
    where = os.fspath(p)
    buffered, hashing = _cache.HashingReader.open(p)
    bar = _progress_bar(p, progress)
    with buffered:
        stream = wrap_gzip(buffered)
        layout = _Layout(stream, where, is_mtx(p), neurons, samples)
        try:
            writer = _CsrWriter(folder, layout.samples)
        except OSError as exc:
            raise _cache.CacheUnavailable(f"{folder}: {exc.strerror or exc}") from exc
        blocks = line_blocks(stream, where)
        count, ordered = 0, True
        try:
            for part in iter_entry_blocks(blocks, where, nint=2, want_value=layout.want_value,
                                          bounds=(layout.samples, layout.neurons or 0), names=_NAMES,
                                          first_line=layout.first_line, on_block=bar.update):
                count += part.count
                try:
                    ordered = writer.add(part, where)
                except OSError as exc:
                    raise _cache.CacheUnavailable(f"{folder}: {exc.strerror or exc}") from exc
                if not ordered:
                    break
        except FormatError as exc:
            blocks.close()
            raise damage_instead(exc, stream if isinstance(stream, gzip.GzipFile) else None) from None
        finally:
            blocks.close()
            bar.close()
            writer.close()
        if not ordered:
            return None
        layout.check_count(count)
        digest = hashing.finish()
    try:
        return writer.finish(layout.shape(writer.max_col)), digest
    except OSError as exc:
        raise _cache.CacheUnavailable(f"{folder}: {exc.strerror or exc}") from exc


def _parse_in_memory(p: Path, neurons, samples, progress) -> tuple[sp.csr_matrix, str]:
    """Parse ``p`` whole (any row order); returns (canonical float64 CSR, SHA-256 of the file)."""
    where = os.fspath(p)
    buffered, hashing = _cache.HashingReader.open(p)
    bar = _progress_bar(p, progress)
    try:
        with buffered:
            stream = wrap_gzip(buffered)
            layout = _Layout(stream, where, is_mtx(p), neurons, samples)
            entries = read_entries(stream, where, nint=2, want_value=layout.want_value,
                                   bounds=(layout.samples, layout.neurons or 0), names=_NAMES,
                                   first_line=layout.first_line, on_block=bar.update)
            layout.check_count(entries.count)
            digest = hashing.finish()
    finally:
        bar.close()
    rows, cols = entries.ints
    shape = layout.shape(int(cols.max()) if entries.count else 0)
    m = entries_to_csr(rows, cols, entries.values, shape, where, first_line=entries.first_line, names=_NAMES[:2])
    return m, digest


def _build(p: Path, neurons, samples, folder: Path, progress) -> tuple[Path, str]:
    built = _stream_to_npz(p, neurons, samples, folder, progress)
    if built is None:  # rows out of order: sort in memory
        m, digest = _parse_in_memory(p, neurons, samples, progress)
        try:
            built = write_features_npz(folder / "features.npz", m), digest
        except OSError as exc:
            raise _cache.CacheUnavailable(f"{folder}: {exc.strerror or exc}") from exc
    return built


def _into_cache(p: Path, neurons, samples, progress) -> sp.csr_matrix:
    group = {"source": str(p.resolve()), "neurons": neurons, "samples": samples}
    with _cache.request("features", group, [p]) as req:
        entry = req.fresh()
        if entry is not None:
            try:
                return read_features_npz(entry, neurons)
            except FormatError:
                req.discard(entry)  # damaged: rebuilt below
        built, digest = _build(p, neurons, samples, req.scratch, progress)
        entry = req.commit({"sha256": [digest], "neurons": neurons, "samples": samples}, built, [digest])
        return read_features_npz(entry, neurons)


def _into_private_folder(p: Path, neurons, samples, progress) -> sp.csr_matrix:
    with _cache.private_folder() as folder:
        built, _ = _build(p, neurons, samples, folder, progress)
        m = read_features_npz(built, neurons)
    shutil.rmtree(folder, ignore_errors=True)  # the mapping outlives the file
    return m


def _into_memory(p: Path, neurons, samples, progress) -> sp.csr_matrix:
    return _parse_in_memory(p, neurons, samples, progress)[0]


def read_features(path, neurons: int | None = None, *, samples: int | None = None, cache: bool = True,
                  progress: bool | None = None) -> sp.csr_matrix:
    """Read input features: official ``sparse-images-{N}.tsv[.gz]`` or MatrixMarket ``.mtx[.gz]``.

    Parameters
    ----------
    path : str or os.PathLike
        TSV lines ``sample \\t feature \\t value`` (1-based), or a coordinate
        MatrixMarket matrix with rows = samples (pattern entries are 1).
    neurons : int, optional
        N (number of features). TSV: features must lie in 1..N; default the largest
        feature id. MatrixMarket: must equal the declared column count.
    samples : int, optional
        Number of samples of the set. TSV: default 60,000 (the official count); sample
        ids must lie in 1..samples, and samples without features (trailing ones
        included) are rows of zeros. MatrixMarket: must equal the declared row count.
    cache : bool
        Use the binary cache (reuse the entry for these bytes, or parse into one).
        False parses into a temporary file, mapped and deleted at once.
    progress : bool, optional
        Progress bar over bytes read (None: on a terminal, for large files).

    Returns
    -------
    scipy.sparse.csr_matrix, shape (samples, N), float64, canonical
        Row i is sample i+1. ``indices`` (and stored values) are memory-mapped; when
        every value is 1, ``data`` is a read-only broadcast of 1.0.

    Raises
    ------
    DataNotFoundError
        No such file.
    FormatError
        A malformed line, an id out of range (file and line named), a duplicate entry,
        or damaged compressed data.
    """
    neurons = optional_positive_int(neurons, "neurons")
    samples = optional_positive_int(samples, "samples")
    p = input_file(path)
    told = samples
    if samples is None and not is_mtx(p):
        samples = OFFICIAL_SAMPLES  # one cache entry whether the default was asked for or spelt out
    steps = [("the binary cache", _into_cache)] if cache else []
    steps += [("a temporary folder", _into_private_folder), ("memory", _into_memory)]
    try:
        return _cache.fallback_chain([(where, functools.partial(step, p, neurons, samples, progress))
                                      for where, step in steps])
    except FormatError as exc:
        if told is None and not is_mtx(p) and exc.reason.startswith("sample ") and "out of range" in exc.reason:
            raise FormatError(f"{exc.reason} (the official number of samples; pass samples= or --samples for a "
                              f"larger set)", path=exc.path, line=exc.line) from None
        raise


def read_categories(path, *, samples: int | None = None) -> np.ndarray:
    """Read truth categories: one id a line (official TSV) or a MatrixMarket vector.

    The MatrixMarket form is a coordinate pattern ``samples x 1`` column (or ``1 x
    samples`` row) vector whose entries are the ids. An empty TSV means no category.

    Parameters
    ----------
    path : str or os.PathLike
    samples : int, optional
        Number of samples of the features the truth belongs to: an id beyond it is an
        error (checked here, before any inference).

    Returns
    -------
    numpy.ndarray of int64
        Sorted, unique, 1-based sample ids.

    Raises
    ------
    FormatError
        Malformed line, an id < 1 or beyond ``samples``, a duplicate id (file and line
        named).
    """
    samples = optional_positive_int(samples, "samples")
    p = Path(path)
    where = os.fspath(path)
    with open_data(p) as stream:
        if is_mtx(p):
            header, entries = read_mtx_entries(stream, where, names=("id", "column", "value"))
            rows, cols = entries.ints
            if header.cols == 1:
                ids = rows
            elif header.rows == 1:
                ids = cols
            else:
                raise FormatError(f"categories must be a vector, found a {header.rows} x {header.cols} matrix",
                                  path=where, line=header.lines)
            first = entries.first_line
        else:
            ids = read_id_list(stream, where)
            first = 1
    ids = np.asarray(ids, np.int64)
    if samples is not None and ids.size and int(ids.max()) > samples:
        i = int(np.argmax(ids > samples))
        raise FormatError(f"sample id {int(ids[i])} is beyond the {samples:,} samples of the features (a truth "
                          f"for other inputs?)", path=where, line=first + i)
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        i = int(dup[0])
        a, b = sorted((int(order[i]), int(order[i + 1])))
        raise FormatError(f"duplicate id {int(s[i])} (first given on line {first + a})", path=where, line=first + b)
    return s
