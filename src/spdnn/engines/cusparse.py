"""Library baseline: one cuSPARSE SpMM per layer through CuPy, with the same pruning.

Per layer, activations kept transposed (N x alive, dense) so the sparse operand is on
the left::

    Z^T = W^T @ Y^T                   # cupyx CSR @ dense -> cuSPARSE SpMM
    Z   = where(Z != 0, Z + b, 0), clipped to [0, ymax]
    keep the columns (samples) with a nonzero   # one host round trip per layer

It is the "generic library" point of comparison for the cuda engine (same semantics,
no fusion, no graph, a host synchronization per layer). Its fp64 mode sums in
cuSPARSE's order, which is not the exactness contract's, so it is not guaranteed to
be bit-identical to the reference.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..config import cupy_status
from ..errors import EngineUnavailableError, OptionError, SpdnnError
from ..network import Network
from .base import Engine

__all__ = ["CusparseEngine"]


def _cupy():
    try:
        import cupy
        import cupyx.scipy.sparse  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise EngineUnavailableError(f"cusparse engine: {exc}; install with: pip install 'spdnn[gpu]'") from exc
    return cupy


class CusparseEngine(Engine):
    """cuSPARSE SpMM per layer (see the module docstring).

    Parameters
    ----------
    precision : {'fp32', 'fp64'}
    progress : bool
        Unused.
    device : int, optional
        CUDA device id (default: the current one).
    batch_samples : int, optional
        Run at most this many samples at once (:meth:`run` loops over batches).
    """

    name = "cusparse"
    device = "gpu"
    #: cuSPARSE sums in its own order: fp64 categories agree, activations may not bit for bit.
    exact_fp64 = False
    #: fp64 sums in cuSPARSE's order (FMA, its own blocking): categories match the
    #: reference, activations are not guaranteed bit-identical.
    exact_fp64 = False

    def __init__(self, *, precision: str = "fp32", progress: bool = False, device: int | None = None,
                 batch_samples: int | None = None):
        super().__init__(precision=precision, progress=progress)
        if batch_samples is not None and int(batch_samples) <= 0:
            raise OptionError(f"batch_samples={batch_samples!r}: expected a positive integer")
        self.device_id = device
        self.batch_samples = batch_samples

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return cupy_status()

    def _dev(self):
        cp = _cupy()
        return cp.cuda.Device(self.device_id if self.device_id is not None else cp.cuda.runtime.getDevice())

    def prepare(self, network: Network) -> None:
        """Upload W^T of every layer as a CuPy CSR matrix, and the bias."""
        cp = _cupy()
        import cupyx.scipy.sparse as csp

        self.network = network
        with self._dev():
            self._wt = [csp.csr_matrix(sp.csr_matrix(network.layers[k].T, dtype=self.dtype))
                        for k in range(network.depth)]
            self._bias = cp.asarray(np.ascontiguousarray(network.bias, dtype=self.dtype))
            cp.cuda.get_current_stream().synchronize()

    def load(self, features) -> None:
        """Upload the features' nonempty rows, transposed and dense (N x samples)."""
        cp = _cupy()
        super().load(features)
        f = self.features
        rows = np.flatnonzero(np.diff(f.indptr) > 0)
        with self._dev():
            dense = cp.asarray(f[rows].toarray().astype(self.dtype))
            self._yt = cp.ascontiguousarray(dense.T)
            self._ids = rows.astype(np.int64)
            cp.cuda.get_current_stream().synchronize()

    def infer(self, start: int = 0, stop: int | None = None):
        cp = _cupy()
        net = self.network
        if net is None or self.features is None:
            raise SpdnnError("cusparse: prepare(network) and load(features) must come before infer()")
        stop = net.depth if stop is None else int(stop)
        survivors = np.zeros(stop - start, dtype=np.int64)
        ymax = self.dtype(net.ymax)
        with self._dev():
            yt, ids = self._yt, self._ids
            for k in range(start, stop):
                if ids.size == 0:
                    break
                z = self._wt[k] @ yt
                z = cp.where(z != 0, z + self._bias[k][:, None], self.dtype(0))
                cp.clip(z, 0, ymax, out=z)
                alive = cp.asnumpy((z > 0).any(axis=0))          # host round trip per layer
                if not alive.all():
                    keep = np.flatnonzero(alive)
                    z = z[:, cp.asarray(keep)]
                    ids = ids[keep]
                yt = z
                survivors[k - start] = ids.size
            cp.cuda.get_current_stream().synchronize()
        self._yt, self._ids = yt, ids
        return ids + 1, survivors, {"device": cp.cuda.runtime.getDeviceProperties(self._dev().id)["name"].decode()}

    def activations(self):
        cp = _cupy()
        with self._dev():
            y = cp.asnumpy(self._yt.T)
        return self._ids.copy(), sp.csr_matrix(y.astype(np.float64))

    #: Device bytes a sample's column may need at once, in activations: Y^T, Z, the
    #: where() temporaries (two) and the pruned copy.
    _ACTIVATIONS_PER_SAMPLE = 6

    def _fitting_batch(self, neurons: int) -> int:
        """Samples whose dense columns and temporaries fit 80% of the free device memory."""
        cp = _cupy()
        with self._dev():
            free, _total = cp.cuda.runtime.memGetInfo()
            free += cp.get_default_memory_pool().free_bytes()
        per = self._ACTIVATIONS_PER_SAMPLE * neurons * np.dtype(self.dtype).itemsize
        return max(1, int(0.8 * free) // per)

    def run(self, network: Network, features):
        """Like :meth:`Engine.run`, in batches of ``batch_samples`` (default: as many samples
        as fit the free device memory)."""
        import time

        from ..network import as_features

        t0 = time.perf_counter()
        self.prepare(network)
        feats = as_features(features, network.neurons)
        batch = self.batch_samples or self._fitting_batch(network.neurons)
        pre, inf = time.perf_counter() - t0, 0.0
        cats, survivors = [], np.zeros(network.depth, dtype=np.int64)
        for b0 in range(0, max(feats.shape[0], 1), batch):
            t1 = time.perf_counter()
            self.load(feats[b0:b0 + batch])
            t2 = time.perf_counter()
            c, s, extra = self.infer()
            inf += time.perf_counter() - t2
            pre += t2 - t1
            cats.append(c + b0)
            survivors += s
        self.features = feats
        categories = np.sort(np.concatenate(cats)) if cats else np.zeros(0, dtype=np.int64)
        return self._result(categories, survivors, {**extra, "batch_samples": int(batch), "batches": len(cats)},
                            inference=inf, preprocess=pre)
