"""The network model: layers of sparse weights, a bias per layer, and the features.

Semantics (the official MATLAB reference, ``inferenceReLUvec.m``), rows are samples::

    Z       = Y_k @ W_k                                  # (samples x N) @ (N x N)
    Y_{k+1} = min(max(Z + b_k * (Z != 0), 0), ymax)      # bias only on structural nonzeros

A sample whose row of ``Y_L`` has any nonzero is a *category*; categories are reported
as sorted 1-based sample ids.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .errors import OptionError, quote

__all__ = ["Network", "LazyLayers", "as_layer", "as_features", "OFFICIAL_BIAS", "OFFICIAL_SAMPLES", "YMAX"]

#: Activation cap of the challenge.
YMAX = 32.0

#: Official bias (one constant per network size), docs/challenge.md, Semantics.
OFFICIAL_BIAS = {1024: -0.30, 4096: -0.35, 16384: -0.40, 65536: -0.45}

#: Number of input samples of every official problem (the MNIST training images).
OFFICIAL_SAMPLES = 60_000


def as_layer(matrix, neurons: int | None = None, *, name: str = "layer") -> sp.csr_matrix:
    """Return ``matrix`` as a canonical float64 CSR matrix (sorted indices, duplicates summed).

    Parameters
    ----------
    matrix : scipy.sparse matrix or array-like, shape (N, N)
        Rows are input neurons, columns output neurons.
    neurons : int, optional
        Expected N; a different shape raises :class:`OptionError`.

    Raises :class:`OptionError` for a NaN or infinite weight (1-based position named),
    as the file readers do.
    """
    m = sp.csr_matrix(matrix, dtype=np.float64)
    if neurons is not None and m.shape != (neurons, neurons):
        raise OptionError(f"{name}: shape {m.shape}, expected ({neurons}, {neurons})")
    if m.shape[0] != m.shape[1]:
        raise OptionError(f"{name}: shape {m.shape} is not square")
    if not m.has_canonical_format:
        m.sum_duplicates()
    if m.nnz and not np.all(np.isfinite(m.data)):
        i = int(np.argmin(np.isfinite(m.data)))
        row = int(np.searchsorted(m.indptr, i, side="right")) - 1
        raise OptionError(f"{name}: weight {m.data[i]} at (row {row + 1}, column {int(m.indices[i]) + 1}) is not "
                          f"finite (NaN and inf are not allowed)")
    return m


def as_features(matrix, neurons: int | None = None) -> sp.csr_matrix:
    """Return features as a canonical float64 CSR matrix of shape (samples, N).

    Row i is sample i+1 (0-based row, 1-based sample id in categories).
    """
    m = sp.csr_matrix(matrix, dtype=np.float64)
    if neurons is not None and m.shape[1] != neurons:
        raise OptionError(f"features: {m.shape[1]} columns, expected {neurons} (one per neuron)")
    if not m.has_canonical_format:
        m.sum_duplicates()
    if m.nnz and not np.all(np.isfinite(m.data)):
        raise OptionError("features: non-finite values")
    return m


class LazyLayers(Sequence):
    """A read-only sequence of layers made on demand by ``make(k)`` (k 0-based).

    Lets very deep or very wide networks (65536 x 1920 is 4e9 edges) exist without
    holding every layer in memory: each access calls ``make`` again and nothing is
    kept, so a consumer that drops each layer after use holds one layer at a time.
    Generated networks build layers from a seed; official networks map them from the
    binary cache (:mod:`spdnn.formats.cache`).

    Parameters
    ----------
    make : callable(int) -> scipy.sparse.csr_matrix
        Builds layer k, shape (N, N), float64, canonical.
    depth : int
        Number of layers L.
    nnz_per_layer : int, optional
        nnz of every layer, when all layers have the same count and it is known
        without building them (RadiX-Net: 32 N).
    layer_nnz : sequence of int, optional
        nnz of each layer (at least ``depth`` of them), when known without building them.
    """

    def __init__(self, make: Callable[[int], sp.csr_matrix], depth: int, *, nnz_per_layer: int | None = None,
                 layer_nnz: Sequence[int] | None = None):
        self._make = make
        self._depth = int(depth)
        self.nnz_per_layer = nnz_per_layer
        self.layer_nnz = None if layer_nnz is None else [int(v) for v in layer_nnz[:self._depth]]
        if self.layer_nnz is not None and len(self.layer_nnz) != self._depth:
            raise OptionError(f"layer_nnz: {len(self.layer_nnz)} counts for {self._depth} layers")

    @property
    def nnz_total(self) -> int | None:
        """Sum of nnz over all layers if known without building them, else None."""
        if self.layer_nnz is not None:
            return sum(self.layer_nnz)
        return None if self.nnz_per_layer is None else self.nnz_per_layer * self._depth

    def truncated(self, depth: int) -> "LazyLayers":
        """The first ``depth`` layers, still lazy."""
        return LazyLayers(self._make, depth, nnz_per_layer=self.nnz_per_layer, layer_nnz=self.layer_nnz)

    def __len__(self) -> int:
        return self._depth

    def __getitem__(self, k):
        if isinstance(k, slice):
            idx = range(self._depth)[k]
            return [self[i] for i in idx]
        k = int(k)
        if k < 0:
            k += self._depth
        if not 0 <= k < self._depth:
            raise IndexError(f"layer {k} out of range for depth {self._depth}")
        return self._make(k)


@dataclass(frozen=True)
class Network:
    """A sparse DNN.

    Attributes
    ----------
    layers : Sequence of scipy.sparse.csr_matrix, each (N, N) float64
        ``layers[k]`` is W_{k+1}; rows are input neurons, columns output neurons.
        A plain list is validated at construction; a :class:`LazyLayers` is trusted.
    bias : numpy.ndarray, shape (L, N), float64
        ``bias[k]`` is added to the structural nonzeros of ``Y_k @ W_k``. May be a
        read-only broadcast view (a constant bias costs no memory).
    ymax : float
        Activation cap (32 in the challenge).
    """

    layers: Sequence
    bias: np.ndarray
    ymax: float = YMAX
    _edges: list = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def from_layers(cls, layers: Sequence, bias, *, ymax: float = YMAX) -> "Network":
        """Build a network from layers and a bias.

        Parameters
        ----------
        layers : sequence of sparse matrices (N, N), or :class:`LazyLayers`
        bias : float, array (N,), or array (L, N)
            A scalar or a vector is broadcast to every layer.
        ymax : float
        """
        if not isinstance(layers, LazyLayers):
            layers = [as_layer(w, name=f"layer {k + 1}") for k, w in enumerate(layers)]
        depth = len(layers)
        if depth == 0:
            raise OptionError("a network needs at least one layer")
        first = layers[0]
        neurons = first.shape[0]
        if not isinstance(layers, LazyLayers):
            for k, w in enumerate(layers):
                if w.shape != (neurons, neurons):
                    raise OptionError(f"layer {k + 1}: shape {w.shape}, expected ({neurons}, {neurons})")
        try:
            b = np.asarray(bias, dtype=np.float64)
        except (TypeError, ValueError):
            raise OptionError(f"bias={quote(str(bias))}: expected a number, an array (N,) or an array (L, N)") from None
        if b.ndim == 0 or b.shape == (neurons,):
            b = np.broadcast_to(b, (depth, neurons))
        elif b.shape != (depth, neurons):
            raise OptionError(f"bias: shape {b.shape}, expected (), ({neurons},) or ({depth}, {neurons})")
        if not np.all(np.isfinite(b)):
            raise OptionError("bias: non-finite values")
        if isinstance(ymax, (bool, np.bool_)) or not isinstance(ymax, (int, float, np.integer, np.floating)) \
                or not (np.isfinite(ymax) and ymax > 0):
            raise OptionError(f"ymax={ymax}: expected a positive finite number")
        return cls(layers=layers, bias=b, ymax=float(ymax))

    @property
    def neurons(self) -> int:
        """N, the width of every layer."""
        return int(self.bias.shape[1])

    @property
    def depth(self) -> int:
        """L, the number of layers."""
        return len(self.layers)

    @property
    def edges(self) -> int:
        """Sum over layers of nnz(W_k): the challenge's edge count per sample."""
        if not self._edges:
            total = getattr(self.layers, "nnz_total", None)
            if total is None:
                total = sum(int(w.nnz) for w in self.layers)
            self._edges.append(int(total))
        return self._edges[0]

    def uniform_bias(self) -> float | None:
        """The single bias value if every layer and neuron has the same one, else None."""
        b = self.bias
        if b.size == 0:
            return None
        first = float(b.flat[0])
        if all(s == 0 for s in b.strides) or np.all(b == first):
            return first
        return None

    def truncated(self, depth: int) -> "Network":
        """The first ``depth`` layers of this network (a view; no copy of the weights)."""
        if not 1 <= depth <= self.depth:
            raise OptionError(f"depth {depth}: expected 1..{self.depth}")
        if isinstance(self.layers, LazyLayers):
            layers = self.layers.truncated(depth)
        else:
            layers = list(self.layers[:depth])
        return Network(layers=layers, bias=self.bias[:depth], ymax=self.ymax)
