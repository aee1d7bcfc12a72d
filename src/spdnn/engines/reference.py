"""The reference engine: scipy sparse products, the official semantics, nothing clever.

Per layer (rows are samples; docs/challenge.md, Semantics)::

    Z = Y @ W_k                        # scipy CSR x CSR
    Z.eliminate_zeros()                # "structural" nonzero = numerically nonzero, as MATLAB's logical(Z)
    Z.data += b_k[col]                 # bias only where Z != 0
    Z.data = clip(Z.data, 0, ymax)     # ReLU and cap
    drop rows that became all zero     # exact for any bias sign: a zero row gets no bias

In 'fp64' (its default) it is the truth for generated data. 'fp32' reproduces scipy's
float32 summation order (which can differ from float64 on ill-conditioned samples:
docs/challenge.md, Numerics).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..network import Network
from .base import Engine
from .._progress import progress_bar

__all__ = ["ReferenceEngine", "reference_layer"]


def reference_layer(y: sp.csr_matrix, w: sp.csr_matrix, bias: np.ndarray, ymax: float) -> sp.csr_matrix:
    """One layer of the official semantics on CSR activations.

    Parameters
    ----------
    y : csr_matrix (samples, N), dtype float32 or float64
    w : csr_matrix (N, N), same dtype as ``y``
    bias : ndarray (N,), same dtype
    ymax : float

    Returns
    -------
    csr_matrix (samples, N): the next activations, explicit zeros removed.
    """
    z = (y @ w).tocsr()
    z.eliminate_zeros()
    # scipy accumulates each output over the nonzeros of y's row in stored order;
    # keeping rows sorted makes that order "ascending input neuron", the contract of
    # every fp64 engine (see engines.base).
    z.sort_indices()
    if z.nnz:
        z.data += bias[z.indices]
        np.clip(z.data, 0, ymax, out=z.data)
        z.eliminate_zeros()
    return z


class ReferenceEngine(Engine):
    """scipy reference engine (float64 by default); see the module docstring."""

    name = "reference"

    def __init__(self, *, precision: str = "fp64", progress: bool = False):
        super().__init__(precision=precision, progress=progress)
        self._weights: list[sp.csr_matrix] | None = None

    def prepare(self, network: Network) -> None:
        self.network = network
        # Conversion is cheap for float64 (a no-op view); do it per layer in infer
        # for lazy networks so a 4e9-edge network never sits in memory at once.
        self._weights = None
        if isinstance(network.layers, list):
            self._weights = [self.weights(k).astype(self.dtype, copy=False) for k in range(network.depth)]

    def load(self, features) -> None:
        super().load(features)
        y = self.features.astype(self.dtype)
        y.sort_indices()
        alive = np.diff(y.indptr) > 0
        self._rows = np.flatnonzero(alive).astype(np.int64)
        self._y = y[alive] if not alive.all() else y

    def _infer(self, start: int, stop: int):
        net = self.network
        y, ids = self._y, self._rows
        survivors = np.zeros(stop - start, dtype=np.int64)
        ymax = self.dtype(net.ymax)
        for k in progress_bar(range(start, stop), enabled=self.progress, desc="reference layers"):
            w = self._weights[k] if self._weights is not None else self.weights(k).astype(self.dtype)
            y = reference_layer(y, w, net.bias[k].astype(self.dtype), ymax)
            alive = np.diff(y.indptr) > 0
            if not alive.all():
                y = y[alive]
                ids = ids[alive]
            survivors[k - start] = len(ids)
            if len(ids) == 0:
                break
        self._y, self._rows = y, ids
        return ids + 1, survivors, {}

    def activations(self):
        return self._rows.copy(), self._y.astype(np.float64)
