"""The MNIST training images shipped with spdnn: the source of the challenge's inputs.

:func:`load_mnist` reads them (or any IDX file of unsigned bytes), :func:`load_mnist_labels`
their labels (shipped too), both through :func:`read_idx`;
:mod:`spdnn.generate.features` turns them into the challenge's features
(docs/challenge.md, Generator).

MNIST is by Y. LeCun, C. Cortes and C. J. C. Burges (CC BY-SA 3.0); see
``spdnn/data/MNIST-LICENSE.txt``.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, FormatError

__all__ = ["load_mnist", "load_mnist_labels", "read_idx", "MNIST_PATH", "MNIST_MD5", "MNIST_LABELS_PATH",
           "MNIST_LABELS_MD5"]

#: The shipped file.
MNIST_PATH = Path(__file__).resolve().parent.parent / "data" / "train-images-idx3-ubyte.gz"

#: md5 of the uncompressed IDX file (docs/challenge.md, Generator).
MNIST_MD5 = "6bbc9ace898e44ae57da46a324031adb"

#: The shipped labels of the training images (digit 0..9 of each image, in file order).
MNIST_LABELS_PATH = MNIST_PATH.parent / "train-labels-idx1-ubyte.gz"

#: md5 of the shipped gzip file of the labels (28,881 bytes).
MNIST_LABELS_MD5 = "d53e105ee54ea40749a09fcbcd1e9432"

_IDX_UBYTE = 0x00000800  # magic of unsigned bytes; the low byte is the number of dimensions


def read_idx(path: str | os.PathLike, dims: int, what: str = "IDX data") -> np.ndarray:
    """Read an IDX file of unsigned bytes (``.gz`` or plain) with ``dims`` dimensions.

    Parameters
    ----------
    path : str or path-like
    dims : int
        Expected number of dimensions: 3 for images (images x rows x cols), 1 for labels.
    what : str
        What the file holds, named in messages ("MNIST images").

    Returns
    -------
    numpy.ndarray of uint8, shape from the header
        A read-only view of the decompressed bytes, in file order.

    Raises
    ------
    DataNotFoundError
        The file does not exist.
    FormatError
        Bad magic number (another element type or number of dimensions), truncated or
        oversized payload, or a corrupt gzip stream; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise FormatError(f"cannot decompress: {exc}", path=path) from exc
    header = 4 + 4 * dims
    if len(raw) < header:
        raise FormatError(f"{len(raw)} bytes: too short for an IDX header of {dims} dimensions ({header} bytes)",
                          path=path)
    magic = int(np.frombuffer(raw, dtype=">u4", count=1)[0])
    if magic != _IDX_UBYTE + dims:
        raise FormatError(f"IDX magic 0x{magic:08x}, expected 0x{_IDX_UBYTE + dims:08x} "
                          f"(unsigned bytes, {dims} dimension{'s' if dims > 1 else ''}: {what})", path=path)
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise FormatError(f"{len(raw)} bytes, expected {expected} for shape {' x '.join(map(str, shape))}",
                          path=path)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


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
        See :func:`read_idx`.
    """
    return read_idx(MNIST_PATH if path is None else path, 3, "MNIST images")


def load_mnist_labels(path: str | os.PathLike | None = None) -> np.ndarray:
    """Read MNIST labels from an IDX file (``.gz`` or plain).

    Parameters
    ----------
    path : str or path-like, optional
        Default: the training labels shipped in the package (:data:`MNIST_LABELS_PATH`),
        which match the shipped images one for one.

    Returns
    -------
    numpy.ndarray of uint8, shape (images,)
        The digit 0..9 of each image, in file order.

    Raises
    ------
    DataNotFoundError, FormatError
        See :func:`read_idx`.
    """
    return read_idx(MNIST_LABELS_PATH if path is None else path, 1, "MNIST labels")
