"""Checking categories against the truth, and explaining any difference (docs/challenge.md, Numerics).

Three tools:

:func:`compare_categories`
    Set comparison of found and true 1-based sample ids -> :class:`Comparison`.
:func:`trace_sample` / :func:`trace_sample_exact`
    The per-layer activations of single samples, in float64 or float32 (the reference's
    order: products summed over the input neurons in ascending order, no fused
    multiply-add, bias only where the sum is nonzero, clamp), or in exact rational
    arithmetic on the exact binary values of weights, bias and inputs.
:func:`explain_differences`
    For every sample in one set and not the other: its fate in float64, in float32 and
    (for a handful) exactly, the layer where the float32 and float64 paths split, and
    which computation was right -> :class:`Explanation` (``to_text()``, ``to_dict()``).
    ``spdnn run`` calls it whenever categories differ from the truth, so a run never
    passes or fails silently.
:class:`TruthOrigin` / :func:`truth_origin`
    What is known of the data the truth was made from, against the run's. When every
    computation on the run's own network, bias and inputs disagrees with the truth, the
    explanation blames the truth only when the truth is known to come from exactly
    these data; where the data are known to differ (another bias, say) it names the
    difference; otherwise it says it cannot tell a wrong truth from other data.

Why differences happen: a sample whose activation becomes a uniform vector ``v`` sees
``v' = 2v + b`` on the RadiX-Net layers; the fixed point ``v* = -b`` is unstable, so a
sample within rounding distance of it has its fate decided by rounding, and float32 and
float64 may disagree. The float64 reference is the truth for generated data; the exact
computation says which of the two was right.

Split layer (definition): the first layer (1-based) after which the float32 and float64
traces differ in whether the sample is alive, or their activation rows differ by more
than ``SPLIT_RTOL`` relative to the largest float64 activation of that row
(``max|a32 - a64| > SPLIT_RTOL * max|a64|``). Float32 rounding alone keeps a
well-conditioned row within about 1e-6 of float64; beyond 1e-4 the paths have separated.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, asdict
from fractions import Fraction
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import OptionError
from .network import Network, as_features
from .options import PRECISIONS, check_precision
from ._progress import progress_bar

__all__ = ["Comparison", "compare_categories", "trace_sample", "trace_sample_exact", "ExactTrace",
           "Fate", "SampleRecord", "TruthOrigin", "truth_origin", "Explanation", "explain_differences",
           "SPLIT_RTOL", "PredictionRecord", "PredictionExplanation", "explain_predictions"]

#: Relative tolerance of the split-layer rule (see the module docstring).
SPLIT_RTOL = 1e-4


# -- comparing ------------------------------------------------------------------------

def _ids(values, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1:
        a = a.reshape(-1)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise OptionError(f"{name}: expected integer sample ids, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if np.any(a < 1):
        raise OptionError(f"{name}: sample ids are 1-based; found {int(a.min())}")
    return np.unique(a)


@dataclass
class Comparison:
    """Found categories against the truth.

    Attributes
    ----------
    passed : bool
        The two sets are equal.
    missing : numpy.ndarray of int64
        Sorted 1-based ids in the truth and not found.
    extra : numpy.ndarray of int64
        Sorted 1-based ids found and not in the truth.
    found_count, truth_count : int
        Sizes of the two sets (duplicates removed).
    """

    passed: bool
    missing: np.ndarray
    extra: np.ndarray
    found_count: int
    truth_count: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (ids as lists of ints)."""
        return {"passed": self.passed, "missing": [int(i) for i in self.missing],
                "extra": [int(i) for i in self.extra], "found_count": self.found_count,
                "truth_count": self.truth_count}


def compare_categories(found, truth) -> Comparison:
    """Compare found categories with the truth (both 1-based sample ids, any order).

    Raises :class:`~spdnn.errors.OptionError` for ids that are not positive integers.
    """
    f = _ids(found, "found")
    t = _ids(truth, "truth")
    missing = np.setdiff1d(t, f, assume_unique=True)
    extra = np.setdiff1d(f, t, assume_unique=True)
    return Comparison(passed=missing.size == 0 and extra.size == 0, missing=missing, extra=extra,
                      found_count=int(f.size), truth_count=int(t.size))


# -- tracing in floating point -----------------------------------------------------------

def _gather(w, dtype):
    """Padded gather form of layer ``w`` (CSR or dense, (n_in, n_out)): (indices, values),
    each (n_out, Kmax).

    Row j lists the inputs of output j in ascending order, then zeros (which add exact
    zeros at the end of each sum, leaving it unchanged). A dense layer lists every input.
    """
    if isinstance(w, np.ndarray):
        n_in, n_out = w.shape
        return np.broadcast_to(np.arange(n_in), (n_out, n_in)), np.ascontiguousarray(w.T, dtype=dtype)
    csc = sp.csc_matrix(w)
    csc.sort_indices()
    n = csc.shape[1]
    counts = np.diff(csc.indptr)
    kmax = int(counts.max()) if counts.size else 0
    idx = np.zeros((n, kmax), dtype=np.int64)
    val = np.zeros((n, kmax), dtype=dtype)
    slot = np.arange(csc.nnz) - np.repeat(csc.indptr[:-1], counts)
    col = np.repeat(np.arange(n), counts)
    idx[col, slot] = csc.indices
    val[col, slot] = csc.data.astype(dtype)
    return idx, val


def _float_layer(x: np.ndarray, idx: np.ndarray, val: np.ndarray, bias: np.ndarray, ymax, *,
                 bias_rule: str = "structural", activation: str = "relu") -> np.ndarray:
    """One layer for dense samples ``x`` (s, n_in) in ``x.dtype``, the reference's order
    (:mod:`spdnn.network`: bias rule, then ReLU clamped to ``ymax`` or identity)."""
    z = np.zeros((x.shape[0], idx.shape[0]), dtype=x.dtype)
    for k in range(idx.shape[1]):
        z = z + x[:, idx[:, k]] * val[:, k]          # ((0 + t1) + t2) + ..., ascending inputs
    z = np.where(z != 0, z + bias, z) if bias_rule == "structural" else z + bias
    if activation == "identity":
        return z
    return np.minimum(np.maximum(z, x.dtype.type(0)), x.dtype.type(ymax))


def _trace_layer(network: Network, k: int, x: np.ndarray) -> np.ndarray:
    """Layer k of ``network`` for dense samples ``x`` in ``x.dtype`` (:func:`_float_layer`)."""
    dtype = x.dtype.type
    idx, val = _gather(network.layers[k], dtype)
    rule = network.rule(k)
    return _float_layer(x, idx, val, np.asarray(network.bias[k]).astype(dtype), rule.cap,
                        bias_rule=rule.bias_rule, activation=rule.activation)


def _dense_rows(features, rows, neurons: int) -> np.ndarray:
    f = as_features(features, neurons)
    return f[np.asarray(rows, dtype=np.int64)].toarray()


def trace_sample(network: Network, features_row, *, precision: str = "fp64") -> list[np.ndarray]:
    """Per-layer activations of one sample in float64 or float32.

    Parameters
    ----------
    network : Network
    features_row : sparse or dense, shape (1, n_0) or (n_0,)
        The sample's input row.
    precision : {'fp64', 'fp32'}
        Arithmetic of the whole computation (inputs, weights and bias rounded to it).
        Each output is summed over its input neurons in ascending order, as the
        reference does.

    Returns
    -------
    list of numpy.ndarray, ``out[k]`` of shape (n_{k+1},)
        ``out[k]`` is the activation after layer k+1. The list stops after the first
        all-zero activation from which every later layer keeps the row zero
        (:meth:`Network.prunes_after`), so it may be shorter than L.
    """
    dtype = PRECISIONS[check_precision(precision)]
    n = network.inputs
    row = sp.csr_matrix(features_row) if sp.issparse(features_row) else np.asarray(features_row).reshape(1, -1)
    if row.shape != (1, n):
        raise OptionError(f"features_row: shape {row.shape}, expected (1, {n})")
    x = (row.toarray() if sp.issparse(row) else np.array(row, dtype=np.float64)).astype(dtype)
    out = []
    for k in range(network.depth):
        x = _trace_layer(network, k, x)
        out.append(x[0].copy())
        if not np.any(x) and network.prunes_after(k + 1):
            break
    return out


# -- tracing exactly ---------------------------------------------------------------------

def _dyadic(values: np.ndarray) -> tuple[list[int], int]:
    """Finite floats as integer numerators over one power of two: (numerators, e) with
    ``values[i] == numerators[i] / 2**e`` exactly."""
    ratios = [float(v).as_integer_ratio() for v in np.asarray(values, dtype=np.float64).ravel()]
    e = max((q.bit_length() - 1 for _, q in ratios), default=0)
    return [p << (e - (q.bit_length() - 1)) for p, q in ratios], e


@dataclass
class ExactTrace:
    """Exact per-layer activations of one sample.

    Attributes
    ----------
    alive : list of bool
        ``alive[k]``: the row has a nonzero after layer k+1. Stops after the first death.
    layers : list of (indices, numerators, exponent)
        Nonzero neurons (ascending, int64) after each layer and their exact values
        ``numerators / 2**exponent`` (Python ints).
    """

    alive: list = field(default_factory=list)
    layers: list = field(default_factory=list)

    def values(self, k: int) -> dict[int, Fraction]:
        """Activation after layer k+1 as {neuron (0-based): Fraction}, nonzeros only."""
        idx, num, e = self.layers[k]
        return {int(i): Fraction(a, 1 << e) for i, a in zip(idx, num)}


def trace_sample_exact(network: Network, features_row, *, max_layers: int | None = None) -> ExactTrace:
    """Per-layer activations of one sample in exact rational arithmetic.

    Every float involved (inputs, weights, bias, ymax) is a dyadic rational; the products,
    sums, bias and clamp are computed exactly on them (Python integers over a common power
    of two, only the nonzeros of each row: sparse arithmetic). The trace stops when the
    row dies.

    Parameters
    ----------
    network : Network
    features_row : sparse or dense, shape (1, N) or (N,)
    max_layers : int, optional
        Stop after this many layers (default: all).

    Returns
    -------
    ExactTrace
    """
    n = network.inputs
    row = sp.csr_matrix(features_row if sp.issparse(features_row) else np.asarray(features_row).reshape(1, -1),
                        dtype=np.float64)
    if row.shape != (1, n):
        raise OptionError(f"features_row: shape {row.shape}, expected (1, {n})")
    row.sum_duplicates()
    row.eliminate_zeros()
    idx = row.indices.astype(np.int64)
    num, ex = _dyadic(row.data)
    trace = ExactTrace()
    depth = network.depth if max_layers is None else min(int(max_layers), network.depth)
    for k in range(depth):
        layer = network.layers[k]
        w = sp.csr_matrix(layer)                  # a dense layer's zeros add exact zeros: not stored
        if not w.has_sorted_indices:              # (a mapped layer is read-only: sort a copy)
            w = w.copy()
            w.sort_indices()
        rule = network.rule(k)
        wnum, wex = _dyadic(w.data)
        bnum, bex = _dyadic(network.bias[k])
        capped = rule.activation == "relu" and np.isfinite(rule.cap)
        ynum, yex = _dyadic(np.array([rule.cap if capped else 1.0]))
        # z_j = sum_i x_i w_ij exactly, over the nonzero inputs only: numerators over 2**(ex+wex)
        z: dict[int, int] = {}
        for i, a in zip(idx.tolist(), num):
            lo, hi = w.indptr[i], w.indptr[i + 1]
            for j, c in zip(w.indices[lo:hi].tolist(), wnum[lo:hi]):
                z[j] = z.get(j, 0) + a * c
        e = max(ex + wex, bex, yex)
        zs, bs, ys = e - (ex + wex), e - bex, e - yex
        cap = ynum[0] << ys
        outputs = sorted(z) if rule.bias_rule == "structural" else range(w.shape[1])
        out_idx, out_num = [], []
        for j in outputs:
            s = z.get(j, 0) << zs
            if s != 0 or rule.bias_rule == "dense":
                s += bnum[j] << bs          # structural: bias only where the sum is nonzero
            if rule.activation == "relu":
                if s <= 0:
                    continue                # ReLU
                if capped:
                    s = min(s, cap)         # cap
            if s != 0:
                out_idx.append(j)
                out_num.append(s)
        # keep numbers small: divide out the common powers of two
        if out_num:
            shift = min(min((abs(a) & -abs(a)).bit_length() - 1 for a in out_num), e)
            if shift > 0:
                out_num = [a >> shift for a in out_num]
                e -= shift
        idx = np.asarray(out_idx, dtype=np.int64)
        num, ex = out_num, e
        trace.layers.append((idx, list(num), ex))
        trace.alive.append(bool(num))
        if not num and network.prunes_after(k + 1):
            break
    return trace


# -- explaining ------------------------------------------------------------------------

@dataclass
class Fate:
    """What happened to one sample along one computation.

    Attributes
    ----------
    survives : bool
        The row has a nonzero after the last layer (it is a category).
    death_layer : int or None
        1-based layer after which the row became all zero (None when it survives).
    final_max : float
        Largest activation after the last layer computed (0 when dead).
    """

    survives: bool
    death_layer: int | None
    final_max: float

    def describe(self) -> str:
        if self.survives:
            return f"survives (max {self.final_max:.6g})"
        return f"dies at layer {self.death_layer}"


@dataclass
class SampleRecord:
    """One sample found in one set and not in the other.

    Attributes
    ----------
    sample : int
        1-based sample id.
    in_set : {'missing', 'extra'}
        'missing': in the truth, not found; 'extra': found, not in the truth.
    fp64, fp32 : Fate
        Its fate in float64 and in float32 (the reference's summation order).
    exact : Fate or None
        Its fate in exact arithmetic (computed for the first ``exact_limit`` samples).
    split_layer : int or None
        1-based layer where the float32 and float64 paths split (module docstring), or
        None when they never do.
    split_reason : str or None
        'alive' (one path has the row dead, the other alive) or 'values'.
    reproduced : bool
        The trace in the found precision puts the sample in the found set, as the engine
        did (False means the difference is not explained by rounding in this order).
    right : str
        Which computation gave the true fate: 'fp64', 'fp32', 'both', 'neither', or
        'unknown' (no exact trace; then the float64 reference counts as the truth).
    """

    sample: int
    in_set: str
    fp64: Fate
    fp32: Fate
    exact: Fate | None
    split_layer: int | None
    split_reason: str | None
    reproduced: bool
    right: str

    @property
    def truth_disputed(self) -> bool:
        """float32 and float64 (and the exact trace, when made) all give the found fate on
        the run's own network, bias and inputs: rounding does not explain this sample; the
        truth disagrees with the data as given (see :class:`TruthOrigin` for why)."""
        found_survives = self.in_set == "extra"
        fates = [self.fp64, self.fp32] + ([self.exact] if self.exact is not None else [])
        return all(f.survives == found_survives for f in fates)


@dataclass
class TruthOrigin:
    """What is known of the data the truth was made from, against the run's data.

    Attributes
    ----------
    source : str
        Where the knowledge comes from (a generator info file, "the official data", "computed
        from this run's data"), or "unknown".
    differences : list of str
        Known differences between the run's data and the truth's, one phrase each
        (``"bias: this run -0.2, the truth's -0.3"``).
    same_data : bool
        The truth is known to have been computed from exactly this run's network, bias and
        inputs (then, and only then, a truth that every computation disagrees with is wrong).
    """

    source: str = "unknown"
    differences: list = field(default_factory=list)
    same_data: bool = False


def _same_value(a, b) -> bool:
    if isinstance(a, (int, float, np.integer, np.floating)) and isinstance(b, (int, float, np.integer, np.floating)):
        return float(a) == float(b)
    return a == b


def _show_value(value) -> str:
    return f"{float(value):g}" if isinstance(value, (float, np.floating)) else str(value)


def truth_origin(made_with: Mapping[str, Any], run: Mapping[str, Any], *, source: str,
                 same_data: bool = False) -> TruthOrigin:
    """Compare what the truth was made with and what the run used, key by key.

    Parameters
    ----------
    made_with, run : mapping
        Parameters of the truth's data and of the run's (e.g. ``bias``, ``neurons``,
        ``layers``, ``samples``, ``features_nnz``, ``seed``); only keys present in both with
        a known (not None) value are compared, numbers by value.
    source : str
        Where ``made_with`` comes from (named in the explanation).
    same_data : bool
        The caller knows the truth was computed from the run's own data; ignored when a
        compared key differs.

    Returns
    -------
    TruthOrigin
    """
    differences = [f"{key}: this run {_show_value(run[key])}, the truth's {_show_value(made_with[key])}"
                   for key in made_with
                   if key in run and made_with[key] is not None and run[key] is not None
                   and not _same_value(made_with[key], run[key])]
    return TruthOrigin(source=source, differences=differences, same_data=same_data and not differences)


@dataclass
class Explanation:
    """Why found categories differ from the truth; see :func:`explain_differences`.

    ``records`` covers the first ``trace_limit`` differing samples (ascending id);
    ``untraced`` counts the others.
    """

    comparison: Comparison
    found_precision: str
    records: list = field(default_factory=list)
    split_rtol: float = SPLIT_RTOL
    origin: TruthOrigin = field(default_factory=TruthOrigin)
    untraced: int = 0

    @property
    def disputed(self) -> list:
        """Records where every computation on the run's data disagrees with the truth."""
        return [r for r in self.records if r.truth_disputed]

    @property
    def explained(self) -> bool:
        """Every difference was traced, is reproduced by the found precision's trace and
        is a real float32/float64 split on data known not to differ from the truth's."""
        return (self.untraced == 0 and not self.origin.differences
                and all(r.reproduced and not r.truth_disputed for r in self.records))

    @property
    def verdict(self) -> str:
        """One of 'match', 'rounding' (every difference a float32/float64 split), 'other data'
        (the run's data are known to differ from the truth's), 'truth wrong' (the truth comes
        from exactly these data and every computation disagrees with it), 'truth or data'
        (every computation disagrees with the truth; whether the truth or the data are at
        fault is unknown), 'engine' (a difference no trace in the found precision
        reproduces), 'unexplained' (otherwise, e.g. samples left untraced)."""
        if self.comparison.passed:
            return "match"
        if self.origin.differences:
            return "other data"
        if any(not r.reproduced for r in self.records):
            return "engine"
        if self.disputed:
            return "truth wrong" if self.origin.same_data else "truth or data"
        return "rounding" if self.explained else "unexplained"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"comparison": self.comparison.to_dict(), "found_precision": self.found_precision,
                "split_rtol": self.split_rtol, "explained": self.explained, "verdict": self.verdict,
                "origin": asdict(self.origin), "untraced": self.untraced,
                "records": [{**asdict(r), "truth_disputed": r.truth_disputed} for r in self.records]}

    def _conclusion(self) -> str:
        """The paragraph after the per-sample lines: what the evidence shows, and no more."""
        verdict, origin = self.verdict, self.origin
        disputed = len(self.disputed)
        if verdict == "other data":
            return (f"The run's data differ from those the truth was made with ({origin.source}): "
                    + "; ".join(origin.differences)
                    + ". The differences come from there, not from rounding or the truth: run with the "
                    "truth's settings, or use a truth made for these data.")
        if verdict == "engine":
            return ("Some differences are not reproduced by a trace in the reference's order: the engine, "
                    "not rounding, is the suspect.")
        if verdict == "truth wrong":
            return (f"The truth was computed from this run's own network, bias and inputs ({origin.source}), "
                    f"yet every computation disagrees with it on {disputed} sample(s): the truth is wrong "
                    "(check the truth file).")
        if verdict == "truth or data":
            return (f"On {disputed} sample(s) every computation on this run's network, bias and inputs "
                    "disagrees with the truth: either the truth was made from other inputs, another network "
                    "or another bias than this run's (check the bias, the network's files or seed, and the "
                    "samples), or the truth file is wrong; nothing known here tells which"
                    + ("." if origin.source == "unknown" else f" ({origin.source} names no difference)."))
        if verdict == "rounding":
            return (f"All {len(self.records)} differences are rounding effects of {self.found_precision} "
                    "on ill-conditioned samples (docs/challenge.md, Numerics).")
        return (f"{self.untraced} differing sample(s) were not traced; the {len(self.records)} traced "
                "are rounding effects, the rest are not explained.")

    def to_text(self, *, limit: int = 20) -> str:
        """Human-readable summary: one line for each of the first ``limit`` differing
        samples, then the conclusion (:attr:`verdict` in words)."""
        c = self.comparison
        if c.passed:
            return f"categories match the truth ({c.truth_count} samples)"
        lines = [f"categories differ from the truth: {c.missing.size} missing, {c.extra.size} extra "
                 f"(found {c.found_count}, truth {c.truth_count}); found in {self.found_precision}."]
        for r in self.records[:limit]:
            where = "in the truth but not found" if r.in_set == "missing" else "found but not in the truth"
            split = (f"float32 and float64 split at layer {r.split_layer} ({r.split_reason})"
                     if r.split_layer is not None else "float32 and float64 never split")
            exact = f"; exact: {r.exact.describe()}" if r.exact is not None else ""
            lines.append(f"- sample {r.sample} ({where}): float64 {r.fp64.describe()}, float32 "
                         f"{r.fp32.describe()}{exact}; {split}; right: {r.right}"
                         + ("" if r.reproduced else "; NOT reproduced by a "
                            f"{self.found_precision} trace (not a rounding effect of this order: "
                            "check the engine)")
                         + ("; every computation on this run's data gives the found fate"
                            if r.truth_disputed else ""))
        hidden = len(self.records) - min(limit, len(self.records)) + self.untraced
        if hidden:
            lines.append(f"- ... and {hidden} more differing sample(s)"
                         + (f" ({self.untraced} not traced)" if self.untraced else ""))
        lines.append(self._conclusion())
        return "\n".join(lines)


def _fate(alive_history: list[bool], final_max: float) -> Fate:
    for k, a in enumerate(alive_history):
        if not a:
            return Fate(False, k + 1, 0.0)
    return Fate(True, None, float(final_max))


def explain_differences(network: Network, features, found, truth, *, found_precision: str = "fp32",
                        exact_limit: int = 3, trace_limit: int = 200, origin: TruthOrigin | None = None,
                        progress: bool | None = None) -> Explanation:
    """Explain why ``found`` categories differ from ``truth`` (docs/challenge.md, Numerics).

    Every sample in one set and not the other (the first ``trace_limit`` of them, by id)
    is traced through the network in float64 and float32 (together, layer by layer);
    the first ``exact_limit`` of them also in exact arithmetic.

    Parameters
    ----------
    network : Network
    features : sparse matrix (samples, N)
        The inputs the categories were computed from (row i is sample i+1).
    found, truth : array-like of int
        1-based sample ids.
    found_precision : {'fp32', 'fp64'}
        Precision of the run that produced ``found``.
    exact_limit : int
        Most samples traced exactly (exact arithmetic is slow: about a second a sample
        at N=1024, L=120).
    trace_limit : int
        Most samples traced in floating point (dense rows: ``trace_limit x N`` values in
        each precision); the others are counted in :attr:`Explanation.untraced`.
    origin : TruthOrigin, optional
        What is known of the data the truth was made from (:func:`truth_origin`); default:
        nothing, so a truth that every computation disagrees with is reported as "the
        truth or the data", never as wrong.
    progress : bool, optional
        Progress bar over layers.

    Returns
    -------
    Explanation

    Raises
    ------
    OptionError
        A differing id beyond the rows of ``features``.
    """
    check_precision(found_precision)
    comparison = compare_categories(found, truth)
    ids = np.concatenate([comparison.missing, comparison.extra])
    sets = ["missing"] * comparison.missing.size + ["extra"] * comparison.extra.size
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    sets = [sets[i] for i in order]
    explanation = Explanation(comparison=comparison, found_precision=found_precision,
                              origin=origin if origin is not None else TruthOrigin())
    if ids.size == 0:
        return explanation
    f = as_features(features, network.inputs)
    if ids.max() > f.shape[0]:
        raise OptionError(f"sample id {int(ids.max())} is beyond the {f.shape[0]} feature rows")
    explanation.untraced = max(0, ids.size - int(trace_limit))
    ids, sets = ids[:trace_limit], sets[:trace_limit]
    x64 = _dense_rows(f, ids - 1, network.inputs)
    x32 = x64.astype(np.float32)
    count = ids.size
    alive64 = [[] for _ in range(count)]
    alive32 = [[] for _ in range(count)]
    split = [None] * count
    reason = [None] * count
    for k in progress_bar(range(network.depth), enabled=progress, desc="explain: float32 and float64"):
        x64 = _trace_layer(network, k, x64)
        x32 = _trace_layer(network, k, x32)
        a64 = np.any(x64 != 0, axis=1)
        a32 = np.any(x32 != 0, axis=1)
        gap = np.max(np.abs(x32.astype(np.float64) - x64), axis=1)
        scale = np.max(np.abs(x64), axis=1)
        for s in range(count):
            alive64[s].append(bool(a64[s]))
            alive32[s].append(bool(a32[s]))
            if split[s] is None:
                if a64[s] != a32[s]:
                    split[s], reason[s] = k + 1, "alive"
                elif gap[s] > SPLIT_RTOL * scale[s]:
                    split[s], reason[s] = k + 1, "values"
        if not (a64.any() or a32.any()) and network.prunes_after(k + 1):
            break
    max64 = np.max(x64, axis=1)
    max32 = np.max(x32, axis=1)
    for s in range(count):
        fate64 = _fate(alive64[s], max64[s])
        fate32 = _fate(alive32[s], max32[s])
        exact = None
        if s < exact_limit:
            row = f[int(ids[s]) - 1]
            t = trace_sample_exact(network, row)
            final = t.values(len(t.layers) - 1) if t.layers else {}
            exact = _fate(t.alive, float(max(final.values(), default=0)))
        found_fate = fate32 if found_precision == "fp32" else fate64
        in_found = sets[s] == "extra"
        reproduced = found_fate.survives == in_found
        if exact is None:
            right = "unknown"
        else:
            ok64 = fate64.survives == exact.survives
            ok32 = fate32.survives == exact.survives
            right = {(True, True): "both", (True, False): "fp64", (False, True): "fp32",
                     (False, False): "neither"}[(ok64, ok32)]
        explanation.records.append(SampleRecord(
            sample=int(ids[s]), in_set=sets[s], fp64=fate64, fp32=fate32, exact=exact,
            split_layer=split[s], split_reason=reason[s], reproduced=reproduced, right=right))
    return explanation


# -- predictions of general networks --------------------------------------------------------

def _argmax_exact(values: dict[int, Fraction], width: int) -> int:
    """Argmax of an exact row given by its nonzeros (zeros elsewhere); the lowest index on ties."""
    best_j, best = 0, Fraction(0)
    for j in range(width):
        v = values.get(j, Fraction(0))
        if v > best or j == 0:
            best_j, best = j, v
    return best_j


@dataclass
class PredictionRecord:
    """One sample whose prediction differs from the truth's.

    Attributes
    ----------
    sample : int
        1-based sample id.
    found, truth : int
        The run's prediction and the truth's (0-based output index).
    fp64, fp32 : int
        The predictions of float64 and float32 traces in the reference's order.
    exact : int or None
        The prediction in exact arithmetic (for the first ``exact_limit`` samples).
    margin : float
        The float64 gap between the two largest outputs, relative to the largest
        magnitude of the final row (a near tie is a small margin).
    reproduced : bool
        The trace in the found precision gives the found prediction.
    """

    sample: int
    found: int
    truth: int
    fp64: int
    fp32: int
    exact: int | None
    margin: float
    reproduced: bool


@dataclass
class PredictionExplanation:
    """Why predictions differ from the truth's; see :func:`explain_predictions`."""

    samples: int
    differing: int
    found_precision: str
    records: list = field(default_factory=list)
    untraced: int = 0

    @property
    def verdict(self) -> str:
        """'match'; 'rounding' (every difference traced, reproduced by a trace in the found
        precision, and float32 and float64 disagree: a near tie decided by rounding);
        'truth or data' (float64 itself disagrees with the truth); 'engine' (a difference
        no trace in the found precision reproduces); 'unexplained' (untraced samples)."""
        if self.differing == 0:
            return "match"
        if any(not r.reproduced for r in self.records):
            return "engine"
        if any(r.fp64 != r.truth for r in self.records):
            return "truth or data"
        return "rounding" if self.untraced == 0 else "unexplained"

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "differing": self.differing, "found_precision": self.found_precision,
                "verdict": self.verdict, "untraced": self.untraced, "records": [asdict(r) for r in self.records]}

    def to_text(self, *, limit: int = 20) -> str:
        if self.differing == 0:
            return f"predictions match the truth ({self.samples} samples)"
        lines = [f"predictions differ from the truth on {self.differing} of {self.samples} samples "
                 f"(found in {self.found_precision})"]
        for r in self.records[:limit]:
            exact = f", exact {r.exact}" if r.exact is not None else ""
            lines.append(f"- sample {r.sample}: found {r.found}, truth {r.truth}; float64 {r.fp64}, float32 {r.fp32}"
                         f"{exact}; top-2 margin {r.margin:.3g}"
                         + ("" if r.reproduced else f"; NOT reproduced by a {self.found_precision} trace"))
        if len(self.records) > limit or self.untraced:
            lines.append(f"- ... and {len(self.records) - min(limit, len(self.records)) + self.untraced} more")
        lines.append({"rounding": "Every difference is a near tie decided by rounding: float32 and float64 "
                                  "traces in the reference's order disagree exactly as the run did.",
                      "engine": "Some differences are not reproduced by a trace in the reference's order: the "
                                "engine, not rounding, is the suspect.",
                      "truth or data": "float64 itself disagrees with the truth on some samples: the truth was "
                                       "made from other data, or is wrong.",
                      "unexplained": "Some differing samples were not traced."}[self.verdict])
        return "\n".join(lines)


def explain_predictions(network: Network, features, found, truth, *, found_precision: str = "fp32",
                        exact_limit: int = 3, trace_limit: int = 200) -> PredictionExplanation:
    """Explain why predictions ``found`` differ from ``truth`` (both (samples,) ints,
    0-based output indices; e.g. a float32 run against the float64 reference).

    Every differing sample (the first ``trace_limit``) is traced in float64 and float32 in
    the reference's order, the first ``exact_limit`` also exactly; a difference is
    'rounding' when the trace in the found precision reproduces the found prediction and
    float64's reproduces the truth's (:attr:`PredictionExplanation.verdict`).

    Raises :class:`OptionError` when the lengths differ from the features' rows.
    """
    check_precision(found_precision)
    f = as_features(features, network.inputs)
    found = np.asarray(found, dtype=np.int64).reshape(-1)
    truth = np.asarray(truth, dtype=np.int64).reshape(-1)
    if found.shape != truth.shape or found.size != f.shape[0]:
        raise OptionError(f"predictions: {found.size} found and {truth.size} true for {f.shape[0]} samples")
    rows = np.flatnonzero(found != truth)
    out = PredictionExplanation(samples=int(found.size), differing=int(rows.size), found_precision=found_precision,
                                untraced=max(0, rows.size - int(trace_limit)))
    rows = rows[:trace_limit]
    if rows.size == 0:
        return out
    x64 = _dense_rows(f, rows, network.inputs)
    x32 = x64.astype(np.float32)
    for k in range(network.depth):
        x64 = _trace_layer(network, k, x64)
        x32 = _trace_layer(network, k, x32)
    p64, p32 = np.argmax(x64, axis=1), np.argmax(x32, axis=1)
    top2 = -np.sort(-x64, axis=1)[:, :2] if x64.shape[1] > 1 else np.concatenate([x64, x64], axis=1)
    scale = np.maximum(np.max(np.abs(x64), axis=1), np.finfo(np.float64).tiny)
    for s, r in enumerate(rows):
        exact = None
        if s < exact_limit:
            t = trace_sample_exact(network, f[int(r)])
            final = t.values(len(t.layers) - 1) if len(t.layers) == network.depth else {}
            exact = _argmax_exact(final, network.outputs)
        mine = p32[s] if found_precision == "fp32" else p64[s]
        out.records.append(PredictionRecord(
            sample=int(r) + 1, found=int(found[r]), truth=int(truth[r]), fp64=int(p64[s]), fp32=int(p32[s]),
            exact=exact, margin=float((top2[s, 0] - top2[s, 1]) / scale[s]), reproduced=bool(mine == found[r])))
    return out
