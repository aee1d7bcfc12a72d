"""Networks from elsewhere and on disk: importers and spdnn's own model file.

Modules: :mod:`.assemble` (what every importer shares: activations folded into layers,
sparse or dense storage by density), :mod:`.pytorch` (``nn.Sequential`` of ``nn.Linear``),
:mod:`.onnx_import` (``MatMul``/``Gemm``/``Add``/``Relu``/``Clip`` graphs),
:mod:`.spdnn_format` (the ``.spdnn`` file: save, load memory-mapped), :mod:`.read` (a
model file of any of these kinds, by its suffix) and :mod:`.example` (the small MNIST
network shipped in the package).

A list of scipy matrices and biases needs no importer: :meth:`spdnn.Network.from_layers`.
PyTorch and ONNX are optional (``pip install 'spdnn[torch]'``, ``'spdnn[onnx]'``),
imported only when a model of theirs is read.
"""
from __future__ import annotations

from .assemble import SPARSE_THRESHOLD, LayerSpec, assemble, choose_storage
from .example import ExampleFiles, example_files
from .onnx_import import from_onnx
from .pytorch import from_torch, read_torch_file
from .read import MODEL_SUFFIXES, read_model
from .spdnn_format import FORMAT_VERSION, MODEL_SUFFIX, load_model, read_header, save_model

__all__ = ["from_torch", "from_onnx", "read_torch_file", "read_model", "save_model", "load_model", "read_header",
           "assemble", "choose_storage", "LayerSpec", "SPARSE_THRESHOLD", "MODEL_SUFFIX", "MODEL_SUFFIXES",
           "FORMAT_VERSION", "example_files", "ExampleFiles"]
