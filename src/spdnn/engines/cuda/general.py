"""The CUDA engine's path for general networks (every network not of the challenge's form).

:class:`~spdnn.engines.cuda.engine.CudaEngine` hands a network here when
``network.challenge_form`` is False; the challenge's networks keep their own path
(stationary tiles, merging, one graph) untouched. Semantics: :mod:`spdnn.network`; kernels:
``kernels/general.cu`` (and ``spdnn_densify``, ``spdnn_compact``, ``spdnn_copy_count`` of
``kernels/layer.cu``).

One launch per layer, any widths:

* a **sparse** layer runs ``spdnn_general_sparse``: the per-layer gather of ``layer.cu`` with
  the inputs (n_in) cut into chunks and the outputs (n_out) into slices
  (:func:`.layout.choose_general_config`, :func:`.layout.pack_layer`), per-entry values in the
  narrowest exact type, or one value a layer without value loads;
* a **dense** layer runs ``spdnn_general_dense``, a tiled product over the dense weights;
* both end with the layer's bias rule and activation, and sum every output over its inputs
  in ascending order, without FMA in fp64: fp64 equals the reference bit for bit;
* rows whose values are all zero are dropped only after layer k with
  ``network.prunes_after(k + 1)`` (a positive dense bias revives zero rows): by the sparse
  kernel itself when one block owns whole output rows, else by ``spdnn_compact`` after it;
  other layers keep every row in place and only count the live ones (``spdnn_general_count``);
* nothing is merged (trained networks rarely converge; merging stays a challenge-path tool);
* counts stay on the device, so a whole :meth:`GeneralPath.infer` is one CUDA graph launch;
* weights are all resident (no streaming); samples run in batches that fit the memory budget.

:class:`GeneralPath` drives kernels through a small backend (:class:`CupyKernels` on a GPU;
tests use :class:`spdnn.engines.cuda.emulate.NumpyKernels`, a numpy replay of every kernel,
so the orchestration runs on the CPU).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ...errors import DeviceMemoryError, SpdnnError
from ...network import Network
from ..base import check_weights
from .kernel_args import row_arguments
from .layout import (VALUE_ARRAY, VALUE_SCALAR, KernelConfig, choose_general_config, entry_values,
                     narrowest_exact_dtype, pack_layer)

__all__ = ["GeneralLayer", "plan_general", "general_instances", "GeneralPath", "CupyKernels", "DENSE_TILE",
           "SUPPORT_KERNELS"]

#: Rows x outputs of one item of ``spdnn_general_dense`` (its BM, BN), and its threads.
DENSE_TILE = (64, 64)
DENSE_THREADS = 256

#: The kernels of ``layer.cu`` the general path uses: role -> template (``{t}``: activation type).
SUPPORT_KERNELS = {"densify": "spdnn_densify<{t}>", "compact": "spdnn_compact<{t}>", "copy": "spdnn_copy_count"}

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double", np.dtype(np.float16): "unsigned short"}
_ANY_ROWS = np.int32(np.iinfo(np.int32).max)


@dataclass
class GeneralLayer:
    """One layer as the general path runs it (host arrays; :meth:`GeneralPath` uploads them).

    Attributes
    ----------
    n_in, n_out : int
        Widths in and out.
    dense : bool
        Dense weights (``weights``, (n_in, n_out) in the activation type), else the packed
        sparse layout (``idx``, ``values``, ``meta`` of ``config``).
    config : KernelConfig or None
        Blocking of a sparse layer.
    value_mode : int
        :data:`.layout.VALUE_SCALAR` (one value, ``scalar``) or :data:`.layout.VALUE_ARRAY`.
    value_dtype : numpy dtype
        Stored type of per-entry values (VALUE_ARRAY), else the activation type.
    bias : ndarray (n_out,)
        In the activation type.
    dense_bias, relu : bool
        The bias rule is 'dense'; the activation is ReLU (else identity).
    cap : float
        ReLU cap (inf: none or identity).
    prune : bool
        Rows that are zero after this layer may be dropped (``network.prunes_after(k + 1)``).
    compact : bool
        The layer kernel drops them itself (sparse, ``prune``, one slice of outputs).
    """

    n_in: int
    n_out: int
    dense: bool
    bias: np.ndarray
    dense_bias: bool
    relu: bool
    cap: float
    prune: bool
    config: KernelConfig | None = None
    value_mode: int = VALUE_ARRAY
    value_dtype: np.dtype | None = None
    scalar: float = 0.0
    idx: np.ndarray | None = None
    values: np.ndarray | None = None
    meta: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def compact(self) -> bool:
        return (not self.dense) and self.prune and self.config.slices(self.n_out) == 1

    @property
    def weight_bytes(self) -> int:
        """Device bytes of the layer's weights (and bias)."""
        own = self.bias.nbytes
        if self.dense:
            return own + self.weights.nbytes
        return own + self.idx.nbytes + self.meta.nbytes + (0 if self.values is None else self.values.nbytes)

    def kernel(self, dtype) -> str:
        """The template instance of ``general.cu`` that runs this layer."""
        t = _CTYPES[np.dtype(dtype)]
        if self.dense:
            return f"spdnn_general_dense<{t}>"
        c = self.config
        v = _CTYPES[np.dtype(self.value_dtype)]
        return (f"spdnn_general_sparse<{t}, {v}, {self.value_mode}, {c.threads}, {c.rows_per_tile}, "
                f"{c.cols_per_thread}, {'true' if self.compact else 'false'}, {'true' if c.pipelined else 'false'}>")

    def smem_bytes(self, dtype) -> int:
        """Dynamic shared memory of one block (sparse: the staged inputs; dense: static only)."""
        return 0 if self.dense else self.config.staging_bytes(np.dtype(dtype).itemsize)


def plan_general(network: Network, dtype, *, smem_limit: int = 227 * 1024, blocking: dict | None = None
                 ) -> list[GeneralLayer]:
    """Every layer of ``network`` as the general path runs it, in ``dtype`` (float32 or float64).

    Parameters
    ----------
    network : Network
    dtype : numpy dtype
        Activation type. Weights are rounded to it (as the reference's ``astype``), then
        stored in the narrowest type that holds them exactly.
    smem_limit : int
        Dynamic shared memory a block may use.
    blocking : dict, optional
        ``threads``, ``cols_per_thread``, ``rows_per_tile``, ``chunk``, ``pipelined``, ``bank_order``
        forced on every sparse layer (benchmarks; see :func:`.layout.choose_general_config`).
    """
    dt = np.dtype(dtype)
    widths = network.widths
    out = []
    for k in range(network.depth):
        rule = network.rule(k)
        n_in, n_out = int(widths[k]), int(widths[k + 1])
        common = dict(n_in=n_in, n_out=n_out, bias=np.ascontiguousarray(network.bias[k], dtype=dt),
                      dense_bias=rule.bias_rule == "dense", relu=rule.activation == "relu",
                      cap=float(rule.cap) if rule.activation == "relu" else float("inf"),
                      prune=network.prunes_after(k + 1))
        w = check_weights(network.layers[k], dt, k + 1)     # fp32: no weight beyond its range
        if isinstance(w, np.ndarray):
            out.append(GeneralLayer(dense=True, weights=np.ascontiguousarray(w, dtype=dt), value_dtype=dt, **common))
            continue
        cfg = choose_general_config(n_in, n_out, dt.itemsize, smem_limit=smem_limit, **(blocking or {}))
        w = sp.csr_matrix(w, dtype=dt).astype(np.float64)     # the weights the reference multiplies by
        p = pack_layer(w, cfg, itemsize=dt.itemsize)
        real = p.values[p.idx != cfg.chunk]
        if p.uniform_value is not None:
            out.append(GeneralLayer(dense=False, config=cfg, value_mode=VALUE_SCALAR, value_dtype=dt,
                                    scalar=p.uniform_value, idx=p.idx, meta=p.meta, **common))
            continue
        vdt = narrowest_exact_dtype(np.unique(real), dt)
        out.append(GeneralLayer(dense=False, config=cfg, value_mode=VALUE_ARRAY, value_dtype=vdt,
                                idx=p.idx, values=entry_values(p, cfg.chunk).astype(vdt), meta=p.meta, **common))
    return out


def general_instances(layers: list[GeneralLayer], dtype) -> dict[str, dict[str, str]]:
    """{file: {role: template instance}} the general path compiles for ``layers``: each layer's
    kernel (its role is its instance name) and 'count' in ``general.cu``; 'densify', 'compact'
    and 'copy' in ``layer.cu``."""
    t = _CTYPES[np.dtype(dtype)]
    general = {name: name for name in dict.fromkeys(layer.kernel(dtype) for layer in layers)}
    general["count"] = "spdnn_general_count"
    return {"general.cu": general, "layer.cu": {role: name.format(t=t) for role, name in SUPPORT_KERNELS.items()}}


class CupyKernels:
    """The GPU backend of :class:`GeneralPath`: CuPy arrays, compiled kernels, graphs.

    Parameters
    ----------
    engine : CudaEngine
        Gives the device, the debug flag and the kernel-compilation helpers.
    names : dict
        :func:`general_instances`.
    """

    graphs = True

    def __init__(self, engine, names: dict[str, dict[str, str]]):
        from .._cupy import cupy
        from .compilation import blocks_per_sm, compiled_kernels

        self.cp = cp = cupy(engine.name)
        self.xp = cp
        self.engine = engine
        self.dev = engine._device
        self.k = {}
        for filename, roles in names.items():
            if filename == "general.cu":      # one module an instance: networks share them
                for role, name in roles.items():
                    self.k.update(compiled_kernels(self.dev.id, filename, {role: name}))
            else:
                self.k.update(compiled_kernels(self.dev.id, filename, roles))
        self.sms = int(self.dev.attributes["MultiProcessorCount"])
        self._occupancy = lambda role, threads, smem: blocks_per_sm(self.k[role], threads, smem, self.dev)
        self.graphs = not engine.debug

    def allow_smem(self, role: str, smem: int) -> None:
        """Let ``role`` launch with ``smem`` bytes of dynamic shared memory (the most it uses)."""
        if smem > 48 * 1024:
            self.k[role].fn.max_dynamic_shared_size_bytes = int(smem)

    def blocks_per_sm(self, role: str, threads: int, smem: int) -> int:
        return self._occupancy(role, threads, smem)

    def asarray(self, a: np.ndarray):
        return self.cp.asarray(a)

    def empty(self, size: int, dtype):
        return self.cp.empty(max(int(size), 1), dtype=dtype)

    def memset0(self, a) -> None:
        stream = self.cp.cuda.get_current_stream()
        self.cp.cuda.runtime.memsetAsync(a.data.ptr, 0, a.nbytes, stream.ptr)

    def launch(self, role: str, grid: int, block: int, args: dict, smem: int = 0, *, what: str = "") -> None:
        """Queue kernel ``role`` with its arguments by name (checked: :mod:`.kernel_args`)."""
        self.k[role].launch(grid, block, args, smem, debug_device=self.dev if self.engine.debug else None, what=what)

    def capture(self, enqueue):
        """A graph of what ``enqueue()`` queues, and the stream to launch it on."""
        stream = self.cp.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            enqueue()
            graph = stream.end_capture()
        return graph, stream

    def replay(self, captured) -> None:
        graph, stream = captured
        graph.launch(stream)

    def ptr(self, a) -> int:
        return int(a.data.ptr)

    def context(self):
        return self.dev

    def to_host(self, arrays: list) -> list[np.ndarray]:
        """Host copies of ``arrays`` after everything queued (one synchronization)."""
        self.dev.synchronize()             # graphs run on their own stream
        return [self.cp.asnumpy(a) for a in arrays]

    def synchronize(self) -> None:
        self.dev.synchronize()


class GeneralPath:
    """Runs a general network on a backend (see the module docstring).

    Life cycle as an engine's: :meth:`load` (features, the rows held), :meth:`infer` (layers
    start..stop-1), :meth:`activations`; :meth:`max_batch` says how many samples fit.

    Parameters
    ----------
    network : Network
    dtype : numpy dtype
    backend : CupyKernels or a replay with the same methods
    layers : list of GeneralLayer
        :func:`plan_general` of ``network``.
    budget_bytes : callable() -> int
        Device bytes the path may use now (activations and features).
    weights_count : bool
        Whether the uploaded weights count against ``budget_bytes`` (a fixed cap) or are
        already out of it (free memory).
    poison : float, optional
        Fill the activation buffers with this at every load (tests).
    batch_samples : int, optional
        Most samples a batch holds.
    label : str
        The device's name (reported in ``extra``).
    """

    def __init__(self, network: Network, dtype, backend, layers: list[GeneralLayer], *, budget_bytes,
                 weights_count: bool = False, poison: float | None = None, batch_samples: int | None = None,
                 label: str = ""):
        self.network, self.dtype, self.b, self.layers = network, np.dtype(dtype), backend, layers
        self.budget_bytes, self.weights_count, self.poison = budget_bytes, weights_count, poison
        self.batch_samples, self.label = batch_samples, label
        self.width = max(network.widths)
        self.weight_bytes = sum(layer.weight_bytes for layer in layers)
        room = budget_bytes() - (self.weight_bytes if weights_count else 0)
        if room < 64 * self.bytes_per_sample() or (not weights_count and self.weight_bytes > room):
            from ...errors import format_bytes

            raise DeviceMemoryError(f"cuda engine: the weights ({format_bytes(self.weight_bytes)}) and 64 samples "
                                    f"do not fit the device memory budget ({format_bytes(budget_bytes())}); the "
                                    f"general path keeps every layer on the device")
        xp = backend
        self._dev = []
        for layer in layers:
            if layer.dense:
                self._dev.append({"w": xp.asarray(layer.weights), "bias": xp.asarray(layer.bias)})
            else:
                vals = layer.values if layer.values is not None else np.zeros(8, layer.value_dtype)
                self._dev.append({"idx": xp.asarray(layer.idx if layer.idx.size else np.zeros(8, np.uint16)),
                                  "vals": xp.asarray(vals), "meta": xp.asarray(np.ascontiguousarray(layer.meta)),
                                  "bias": xp.asarray(layer.bias)})
        most: dict[str, int] = {}
        for layer in layers:
            role = layer.kernel(self.dtype)
            most[role] = max(most.get(role, 0), layer.smem_bytes(self.dtype))
        for role, smem in most.items():
            backend.allow_smem(role, smem)
        self._capacity = 0
        self._graphs: dict = {}
        self._occupancy: dict = {}
        self._loaded = 0
        self._rows = 0
        self._ids_host = np.zeros(0, np.int64)
        self._live_host: np.ndarray | None = None
        self._row_width = network.inputs

    # -- memory ---------------------------------------------------------------------------
    def bytes_per_sample(self, features: sp.csr_matrix | None = None) -> int:
        """Device bytes of one sample: two activation rows of the widest layer, its ids,
        weights and flag, and its share of the features uploaded."""
        per = 2 * self.width * self.dtype.itemsize + 4 * 5
        if features is not None and features.shape[0]:
            per += int(np.ceil(features.nnz / features.shape[0])) * (4 + self.dtype.itemsize) + 8
        return per

    def max_batch(self, features: sp.csr_matrix | None = None) -> int:
        """Most samples one load may hold under the budget."""
        budget = self.budget_bytes() - (self.weight_bytes if self.weights_count else 0)
        if not self.weights_count:               # buffers held now are freed before a larger allocation
            budget += self._capacity * self.bytes_per_sample()
        most = int(max(budget // self.bytes_per_sample(features), 0))
        return most if self.batch_samples is None else min(most, self.batch_samples)

    def batch_size(self, features: sp.csr_matrix) -> int:
        """Samples :meth:`Engine.run` loads at once."""
        total = features.shape[0]
        batch = min(total, self.max_batch(features)) if total else 1
        if batch < 1:
            raise DeviceMemoryError("cuda engine: not even one sample fits the device memory budget")
        return batch

    def _allocate(self, rows: int) -> None:
        xp, cap = self.b, max(int(rows), 1)
        self._y = self._ids = self._wts = None
        self._graphs = {}
        self._y = [xp.empty(cap * self.width, self.dtype) for _ in range(2)]
        self._ids = [xp.empty(cap, np.int32) for _ in range(2)]
        self._wts = [xp.empty(cap, np.int32) for _ in range(2)]
        self._flags = xp.empty(cap, np.int32)
        depth = self.network.depth
        # Counters: rows[L+1] (rows held after each layer), surv[L+1] (rows alive after it), cur.
        self._off = {"rows": 0, "surv": depth + 1, "cur": 2 * depth + 2}
        self._stats = xp.empty(2 * depth + 3, np.int32)
        self._capacity = cap

    def _stat(self, name: str, i: int = 0):
        j = self._off[name] + i
        return self._stats[j:j + 1]

    # -- load ---------------------------------------------------------------------------
    def load(self, features: sp.csr_matrix) -> None:
        """Hold the samples of ``features`` (CSR, samples x n_k: the inputs, or the activations
        of a later layer for a segment that starts there): the nonzero rows where the network
        lets zero rows go (``prunes_after(0)``, which holds for every later layer too), else
        every row."""
        with self.b.context():
            self._load(features)

    def _load(self, features: sp.csr_matrix) -> None:
        f = features
        loaded = f.shape[0]
        if self.network.prunes_after(0):
            rows = np.flatnonzero(np.diff(f.indptr) > 0).astype(np.int32)
        else:
            rows = np.arange(loaded, dtype=np.int32)
        live = f[rows] if rows.size != loaded else f
        m = int(rows.size)
        if m > self._capacity or self._capacity == 0:
            fit = self.max_batch(live)
            if m > fit:
                raise DeviceMemoryError(f"cuda engine: {m} samples do not fit the device memory budget (at most "
                                        f"{fit}); use run() (which batches) or pass batch_samples=")
            self._allocate(m)
        xp, n = self.b, int(f.shape[1])               # the rows' width: n_0, or n_k mid-network
        if self.poison is not None:
            for y in self._y:
                y.fill(self.poison)
        self._cur = 0
        self.b.memset0(self._stats)
        self.b.memset0(self._flags)
        if m:
            indptr = xp.asarray(live.indptr.astype(np.int64))
            indices = xp.asarray(live.indices.astype(np.int32) if live.nnz else np.zeros(1, np.int32))
            data = xp.asarray(live.data.astype(self.dtype) if live.nnz else np.zeros(1, self.dtype))
            self.b.launch("densify", min(m, 65535), 256,
                          {"indptr": indptr, "indices": indices, "data": data, "y": self._y[0], "rows": m, "n": n},
                          what="load")
            self._ids[0][:m] = xp.asarray(rows)
            self._wts[0][:m] = 1
        self._stat("cur")[...] = m
        self.b.synchronize()
        self._loaded, self._rows, self._row_width = loaded, m, n
        self._ids_host = rows.astype(np.int64)
        nonzero = np.diff(live.indptr) > 0
        self._live_host = None if nonzero.all() else nonzero

    # -- infer --------------------------------------------------------------------------
    def _grid(self, role: str, items: int, threads: int, smem: int) -> int:
        key = (role, threads, smem)
        if key not in self._occupancy:
            self._occupancy[key] = self.b.blocks_per_sm(role, threads, smem)
        return max(1, min(items, self.b.sms * self._occupancy[key]))

    def _enqueue_layer(self, k: int, src):
        """Queue layer k on the rows counted in ``src``; returns the counter of the rows after it."""
        layer, dev, b = self.layers[k], self._dev[k], self.b
        cur, nxt = self._cur, 1 - self._cur
        rows_out, surv_out = self._stat("rows", k + 1), self._stat("surv", k + 1)
        rule = {"dense_bias": int(layer.dense_bias), "relu": int(layer.relu), "cap": layer.cap,
                "n_in": layer.n_in, "n_out": layer.n_out}
        cap = self._capacity
        role, what = layer.kernel(self.dtype), f"layer {k + 1}"
        if layer.dense:
            b.memset0(self._flags)
            bm, bn = DENSE_TILE
            items = -(-cap // bm) * -(-layer.n_out // bn)
            b.launch(role, self._grid(role, items, DENSE_THREADS, 0), DENSE_THREADS,
                     {"y_in": self._y[cur], "y_out": self._y[nxt], "count_in": src, "flags": self._flags,
                      "w": dev["w"], "bias": dev["bias"], **rule}, what=what)
        else:
            c = layer.config
            if not layer.compact:
                b.memset0(self._flags)
            smem = layer.smem_bytes(self.dtype)
            slices = c.slices(layer.n_out)
            items = -(-cap // c.rows_per_tile) * slices
            b.launch(role, self._grid(role, items, c.threads, smem), c.threads,
                     {**row_arguments(cur, self._ids, self._wts, self._y), "count_in": src, "count_out": rows_out,
                      "samples_out": surv_out, "flags": self._flags, "entry_idx": dev["idx"], "entry_val": dev["vals"],
                      "warp_slices": dev["meta"], "bias": dev["bias"], "scalar": layer.scalar, **rule,
                      "chunk": c.chunk, "nchunks": c.nchunks(layer.n_in), "slices": slices}, smem, what=what)
            if layer.compact:              # the kernel placed the live rows and their ids in buffer nxt
                self._cur = nxt
                return rows_out
        # In place: row p of the output is row p of buffer nxt, its id still in ids[cur].
        if layer.prune:
            # The live rows move back into buffer cur, their ids and weights cur -> nxt: the
            # id and weight buffers swap roles.
            b.launch("compact", self._grid("compact", cap, 256, 0), 256,
                     {"src": self._y[nxt], "dst": self._y[cur], **row_arguments(cur, self._ids, self._wts),
                      "flags": self._flags, "count_in": src, "count_out": rows_out, "samples_out": surv_out,
                      "n": layer.n_out, "rows_lo": 0, "rows_hi": _ANY_ROWS}, what=what + ", compaction")
        else:
            b.launch("count", self._grid("count", -(-cap // 256), 256, 0), 256,
                     {"flags": self._flags, "count_in": src, "count_out": surv_out}, what=what + ", count")
            b.launch("copy", 1, 32, {"src": src, "dst": rows_out}, what=what + ", rows")
            self._cur = nxt                # the rows moved to buffer nxt, their ids stayed
        self._ids[cur], self._ids[nxt] = self._ids[nxt], self._ids[cur]
        self._wts[cur], self._wts[nxt] = self._wts[nxt], self._wts[cur]
        return rows_out

    def _enqueue_run(self, start: int, stop: int) -> None:
        """Queue layers start..stop-1 (capturable): clear their counters, run, store the count."""
        stats = self._stats
        for name in ("rows", "surv"):
            j = self._off[name]
            self.b.memset0(stats[j + start + 1:j + stop + 1])
        src = self._stat("cur")
        for k in range(start, stop):
            src = self._enqueue_layer(k, src)
        self.b.launch("copy", 1, 32, {"src": src, "dst": self._stat("cur")}, what="count")

    def _state(self):
        return self._cur, list(self._ids), list(self._wts)

    def _set_state(self, state) -> None:
        self._cur, self._ids, self._wts = state[0], list(state[1]), list(state[2])

    def infer(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Run layers start..stop-1; (sorted 0-based ids of the live samples, survivors per
        layer, extra)."""
        with self.b.context():
            return self._infer(start, stop)

    def _infer(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, dict]:
        b, before = self.b, self._rows
        if stop > start:
            if start > 0 and self._row_width != self.layers[start].n_in:
                raise SpdnnError(f"cuda engine: layer {start + 1} takes rows of {self.layers[start].n_in} values, "
                                 f"the rows held have {self._row_width}")
            if b.graphs:
                key = (start, stop, self._cur, tuple(b.ptr(a) for a in (*self._ids, *self._wts)))
                if key not in self._graphs:
                    saved = self._state()              # capturing advances the state: put it back
                    captured = b.capture(lambda: self._enqueue_run(start, stop))
                    self._graphs[key] = (captured, self._state())
                    self._set_state(saved)
                captured, after = self._graphs[key]
                b.replay(captured)
                self._set_state(after)
            else:
                self._enqueue_run(start, stop)
        last = self.layers[stop - 1] if stop > start else None
        keep_flags = last is not None and not last.prune
        wanted = [self._stats, self._ids[self._cur]] + ([self._flags] if keep_flags else [])
        got = b.to_host(wanted)
        stats = got[0].astype(np.int64)
        rows = int(stats[self._off["cur"]])
        ids = got[1][:rows].astype(np.int64)
        if last is not None:
            self._live_host = (got[2][:rows] != 0) if keep_flags else None
            self._row_width = last.n_out
        self._rows, self._ids_host = rows, ids
        survivors = stats[self._off["surv"] + start + 1:self._off["surv"] + stop + 1]
        entering = np.concatenate(([before],
                                   stats[self._off["rows"] + start + 1:self._off["rows"] + stop]))[:stop - start]
        alive = ids if self._live_host is None else ids[self._live_host]
        extra = {"device": self.label, "path": "general", "merge": False, "graph": bool(b.graphs and stop > start),
                 "rows_computed": [int(r) for r in entering],
                 "kernels": sorted({layer.kernel(self.dtype) for layer in self.layers[start:stop]})}
        return np.sort(alive), survivors.astype(np.int64), extra

    def activations(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """(sorted 0-based ids of the live samples, their rows as float64 CSR)."""
        rows, width = self._rows, self._row_width
        with self.b.context():
            y = self.b.to_host([self._y[self._cur][:rows * width]])[0].reshape(rows, width) if rows else \
                np.zeros((0, width), self.dtype)
        ids = self._ids_host
        if self._live_host is not None:
            ids, y = ids[self._live_host], y[self._live_host]
        order = np.argsort(ids, kind="stable")
        return ids[order], sp.csr_matrix(y[order].astype(np.float64))
