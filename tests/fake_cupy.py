"""A host stand-in for CuPy: enough of it to run the CUDA engine's host code on the CPU.

Arrays are numpy arrays whose ``.data.ptr`` is their host address, so the engine's
``memsetAsync``/``memcpyAsync`` on raw pointers work (``ctypes``); kernels are recorded,
their arguments bound and checked by name (:func:`spdnn.engines.cuda.compilation.bind_arguments`)
exactly as for a GPU launch, and not run (the counters they would write stay zero).
Streams, events and graphs do nothing but let the code paths run. Used by
``tests/test_cuda_host.py`` to check the host side of the challenge path without a GPU.

:func:`install_numpy` is the other stand-in: numpy itself as ``cupy`` and scipy.sparse as
``cupyx.scipy.sparse``, for engines whose device code is library calls (cusparse).
"""
from __future__ import annotations

import ctypes
import sys
from types import ModuleType, SimpleNamespace

import numpy as np
import scipy.sparse as sp

from spdnn.engines.cuda.compilation import bind_arguments


class DeviceArray(np.ndarray):
    """A numpy array with CuPy's ``.data.ptr``, ``.set`` and ``.get``."""

    @property
    def data(self):
        return SimpleNamespace(ptr=int(self.ctypes.data))

    def set(self, host) -> None:
        self[...] = host

    def get(self) -> np.ndarray:
        return np.array(self)


def _dev(a) -> DeviceArray:
    return np.ascontiguousarray(a).view(DeviceArray)


class FakeKernel:
    """A compiled kernel's stand-in: ``launch`` binds the arguments and records the launch."""

    def __init__(self, name: str, launches: list):
        self.name = name
        self.fn = SimpleNamespace(num_regs=64, shared_size_bytes=0, max_dynamic_shared_size_bytes=0)
        self._launches = launches

    def launch(self, grid, block, values, smem=0, *, debug_device=None, what=""):
        bind_arguments(self.name, values)
        assert int(grid) >= 1 and 32 <= int(block) <= 1024 and int(smem) >= 0, (self.name, grid, block, smem)
        self._launches.append((self.name, what))


class _Context:
    """A do-nothing ``with`` target that can be synchronized (streams, devices)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class _Stream(_Context):
    ptr = 0

    def __init__(self, *args, **kwargs):
        pass

    def begin_capture(self):
        pass

    def end_capture(self):
        return SimpleNamespace(launch=lambda stream=None: None, upload=lambda stream=None: None)

    def wait_event(self, event):
        pass


class _Device(_Context):
    id = 0
    attributes = {"MultiProcessorCount": 132, "MaxSharedMemoryPerBlockOptin": 227 * 1024,
                  "MaxSharedMemoryPerMultiprocessor": 228 * 1024, "MaxRegistersPerMultiprocessor": 65536,
                  "MaxThreadsPerMultiProcessor": 2048}


def _memcpy(dst, src, nbytes, kind, stream):
    ctypes.memmove(int(dst), int(src), int(nbytes))


def _memset(ptr, value, nbytes, stream):
    ctypes.memset(int(ptr), int(value), int(nbytes))


fake = SimpleNamespace(
    asarray=lambda a, dtype=None: _dev(np.array(a, dtype=dtype, copy=True)),
    asnumpy=lambda a: np.array(a, copy=True),
    full=lambda shape, value, dtype=None: _dev(np.full(shape, value, dtype=dtype)),
    zeros=lambda shape, dtype=float: _dev(np.zeros(shape, dtype=dtype)),
    empty=lambda shape, dtype=float: _dev(np.full(shape, {"i": -7, "u": 7}.get(np.dtype(dtype).kind, np.nan),
                                                  dtype=dtype)),
    cuda=SimpleNamespace(
        Device=lambda i=0: _Device(), Stream=_Stream, Event=lambda: SimpleNamespace(record=lambda stream=None: None),
        get_current_stream=lambda: _Stream(),
        runtime=SimpleNamespace(memcpyAsync=_memcpy, memsetAsync=_memset, getDevice=lambda: 0)),
)


def install(monkeypatch, module) -> list:
    """Replace CuPy and the device helpers of the CUDA engine's ``module`` by the stand-ins;
    returns the list the launches are recorded in ((kernel instance, what), in order)."""
    import spdnn.engines._cupy as helpers
    import spdnn.engines.cuda.compilation as compilation

    launches: list = []
    monkeypatch.setattr(module, "cupy", lambda name: fake)
    monkeypatch.setattr(helpers, "cupy", lambda name: fake)          # the general path's backend
    monkeypatch.setattr(module, "device", lambda name, device_id: _Device())
    monkeypatch.setattr(module, "device_name", lambda dev: "fake device")
    monkeypatch.setattr(module, "free_device_bytes", lambda: 64 << 30)
    monkeypatch.setattr(module, "pinned_empty", lambda size, dtype: np.zeros(max(int(size), 1), dtype=dtype))
    def compiled(device_id, filename, names):
        return {role: FakeKernel(name, launches) for role, name in names.items()}

    monkeypatch.setattr(module, "compiled_kernels", compiled)
    monkeypatch.setattr(compilation, "compiled_kernels", compiled)
    return launches


def install_numpy(monkeypatch, module):
    """Make numpy ``cupy`` and scipy.sparse ``cupyx.scipy.sparse`` (in ``sys.modules``) and
    ``module.cupy_status`` report CuPy present: the array calls of an engine written against
    CuPy's numpy-like API then run on the host. Returns the ``cupy`` stand-in."""
    cp = ModuleType("cupy")
    for name in ("asarray", "ascontiguousarray", "where", "clip", "zeros", "float32", "float64"):
        setattr(cp, name, getattr(np, name))
    cp.asnumpy = np.asarray
    cp.cuda = SimpleNamespace(
        get_current_stream=lambda: _Stream(), Device=lambda i=0: _Device(),
        runtime=SimpleNamespace(getDevice=lambda: 0, memGetInfo=lambda: (1 << 30, 1 << 31),
                                getDeviceProperties=lambda i: {"name": b"host stand-in"}))
    cp.get_default_memory_pool = lambda: SimpleNamespace(free_bytes=lambda: 0)
    cupyx = ModuleType("cupyx")
    cupyx.scipy = ModuleType("cupyx.scipy")
    cupyx.scipy.sparse = sp
    for name, stand_in in {"cupy": cp, "cupyx": cupyx, "cupyx.scipy": cupyx.scipy, "cupyx.scipy.sparse": sp}.items():
        monkeypatch.setitem(sys.modules, name, stand_in)
    monkeypatch.setattr(module, "cupy_status", lambda: (True, "host stand-in"))
    return cp
