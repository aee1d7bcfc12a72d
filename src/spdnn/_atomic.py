"""Atomic file writes: write to a temporary file in the same directory, fsync, rename.

A reader never sees a half-written file: either the old file (or none) or the complete
new one. On any failure (an exception, Ctrl-C) the temporary file is removed and
nothing is left at the target, and the error names the target, never the temporary
file: a full disk (``ENOSPC``/``EDQUOT``) becomes :class:`~spdnn.errors.DiskFullError`
with the space needed and free; any other :class:`OSError` about the temporary file is
re-raised about the target.

Targets that are not regular files. A symlink is written through: the file it points
to is replaced atomically and the link is kept (:func:`output_target`). A device, a
FIFO or another special file is written in place (opened for writing: no temporary
file, no rename, no ``chmod``), so ``/dev/null`` or a named pipe stays what it is. A
file that is replaced keeps its permission bits (a mode of 600 is never widened).

Temporary files are named ``.{target name}.{random}.tmp`` (:data:`TEMP_GLOB`); a
process killed with SIGKILL cannot remove its own, so :func:`remove_stale_temporaries`
clears old ones from a folder.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import DISK_FULL_ERRNOS, DiskFullError

__all__ = ["output_target", "OutputTarget", "atomic_path", "atomic_open", "atomic_write_bytes", "remove_stale_temporaries", "TEMP_GLOB"]

#: Glob pattern of the temporary files of this module (in the target's folder).
TEMP_GLOB = ".*.tmp"


class OutputTarget:
    """Where a write to a path the user gave really goes (see :func:`output_target`).

    Attributes
    ----------
    path : pathlib.Path
        The file written: the path itself, or the file a symlink points to.
    in_place : bool
        A device, FIFO or other special file: written in place, never replaced.
    mode : int or None
        Permission bits of an existing regular file (kept by the replacement), else None.
    """

    __slots__ = ("path", "in_place", "mode")

    def __init__(self, path: Path, in_place: bool, mode: int | None):
        self.path, self.in_place, self.mode = path, in_place, mode


def output_target(path: str | os.PathLike) -> OutputTarget:
    """Resolve an output path: follow symlinks (a dangling one names the file to create).

    Raises
    ------
    OSError
        ``ELOOP`` for a symlink loop (named as such), ``EISDIR`` for a directory, or the
        error of ``stat`` (naming ``path``).
    """
    given = Path(path)
    try:
        st = os.stat(given)
    except (FileNotFoundError, NotADirectoryError):
        st = None  # a new file (creating it, or its folder, reports what is wrong)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "symbolic link loop (the link points back to itself)", os.fspath(given)) from None
        raise
    real = Path(os.path.realpath(given)) if given.is_symlink() else given
    if st is None:
        return OutputTarget(real, False, None)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", os.fspath(given))
    if not stat.S_ISREG(st.st_mode):
        return OutputTarget(given, True, None)
    return OutputTarget(real, False, stat.S_IMODE(st.st_mode))


def _free_bytes(folder: Path) -> int | None:
    """Bytes available to this user in ``folder``'s file system (None when unknown)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fsync(path: Path, *, directory: bool = False) -> None:
    """Flush ``path`` to the device; for a directory (the rename) best effort only,
    since some file systems refuse to open or sync one."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _is_temporary(name, target: Path) -> bool:
    """Whether ``name`` is one of this module's temporary files for ``target``."""
    p = Path(os.fsdecode(name))
    return p.parent == target.parent and p.name.startswith(f".{target.name}.") and p.name.endswith(".tmp")


def _about_target(exc: OSError, target: Path, *, written: int, size: int | None) -> OSError:
    """``exc`` restated about ``target``: DiskFullError for a full device, else the same
    kind of OSError naming ``target`` where it named a temporary file or nothing."""
    if isinstance(exc, DiskFullError):
        return exc
    if exc.errno in DISK_FULL_ERRNOS:
        return DiskFullError(target, needed=size, written=written, free=_free_bytes(target.parent),
                             code=exc.errno)
    if exc.errno is not None and (exc.filename is None or _is_temporary(exc.filename, target)):
        try:
            return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(target))
        except TypeError:  # an OSError subclass with another constructor
            return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(target))
    return exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and ``os.replace`` it into place.

    The parent directory is created if needed. If the body raises (any exception,
    KeyboardInterrupt included), the temporary file is removed and the exception
    propagates, restated about ``path`` when it is an :class:`OSError` (see the module
    docstring); ``path`` is left untouched.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination.
    size : int, optional
        Bytes the complete file will take, when the writer knows it: checked against
        the free space before anything is written (:class:`~spdnn.errors.DiskFullError`
        at once rather than half-way) and named in the disk-full message.

    Yields
    ------
    pathlib.Path
        A fresh, not yet existing path in the same directory (same file system, so the
        rename is atomic). The body must create it. For a symlink, the temporary file
        is beside the file the link points to, which it replaces (the link stays). For
        a device, FIFO or other special file, ``path`` itself: the body writes it in
        place and nothing is renamed, synced or removed.
    """
    resolved = output_target(path)
    if resolved.in_place:
        try:
            yield resolved.path
        except OSError as exc:
            restated = _about_target(exc, resolved.path, written=0, size=size)
            if restated is exc:
                raise
            raise restated from exc
        return
    target = resolved.path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if size is not None:
            free = _free_bytes(target.parent)
            if free is not None and free + _size(target) < size:
                raise DiskFullError(target, needed=size, free=free)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        tmp.unlink()
    except OSError as exc:
        restated = _about_target(exc, target, written=0, size=size)
        if restated is exc:
            raise
        raise restated from exc
    try:
        yield tmp
        if resolved.mode is not None:
            os.chmod(tmp, resolved.mode)  # a replaced file keeps its permission bits
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        written = _size(tmp)
        with contextlib.suppress(OSError):
            tmp.unlink()
        restated = _about_target(exc, target, written=written, size=size) if isinstance(exc, OSError) else exc
        if restated is exc:
            raise
        raise restated from exc
    _fsync(target.parent, directory=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, compress: bool | None = None,
                encoding: str = "ascii", size: int | None = None, compresslevel: int = 6) -> Iterator[IO]:
    """Open ``path`` for writing atomically; gzip when ``compress`` (default: name ends in .gz).

    Parameters
    ----------
    path : str or os.PathLike
        Final destination.
    mode : {"w", "wb"}
        Text or binary.
    compress : bool, optional
        Write gzip; ``None`` means "if the name ends in ``.gz``".
    encoding : str
        Text encoding (text mode only).
    size : int, optional
        Bytes the complete file will take on disk, as in :func:`atomic_path`.
    compresslevel : int
        gzip level, 1 (fastest) to 9 (smallest).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    with atomic_path(path, size=size) as tmp:
        if compress:
            # mtime=0 keeps the output byte-identical across runs.
            raw = open(tmp, "wb")
            try:
                gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel)
                try:
                    if mode == "w":
                        with io.TextIOWrapper(gz, encoding=encoding, newline="\n") as fh:
                            yield fh
                    else:
                        yield gz
                finally:
                    gz.close()
            finally:
                raw.close()
        else:
            kwargs = {"encoding": encoding, "newline": "\n"} if mode == "w" else {}
            with open(tmp, mode, **kwargs) as fh:
                yield fh


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (no compression)."""
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def remove_stale_temporaries(folder: str | os.PathLike, *, older_than_s: float = 3600.0) -> list[Path]:
    """Remove this module's temporary files in ``folder`` last modified over ``older_than_s`` ago.

    Such files are left only by a process killed without a chance to clean up (SIGKILL,
    power loss); the age threshold spares those of writers running now. Files that
    vanish or cannot be removed meanwhile are skipped.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    removed = []
    limit = time.time() - older_than_s
    for tmp in Path(folder).glob(TEMP_GLOB):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < limit:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed
