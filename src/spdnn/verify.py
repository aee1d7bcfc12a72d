"""Checking categories against the truth, and explaining any difference (SPEC.md section 5).

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

from dataclasses import dataclass, field, asdict
from fractions import Fraction
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import OptionError
from .network import Network, as_features
from ._progress import progress_bar

__all__ = ["Comparison", "compare_categories", "trace_sample", "trace_sample_exact", "ExactTrace",
           "Fate", "SampleRecord", "Explanation", "explain_differences", "SPLIT_RTOL"]

#: Relative tolerance of the split-layer rule (see the module docstring).
SPLIT_RTOL = 1e-4

_DTYPES = {"fp32": np.float32, "fp64": np.float64}


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

def _gather(w: sp.csr_matrix, dtype):
    """Padded gather form of layer ``w``: (indices, values), each (N, Kmax).

    Row j lists the inputs of output j in ascending order, then zeros (which add exact
    zeros at the end of each sum, leaving it unchanged).
    """
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


def _float_layer(x: np.ndarray, idx: np.ndarray, val: np.ndarray, bias: np.ndarray, ymax) -> np.ndarray:
    """One layer for dense samples ``x`` (s, N) in ``x.dtype``, the reference's order."""
    z = np.zeros((x.shape[0], idx.shape[0]), dtype=x.dtype)
    for k in range(idx.shape[1]):
        z = z + x[:, idx[:, k]] * val[:, k]          # ((0 + t1) + t2) + ..., ascending inputs
    z = np.where(z != 0, z + bias, z)
    return np.minimum(np.maximum(z, x.dtype.type(0)), ymax)


def _dense_rows(features, rows, neurons: int) -> np.ndarray:
    f = as_features(features, neurons)
    return f[np.asarray(rows, dtype=np.int64)].toarray()


def trace_sample(network: Network, features_row, *, precision: str = "fp64") -> list[np.ndarray]:
    """Per-layer activations of one sample in float64 or float32.

    Parameters
    ----------
    network : Network
    features_row : sparse or dense, shape (1, N) or (N,)
        The sample's input row.
    precision : {'fp64', 'fp32'}
        Arithmetic of the whole computation (inputs, weights and bias rounded to it).
        Each output is summed over its input neurons in ascending order, as the
        reference does.

    Returns
    -------
    list of numpy.ndarray, each (N,)
        ``out[k]`` is the activation after layer k+1. The list stops after the first
        all-zero activation (the row is dead from there on), so it may be shorter than L.
    """
    if precision not in _DTYPES:
        raise OptionError(f"precision={precision!r}: expected 'fp32' or 'fp64'")
    dtype = _DTYPES[precision]
    n = network.neurons
    row = sp.csr_matrix(features_row) if sp.issparse(features_row) else np.asarray(features_row).reshape(1, -1)
    if row.shape != (1, n):
        raise OptionError(f"features_row: shape {row.shape}, expected (1, {n})")
    x = (row.toarray() if sp.issparse(row) else np.array(row, dtype=np.float64)).astype(dtype)
    ymax = dtype(network.ymax)
    out = []
    for k in range(network.depth):
        idx, val = _gather(network.layers[k], dtype)
        x = _float_layer(x, idx, val, network.bias[k].astype(dtype), ymax)
        out.append(x[0].copy())
        if not np.any(x):
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
    n = network.neurons
    row = sp.csr_matrix(features_row if sp.issparse(features_row) else np.asarray(features_row).reshape(1, -1),
                        dtype=np.float64)
    if row.shape != (1, n):
        raise OptionError(f"features_row: shape {row.shape}, expected (1, {n})")
    row.sum_duplicates()
    row.eliminate_zeros()
    idx = row.indices.astype(np.int64)
    num, ex = _dyadic(row.data)
    ynum, yex = _dyadic(np.array([network.ymax]))
    trace = ExactTrace()
    depth = network.depth if max_layers is None else min(int(max_layers), network.depth)
    for k in range(depth):
        w = sp.csr_matrix(network.layers[k])
        w.sort_indices()
        wnum, wex = _dyadic(w.data)
        bnum, bex = _dyadic(network.bias[k])
        # z_j = sum_i x_i w_ij exactly, over the nonzero inputs only: numerators over 2**(ex+wex)
        z: dict[int, int] = {}
        for i, a in zip(idx.tolist(), num):
            lo, hi = w.indptr[i], w.indptr[i + 1]
            for j, c in zip(w.indices[lo:hi].tolist(), wnum[lo:hi]):
                z[j] = z.get(j, 0) + a * c
        e = max(ex + wex, bex, yex)
        zs, bs, ys = e - (ex + wex), e - bex, e - yex
        cap = ynum[0] << ys
        out_idx, out_num = [], []
        for j in sorted(z):
            s = z[j] << zs
            if s != 0:
                s += bnum[j] << bs          # bias only where the sum is nonzero
            if s <= 0:
                continue                    # ReLU
            out_idx.append(j)
            out_num.append(min(s, cap))     # cap
        # keep numbers small: divide out the common powers of two
        if out_num:
            shift = min(min((a & -a).bit_length() - 1 for a in out_num), e)
            if shift > 0:
                out_num = [a >> shift for a in out_num]
                e -= shift
        idx = np.asarray(out_idx, dtype=np.int64)
        num, ex = out_num, e
        trace.layers.append((idx, list(num), ex))
        trace.alive.append(bool(num))
        if not num:
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
        """float32 and float64 (and the exact trace, when made) all give the found fate:
        the truth, not rounding, is the odd one out for this sample."""
        found_survives = self.in_set == "extra"
        fates = [self.fp64, self.fp32] + ([self.exact] if self.exact is not None else [])
        return all(f.survives == found_survives for f in fates)


@dataclass
class Explanation:
    """Why found categories differ from the truth; see :func:`explain_differences`."""

    comparison: Comparison
    found_precision: str
    records: list = field(default_factory=list)
    split_rtol: float = SPLIT_RTOL

    @property
    def explained(self) -> bool:
        """Every difference is reproduced by the found precision's trace and is a real
        float32/float64 split (not a truth that disagrees with every computation)."""
        return all(r.reproduced and not r.truth_disputed for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"comparison": self.comparison.to_dict(), "found_precision": self.found_precision,
                "split_rtol": self.split_rtol, "explained": self.explained,
                "records": [{**asdict(r), "truth_disputed": r.truth_disputed} for r in self.records]}

    def to_text(self) -> str:
        """Human-readable summary, one paragraph per differing sample."""
        c = self.comparison
        if c.passed:
            return f"categories match the truth ({c.truth_count} samples)"
        lines = [f"categories differ from the truth: {c.missing.size} missing, {c.extra.size} extra "
                 f"(found {c.found_count}, truth {c.truth_count}); found in {self.found_precision}."]
        for r in self.records:
            where = "in the truth but not found" if r.in_set == "missing" else "found but not in the truth"
            split = (f"float32 and float64 split at layer {r.split_layer} ({r.split_reason})"
                     if r.split_layer is not None else "float32 and float64 never split")
            exact = f"; exact: {r.exact.describe()}" if r.exact is not None else ""
            lines.append(f"- sample {r.sample} ({where}): float64 {r.fp64.describe()}, float32 "
                         f"{r.fp32.describe()}{exact}; {split}; right: {r.right}"
                         + ("" if r.reproduced else "; NOT reproduced by a "
                            f"{self.found_precision} trace (not a rounding effect of this order: "
                            "check the engine)")
                         + ("; every computation agrees with the found set: the truth is wrong "
                            "for this sample (check the truth file)" if r.truth_disputed else ""))
        if self.explained:
            lines.append(f"All {len(self.records)} differences are rounding effects of {self.found_precision} "
                         "on ill-conditioned samples (SPEC.md section 5).")
        return "\n".join(lines)


def _fate(alive_history: list[bool], final_max: float) -> Fate:
    for k, a in enumerate(alive_history):
        if not a:
            return Fate(False, k + 1, 0.0)
    return Fate(True, None, float(final_max))


def explain_differences(network: Network, features, found, truth, *, found_precision: str = "fp32",
                        exact_limit: int = 3, progress: bool | None = None) -> Explanation:
    """Explain why ``found`` categories differ from ``truth`` (SPEC.md section 5).

    Every sample in one set and not the other is traced through the network in float64
    and float32 (together, layer by layer); the first ``exact_limit`` of them also in
    exact arithmetic.

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
    progress : bool, optional
        Progress bar over layers.

    Returns
    -------
    Explanation
    """
    if found_precision not in _DTYPES:
        raise OptionError(f"found_precision={found_precision!r}: expected 'fp32' or 'fp64'")
    comparison = compare_categories(found, truth)
    ids = np.concatenate([comparison.missing, comparison.extra])
    sets = ["missing"] * comparison.missing.size + ["extra"] * comparison.extra.size
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    sets = [sets[i] for i in order]
    explanation = Explanation(comparison=comparison, found_precision=found_precision)
    if ids.size == 0:
        return explanation
    f = as_features(features, network.neurons)
    if ids.max() > f.shape[0]:
        raise OptionError(f"sample id {int(ids.max())} is beyond the {f.shape[0]} feature rows")
    x64 = _dense_rows(f, ids - 1, network.neurons)
    x32 = x64.astype(np.float32)
    count = ids.size
    alive64 = [[] for _ in range(count)]
    alive32 = [[] for _ in range(count)]
    split = [None] * count
    reason = [None] * count
    for k in progress_bar(range(network.depth), enabled=progress, desc="explain: float32 and float64"):
        w = network.layers[k]
        idx, val = _gather(w, np.float64)
        x64 = _float_layer(x64, idx, val, network.bias[k], np.float64(network.ymax))
        x32 = _float_layer(x32, idx, val.astype(np.float32), network.bias[k].astype(np.float32),
                           np.float32(network.ymax))
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
        if not (a64.any() or a32.any()):
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
