"""The engine interface every engine implements (reference, cpu, cuda, ...).

An engine takes a :class:`~spdnn.network.Network` and features (CSR, samples x N) and
returns an :class:`InferenceResult`: sorted 1-based categories, survivors per layer,
and the preprocessing and inference times measured separately.

Life cycle (what :meth:`Engine.run` does per batch, and what a caller may do by hand)::

    engine = get_engine("cpu", precision="fp32")
    engine.prepare(network)      # convert/upload weights     -> preprocessing time
    engine.load(features)        # convert/upload features    -> preprocessing time
    categories, survivors, extra = engine.infer()             # -> inference time

Segments (used by MPI rebalancing): ``infer(start, stop)`` runs layers
``start..stop-1`` (0-based) over the samples currently loaded, and
``activations()`` then returns the survivors' rows, which can be ``load``-ed again
(here or on another rank) before the next segment. Where the network does not let zero
rows go after that layer (``network.prunes_after(stop)`` False: a later positive dense
bias revives them), the zero rows are samples too and must be loaded with them, as empty
rows (``spdnn.distributed`` does this). In fp32 the round trip through float64 CSR is
exact.

Exactness contract for ``precision='fp64'``: each output is accumulated as
``((0 + y[i1]*w[i1,j]) + y[i2]*w[i2,j]) + ...`` over the input neurons i in ascending
order, without fused multiply-add, then the bias is added where the sum is nonzero,
then the result is clamped to [0, ymax]. This is the reference's order, so fp64
engines with ``exact_fp64`` reproduce it bit for bit: activations, survivors per layer
and categories. A one-value-per-layer fast path that sums first and multiplies once is
allowed only where :func:`sum_then_scale_exact` proves it gives the same bits. Merging
identical samples (``merge``) keeps the bits too: identical rows give identical outputs.
The cuSPARSE baseline (``exact_fp64 = False``) sums in its library's order: its fp64
categories agree with the reference's on the data tested, its activations need not.
In 'fp32' no engine is bound to bits: categories equal the official truth on official
data, and any other difference is explained by :mod:`spdnn.verify`.

Engines whose features may not fit at once (a device's memory) say how many samples
to load at a time through :meth:`Engine._batch_size`; :meth:`Engine.run` batches.

Outputs (``run(..., outputs=...)``, :data:`OUTPUTS`): ``'categories'`` (always computed),
``'activations'`` (the final rows of every sample, dense ``(samples, n_L)`` in the
engine's dtype, in sample order), ``'predictions'`` (argmax of each final row, int64,
the lowest index on ties) and ``'topk'`` (the ``top_k`` largest values of each final row
and their column indices, descending, ties to the lower index). They are assembled from
:meth:`Engine.activations` after each batch, so every engine gets them the same way.
"""
from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass, field, asdict
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from ..errors import OptionError, SpdnnError
from ..network import Network, as_features
from ..options import PRECISIONS, check_precision

__all__ = ["Engine", "InferenceResult", "PRECISIONS", "OUTPUTS", "check_precision", "check_network",
           "check_weights", "sum_then_scale_exact", "is_power_of_two", "accuracy"]

#: What :meth:`Engine.run` can return besides the categories.
OUTPUTS = ("categories", "activations", "predictions", "topk")


def check_network(network) -> Network:
    """``network`` if it is a :class:`~spdnn.network.Network`, else :class:`OptionError` saying how to make one."""
    if not isinstance(network, Network):
        raise OptionError(f"network: expected a spdnn.Network, got {type(network).__name__} (make one with "
                          f"spdnn.Network.from_layers(layers, bias))")
    return network


def check_weights(w, dtype, layer: int):
    """``w`` (layer ``layer``, 1-based; sparse or dense) if every weight is within the
    range of ``dtype``.

    A float64 weight beyond float32's range (3.4e38) becomes inf in an fp32 run and
    every result after it is meaningless; the run is refused instead, naming the layer
    and the value, and pointing to fp64.
    """
    data = w if isinstance(w, np.ndarray) else w.data
    if np.dtype(dtype) == np.float64 or data.size == 0:
        return w
    limit = float(np.finfo(dtype).max)
    big = float(np.max(np.abs(data)))
    if big > limit:
        flat = data.ravel()
        i = int(np.argmax(np.abs(flat) > limit))
        raise OptionError(f"layer {layer}: weight {float(flat[i]):.6g} is beyond the range of "
                          f"{np.dtype(dtype).name} (at most {limit:.6g} in magnitude); run it with precision='fp64'")
    return w

def is_power_of_two(value: float) -> bool:
    """Whether ``value`` is ±2^e (finite, nonzero)."""
    mantissa, _ = math.frexp(value)
    return value != 0 and math.isfinite(value) and abs(mantissa) == 0.5


def sum_then_scale_exact(weight: float, dtype, *, smallest: float | None = None,
                         largest: float | None = None, max_terms: int | None = None) -> bool:
    """Whether summing a layer's terms, then multiplying once by its single ``weight``,
    gives exactly the bits of the contract's order (each term multiplied, then summed).

    It does when ``weight`` is a power of two and every product and partial sum stays in
    the normal range of ``dtype``: scaling by a power of two is then exact and commutes
    with rounding. The bounds must be known: ``smallest`` (the smallest nonzero input
    magnitude), ``largest`` (the largest) and ``max_terms`` (the most terms summed into
    one output) must give ``smallest*|w| >= tiny`` (no subnormal product) and
    ``max_terms*largest*max(1, |w|) < max/2`` (no overflow); an unknown bound gives False.
    Every fp64 engine decides its fast path with this function; in fp32 no engine is
    bound to bits and may sum first regardless.

    Parameters
    ----------
    weight : float
    dtype : numpy dtype (float32 or float64), the accumulation type
    smallest, largest : float, optional
    max_terms : int, optional
    """
    if not is_power_of_two(float(weight)) or smallest is None or largest is None or max_terms is None:
        return False
    w = abs(float(weight))
    info = np.finfo(np.dtype(dtype))
    return smallest * w >= info.tiny and max_terms * largest * max(1.0, w) < info.max / 2


def accuracy(predictions, labels) -> float:
    """Fraction of ``predictions`` equal to ``labels`` (both (samples,) integers).

    Raises :class:`OptionError` when the lengths differ."""
    p = np.asarray(predictions)
    y = np.asarray(labels)
    if p.shape != y.shape:
        raise OptionError(f"labels: {y.size} labels for {p.size} samples")
    return float(np.mean(p == y)) if p.size else float("nan")


def check_outputs(outputs: str, top_k) -> tuple[str, int | None]:
    """Validate ``outputs`` (one of :data:`OUTPUTS`) and ``top_k`` (a positive int, only
    with 'topk')."""
    if outputs not in OUTPUTS:
        raise OptionError(f"outputs={outputs!r}: expected one of {list(OUTPUTS)}")
    if outputs == "topk":
        if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise OptionError(f"top_k={top_k!r}: expected a positive integer with outputs='topk'")
        return outputs, int(top_k)
    if top_k is not None:
        raise OptionError(f"top_k={top_k!r}: only with outputs='topk'")
    return outputs, None


def _top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest of each row (descending; ties to the lower column) and their columns."""
    k = min(k, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(values, order, axis=1)


class _Outputs:
    """Collects a run's outputs part by part (see the module docstring, Outputs). Rows
    never added are zero rows: prediction 0, top-k columns 0..k-1 with values 0."""

    def __init__(self, kind: str, top_k: int | None, samples: int, width: int, dtype):
        self.kind, self.top_k, self.width, self.dtype = kind, top_k, width, np.dtype(dtype)
        self.dense = np.zeros((samples, width), self.dtype) if kind == "activations" else None
        self.predictions = np.zeros(samples, np.int64) if kind != "categories" else None
        k = min(top_k, width) if kind == "topk" else 0
        # every row starts as a zero row's outputs (argmax 0; top-k columns 0..k-1, values 0)
        self.top_indices = np.tile(np.arange(k, dtype=np.int64), (samples, 1)) if kind == "topk" else None
        self.top_values = np.zeros((samples, k), self.dtype) if kind == "topk" else None

    @staticmethod
    def bytes_needed(kind: str, top_k: int | None, samples: int, width: int, dtype) -> int:
        """Host bytes the outputs take (the dense activations dominate)."""
        item = np.dtype(dtype).itemsize
        per_row = {"categories": 0, "predictions": 8, "activations": 8 + width * item,
                   "topk": 8 + min(top_k or 0, width) * (8 + item)}[kind]
        return samples * per_row

    def add(self, samples: np.ndarray, values: sp.csr_matrix) -> None:
        """The final rows of ``samples`` (0-based sample ids, int64) and their activations
        (float64 CSR, one row each)."""
        if self.kind == "categories" or not len(samples):
            return
        rows = values.toarray().astype(self.dtype, copy=False)
        self.predictions[samples] = np.argmax(rows, axis=1) if self.width else 0
        if self.dense is not None:
            self.dense[samples] = rows
        if self.top_indices is not None:
            idx, vals = _top_k(rows, self.top_k)
            self.top_indices[samples] = idx
            self.top_values[samples] = vals

    def place(self, ids: np.ndarray, part: "_Outputs") -> None:
        """Copy the outputs of ``part`` (one row a sample of ``ids``, in that order) to the
        samples ``ids`` (0-based, any order): how MPI ranks' outputs are stitched together."""
        if self.kind == "categories" or not len(ids):
            return
        self.predictions[ids] = part.predictions
        if self.dense is not None:
            self.dense[ids] = part.dense
        if self.top_indices is not None:
            self.top_indices[ids] = part.top_indices
            self.top_values[ids] = part.top_values


def _head_bounds(depth: int) -> list[int]:
    """Layer boundaries 1, 3, 7, 15, ... below ``depth``: segments of 1, 2, 4, 8, ... layers."""
    bounds, k = [], 1
    while k < depth:
        bounds.append(k)
        k = 2 * k + 1
    return bounds


class _BatchedRun:
    """The bookkeeping of one :meth:`Engine.run`: its loads and segments of layers, their
    times, survivors, rows computed, categories and outputs, over batches of samples."""

    def __init__(self, engine: "Engine", outputs: _Outputs, *, depth: int):
        self.engine, self.outputs, self.depth = engine, outputs, depth
        self.preprocess = self.inference = 0.0
        self.survivors = np.zeros(depth, dtype=np.int64)
        self.rows_computed: np.ndarray | None = None
        self.categories: list[np.ndarray] = []
        self.extra: dict = {}
        self.loads = 0
        self.merged: dict | None = None
        self.ids = np.zeros(0, dtype=np.int64)    # 0-based sample id of each loaded row

    def load(self, matrix, ids: np.ndarray, *, inference: bool = False) -> None:
        """Load ``matrix`` whose rows are the samples ``ids``; timed as preprocessing
        (features) or as inference (survivors handed over between segments)."""
        t0 = time.perf_counter()
        self.engine.load(matrix)
        seconds = time.perf_counter() - t0
        if inference:
            self.inference += seconds
        else:
            self.preprocess += seconds
        self.ids = np.asarray(ids, dtype=np.int64)
        self.loads += 1

    def segment(self, start: int, stop: int, *, final: bool) -> int:
        """Run layers ``start..stop-1`` over the loaded rows; returns the samples alive
        after them. ``final`` (``stop`` is the last layer): keep categories and outputs."""
        t0 = time.perf_counter()
        self.engine.warm_up(start, stop)
        t1 = time.perf_counter()
        cats, surv, extra = self.engine.infer(start, stop)
        t2 = time.perf_counter()
        self.preprocess += t1 - t0
        self.inference += t2 - t1
        surv = np.asarray(surv, dtype=np.int64)
        self.survivors[start:stop] += surv
        if "rows_computed" in extra:
            if self.rows_computed is None:
                self.rows_computed = np.zeros(self.depth, dtype=np.int64)
            self.rows_computed[start:stop] += np.asarray(extra["rows_computed"], dtype=np.int64)
        self.extra = extra
        if final:
            self.categories.append(self.ids[np.asarray(cats, dtype=np.int64) - 1] + 1)
            if self.outputs.kind != "categories":
                rows, values = self.engine._activations()
                self.outputs.add(self.ids[rows], values)
        return int(surv[-1]) if surv.size else len(self.ids)

    def take(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """The loaded samples alive now: (sample ids, activations), timed as inference."""
        t0 = time.perf_counter()
        rows, values = self.engine._activations()
        self.inference += time.perf_counter() - t0
        return self.ids[np.asarray(rows, dtype=np.int64)], values

    def batched(self, feats: sp.csr_matrix, batch: int) -> None:
        """Every sample of ``feats`` through every layer, ``batch`` samples a load (see
        :meth:`Engine.run`)."""
        net, depth, total = self.engine.network, self.depth, feats.shape[0]
        starts = list(range(0, total, batch))

        def features(b0):
            return feats[b0:b0 + batch], np.arange(b0, min(total, b0 + batch), dtype=np.int64)

        from ..config import env_flag

        merging = env_flag("SPDNN_MERGE_BATCHES", True)
        bounds = [c for c in _head_bounds(depth) if net.prunes_after(c)] if merging else []
        first, ids = features(0)
        self.load(first, ids)
        at, head = 0, None
        for c in bounds:        # the first batch finds where the survivors would fit at once
            alive = self.segment(at, c, final=False)
            at = c
            if alive * total <= batch * first.shape[0]:
                head = c
                break
        if head is None:        # never prunes, or too many survive: every batch runs whole
            self.segment(at, depth, final=True)
            for b0 in starts[1:]:
                self.load(*features(b0))
                self.segment(0, depth, final=True)
            return
        parts = [self.take()]
        for b0 in starts[1:]:
            self.load(*features(b0))
            self.segment(0, head, final=False)
            parts.append(self.take())
        self._merge_and_continue(head, parts, [c for c in bounds if c > head])

    def _merge_and_continue(self, at: int, parts: list, bounds: list[int]) -> None:
        """The survivors ``parts`` ((ids, activations) before layer ``at``): all at once
        when they fit, else by batches up to the next boundary, and again."""
        while True:
            t0 = time.perf_counter()
            ids = np.concatenate([p[0] for p in parts])
            values = parts[0][1] if len(parts) == 1 else sp.vstack([p[1] for p in parts], format="csr")
            parts = []
            fit = max(1, int(self.engine._batch_size(values))) if len(ids) else 1
            self.inference += time.perf_counter() - t0
            if not len(ids):
                return                                  # nothing alive: later survivors are 0
            if fit >= len(ids):
                self.load(values, ids, inference=True)
                self.merged = {"layer": at, "samples": int(len(ids))}
                self.segment(at, self.depth, final=True)
                return
            stop = bounds.pop(0) if bounds else self.depth
            for r0 in range(0, len(ids), fit):
                self.load(values[r0:r0 + fit], ids[r0:r0 + fit], inference=True)
                self.segment(at, stop, final=stop == self.depth)
                if stop < self.depth:
                    parts.append(self.take())
            if stop == self.depth:
                return
            at = stop


@dataclass
class InferenceResult:
    """What one inference run produced.

    Attributes
    ----------
    categories : numpy.ndarray of int64
        Sorted, 1-based ids of the samples whose final activation row has a nonzero.
    survivors : numpy.ndarray of int64, shape (L,)
        Number of samples with a nonzero row after each layer.
    inference_seconds, preprocess_seconds : float
        Wall-clock seconds of the layer loop only, and of everything done before it
        (weight and feature conversion, transfers, compilation).
    engine, precision : str
    samples, neurons, layers : int
        ``neurons`` is the input width n_0 (N of the challenge's square layers).
    edges : int
        Sum over layers of nnz(W_k).
    extra : dict
        Engine-specific details (device name, batches, ...), JSON-serializable.
    outputs : numpy.ndarray (samples, n_L) or None
        Final activations of every sample in sample order (engine dtype), when asked for.
    predictions : numpy.ndarray of int64 (samples,) or None
        Argmax of each sample's final row, when predictions, activations or top-k were
        asked for.
    top_indices, top_values : numpy.ndarray (samples, k) or None
        The k largest final values of each sample (descending) and their 0-based columns.
    """

    categories: np.ndarray
    survivors: np.ndarray
    inference_seconds: float
    preprocess_seconds: float
    engine: str
    precision: str
    samples: int
    neurons: int
    layers: int
    edges: int
    extra: dict = field(default_factory=dict)
    outputs: np.ndarray | None = field(default=None, repr=False)
    predictions: np.ndarray | None = field(default=None, repr=False)
    top_indices: np.ndarray | None = field(default=None, repr=False)
    top_values: np.ndarray | None = field(default=None, repr=False)

    def accuracy(self, labels) -> float:
        """Fraction of samples whose prediction equals ``labels`` (int array, (samples,))."""
        if self.predictions is None:
            raise OptionError("accuracy: this result has no predictions (run with outputs='predictions')")
        return accuracy(self.predictions, labels)

    @property
    def teraedges_per_second(self) -> float:
        """The challenge metric: samples * edges / inference seconds / 1e12."""
        if self.inference_seconds <= 0:
            return float("inf")
        return self.samples * self.edges / self.inference_seconds / 1e12

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (categories as a list of ints)."""
        d = {k: v for k, v in asdict(self).items()
             if k not in ("outputs", "predictions", "top_indices", "top_values")}
        d["categories"] = [int(c) for c in self.categories]
        d["survivors"] = [int(c) for c in self.survivors]
        d["categories_count"] = int(len(self.categories))
        d["teraedges_per_second"] = self.teraedges_per_second
        return d


class Engine(abc.ABC):
    """Base class of the engines.

    Subclasses implement :meth:`prepare`, :meth:`load`, :meth:`_infer` and
    :meth:`activations`; this class validates the arguments of :meth:`infer` for all of
    them and owns the batched :meth:`run` (a subclass says how many samples fit at once
    through :meth:`_batch_size`).

    Parameters
    ----------
    precision : {'fp32', 'fp64'}
        Activation and accumulation precision. 'fp64' must reproduce the float64
        reference exactly (``exact_fp64``).
    progress : bool
        Show a progress bar over layers where the engine can (host-driven loops).
    """

    #: Registry name ("reference", "cpu", "cuda", ...).
    name: ClassVar[str] = ""
    #: Where the engine computes: "cpu" (host memory and cores) or "gpu" (a CUDA device).
    device: ClassVar[str] = "cpu"
    #: Whether precision='fp64' reproduces the float64 reference bit for bit (the
    #: exactness contract above). False only for library baselines.
    exact_fp64: ClassVar[bool] = True

    def __init__(self, *, precision: str = "fp32", progress: bool = False):
        self.precision = check_precision(precision)
        self.dtype = PRECISIONS[precision]
        self.progress = bool(progress)
        self.network: Network | None = None
        self.features: sp.csr_matrix | None = None

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(available, reason): whether this engine can run on this machine, and why not."""
        return True, "always available"

    @classmethod
    def supports(cls, network: Network) -> tuple[bool, str]:
        """(supported, reason): whether this engine can run ``network`` (every network of
        :mod:`spdnn.network` by default), and why not. :meth:`run` and
        :func:`spdnn.engines.get_engine` refuse a network it does not support; 'auto'
        picks an engine that does."""
        return True, "runs every network"

    def check_supports(self, network: Network) -> None:
        """Raise :class:`OptionError` with the reason unless :meth:`supports` ``network``."""
        ok, why = self.supports(network)
        if not ok:
            raise OptionError(f"engine {self.name!r} cannot run this network: {why}")

    @abc.abstractmethod
    def prepare(self, network: Network) -> None:
        """Convert the network into the engine's layout (preprocessing, timed)."""

    def weights(self, k: int) -> sp.spmatrix:
        """Layer ``k`` (0-based) of the prepared network, checked against the engine's
        precision (:func:`check_weights`): what every engine converts."""
        return check_weights(self.network.layers[k], self.dtype, k + 1)

    def load(self, features) -> None:
        """Convert the features (samples x n_0 CSR) into the engine's layout (timed).

        Activations of a later layer k (``n_k`` columns, from :meth:`activations`) may be
        loaded too, for a segment ``infer(k, ...)`` that starts there; :meth:`infer`
        checks that the width held is the one its first layer takes.
        """
        if self.network is None:
            raise SpdnnError(f"{self.name}: prepare(network) must come before load(features)")
        widths = self.network.widths
        width = np.shape(features)[1] if len(np.shape(features)) == 2 else None
        self.features = as_features(features, None if width in widths[1:] else self.network.inputs)
        self._held_width = int(self.features.shape[1])
        self._batched = False

    def infer(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        """Run layers ``start..stop-1`` (0-based; default all) over the loaded samples.

        Raises :class:`SpdnnError` before :meth:`prepare` and :meth:`load`, and
        :class:`OptionError` unless ``0 <= start <= stop <= L`` (integers).

        Returns
        -------
        categories : int64 array
            Sorted 1-based ids (row index in the loaded features + 1) of the samples
            alive after layer ``stop-1``.
        survivors : int64 array, shape (stop - start,)
            Samples alive after each layer run.
        extra : dict
            Engine-specific details, JSON-serializable. ``rows_computed`` (int list, one
            per layer run), where present, counts the activation rows the engine computed
            at each layer: fewer than the samples alive when it merges identical rows.
        """
        net = self.network
        if net is None or self.features is None:
            raise SpdnnError(f"{self.name}: prepare(network) and load(features) must come before infer()")
        stop = net.depth if stop is None else stop
        for label, value in (("start", start), ("stop", stop)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise OptionError(f"infer({label}={value!r}): expected an integer")
        if not 0 <= start <= stop <= net.depth:
            raise OptionError(f"infer(start={start}, stop={stop}): expected 0 <= start <= stop <= {net.depth}")
        held = getattr(self, "_held_width", net.widths[start])
        if held != net.widths[start]:
            raise OptionError(f"infer(start={start}): layer {start + 1} takes {net.widths[start]} values a sample "
                              f"and the samples held have {held}")
        out = self._infer(int(start), int(stop))
        self._held_width = net.widths[stop]
        return out

    @abc.abstractmethod
    def _infer(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """:meth:`infer` once its arguments are checked (``0 <= start <= stop <= L``)."""

    @abc.abstractmethod
    def _activations(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """:meth:`activations` once the state is checked: the rows with a nonzero after
        the last :meth:`infer` (ascending, batch-local) and their values (float64 CSR)."""

    def _batch_size(self, features: sp.csr_matrix) -> int:
        """Samples :meth:`run` loads at once (default: all). Engines with a memory budget override it."""
        return max(int(features.shape[0]), 1)

    def warm_up(self, start: int, stop: int) -> None:
        """Make ready what running layers ``start..stop-1`` over the loaded samples needs
        (e.g. capture a CUDA graph), without running them. :meth:`run` calls it before
        every :meth:`infer` and times it as preprocessing: a one-off cost (cached for the
        next run) that would otherwise be counted in a single run's inference time.
        Default: nothing."""

    def run(self, network: Network, features, *, outputs: str = "categories", top_k: int | None = None,
            ) -> InferenceResult:
        """prepare, then load + infer the samples, in batches where they do not fit at once.

        Batches (:meth:`_batch_size` smaller than the samples): where the network allows
        dropping dead rows (:meth:`Network.prunes_after`), every batch runs a *head* of
        layers, the survivors of all batches (rows and activations, with their sample ids)
        are collected and, when they fit at once, loaded together and the remaining layers
        run once (an engine that merges identical rows then merges them across batches);
        otherwise they continue by batches segment by segment (see :class:`_BatchedRun`).
        The head ends at the first boundary 1, 3, 7, 15, ... (segments doubling in length,
        where the network prunes) at which the first batch's survivors, scaled to all the
        samples, fit one batch. A network that never prunes runs every batch through all
        layers. Results are those of one unbatched run (the round trip through float64
        activations is exact in fp32 too).

        Timing: ``prepare``, loading the features and :meth:`warm_up` count as
        preprocessing; ``infer`` and the hand-over of survivors between segments
        (:meth:`activations`, loading them again) as inference. Survivors (and
        ``rows_computed``) are summed over the batches. ``outputs`` (:data:`OUTPUTS`) and
        ``top_k`` choose what else the result holds (module docstring); the host memory
        they need is checked before anything runs (:class:`~spdnn.errors.MemoryLimitError`).
        After a run of several batches, :meth:`activations` is refused: the result holds
        the outputs of every sample. ``extra`` gains ``batches`` and ``batch_samples``, and
        ``merged_batches`` (``layer``: the 0-based layer from which the survivors ran
        together, ``samples``: how many) when that happened.
        """
        check_network(network)
        kind, top_k = check_outputs(outputs, top_k)
        self.check_supports(network)
        feats = as_features(features, network.inputs)
        total = feats.shape[0]
        self._check_outputs_fit(kind, top_k, total, network.outputs, self.dtype)
        t0 = time.perf_counter()
        self.prepare(network)
        batch = max(1, int(self._batch_size(feats)))
        state = _BatchedRun(self, _Outputs(kind, top_k, total, network.outputs, self.dtype), depth=network.depth)
        state.preprocess += time.perf_counter() - t0
        self._batched = False
        if batch >= total:
            state.load(feats, np.arange(total, dtype=np.int64))
            state.segment(0, network.depth, final=True)
        else:
            state.batched(feats, batch)
        self.features = feats
        self._batched = state.loads > 1
        extra = dict(state.extra)
        if state.rows_computed is not None:
            extra["rows_computed"] = [int(r) for r in state.rows_computed]
        if state.loads > 1:
            extra.update(batches=-(-total // batch), batch_samples=batch)
        if state.merged is not None:
            extra["merged_batches"] = state.merged
        found = np.sort(np.concatenate(state.categories)) if state.categories else np.zeros(0, dtype=np.int64)
        result = self._result(found, state.survivors, extra, inference=state.inference, preprocess=state.preprocess)
        collected = state.outputs
        result.outputs, result.predictions = collected.dense, collected.predictions
        result.top_indices, result.top_values = collected.top_indices, collected.top_values
        return result

    @staticmethod
    def _check_outputs_fit(kind: str, top_k, samples: int, width: int, dtype=np.float64) -> None:
        """Refuse outputs that cannot fit the host memory available now."""
        from ..memory import TOLERANCE, host_available_bytes
        from ..errors import MemoryLimitError, format_bytes

        need = _Outputs.bytes_needed(kind, top_k, samples, width, dtype)
        if not need:
            return
        available = host_available_bytes()
        if need * (1 - TOLERANCE) > available:
            raise MemoryLimitError(
                f"outputs={kind!r}: {samples:,} samples x {width:,} outputs need about {format_bytes(need)} of host "
                f"memory and {format_bytes(available)} is available now; ask for predictions or outputs='topk' "
                f"instead, or run fewer samples")

    def activations(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """State after the last :meth:`infer`.

        Returns
        -------
        rows : int64 array (alive,)
            0-based rows of the loaded features whose rows are nonzero, ascending (every
            sample, merged ones included). Zero rows are not listed, also where the network
            does not let them go (module docstring, Segments).
        values : csr_matrix (alive, n), float64
            Their activations (exactly the engine's values, widened to float64).

        Raises :class:`SpdnnError` after a :meth:`run` of several batches (the loaded
        samples are then only the last batch's: use ``run(..., outputs='activations')``).
        """
        if getattr(self, "_batched", False):
            raise SpdnnError(f"{self.name}: activations() after a run of several batches would hold only the last "
                             f"batch; use run(..., outputs='activations') for every sample")
        if self.network is None or self.features is None:
            raise SpdnnError(f"{self.name}: prepare(network), load(features) and infer() must come before "
                             f"activations()")
        return self._activations()

    def _result(self, categories, survivors, extra, *, inference: float, preprocess: float) -> InferenceResult:
        net = self.network
        assert net is not None and self.features is not None
        return InferenceResult(
            categories=np.asarray(categories, dtype=np.int64),
            survivors=np.asarray(survivors, dtype=np.int64),
            inference_seconds=float(inference),
            preprocess_seconds=float(preprocess),
            engine=self.name,
            precision=self.precision,
            samples=int(self.features.shape[0]),
            neurons=net.inputs,
            layers=net.depth,
            edges=net.edges,
            extra=dict(extra),
        )
