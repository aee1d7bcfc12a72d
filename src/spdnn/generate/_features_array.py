"""The short-axis pass of :mod:`spdnn.generate.features` with array operations: CuPy on a GPU.

The same numbers as :mod:`._features_cpu`, block by block of whole images, with a
matrix product (cuBLAS) and element-wise operations instead of a fused loop. Written
against the subset of the array API that numpy and CuPy share, so the tests run it with
numpy on machines without a GPU; :class:`GpuShortAxis` is the CuPy instance.
"""
from __future__ import annotations

import numpy as np

from .._progress import progress_bar

__all__ = ["NumpyArrays", "ShortAxis", "ArrayShortAxis", "GpuShortAxis"]


class NumpyArrays:
    """The array module and FFT namespace of a short-axis pass on the host (numpy, scipy.fft)."""

    @staticmethod
    def xp():
        return np

    @staticmethod
    def fft():
        from .features import numpy_fft

        return numpy_fft()


class ShortAxis(NumpyArrays):
    """What every short-axis pass over a :class:`~spdnn.generate.features.FeaturePlan` shares:
    images are taken ``step`` at a time (``step_bytes`` of ``value_bytes`` values an image
    feature), the largest ``|X|^2`` is the largest of the steps' (:meth:`_step_max`), and
    :meth:`close` drops the plan. Subclasses give ``_step_max`` and ``threshold``.
    """

    def __init__(self, plan, *, step_bytes: int, value_bytes: int):
        self.plan = plan
        self.neurons = plan.s_r * plan.s_c
        self.step = max(1, step_bytes // (value_bytes * self.neurons))

    def _steps(self, count: int, progress, desc: str):
        """(first, stop) of images 0..count-1, ``step`` at a time, with a progress bar."""
        for first in progress_bar(range(0, count, self.step), enabled=progress, desc=desc):
            yield first, min(first + self.step, count)

    def _step_max(self, first: int, stop: int) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Drop the plan's arrays."""
        self.plan = None

    def max_squared(self, *, progress=None, desc: str = "features") -> float:
        """Largest ``|X|^2`` over every image."""
        top = 0.0
        for first, stop in self._steps(self.plan.count, progress, f"{desc}: maximum"):
            top = max(top, self._step_max(first, stop))
        return top


class ArrayShortAxis(ShortAxis):
    """The short-axis pass over a :class:`~spdnn.generate.features.FeaturePlan` of ``xp`` arrays.

    ``block_bytes`` bounds one block's ``|X|^2`` (images x N float64); a block holds
    about four arrays of that size.
    """

    @staticmethod
    def long_batch() -> int:
        """Long rows transformed per call (each call's FFT plan and work space scale with it)."""
        return 2

    def __init__(self, plan, *, block_bytes: int = 1 << 28):
        super().__init__(plan, step_bytes=block_bytes, value_bytes=8)

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

    def _step_max(self, first: int, stop: int) -> float:
        return float(self._squared(first, stop).max())

    def threshold(self, samples: int, thr2: float, lo2: float, hi2: float, *, progress=None,
                  desc: str = "features") -> tuple[np.ndarray, list, int]:
        """As :meth:`spdnn.generate._features_cpu.CpuShortAxis.threshold` (host arrays)."""
        counts = np.zeros(samples, dtype=np.int64)
        parts = []
        ambiguous = 0
        for first, stop in self._steps(samples, progress, f"{desc}: threshold"):
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
        """Drop the plan's arrays and return their memory to the device."""
        import cupy

        super().close()
        cupy.get_default_memory_pool().free_all_blocks()
