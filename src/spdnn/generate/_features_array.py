"""The short-axis pass of :mod:`spdnn.generate.features` with array operations: CuPy on a GPU.

The same numbers as :mod:`._features_cpu`, block by block of whole images, with a
matrix product (cuBLAS) and element-wise operations instead of a fused loop. Written
against the subset of the array API that numpy and CuPy share, so the tests run it with
numpy on machines without a GPU; :class:`GpuShortAxis` is the CuPy instance.
"""
from __future__ import annotations

import numpy as np

from .._progress import progress_bar

__all__ = ["NumpyArrays", "ArrayShortAxis", "GpuShortAxis"]


class NumpyArrays:
    """The array module and FFT namespace of a short-axis pass on the host (numpy, scipy.fft)."""

    @staticmethod
    def xp():
        return np

    @staticmethod
    def fft():
        from .features import numpy_fft

        return numpy_fft()


class ArrayShortAxis(NumpyArrays):
    """The short-axis pass over a :class:`~spdnn.generate.features.FeaturePlan` of ``xp`` arrays.

    ``block_bytes`` bounds one block's ``|X|^2`` (images x N float64); a block holds
    about four arrays of that size.
    """

    @staticmethod
    def long_batch() -> int:
        """Long rows transformed per call (each call's FFT plan and work space scale with it)."""
        return 2

    def __init__(self, plan, *, block_bytes: int = 1 << 28):
        self.plan = plan
        self.neurons = plan.s_r * plan.s_c
        self.block = max(1, block_bytes // (8 * self.neurons))

    def _squared(self, first: int, stop: int):
        """``|X|^2`` of images first..stop-1, shape (images, N), features ``c * s_r + r`` along axis 1."""
        p = self.plan
        k = stop - first
        cols = slice(first * p.s_c, stop * p.s_c)
        g = p.g[:, cols]                                                  # (hr, k s_c)
        re = g.real.T @ p.wr
        re += g.imag.T @ p.wi
        re += p.g0[cols, None]
        re = re.reshape(k, p.s_c, p.s_r)
        re += p.er
        im = g[-1].real[:, None] * p.di[0] + g[-1].imag[:, None] * p.di[1]
        im = im.reshape(k, p.s_c, p.s_r)
        im += p.ei
        re *= re
        im *= im
        re += im
        return re.reshape(k, self.neurons)

    def close(self) -> None:
        """Drop the plan's arrays (and, on a GPU, return their memory to the device)."""
        self.plan = None

    def max_squared(self, *, progress=None, desc: str = "features") -> float:
        """Largest ``|X|^2`` over every image."""
        count = self.plan.count
        top = 0.0
        for first in progress_bar(range(0, count, self.block), enabled=progress, desc=f"{desc}: maximum"):
            top = max(top, float(self._squared(first, min(first + self.block, count)).max()))
        return top

    def threshold(self, samples: int, thr2: float, lo2: float, hi2: float, *, progress=None,
                  desc: str = "features") -> tuple[np.ndarray, list, int]:
        """As :meth:`spdnn.generate._features_cpu.CpuShortAxis.threshold` (host arrays)."""
        counts = np.zeros(samples, dtype=np.int64)
        parts = []
        ambiguous = 0
        for first in progress_bar(range(0, samples, self.block), enabled=progress, desc=f"{desc}: threshold"):
            stop = min(first + self.block, samples)
            sq = self._squared(first, stop)
            keep = sq > thr2
            ambiguous += int(((sq > lo2) & (sq <= hi2)).sum())
            del sq
            counts[first:stop] = _host(keep.sum(axis=1))
            parts.append(_host(keep.nonzero()[1].astype(np.int32)))
        return counts, parts, ambiguous


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


class GpuShortAxis(ArrayShortAxis):
    """:class:`ArrayShortAxis` on the current CUDA device (CuPy; cuFFT for the long axis)."""

    @staticmethod
    def xp():
        import cupy

        return cupy

    @staticmethod
    def fft():
        import cupyx.scipy.fft

        return cupyx.scipy.fft

    def __init__(self, plan, *, block_bytes: int = 1 << 30):
        super().__init__(plan, block_bytes=block_bytes)

    def close(self) -> None:
        import cupy

        super().close()
        cupy.get_default_memory_pool().free_all_blocks()
