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
from ..network import Network
from ..options import optional_index, optional_positive_int
from ._cupy import cupy, device, device_name, free_device_bytes
from .base import Engine

__all__ = ["CusparseEngine"]


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
        Run at most this many samples at once (:meth:`run` loops over batches; default:
        as many as fit the free device memory).
    """

    name = "cusparse"
    device = "gpu"
    #: fp64 sums in cuSPARSE's order (FMA, its own blocking): categories match the
    #: reference on the data tested, activations are not guaranteed bit-identical.
    exact_fp64 = False

    #: Device bytes a sample's column may need at once, in activations: Y^T, Z, the
    #: where() temporaries (two) and the pruned copy.
    _ACTIVATIONS_PER_SAMPLE = 6

    def __init__(self, *, precision: str = "fp32", progress: bool = False, device: int | None = None,
                 batch_samples: int | None = None):
        super().__init__(precision=precision, progress=progress)
        self.device_id = optional_index(device, "device")
        self.batch_samples = optional_positive_int(batch_samples, "batch_samples")

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return cupy_status()

    def _dev(self):
        return device(self.name, self.device_id)

    def prepare(self, network: Network) -> None:
        """Upload W^T of every layer as a CuPy CSR matrix, and the bias."""
        cp = cupy(self.name)
        import cupyx.scipy.sparse as csp

        self.network = network
        with self._dev():
            self._wt = [csp.csr_matrix(sp.csr_matrix(self.weights(k).T, dtype=self.dtype))
                        for k in range(network.depth)]
            self._bias = cp.asarray(np.ascontiguousarray(network.bias, dtype=self.dtype))
            cp.cuda.get_current_stream().synchronize()

    def load(self, features) -> None:
        """Upload the features' nonempty rows, transposed and dense (N x samples)."""
        cp = cupy(self.name)
        super().load(features)
        f = self.features
        rows = np.flatnonzero(np.diff(f.indptr) > 0)
        with self._dev():
            dense = cp.asarray(f[rows].toarray().astype(self.dtype))
            self._yt = cp.ascontiguousarray(dense.T)
            self._ids = rows.astype(np.int64)
            cp.cuda.get_current_stream().synchronize()

    def _infer(self, start: int, stop: int):
        cp = cupy(self.name)
        net = self.network
        survivors = np.zeros(stop - start, dtype=np.int64)
        ymax = self.dtype(net.ymax)
        with self._dev() as dev:
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
            name = device_name(dev)
        self._yt, self._ids = yt, ids
        return ids + 1, survivors, {"device": name}

    def activations(self):
        cp = cupy(self.name)
        with self._dev():
            y = cp.asnumpy(self._yt.T)
        return self._ids.copy(), sp.csr_matrix(y.astype(np.float64))

    def _batch_size(self, features: sp.csr_matrix) -> int:
        """``batch_samples``, else the samples whose dense columns and temporaries fit 80% of
        the free device memory."""
        if self.batch_samples is not None:
            return self.batch_samples
        with self._dev():
            free = free_device_bytes()
        per = self._ACTIVATIONS_PER_SAMPLE * self.network.neurons * np.dtype(self.dtype).itemsize
        return max(1, int(0.8 * free) // per)
