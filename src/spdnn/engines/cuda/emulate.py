"""A numpy replay of the CUDA layer kernel over the packed layout (for CPU tests).

It follows ``kernels/layer.cu`` step for step: chunks of the input staged with a zero
slot, warp slices walked entry by entry (padding included), one rounding per product
and per sum (no FMA), the value modes, the epilogue (scale, bias where the sum is
nonzero, clamp) and the compaction of the survivors in tile order. In float64 it must
equal the reference bit for bit; the tests check that, which checks the layout.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from ...network import Network
from .layout import (NO_REP, VALUE_ARRAY, VALUE_SCALAR, VALUE_SUM_THEN_SCALE, KernelConfig, PackedLayer, compose_indices,
                     distinct_reps, entry_values)
from .compilation import bind_arguments, template_arguments
from .kernel_args import kernel_args
from .plan import plan_challenge

__all__ = ["emulate_layer", "emulate_distinct_tail", "emulate_network", "packed_sums", "NumpyKernels"]


def packed_sums(y: np.ndarray, idx: np.ndarray, values: np.ndarray | None, meta: np.ndarray,
                config: KernelConfig, n_in: int, slices: int, *, mode: int, scalar=None) -> np.ndarray:
    """The register tiles of the layer kernels over the packed layout: the sum of every
    packed column of every row, as the kernel adds them (chunk by chunk, entry by entry,
    padding included, one rounding per product and per sum).

    Parameters
    ----------
    y : ndarray (samples, n_in), float32 or float64 (the arithmetic's type)
    idx, values, meta : the packed layer (:class:`PackedLayer`); ``values`` (entries,) in
        ``y``'s type for :data:`VALUE_ARRAY`, else unused
    config : KernelConfig
    n_in : int
    slices : int
        Output slices packed.
    mode : int
        Value mode; ``scalar`` (``y``'s type) is the weight of :data:`VALUE_SCALAR` and the
        scale of :data:`VALUE_SUM_THEN_SCALE` (applied by the caller).

    Returns
    -------
    ndarray (samples, slices * config.outputs_per_block)
    """
    cfg = config
    samples = y.shape[0]
    nchunks = cfg.nchunks(n_in)
    ncols = slices * cfg.outputs_per_block
    acc = np.zeros((samples, ncols), dtype=y.dtype)
    meta = meta.reshape(slices, nchunks, cfg.cols_per_thread, cfg.nwarps, 2)
    lane = np.arange(32)
    cols = (np.arange(slices)[:, None, None, None] * cfg.outputs_per_block
            + np.arange(cfg.cols_per_thread)[None, :, None, None] * cfg.threads
            + np.arange(cfg.nwarps)[None, None, :, None] * 32 + lane)
    for c in range(nchunks):
        base = c * cfg.chunk
        length = min(cfg.chunk, n_in - base)
        buf = np.zeros((samples, cfg.chunk + 1), dtype=y.dtype)
        buf[:, :length] = y[:, base:base + length]
        offsets, widths = meta[:, c, ..., 0], meta[:, c, ..., 1]
        for k in range(int(widths.max(initial=0))):
            active = widths > k
            pos = (offsets[..., None] + 32 * k + lane)[active].ravel()
            jj = cols[active].ravel()
            x = buf[:, idx[pos]]
            if mode == VALUE_SUM_THEN_SCALE:
                acc[:, jj] = acc[:, jj] + x
            else:
                w = scalar if mode == VALUE_SCALAR else values[pos]
                acc[:, jj] = acc[:, jj] + w * x
    return acc


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
    scalar = t_(layer.uniform_value) if layer.uniform_value is not None else None
    values = None
    if mode == VALUE_ARRAY:
        values = entry_values(layer, cfg.chunk).astype(value_dtype).astype(y.dtype)
    acc = packed_sums(y, layer.idx, values, layer.meta, cfg, n, cfg.slices(n), mode=mode, scalar=scalar)
    z = acc[:, :n] if layer.out_map is None else acc[:, layer.out_map.astype(np.int64)]
    if mode == VALUE_SUM_THEN_SCALE:
        z = z * scalar
    nonzero = z != 0
    z = np.where(nonzero, z + bias.astype(y.dtype), t_(0))
    z = np.minimum(np.maximum(z, t_(0)), t_(ymax))
    return z, (z > 0).any(axis=1)


def emulate_distinct_tail(y: np.ndarray, packed: list[PackedLayer], config: KernelConfig, neurons: int,
                          bias: float, ymax: float, k0: int, k1: int, *, mode: int,
                          value_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Layers k0..k1-1 as ``kernels/tail.cu`` computes them: each row held as its distinct
    values (``y`` holds layer k0-1's outputs, read at :func:`.layout.distinct_reps`), sums
    over the composed indices (:func:`.layout.compose_indices`), the epilogue on the
    distinct sums, and the survivors expanded once at the end.

    ``packed``: every layer packed for ``config`` (deduplicated); ``bias``: the one bias
    value; ``k0 >= 1``. Returns (z, alive) as :func:`emulate_layer` (rows that died before
    k1 are all zero in ``z``), which it must equal bit for bit.
    """
    if not (config.dedupe and 1 <= k0 < k1 <= len(packed)):
        raise ValueError("the distinct tail needs deduplicated layers and 1 <= k0 < k1 <= depth")
    t_ = y.dtype.type
    cols, n = config.outputs_per_block, int(neurons)
    reps = distinct_reps(packed[k0 - 1].out_map, cols).astype(np.int64)
    a = np.zeros((y.shape[0], cols), dtype=y.dtype)            # padding columns read 0
    real = reps != NO_REP
    a[:, real] = y[:, reps[real]]
    single = replace(config, chunk=cols)                       # one chunk of cols inputs, zero slot cols
    alive = np.ones(y.shape[0], dtype=bool)
    for k in range(k0, k1):
        layer = packed[k]
        scalar = t_(layer.uniform_value) if layer.uniform_value is not None else None
        values = None
        if mode == VALUE_ARRAY:
            values = entry_values(layer, config.chunk).astype(value_dtype).astype(y.dtype)
        cidx = compose_indices(layer.idx, packed[k - 1].out_map, n, cols)
        z = packed_sums(a, cidx, values, layer.meta, single, cols, 1, mode=mode, scalar=scalar)
        if mode == VALUE_SUM_THEN_SCALE:
            z = z * scalar
        z = np.where(z != 0, z + t_(bias), t_(0))
        a = np.minimum(np.maximum(z, t_(0)), t_(ymax))
        alive &= (a > 0).any(axis=1)
        a[~alive] = 0                                              # a dead row stops (and stays zero)
    return a[:, packed[k1 - 1].out_map.astype(np.int64)], alive


def emulate_network(network: Network, features, *, precision: str = "fp64",
                    config: KernelConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run a whole network through :func:`emulate_layer`, dropping dead samples each layer.

    Parameters
    ----------
    network : Network
    features : sparse or dense (samples, N)
    precision : {'fp64', 'fp32'}
    config : KernelConfig, optional
        Default: the engine's choice (:func:`.plan.plan_challenge`).

    Returns
    -------
    categories : int64 (alive,), sorted 1-based ids
    survivors : int64 (L,)
    rows : int64 (alive,), 0-based ids in the emulated (tile) order
    y : ndarray (alive, N), their activations in that order
    """
    dtype = np.float64 if precision == "fp64" else np.float32
    n = network.neurons
    plan, packed = plan_challenge(network, dtype, lambda k: network.layers[k], smem_limit=227 * 1024,
                                  budget=1 << 62, forced=config, merge=False, stream_weights=False)
    cfg = plan.config
    y = np.asarray(sp.csr_matrix(features).toarray(), dtype=dtype)
    rows = np.arange(y.shape[0], dtype=np.int64)
    survivors = np.zeros(network.depth, dtype=np.int64)
    for k, layer in enumerate(packed):
        z, alive = emulate_layer(y, layer, cfg, n, network.bias[k], network.ymax,
                                 mode=plan.values.mode, value_dtype=plan.values.value_dtype)
        y, rows = z[alive], rows[alive]
        survivors[k] = rows.size
    return np.sort(rows) + 1, survivors, rows, y




class NumpyKernels:
    """A numpy replay of the general path's kernels: the backend of
    :class:`spdnn.engines.cuda.general.GeneralPath` on the CPU (tests).

    Each launch does what the kernel of that template instance does, on numpy arrays, with
    the same arguments, bound by name and checked as for the GPU
    (:func:`.compilation.bind_arguments`): ``spdnn_general_sparse`` (through
    :func:`packed_sums`, its blocking read from the instance name), ``spdnn_general_dense``
    (every output summed over its inputs in ascending order), ``spdnn_general_count``, and
    ``layer.cu``'s ``spdnn_densify``, ``spdnn_compact`` and ``spdnn_copy_count``. Rows a
    kernel compacts are placed in row order (the GPU's order depends on its atomics).
    Buffers come uninitialized (NaN activations, -7 ids): a read of something nothing wrote
    shows in the results.

    Parameters
    ----------
    names : dict
        :func:`spdnn.engines.cuda.general.general_instances`.
    """

    graphs = False
    sms = 4

    def __init__(self, names: dict[str, dict[str, str]]):
        self.roles = {role: name for roles in names.values() for role, name in roles.items()}
        self.launches: list[str] = []

    def allow_smem(self, role: str, smem: int) -> None:
        assert role in self.roles, role

    def blocks_per_sm(self, role: str, threads: int, smem: int) -> int:
        return 2

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return np.array(a, copy=True)

    def empty(self, size: int, dtype) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.full(max(int(size), 1), np.nan if dt.kind == "f" else -7, dtype=dt)

    def memset0(self, a: np.ndarray) -> None:
        a[...] = 0

    def ptr(self, a: np.ndarray) -> int:
        return int(a.ctypes.data)

    def context(self):
        return contextlib.nullcontext()

    def to_host(self, arrays: list) -> list[np.ndarray]:
        return [np.array(a, copy=True) for a in arrays]

    def synchronize(self) -> None:
        pass

    def launch(self, role: str, grid: int, block: int, args: dict, smem: int = 0, *, what: str = "") -> None:
        name = self.roles[role]
        base, targs = template_arguments(name)
        self.launches.append(base)
        bound = bind_arguments(name, args)
        getattr(self, "_" + base)(targs, **dict(zip((f.name for f in kernel_args(name).fields), bound)))

    # -- the kernels (arguments as the CUDA ones) ------------------------------------------
    @staticmethod
    def _finish(acc, bias, dense_bias, relu, cap):
        """general_epilogue of every output, and which rows live."""
        t_ = acc.dtype.type
        z = acc + bias if dense_bias else np.where(acc != 0, acc + bias, acc)
        if relu:
            z = np.where(z > 0, np.minimum(z, t_(cap)), t_(0))
        return z, (z != 0).any(axis=1)

    def _spdnn_general_sparse(self, targs, y_in, y_out, ids_in, ids_out, mult_in, mult_out, count_in, count_out,
                              samples_out, flags, entry_idx, entry_val, warp_slices, bias, scalar, dense_bias, relu,
                              cap, n_in, n_out, chunk, nchunks, slices):
        t = y_in.dtype.type                                   # T (checked against the instance's by the binding)
        mode, threads, rows_per_tile, cols_per_thread = (int(a) for a in targs[2:6])
        compact, pipelined = targs[6] == "true", targs[7] == "true"
        cfg = KernelConfig(threads=threads, cols_per_thread=cols_per_thread, rows_per_tile=rows_per_tile,
                           chunk=int(chunk), pipelined=pipelined)
        assert not pipelined or nchunks == 1          # the kernel sums chunk 0 only
        assert cfg.nchunks(int(n_in)) == nchunks and cfg.slices(int(n_out)) == slices
        assert not compact or slices == 1
        count = int(count_in[0])
        y = y_in[:count * n_in].reshape(count, n_in)
        values = entry_val.astype(t) if mode == VALUE_ARRAY else None
        acc = packed_sums(y, entry_idx, values, warp_slices, cfg, int(n_in), int(slices), mode=mode, scalar=t(scalar))
        z, alive = self._finish(acc[:, :n_out], bias, dense_bias, relu, cap)
        if compact:
            live = np.flatnonzero(alive)
            first = int(count_out[0])
            dst = first + np.arange(live.size)
            out = y_out[:(first + live.size) * n_out].reshape(-1, n_out)
            out[dst] = z[live]
            ids_out[dst] = ids_in[live]
            mult_out[dst] = mult_in[live]
            count_out[0] += live.size
            samples_out[0] += int(mult_in[live].sum())
        else:
            y_out[:count * n_out].reshape(count, n_out)[...] = z
            flags[:count][alive] = 1

    def _spdnn_general_dense(self, targs, y_in, y_out, count_in, flags, w, bias, dense_bias, relu, cap, n_in, n_out):
        count = int(count_in[0])
        y = y_in[:count * n_in].reshape(count, n_in)
        acc = np.zeros((count, int(n_out)), dtype=y.dtype)
        for i in range(int(n_in)):                           # ascending inputs, one rounding each step
            acc = acc + y[:, i:i + 1] * w[i]
        z, alive = self._finish(acc, bias, dense_bias, relu, cap)
        y_out[:count * n_out].reshape(count, n_out)[...] = z
        flags[:count][alive] = 1

    def _spdnn_general_count(self, targs, flags, count_in, count_out):
        count_out[0] += int(flags[:int(count_in[0])].sum())

    def _spdnn_densify(self, targs, indptr, indices, data, y, rows, n):
        y[:rows * n] = 0
        r = np.repeat(np.arange(int(rows)), np.diff(indptr[:rows + 1]))
        y[r * n + indices[:indptr[rows]]] = data[:indptr[rows]]

    def _spdnn_compact(self, targs, src, dst, ids_in, ids_out, mult_in, mult_out, flags, count_in, count_out,
                       samples_out, n, rows_lo, rows_hi):
        count = int(count_in[0])
        if not rows_lo <= count <= rows_hi:
            return
        live = np.flatnonzero(flags[:count])
        first = int(count_out[0])
        to = first + np.arange(live.size)
        dst[:(first + live.size) * n].reshape(-1, n)[to] = src[:count * n].reshape(count, n)[live]
        ids_out[to] = ids_in[live]
        mult_out[to] = mult_in[live]
        count_out[0] += live.size
        samples_out[0] += int(mult_in[live].sum())
        flags[live] = 0

    def _spdnn_copy_count(self, targs, src, dst):
        dst[0] = src[0]
