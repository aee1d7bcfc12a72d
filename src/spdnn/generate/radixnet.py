"""RadiX-Net weights: the challenge's sparse layers (docs/challenge.md, Generator).

For N neurons let M = N / 16 and S = log2(M). Layer k (1-based) uses the place value
p = 2**((k - 1) mod S) and the base pattern::

    B_p[u, v] = 1  iff  u == v  or  u == (v + p) mod M      (M x M; u input, v output, 0-based)
    K_p       = kron(ones(16, 16), B_p)                      (N x N)
    W_k       = K_p / 16

so every row and every column has exactly 32 nonzeros, all 1/16 = 0.0625. Layers
1..S are K_p / 16 itself (these equal the official N = 1024 layers bit for bit).
Every later layer permutes the ROWS (input neurons) of K_p / 16 and keeps its columns in
K_p's order::

    W_k[i, j] = K_p[rows[i], j] / 16,   rows = radixnet_permutations(N, k, seed)

with the permutation drawn from ``numpy.random.default_rng([seed, k])``, so each layer
can be built alone, in any order, and always the same way. The official permutations
are unknown; a seed stands in for them. Keeping the columns is what the official layers
do: output neurons v and v + a M (a = 0..15) have the same inputs in every layer (K_p's
column v depends only on v mod M, and a row permutation keeps columns equal), so a layer
has at most M distinct columns, a property kernels may rely on.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import OptionError
from ..network import LazyLayers, Network, OFFICIAL_BIAS

__all__ = ["check_neurons", "default_bias", "radixnet_base", "radixnet_permutations", "radixnet_layer",
           "radixnet_network", "place_value", "WEIGHT", "FAN"]

#: Value of every weight.
WEIGHT = 1.0 / 16.0
#: Nonzeros in every row and every column.
FAN = 32


def check_neurons(neurons) -> int:
    """Validate N = 16 * 2**S with S >= 1 and return it as an int.

    Raises
    ------
    OptionError
        For anything else (the message lists the valid sizes near N).
    """
    if isinstance(neurons, (bool, np.bool_)) or not isinstance(neurons, (int, np.integer)):
        raise OptionError(f"neurons={neurons!r}: expected an integer 16 * 2**S with S >= 1 (32, 64, 128, ...)")
    n = int(neurons)
    if n < 32 or n & (n - 1):
        raise OptionError(f"neurons={n}: expected 16 * 2**S with S >= 1 (32, 64, 128, ..., 1024, 4096, ...)")
    return n


def default_bias(neurons: int) -> float:
    """The bias the generator uses for N neurons.

    The official value where there is one (1024: -0.30, 4096: -0.35, 16384: -0.40,
    65536: -0.45); elsewhere the same rule extended, -0.05 per factor 4 in N:
    ``-0.30 - 0.025 * log2(N / 1024)`` (e.g. 32: -0.175, 64: -0.20, 2048: -0.325).
    """
    n = check_neurons(neurons)
    if n in OFFICIAL_BIAS:
        return float(OFFICIAL_BIAS[n])
    return round(-0.30 - 0.025 * ((n.bit_length() - 1) - 10), 6)


def _check_layer_number(k) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise OptionError(f"layer k={k!r}: expected a 1-based layer number >= 1")
    return int(k)


def place_value(neurons: int, k: int) -> int:
    """p = 2**((k - 1) mod S) of layer k (1-based), S = log2(N / 16)."""
    n = check_neurons(neurons)
    k = _check_layer_number(k)
    s = (n // 16).bit_length() - 1
    return 1 << ((k - 1) % s)


def _base_columns(neurons: int, p: int) -> np.ndarray:
    """Sorted column indices of every row of K_p, shape (N, 32), int64, 0-based."""
    m = neurons // 16
    u = np.arange(neurons, dtype=np.int64) % m
    # B_p[u, v] = 1 for v = u and v = (u - p) mod M; K_p repeats it in 16 column blocks.
    v = np.stack([u, (u - p) % m], axis=1)                          # (N, 2)
    blocks = np.arange(16, dtype=np.int64) * m                      # (16,)
    cols = (blocks[None, :, None] + v[:, None, :]).reshape(neurons, FAN)
    cols.sort(axis=1)
    return cols


def _csr(cols: np.ndarray, neurons: int) -> sp.csr_matrix:
    indptr = np.arange(0, neurons * FAN + 1, FAN, dtype=np.int64)
    data = np.full(neurons * FAN, WEIGHT)
    index_dtype = np.int32 if neurons * FAN < 2**31 else np.int64
    w = sp.csr_matrix((data, cols.reshape(-1).astype(index_dtype), indptr.astype(index_dtype)),
                      shape=(neurons, neurons))
    w.has_sorted_indices = True
    w.has_canonical_format = True
    return w


def radixnet_base(neurons: int, p: int) -> sp.csr_matrix:
    """K_p / 16: the unpermuted pattern with place value p (1 <= p < N / 16), CSR float64 (N, N)."""
    n = check_neurons(neurons)
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)) or not 1 <= p < n // 16:
        raise OptionError(f"place value p={p!r}: expected an integer in 1..{n // 16 - 1}")
    return _csr(_base_columns(n, int(p)), n)


def radixnet_permutations(neurons: int, k: int, *, seed: int = 0) -> np.ndarray | None:
    """Row permutation of layer k (1-based), or None for layers 1..S.

    Returns
    -------
    rows : int64 array of length N, or None
        ``W_k[i, j] = K_p[rows[i], j] / 16`` (input neuron i of layer k is row
        ``rows[i]`` of K_p; columns are not permuted), ``rows =
        numpy.random.default_rng([seed, k]).permutation(N)``.
    """
    n = check_neurons(neurons)
    k = _check_layer_number(k)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"seed={seed!r}: expected a non-negative integer")
    s = (n // 16).bit_length() - 1
    if k <= s:
        return None
    return np.random.default_rng([int(seed), k]).permutation(n)


def radixnet_layer(neurons: int, k: int, *, seed: int = 0) -> sp.csr_matrix:
    """Layer k (1-based) of the RadiX-Net of N neurons (see the module docstring).

    Parameters
    ----------
    neurons : int
        N = 16 * 2**S, S >= 1.
    k : int
        1-based layer number (any k >= 1; place values repeat every S layers).
    seed : int
        Seed of the row permutations of layers S+1, S+2, ... (layers 1..S do not use it).

    Returns
    -------
    scipy.sparse.csr_matrix, float64, shape (N, N)
        Canonical CSR; rows are input neurons, columns output neurons; 32 nonzeros of
        value 0.0625 in every row and every column.
    """
    n = check_neurons(neurons)
    p = place_value(n, k)
    cols = _base_columns(n, p)
    rows = radixnet_permutations(n, k, seed=seed)
    if rows is not None:
        cols = cols[rows]          # rows of K_p moved, each still sorted
    return _csr(cols, n)


def radixnet_network(neurons: int, layers: int, *, seed: int = 0, bias=None,
                     materialize: bool = False) -> Network:
    """The RadiX-Net network of N neurons and L layers.

    Parameters
    ----------
    neurons : int
        N = 16 * 2**S, S >= 1.
    layers : int
        L >= 1.
    seed : int
        Permutation seed (see :func:`radixnet_layer`).
    bias : float or array (N,) or (L, N), optional
        Default: the official bias of N (docs/challenge.md, Semantics); required for other N.
    materialize : bool
        False (default): the layers are a :class:`~spdnn.network.LazyLayers` that builds
        layer k on each access (nothing held in memory). True: a list of all L layers
        (N * L * 32 * 12 bytes).

    Returns
    -------
    Network
    """
    n = check_neurons(neurons)
    if isinstance(layers, (bool, np.bool_)) or not isinstance(layers, (int, np.integer)) or layers < 1:
        raise OptionError(f"layers={layers!r}: expected an integer >= 1")
    if bias is None:
        if n not in OFFICIAL_BIAS:
            raise OptionError(f"neurons={n} has no official bias (only {sorted(OFFICIAL_BIAS)}): pass bias=")
        bias = OFFICIAL_BIAS[n]
    radixnet_permutations(n, 1, seed=seed)  # validates the seed now rather than on first access

    def make(index: int) -> sp.csr_matrix:
        return radixnet_layer(n, index + 1, seed=seed)

    lazy = LazyLayers(make, int(layers), nnz_per_layer=FAN * n)
    return Network.from_layers(list(lazy) if materialize else lazy, bias)
