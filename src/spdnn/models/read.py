"""Read a model file of any kind spdnn knows, by its suffix."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataNotFoundError, FormatError
from ..network import Network
from .assemble import SPARSE_THRESHOLD

__all__ = ["read_model", "MODEL_SUFFIXES"]

#: Suffix -> kind of model file.
MODEL_SUFFIXES = {".spdnn": "spdnn", ".onnx": "onnx", ".pt": "torch", ".pth": "torch"}


def read_model(path: str | os.PathLike, *, trust_pickle: bool = False, hidden_cap: float | None = None,
               storage="auto", sparse_threshold: float = SPARSE_THRESHOLD) -> Network:
    """A network from a ``.spdnn``, ``.onnx`` or ``.pt``/``.pth`` file.

    Parameters
    ----------
    path : str or os.PathLike
    trust_pickle, hidden_cap
        For ``.pt``/``.pth`` files (:func:`spdnn.models.read_torch_file`).
    storage, sparse_threshold
        For imported models (``.onnx``, ``.pt``): how each layer is held (by density:
        sparse at or under 25% nonzero). A ``.spdnn`` file keeps the storage it was saved with.

    Raises
    ------
    DataNotFoundError
        No such file.
    FormatError
        An unknown suffix, or a file that cannot be read (named, with what is wrong).
    OptionError
        The optional package the file needs is missing (the message says what to install).
    """
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"{path}: no such model file")
    kind = MODEL_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FormatError(f"unknown model file type {path.suffix!r}: expected one of "
                          f"{', '.join(MODEL_SUFFIXES)}", path=path)
    if kind == "spdnn":
        from .spdnn_format import load_model

        return load_model(path)
    if kind == "onnx":
        from .onnx_import import from_onnx

        return from_onnx(path, storage=storage, sparse_threshold=sparse_threshold)
    from .pytorch import read_torch_file

    return read_torch_file(path, trust_pickle=trust_pickle, hidden_cap=hidden_cap, storage=storage,
                           sparse_threshold=sparse_threshold)
