"""The spdnn exception family.

Every error spdnn raises on purpose derives from :class:`SpdnnError`, so callers can
catch one class. Subclasses name the kind of failure; messages name the file, the
line or the argument, and what was expected.
"""
from __future__ import annotations

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
]


class SpdnnError(Exception):
    """Base class of every error spdnn raises on purpose."""


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
