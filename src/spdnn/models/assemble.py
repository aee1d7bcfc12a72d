"""Imported layers to a :class:`~spdnn.network.Network`: the parts every importer shares.

An importer (PyTorch, ONNX) reads a chain of linear maps and activations and turns it
into :class:`LayerSpec` items, one per linear map, then calls :func:`assemble`. The
activations that follow a linear map are folded into its spec by :meth:`LayerSpec.clamp`
(ReLU is ``clamp(0, None)``, ``Hardtanh(0, c)`` and ``clamp(0, c)`` are a ReLU capped at
``c``); a linear map that nothing follows is an identity layer (a network's logits).

Storage: each layer is held sparse (CSR) or dense (a numpy array) by its density, the
fraction of nonzero weights: sparse when at most :data:`SPARSE_THRESHOLD` (25%) are
nonzero, dense otherwise; the caller may move the threshold or name the storage of every
layer. Imported biases use the ``dense`` rule (added to every output, as ``nn.Linear``
and ONNX ``Gemm``/``Add`` do); a map without a bias gets a zero bias.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import OptionError
from ..network import Network

__all__ = ["SPARSE_THRESHOLD", "STORAGES", "LayerSpec", "assemble", "choose_storage"]

#: A layer is stored sparse when at most this fraction of its weights are nonzero.
SPARSE_THRESHOLD = 0.25

#: Storage choices of a layer: by density, or forced.
STORAGES = ("auto", "sparse", "dense")


@dataclass
class LayerSpec:
    """One imported layer: ``act(y @ weights + bias)``.

    Attributes
    ----------
    weights : numpy.ndarray or scipy.sparse matrix, shape (n_in, n_out)
        Rows are input neurons (spdnn's convention: an ``nn.Linear`` weight transposed).
    bias : numpy.ndarray (n_out,) float64
    name : str
        Where it came from, named in messages ("module '3' (Linear)", "node 'gemm_1'").
    activation : {'identity', 'relu'}
    cap : float
        The ReLU's upper bound (``inf``: none).
    """

    weights: object
    bias: np.ndarray
    name: str
    activation: str = "identity"
    cap: float = math.inf

    def clamp(self, low, high, what: str) -> str | None:
        """Fold ``min(max(x, low), high)`` into this layer's activation (``None``: no bound).

        Returns None when it folds, else the reason it cannot (the importer names ``what``
        and refuses): only a lower bound of 0 makes a ReLU; once a ReLU, a lower bound
        <= 0 changes nothing and an upper bound caps it.
        """
        low = None if low is None or low == -math.inf else float(low)
        high = None if high is None or high == math.inf else float(high)
        if high is not None and not high > 0:
            return f"{what}: an upper bound of {high:g} (a ReLU's cap must be positive)"
        if self.activation == "identity":
            if low is None and high is None:
                return None
            if low != 0:
                return (f"{what}: a lower bound of {'none' if low is None else f'{low:g}'} on a linear output "
                        "(supported: a lower bound of 0, i.e. a ReLU, with any upper bound or none)")
            self.activation = "relu"
        elif low is not None and low > 0:
            return f"{what}: a lower bound of {low:g} after a ReLU (supported: 0 or below)"
        if high is not None:
            self.cap = min(self.cap, high)
        return None


def choose_storage(weights, threshold: float = SPARSE_THRESHOLD) -> str:
    """'sparse' when at most ``threshold`` of the weights are nonzero, else 'dense'."""
    rows, cols = weights.shape
    size = rows * cols
    nonzero = int(weights.count_nonzero()) if sp.issparse(weights) else int(np.count_nonzero(weights))
    return "sparse" if size == 0 or nonzero <= threshold * size else "dense"


def _storages(storage, depth: int) -> list[str]:
    if isinstance(storage, str):
        items = [storage] * depth
    else:
        items = list(storage)
        if len(items) != depth:
            raise OptionError(f"storage: {len(items)} values for {depth} layers (give one, or one per layer)")
    for k, s in enumerate(items):
        if s not in STORAGES:
            raise OptionError(f"storage of layer {k + 1}: {s!r}: expected one of {list(STORAGES)}")
    return items


def assemble(specs: Sequence[LayerSpec], *, storage="auto", sparse_threshold: float = SPARSE_THRESHOLD,
             where: str = "model") -> Network:
    """Build a :class:`Network` of imported layers (dense bias rule).

    Parameters
    ----------
    specs : sequence of LayerSpec
        In order; consecutive widths must chain.
    storage : {'auto', 'sparse', 'dense'} or a sequence of one per layer
        'auto' decides by density (:func:`choose_storage`).
    sparse_threshold : float in [0, 1]
        The density at or under which 'auto' stores a layer sparse.
    where : str
        The model, named when it has no layer.

    Raises :class:`OptionError` for a bad storage or threshold, or no layer.
    """
    if not specs:
        raise OptionError(f"{where}: no linear layer found (spdnn needs at least one)")
    if isinstance(sparse_threshold, bool) or not 0 <= float(sparse_threshold) <= 1:
        raise OptionError(f"sparse_threshold: {sparse_threshold!r}: expected a fraction in [0, 1]")
    layers = []
    for spec, kind in zip(specs, _storages(storage, len(specs))):
        w = spec.weights
        if kind == "auto":
            kind = choose_storage(w, float(sparse_threshold))
        if kind == "sparse":
            m = sp.csr_matrix(w, dtype=np.float64)
            m.eliminate_zeros()
            m.sum_duplicates()
            layers.append(m)
        else:
            layers.append(np.ascontiguousarray(w.toarray() if sp.issparse(w) else w, dtype=np.float64))
    for k in range(1, len(specs)):
        if layers[k].shape[0] != layers[k - 1].shape[1]:
            raise OptionError(f"{specs[k].name}: takes {layers[k].shape[0]} inputs but {specs[k - 1].name} "
                              f"gives {layers[k - 1].shape[1]}")
    return Network.from_layers(layers, bias=[s.bias for s in specs], bias_rule="dense",
                               activation=[s.activation for s in specs], ymax=[s.cap for s in specs])
