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
(here or on another rank) before the next segment. In fp32 the round trip through
float64 CSR is exact.

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

__all__ = ["Engine", "InferenceResult", "PRECISIONS", "check_precision", "check_network", "check_weights",
           "sum_then_scale_exact", "is_power_of_two"]

def check_network(network) -> Network:
    """``network`` if it is a :class:`~spdnn.network.Network`, else :class:`OptionError` saying how to make one."""
    if not isinstance(network, Network):
        raise OptionError(f"network: expected a spdnn.Network, got {type(network).__name__} (make one with "
                          f"spdnn.Network.from_layers(layers, bias))")
    return network


def check_weights(w: sp.spmatrix, dtype, layer: int) -> sp.spmatrix:
    """``w`` (layer ``layer``, 1-based) if every weight is within the range of ``dtype``.

    A float64 weight beyond float32's range (3.4e38) becomes inf in an fp32 run and
    every result after it is meaningless; the run is refused instead, naming the layer
    and the value, and pointing to fp64.
    """
    if np.dtype(dtype) == np.float64 or w.nnz == 0:
        return w
    limit = float(np.finfo(dtype).max)
    data = w.data
    big = float(np.max(np.abs(data)))
    if big > limit:
        i = int(np.argmax(np.abs(data) > limit))
        raise OptionError(f"layer {layer}: weight {float(data[i]):.6g} is beyond the range of "
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
    edges : int
        Sum over layers of nnz(W_k).
    extra : dict
        Engine-specific details (device name, batches, ...), JSON-serializable.
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

    @property
    def teraedges_per_second(self) -> float:
        """The challenge metric: samples * edges / inference seconds / 1e12."""
        if self.inference_seconds <= 0:
            return float("inf")
        return self.samples * self.edges / self.inference_seconds / 1e12

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (categories as a list of ints)."""
        d = asdict(self)
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

    @abc.abstractmethod
    def prepare(self, network: Network) -> None:
        """Convert the network into the engine's layout (preprocessing, timed)."""

    def weights(self, k: int) -> sp.spmatrix:
        """Layer ``k`` (0-based) of the prepared network, checked against the engine's
        precision (:func:`check_weights`): what every engine converts."""
        return check_weights(self.network.layers[k], self.dtype, k + 1)

    def load(self, features) -> None:
        """Convert the features (samples x N CSR) into the engine's layout (timed)."""
        if self.network is None:
            raise SpdnnError(f"{self.name}: prepare(network) must come before load(features)")
        self.features = as_features(features, self.network.neurons)

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
        return self._infer(int(start), int(stop))

    @abc.abstractmethod
    def _infer(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """:meth:`infer` once its arguments are checked (``0 <= start <= stop <= L``)."""

    @abc.abstractmethod
    def activations(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """State after the last :meth:`infer`.

        Returns
        -------
        rows : int64 array (alive,)
            0-based rows of the loaded features still alive, ascending (every sample,
            merged ones included).
        values : csr_matrix (alive, N), float64
            Their activations (exactly the engine's values, widened to float64).
        """

    def _batch_size(self, features: sp.csr_matrix) -> int:
        """Samples :meth:`run` loads at once (default: all). Engines with a memory budget override it."""
        return max(int(features.shape[0]), 1)

    def run(self, network: Network, features) -> InferenceResult:
        """prepare, then load + infer each batch of samples (see :meth:`_batch_size`).

        ``prepare`` and every ``load`` are timed as preprocessing, every ``infer`` as
        inference; survivors (and ``rows_computed``) are summed over the batches.
        """
        check_network(network)
        t0 = time.perf_counter()
        self.prepare(network)
        feats = as_features(features, network.neurons)
        total = feats.shape[0]
        batch = max(1, int(self._batch_size(feats)))
        preprocess, inference = time.perf_counter() - t0, 0.0
        categories, survivors, rows_computed = [], np.zeros(network.depth, dtype=np.int64), None
        extra: dict = {}
        batches = 0
        for b0 in range(0, max(total, 1), batch):
            t1 = time.perf_counter()
            self.load(feats if batch >= total else feats[b0:b0 + batch])   # a slice would copy
            t2 = time.perf_counter()
            cats, surv, extra = self.infer()
            t3 = time.perf_counter()
            preprocess += t2 - t1
            inference += t3 - t2
            categories.append(np.asarray(cats, dtype=np.int64) + b0)
            survivors += np.asarray(surv, dtype=np.int64)
            if "rows_computed" in extra:
                rc = np.asarray(extra["rows_computed"], dtype=np.int64)
                rows_computed = rc if rows_computed is None else rows_computed + rc
            batches += 1
        self.features = feats
        extra = dict(extra)
        if rows_computed is not None:
            extra["rows_computed"] = [int(r) for r in rows_computed]
        if batches > 1:
            extra.update(batches=batches, batch_samples=batch)
        found = np.sort(np.concatenate(categories)) if categories else np.zeros(0, dtype=np.int64)
        return self._result(found, survivors, extra, inference=inference, preprocess=preprocess)

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
            neurons=net.neurons,
            layers=net.depth,
            edges=net.edges,
            extra=dict(extra),
        )
