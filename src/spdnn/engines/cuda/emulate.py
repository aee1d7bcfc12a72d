"""A numpy replay of the CUDA layer kernel over the packed layout (for CPU tests).

It follows ``kernels/layer.cu`` step for step: chunks of the input staged with a zero
slot, warp slices walked entry by entry (padding included), one rounding per product
and per sum (no FMA), the value modes, the epilogue (scale, bias where the sum is
nonzero, clamp) and the compaction of the survivors in tile order. In float64 it must
equal the reference bit for bit; the tests check that, which checks the layout.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ...network import Network
from .layout import (VALUE_ARRAY, VALUE_SCALAR, VALUE_SUM_THEN_SCALE, KernelConfig, PackedLayer,
                     choose_config, entry_values, narrowest_exact_dtype, pack_layer, value_plan)

__all__ = ["emulate_layer", "emulate_network"]


def emulate_layer(y: np.ndarray, layer: PackedLayer, config: KernelConfig, neurons: int,
                  bias: np.ndarray, ymax: float, *, mode: int, value_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """One layer as the kernel computes it.

    Parameters
    ----------
    y : ndarray (samples, N), float32 or float64
        Dense input activations; their dtype is the arithmetic's.
    layer : PackedLayer
    config : KernelConfig
    neurons : int
    bias : ndarray (N,)
    ymax : float
    mode : int
        Value mode (:data:`VALUE_SUM_THEN_SCALE`, :data:`VALUE_SCALAR`, :data:`VALUE_ARRAY`).
    value_dtype : numpy dtype, optional
        Storage type of per-entry values (VALUE_ARRAY).

    Returns
    -------
    z : ndarray (samples, N), same dtype as ``y``
    alive : ndarray bool (samples,)
    """
    t_ = y.dtype.type
    cfg, n = config, int(neurons)
    samples = y.shape[0]
    nchunks, slices = cfg.nchunks(n), cfg.slices(n)
    ncols = slices * cfg.outputs_per_block
    acc = np.zeros((samples, ncols), dtype=y.dtype)
    meta = layer.meta.reshape(slices, nchunks, cfg.opt, cfg.nwarps, 2)
    lane = np.arange(32)
    cols = (np.arange(slices)[:, None, None, None] * cfg.outputs_per_block
            + np.arange(cfg.opt)[None, :, None, None] * cfg.threads
            + np.arange(cfg.nwarps)[None, None, :, None] * 32 + lane)
    scalar = t_(layer.uniform_value) if layer.uniform_value is not None else None
    values = None
    if mode == VALUE_ARRAY:
        values = entry_values(layer, cfg.chunk).astype(value_dtype).astype(y.dtype)
    for c in range(nchunks):
        base = c * cfg.chunk
        length = min(cfg.chunk, n - base)
        buf = np.zeros((samples, cfg.chunk + 1), dtype=y.dtype)
        buf[:, :length] = y[:, base:base + length]
        offsets, widths = meta[:, c, ..., 0], meta[:, c, ..., 1]
        for k in range(int(widths.max(initial=0))):
            active = widths > k
            pos = (offsets[..., None] + 32 * k + lane)[active].ravel()
            jj = cols[active].ravel()
            x = buf[:, layer.idx[pos]]
            if mode == VALUE_SUM_THEN_SCALE:
                acc[:, jj] = acc[:, jj] + x
            else:
                w = scalar if mode == VALUE_SCALAR else values[pos]
                acc[:, jj] = acc[:, jj] + w * x
    z = acc[:, :n] if layer.out_map is None else acc[:, layer.out_map.astype(np.int64)]
    if mode == VALUE_SUM_THEN_SCALE:
        z = z * scalar
    nonzero = z != 0
    z = np.where(nonzero, z + bias.astype(y.dtype), t_(0))
    z = np.minimum(np.maximum(z, t_(0)), t_(ymax))
    return z, (z > 0).any(axis=1)


def emulate_network(network: Network, features, *, precision: str = "fp64",
                    config: KernelConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run a whole network through :func:`emulate_layer`, dropping dead samples each layer.

    Parameters
    ----------
    network : Network
    features : sparse or dense (samples, N)
    precision : {'fp64', 'fp32'}
    config : KernelConfig, optional
        Default :func:`choose_config`.

    Returns
    -------
    categories : int64 (alive,), sorted 1-based ids
    survivors : int64 (L,)
    rows : int64 (alive,), 0-based ids in the emulated (tile) order
    y : ndarray (alive, N), their activations in that order
    """
    dtype = np.float64 if precision == "fp64" else np.float32
    n = network.neurons
    cfg = config or choose_config(n, np.dtype(dtype).itemsize)
    packed = [pack_layer(w, cfg, n) for w in network.layers]
    exact = [narrowest_exact_dtype(np.unique(p.values[p.idx != cfg.chunk]), dtype) for p in packed]
    plan = value_plan([p.uniform_value for p in packed], exact, dtype)
    y = np.asarray(sp.csr_matrix(features).toarray(), dtype=dtype)
    rows = np.arange(y.shape[0], dtype=np.int64)
    survivors = np.zeros(network.depth, dtype=np.int64)
    for k, layer in enumerate(packed):
        z, alive = emulate_layer(y, layer, cfg, n, network.bias[k], network.ymax,
                                 mode=plan.mode, value_dtype=plan.value_dtype)
        y, rows = z[alive], rows[alive]
        survivors[k] = rows.size
    return np.sort(rows) + 1, survivors, rows, y
