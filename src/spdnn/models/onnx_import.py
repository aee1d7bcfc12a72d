"""Import an ONNX model: a chain of ``MatMul``/``Gemm``, ``Add``, ``Relu`` and ``Clip``.

What is read (the graph must be one chain from its one input to its one output):

* ``MatMul(x, W)`` with W an initializer (or a ``Constant``) of shape (n_in, n_out): a
  layer, W as is (spdnn's convention is ONNX's: rows are samples).
* ``Gemm(x, B[, C])`` with ``transA = 0``, ``alpha = beta = 1``: a layer, W = B, or B
  transposed when ``transB = 1`` (what ``torch.onnx.export`` writes for ``nn.Linear``);
  C (shape (n_out,) or (1, n_out)) is its bias.
* ``Add(x, b)`` (either order) right after a layer that has no bias yet: its bias.
  Biases are added to every output (the ``dense`` rule); none is a zero bias.
* ``Relu``; ``Clip`` with min 0 (and any max or none; inputs of opset >= 11 or the
  attributes of older opsets): a ReLU, capped at max; folded as
  :meth:`~spdnn.models.assemble.LayerSpec.clamp` says. A layer that nothing follows is
  an identity layer.
* no-ops: ``Identity`` (of a constant: another name for it, as exporters share equal
  initializers), ``Dropout`` (inference), ``Flatten`` with ``axis = 1``.

Initializers may be dense or sparse (``sparse_initializer``). Anything else is refused
naming the node, its op type and what is supported. Weights are taken in float64.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import DataNotFoundError, FormatError, OptionError
from ..network import Network
from .assemble import SPARSE_THRESHOLD, LayerSpec, assemble

__all__ = ["from_onnx", "require_onnx", "SUPPORTED_OPS"]

SUPPORTED_OPS = ("MatMul", "Gemm", "Add", "Relu", "Clip", "Identity", "Dropout", "Flatten")


def require_onnx():
    """Import onnx, or raise OptionError saying what to install."""
    try:
        import onnx
    except ImportError:
        raise OptionError("reading an ONNX model needs the onnx package: pip install 'spdnn[onnx]'") from None
    return onnx


def _sparse_initializer(tensor, numpy_helper) -> sp.coo_matrix | np.ndarray:
    """A SparseTensorProto as a scipy COO matrix (2-D) or a dense array (other ranks)."""
    dims = tuple(int(d) for d in tensor.dims)
    values = numpy_helper.to_array(tensor.values).astype(np.float64)
    indices = numpy_helper.to_array(tensor.indices).astype(np.int64)
    if indices.ndim == 1:   # linear positions
        coords = np.unravel_index(indices, dims) if values.size else tuple(np.zeros(0, np.int64) for _ in dims)
    else:
        coords = tuple(indices[:, i] for i in range(indices.shape[1]))
    if len(dims) == 2:
        return sp.coo_matrix((values, coords), shape=dims)
    dense = np.zeros(dims)
    dense[coords] = values
    return dense


def from_onnx(model, *, storage="auto", sparse_threshold: float = SPARSE_THRESHOLD) -> Network:
    """A spdnn :class:`Network` from an ONNX model (module docstring: what is read).

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
        A ``.onnx`` file or a loaded model.
    storage, sparse_threshold
        As in :func:`spdnn.models.from_torch`: per layer by density (sparse at or under
        25% nonzero) unless given.

    Raises
    ------
    FormatError
        The file is not ONNX, or a node is not supported (named, with its op type).
    OptionError
        The onnx package is missing (the message says what to install).
    """
    onnx = require_onnx()
    from onnx import numpy_helper

    path = None
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise DataNotFoundError(f"{path}: no such model file")
        try:
            model = onnx.load(os.fspath(path))
        except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds
            raise FormatError(f"not an ONNX model ({type(exc).__name__}: {exc})", path=path) from None
    where = str(path) if path is not None else "ONNX model"

    def refuse(message: str):
        if path is not None:
            raise FormatError(message, path=path)
        raise OptionError(f"{where}: {message}")

    if not hasattr(model, "graph"):
        refuse(f"expected an onnx.ModelProto, got {type(model).__name__}")
    graph = model.graph
    constants: dict[str, object] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for t in graph.sparse_initializer:
        constants[t.values.name] = _sparse_initializer(t, numpy_helper)
    inputs = [i.name for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        refuse(f"{len(inputs)} graph inputs besides initializers ({inputs}); expected one (the samples)")
    if len(graph.output) != 1:
        refuse(f"{len(graph.output)} graph outputs; expected one")
    current = inputs[0]
    specs: list[LayerSpec] = []
    has_bias: list[bool] = []

    def const(node, name, what):
        if name not in constants:
            refuse(f"node {node.name!r} ({node.op_type}): {what} {name!r} is not an initializer or constant "
                   "(weights and biases must be constants)")
        return constants[name]

    def fold(node, low, high):
        label = f"node {node.name!r} ({node.op_type})"
        if not specs:
            refuse(f"{label} comes before any MatMul or Gemm")
        why = specs[-1].clamp(low, high, label)
        if why is not None:
            refuse(why)

    def scalar(node, name, what):
        if not name:
            return None
        value = np.asarray(const(node, name, what), dtype=np.float64)
        if value.size != 1:
            refuse(f"node {node.name!r} (Clip): {what} of shape {value.shape}, expected a scalar")
        return float(value.reshape(()))

    for node in graph.node:
        op = node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        label = f"node {node.name!r} ({op})"
        if op == "Constant":
            if "value" not in attrs:
                refuse(f"{label}: only a 'value' tensor constant is supported")
            constants[node.output[0]] = numpy_helper.to_array(attrs["value"])
            continue
        if op == "Identity" and node.input and node.input[0] in constants:
            # another name for a constant: exporters alias equal initializers this way
            constants[node.output[0]] = constants[node.input[0]]
            continue
        data_inputs = [i for i in node.input if i and i not in constants]
        if op == "Add":
            if len(node.input) != 2 or data_inputs != [current]:
                refuse(f"{label}: expected the previous layer's output plus a constant bias")
            if not specs or has_bias[-1]:
                refuse(f"{label}: a bias must follow a MatMul that has none yet")
            other = node.input[1] if node.input[0] == current else node.input[0]
            specs[-1].bias = _bias(const(node, other, "bias"), specs[-1], label, refuse)
            has_bias[-1] = True
        elif data_inputs != [current] or node.input[0] != current:
            refuse(f"{label}: does not take the previous layer's output as its first input "
                   "(the graph must be one chain of layers)")
        elif op == "MatMul":
            w = const(node, node.input[1], "weight")
            if getattr(w, "ndim", 0) != 2:
                refuse(f"{label}: weight of shape {np.shape(w)}, expected 2 dimensions (n_in, n_out)")
            specs.append(_spec(w, label, refuse))
            has_bias.append(False)
        elif op == "Gemm":
            if attrs.get("transA", 0) != 0 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                refuse(f"{label}: transA={attrs.get('transA', 0)}, alpha={attrs.get('alpha', 1.0)}, "
                       f"beta={attrs.get('beta', 1.0)} (supported: transA=0, alpha=beta=1)")
            w = const(node, node.input[1], "weight")
            if getattr(w, "ndim", 0) != 2:
                refuse(f"{label}: weight of shape {np.shape(w)}, expected 2 dimensions")
            spec = _spec(w.T if attrs.get("transB", 0) else w, label, refuse)
            specs.append(spec)
            has_bias.append(len(node.input) > 2 and bool(node.input[2]))
            if has_bias[-1]:
                spec.bias = _bias(const(node, node.input[2], "bias"), spec, label, refuse)
        elif op == "Relu":
            fold(node, 0.0, None)
        elif op == "Clip":
            if "min" in attrs or "max" in attrs:      # opset < 11
                low, high = attrs.get("min", -math.inf), attrs.get("max", math.inf)
            else:
                low = scalar(node, node.input[1] if len(node.input) > 1 else "", "min")
                high = scalar(node, node.input[2] if len(node.input) > 2 else "", "max")
            fold(node, low, high)
        elif op in ("Identity", "Dropout"):
            if op == "Dropout" and len(node.output) > 1 and node.output[1]:
                refuse(f"{label}: its mask output is used (supported: inference, one output)")
        elif op == "Flatten":
            if attrs.get("axis", 1) != 1:
                refuse(f"{label}: axis {attrs.get('axis')} (supported: 1)")
        else:
            refuse(f"{label} is not supported (supported: {', '.join(SUPPORTED_OPS)}, Constant)")
        current = node.output[0]
    if graph.output[0].name != current:
        refuse(f"the graph's output {graph.output[0].name!r} is not the end of the chain ({current!r})")
    try:
        return assemble(specs, storage=storage, sparse_threshold=sparse_threshold, where=where)
    except OptionError as exc:
        refuse(str(exc))


def _spec(w, label: str, refuse) -> LayerSpec:
    if sp.issparse(w):
        weights = sp.csr_matrix(w, dtype=np.float64)
        values = weights.data
    else:
        weights = np.ascontiguousarray(w, dtype=np.float64)
        values = weights
    if not np.all(np.isfinite(values)):
        refuse(f"{label}: non-finite weights")
    return LayerSpec(weights, np.zeros(weights.shape[1]), label)


def _bias(b, spec: LayerSpec, label: str, refuse) -> np.ndarray:
    b = np.asarray(b.toarray() if sp.issparse(b) else b, dtype=np.float64)
    n = spec.weights.shape[1]
    if b.size == 1:
        b = np.full(n, float(b.reshape(())))
    elif b.shape in ((n,), (1, n)):
        b = b.reshape(n).copy()
    else:
        refuse(f"{label}: bias of shape {b.shape}, expected ({n},) or (1, {n})")
    if not np.all(np.isfinite(b)):
        refuse(f"{label}: non-finite bias")
    return b
