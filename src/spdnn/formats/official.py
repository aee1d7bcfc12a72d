"""The official Graph Challenge layout: networks, features and truth categories.

Layout (docs/challenge.md, Formats)::

    neuron{N}/n{N}-l{k}.tsv[.gz]         k = 1..L   (or the archive neuron{N}.tar.gz)
    sparse-images-{N}.tsv[.gz]           or a MatrixMarket subset  *.mtx[.gz]
    neuron{N}-l{L}-categories.tsv        or a MatrixMarket column vector  *.mtx

All indices in the files are 1-based; the matrices returned are 0-based CSR, float64.
"""
from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._progress import progress_bar
from ..errors import DataNotFoundError, FormatError, OptionError
from ..network import OFFICIAL_BIAS, Network
from . import cache as _cache
from .mtx import is_mtx, read_mtx_entries
from ..options import positive_int
from .text import COMPRESSION_ERRORS, entries_to_csr, open_data, read_entries, wrap_gzip
from .tsv import parse_layer_stream, read_id_list

__all__ = ["read_network", "read_features", "read_categories", "find_official", "OfficialPaths"]

_LAYER_RE = re.compile(r"(?:^|/)n(\d+)-l(\d+)\.tsv(\.gz)?$")
_NET_DIR_RE = re.compile(r"^neuron(\d+)$")
_NET_TAR_RE = re.compile(r"^neuron(\d+)\.(tar\.gz|tgz|tar)$")
_FEATURES_RE = re.compile(r"^sparse-images-(\d+)(-[^.]*)?\.(tsv|tsv\.gz|mtx|mtx\.gz)$")
_TRUTH_RE = re.compile(r"^neuron(\d+)-l(\d+)-categories(-[^.]*)?\.(tsv|mtx)$")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")

# Bytes above which reading shows a progress bar (when progress is not forced).
_PROGRESS_BYTES = 64 << 20


# --- layer sources -------------------------------------------------------------------------

def _layer_numbers(layers) -> list[int] | None:
    """Normalize ``layers``: None (all), an int L (1..L) or 1-based layer numbers."""
    if layers is None:
        return None
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        return list(range(1, positive_int(layers, "layers") + 1))
    try:
        out = [int(k) for k in layers]
    except (TypeError, ValueError):
        raise OptionError(f"layers={layers!r}: expected a positive int L or a sequence of 1-based layer numbers") from None
    if not out or min(out) < 1:
        raise OptionError(f"layers={layers!r}: expected a positive int L or a sequence of 1-based layer numbers")
    return out


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith(_TAR_SUFFIXES)


def _scan_layer_dir(directory: Path) -> dict[int, dict[int, Path]]:
    """{N: {k: path}} of the layer files n{N}-l{k}.tsv[.gz] in ``directory`` (plain preferred)."""
    found: dict[int, dict[int, Path]] = {}
    for entry in sorted(directory.iterdir()):
        m = _LAYER_RE.search(entry.name)
        if m and entry.is_file():
            layers = found.setdefault(int(m.group(1)), {})
            k = int(m.group(2))
            if k not in layers or not entry.name.endswith(".gz"):
                layers[k] = entry
    return found


def _pick(candidates: Iterable[int], neurons: int | None, what: str, where: Path) -> int:
    cands = sorted(set(candidates))
    if neurons is not None:
        if neurons not in cands:
            raise DataNotFoundError(f"{where}: no {what} for N={neurons} (found N = {cands or 'none'})")
        return neurons
    if len(cands) > 1:
        raise OptionError(f"{where}: {what} for several sizes N = {cands}; pass neurons=N to choose")
    return cands[0]


def _resolve_source(source, neurons: int | None) -> tuple[str, Path, int | None, dict[int, Path] | None]:
    """(kind 'dir' or 'tar', path, N or None, {k: file} for a directory)."""
    path = Path(source)
    if not path.exists():
        raise DataNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        if not _is_tar(path):
            raise OptionError(f"{path}: expected a directory of n{{N}}-l{{k}}.tsv files or a neuron{{N}}.tar.gz archive")
        m = _NET_TAR_RE.match(path.name)
        n = int(m.group(1)) if m else None
        if neurons is not None and n is not None and n != neurons:
            raise OptionError(f"{path}: archive of N={n}, but neurons={neurons}")
        return "tar", path, neurons if neurons is not None else n, None
    found = _scan_layer_dir(path)
    if found:
        n = _pick(found, neurons, "layer files", path)
        return "dir", path, n, found[n]
    subdirs = {int(m.group(1)): e for e in path.iterdir() if (m := _NET_DIR_RE.match(e.name)) and e.is_dir()}
    tars = {int(m.group(1)): e for e in path.iterdir() if (m := _NET_TAR_RE.match(e.name)) and e.is_file()}
    if not subdirs and not tars:
        raise DataNotFoundError(f"{path}: no network found (expected n{{N}}-l{{k}}.tsv files, a neuron{{N}}/ "
                                f"folder or a neuron{{N}}.tar.gz archive)")
    n = _pick(list(subdirs) + list(tars), neurons, "networks", path)
    if n in subdirs:
        return _resolve_source(subdirs[n], n)
    return _resolve_source(tars[n], n)


def _missing(kind: str, path: Path, n: int | None, k: int, found: Sequence[int]) -> DataNotFoundError:
    name = f"n{n if n is not None else '{N}'}-l{k}.tsv"
    where = f"{path}/{name}" if kind == "dir" else f"{path}: member neuron{n}/{name}"
    have = _ranges(found)
    return DataNotFoundError(f"missing layer file {where} (layers found: {have or 'none'})")


def _ranges(numbers: Iterable[int]) -> str:
    nums = sorted(set(numbers))
    out, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ", ".join(out)


def _check_contiguous(kind: str, path: Path, n: int | None, found: Sequence[int]) -> list[int]:
    """All found layers must be 1..L; returns [1..L]."""
    if not found:
        raise DataNotFoundError(f"{path}: no layer files n{{N}}-l{{k}}.tsv found")
    top = max(found)
    have = set(found)
    for k in range(1, top + 1):
        if k not in have:
            raise _missing(kind, path, n, k, found)
    return list(range(1, top + 1))


def _read_dir_layers(path: Path, n: int, files: dict[int, Path], wanted: list[int], progress) -> list[sp.csr_matrix]:
    out = []
    for k in progress_bar(wanted, enabled=progress, desc=f"reading neuron{n}", unit="layer"):
        out.append(parse_layer_file(files[k], n))
    return out


def parse_layer_file(path: Path, n: int) -> sp.csr_matrix:
    with open_data(path) as stream:
        return parse_layer_stream(stream, os.fspath(path), n)


def _read_tar_layers(path: Path, neurons: int | None, wanted: list[int] | None, progress):
    """Read layer members straight from the archive (no extraction). Returns ({k: csr}, N, found ids)."""
    got: dict[int, sp.csr_matrix] = {}
    found: list[int] = []
    sizes: set[int] = set()
    want = None if wanted is None else set(wanted)
    current = "the first member"
    bar = progress_bar(None, enabled=progress, desc=f"reading {path.name}", total=len(wanted) if wanted else None,
                       unit="layer")
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                m = _LAYER_RE.search(member.name)
                if not m or not member.isfile():
                    continue
                n, k = int(m.group(1)), int(m.group(2))
                if neurons is not None and n != neurons:
                    continue
                sizes.add(n)
                if len(sizes) > 1:
                    raise OptionError(f"{path}: layers of several sizes N = {sorted(sizes)}; pass neurons=N")
                found.append(k)
                current = member.name
                if want is not None and k not in want:
                    continue
                where = f"{path}:{member.name}"
                fh = tar.extractfile(member)
                got[k] = parse_layer_stream(wrap_gzip(fh), where, n)
                bar.update(1)
                if want is not None and want.issubset(got):
                    break
    except (tarfile.TarError, *COMPRESSION_ERRORS) as exc:
        raise FormatError(f"archive is truncated or corrupt after or in member {current} "
                          f"({type(exc).__name__}: {exc})", path=path) from None
    finally:
        bar.close()
    n = neurons if neurons is not None else (sizes.pop() if sizes else None)
    return got, n, found


def read_network(source, *, neurons: int | None = None, layers=None, bias=None, cache: bool = True,
                 progress: bool | None = None) -> Network:
    """Read an official network.

    Parameters
    ----------
    source : str or os.PathLike
        A directory holding ``n{N}-l{k}.tsv[.gz]``; or its parent holding ``neuron{N}/``
        (or ``neuron{N}.tar.gz``); or the archive ``neuron{N}.tar.gz`` itself, read
        member by member without extraction.
    neurons : int, optional
        N. Chooses among several sizes and validates the files; by default taken from the
        file names.
    layers : int or sequence of int, optional
        L (layers 1..L) or explicit 1-based layer numbers. Default: every layer found,
        which must be 1..L without gaps.
    bias : float or array, optional
        Scalar, (N,) or (L, N). Default ``OFFICIAL_BIAS[N]``.
    cache : bool
        Reuse (or create) the binary cache entry for this source.
    progress : bool, optional
        Progress bar over layers (None: when stderr is a terminal).

    Returns
    -------
    Network
        ``layers[k]`` is the file's layer ``layers[k]`` (1-based), canonical float64 CSR (N, N).

    Raises
    ------
    DataNotFoundError
        No network, or a missing layer file (named).
    FormatError
        Malformed layer content, or a truncated/corrupt archive.
    OptionError
        Ambiguous size, or N not official and ``bias`` not given.
    """
    if neurons is not None:
        neurons = positive_int(neurons, "neurons")
    wanted = _layer_numbers(layers)
    kind, path, n, files = _resolve_source(source, neurons)
    if kind == "dir":
        ids = wanted if wanted is not None else _check_contiguous(kind, path, n, list(files))
        for k in ids:
            if k not in files:
                raise _missing(kind, path, n, k, list(files))
        key = {"source": "dir", "neurons": n, "layers": ids,
               "files": [_cache.source_stamp(files[k]) for k in ids]}
    else:
        ids = wanted
        key = {"source": "tar", "neurons": n, "layers": ids, "file": _cache.source_stamp(path)}
    group = {"source": str(path.resolve()), "neurons": n, "layers": wanted}
    if bias is None and n is not None and n not in OFFICIAL_BIAS:
        raise OptionError(f"N={n} has no official bias; pass bias=")
    mats = None
    if cache:
        hit = _cache.load_layers("network", key, group)
        if hit is not None:
            mats, ids_arr = hit
            ids = [int(k) for k in ids_arr]
    if mats is None:
        if kind == "dir":
            mats = _read_dir_layers(path, n, files, ids, progress)
        else:
            got, n_found, found = _read_tar_layers(path, n, ids, progress)
            n = n_found
            if ids is None:
                ids = _check_contiguous(kind, path, n, found)
            for k in ids:
                if k not in got:
                    raise _missing(kind, path, n, k, found)
            mats = [got[k] for k in ids]
        if cache:
            _cache.save_layers("network", key, mats, ids, group)
    n = mats[0].shape[0]
    if bias is None:
        if n not in OFFICIAL_BIAS:
            raise OptionError(f"N={n} has no official bias; pass bias=")
        bias = OFFICIAL_BIAS[n]
    return Network.from_layers(mats, bias)


# --- features and categories ---------------------------------------------------------------

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
        Number of samples. TSV: sample ids must lie in 1..samples; default the largest
        sample id. MatrixMarket: must equal the declared row count.
    cache : bool
        Reuse (or create) the binary cache entry for this file.
    progress : bool, optional
        Progress bar over bytes read (None: on a terminal, for large files).

    Returns
    -------
    scipy.sparse.csr_matrix, shape (samples, N), float64, canonical
        Row i is sample i+1.
    """
    if neurons is not None:
        neurons = positive_int(neurons, "neurons")
    if samples is not None:
        samples = positive_int(samples, "samples")
    p = Path(path)
    where = os.fspath(path)
    if not p.is_file():
        raise DataNotFoundError(f"{p}: no such file")
    key = {"file": _cache.source_stamp(p), "neurons": neurons, "samples": samples}
    group = {"source": key["file"]["path"], "neurons": neurons, "samples": samples}
    if cache:
        m = _cache.load_csr("features", key, group)
        if m is not None:
            return m
    size = p.stat().st_size
    bar = progress_bar(None, enabled=progress if progress is not None else (None if size > _PROGRESS_BYTES else False),
                       desc=f"reading {p.name}", unit="B")
    names = ("sample", "feature", "value")
    try:
        with open_data(p) as stream:
            if is_mtx(p):
                header, entries = read_mtx_entries(stream, where, names=names, on_block=bar.update)
                shape = (header.rows, header.cols)
                if neurons is not None and header.cols != neurons:
                    raise FormatError(f"declares {header.cols} features (columns), expected neurons={neurons}",
                                      path=where, line=header.lines)
                if samples is not None and header.rows != samples:
                    raise FormatError(f"declares {header.rows} samples (rows), expected samples={samples}",
                                      path=where, line=header.lines)
            else:
                entries = read_entries(stream, where, nint=2, want_value=True, names=names,
                                           bounds=(samples or 0, neurons or 0), on_block=bar.update)
                if entries.count == 0:
                    raise FormatError("empty file: expected lines 'sample<TAB>feature<TAB>value'", path=where)
                rows, cols = entries.ints
                shape = (samples or int(rows.max()), neurons or int(cols.max()))
    finally:
        bar.close()
    if entries.count == 0:
        m = sp.csr_matrix(shape, dtype=np.float64)
    else:
        rows, cols = entries.ints
        m = entries_to_csr(rows, cols, entries.values, shape, where, first_line=entries.first_line,
                           names=("sample", "feature"))
    if cache:
        _cache.save_csr("features", key, m, group)
    return m


def read_categories(path) -> np.ndarray:
    """Read truth categories: one id a line (official TSV) or a MatrixMarket vector.

    The MatrixMarket form is a coordinate pattern ``samples x 1`` column (or ``1 x
    samples`` row) vector whose entries are the ids. An empty TSV means no category.

    Returns
    -------
    numpy.ndarray of int64
        Sorted, unique, 1-based sample ids.

    Raises
    ------
    FormatError
        Malformed line, an id < 1, a duplicate id (file and line named).
    """
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
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        i = int(dup[0])
        a, b = sorted((int(order[i]), int(order[i + 1])))
        raise FormatError(f"duplicate id {int(s[i])} (first given on line {first + a})", path=where, line=first + b)
    return s


# --- locating the official layout ----------------------------------------------------------

@dataclass(frozen=True)
class OfficialPaths:
    """Where the official files of one problem are.

    Attributes
    ----------
    network : pathlib.Path
        The ``neuron{N}/`` folder or the ``neuron{N}.tar.gz`` archive.
    features : pathlib.Path or None
        ``sparse-images-{N}...`` (.tsv, .tsv.gz, .mtx, .mtx.gz).
    truth : pathlib.Path or None
        ``neuron{N}-l{L}-categories...`` (.tsv or .mtx).
    neurons : int
        N.
    layers : int or None
        L: as asked, else from the truth file name, else the number of layer files in
        the folder; None for an archive without a truth file (unknown without reading it).
    """

    network: Path
    features: Path | None
    truth: Path | None
    neurons: int
    layers: int | None


def _prefer_exact(cands: list[tuple[Path, str | None]], what: str, where: Path) -> Path | None:
    """Among files for one problem, take the exact official name, else the only variant."""
    if not cands:
        return None
    exact = [p for p, suffix in cands if not suffix]
    if exact:
        return sorted(exact, key=lambda p: (p.name.endswith(".gz"), p.name.endswith(".mtx")))[0]
    if len(cands) == 1:
        return cands[0][0]
    raise OptionError(f"{where}: several {what} files: {', '.join(sorted(p.name for p, _ in cands))}; "
                      "pass the file explicitly")


def find_official(directory, neurons: int | None = None, layers: int | None = None) -> OfficialPaths:
    """Locate the official layout in ``directory``.

    Recognized: ``neuron{N}/`` or ``neuron{N}.tar.gz``; ``sparse-images-{N}[-x].tsv[.gz]``
    or ``.mtx[.gz]``; ``neuron{N}-l{L}-categories[-x].tsv`` or ``.mtx`` (a name with a
    ``-x`` suffix, such as ``-first1200``, is used when it is the only one).

    Parameters
    ----------
    directory : str or os.PathLike
    neurons, layers : int, optional
        Choose N and L; inferred when only one candidate exists.

    Raises
    ------
    DataNotFoundError
        No network in ``directory`` (or none for the requested N).
    OptionError
        Several candidates and no choice given (the message lists them).
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataNotFoundError(f"{root}: no such directory")
    if neurons is not None:
        neurons = positive_int(neurons, "neurons")
    if layers is not None:
        layers = positive_int(layers, "layers")
    nets: dict[int, Path] = {}
    feats: dict[int, list] = {}
    truths: dict[tuple[int, int], list] = {}
    for e in sorted(root.iterdir()):
        if (m := _NET_DIR_RE.match(e.name)) and e.is_dir():
            nets[int(m.group(1))] = e
        elif (m := _NET_TAR_RE.match(e.name)) and e.is_file():
            nets.setdefault(int(m.group(1)), e)
        elif (m := _FEATURES_RE.match(e.name)) and e.is_file():
            feats.setdefault(int(m.group(1)), []).append((e, m.group(2)))
        elif (m := _TRUTH_RE.match(e.name)) and e.is_file():
            truths.setdefault((int(m.group(1)), int(m.group(2))), []).append((e, m.group(3)))
    if not nets:
        raise DataNotFoundError(f"{root}: no official network (expected neuron{{N}}/ or neuron{{N}}.tar.gz); "
                                f"found: {', '.join(sorted(e.name for e in root.iterdir())) or 'nothing'}")
    if neurons is None and len(nets) > 1:
        raise OptionError(f"{root}: networks for several sizes N = {sorted(nets)}; choose one with neurons=N")
    n = neurons if neurons is not None else next(iter(nets))
    if n not in nets:
        raise DataNotFoundError(f"{root}: no network for N={n} (found N = {sorted(nets)})")
    net = nets[n]
    depths = sorted(L for (nn, L) in truths if nn == n)
    if layers is None:
        if len(depths) > 1:
            raise OptionError(f"{root}: truth files for several depths L = {depths} (N={n}); choose one with layers=L")
        if depths:
            layers = depths[0]
        elif net.is_dir():
            found = _scan_layer_dir(net).get(n, {})
            layers = max(found) if found else None
    truth = _prefer_exact(truths.get((n, layers), []), "truth", root) if layers is not None else None
    features = _prefer_exact(feats.get(n, []), "features", root)
    return OfficialPaths(network=net, features=features, truth=truth, neurons=n, layers=layers)
