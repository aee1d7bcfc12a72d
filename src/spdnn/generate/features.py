"""The challenge's input features, made from MNIST images (docs/challenge.md, Generator).

The recipe (reproduces the official ``sparse-images-{N}`` bit for bit):

1. Lay the images side by side: one ``h x (w * count)`` image ``A`` with
   ``A[r, w n + c] = image_n[r, c]`` (raw grey values; MNIST: 28 x 28, 60,000 images).
2. ``F = fft2(A)``; zero-pad the centred spectrum to ``s_r x (s_c * count)`` (the
   even-length Nyquist row and column stay on the negative side, not split);
   ``X = abs(ifft2(F_padded))``. Output pixel x samples input position x * w / s.
3. ``X / max(X) > 0.5`` gives the pixels; in image n's own ``s_r x s_c`` block, pixel
   (r, c) is feature ``c * s_r + r`` (0-based; 1-based in files), value 1.

For square N, ``s_r = s_c = sqrt(N)`` (every official size, and 64, 256, ...). For the
other N = 16 * 2**S (32, 128, 512, ...) spdnn uses ``s_r = sqrt(N / 2)``, ``s_c = 2 s_r``
with the same recipe per axis. Where a side is smaller than the image's (N <= 512) the
centred spectrum is cropped instead of padded: the kept frequencies are ``-s/2 .. s/2-1``.

How it is computed
------------------
Write the kept frequencies as ``fr = -hr .. hr-1`` (short axis) and ``fc = -hc .. hc-1``
(long axis), ``hr = min(h, s_r) / 2``, ``hc = min(w, s_c) * count / 2``, and
``S_c = s_c * count``. Since ``A`` is real, ``F[-fr, -fc] = conj(F[fr, fc])``; every
kept frequency has its mirror image kept too, except the edge row ``fr = -hr`` and the
edge column ``fc = -hc``. Let ``g_fr`` be the inverse transform along the long axis of
row ``fr`` without its edge column (length ``S_c``). Then ``g_-fr = conj(g_fr)``, ``g_0``
is real, and (``theta = 2 pi / s_r``, ``x = s_c n + c``)::

    s_r X[r, x] = g_0[x] + 2 Re sum_{fr=1}^{hr-1} g_fr[x] e^{i theta fr r}
                + g_-hr[x] e^{-i theta hr r} + psi(c) u[r]

with ``psi(c) = e^{-2 pi i hc x / S_c} / S_c`` (a function of the column ``c`` inside an
image only) and ``u[r] = sum_fr F[fr, -hc] e^{i theta fr r}`` (the edge column). So
``hr + 1`` long transforms suffice (a plain ``ifft2`` does ``2 hr``; ``g_0`` by a real
inverse transform), and each pixel is a short sum over them with fixed cosine and sine
coefficients (:class:`FeaturePlan`), formed block by block of images: on the CPU by
fused numba kernels over all cores (:mod:`._features_cpu`), on a GPU with CuPy (cuFFT,
cuBLAS; :mod:`._features_array`). Nothing of size ``s_r x S_c`` is ever held: the peak
is the long rows (3.4 GB at N = 65536) plus the result. Measured on a 2-core machine
at N = 65536: 29 s and 5.8 GB, against about 4 minutes and 8.5 GB for the direct way
(:func:`reference_features`).

Exactness
---------
The features are a threshold of real numbers, so what matters is on which side of
``0.5 max(X)`` each pixel falls, not the last bits of ``X``. Any double-precision
evaluation is within about 1e-15 of the maximum of the exact ``X`` (the transforms' and
the sums' rounding: the fast paths and numpy's ``ifft2`` differ by at most 2e-15 of the
maximum in the tests); the pixels of the MNIST set closest to the threshold are 3.9e-8
(N = 1024), 8.5e-9 (4096), 2.9e-9 (16384) and 1.3e-9 (65536) of the maximum away from
it. Every evaluation therefore checks that no pixel lies within :data:`AMBIGUITY` (1e-11
of the maximum) of the threshold; when one does (other images, or a pathological
input), the features are recomputed by :func:`reference_features`, which runs the
transforms exactly as numpy's ``fft2``/``ifft2`` would. So the CPU and the GPU paths
give the same features, equal to the straightforward computation's, and to the
official ones where the official data has them.

MNIST is by Y. LeCun, C. Cortes and C. J. C. Burges (CC BY-SA 3.0); see
``spdnn/data/MNIST-LICENSE.txt``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.sparse as sp

from .._progress import progress_bar
from ..errors import OptionError
from ..options import check_choice
from . import mnist
from .radixnet import check_neurons

__all__ = ["image_shape", "challenge_features", "reference_features", "features_device", "AMBIGUITY",
           "DEVICES"]

#: A pixel with ``|X / max(X) - 0.5| <= AMBIGUITY`` is too close to the threshold for the
#: fast paths to be sure of its side: the features are then made by :func:`reference_features`.
AMBIGUITY = 1e-11

#: Values of ``device``: 'auto' is 'gpu' where CuPy sees a GPU (and SPDNN_DISABLE_GPU is unset).
DEVICES = ("auto", "cpu", "gpu")


def image_shape(neurons: int) -> tuple[int, int]:
    """The enlarged image of one sample, ``(s_r, s_c)`` with ``s_r * s_c == neurons``.

    Square ``(sqrt(N), sqrt(N))`` when N is a perfect square (every official size),
    else ``(sqrt(N / 2), 2 sqrt(N / 2))``. ``neurons`` must be 16 * 2**S, S >= 1.
    """
    n = check_neurons(neurons)
    side = 1 << ((n.bit_length() - 1) // 2)
    if side * side == n:
        return side, side
    return side, 2 * side


def features_device(device: str = "auto") -> str:
    """'cpu' or 'gpu': where :func:`challenge_features` computes for ``device``.

    'auto' is 'gpu' when CuPy sees a CUDA device and ``SPDNN_DISABLE_GPU`` is unset,
    else 'cpu'; 'gpu' without a usable GPU raises :class:`~spdnn.errors.EngineUnavailableError`.
    """
    from ..config import cupy_status, env_flag
    from ..errors import EngineUnavailableError

    device = check_choice(device, "device", DEVICES)
    if device == "cpu":
        return device
    ok, why = cupy_status()
    if device == "auto":
        return "gpu" if ok and not env_flag("SPDNN_DISABLE_GPU") else "cpu"
    if not ok:
        raise EngineUnavailableError(f"device='gpu': {why}")
    return device


def _check_images(images) -> np.ndarray:
    imgs = np.asarray(images)
    if imgs.ndim != 3 or min(imgs.shape) < 1:
        raise OptionError(f"images: shape {imgs.shape}, expected (count, rows, cols)")
    if imgs.shape[1] % 2 or imgs.shape[2] % 2:
        raise OptionError(f"images: {imgs.shape[1]} x {imgs.shape[2]} pixels, expected even sides")
    if not np.issubdtype(imgs.dtype, np.number) or not np.all(np.isfinite(imgs)):
        raise OptionError("images: expected finite numbers")
    return imgs


def _check_samples(samples, count: int) -> int:
    if samples is None:
        return count
    if isinstance(samples, (bool, np.bool_)) or not (isinstance(samples, (int, np.integer)) and 0 <= samples <= count):
        raise OptionError(f"samples={samples!r}: expected an integer in 0..{count}")
    return int(samples)


def challenge_features(neurons: int, *, samples: int | None = None, images=None, device: str = "auto",
                       progress: bool | None = None) -> sp.csr_matrix:
    """The challenge's input features for N neurons (see the module docstring).

    Parameters
    ----------
    neurons : int
        N = 16 * 2**S, S >= 1 (image shape from :func:`image_shape`).
    samples : int, optional
        Keep the first ``samples`` rows (default: one per image). The transform and its
        maximum always use every image, as the official data does (neighbouring images
        leak into each other), so these rows equal the first rows of the full set.
    images : array (count, rows, cols), optional
        Grey images (default: the 60,000 MNIST training images shipped with spdnn,
        :func:`spdnn.generate.mnist.load_mnist`). Sides must be even.
    device : {'auto', 'cpu', 'gpu'}
        Where to compute (:func:`features_device`); the result does not depend on it.
    progress : bool, optional
        Progress bars on stderr (default: only on a terminal).

    Returns
    -------
    scipy.sparse.csr_matrix, float64, shape (samples, N)
        Row i is image i (0-based); value 1 at every feature ``c * s_r + r`` (0-based)
        whose pixel exceeds half the global maximum. Canonical (sorted indices), int32
        indices.

    Notes
    -----
    Memory: about ``16 * hr * s_c * count`` bytes for the long rows (3.4 GB for MNIST
    at N = 65536, hr = 14; on a GPU, in device memory) plus the result (12 bytes a
    nonzero, 4.7 GB at N = 65536).
    """
    image_shape(neurons)                                 # validates N before any work
    where = features_device(device)
    imgs = mnist.load_mnist() if images is None else _check_images(images)
    samples = _check_samples(samples, imgs.shape[0])
    if where == "gpu":
        from ._features_array import GpuShortAxis as backend
    else:
        from ._features_cpu import CpuShortAxis as backend
    return _features(neurons, imgs, samples, backend, progress=progress)


def _features(neurons: int, imgs: np.ndarray, samples: int, backend, *, progress=None, **options) -> sp.csr_matrix:
    """:func:`challenge_features` with the short-axis pass of ``backend`` (a class of
    :mod:`._features_cpu` or :mod:`._features_array`, made with ``**options``)."""
    s_r, s_c = image_shape(neurons)
    desc = f"features N={neurons}"
    plan = _plan(imgs, s_r, s_c, backend.xp(), backend.fft(), batch=backend.long_batch(), progress=progress,
                 desc=desc)
    evaluator = backend(plan, **options)
    del plan
    try:
        top2 = evaluator.max_squared(progress=progress, desc=desc)
        if not top2 > 0:
            raise OptionError("images: every pixel is zero; no features can be made")
        lo2, hi2 = top2 * (0.5 - AMBIGUITY) ** 2, top2 * (0.5 + AMBIGUITY) ** 2
        counts, parts, ambiguous = evaluator.threshold(samples, top2 / 4, lo2, hi2, progress=progress, desc=desc)
    finally:
        evaluator.close()
        del evaluator
    if ambiguous:
        # some pixel is too close to the threshold for a fast evaluation to be sure of its side
        del parts
        return reference_features(neurons, samples=samples, images=imgs, progress=progress)
    return _csr(counts, parts, samples, s_r * s_c)


def _csr(counts: np.ndarray, parts: list, samples: int, neurons: int) -> sp.csr_matrix:
    """CSR (samples, neurons) of value 1 from per-row counts and the rows' sorted columns
    (int32 arrays that concatenate, in order, to the indices)."""
    indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    del parts[:]
    nnz = int(counts.sum())
    index_dtype = np.int32 if nnz < 2**31 else np.int64
    indptr = np.zeros(samples + 1, dtype=index_dtype)
    np.cumsum(counts, out=indptr[1:])
    out = sp.csr_matrix((np.ones(nnz, dtype=np.float64), indices.astype(np.int32, copy=False), indptr),
                        shape=(samples, neurons))
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out


# --- the long axis ---------------------------------------------------------------------------

@dataclass
class FeaturePlan:
    """What the short-axis pass needs (arrays of ``xp``: numpy or cupy), x = s_c n + c.

    Attributes
    ----------
    s_r, s_c, count : int
        Image shape and number of images.
    g0 : array float64, shape (s_c * count,)
        ``g_0 / s_r``.
    g : array complex128, shape (hr, s_c * count)
        ``g_1 .. g_{hr-1}`` and, last, the edge row ``g_-hr``.
    wr, wi : array float64, shape (hr, s_r)
        ``Re X[r, x] = er[c, r] + g0[x] + sum_j (Re g[j, x] wr[j, r] + Im g[j, x] wi[j, r])``.
    di : array float64, shape (2, s_r)
        ``Im X[r, x] = ei[c, r] + Re g[-1, x] di[0, r] + Im g[-1, x] di[1, r]``.
    er, ei : array float64, shape (s_c, s_r)
        The edge column's term, real and imaginary parts.
    """

    s_r: int
    s_c: int
    count: int
    g0: object
    g: object
    wr: object
    wi: object
    di: object
    er: object
    ei: object


def _workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def numpy_fft():
    """scipy.fft's transforms on every core (the CPU fft namespace of :func:`_plan`)."""
    import scipy.fft

    workers = _workers()

    class _Fft:
        rfft = staticmethod(partial(scipy.fft.rfft, workers=workers))
        fft = staticmethod(partial(scipy.fft.fft, workers=workers))
        ifft = staticmethod(partial(scipy.fft.ifft, workers=workers))
        irfft = staticmethod(partial(scipy.fft.irfft, workers=workers))

    return _Fft


def _plan(imgs: np.ndarray, s_r: int, s_c: int, xp, fft, *, batch: int = 2, progress=None,
          desc: str = "features") -> FeaturePlan:
    """The long-axis transforms and the short-axis coefficients (see the module docstring).

    ``xp`` is numpy or cupy and ``fft`` a namespace with scipy.fft's ``rfft, fft, ifft,
    irfft`` for its arrays (scipy.fft with workers, or cupyx.scipy.fft); only what both
    array modules offer is used. The long rows are transformed in place, ``batch`` at a
    time (one progress step each).
    """
    count, h, w = imgs.shape
    long_in, long_out = count * w, count * s_c
    hr, hc = min(h, s_r) // 2, min(long_in, long_out) // 2

    # F[fr, fc] for fc = 0 .. long_in/2 is half[fr mod h, fc]; F[fr, -fc] = conj(F[-fr, fc]).
    a = xp.asarray(np.ascontiguousarray(imgs.transpose(1, 0, 2), dtype=np.float64).reshape(h, long_in))
    half = fft.fft(fft.rfft(a, axis=1), axis=0)
    del a

    # g: rows fr = 1 .. hr-1, then the edge row -hr, each without its edge column, unshifted
    frs = list(range(1, hr)) + [-hr]
    g = xp.zeros((hr, long_out), dtype=np.complex128)
    for i, fr in enumerate(frs):
        g[i, :hc] = half[fr % h, :hc]
        if hc > 1:
            g[i, long_out - hc + 1:] = xp.conj(half[(-fr) % h, hc - 1:0:-1])
    # g_0 is real (row 0 is Hermitian): the first long_out/2 + 1 frequencies suffice
    spec0 = xp.zeros(long_out // 2 + 1, dtype=np.complex128)
    spec0[:hc] = half[0, :hc]
    # the edge column fc = -hc: F[fr, -hc] = conj(F[-fr, hc]), fr = -hr .. hr-1
    fr_all = np.arange(-hr, hr)
    edge = np.conj(_to_host(half[xp.asarray((-fr_all) % h), hc]))
    del half
    for first in progress_bar(range(0, hr + 1, batch), enabled=progress, desc=f"{desc}: long axis"):
        if first + batch > hr:                                         # the last step also makes g_0
            g0 = fft.irfft(spec0, n=long_out)
            g0 *= 1.0 / s_r                                            # a power of two: exact
            del spec0
        if first < hr:
            stop = min(first + batch, hr)
            g[first:stop] = fft.ifft(g[first:stop], axis=1, overwrite_x=True)

    theta = 2 * np.pi / s_r
    r = np.arange(s_r)
    wr, wi = np.zeros((hr, s_r)), np.zeros((hr, s_r))
    for i, fr in enumerate(range(1, hr)):                              # 2 Re(g e^{i theta fr r})
        wr[i] = 2 * np.cos(theta * fr * r)
        wi[i] = -2 * np.sin(theta * fr * r)
    # g_-hr e^{-i theta hr r} = (a + ib)(cos - i sin): Re = a cos + b sin, Im = b cos - a sin
    cos_h, sin_h = np.cos(theta * hr * r), np.sin(theta * hr * r)
    wr[hr - 1], wi[hr - 1] = cos_h, sin_h
    di = np.stack([-sin_h, cos_h])
    u = (edge[:, None] * np.exp(1j * theta * np.outer(fr_all, r))).sum(axis=0)     # (s_r,)
    # psi[x] = exp(-2 pi i hc x / S_c) / S_c, hc / count = min(w, s_c) / 2: depends on c = x mod s_c
    c = np.arange(s_c)
    psi = np.exp(-2j * np.pi * (((min(w, s_c) // 2) * c) % s_c) / s_c) / long_out
    e = psi[:, None] * u[None, :] / s_r
    return FeaturePlan(s_r=s_r, s_c=s_c, count=count, g0=g0, g=g, wr=xp.asarray(wr / s_r),
                       wi=xp.asarray(wi / s_r), di=xp.asarray(di / s_r),
                       er=xp.asarray(np.ascontiguousarray(e.real)), ei=xp.asarray(np.ascontiguousarray(e.imag)))


def _to_host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


# --- the reference -----------------------------------------------------------------------------

def _resize_spectrum(spec: np.ndarray, size: int, axis: int, out: np.ndarray) -> np.ndarray:
    """Centred zero-pad (or crop) of an unshifted spectrum along ``axis`` into ``out``.

    Equivalent to ``fftshift``, padding ``(size - n) / 2`` zeros on each side (or cutting
    as many), and ``ifftshift``, for even n and size: frequency f of
    ``-min/2 .. min/2 - 1`` moves from index ``f mod n`` to ``f mod size``; ``out`` must be
    zero elsewhere.
    """
    n = spec.shape[axis]
    half = min(n, size) // 2
    src = [slice(None)] * spec.ndim
    dst = [slice(None)] * spec.ndim
    src[axis], dst[axis] = slice(0, half), slice(0, half)
    out[tuple(dst)] = spec[tuple(src)]
    src[axis], dst[axis] = slice(n - half, n), slice(size - half, size)
    out[tuple(dst)] = spec[tuple(src)]
    return out


def reference_features(neurons: int, *, samples: int | None = None, images=None, progress: bool | None = None,
                       block_elements: int = 1 << 22) -> sp.csr_matrix:
    """:func:`challenge_features` computed as numpy's ``fft2``/``ifft2`` would, one core.

    Every 1-D transform sees exactly the numbers numpy's full ``fft2`` and ``ifft2`` of
    the recipe would (the long axis first, then the short axis, only the nonzero rows of
    the padded spectrum, the short axis block by block of whole images), so the result
    is bit-identical to the straightforward computation without its 63 GB array at
    N = 65536. Slow (several minutes at N = 65536, 7 GB); :func:`challenge_features`
    uses it only for inputs with a pixel within :data:`AMBIGUITY` of the threshold.
    Parameters and result as :func:`challenge_features`; ``block_elements`` is the size
    of one short-axis block in pixels (memory; the result does not depend on it).
    """
    s_r, s_c = image_shape(neurons)
    imgs = mnist.load_mnist() if images is None else _check_images(images)
    count, h, w = imgs.shape
    samples = _check_samples(samples, count)
    long_in, long_out = count * w, count * s_c
    desc = f"features N={neurons} (reference)"

    a = np.ascontiguousarray(imgs.transpose(1, 0, 2), dtype=np.float64).reshape(h, long_in)
    spec = np.fft.fft(a, axis=1)               # numpy's fft2: the last axis first, then axis 0
    del a
    spec = np.fft.fft(spec, axis=0)
    half = min(h, s_r) // 2                   # nonzero rows of the padded spectrum: first and last `half`
    rows = np.zeros((2 * half, long_out), dtype=np.complex128)
    _resize_spectrum(spec[np.r_[0:half, h - half:h]], long_out, 1, rows)
    del spec
    for i in progress_bar(range(2 * half), enabled=progress, desc=f"{desc}: long axis"):
        np.fft.ifft(rows[i], out=rows[i])     # ifft2: the long axis first (zero rows stay zero)

    per_block = max(1, block_elements // (s_r * s_c))

    def magnitudes(first: int) -> np.ndarray:
        """|ifft along the short axis| of images first..first+per_block-1, shape (s_r, k * s_c)."""
        cols = slice(first * s_c, min(first + per_block, count) * s_c)
        block = np.zeros((s_r, cols.stop - cols.start), dtype=np.complex128)
        _resize_spectrum(rows[:, cols], s_r, 0, block)
        np.fft.ifft(block, axis=0, out=block)
        return np.abs(block)

    top = 0.0
    for first in progress_bar(range(0, count, per_block), enabled=progress, desc=f"{desc}: maximum"):
        top = max(top, float(magnitudes(first).max()))
    if not top > 0:
        raise OptionError("images: every pixel is zero; no features can be made")
    counts = np.zeros(samples, dtype=np.int64)
    chunks = []
    for first in progress_bar(range(0, samples, per_block), enabled=progress, desc=f"{desc}: threshold"):
        mag = magnitudes(first)
        k = mag.shape[1] // s_c
        np.divide(mag, top, out=mag)
        # (r, n, c) -> (n, c, r): column-major features c * s_r + r of each image.
        keep = (mag > 0.5).reshape(s_r, k, s_c).transpose(1, 2, 0).reshape(k, s_r * s_c)[: samples - first]
        del mag
        img, feat = np.nonzero(keep)
        counts[first: first + keep.shape[0]] = np.bincount(img, minlength=keep.shape[0])
        chunks.append(feat.astype(np.int32))
    del rows
    return _csr(counts, chunks, samples, s_r * s_c)
