"""Inputs and labels of ``spdnn predict``, by file type.

Inputs (every reader returns a canonical float64 CSR matrix, samples x n_0, row i =
sample i, 0-based):

* ``.npy``: a dense 2-D array, samples x n_0, of numbers (read memory-mapped, then
  converted to CSR).
* ``.npz``: the features layout of :mod:`spdnn.formats.npz` (CSR arrays).
* MNIST IDX images (``*idx3-ubyte``, optionally ``.gz``): each image flattened row by row
  (28 x 28 -> 784) and scaled to [0, 1] as ``pixel / 255`` in float64.
* the official features (``.tsv[.gz]``: ``sample \\t feature \\t value``, 1-based; or
  MatrixMarket ``.mtx[.gz]``), read by :func:`spdnn.formats.read_features`.

Labels (:func:`read_labels`, int64, one a sample): MNIST IDX labels (``*idx1-ubyte[.gz]``),
a 1-D ``.npy`` of integers, or text (``.txt``/``.tsv``/``.csv``, one integer a line).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import DataNotFoundError, FormatError

__all__ = ["read_inputs", "read_labels", "input_kind", "INPUT_KINDS"]

#: Kinds of input files and how they are recognised.
INPUT_KINDS = {"npy": ".npy", "npz": ".npz", "idx": "*idx3-ubyte[.gz]", "official": ".tsv[.gz] or .mtx[.gz]"}


def _name(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def input_kind(path: str | os.PathLike) -> str:
    """'npy', 'npz', 'idx' or 'official' by the file's name; FormatError for anything else."""
    path = Path(path)
    name = _name(path)
    if name.endswith(".npy") and not path.name.lower().endswith(".gz"):
        return "npy"
    if name.endswith(".npz") and not path.name.lower().endswith(".gz"):
        return "npz"
    if name.endswith("idx3-ubyte"):
        return "idx"
    if name.endswith((".tsv", ".mtx")):
        return "official"
    raise FormatError("unknown inputs file type: expected " + ", ".join(INPUT_KINDS.values()), path=path)


def read_inputs(path: str | os.PathLike, inputs: int | None = None, *, progress: bool | None = None
                ) -> sp.csr_matrix:
    """Read input samples (module docstring: the file types).

    Parameters
    ----------
    path : str or os.PathLike
    inputs : int, optional
        n_0, the values per sample the network takes: a file with another width is a
        :class:`FormatError` naming both.
    progress : bool, optional
        Progress bar while parsing official TSV files.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (samples, n_0), float64, canonical

    Raises
    ------
    DataNotFoundError
        No such file.
    FormatError
        Unknown type, malformed content, non-finite values or the wrong width.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such inputs file")
    kind = input_kind(path)
    if kind == "npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FormatError(f"not a .npy array ({exc})", path=path) from None
        if array.ndim != 2 or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise FormatError(f"a {array.ndim}-D {array.dtype} array: expected 2-D numbers, samples x inputs",
                              path=path)
        matrix = sp.csr_matrix(np.asarray(array, dtype=np.float64))
    elif kind == "npz":
        from .npz import read_features_npz

        matrix = read_features_npz(path)
    elif kind == "idx":
        from ..generate.mnist import read_idx

        images = read_idx(path, 3, "MNIST images")
        matrix = sp.csr_matrix(images.reshape(images.shape[0], -1).astype(np.float64) / 255.0)
    else:
        from .features import read_features

        matrix = read_features(path, inputs, progress=progress)
    if inputs is not None and matrix.shape[1] != inputs:
        raise FormatError(f"{matrix.shape[1]} values a sample, the network takes {inputs}", path=path)
    if matrix.nnz and not np.all(np.isfinite(matrix.data)):
        raise FormatError("non-finite input values", path=path)
    if not matrix.has_canonical_format:
        matrix.sum_duplicates()
    return matrix


def read_labels(path: str | os.PathLike, samples: int | None = None) -> np.ndarray:
    """Read one integer label a sample (module docstring: the file types).

    Parameters
    ----------
    path : str or os.PathLike
    samples : int, optional
        The number of input samples: a file with fewer labels is a FormatError (more are
        allowed: the first ``samples`` are returned).

    Returns
    -------
    numpy.ndarray of int64, shape (labels,)
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such labels file")
    name = _name(path)
    if name.endswith("idx1-ubyte"):
        from ..generate.mnist import read_idx

        labels = read_idx(path, 1, "labels").astype(np.int64)
    elif name.endswith(".npy") and not path.name.lower().endswith(".gz"):
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FormatError(f"not a .npy array ({exc})", path=path) from None
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise FormatError(f"a {array.ndim}-D {array.dtype} array: expected 1-D integers", path=path)
        labels = array.astype(np.int64)
    elif name.endswith((".txt", ".tsv", ".csv")):
        values = []
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line_no, line in enumerate(fh, 1):
                text = line.strip()
                if not text:
                    continue
                try:
                    values.append(int(text))
                except ValueError:
                    raise FormatError(f"{text[:40]!r} is not an integer label", path=path, line=line_no) from None
        labels = np.asarray(values, dtype=np.int64)
    else:
        raise FormatError("unknown labels file type: expected *idx1-ubyte[.gz], .npy or .txt (one integer a line)",
                          path=path)
    if samples is not None:
        if labels.shape[0] < samples:
            raise FormatError(f"{labels.shape[0]} labels for {samples} samples", path=path)
        labels = labels[:samples]
    return labels
