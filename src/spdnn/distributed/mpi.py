"""Inference over MPI ranks: partitioned samples, replicated weights, rebalanced survivors.

How a run maps onto ranks (``mpiexec -n P``)::

    rank r      owns chunks of 8 sample rows dealt in a seeded random order (rank_ranges;
                or one contiguous block), and reads only those rows (FeatureSource), so
                no rank holds all of them
                builds/holds the whole network (weights are replicated)
                uses GPU local_rank % count (cuda engines), or numba threads / local ranks
    layers      run in segments; at each boundary the ranks allgather their survivor
                counts and, when BalancePolicy says it pays, move surviving rows
                (activations + global ids) from loaded to idle ranks
    end         categories (global 1-based ids) and survivors per layer are combined on
                every rank; the time reported is the slowest rank's; outputs asked for
                (activations, predictions, top-k) are gathered on rank 0 in sample order

mpi4py is imported only when the process was started by an MPI launcher (the launcher's
environment variables are present): a plain ``python`` run never initialises MPI.

Features come as one CSR matrix (every rank slices its own rows; fine when each rank
can afford to read it all) or as a FeatureSource (:mod:`spdnn.formats.sources`: an
object with ``samples``, ``neurons`` and ``rows(start, stop)``, such as
:class:`~spdnn.formats.sources.NpzSource` over a features ``.npz``), so that each rank
reads only its own rows.
"""
from __future__ import annotations

import functools
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..engines import Engine, InferenceResult, get_engine, resolve_engine_name
from ..engines.base import _Outputs, check_outputs
from ..errors import DeviceMemoryError, MemoryLimitError, OptionError, SpdnnError
from ..formats.sources import (CsrSource, FeatureSource, HeadSource, NpzSource, as_source, read_ranges,
                               save_npz_source)
from ..network import Network
from .balance import BalancePolicy, imbalance, rank_ranges, segment_ends

__all__ = ["World", "world", "world_of", "bind_resources", "RELOAD_COST_GUESS", "FeatureSource", "CsrSource",
           "NpzSource", "HeadSource", "save_npz_source", "as_source", "run_distributed", "LAUNCHER_ENV"]

#: Environment variables by which MPI launchers (MPICH/Hydra, Open MPI, PMIx, Slurm
#: with PMI, MVAPICH, Intel MPI) mark the processes they start.
LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE", "I_MPI_HYDRA_HOST_FILE")

_TAG = 4242  # message tag of row transfers


# ----------------------------------------------------------------------------- world


@dataclass(frozen=True)
class World:
    """Where this process sits in an MPI run.

    Attributes
    ----------
    comm : mpi4py.MPI.Intracomm or None
        None in a plain (non-MPI) run.
    rank, size : int
        0-based rank and number of ranks (0 and 1 without MPI).
    local_rank, local_size : int
        Rank among, and number of, the ranks on this host (GPU ``local_rank % count``).
    """

    comm: Any
    rank: int
    size: int
    local_rank: int
    local_size: int = 1


def _launched() -> bool:
    return any(name in os.environ for name in LAUNCHER_ENV)


def world_of(comm) -> World:
    """The :class:`World` of an existing mpi4py communicator (a collective call on ``comm``)."""
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return World(comm=comm, rank=comm.Get_rank(), size=comm.Get_size(), local_rank=local.Get_rank(),
                     local_size=local.Get_size())
    finally:
        local.Free()


@functools.lru_cache(maxsize=1)
def world() -> World:
    """This process's :class:`World` (computed once).

    Without an MPI launcher in the environment: ``World(None, 0, 1, 0, 1)`` and mpi4py is
    not imported. Under a launcher: ``MPI.COMM_WORLD`` (importing mpi4py initialises MPI).
    If mpi4py is missing under a launcher of several processes, a RuntimeWarning says
    that every process will run the whole job alone.
    """
    if not _launched():
        return World(comm=None, rank=0, size=1, local_rank=0, local_size=1)
    try:
        from mpi4py import MPI
    except ImportError as exc:
        size = os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "?"
        if size not in ("1", "?"):
            warnings.warn(f"launched by MPI ({size} processes) but mpi4py cannot be imported ({exc}): every "
                          f"process runs alone; install with: pip install 'spdnn[mpi]'", RuntimeWarning,
                          stacklevel=2)
        return World(comm=None, rank=0, size=1, local_rank=0, local_size=1)
    return world_of(MPI.COMM_WORLD)


# ------------------------------------------------------------------------- the runner


class _Collectives:
    """The few collective operations the runner needs; trivial without a communicator."""

    def __init__(self, comm):
        self.comm = comm
        self._pkl5 = None

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def allgather(self, obj) -> list:
        return [obj] if self.comm is None else self.comm.allgather(obj)

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (rank order), None elsewhere; no size limit (pickle 5)."""
        return [obj] if self.comm is None else self.p2p.gather(obj, root=0)

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        if self.comm is None:
            return array
        from mpi4py import MPI

        out = np.empty_like(array)
        self.comm.Allreduce(array, out, op=MPI.SUM)
        return out

    @property
    def p2p(self):
        """A pickle-5 view of the communicator: large numpy payloads, no 2 GB limit."""
        if self._pkl5 is None:
            from mpi4py.util import pkl5

            self._pkl5 = pkl5.Intracomm(self.comm)
        return self._pkl5


#: Guess of a row's activations()/exchange/load() round trip, in layers of computing that
#: row, before the first rebalance measures it. Device engines hold dense rows and move
#: them over PCIe and through the host: ~4N bytes each way against 32N multiply-adds.
RELOAD_COST_GUESS = {"cuda": 1000.0, "cusparse": 1000.0}


def bind_resources(name: str, here: World | None = None) -> dict:
    """Give this rank its GPU or its share of CPU threads, before its engine is made.

    Parameters
    ----------
    name : str
        Engine name (resolved, not 'auto'). cuda engines: make GPU
        ``local_rank % device count`` current. cpu: ``numba.set_num_threads`` to
        ``NUMBA_NUM_THREADS // local_size`` when several ranks share the host.
    here : World, optional
        Default :func:`world`.

    Returns
    -------
    dict
        What was chosen (``device`` and ``devices_visible``, or ``threads``), for reports.
    """
    here = world() if here is None else here
    if name in ("cuda", "cusparse"):
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        device = here.local_rank % count
        cupy.cuda.Device(device).use()
        return {"device": int(device), "devices_visible": int(count)}
    if name == "cpu" and here.local_size > 1:
        import numba

        threads = max(1, int(numba.config.NUMBA_NUM_THREADS) // here.local_size)
        numba.set_num_threads(threads)
        return {"threads": threads}
    return {}


def _policy(balance, engine_name: str) -> BalancePolicy | None:
    if balance == "auto":
        balance = engine_name not in RELOAD_COST_GUESS
    if balance is True:
        return BalancePolicy(reload_cost_layers=RELOAD_COST_GUESS.get(engine_name, 2.0))
    if balance is False or balance is None:
        return None
    if isinstance(balance, BalancePolicy):
        return balance
    raise OptionError(f"balance={balance!r}: expected True, False or a BalancePolicy")


def _check_ends(segment_layers, depth: int) -> list[int]:
    ends = sorted({int(k) for k in segment_layers})
    if any(not 0 < k < depth for k in ends):
        raise OptionError(f"segment_layers={list(segment_layers)}: expected layer counts in 1..{depth - 1}")
    return ends + [depth]


def _payload_bytes(piece: tuple) -> int:
    ids, m = piece
    return int(ids.nbytes + m.data.nbytes + m.indices.nbytes + m.indptr.nbytes)


class _RankRun:
    """One rank's state through the layer loop (engine, global ids, timings).

    ``held`` counts the rows the engine holds: those with a nonzero, and where zero rows
    may not be dropped (``network.prunes_after``) every row; rebalancing moves held rows.
    """

    def __init__(self, engine: Engine, ids: np.ndarray, held: int, coll: _Collectives, here: World,
                 batch_features: sp.csr_matrix | None = None, outputs: tuple = ("categories", None)):
        self.engine = engine
        self.network = engine.network
        self.batch_features = batch_features   # set when load() did not fit: one engine.run instead
        self.outputs = outputs                  # (kind, top_k) of the run
        self.batch_result = None                # engine.run's result when batched
        self.ids = ids            # global 0-based sample ids of the engine's loaded rows
        self.held = held          # rows the engine holds now on this rank
        self.coll = coll
        self.here = here
        self.busy = 0.0           # seconds inside engine.infer
        self.reload = 0.0         # seconds in activations/exchange/load
        self.bytes_sent = 0
        self.rows_sent = 0
        self.categories = np.zeros(0, dtype=np.int64)
        self.extra: dict = {}
        self.log: list[tuple[int, int, float, int]] = []   # (start, stop, busy, rows x layers)

    def segment(self, start: int, stop: int, survivors: np.ndarray) -> tuple[float, int]:
        """Run layers start..stop-1; returns (busy seconds, rows x layers computed)."""
        if self.held == 0:
            self.categories = np.zeros(0, dtype=np.int64)
            self.log.append((start, stop, 0.0, 0))
            return 0.0, 0
        if self.batch_features is not None:
            kind, top_k = self.outputs
            wanted = {} if kind == "categories" else {"outputs": kind, "top_k": top_k}
            result = self.engine.run(self.network, self.batch_features, **wanted)
            self.batch_result = result
            cats, surv, extra, busy = result.categories, result.survivors, result.extra, result.inference_seconds
        else:
            t = time.perf_counter()
            cats, surv, extra = self.engine.infer(start, stop)
            busy = time.perf_counter() - t
        self.busy += busy
        surv = np.asarray(surv, dtype=np.int64)
        survivors[start:stop] = surv
        held = [self._held_after(k, int(n)) for k, n in zip(range(start + 1, stop + 1), surv)]
        row_layers = self.held + int(sum(held[:-1]))
        self.held = held[-1]
        self.categories = self.ids[np.asarray(cats, dtype=np.int64) - 1] + 1
        self.extra = dict(extra)
        self.log.append((start, stop, busy, row_layers))
        return busy, row_layers

    def _held_after(self, k: int, nonzero: int) -> int:
        """Rows held after layer k-1 when ``nonzero`` of them have a nonzero: those, or every
        row loaded where zero rows may not be dropped (then none was ever dropped)."""
        return nonzero if self.network.prunes_after(k) else len(self.ids)

    def held_rows(self, layer: int) -> tuple[np.ndarray, sp.csr_matrix]:
        """(global 0-based ids, activations CSR (rows, n_layer)) of the rows held after
        ``layer`` layers, in the engine's order; zero rows included where they may not be dropped."""
        width = self.network.widths[layer]
        if not self.held:
            return np.zeros(0, dtype=np.int64), sp.csr_matrix((0, width))
        rows0, acts = self.engine.activations()
        rows0 = np.asarray(rows0, dtype=np.int64)
        acts = sp.csr_matrix(acts)
        if self.network.prunes_after(layer):
            return self.ids[rows0], acts
        # every loaded row is still held (nothing was dropped): the zero ones too
        counts = np.zeros(len(self.ids), dtype=np.int64)
        counts[rows0] = np.diff(acts.indptr)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return self.ids.copy(), sp.csr_matrix((acts.data, acts.indices, indptr), shape=(len(self.ids), width))

    def local_outputs(self, dtype) -> tuple[np.ndarray, _Outputs]:
        """(global 0-based ids, their outputs) of the samples this rank finished with."""
        kind, top_k = self.outputs
        width = self.network.outputs
        r = self.batch_result
        if r is not None:                       # engine.run over this rank's share, in self.ids order
            part = _Outputs(kind, top_k, len(self.ids), width, dtype)
            part.predictions, part.dense = r.predictions, r.outputs
            part.top_indices, part.top_values = r.top_indices, r.top_values
            return self.ids, part
        ids, acts = self.held_rows(self.network.depth)
        part = _Outputs(kind, top_k, len(ids), width, dtype)
        part.add(np.arange(len(ids)), acts)
        return ids, part

    def exchange(self, plan, layer: int) -> tuple[float, int]:
        """Carry out this rank's part of ``plan`` after ``layer`` layers; returns (seconds,
        rows it held before)."""
        rank = self.here.rank
        sends = [t for t in plan if t.source == rank]
        recvs = [t for t in plan if t.dest == rank]
        if not sends and not recvs:
            return 0.0, 0
        t0 = time.perf_counter()
        held = self.held
        ids, acts = self.held_rows(layer)
        if len(ids) != held or acts.shape[0] != held:
            raise SpdnnError(f"rank {rank}: engine {self.engine.name!r} returned {len(ids)} rows of activations, "
                             f"its last infer reported {held} survivors")
        p2p = self.coll.p2p
        if sends:
            keep = len(ids) - sum(t.rows for t in sends)
            offset = keep
            for t in sends:
                piece = (ids[offset:offset + t.rows], acts[offset:offset + t.rows])
                p2p.send(piece, dest=t.dest, tag=_TAG)
                self.bytes_sent += _payload_bytes(piece)
                self.rows_sent += t.rows
                offset += t.rows
            ids, acts = ids[:keep], acts[:keep]
        else:
            parts_ids, parts = [ids], [acts]
            for t in recvs:
                got_ids, got = p2p.recv(source=t.source, tag=_TAG)
                parts_ids.append(np.asarray(got_ids, dtype=np.int64))
                parts.append(sp.csr_matrix(got))
            ids = np.concatenate(parts_ids)
            acts = sp.vstack(parts, format="csr")
        self.engine.load(acts)
        self.ids = ids
        self.held = len(ids)
        seconds = time.perf_counter() - t0
        self.reload += seconds
        return seconds, held


def _make_engine(engine, network: Network, precision: str, options: dict, here: World, progress) -> tuple:
    if isinstance(engine, Engine):
        bound = {}
        if engine.network is not network:
            engine.prepare(network)
        return engine, engine.name, bound
    name = resolve_engine_name(engine, network)
    bound = bind_resources(name, here)
    opts = {"precision": precision, "progress": bool(progress) and here.rank == 0, **options}
    eng = get_engine(name, network, **opts)
    eng.prepare(network)
    return eng, name, bound


def run_distributed(network: Network, features, *, engine="auto", precision: str = "fp32", balance="auto",
                    segment_layers=None, comm=None, engine_options: dict | None = None,
                    progress: bool | None = None, layout: str = "shuffled",
                    chunk_rows: int = 8, outputs: str = "categories", top_k: int | None = None) -> InferenceResult:
    """Inference with the samples partitioned over MPI ranks (a collective call).

    Every rank of ``comm`` calls it with the same network and features; every rank gets
    the same result. Without MPI (a plain run) it runs on this process alone.

    Parameters
    ----------
    network : Network
        Replicated: every rank prepares all layers. Any network of :mod:`spdnn.network`
        (rows that may not be dropped, ``network.prunes_after``, are held and moved too).
    features : sparse matrix (samples, n_0) or FeatureSource
        A matrix is sliced by each rank; a :class:`FeatureSource` lets each rank read only
        its own row ranges (``rank_ranges(samples, size, layout=...)[rank]``).
    engine : str or Engine
        Engine name ('auto' resolves on each rank), or an engine instance (already
        prepared on ``network`` to skip preparation; ``precision``/``engine_options`` are
        then ignored). cuda engines use GPU ``local_rank % device count``; the cpu engine
        gets ``NUMBA_NUM_THREADS // local ranks`` threads.
    precision : {'fp32', 'fp64'}
    balance : 'auto', bool or BalancePolicy
        Rebalance surviving rows between segments when it pays (True: the default
        :class:`~spdnn.distributed.balance.BalancePolicy`, with the first round-trip
        cost guessed from :data:`RELOAD_COST_GUESS`). False runs all layers as one
        segment unless ``segment_layers`` is given. 'auto' (default): True for host
        engines, False for the device engines of :data:`RELOAD_COST_GUESS` (measured on
        H100s, benchmarks/RESULTS.md: the shuffled split leaves them within 0.4% of
        balanced, segmenting alone costs 4-24% and a move through the host seconds).
    segment_layers : sequence of int, optional
        Segment boundaries (layer counts in 1..L-1). Default with balancing:
        :func:`~spdnn.distributed.balance.segment_ends` (2, 4, 8, ...), cut short once the
        survivors settle.
    comm : mpi4py.MPI.Intracomm, optional
        Default: :func:`world`'s (COMM_WORLD under a launcher, none in a plain run).
    engine_options : dict, optional
        Extra keyword arguments of the engine's constructor.
    progress : bool, optional
        Per-layer progress bars of rank 0's engine.
    layout : {'shuffled', 'block'}
        How samples are split (:func:`~spdnn.distributed.balance.rank_ranges`):
        'shuffled' deals chunks of ``chunk_rows`` rows in a seeded random order, which
        spreads the survivors (far from uniform along the sample order); 'block' is one
        contiguous block per rank.
    chunk_rows : int
        Rows per chunk of the 'shuffled' layout.
    outputs : {'categories', 'activations', 'predictions', 'topk'}
        What the result holds besides the categories (:meth:`spdnn.engines.Engine.run`):
        every rank sends the outputs of the samples it finished with to rank 0, which
        puts them in sample order; on the other ranks they are None. Rank 0's host memory
        for them is checked before anything runs (every rank raises
        :class:`~spdnn.errors.MemoryLimitError` when it cannot fit).
    top_k : int, optional
        With ``outputs='topk'``.

    Returns
    -------
    InferenceResult
        ``categories``: sorted global 1-based ids; ``survivors``: summed over ranks;
        ``inference_seconds``: from the common start (after a barrier) to the end of the
        final gather, the slowest rank's; ``preprocess_seconds``: the slowest rank's
        prepare + read + load. ``extra`` holds: ``ranks``, ``rank_samples``,
        ``rank_inference_seconds`` (each rank's layer loop), ``rank_busy_seconds`` (inside
        ``engine.infer``), ``rank_reload_seconds``, ``imbalance`` (max/mean busy),
        ``rebalances``, ``rows_moved``, ``bytes_moved``, ``gather_seconds``,
        ``boundaries`` (one record per segment boundary: layer, counts, imbalance, action,
        reason), ``segments`` (start, stop, per-rank busy seconds and rows x layers),
        ``rank_resources`` (GPU or threads), ``engine_extra`` (rank 0's engine details),
        ``batched`` (True when some rank's share did not fit its device: then every rank
        runs all layers at once, that rank through ``engine.run``, which batches, and
        nothing is rebalanced).
    """
    here = world() if comm is None else world_of(comm)
    coll = _Collectives(here.comm)
    if not (balance in (True, False, None, "auto") or isinstance(balance, BalancePolicy)):
        raise OptionError(f"balance={balance!r}: expected 'auto', True, False or a BalancePolicy")
    kind, top_k = check_outputs(outputs, top_k)
    depth = network.depth
    source = as_source(features, network.inputs)
    ranges = rank_ranges(int(source.samples), here.size, layout=layout, chunk_rows=chunk_rows)[here.rank]

    t0 = time.perf_counter()
    eng, name, bound = _make_engine(engine, network, precision, dict(engine_options or {}), here, progress)
    policy = _policy(balance, name)
    _check_outputs_fit(coll, here, kind, top_k, int(source.samples), network.outputs, eng.dtype)
    local = read_ranges(source, ranges, network.inputs)
    try:
        eng.load(local)
        fits = True
    except DeviceMemoryError:
        fits = False        # this rank's share does not fit its device: engine.run batches it
    held = int(np.count_nonzero(np.diff(local.indptr))) if network.prunes_after(0) else local.shape[0]
    preprocess = time.perf_counter() - t0
    batched = not all(coll.allgather(fits))

    if segment_layers is not None:
        ends = _check_ends(segment_layers, depth)
    elif policy is not None:
        ends = segment_ends(depth)
    else:
        ends = [depth]
    if batched:             # segments need every rank's samples on its device at once
        policy, ends = None, [depth]

    ids = (np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges]) if ranges
           else np.zeros(0, dtype=np.int64))
    run = _RankRun(eng, ids, held, coll, here, batch_features=None if fits else local, outputs=(kind, top_k))
    del local
    survivors = np.zeros(depth, dtype=np.int64)
    boundaries = []
    rebalances = 0
    reload_per_row = None        # measured round-trip seconds per row (busiest rank)
    previous_total = None

    coll.barrier()
    t_start = time.perf_counter()
    seg_start, i = 0, 0
    while seg_start < depth:
        seg_stop = ends[i]
        busy, row_layers = run.segment(seg_start, seg_stop, survivors)
        last = seg_stop >= depth
        if not last and policy is not None:
            gathered = coll.allgather((run.held, busy, row_layers))
            counts = np.array([g[0] for g in gathered], dtype=np.int64)
            total_rl = sum(g[2] for g in gathered)
            per_row_layer = sum(g[1] for g in gathered) / total_rl if total_rl else None
            decision = policy.decide(counts, remaining_layers=depth - seg_stop,
                                     seconds_per_row_layer=per_row_layer, reload_seconds_per_row=reload_per_row)
            record = {"layer": seg_stop, "counts": counts.tolist(), "imbalance": decision.imbalance,
                      "action": "rebalance" if decision.rebalance else "keep", "reason": decision.reason,
                      "gain_seconds": decision.gain_seconds, "cost_seconds": decision.cost_seconds}
            if decision.rebalance and here.size > 1:
                seconds, held = run.exchange(decision.plan, seg_stop)
                rebalances += 1
                timing = coll.allgather((seconds, held))
                worst = max(timing)
                if worst[1] > 0:
                    reload_per_row = worst[0] / worst[1]
                record["exchange_seconds"] = [float(s) for s, _ in timing]
            total = int(counts.sum())
            settled = (previous_total is not None and not decision.rebalance
                       and total >= (1.0 - policy.settle) * previous_total)
            boundaries.append(record)
            previous_total = total
            if settled and segment_layers is None:
                ends = ends[:i + 1] + [depth]
                record["reason"] += "; survivors settled: one segment to the end"
        seg_start = seg_stop
        i += 1
    t_loop = time.perf_counter() - t_start

    t_gather = time.perf_counter()
    parts = coll.allgather(run.categories)
    categories = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    survivors = coll.allreduce_sum(survivors)
    collected = None
    if kind != "categories":
        pieces = coll.gather(run.local_outputs(eng.dtype))
        if pieces is not None:
            collected = _Outputs(kind, top_k, int(source.samples), network.outputs, eng.dtype)
            for piece_ids, part in pieces:
                collected.place(piece_ids, part)
    stats = coll.allgather({"loop": t_loop, "busy": run.busy, "reload": run.reload, "pre": preprocess,
                            "bytes": run.bytes_sent, "rows": run.rows_sent, "alive": run.held,
                            "resources": bound, "samples": len(ids), "log": run.log})
    t_end = time.perf_counter()
    gather_seconds = t_end - t_gather
    inference = max(coll.allgather(t_end - t_start))

    busy = [s["busy"] for s in stats]
    extra = {
        "ranks": here.size,
        "layout": layout if here.size > 1 else "block",
        "batched": batched,
        "rank_samples": [s["samples"] for s in stats],
        "rank_inference_seconds": [s["loop"] for s in stats],
        "rank_busy_seconds": busy,
        "rank_reload_seconds": [s["reload"] for s in stats],
        "rank_final_survivors": [s["alive"] for s in stats],
        "imbalance": imbalance(busy),
        "balance": policy is not None,
        "rebalances": rebalances,
        "rows_moved": int(sum(s["rows"] for s in stats)),
        "bytes_moved": int(sum(s["bytes"] for s in stats)),
        "gather_seconds": gather_seconds,
        "boundaries": boundaries,
        "segments": [{"start": int(a), "stop": int(b),
                      "busy_seconds": [float(s["log"][j][2]) for s in stats],
                      "row_layers": [int(s["log"][j][3]) for s in stats]}
                     for j, (a, b, _, _) in enumerate(stats[0]["log"])],
        "rank_resources": [s["resources"] for s in stats],
        "engine_extra": run.extra,
    }
    result = InferenceResult(categories=categories.astype(np.int64), survivors=survivors.astype(np.int64),
                             inference_seconds=float(inference),
                             preprocess_seconds=float(max(s["pre"] for s in stats)), engine=name,
                             precision=eng.precision, samples=int(source.samples), neurons=network.inputs,
                             layers=depth, edges=network.edges, extra=extra)
    if collected is not None:
        result.outputs, result.predictions = collected.dense, collected.predictions
        result.top_indices, result.top_values = collected.top_indices, collected.top_values
    return result


def _check_outputs_fit(coll: _Collectives, here: World, kind: str, top_k, samples: int, width: int, dtype) -> None:
    """Rank 0 checks that the outputs fit its host memory; every rank raises its refusal."""
    refusal = None
    if here.rank == 0:
        try:
            Engine._check_outputs_fit(kind, top_k, samples, width, dtype)
        except MemoryLimitError as exc:
            refusal = str(exc)
    refusals = [r for r in coll.allgather(refusal) if r is not None]
    if refusals:
        raise MemoryLimitError(refusals[0] + " (on rank 0, which gathers them)")

