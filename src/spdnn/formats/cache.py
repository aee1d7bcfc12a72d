"""The binary cache: parsed data kept as memory-mappable arrays, keyed by the source's content.

Text is parsed once; later reads map the arrays instead. Everything lives under
``config.cache_dir()/"binary"/"v{CACHE_VERSION}"`` (honours ``SPDNN_CACHE_DIR``)::

    network-<key>/            one network: written in a scratch folder, renamed into place
        meta.json             N, layer ids, nnz, value and CRC-32s of each layer (written last)
        l00001.npy            layer 1: int32 (int64 when needed) [indptr (N+1), indices (nnz)]
        l00001.values.npy     float64 values, only when a layer's values are not all one number
    features-<key>.npz        the features .npz layout (:mod:`.npz`), with a ``__key__`` member
    sources/<h>.json          per request: each source file's state and SHA-256, and the entry made
    locks/<h>.lock            per request: one process builds an entry, the others wait for it
    tmp/<owner>/              a live process's scratch folder, locked by tmp/<owner>.lock

Keys. An entry's name is a hash of the SHA-256 of the source bytes (computed while
they are parsed) and of what selects the content (N, layers or samples asked for), so
an entry is never served for other bytes. A file's SHA-256 is reused without rereading
the file only while its device, inode, size, mtime and ctime are those recorded when
it was hashed. Every write to a file sets its ctime to the current time and no user
command can set it back, so a rewrite that keeps the size and the mtime (``cp -p``,
``rsync -t``, ``touch -d``) is always seen and the file is hashed again.

Sharing. All processes of a host (MPI ranks, concurrent runs) share the cache: the
first to ask for an entry builds it under the request's lock while the others wait,
then all of them map the same files (the page cache holds one copy).

Leftovers. A process killed while building leaves its scratch folder; its lock dies
with it, so the next process to open the cache removes the folder
(:func:`clean_stale`). Older cache versions are removed the same way. ``spdnn cache
info|clear`` reports and empties the cache.

Integrity. Every layer file's bytes carry a CRC-32 (in ``meta.json``), checked the
first time a process maps the layer (measured: mapping and reading a 65536-neuron
layer of 2.1 million edges, 8.7 MB, takes 6.6 ms with the check and 2.3 ms without,
so about 4 ms, 2 GB/s, once per layer and process); a mismatch (a file overwritten in
place, a damaged disk) is a :class:`~spdnn.errors.ChecksumError` naming the file, and
the entry is marked incomplete so that the next read parses the source again.

Failures. The cache is an optimisation: when it cannot be written (read-only or full
disk), readers fall back to a private temporary folder or to memory (see
:mod:`.official`); :class:`CacheUnavailable` signals it.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..config import cache_dir
from ..errors import ChecksumError, DataNotFoundError, SpdnnWarning
from ..network import LazyLayers
from .text import input_file

__all__ = ["CACHE_VERSION", "CacheUnavailable", "binary_cache_dir", "cache_root", "HashingReader", "file_state",
           "Request", "request", "open_layers", "clean_stale", "cache_info", "clear_cache",
           "scratch_dir", "private_folder", "LayerWriter", "fallback_chain"]

#: Bumped when the stored layout changes; folders of other versions are removed.
#: 3: ``meta.json`` holds the CRC-32 of every layer file.
CACHE_VERSION = 3

_LAYER_FILE = "l{:05d}.npy"
_VALUES_FILE = "l{:05d}.values.npy"
_META = "meta.json"


class CacheUnavailable(Exception):
    """The cache folder cannot be written (the reason is the cause); callers fall back."""


def binary_cache_dir() -> Path:
    """``cache_dir()/"binary"``: every version of the binary cache (not created here)."""
    return cache_dir() / "binary"


def cache_root() -> Path:
    """The folder of the current cache version (not created here)."""
    return binary_cache_dir() / f"v{CACHE_VERSION}"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


# --- hashing while reading ------------------------------------------------------------------

class HashingReader(io.RawIOBase):
    """A raw binary stream that updates a SHA-256 with every byte read from ``raw``.

    Wrap it in :class:`io.BufferedReader` (as :meth:`open`) for ``peek``/``read1``;
    :meth:`finish` reads what is left, so the digest covers the whole file.
    """

    def __init__(self, raw):
        super().__init__()
        self._raw = raw
        self._sha = hashlib.sha256()

    @classmethod
    def open(cls, path: str | os.PathLike) -> tuple[io.BufferedReader, "HashingReader"]:
        """(buffered stream, the hashing reader under it) for ``path``.

        Raises
        ------
        DataNotFoundError
            No such file, or not a regular file (:func:`spdnn.formats.text.input_file`).
        """
        try:
            raw = open(input_file(path), "rb", buffering=0)
        except FileNotFoundError:
            raise DataNotFoundError(f"{path}: no such file") from None
        hashing = cls(raw)
        return io.BufferedReader(hashing, buffer_size=1 << 20), hashing

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self._sha.update(memoryview(buffer)[:n])
        return n

    def finish(self) -> str:
        """Read the rest of the file (hashing it) and return the hex SHA-256 of all of it."""
        while block := self._raw.read(1 << 20):
            self._sha.update(block)
        return self._sha.hexdigest()

    def close(self) -> None:
        self._raw.close()
        super().close()


def file_state(path: str | os.PathLike) -> list[int]:
    """[device, inode, size, mtime_ns, ctime_ns] of a file: what a rewrite always changes."""
    st = os.stat(path)
    return [int(st.st_dev), int(st.st_ino), int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns)]


# --- locks and scratch folders --------------------------------------------------------------

def _ensure(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheUnavailable(f"{folder}: {exc.strerror or exc}") from exc
    return folder


@contextlib.contextmanager
def _flock(path: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created); ``on_wait`` is called once if another holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CacheUnavailable(f"{path}: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def scratch_dir(root: Path | None = None) -> Iterator[Path]:
    """A fresh folder under ``root/tmp`` owned by this process, removed on exit.

    Its lock file is locked before it is given its final name, so :func:`clean_stale`
    never sees an unlocked lock of a live process; a process killed meanwhile leaves an
    unlocked one, and its folder is removed by the next :func:`clean_stale`.
    """
    tmp = _ensure((root or cache_root()) / "tmp")
    owner = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(tmp / f".{owner}.locking", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp / f".{owner}.locking", tmp / f"{owner}.lock")
    except OSError as exc:
        raise CacheUnavailable(f"{tmp}: {exc.strerror or exc}") from exc
    folder = tmp / owner
    try:
        folder.mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(tmp / f"{owner}.lock")
        os.close(fd)


def clean_stale(root: Path | None = None) -> int:
    """Remove scratch folders of dead processes and folders of other cache versions.

    Returns the number of bytes freed. Never raises for an unwritable cache.
    """
    freed = 0
    base = binary_cache_dir() if root is None else root.parent
    current = cache_root() if root is None else root
    with contextlib.suppress(OSError):
        for old in base.iterdir():
            if old != current and (old.name.startswith("v") or old.suffix == ".npz"):
                freed += _size(old)
                _remove(old)
    tmp = current / "tmp"
    with contextlib.suppress(OSError):
        for lock in tmp.glob("*.lock"):
            try:
                fd = os.open(lock, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # its owner is alive
            try:
                folder = tmp / lock.stem
                freed += _size(folder)
                shutil.rmtree(folder, ignore_errors=True)
                lock.unlink(missing_ok=True)
            finally:
                os.close(fd)
        for leftover in tmp.glob(".*.locking"):  # killed between creating and naming its lock
            if time.time() - leftover.stat().st_mtime > 60:
                leftover.unlink(missing_ok=True)
    return freed


@functools.lru_cache(maxsize=None)
def _cleaned(root: str) -> bool:
    """:func:`clean_stale` once per process and cache folder."""
    clean_stale(Path(root))
    return True


# --- requests: the lock, the record of what was read and the entry made ---------------------

class Request:
    """One request for cached data (a source and a selection), held under its lock.

    Made by :func:`request`. ``fresh()`` gives the complete entry recorded for the
    current state of the source files, if any; otherwise the caller parses the files
    into ``scratch`` (hashing them) and calls :meth:`commit`.
    """

    def __init__(self, root: Path, kind: str, group: dict, files: Sequence[Path], scratch: Path):
        self.root = root
        self.kind = kind
        self.group = group
        self.files = [Path(f) for f in files]
        self.scratch = scratch
        self._record_path = root / "sources" / f"{_digest({'kind': kind, **group})}.json"
        self.states = [file_state(f) for f in self.files]
        try:
            self.record = json.loads(self._record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.record = None

    def fresh(self) -> Path | None:
        """The entry recorded for these exact file states, when it is complete; else None."""
        rec = self.record
        if not isinstance(rec, dict) or rec.get("states") != self.states:
            return None
        entry = self.root / str(rec.get("entry", ""))
        if rec.get("entry") and _complete(entry):
            return entry
        return None

    def discard(self, entry: Path) -> None:
        """Remove a damaged entry (it is rebuilt under the same name)."""
        _remove(entry)

    def commit(self, name_key: dict, built: Path, digests: Sequence[str]) -> Path:
        """Put ``built`` (a folder or file in ``scratch``) in place as the entry for ``name_key``.

        ``name_key`` must contain the content digests. If the entry exists already (the
        same bytes were read before, from here or another path), ``built`` is dropped.
        The record maps the file states seen before parsing to the entry, unless a file
        changed while it was read. A previous entry of this request is removed.
        """
        name = f"{self.kind}-{_digest({'kind': self.kind, **name_key})}{built.suffix}"
        entry = self.root / name
        if not _complete(entry):
            _remove(entry)
            try:
                os.rename(built, entry)
            except OSError as exc:
                if not _complete(entry):
                    raise CacheUnavailable(f"{entry}: {exc.strerror or exc}") from exc
        old = self.record.get("entry") if isinstance(self.record, dict) else None
        if old and old != name:
            _remove(self.root / str(old))
        states = [file_state(f) for f in self.files]
        record = {"states": self.states if states == self.states else None, "entry": name,
                  "sha256": list(digests), "files": [str(f) for f in self.files]}
        _write_json(self._record_path, record)
        return entry


@contextlib.contextmanager
def request(kind: str, group: dict, files: Sequence[Path], *,
            on_wait: Callable[[], None] | None = None) -> Iterator[Request]:
    """Lock the request ``(kind, group)`` and yield its :class:`Request`.

    Parameters
    ----------
    kind : str
        'network' or 'features' (prefix of the entry's name).
    group : dict
        JSON-serializable: the resolved source path and the selection (N, layers, ...).
    files : sequence of Path
        The source files whose state and content decide the entry.
    on_wait : callable, optional
        Called once when another process holds the lock (it is building the entry).

    Raises
    ------
    CacheUnavailable
        The cache folder cannot be created or locked.
    """
    root = _ensure(cache_root())
    _cleaned(str(root))
    for sub in ("locks", "sources"):
        _ensure(root / sub)
    with _flock(root / "locks" / f"{_digest({'kind': kind, **group})}.lock", on_wait=on_wait):
        with scratch_dir(root) as scratch:
            yield Request(root, kind, group, files, scratch)


def _complete(entry: Path) -> bool:
    return (entry / _META).is_file() if entry.suffix != ".npz" else entry.is_file()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CacheUnavailable(f"{path}: {exc.strerror or exc}") from exc


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(folder, name)).st_size
    return total


# --- network entries: one file per layer, memory-mapped on access ---------------------------

class LayerWriter:
    """Writes parsed layers into a network entry folder, one at a time, in any order.

    Parameters
    ----------
    folder : Path
        The entry folder (created); usually inside a :class:`Request`'s scratch folder.
    neurons : int, optional
        N of every layer (default: the first layer's).

    Raises
    ------
    CacheUnavailable
        A file cannot be written (read-only or full disk).
    """

    def __init__(self, folder: Path, neurons: int | None = None):
        self.folder = Path(folder)
        self.neurons = None if neurons is None else int(neurons)
        self.layers: dict[int, tuple[int, str | None]] = {}   # layer id -> (nnz, value or None)
        self.crc: dict[int, list] = {}                         # layer id -> [CRC-32 of indices, of values or None]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheUnavailable(f"{self.folder}: {exc.strerror or exc}") from exc

    def add(self, layer_id: int, w: sp.csr_matrix) -> None:
        """Store ``w`` (canonical CSR (N, N)) as layer ``layer_id`` (1-based)."""
        if self.neurons is None:
            self.neurons = int(w.shape[0])
        if w.shape != (self.neurons, self.neurons):
            raise ValueError(f"layer {layer_id}: shape {w.shape}, expected N={self.neurons}")
        itype = np.int32 if max(int(w.indptr[-1]), self.neurons) <= np.iinfo(np.int32).max else np.int64
        data = np.asarray(w.data, np.float64)
        bits = data.view(np.int64)
        uniform = data.size == 0 or bool(np.all(bits == bits[0]))
        packed = np.concatenate([np.asarray(w.indptr, itype), np.asarray(w.indices, itype)])
        try:
            np.save(self.folder / _LAYER_FILE.format(layer_id), packed)
            if not uniform:
                np.save(self.folder / _VALUES_FILE.format(layer_id), data)
        except OSError as exc:
            raise CacheUnavailable(f"{self.folder}: {exc.strerror or exc}") from exc
        # repr keeps a float64 exactly (and the sign of a zero, told apart by its bits above)
        self.layers[int(layer_id)] = (int(w.nnz), repr(float(data[0])) if data.size else "0.0") if uniform \
            else (int(w.nnz), None)
        self.crc[int(layer_id)] = [_crc(packed), None if uniform else _crc(data)]

    def finish(self, order: Sequence[int]) -> Path:
        """Write ``meta.json`` (the mark of a complete entry) for the layers ``order``; returns the folder."""
        order = [int(k) for k in order]
        meta = {"version": CACHE_VERSION, "neurons": self.neurons, "layer_ids": order,
                "nnz": [self.layers[k][0] for k in order], "values": [self.layers[k][1] for k in order],
                "crc32": [self.crc[k] for k in order]}
        try:
            (self.folder / _META).write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
        except OSError as exc:
            raise CacheUnavailable(f"{self.folder}: {exc.strerror or exc}") from exc
        return self.folder


def _crc(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order; a memory map is read, not copied)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


#: (entry folder, layer file) pairs whose CRC-32 this process has checked.
_verified: set[tuple[str, str]] = set()


class _LayerFiles:
    """``make(k)`` of :class:`~spdnn.network.LazyLayers` over a network entry folder.

    Each call maps the file of the k-th layer (0-based position in ``layer_ids``) and
    returns a fresh CSR matrix whose ``indptr`` and ``indices`` are views of the
    mapping (no copy; unmapped when the matrix is dropped), with its values mapped too
    or one ``np.full`` array. The first map of each file in a process checks its CRC-32
    against ``meta.json`` (:meth:`_check`).
    """

    def __init__(self, folder: Path, meta: dict):
        self.folder = Path(folder)
        self.neurons = int(meta["neurons"])
        self.layer_ids = [int(v) for v in meta["layer_ids"]]
        self.nnz = [int(v) for v in meta["nnz"]]
        self.values = [None if v is None else float(v) for v in meta["values"]]
        self.crc32 = [list(v) for v in meta["crc32"]]

    def _check(self, name: str, array: np.ndarray, expected) -> None:
        """Raise :class:`ChecksumError` naming the file unless ``array`` has the CRC-32 ``expected``.

        On a mismatch the entry's ``meta.json`` is removed: the entry no longer counts as
        complete, so the next read parses the source files again.
        """
        key = (str(self.folder), name)
        if key in _verified:
            return
        if _crc(array) != expected:
            with contextlib.suppress(OSError):
                (self.folder / _META).unlink()
            raise ChecksumError(f"{self.folder / name}: damaged binary cache file (its CRC-32 does not match the one "
                                f"recorded when it was written); the entry was dropped and the next run reads the "
                                f"source files again")
        _verified.add(key)

    def __call__(self, k: int) -> sp.csr_matrix:
        n, layer_id, nnz, value = self.neurons, self.layer_ids[k], self.nnz[k], self.values[k]
        try:
            packed = np.load(self.folder / _LAYER_FILE.format(layer_id), mmap_mode="r", allow_pickle=False)
            data = (np.full(nnz, value) if value is not None else
                    np.load(self.folder / _VALUES_FILE.format(layer_id), mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise CacheUnavailable(f"{self.folder}: layer {layer_id} of the binary cache cannot be read "
                                   f"({exc}); run `spdnn cache clear` and read again") from exc
        if packed.shape != (n + 1 + nnz,) or data.shape != (nnz,):
            raise CacheUnavailable(f"{self.folder}: layer {layer_id} of the binary cache is damaged; "
                                   f"run `spdnn cache clear` and read again")
        crc_packed, crc_values = self.crc32[k]
        self._check(_LAYER_FILE.format(layer_id), packed, crc_packed)
        if value is None:
            self._check(_VALUES_FILE.format(layer_id), data, crc_values)
        w = sp.csr_matrix((data, packed[n + 1:], packed[:n + 1]), shape=(n, n), copy=False)
        w.has_sorted_indices = True
        w.has_canonical_format = True
        return w


def read_meta(folder: Path) -> dict | None:
    """The ``meta.json`` of a network entry, or None when missing or unreadable."""
    try:
        meta = json.loads((Path(folder) / _META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    keys = ("neurons", "layer_ids", "nnz", "values", "crc32")
    if not isinstance(meta, dict) or any(k not in meta for k in keys) or meta.get("version") != CACHE_VERSION:
        return None
    crc = meta["crc32"]
    if not isinstance(crc, list) or len(crc) != len(meta["layer_ids"]) or not all(
            isinstance(c, list) and len(c) == 2 and isinstance(c[0], int) for c in crc):
        return None
    return meta


def open_layers(folder: Path, *, owned: bool = False) -> tuple[LazyLayers, list[int]] | None:
    """The layers of a complete network entry as a lazy, memory-mapped sequence.

    Every layer file's header is checked against ``meta.json`` first (a truncated or
    foreign file makes the entry count as absent).

    Parameters
    ----------
    folder : Path
    owned : bool
        True for a private temporary folder: it is removed once the sequence (and every
        truncated view of it) is garbage-collected, or at exit.

    Returns
    -------
    (LazyLayers, layer ids) or None
        None when the entry is incomplete or damaged.
    """
    meta = read_meta(folder)
    if meta is None:
        return None
    make = _LayerFiles(folder, meta)
    try:
        for layer_id, nnz, value in zip(make.layer_ids, make.nnz, make.values):
            files = [(_LAYER_FILE.format(layer_id), make.neurons + 1 + nnz)]
            if value is None:
                files.append((_VALUES_FILE.format(layer_id), nnz))
            for name, length in files:
                with open(Path(folder) / name, "rb") as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(fh)
                    if shape != (length,) or os.fstat(fh.fileno()).st_size != fh.tell() + length * dtype.itemsize:
                        return None
    except (OSError, ValueError):
        return None
    if owned:
        weakref.finalize(make, shutil.rmtree, str(folder), True)
    layers = LazyLayers(make, len(make.nnz), layer_nnz=make.nnz)
    return layers, make.layer_ids


@contextlib.contextmanager
def private_folder() -> Iterator[Path]:
    """A temporary folder outside the cache (for ``cache=False`` or an unwritable cache).

    Removed on error; on success the caller owns it (see ``open_layers(owned=True)``).
    """
    try:
        folder = Path(tempfile.mkdtemp(prefix="spdnn-"))
    except OSError as exc:
        raise CacheUnavailable(f"{tempfile.gettempdir()}: {exc.strerror or exc}") from exc
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


_warned: set[str] = set()


def fallback_chain(steps: Sequence[tuple[str, Callable[[], object]]]):
    """The result of the first step that does not raise :class:`CacheUnavailable`.

    ``steps`` are (where the data go, callable) pairs, e.g. the binary cache, then a
    private temporary folder, then memory (whose step never raises it). Each fallback
    is announced once per process by a :class:`~spdnn.errors.SpdnnWarning` naming the reason.
    """
    for i, (where, step) in enumerate(steps):
        try:
            return step()
        except CacheUnavailable as exc:
            if i + 1 == len(steps):
                raise
            message = f"spdnn: cannot write {where} ({exc}); reading into {steps[i + 1][0]} instead"
            if message not in _warned:
                _warned.add(message)
                warnings.warn(message, SpdnnWarning, stacklevel=3)
    raise CacheUnavailable("no step given")


# --- reporting and clearing ----------------------------------------------------------------

def cache_info() -> dict:
    """Sizes of the cache folders: binary (parsed official data) and generated data.

    Returns
    -------
    dict
        ``path``, ``binary_bytes``, ``generated_bytes``, ``total_bytes``,
        ``network_entries``, ``features_entries`` (of the current binary version).
    """
    root = cache_dir()
    binary = binary_cache_dir()
    current = cache_root()
    info = {"path": str(root), "binary_bytes": _size(binary) if binary.exists() else 0,
            "generated_bytes": _size(root / "generated") if (root / "generated").exists() else 0,
            "network_entries": 0, "features_entries": 0}
    if current.is_dir():
        for entry in current.iterdir():
            if entry.name.startswith("network-") and _complete(entry):
                info["network_entries"] += 1
            elif entry.name.startswith("features-") and _complete(entry):
                info["features_entries"] += 1
    info["total_bytes"] = info["binary_bytes"] + info["generated_bytes"]
    return info


def clear_cache(*, binary: bool = True, generated: bool = True) -> int:
    """Remove the cached data; returns the bytes freed.

    Scratch folders of live processes are left alone (they remove their own).
    """
    freed = 0
    targets = []
    if binary and binary_cache_dir().exists():
        for version in binary_cache_dir().iterdir():
            if version == cache_root():
                targets += [e for e in version.iterdir() if e.name not in ("tmp", "locks")]
            else:
                targets.append(version)
        freed += clean_stale()
    if generated and (cache_dir() / "generated").exists():
        targets += list((cache_dir() / "generated").iterdir())
    for target in targets:
        freed += _size(target)
        _remove(target)
    return freed
