"""The challenge's input features, made from the MNIST training images shipped with spdnn.

Recipe (docs/challenge.md, Generator; reproduces the official ``sparse-images-{N}`` bit for bit):

1. Lay the 60,000 images side by side: one 28 x (28 * 60000) image ``A`` with
   ``A[r, 28 n + c] = image_n[r, c]`` (raw 0..255 grey values).
2. ``F = fft2(A)``; zero-pad the centred spectrum to ``s_r x (s_c * 60000)`` (the
   even-length Nyquist row and column stay on the negative side, not split);
   ``X = abs(ifft2(F_padded))``. Output pixel x samples input position x * 28 / s.
3. ``X / max(X) > 0.5`` gives the pixels; in sample n's own ``s_r x s_c`` block, pixel
   (r, c) is feature ``c * s_r + r`` (0-based; 1-based in files), value 1.

For square N, ``s_r = s_c = sqrt(N)`` (the official sizes 1024..65536, and 64, 256, ...).
For the other N = 16 * 2**S (32, 128, 512, ...), spdnn uses a rectangular image
``s_r = sqrt(N / 2)``, ``s_c = 2 s_r`` with the same recipe per axis. Where a side is
smaller than 28 (N <= 512) the centred spectrum is cropped instead of padded: the kept
frequencies are ``-s/2 .. s/2 - 1``.

Memory. The full 2-D transform at N = 65536 would hold 256 x 15,360,000 complex numbers
(63 GB). :func:`challenge_features` computes the same numbers without that array: numpy's
``ifft2`` transforms the long axis first, and only the 28 nonzero rows of the padded
spectrum have a nonzero long-axis transform (6.9 GB at N = 65536); the short-axis
transform is then done on blocks of whole images, once to find the global maximum and
once more to threshold. Every 1-D transform sees exactly the numbers numpy's full
``fft2``/``ifft2`` would (tests check equality with the direct computation), so the
features are bit-identical to it.

MNIST is by Y. LeCun, C. Cortes and C. J. C. Burges (CC BY-SA 3.0); see
``spdnn/data/MNIST-LICENSE.txt``.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._progress import progress_bar
from ..errors import DataNotFoundError, FormatError, OptionError
from .radixnet import check_neurons

__all__ = ["load_mnist", "challenge_features", "image_shape", "MNIST_PATH", "MNIST_MD5"]

#: The shipped file.
MNIST_PATH = Path(__file__).resolve().parent.parent / "data" / "train-images-idx3-ubyte.gz"

#: md5 of the uncompressed IDX file (docs/challenge.md, Generator).
MNIST_MD5 = "6bbc9ace898e44ae57da46a324031adb"

_IDX_UBYTE_3D = 0x00000803  # magic: unsigned byte, 3 dimensions


def load_mnist(path: str | os.PathLike | None = None) -> np.ndarray:
    """Read MNIST images from an IDX file (``.gz`` or plain).

    Parameters
    ----------
    path : str or path-like, optional
        Default: the training images shipped in the package (:data:`MNIST_PATH`).

    Returns
    -------
    numpy.ndarray of uint8, shape (images, rows, cols)
        Raw grey values 0..255, images in file order; (60000, 28, 28) for the
        shipped file.

    Raises
    ------
    DataNotFoundError
        The file does not exist.
    FormatError
        Bad magic number, truncated or oversized payload, or a corrupt gzip stream;
        the message names the file.
    """
    path = Path(MNIST_PATH if path is None else path)
    if not path.is_file():
        raise DataNotFoundError(f"MNIST images not found: {path}")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise FormatError(f"cannot decompress: {exc}", path=path) from exc
    if len(raw) < 16:
        raise FormatError(f"{len(raw)} bytes: too short for an IDX header (16 bytes)", path=path)
    magic, count, rows, cols = (int(v) for v in np.frombuffer(raw, dtype=">u4", count=4))
    if magic != _IDX_UBYTE_3D:
        raise FormatError(f"IDX magic 0x{magic:08x}, expected 0x{_IDX_UBYTE_3D:08x} "
                          "(unsigned bytes, 3 dimensions: images x rows x cols)", path=path)
    expected = 16 + count * rows * cols
    if len(raw) != expected:
        raise FormatError(f"{len(raw)} bytes, expected {expected} for {count} images of "
                          f"{rows} x {cols}", path=path)
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)


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


def _check_images(images) -> np.ndarray:
    imgs = np.asarray(images)
    if imgs.ndim != 3 or min(imgs.shape) < 1:
        raise OptionError(f"images: shape {imgs.shape}, expected (count, rows, cols)")
    if imgs.shape[1] % 2 or imgs.shape[2] % 2:
        raise OptionError(f"images: {imgs.shape[1]} x {imgs.shape[2]} pixels, expected even sides")
    if not np.issubdtype(imgs.dtype, np.number) or not np.all(np.isfinite(imgs)):
        raise OptionError("images: expected finite numbers")
    return imgs


def challenge_features(neurons: int, *, samples: int | None = None, images=None,
                       progress: bool | None = None, block_elements: int = 1 << 22) -> sp.csr_matrix:
    """The challenge's input features for N neurons (docs/challenge.md, Generator; see the module docstring).

    Parameters
    ----------
    neurons : int
        N = 16 * 2**S, S >= 1 (image shape from :func:`image_shape`).
    samples : int, optional
        Keep the first ``samples`` rows (default: one per image). The transform and
        its maximum always use every image, as the official data does (neighbouring
        images leak into each other), so these rows equal the first rows of the full set.
    images : array (count, rows, cols), optional
        Grey images (default: the 60,000 shipped MNIST training images, :func:`load_mnist`).
        Sides must be even.
    progress : bool, optional
        Show progress bars (default: only on a terminal).
    block_elements : int
        Approximate size of one block of the short-axis pass, in pixels (memory knob;
        the result does not depend on it).

    Returns
    -------
    scipy.sparse.csr_matrix, float64, shape (samples, N)
        Row i is image i (0-based); value 1 at every feature ``c * s_r + r`` (0-based)
        whose pixel exceeds half the global maximum. Canonical (sorted indices).

    Notes
    -----
    Peak memory is about ``rows * count * s_c * 16`` bytes (6.9 GB for the MNIST set at
    N = 65536) plus the result (12 bytes a nonzero).
    """
    s_r, s_c = image_shape(neurons)
    imgs = load_mnist() if images is None else _check_images(images)
    count, h, w = imgs.shape
    if samples is None:
        samples = count
    if isinstance(samples, (bool, np.bool_)) or not (isinstance(samples, (int, np.integer)) and 0 <= samples <= count):
        raise OptionError(f"samples={samples!r}: expected an integer in 0..{count}")
    samples = int(samples)
    long_in, long_out = count * w, count * s_c

    # Step 1: the images side by side, A[r, w*n + c] = image_n[r, c].
    a = np.ascontiguousarray(imgs.transpose(1, 0, 2), dtype=np.float64).reshape(h, long_in)
    # Step 2: numpy's fft2 transforms the last axis first, then axis 0; so do we.
    spec = np.fft.fft(a, axis=1)
    del a
    spec = np.fft.fft(spec, axis=0)
    # The padded spectrum has nonzero rows only at the kept short-axis frequencies:
    # the first `half` and the last `half` rows (2 * half rows, here in that order).
    half = min(h, s_r) // 2
    rows = np.zeros((2 * half, long_out), dtype=np.complex128)
    _resize_spectrum(spec[np.r_[0:half, h - half:h]], long_out, 1, rows)
    del spec
    # ifft2 transforms the long axis first (zero rows stay zero), one row at a time here.
    for i in progress_bar(range(2 * half), enabled=progress, desc=f"features N={neurons}: long axis"):
        np.fft.ifft(rows[i], out=rows[i])

    per_block = max(1, block_elements // (s_r * s_c))
    starts = range(0, count, per_block)

    def magnitudes(first: int) -> np.ndarray:
        """|ifft along the short axis| of images first..first+per_block-1, shape (s_r, k * s_c)."""
        cols = slice(first * s_c, min(first + per_block, count) * s_c)
        block = np.zeros((s_r, cols.stop - cols.start), dtype=np.complex128)
        _resize_spectrum(rows[:, cols], s_r, 0, block)
        np.fft.ifft(block, axis=0, out=block)
        return np.abs(block)

    top = 0.0
    for first in progress_bar(starts, enabled=progress, desc=f"features N={neurons}: maximum"):
        top = max(top, float(magnitudes(first).max()))
    if not top > 0:
        raise OptionError("images: every pixel is zero; no features can be made")

    counts = np.zeros(samples, dtype=np.int64)
    chunks = []
    for first in progress_bar(range(0, samples, per_block), enabled=progress,
                              desc=f"features N={neurons}: threshold"):
        mag = magnitudes(first)
        k = mag.shape[1] // s_c
        np.divide(mag, top, out=mag)
        # (r, n, c) -> (n, c, r): column-major features c * s_r + r of each image.
        keep = (mag > 0.5).reshape(s_r, k, s_c).transpose(1, 2, 0).reshape(k, s_r * s_c)
        del mag
        keep = keep[: samples - first]
        img, feat = np.nonzero(keep)
        counts[first: first + keep.shape[0]] = np.bincount(img, minlength=keep.shape[0])
        chunks.append(feat.astype(np.int32))
    del rows
    nnz = int(counts.sum())
    index_dtype = np.int32 if nnz < 2**31 else np.int64
    indptr = np.zeros(samples + 1, dtype=index_dtype)
    np.cumsum(counts, out=indptr[1:])
    indices = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    del chunks
    out = sp.csr_matrix((np.ones(nnz, dtype=np.float64), indices, indptr), shape=(samples, neurons))
    out.has_sorted_indices = True
    return out
