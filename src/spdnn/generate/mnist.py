"""The MNIST training images shipped with spdnn: the source of the challenge's inputs.

:func:`load_mnist` reads them (or any IDX file of unsigned bytes);
:mod:`spdnn.generate.features` turns them into the challenge's features
(docs/challenge.md, Generator).

MNIST is by Y. LeCun, C. Cortes and C. J. C. Burges (CC BY-SA 3.0); see
``spdnn/data/MNIST-LICENSE.txt``.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, FormatError

__all__ = ["load_mnist", "MNIST_PATH", "MNIST_MD5"]

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
