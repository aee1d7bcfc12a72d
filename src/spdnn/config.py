"""Detection of optional dependencies, so that spdnn imports on any machine.

Nothing here imports CuPy or mpi4py at module import time; each function tries once
and caches the answer together with the reason it failed.

Documented environment overrides (validated once, here):

``SPDNN_CACHE_DIR``
    Directory of the binary cache and of generated data (default
    ``$XDG_CACHE_HOME/spdnn`` or ``~/.cache/spdnn``).
``SPDNN_DISABLE_GPU``
    ``1`` hides CUDA from engine auto-selection (the ``cuda`` engine can still be named).
``SPDNN_CUDA_DEBUG``
    ``1`` synchronizes and checks every kernel launch of the CUDA engine.
``SPDNN_CUDA_MEMORY_CAP``
    Device bytes the CUDA engine may use in all (weights, activations, run arrays) when
    its ``memory_cap_bytes`` is not given: an integer, or a number with the suffix K, M,
    G or T (powers of 1024), e.g. ``71G``. Default: 90% of the free device memory. Lets a
    larger card behave like a smaller one (the batching of ``spdnn bench`` at N = 65536).
``SPDNN_MERGE_BATCHES``
    ``0`` makes :meth:`spdnn.engines.base.Engine.run` run every batch through all layers
    instead of merging the survivors of all batches before the tail (default ``1``; for
    comparing the two on a device).
``SPDNN_DEBUG``
    ``1`` prints the traceback (with its causes) before the one-line error of a
    ``spdnn`` command (README, "Errors and exit status").
"""
from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path

from .errors import OptionError

__all__ = ["cache_dir", "cupy_status", "mpi_status", "numba_status", "env_flag", "env_bytes"]


_BYTE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def env_bytes(name: str) -> int | None:
    """Read a byte count from the environment: unset or '' is None; an integer, or a
    number with the suffix K, M, G or T (powers of 1024, 'GiB' and 'GB' read as 'G');
    anything else, or not positive, is an :class:`OptionError` naming the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    text = value.upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _BYTE_UNITS and text[-1:] else ""
    try:
        count = float(text[:len(text) - len(unit)]) * _BYTE_UNITS[unit]
    except ValueError:
        count = float("nan")
    if not 1 <= count < float(1 << 62):
        raise OptionError(f"environment variable {name}={value!r}: expected a positive number of bytes "
                          f"(e.g. 76000000000 or 71G)")
    return int(count)


def env_flag(name: str, default: bool = False) -> bool:
    """Read a boolean environment override: unset or '' is ``default``, '0' False, '1' True."""
    value = os.environ.get(name, "").strip()
    if value == "":
        return default
    if value == "0":
        return False
    if value == "1":
        return True
    raise OptionError(f"environment variable {name}={value!r}: expected 0 or 1")


def cache_dir() -> Path:
    """Directory for the binary cache and generated data sets (created on demand)."""
    env = os.environ.get("SPDNN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spdnn"


def _try_import(module: str) -> tuple[object | None, str]:
    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # ImportError, or a broken CUDA install raising on import
        return None, f"{module} cannot be imported ({type(exc).__name__}: {exc})"


@functools.lru_cache(maxsize=None)
def cupy_status() -> tuple[bool, str]:
    """(usable, reason): CuPy imports and sees at least one CUDA device."""
    cp, why = _try_import("cupy")
    if cp is None:
        return False, why + "; install with: pip install 'spdnn[gpu]'"
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"CuPy found no usable CUDA device ({exc})"
    if count < 1:
        return False, "CuPy found no CUDA device"
    return True, f"{count} CUDA device(s)"


def _package_status(module: str, install: str) -> tuple[bool, str]:
    """(usable, reason): ``module`` imports; the reason names its version, or how to install it."""
    mod, why = _try_import(module)
    if mod is None:
        return False, f"{why}; install with: {install}"
    return True, f"{module} {getattr(mod, '__version__', '?')}"


@functools.lru_cache(maxsize=None)
def mpi_status() -> tuple[bool, str]:
    """(usable, reason): mpi4py imports (an MPI library is present)."""
    return _package_status("mpi4py", "pip install 'spdnn[mpi]'")


@functools.lru_cache(maxsize=None)
def numba_status() -> tuple[bool, str]:
    """(usable, reason): numba imports."""
    return _package_status("numba", "pip install numba")
