"""The network model: a sequence of layers, each a weight matrix, a bias, a bias rule
and an activation; and the features.

Convention (stated once, here; every engine, importer and format follows it): rows are
samples and a layer maps a row ``y`` of ``n_{k-1}`` values to ``n_k`` values by
``y @ W_k``, so ``W_k`` has shape ``(n_{k-1}, n_k)`` (rows = input neurons, columns =
output neurons). A PyTorch ``nn.Linear(n_in, n_out).weight`` is ``W_k`` transposed.

Per layer k (0-based here; 1-based in messages)::

    Z       = Y_k @ W_k                                   # (samples x n_{k-1}) @ (n_{k-1} x n_k)
    Z'      = Z + b_k * (Z != 0)    if rule == "structural"   (the challenge: bias only on nonzeros)
            = Z + b_k               if rule == "dense"        (a standard layer: bias everywhere)
    Y_{k+1} = min(max(Z', 0), cap)  if activation == "relu"   (cap 32 in the challenge; inf: none)
            = Z'                    if activation == "identity"  (a linear output layer)

The challenge (the default) is L square N x N sparse layers, a structural bias and ReLU
capped at 32; official semantics from ``inferenceReLUvec.m``. A sample whose final row
has any nonzero is a *category*; categories are sorted 1-based sample ids. The
*prediction* of a sample is the argmax of its final row (the lowest index on ties).

Weights are sparse (canonical float64 CSR) or dense (a float64 ``numpy.ndarray``, held
and run as dense). Every sum is accumulated over the input neurons in ascending order
(the exactness contract of :mod:`spdnn.engines.base`); a zero weight or input adds an
exact zero, so a dense layer gives the same bits as its sparse form.

Which rows may be dropped: a row that is zero stays zero through layer k when the rule
is structural, when every bias of the layer is 0, or when the activation is ReLU and
every bias is <= 0 (:meth:`Network.keeps_zero`). Engines prune dead samples only where
every later layer keeps zeros (:meth:`Network.prunes_after`), never by assumption.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .errors import OptionError, quote

__all__ = ["Network", "LazyLayers", "as_layer", "as_features", "OFFICIAL_BIAS", "OFFICIAL_SAMPLES", "YMAX",
           "BIAS_RULES", "ACTIVATIONS"]

#: Activation cap of the challenge.
YMAX = 32.0

#: Official bias (one constant per network size), docs/challenge.md, Semantics.
OFFICIAL_BIAS = {1024: -0.30, 4096: -0.35, 16384: -0.40, 65536: -0.45}

#: Number of input samples of every official problem (the MNIST training images).
OFFICIAL_SAMPLES = 60_000

#: Bias rules: "structural" adds the bias where Z != 0 (the challenge), "dense" everywhere.
BIAS_RULES = ("structural", "dense")
#: Activations: "relu" (clamped to [0, cap]; cap inf = uncapped) or "identity" (linear).
ACTIVATIONS = ("relu", "identity")


def as_layer(matrix, neurons: int | None = None, *, name: str = "layer", square: bool = True):
    """Return a layer's weights in canonical form.

    A scipy sparse matrix (or anything not a numpy array) becomes canonical float64 CSR
    (sorted indices, duplicates summed); a ``numpy.ndarray`` stays dense (C-contiguous
    float64), as a dense layer is stored and run.

    Parameters
    ----------
    matrix : scipy.sparse matrix, numpy.ndarray or array-like, shape (n_in, n_out)
        Rows are input neurons, columns output neurons.
    neurons : int, optional
        Expected N of a square layer; a different shape raises :class:`OptionError`.
    name : str
        Named in error messages ("layer 3").
    square : bool
        Require n_in == n_out (the challenge's layers).

    Raises :class:`OptionError` for a wrong shape, or a NaN or infinite weight (its
    1-based position named, as the file readers do).
    """
    if isinstance(matrix, np.ndarray) and not sp.issparse(matrix):
        if matrix.ndim != 2:
            raise OptionError(f"{name}: a weight matrix needs 2 dimensions, got shape {matrix.shape}")
        try:
            m = np.ascontiguousarray(matrix, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise OptionError(f"{name}: weights are not numbers ({exc})") from None
        values = m
    else:
        try:
            m = sp.csr_matrix(matrix, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise OptionError(f"{name}: not a matrix of numbers ({exc})") from None
        if not m.has_canonical_format:
            m.sum_duplicates()
        values = m.data
    if neurons is not None and m.shape != (neurons, neurons):
        raise OptionError(f"{name}: shape {m.shape}, expected ({neurons}, {neurons})")
    if square and m.shape[0] != m.shape[1]:
        raise OptionError(f"{name}: shape {m.shape} is not square")
    if values.size and not np.all(np.isfinite(values)):
        i = int(np.argmin(np.isfinite(values.ravel())))
        if sp.issparse(m):
            row, column = int(np.searchsorted(m.indptr, i, side="right")) - 1, int(m.indices[i])
        else:
            row, column = divmod(i, m.shape[1])
        raise OptionError(f"{name}: weight {values.ravel()[i]} at (row {row + 1}, column {column + 1}) is not "
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


def _per_layer(value, depth: int, name: str) -> list:
    """``value`` for each of ``depth`` layers: a scalar (or str) is repeated, a sequence
    must have one item a layer."""
    if isinstance(value, (str, bytes)) or value is None or not isinstance(value, (list, tuple, np.ndarray)):
        return [value] * depth
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return [value] * depth
    items = list(value)
    if len(items) != depth:
        raise OptionError(f"{name}: {len(items)} values for {depth} layers (give one, or one per layer)")
    return items


def _cap(value, k: int) -> float:
    """A ReLU cap: None or inf for none, else a positive finite number."""
    if value is None:
        return math.inf
    if isinstance(value, (bool, np.bool_)):
        raise OptionError(f"ymax of layer {k + 1}: {value!r} is not a number")
    try:
        cap = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"ymax of layer {k + 1}: {value!r} is not a number (a positive cap, or None for none)") \
            from None
    if not cap > 0:          # also rejects nan
        raise OptionError(f"ymax of layer {k + 1}: {value!r}: expected a positive cap (or None / inf for none)")
    return cap


def _layer_bias(value, width: int, k: int) -> np.ndarray:
    """Layer k's bias as a float64 vector of ``width`` (a scalar broadcast, read-only)."""
    try:
        b = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise OptionError(f"bias={quote(str(value))} of layer {k + 1}: expected a number or a vector of numbers") \
            from None
    if b.ndim == 0:
        b = np.broadcast_to(b, (width,))
    elif b.shape != (width,):
        raise OptionError(f"bias of layer {k + 1}: shape {b.shape}, expected () or ({width},)")
    if not np.all(np.isfinite(b)):
        raise OptionError(f"bias of layer {k + 1}: non-finite values")
    return b


@dataclass(frozen=True)
class LayerRule:
    """How layer k finishes: ``bias_rule`` in :data:`BIAS_RULES`, ``activation`` in
    :data:`ACTIVATIONS`, ``cap`` the ReLU's upper bound (``inf``: none; ``inf`` for identity)."""

    bias_rule: str = "structural"
    activation: str = "relu"
    cap: float = YMAX


@dataclass(frozen=True)
class Network:
    """A feed-forward network of sparse or dense layers (module docstring: the semantics).

    Attributes
    ----------
    layers : Sequence of layers
        ``layers[k]`` is W_{k+1}, shape (n_k, n_{k+1}): a canonical float64 CSR matrix, or
        a float64 ``numpy.ndarray`` (a dense layer). A plain list is validated by
        :meth:`from_layers`; a :class:`LazyLayers` (square sparse layers) is trusted.
    bias : numpy.ndarray (L, N) when every layer has width N, else a tuple of L vectors
        ``bias[k]`` has shape (n_{k+1},), float64; may be a read-only broadcast view (a
        constant bias costs no memory).
    ymax : float
        The challenge's cap, the default of every layer's (32).
    bias_rules, activations : tuple of str, one per layer
        Default: all "structural" and all "relu" (the challenge).
    caps : tuple of float, one per layer
        ReLU caps (``inf``: none); default ``ymax`` for every layer.
    """

    layers: Sequence
    bias: object
    ymax: float = YMAX
    bias_rules: tuple = ()
    activations: tuple = ()
    caps: tuple = ()
    _edges: list = field(default_factory=list, repr=False, compare=False)
    _zero_suffix: list = field(default_factory=list, repr=False, compare=False)
    _widths: list = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self):
        depth = len(self.layers)
        for name, default in (("bias_rules", "structural"), ("activations", "relu"), ("caps", self.ymax)):
            value = getattr(self, name)
            if not value:
                object.__setattr__(self, name, (default,) * depth)
            elif len(value) != depth:
                raise OptionError(f"{name}: {len(value)} values for {depth} layers")

    @classmethod
    def from_layers(cls, layers: Sequence, bias=0.0, *, ymax=YMAX, bias_rule="structural",
                    activation="relu") -> "Network":
        """Build a network from layers, a bias, bias rules and activations.

        Parameters
        ----------
        layers : sequence of matrices (n_k, n_{k+1}), or :class:`LazyLayers`
            scipy sparse matrices (held as CSR) or numpy arrays (held dense). Consecutive
            widths must chain: ``layers[k].shape[1] == layers[k+1].shape[0]``.
        bias : float, array (N,), array (L, N), or a sequence of L scalars / vectors
            A scalar or an (N,) vector is used for every layer (same-width networks); a
            sequence gives each layer its own (scalar or (n_{k+1},) vector).
        ymax : float, None, or a sequence of one per layer
            ReLU cap of every layer (32 in the challenge); None or ``inf``: uncapped.
            Ignored by identity layers.
        bias_rule : {'structural', 'dense'} or a sequence of one per layer
            'structural' adds the bias only where ``Y @ W != 0`` (the challenge); 'dense'
            adds it to every output (``relu(x @ W + b)``).
        activation : {'relu', 'identity'} or a sequence of one per layer
            'identity' makes a linear layer (a network's output layer, typically).

        Raises :class:`OptionError` naming the layer and what is wrong.
        """
        if isinstance(layers, (Network, str, bytes, np.ndarray)) or sp.issparse(layers):
            raise OptionError(f"layers: expected a sequence of weight matrices, got {type(layers).__name__}")
        if not isinstance(layers, LazyLayers):
            try:
                layers = list(layers)
            except TypeError:
                raise OptionError(f"layers: expected a sequence of weight matrices, got {type(layers).__name__}") \
                    from None
        depth = len(layers)
        if depth == 0:
            raise OptionError("a network needs at least one layer")
        rules = tuple(_per_layer(bias_rule, depth, "bias_rule"))
        acts = tuple(_per_layer(activation, depth, "activation"))
        for k, (r, a) in enumerate(zip(rules, acts)):
            if r not in BIAS_RULES:
                raise OptionError(f"bias_rule of layer {k + 1}: {r!r}: expected one of {list(BIAS_RULES)}")
            if a not in ACTIVATIONS:
                raise OptionError(f"activation of layer {k + 1}: {a!r}: expected one of {list(ACTIVATIONS)}")
        caps = tuple(math.inf if a == "identity" else _cap(c, k)
                     for k, (a, c) in enumerate(zip(acts, _per_layer(ymax, depth, "ymax"))))
        if isinstance(layers, LazyLayers):
            widths = (_shape(layers[0])[0],) * (depth + 1)      # square layers; builds layer 1 once
        else:
            layers = [as_layer(w, name=f"layer {k + 1}", square=False) for k, w in enumerate(layers)]
            for k in range(1, depth):
                if layers[k].shape[0] != layers[k - 1].shape[1]:
                    raise OptionError(f"layer {k + 1}: shape {layers[k].shape} does not follow layer {k}'s "
                                      f"{layers[k - 1].shape}: its rows must equal the previous layer's columns")
            widths = (layers[0].shape[0],) + tuple(w.shape[1] for w in layers)
        b = _bias_table(bias, depth, widths)
        first_cap = caps[0] if math.isfinite(caps[0]) else YMAX
        return cls(layers=layers, bias=b, ymax=float(first_cap), bias_rules=rules, activations=acts, caps=caps)

    # -- shape -------------------------------------------------------------------------

    @property
    def widths(self) -> tuple:
        """(n_0, n_1, ..., n_L): the inputs' width, then each layer's outputs (computed once:
        engines read it on every ``infer``)."""
        if not self._widths:
            if isinstance(self.bias, np.ndarray):
                widths = (int(self.bias.shape[1]),) * (self.depth + 1)
            else:
                widths = (int(_shape(self.layers[0])[0]),) + tuple(int(b.shape[0]) for b in self.bias)
            self._widths.append(widths)
        return self._widths[0]

    @property
    def inputs(self) -> int:
        """n_0: values per input sample (columns of the features)."""
        return self.widths[0]

    @property
    def outputs(self) -> int:
        """n_L: values per output row."""
        return self.widths[-1]

    @property
    def neurons(self) -> int:
        """N, the width of every layer; :class:`OptionError` when the widths differ (use
        :attr:`widths`)."""
        if isinstance(self.bias, np.ndarray):
            return int(self.bias.shape[1])
        raise OptionError(f"this network's layers have several widths {self.widths}: it has no single N")

    @property
    def depth(self) -> int:
        """L, the number of layers."""
        return len(self.layers)

    @property
    def edges(self) -> int:
        """Sum over layers of the nonzero weights: the challenge's edge count per sample."""
        if not self._edges:
            total = getattr(self.layers, "nnz_total", None)
            if total is None:
                total = sum(_nonzeros(w) for w in self.layers)
            self._edges.append(int(total))
        return self._edges[0]

    def is_dense(self, k: int) -> bool:
        """Whether layer k is held dense (a numpy array)."""
        return not isinstance(self.layers, LazyLayers) and isinstance(self.layers[k], np.ndarray)

    def rule(self, k: int) -> LayerRule:
        """Layer k's bias rule, activation and cap."""
        return LayerRule(self.bias_rules[k], self.activations[k], float(self.caps[k]))

    @property
    def challenge_form(self) -> bool:
        """Whether this is a network of the challenge's form: square sparse layers of one
        width, structural bias, ReLU with the same finite cap (``ymax``) on every layer.
        Engines' challenge fast paths need it; :meth:`require_challenge_form` says so."""
        return (isinstance(self.bias, np.ndarray)
                and all(r == "structural" for r in self.bias_rules)
                and all(a == "relu" for a in self.activations)
                and all(c == self.ymax for c in self.caps)
                and math.isfinite(self.ymax)
                and not any(self.is_dense(k) for k in range(self.depth)))

    def require_challenge_form(self, who: str) -> None:
        """Raise :class:`OptionError` unless :attr:`challenge_form` (``who`` names the engine
        or tool that needs it)."""
        if not self.challenge_form:
            raise OptionError(f"{who} runs only networks of the challenge's form (square sparse layers of one "
                              f"width, structural bias, ReLU capped at one value); this one has "
                              f"{self.describe()}: use engine 'reference' or 'cpu'")

    def describe(self) -> str:
        """A one-line summary: widths, dense layers, bias rules, activations and caps."""
        w = self.widths
        width = f"{w[0]}" if len(set(w)) == 1 else "->".join(str(v) for v in w) if len(w) <= 8 \
            else f"{w[0]}->{w[1]}->...->{w[-2]}->{w[-1]}"
        dense = sum(self.is_dense(k) for k in range(self.depth))
        def summary(values):
            kinds = sorted(set(values), key=str)
            return "/".join(str(v) for v in kinds)
        caps = summary("none" if not math.isfinite(c) else f"{c:g}" for c, a in zip(self.caps, self.activations)
                       if a == "relu")
        return (f"{self.depth} layers, widths {width}, {dense} dense, bias {summary(self.bias_rules)}, "
                f"activation {summary(self.activations)}" + (f", cap {caps}" if caps else ""))

    # -- which rows stay zero ------------------------------------------------------------

    def keeps_zero(self, k: int) -> bool:
        """Whether layer k maps a zero row to a zero row: structural bias, an all-zero bias,
        or ReLU with every bias <= 0."""
        if self.bias_rules[k] == "structural":
            return True
        b = self.bias[k]
        if all(s == 0 for s in b.strides):                 # a broadcast constant
            top = bottom = float(b.flat[0]) if b.size else 0.0
        else:
            top, bottom = (float(b.max()), float(b.min())) if b.size else (0.0, 0.0)
        if top == 0 and bottom == 0:
            return True
        return self.activations[k] == "relu" and top <= 0

    def prunes_after(self, k: int) -> bool:
        """Whether a row that is zero after layer ``k-1`` (``k = 0``: an input row) may be
        dropped: every layer from k on keeps zeros, so its final row is zero."""
        if not self._zero_suffix:
            suffix = [True] * (self.depth + 1)
            for j in range(self.depth - 1, -1, -1):
                suffix[j] = suffix[j + 1] and self.keeps_zero(j)
            self._zero_suffix.extend(suffix)
        return self._zero_suffix[k]

    # -- bias and views ------------------------------------------------------------------

    def uniform_bias(self) -> float | None:
        """The single bias value if every layer and neuron has the same one, else None."""
        parts = [self.bias] if isinstance(self.bias, np.ndarray) else list(self.bias)
        if not parts or any(p.size == 0 for p in parts):
            return None
        first = float(parts[0].flat[0])
        for b in parts:
            if not (all(s == 0 for s in b.strides) and float(b.flat[0]) == first) and not np.all(b == first):
                return None
        return first

    def truncated(self, depth: int) -> "Network":
        """The first ``depth`` layers of this network (a view; no copy of the weights)."""
        if not 1 <= depth <= self.depth:
            raise OptionError(f"depth {depth}: expected 1..{self.depth}")
        if isinstance(self.layers, LazyLayers):
            layers = self.layers.truncated(depth)
        else:
            layers = list(self.layers[:depth])
        bias = self.bias[:depth] if isinstance(self.bias, np.ndarray) else tuple(self.bias[:depth])
        return Network(layers=layers, bias=bias, ymax=self.ymax, bias_rules=self.bias_rules[:depth],
                       activations=self.activations[:depth], caps=self.caps[:depth])


def _shape(w) -> tuple:
    return tuple(int(v) for v in w.shape)


def _nonzeros(w) -> int:
    """Nonzero weights of a layer (stored entries of a CSR layer, nonzeros of a dense one)."""
    if isinstance(w, np.ndarray):
        return int(np.count_nonzero(w))
    return int(w.nnz)


def _bias_table(bias, depth: int, widths: tuple):
    """The bias in :class:`Network`'s form: an (L, N) array when every width is N (a
    scalar, an (N,) vector, L scalars or an (L, N) array are accepted), else a tuple of
    L vectors (a scalar, or one scalar or vector per layer, is accepted)."""
    per_layer = isinstance(bias, (list, tuple)) and len({np.shape(v) for v in bias}) > 1
    if len(set(widths)) == 1:
        width = widths[0]
        if not per_layer:
            b = _as_float_array(bias)
            if b.ndim == 0 or b.shape == (width,):
                b = np.broadcast_to(b, (depth, width))
            elif b.shape == (depth,):
                b = np.broadcast_to(b[:, None], (depth, width))
            elif b.shape != (depth, width):
                raise OptionError(f"bias: shape {b.shape}, expected (), ({width},), ({depth},) or ({depth}, {width})")
            if not np.all(np.isfinite(b)):
                raise OptionError("bias: non-finite values")
            return b
        return np.stack([_layer_bias(v, width, k) for k, v in enumerate(_per_layer(bias, depth, "bias"))])
    items = [bias] * depth if not isinstance(bias, (list, tuple)) and np.ndim(bias) == 0 \
        else _per_layer(bias, depth, "bias")
    return tuple(_layer_bias(v, widths[k + 1], k) for k, v in enumerate(items))


def _as_float_array(value) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise OptionError(f"bias={quote(str(value))}: expected a number, an array (N,) or (L, N), or one scalar or "
                          f"vector per layer") from None
