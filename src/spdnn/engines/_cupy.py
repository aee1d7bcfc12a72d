"""CuPy helpers shared by the GPU engines (``cuda`` and ``cusparse``).

Nothing here imports CuPy at module import time: :func:`cupy` imports it when an engine
is used, and says what to install when it cannot.
"""
from __future__ import annotations

import numpy as np

from ..errors import EngineUnavailableError

__all__ = ["cupy", "device", "device_name", "free_device_bytes", "pinned_empty", "release_device_memory"]


def cupy(engine: str):
    """The ``cupy`` module, or :class:`EngineUnavailableError` naming ``engine`` and the fix."""
    try:
        import cupy as cp
        import cupyx  # noqa: F401  (pinned memory, sparse matrices)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise EngineUnavailableError(f"{engine} engine: {exc}; install with: pip install 'spdnn[gpu]'") from exc
    return cp


def device(engine: str, device_id: int | None):
    """The CuPy ``Device`` ``device_id`` (default: the current device)."""
    cp = cupy(engine)
    return cp.cuda.Device(cp.cuda.runtime.getDevice() if device_id is None else int(device_id))


def device_name(dev) -> str:
    """The marketing name of a CuPy device ('NVIDIA H200'), or 'cuda:<id>'."""
    import cupy as cp

    try:
        return cp.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
    except Exception:  # pragma: no cover - informative only
        return f"cuda:{dev.id}"


def free_device_bytes() -> int:
    """Free device memory of the current device, counting CuPy's pool's free blocks (bytes)."""
    import cupy as cp

    free, _total = cp.cuda.runtime.memGetInfo()
    return int(free + cp.get_default_memory_pool().free_bytes())


def pinned_empty(size: int, dtype) -> np.ndarray:
    """A page-locked host array of ``size`` elements (at least one) for asynchronous copies."""
    import cupyx

    return cupyx.empty_pinned(max(int(size), 1), dtype=dtype)


def release_device_memory() -> None:
    """Return device memory nothing uses any more to the device: collect garbage (an
    engine's arrays may sit in reference cycles until a collection) and empty CuPy's pool.

    Called when a job drops a GPU engine whose memory another job needs next (the float64
    truth's engine before the timed engine of ``spdnn bench``: at N = 65536 its two float64
    buffers are 63 GB). Nothing happens where CuPy was never imported.
    """
    import gc
    import sys

    if "cupy" not in sys.modules:
        return
    gc.collect()
    sys.modules["cupy"].get_default_memory_pool().free_all_blocks()
