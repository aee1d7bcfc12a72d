"""Library baseline: one cuSPARSE SpMM per layer through CuPy, with the same pruning.

Per layer, activations kept transposed (n_k x samples held, dense) so the weights are on
the left::

    Z^T = W^T @ Y^T                   # cupyx CSR @ dense -> cuSPARSE SpMM (a dense layer: cuBLAS)
    Z   = where(Z != 0, Z + b, 0)     # structural bias (the challenge); a dense bias: Z + b
    Z   = clip(Z, 0, cap)             # ReLU and its cap (none: inf); identity: nothing
    keep the columns (samples) with a nonzero   # one host round trip per layer, only where
                                                # network.prunes_after(k + 1) allows it

Every network runs: rectangular and dense layers, either bias rule, any cap, identity
layers (:mod:`spdnn.network`).

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

    @classmethod
    def supports(cls, network: Network) -> tuple[bool, str]:
        """(True, why): every network runs (sparse layers on cuSPARSE, dense ones on cuBLAS)."""
        return True, "sparse layers through cuSPARSE SpMM, dense layers through cuBLAS"

    def prepare(self, network: Network) -> None:
        """Upload W^T of every layer (CuPy CSR for a sparse layer, dense for a dense one), and the bias."""
        cp = cupy(self.name)
        import cupyx.scipy.sparse as csp

        self.network = network
        with self._dev():
            self._wt = [cp.asarray(np.ascontiguousarray(self.weights(k).T, dtype=self.dtype))
                        if network.is_dense(k) else csp.csr_matrix(sp.csr_matrix(self.weights(k).T, dtype=self.dtype))
                        for k in range(network.depth)]
            self._bias = [cp.asarray(np.ascontiguousarray(network.bias[k], dtype=self.dtype))
                          for k in range(network.depth)]
            cp.cuda.get_current_stream().synchronize()

    def load(self, features) -> None:
        """Upload the features transposed and dense (n_0 x samples): the nonempty rows where the
        network lets zero rows go (``prunes_after(0)``), else every row."""
        cp = cupy(self.name)
        super().load(features)
        f = self.features
        nonempty = np.diff(f.indptr) > 0
        rows = np.flatnonzero(nonempty) if self.network.prunes_after(0) else np.arange(f.shape[0])
        with self._dev():
            dense = cp.asarray(f[rows].toarray().astype(self.dtype))
            self._yt = cp.ascontiguousarray(dense.T)
            self._ids = rows.astype(np.int64)
            self._alive = nonempty[rows]
            cp.cuda.get_current_stream().synchronize()

    def _infer(self, start: int, stop: int):
        cp = cupy(self.name)
        net = self.network
        survivors = np.zeros(stop - start, dtype=np.int64)
        with self._dev() as dev:
            yt, ids, live = self._yt, self._ids, self._alive
            for k in range(start, stop):
                if ids.size == 0:               # every row gone: nothing held, at the last layer's width
                    yt = cp.zeros((net.widths[stop], 0), dtype=self.dtype)
                    break
                rule = net.rule(k)
                z = self._wt[k] @ yt
                b = self._bias[k][:, None]
                z = z + b if rule.bias_rule == "dense" else cp.where(z != 0, z + b, self.dtype(0))
                if rule.activation == "relu":
                    cp.clip(z, 0, self.dtype(rule.cap), out=z)
                live = cp.asnumpy((z != 0).any(axis=0))          # host round trip per layer
                if net.prunes_after(k + 1) and not live.all():
                    keep = np.flatnonzero(live)
                    z = z[:, cp.asarray(keep)]
                    ids, live = ids[keep], live[keep]
                yt = z
                survivors[k - start] = int(live.sum())
            cp.cuda.get_current_stream().synchronize()
            name = device_name(dev)
        self._yt, self._ids, self._alive = yt, ids, live
        return ids[live] + 1, survivors, {"device": name}

    def _activations(self):
        cp = cupy(self.name)
        with self._dev():
            y = cp.asnumpy(self._yt.T)
        return self._ids[self._alive], sp.csr_matrix(y[self._alive].astype(np.float64))

    def _batch_size(self, features: sp.csr_matrix) -> int:
        """``batch_samples``, else the samples whose dense columns and temporaries fit 80% of
        the free device memory."""
        if self.batch_samples is not None:
            return self.batch_samples
        with self._dev():
            free = free_device_bytes()
        per = self._ACTIVATIONS_PER_SAMPLE * max(self.network.widths) * np.dtype(self.dtype).itemsize
        return max(1, int(0.8 * free) // per)
