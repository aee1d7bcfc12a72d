"""The engine interface every engine implements (reference, cpu, cuda, ...).

An engine takes a :class:`~spdnn.network.Network` and features (CSR, samples x N) and
returns an :class:`InferenceResult`: sorted 1-based categories, survivors per layer,
and the preprocessing and inference times measured separately.

Life cycle (what :meth:`Engine.run` does, and what a caller may do by hand)::

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
engines reproduce it bit for bit. (A one-value-per-layer fast path that sums first
and multiplies once is bit-identical only when that value is a power of two.)

Engines that must interleave loading and inference (batching features that do not
fit a device) override :meth:`Engine.run` and time the parts themselves.
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field, asdict
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from ..errors import SpdnnError
from ..network import Network, as_features
from ..options import PRECISIONS, check_precision

__all__ = ["Engine", "InferenceResult", "PRECISIONS", "check_precision"]

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

    Parameters
    ----------
    precision : {'fp32', 'fp64'}
        Activation and accumulation precision. 'fp64' must reproduce the float64
        reference exactly.
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

    def load(self, features) -> None:
        """Convert the features (samples x N CSR) into the engine's layout (timed)."""
        if self.network is None:
            raise SpdnnError(f"{self.name}: prepare(network) must come before load(features)")
        self.features = as_features(features, self.network.neurons)

    @abc.abstractmethod
    def infer(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        """Run layers ``start..stop-1`` (0-based; default all) over the loaded samples.

        Returns
        -------
        categories : int64 array
            Sorted 1-based ids (row index in the loaded features + 1) of the samples
            alive after layer ``stop-1``.
        survivors : int64 array, shape (stop - start,)
            Samples alive after each layer run.
        extra : dict
            Engine-specific details, JSON-serializable.
        """

    @abc.abstractmethod
    def activations(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """State after the last :meth:`infer`.

        Returns
        -------
        rows : int64 array (alive,)
            0-based rows of the loaded features still alive, ascending.
        values : csr_matrix (alive, N), float64
            Their activations (exactly the engine's values, widened to float64).
        """

    def run(self, network: Network, features) -> InferenceResult:
        """prepare + load (timed as preprocessing), then infer (timed as inference)."""
        t0 = time.perf_counter()
        self.prepare(network)
        self.load(features)
        t1 = time.perf_counter()
        categories, survivors, extra = self.infer()
        t2 = time.perf_counter()
        return self._result(categories, survivors, extra, inference=t2 - t1, preprocess=t1 - t0)

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
