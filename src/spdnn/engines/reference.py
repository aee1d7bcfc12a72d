"""The reference engine: scipy sparse products, the official semantics, nothing clever.

Per layer (rows are samples; docs/challenge.md, Semantics; :mod:`spdnn.network` for the
general rules)::

    Z = Y @ W_k                        # scipy CSR x CSR (or CSR x dense for a dense layer)
    Z.eliminate_zeros()                # "structural" nonzero = numerically nonzero, as MATLAB's logical(Z)
    Z.data += b_k[col]                 # structural bias: only where Z != 0
      (or Z = Z + b_k, dense)          # dense bias: every output
    Z.data = clip(Z.data, 0, cap)      # ReLU and cap (cap inf: none; identity: nothing)
    drop rows that became all zero     # only where every later layer keeps zero rows zero
                                       # (Network.prunes_after): always in the challenge

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


def reference_layer(y: sp.csr_matrix, w, bias: np.ndarray, ymax: float, *, bias_rule: str = "structural",
                    activation: str = "relu") -> sp.csr_matrix:
    """One layer of the official semantics (and its generalization) on CSR activations.

    Parameters
    ----------
    y : csr_matrix (samples, n_in), dtype float32 or float64, sorted indices
    w : csr_matrix or numpy.ndarray (n_in, n_out), same dtype as ``y``
    bias : ndarray (n_out,), same dtype
    ymax : float
        ReLU cap (``inf``: none); unused for ``activation='identity'``.
    bias_rule : {'structural', 'dense'}
    activation : {'relu', 'identity'}

    Returns
    -------
    csr_matrix (samples, n_out): the next activations, explicit zeros removed, sorted.
    """
    # scipy accumulates each output over the nonzeros of y's row in stored order (for a
    # sparse and for a dense W); keeping rows sorted makes that order "ascending input
    # neuron", the contract of every fp64 engine (see engines.base). Zero weights of a
    # dense W add exact zeros.
    z = y @ w
    if bias_rule == "dense":
        z = np.asarray(z.toarray() if sp.issparse(z) else z)
        z += bias
        if activation == "relu":
            np.clip(z, 0, ymax, out=z)
        return sp.csr_matrix(z)
    z = sp.csr_matrix(z)
    z.eliminate_zeros()
    z.sort_indices()
    if z.nnz:
        z.data += bias[z.indices]
        if activation == "relu":
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
        self._rows = np.arange(y.shape[0], dtype=np.int64)
        self._y = y
        if self.network.prunes_after(0):
            self._drop_zero_rows()

    def _drop_zero_rows(self) -> None:
        alive = np.diff(self._y.indptr) > 0
        if not alive.all():
            self._y, self._rows = self._y[alive], self._rows[alive]

    def _infer(self, start: int, stop: int):
        net = self.network
        survivors = np.zeros(stop - start, dtype=np.int64)
        for k in progress_bar(range(start, stop), enabled=self.progress, desc="reference layers"):
            w = self._weights[k] if self._weights is not None else self.weights(k).astype(self.dtype)
            rule = net.rule(k)
            self._y = reference_layer(self._y, w, net.bias[k].astype(self.dtype), self.dtype(rule.cap),
                                      bias_rule=rule.bias_rule, activation=rule.activation)
            if net.prunes_after(k + 1):
                self._drop_zero_rows()
            survivors[k - start] = int(np.count_nonzero(np.diff(self._y.indptr)))
            if len(self._rows) == 0:
                self._y = sp.csr_matrix((0, net.widths[stop]), dtype=self.dtype)     # the last layer's width
                break
        alive = np.diff(self._y.indptr) > 0
        return self._rows[alive] + 1, survivors, {}

    def _activations(self):
        alive = np.diff(self._y.indptr) > 0
        return self._rows[alive].copy(), self._y[alive].astype(np.float64)
