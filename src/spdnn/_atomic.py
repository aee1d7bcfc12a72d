"""Atomic file writes: write to a temporary file in the same directory, then rename.

A reader never sees a half-written file: either the old file (or none) or the complete
new one. On error the temporary file is removed and nothing is left at the target.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_open", "atomic_write_bytes"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success ``os.replace`` it into place.

    The parent directory is created if needed. If the body raises, the temporary file
    (if any) is removed and the exception propagates; ``path`` is left untouched.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination.

    Yields
    ------
    pathlib.Path
        A fresh, not yet existing path in the same directory (same file system, so the
        rename is atomic). The body must create it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, compress: bool | None = None,
                encoding: str = "ascii") -> Iterator[IO]:
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
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    with atomic_path(path) as tmp:
        if compress:
            # mtime=0 keeps the output byte-identical across runs.
            raw = open(tmp, "wb")
            try:
                gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
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
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
