"""Reading an official network: layer files parsed one at a time into the binary cache.

Sources (docs/challenge.md, Formats): a folder of ``n{N}-l{k}.tsv[.gz]``, its parent
holding ``neuron{N}/`` or ``neuron{N}.tar.gz``, or the archive itself (read member by
member, never extracted).

Streaming. Each layer is parsed, written to the binary cache (:mod:`.cache`) and
dropped before the next is read, so reading holds one layer at a time whatever L. The
network handed to engines is a :class:`~spdnn.network.LazyLayers` that memory-maps
layer k from the cache when asked for it; later reads of the same bytes only map the
files. Without a usable cache (``cache=False``, or a read-only or full cache folder)
the layers go to a private temporary folder, removed with the network; only when that
fails too are they held in memory.
"""
from __future__ import annotations

import functools
import gzip
import re
import sys
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._progress import progress_bar
from ..errors import DataNotFoundError, FormatError, OptionError
from ..network import OFFICIAL_BIAS, Network
from ..options import optional_positive_int, positive_int
from . import cache as _cache
from .text import COMPRESSION_ERRORS, compression_failure, compression_problem, input_file, wrap_gzip
from .tsv import parse_layer_stream

__all__ = ["read_network", "LAYER_NAME", "NETWORK_DIR_NAME", "NETWORK_TAR_NAME", "scan_layer_dir"]

#: A layer file ``n{N}-l{k}.tsv[.gz]`` (also as an archive member path).
LAYER_NAME = re.compile(r"(?:^|/)n(\d+)-l(\d+)\.tsv(\.gz)?$")
#: The folder ``neuron{N}`` of one network's layer files.
NETWORK_DIR_NAME = re.compile(r"^neuron(\d+)$")
#: The archive ``neuron{N}.tar.gz`` (or .tgz, .tar).
NETWORK_TAR_NAME = re.compile(r"^neuron(\d+)\.(tar\.gz|tgz|tar)$")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def scan_layer_dir(directory: Path) -> dict[int, dict[int, Path]]:
    """{N: {k: path}} of the layer files ``n{N}-l{k}.tsv[.gz]`` in ``directory``.

    Raises
    ------
    FormatError
        Two files for one layer (``n64-l03.tsv`` beside ``n64-l3.tsv``, or ``n64-l3.tsv``
        beside ``n64-l3.tsv.gz``): both are named, since either could be the one meant.
    DataNotFoundError
        A layer's name on something that is not a regular file (a dangling symlink, a
        loop, a folder, a FIFO: :func:`~spdnn.formats.text.input_file`).
    """
    found: dict[int, dict[int, Path]] = {}
    for entry in sorted(directory.iterdir()):
        m = LAYER_NAME.search(entry.name)
        if not m:
            continue
        input_file(entry)
        layers = found.setdefault(int(m.group(1)), {})
        k = int(m.group(2))
        if k in layers:
            raise FormatError(f"two files for layer {k} of N={int(m.group(1))}: {layers[k].name} and {entry.name}; "
                              f"keep one of them", path=directory)
        layers[k] = entry
    return found


# --- resolving a source --------------------------------------------------------------------

@dataclass(frozen=True)
class _Source:
    """A network source: a folder of layer files (``files``: {k: path}) or an archive."""

    kind: str                 # 'dir' or 'tar'
    path: Path
    neurons: int | None       # None: an archive whose name does not say
    files: dict | None = None

    def missing(self, k: int, found: Sequence[int], others: Iterable[int] = ()) -> DataNotFoundError:
        """The error for a missing layer ``k``; ``others``: sizes N of the layers skipped (another N)."""
        n = self.neurons if self.neurons is not None else "{N}"
        name = f"n{n}-l{k}.tsv"
        where = f"{self.path}/{name}" if self.kind == "dir" else f"{self.path}: member neuron{n}/{name}"
        other = sorted(set(others))
        held = f"; it holds layers of N = {', '.join(map(str, other))}" if other and not found else ""
        return DataNotFoundError(f"missing layer file {where} (layers found: {_ranges(found) or 'none'}{held})")

    def contiguous(self, found: Sequence[int]) -> list[int]:
        """All found layers must be 1..L; returns [1..L]."""
        if not found:
            raise DataNotFoundError(f"{self.path}: no layer files n{{N}}-l{{k}}.tsv found")
        have = set(found)
        for k in range(1, max(found) + 1):
            if k not in have:
                raise self.missing(k, found)
        return list(range(1, max(found) + 1))


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


def _pick(candidates: Iterable[int], neurons: int | None, what: str, where: Path) -> int:
    cands = sorted(set(candidates))
    if neurons is not None:
        if neurons not in cands:
            raise DataNotFoundError(f"{where}: no {what} for N={neurons} (found N = {cands or 'none'})")
        return neurons
    if len(cands) > 1:
        raise OptionError(f"{where}: {what} for several sizes N = {cands}; pass neurons=N to choose")
    return cands[0]


def _resolve_source(source, neurons: int | None) -> _Source:
    path = Path(source)
    if not path.exists():
        raise DataNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        if not path.name.lower().endswith(_TAR_SUFFIXES):
            raise OptionError(f"{path}: expected a directory of n{{N}}-l{{k}}.tsv files or a neuron{{N}}.tar.gz archive")
        m = NETWORK_TAR_NAME.match(path.name)
        n = int(m.group(1)) if m else None
        if neurons is not None and n is not None and n != neurons:
            raise OptionError(f"{path}: archive of N={n}, but neurons={neurons}")
        return _Source("tar", path, neurons if neurons is not None else n)
    found = scan_layer_dir(path)
    if found:
        n = _pick(found, neurons, "layer files", path)
        return _Source("dir", path, n, found[n])
    subdirs = {int(m.group(1)): e for e in path.iterdir() if (m := NETWORK_DIR_NAME.match(e.name)) and e.is_dir()}
    tars = {int(m.group(1)): e for e in path.iterdir() if (m := NETWORK_TAR_NAME.match(e.name)) and e.is_file()}
    if not subdirs and not tars:
        raise DataNotFoundError(f"{path}: no network found (expected n{{N}}-l{{k}}.tsv files, a neuron{{N}}/ "
                                f"folder or a neuron{{N}}.tar.gz archive)")
    n = _pick(list(subdirs) + list(tars), neurons, "networks", path)
    return _resolve_source(subdirs[n] if n in subdirs else tars[n], n)


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


# --- parsing, one layer at a time ----------------------------------------------------------

Sink = Callable[[int, sp.csr_matrix], None]


def _parse_dir(src: _Source, ids: list[int], add: Sink, progress) -> list[str]:
    """Parse layer files ``ids`` in order, handing each to ``add``; returns their SHA-256s."""
    digests = []
    for k in progress_bar(ids, enabled=progress, desc=f"reading neuron{src.neurons}", unit="layer"):
        path = src.files[k]
        buffered, hashing = _cache.HashingReader.open(path)
        with buffered:
            w = parse_layer_stream(wrap_gzip(buffered), str(path), src.neurons)
            digests.append(hashing.finish())
        add(k, w)
        del w
    return digests


class _EndTracking(tarfile.TarInfo):
    """TarInfo that records on the archive why reading headers stopped (``tar.spdnn_end``).

    Python's tarfile ends the iteration quietly at a damaged or cut header after the
    first member, which would drop the layers behind it without a word."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            tar.spdnn_end = exc
            raise


def _check_archive_end(tar: tarfile.TarFile, path: Path, current: str) -> None:
    """Raise FormatError unless the member headers ended with the end-of-archive (zero) block."""
    end = getattr(tar, "spdnn_end", None)
    if isinstance(end, tarfile.EOFHeaderError):
        return
    why = {tarfile.EmptyHeaderError: "the data stop without the end-of-archive blocks",
           tarfile.TruncatedHeaderError: "a member header is cut short",
           tarfile.InvalidHeaderError: "a member header is damaged (bad checksum)"}.get(
        type(end), f"{type(end).__name__}: {end}")
    raise FormatError(f"archive is truncated or corrupt after member {current}: {why}; the members behind it "
                      f"cannot be read", path=path)


def _parse_tar(src: _Source, wanted: list[int] | None, add: Sink,
               progress) -> tuple[int | None, list[int], str, set[int]]:
    """Parse the layer members of an archive (those in ``wanted``, or all), handing each to ``add``.

    The whole archive is read (members not wanted are skipped unparsed), so that the
    SHA-256 covers every byte and the gzip CRC is checked: damaged compressed data are
    reported as a corrupt archive, even when they first show as a bad line.

    Returns (N or None, layer ids found, SHA-256 of the archive, the sizes N of layer
    members skipped because they are of another N). A layer held twice is an error
    naming both members (``tar x`` would keep the last copy, a stream sees the first).
    """
    path = src.path
    neurons = src.neurons
    found: list[int] = []
    first_member: dict[int, str] = {}
    sizes: set[int] = set()
    others: set[int] = set()    # sizes N of layer members skipped (another N than asked)
    current = "the first member"
    bar = progress_bar(None, enabled=progress, desc=f"reading {path.name}", total=len(wanted) if wanted else None,
                       unit="layer")
    buffered, hashing = _cache.HashingReader.open(path)
    compressed = gzip.GzipFile(fileobj=buffered, mode="rb") if buffered.peek(2)[:2] == b"\x1f\x8b" else None
    try:
        with buffered, tarfile.open(fileobj=compressed or buffered, mode="r|", tarinfo=_EndTracking) as tar:
            try:
                for member in tar:
                    m = LAYER_NAME.search(member.name)
                    if not m or not member.isfile():
                        continue
                    n, k = int(m.group(1)), int(m.group(2))
                    if neurons is not None and n != neurons:
                        others.add(n)
                        continue
                    sizes.add(n)
                    if len(sizes) > 1:
                        raise OptionError(f"{path}: layers of several sizes N = {sorted(sizes)}; pass neurons=N")
                    current = member.name
                    if k in first_member:
                        # tar x keeps the last copy, a streaming reader would see the first: refuse to guess
                        raise FormatError(f"holds layer {k} twice: members {first_member[k]} and {member.name}; "
                                          f"keep one of them", path=path)
                    first_member[k] = member.name
                    found.append(k)
                    if wanted is not None and k not in wanted:
                        continue
                    w = parse_layer_stream(wrap_gzip(tar.extractfile(member)), f"{path}:{member.name}", n)
                    add(k, w)
                    del w
                    bar.update(1)
            except FormatError as exc:
                # garbage inflated from damaged bytes shows first as a bad line: check the CRC
                failure = compression_failure(compressed) if exc.line is not None and compressed else None
                if failure is None:
                    raise
                raise FormatError(f"{compression_problem(failure, 'archive')}; member {current} is unreadable at or "
                                  f"before line {exc.line}", path=path) from None
            _check_archive_end(tar, path, current)
            if compressed is not None:
                while compressed.read(1 << 22):  # the end of the archive, and the CRC check
                    pass
            digest = hashing.finish()
    except COMPRESSION_ERRORS as exc:
        raise FormatError(f"{compression_problem(exc, 'archive')}, after or in member {current}", path=path) from None
    except tarfile.TarError as exc:
        raise FormatError(f"archive is truncated or corrupt after or in member {current} "
                          f"({type(exc).__name__}: {exc})", path=path) from None
    finally:
        bar.close()
    n = neurons if neurons is not None else (next(iter(sizes)) if sizes else None)
    return n, found, digest, others


def _parse(src: _Source, ids: list[int] | None, add: Sink, progress) -> tuple[int, list[int], list[str]]:
    """Parse the source's layers into ``add``; returns (N, layer ids in order, SHA-256s of the files)."""
    if src.kind == "dir":
        return src.neurons, ids, _parse_dir(src, ids, add, progress)
    n, found, digest, others = _parse_tar(src, ids, add, progress)
    if not found and others:
        raise _Source(src.kind, src.path, n).missing(ids[0] if ids else 1, found, others)
    order = ids if ids is not None else src.contiguous(found)
    for k in order:
        if k not in found:
            raise _Source(src.kind, src.path, n).missing(k, found, others)
    return n, order, [digest]


# --- where the parsed layers go: the cache, a private folder, memory --------------------------

def _into_cache(src: _Source, ids: list[int] | None, progress):
    group = {"source": str(src.path.resolve()), "neurons": src.neurons, "layers": ids}
    files = [src.files[k] for k in ids] if src.kind == "dir" else [src.path]

    def waiting():
        if progress is not False:
            print(f"spdnn: waiting for another process to finish caching {src.path}", file=sys.stderr)

    with _cache.request("network", group, files, on_wait=waiting) as req:
        entry = req.fresh()
        opened = _cache.open_layers(entry) if entry is not None else None
        if opened is None:
            if entry is not None:
                req.discard(entry)
            writer = _cache.LayerWriter(req.scratch / "network", src.neurons)
            n, order, digests = _parse(src, ids, writer.add, progress)
            writer.finish(order)
            entry = req.commit({"sha256": digests, "neurons": n, "layers": order}, writer.folder, digests)
            opened = _cache.open_layers(entry)
        return opened


def _into_private_folder(src: _Source, ids: list[int] | None, progress):
    with _cache.private_folder() as folder:
        writer = _cache.LayerWriter(folder, src.neurons)
        _, order, _ = _parse(src, ids, writer.add, progress)
        writer.finish(order)
        return _cache.open_layers(folder, owned=True)


def _into_memory(src: _Source, ids: list[int] | None, progress):
    got: dict[int, sp.csr_matrix] = {}
    _, order, _ = _parse(src, ids, lambda k, w: got.setdefault(k, w), progress)
    return [got[k] for k in order], order


def read_network(source, *, neurons: int | None = None, layers=None, bias=None, cache: bool = True,
                 progress: bool | None = None) -> Network:
    """Read an official network, one layer at a time, into a lazy memory-mapped network.

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
        Use the binary cache: reuse the entry for these bytes, or parse into a new one
        (see :mod:`spdnn.formats.cache`). False parses into a private temporary folder.
    progress : bool, optional
        Progress bar over layers (None: when stderr is a terminal).

    Returns
    -------
    Network
        ``layers[k]`` is the file's layer ``layers[k]`` (1-based), canonical float64 CSR
        (N, N), made on access (:class:`~spdnn.network.LazyLayers`) from memory-mapped
        files; a plain list only when no folder could be written (then a
        :class:`~spdnn.errors.SpdnnWarning` says so).

    Raises
    ------
    DataNotFoundError
        No network, or a missing layer file (named).
    FormatError
        Malformed layer content (file and line), or a truncated/corrupt archive.
    OptionError
        Ambiguous size, or N not official and ``bias`` not given.
    """
    neurons = optional_positive_int(neurons, "neurons")
    wanted = _layer_numbers(layers)
    src = _resolve_source(source, neurons)
    ids = wanted
    if src.kind == "dir":
        ids = wanted if wanted is not None else src.contiguous(list(src.files))
        for k in ids:
            if k not in src.files:
                raise src.missing(k, list(src.files))
    if bias is None and src.neurons is not None and src.neurons not in OFFICIAL_BIAS:
        raise OptionError(f"N={src.neurons} has no official bias; pass bias=")
    steps = [("the binary cache", _into_cache)] if cache else []
    steps += [("a temporary folder", _into_private_folder), ("memory", _into_memory)]
    mats, _ = _cache.fallback_chain([(where, functools.partial(step, src, ids, progress)) for where, step in steps])
    n = mats[0].shape[0]
    if bias is None:
        if n not in OFFICIAL_BIAS:
            raise OptionError(f"N={n} has no official bias; pass bias=")
        bias = OFFICIAL_BIAS[n]
    return Network.from_layers(mats, bias)
