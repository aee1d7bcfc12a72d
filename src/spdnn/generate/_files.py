"""Where generated data is written: a staging folder for ``spdnn generate --out`` and the
shared folder of the generated-data cache, both safe against kills and concurrent runs.

* :class:`Staging`: everything is written into ``OUT/.spdnn-generate-{random}.tmp/``
  (same file system), then renamed into place; on any failure the staging folder is
  removed, so nothing partial is left in ``OUT``. The writer holds an exclusive
  ``flock`` on a file inside its staging folder, so a later run can tell the folder of
  a killed writer (lock free: removed at once) from one being written now (kept).
* :func:`cache_session`: a shared ``flock`` on ``DIR/.lock`` for as long as a process
  uses the cache. A process that finds no other holder removes every temporary file
  left in the folder (only a killed writer can have left them); otherwise only those
  older than an hour.

Where ``fcntl`` is missing (Windows) nothing is locked and only old leftovers are removed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .._atomic import remove_stale_temporaries

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None

__all__ = ["Staging", "cache_session", "STAGING_GLOB", "LOCK_NAME"]

#: Staging folders of :class:`Staging` in the output folder.
STAGING_GLOB = ".spdnn-generate-*.tmp"
#: The lock file of a staging folder and of the cache folder.
LOCK_NAME = ".lock"


def _try_lock(fh, exclusive: bool) -> bool:
    """Take an exclusive or shared flock on ``fh`` without waiting; False when held elsewhere
    (always False without fcntl: nobody can be shown absent)."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fh.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _old(path: Path, older_than_s: float = 3600.0) -> bool:
    try:
        return path.stat().st_mtime < time.time() - older_than_s
    except OSError:
        return False


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders in ``folder`` whose writer is gone: their lock is free
    (or, where that cannot be told, they are over an hour old)."""
    removed = []
    for stage in sorted(folder.glob(STAGING_GLOB)):
        try:
            with open(stage / LOCK_NAME, "r+b") as fh:
                stale = _try_lock(fh, exclusive=True) or (fcntl is None and _old(stage))
                if stale:
                    shutil.rmtree(stage, ignore_errors=True)
        except FileNotFoundError:
            # killed before it made its lock file, or making it right now: only the former is old
            stale = _old(stage)
            if stale:
                shutil.rmtree(stage, ignore_errors=True)
        except OSError:
            continue
        if stale:
            removed.append(stage)
    return removed


class Staging:
    """A staging folder inside ``out`` (created, with ``out``, on entry), renamed into place.

    Usage::

        with Staging(out) as stage:
            write(stage.path / "neuron1024" / ...)      # anything, any depth
            stage.commit(["neuron1024", "sparse-images-1024.tsv.gz", ...])

    :meth:`commit` moves the named entries of the staging folder to ``out`` in the order
    given (a folder replaces the folder of the same name as a whole: the old one is
    moved into the staging folder first, then removed with it; a file replaces the
    file). Leaving the block, normally or by an exception, removes the staging folder.
    Stale staging folders of killed writers are removed on entry.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path: Path | None = None
        self._lock = None

    def __enter__(self) -> "Staging":
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(self.out)
        remove_stale_temporaries(self.out)
        self.path = Path(tempfile.mkdtemp(prefix=".spdnn-generate-", suffix=".tmp", dir=self.out))
        self._lock = open(self.path / LOCK_NAME, "a+b")
        _try_lock(self._lock, exclusive=True)      # a fresh file: nobody else holds it
        return self

    def commit(self, names) -> list[Path]:
        """Move ``self.path / name`` to ``self.out / name`` for each name; return the destinations."""
        moved = []
        for name in names:
            src, dst = self.path / name, self.out / name
            if src.is_dir() and dst.is_dir() and not dst.is_symlink():
                os.replace(dst, self.path / f".old-{name}")     # removed with the staging folder
            os.replace(src, dst)
            moved.append(dst)
        return moved

    def __exit__(self, *exc) -> None:
        try:
            if self.path is not None:
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.close()
        return None


@contextlib.contextmanager
def cache_session(folder: Path) -> Iterator[OSError | None]:
    """Hold a shared lock on ``folder/.lock`` while using the cache in ``folder``.

    Removes stale temporary files first (all of them when no other process holds the
    lock, else those over an hour old). Yields None, or the OSError that kept the
    folder from being created or its lock file from being opened (a read-only or
    unwritable cache): the caller decides; nothing is raised here.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(folder / LOCK_NAME, "a+b")
    except OSError as exc:
        yield exc
        return
    with fh:
        alone = _try_lock(fh, exclusive=True)
        remove_stale_temporaries(folder, older_than_s=0.0 if alone else 3600.0)
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH)    # converts ours, or waits out a cleaner
        yield None
