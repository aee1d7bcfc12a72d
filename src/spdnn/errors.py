"""The spdnn exception family and the command line's exit codes.

Every error spdnn raises on purpose derives from :class:`SpdnnError`, so callers can
catch one class. Subclasses name the kind of failure; messages name the file, the
line or the argument, and what was expected. :class:`ExitCode` is the one convention
every ``spdnn`` command (and every benchmark script) exits with.
"""
from __future__ import annotations

import enum
import errno
import os

__all__ = [
    "SpdnnError",
    "FormatError",
    "DataNotFoundError",
    "ChecksumError",
    "DownloadError",
    "EngineUnavailableError",
    "OptionError",
    "DeviceMemoryError",
    "MemoryLimitError",
    "DiskFullError",
    "DISK_FULL_ERRNOS",
    "SpdnnWarning",
    "ExitCode",
    "format_bytes",
    "quote",
    "QUOTE_CHARS",
]


class ExitCode(enum.IntEnum):
    """Exit status of every ``spdnn`` command (documented in the README, "Errors").

    ``PASS`` 0: success (categories equal the truth, or nothing to check).
    ``FAIL`` 1: the categories differ from the truth.
    ``ERROR`` 2: a usage or data error, a full disk, an unwritable path: one line
    ``spdnn: error: ...`` on stderr.
    ``INTERNAL`` 3: an unexpected exception (a bug): one line with a hint to report it;
    ``SPDNN_DEBUG=1`` adds the traceback.
    ``INTERRUPTED`` 130: Ctrl-C (SIGINT), as a shell reports a process killed by SIGINT.
    ``PIPE_CLOSED`` 141: the reader of stdout went away (``spdnn run | head``), as a
    shell reports a process killed by SIGPIPE.
    ``TERMINATED`` 143: SIGTERM (``kill``, ``timeout``), handled like Ctrl-C.
    """

    PASS = 0
    FAIL = 1
    ERROR = 2
    INTERNAL = 3
    INTERRUPTED = 130
    PIPE_CLOSED = 141
    TERMINATED = 143


class SpdnnError(Exception):
    """Base class of every error spdnn raises on purpose."""


class SpdnnWarning(UserWarning):
    """Something the user should know that does not stop the work (a cache that cannot be
    written, say). The ``spdnn`` command shows each as one line ``spdnn: warning: ...``."""


class FormatError(SpdnnError, ValueError):
    """A data file is malformed.

    Parameters
    ----------
    message : str
        What was wrong and what was expected.
    path : str or os.PathLike, optional
        The file (for a member of an archive: ``archive.tar.gz:member``).
    line : int, optional
        1-based line number in that file.
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, line: int | None = None):
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "") + ": "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)


class DataNotFoundError(SpdnnError, FileNotFoundError):
    """A file or layer the run needs does not exist."""


class ChecksumError(SpdnnError):
    """A downloaded or cached file does not match its expected digest."""


class DownloadError(SpdnnError):
    """A download failed (network, HTTP status, truncated transfer)."""


class EngineUnavailableError(SpdnnError):
    """The engine asked for cannot run here (missing package or device); the message says why."""


class OptionError(SpdnnError, ValueError):
    """An option or argument has a value outside its contract."""


class DeviceMemoryError(SpdnnError, MemoryError):
    """The device does not have the memory the run needs, even after batching."""


class MemoryLimitError(SpdnnError, MemoryError):
    """The host does not have the memory a job needs (checked before it starts, see
    :mod:`spdnn.memory`); the message gives the need, what is available and what to change."""


#: errno values that mean "the device (or the user's quota) is full".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set()))


def format_bytes(count: int | float) -> str:
    """A byte count for people, in binary units with three significant digits (``'1.5 MiB'``)."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


#: Characters of a token from a file shown at most in a message (:func:`quote`).
QUOTE_CHARS = 40


def quote(token, limit: int = QUOTE_CHARS) -> str:
    """A token read from a file (or a JSON value), for a message: escaped and bounded.

    Bytes are shown byte for byte (``b'\xef\xbb'`` as ``'\xef\xbb'``: never a
    replacement character), a string as :func:`repr` shows it; at most ``limit``
    characters are quoted, followed by the full length when the token was cut, so a
    megabyte of NUL bytes gives a line of a few dozen characters.
    """
    if isinstance(token, (bytes, bytearray, memoryview)):
        raw = bytes(token[:limit])
        length, unit = len(token), "bytes"
        shown = ascii(raw.decode("latin-1"))
    else:
        text = str(token)
        length, unit = len(text), "characters"
        shown = repr(text[:limit])
    return shown if length <= limit else f"{shown}... ({length:,} {unit})"


class DiskFullError(SpdnnError, OSError):
    """No space left on the device (``ENOSPC``) or over the disk quota (``EDQUOT``)
    while writing ``path``; the writer removed what it had written.

    Also an :class:`OSError` (``errno`` ENOSPC or EDQUOT, ``filename`` the path), so code
    that treats any failed write as "not cached" keeps working.

    Parameters
    ----------
    path : str or os.PathLike
        The file that could not be written (the destination, never a temporary file).
    needed : int, optional
        Bytes the file needs (its full size when the writer knows it).
    written : int, optional
        Bytes written before the device filled up: a lower bound of what is needed
        when ``needed`` is unknown.
    free : int, optional
        Bytes free on that file system after the failure.
    code : int
        ``errno.ENOSPC`` (default) or ``errno.EDQUOT``.

    Attributes
    ----------
    path, needed, written, free
        As given.
    reason : str
        The message without the leading ``path:``.
    """

    def __init__(self, path: str | os.PathLike, *, needed: int | None = None, written: int | None = None,
                 free: int | None = None, code: int = errno.ENOSPC):
        path = os.fspath(path)
        what = "over the disk quota" if code == getattr(errno, "EDQUOT", None) else "no space left on device"
        OSError.__init__(self, code, what, path)
        self.path, self.needed, self.written, self.free = path, needed, written, free
        if needed is not None:
            space = f"needs {format_bytes(needed)}"
        elif written:
            space = f"needs more than the {format_bytes(written)} written before it filled up"
        else:
            space = "needs more space"
        if free is not None:
            space += f", {format_bytes(free)} free"
        self.reason = f"{what} ({space}); nothing was left behind"
        self.message = f"{path}: {self.reason}"

    def __str__(self) -> str:
        return self.message
