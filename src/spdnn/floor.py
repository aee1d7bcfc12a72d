"""The floor of a benchmark cell: the least time the hardware allows for an engine's schedule.

Two models live here. :func:`cell_floor` is the honest floor (docs/floor.md states it
and why); :func:`floor_estimate` is the first model ("v1"), kept so that tables stay
comparable with the results recorded before the honest one.

**The honest floor.** An engine runs a cell as *segments* of layers: a segment of scope
'block' (or 'cluster') keeps each row in one block's (one cluster's) shared memory
across its layers, so its activations cross device memory once when they enter and
once when they leave, and a layer costs a barrier of that scope; a segment of scope
'grid' spreads a row over the grid, so every layer's rows enter and leave the chip.
Between segments, and at every layer of a grid segment, the whole grid synchronizes
(a merge, a new launch, or a grid barrier). Given the rows each layer computes, the
rows it leaves, the bytes of the weights as the engine stores them, the adds per row
(distinct-column sums where the engine deduplicates) and the card's constants
(:class:`FloorConstants`, measured by :mod:`spdnn.floor_probe`)::

    t(bytes)  = min(bytes, cache) / cache_bandwidth + max(bytes - cache, 0) / bandwidth
    traffic   = sum over transfers of t(bytes)            (activations in/out, weights)
    phase p   = max(activation traffic_p, arithmetic_p, barriers_p)
    chain     = sum_p phase_p + grid boundaries x grid + launch
    floor     = max(traffic, chain)

``arithmetic_p`` is the adds of the phase (rows computed x (adds a row + outputs)) at
the measured add rate; ``barriers_p`` is (layers in the phase - 1) x the measured
barrier chain of its scope; ``grid`` is the cheapest way the card orders a whole grid
(a grid barrier in a persistent kernel, or a kernel launch in a CUDA graph, whichever
measured faster); ``launch`` is the one launch that starts a run. Each term is a lower
bound: all bytes must cross memory (``traffic``); phases separated by a grid-wide
dependence cannot overlap, and within a phase the memory, the arithmetic and each row's
chain of barriers can at best overlap (``chain``). Weights do not depend on the data
(they may be prefetched across any barrier), so they count in ``traffic`` only. With a
run of several batches every batch pays the chain's barriers and launch.
``xfloor = measured / floor`` is then at least 1 if the model is right; below 1 the
model is wrong (:func:`floor_check` says so; nothing is clipped).

Unmeasured constants (``None``: e.g. the host has no probe for barriers or adds) make
their term zero, which keeps the floor a lower bound, and are listed in
:attr:`CellFloor.unmeasured`.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .report import write_json
from .errors import FormatError, OptionError, SpdnnError

__all__ = ["Floor", "floor_estimate", "WEIGHT_INDEX_BYTES", "SCOPES", "FloorConstants", "Segment", "CellFloor",
           "cell_floor", "floor_of_run", "floor_check", "transfer_seconds", "read_constants", "write_constants", "layer_nonzeros",
           "CONSTANTS_VERSION"]

#: Bytes of one weight index in the v1 floor, and in the honest one for engines that do
#: not report their weight bytes (the seed's 16-bit buffer-local indices).
WEIGHT_INDEX_BYTES = 2

#: Scopes a segment keeps its rows in, narrowest first.
SCOPES = ("block", "cluster", "grid")

#: Version of the constants' JSON (:func:`write_constants`).
CONSTANTS_VERSION = 1


# ----------------------------------------------------------------------------- v1


@dataclass(frozen=True)
class Floor:
    """The v1 floor of a cell (see :func:`floor_estimate`).

    Attributes
    ----------
    device : str
        'cpu' or 'gpu'.
    bytes : int
        Activation bytes read and written over all layers, plus weight bytes.
    bandwidth_gbs : float
        Memory bandwidth assumed, GB/s (1e9 bytes).
    launches : int
    launch_latency_s : float
    seconds : float
        bytes / bandwidth + launches * launch_latency.
    """

    device: str
    bytes: int
    bandwidth_gbs: float
    launches: int
    launch_latency_s: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def floor_estimate(survivors: Sequence[int], *, alive_inputs: int, neurons: int, bytes_per_value: int,
                   edges: int, bandwidth_gbs: float, launch_latency_s: float, device: str,
                   rows_computed: Sequence[int] | None = None, widths: Sequence[int] | None = None,
                   weight_bytes: int | None = None) -> Floor:
    """The v1 floor: every layer's rows read and written, at the bandwidth, plus a launch a layer::

        bytes   = sum_k (read_k + written_k) * N * bytes_per_value  +  edges * WEIGHT_INDEX_BYTES
        seconds = bytes / bandwidth + layers * launch_latency

    Parameters
    ----------
    survivors : sequence of int, length L
        Samples alive after each layer.
    alive_inputs : int
        Samples alive before layer 1 (nonzero input rows).
    neurons : int
        N.
    bytes_per_value : int
        4 for fp32 activations, 8 for fp64.
    edges : int
        Sum of nnz over the layers (each costs :data:`WEIGHT_INDEX_BYTES`).
    bandwidth_gbs : float
        GB/s, > 0.
    launch_latency_s : float
        Seconds per layer launch.
    device : str
    rows_computed : sequence of int, length L, optional
        Rows the engine computed at each layer (``InferenceResult.extra['rows_computed']``).
        Given, layer k reads ``rows_computed[k]`` rows and writes ``rows_computed[k+1]``
        (the last layer: ``min(rows_computed[L-1], survivors[L-1])``); else it reads the
        samples alive before it and writes the survivors.
    widths : sequence of int, length L + 1, optional
        General networks: layer k reads rows of ``widths[k]`` values and writes rows of
        ``widths[k+1]`` (default: ``neurons`` everywhere).
    weight_bytes : int, optional
        Bytes of the weights as they must be read once (default: a 16-bit index an edge).
    """
    if not bandwidth_gbs > 0:
        raise OptionError(f"bandwidth {bandwidth_gbs} GB/s: expected a positive number")
    alive = np.asarray(survivors, dtype=np.int64)
    if rows_computed is None:
        read = np.concatenate([[int(alive_inputs)], alive[:-1]])
    else:
        read = np.asarray(rows_computed, dtype=np.int64)
        if read.shape != alive.shape:
            raise OptionError(f"rows_computed: {read.size} layers, survivors: {alive.size}")
    written = np.concatenate([read[1:], [min(int(read[-1]), int(alive[-1]))]]) if read.size else read
    if widths is None:
        act_bytes = int((read + written).sum()) * int(neurons) * int(bytes_per_value)
    else:
        w = np.asarray(widths, dtype=np.int64)
        act_bytes = int((read * w[:-1] + written * w[1:]).sum()) * int(bytes_per_value)
    total = act_bytes + (int(edges) * WEIGHT_INDEX_BYTES if weight_bytes is None else int(weight_bytes))
    launches = int(len(alive))
    seconds = total / (bandwidth_gbs * 1e9) + launches * launch_latency_s
    return Floor(device=device, bytes=total, bandwidth_gbs=float(bandwidth_gbs), launches=launches,
                 launch_latency_s=float(launch_latency_s), seconds=float(seconds))


# ----------------------------------------------------------------------------- constants


@dataclass(frozen=True)
class FloorConstants:
    """The measured constants of one device (JSON: :func:`write_constants`).

    Every time is seconds and every bandwidth GB/s (1e9 bytes a second, bytes read plus
    bytes written). ``None``: not measured; the floor then leaves that term out (zero).

    Attributes
    ----------
    device : str
        'gpu' or 'cpu'.
    name : str
        The card (or CPU) the constants were measured on.
    bandwidth_gbs : float
        Device memory, by a copy far larger than the cache.
    cache_bytes : int
        Capacity of the last-level cache (GPU: L2), bytes; 0 when unknown.
    cache_bandwidth_gbs : float or None
        A copy whose footprint fits the cache; None: bytes within the cache cost nothing.
    add_per_s : dict
        {'fp32': adds a second, 'fp64': ...} over the whole chip (independent adds).
    block_barrier_s : float or None
        One step of the fastest chain of block-wide barriers (``__syncthreads``).
    cluster_barrier_s : dict
        {cluster size (str): one step of a chain of cluster barriers} (sm_90).
    grid_barrier_s : float or None
        One step of the fastest chain of grid-wide barriers (persistent kernel, one
        block a multiprocessor; the faster of ``grid.sync()`` and an atomic barrier).
    launch_s : float or None
        One kernel of a chain of full-grid kernels inside a CUDA graph (GPU), or one
        parallel region (CPU).
    details : dict
        Everything else the probe measured (each variant, sizes, how), for the record.
    """

    device: str
    name: str = ""
    bandwidth_gbs: float = 0.0
    cache_bytes: int = 0
    cache_bandwidth_gbs: float | None = None
    add_per_s: dict = field(default_factory=dict)
    block_barrier_s: float | None = None
    cluster_barrier_s: dict = field(default_factory=dict)
    grid_barrier_s: float | None = None
    launch_s: float | None = None
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (isinstance(self.bandwidth_gbs, (int, float)) and self.bandwidth_gbs > 0
                and math.isfinite(self.bandwidth_gbs)):
            raise OptionError(f"floor constants: bandwidth_gbs={self.bandwidth_gbs!r}: expected a positive number")
        for name in ("cache_bandwidth_gbs", "block_barrier_s", "grid_barrier_s", "launch_s"):
            _check_optional(name, getattr(self, name))
        for name in ("add_per_s", "cluster_barrier_s"):
            for key, value in getattr(self, name).items():
                _check_optional(f"{name}[{key!r}]", value)

    def dependence_s(self, scope: str, cluster: int | None = None) -> float | None:
        """Seconds of one dependence of ``scope`` at the cheapest mechanism measured (None: unmeasured).

        'block': a block barrier; 'cluster': the cluster barrier of that size (the fastest
        measured when ``cluster`` is None or not measured); 'grid': the faster of a grid
        barrier and a graph-launched kernel.
        """
        if scope == "block":
            return self.block_barrier_s
        if scope == "cluster":
            sizes = {int(k): v for k, v in self.cluster_barrier_s.items() if v is not None}
            if not sizes:
                return None
            return sizes[cluster] if cluster in sizes else min(sizes.values())
        if scope == "grid":
            known = [v for v in (self.grid_barrier_s, self.launch_s) if v is not None]
            return min(known) if known else None
        raise OptionError(f"scope {scope!r}: expected one of {', '.join(SCOPES)}")

    def to_dict(self) -> dict[str, Any]:
        return {"version": CONSTANTS_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "FloorConstants":
        """The constants of :meth:`to_dict`; raises :class:`OptionError` on missing or bad fields."""
        if not isinstance(doc, Mapping):
            raise OptionError("floor constants: expected a JSON object")
        version = doc.get("version", CONSTANTS_VERSION)
        if version != CONSTANTS_VERSION:
            raise OptionError(f"floor constants: version {version!r}, this spdnn reads {CONSTANTS_VERSION}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - names - {"version"})
        if unknown:
            raise OptionError(f"floor constants: unknown fields {', '.join(unknown)}")
        if "device" not in doc or "bandwidth_gbs" not in doc:
            raise OptionError("floor constants: 'device' and 'bandwidth_gbs' are required")
        return cls(**{k: v for k, v in doc.items() if k in names})


def _check_optional(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
        raise OptionError(f"floor constants: {name}={value!r}: expected a number >= 0 or null")


def write_constants(constants: FloorConstants, path: str | os.PathLike) -> Path:
    """Write ``constants`` as JSON, atomically; returns the path."""
    return write_json(constants.to_dict(), path)


def read_constants(path: str | os.PathLike) -> FloorConstants:
    """The constants in a JSON file of :func:`write_constants`.

    Raises :class:`FormatError` naming the file when it is not JSON or its fields are bad,
    :class:`SpdnnError` when it cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpdnnError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}, line {exc.lineno}: not JSON ({exc.msg})") from exc
    try:
        return FloorConstants.from_dict(doc)
    except (OptionError, TypeError) as exc:
        raise FormatError(f"{path}: {exc}") from exc


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Segment:
    """Layers ``first``..``stop``-1 run with their rows kept at ``scope`` (:data:`SCOPES`);
    ``cluster``: blocks a cluster, for scope 'cluster'."""

    first: int
    stop: int
    scope: str
    cluster: int | None = None

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise OptionError(f"segment scope {self.scope!r}: expected one of {', '.join(SCOPES)}")
        if not 0 <= self.first < self.stop:
            raise OptionError(f"segment layers {self.first}..{self.stop}: expected 0 <= first < stop")

    @property
    def on_chip(self) -> bool:
        """Rows stay in shared memory between the segment's layers."""
        return self.scope != "grid"

    @classmethod
    def parse(cls, item) -> "Segment":
        """From an engine's report: ``[first, stop, scope]`` (or a dict of the fields)."""
        if isinstance(item, Mapping):
            return cls(**item)
        first, stop, scope, *rest = item
        return cls(int(first), int(stop), str(scope), *(int(r) for r in rest))


def transfer_seconds(nbytes: float, constants: FloorConstants) -> float:
    """Least seconds for ``nbytes`` to cross the memory system once (module docstring, t(bytes)).

    Up to ``cache_bytes`` may stay in the cache (at ``cache_bandwidth_gbs``; free when it
    is unmeasured), the rest crosses device memory at ``bandwidth_gbs``.
    """
    cached = min(float(nbytes), float(constants.cache_bytes))
    out = (float(nbytes) - cached) / (constants.bandwidth_gbs * 1e9)
    if constants.cache_bandwidth_gbs:
        out += cached / (constants.cache_bandwidth_gbs * 1e9)
    return out


@dataclass(frozen=True)
class CellFloor:
    """The honest floor of one cell and engine run (module docstring).

    Attributes
    ----------
    seconds : float
        max(traffic_s, chain_s).
    bound : str
        'traffic' or 'chain': which of the two sets the floor.
    traffic_s : float
        Every transfer (activations and weights) at its bandwidth.
    chain_s : float
        sum over phases of max(activation traffic, arithmetic, barriers), plus the grid
        dependences and the launch.
    activation_s, weight_s, arithmetic_s, barrier_s, grid_s, launch_s : float
        The parts: activation and weight traffic, all adds at the add rate, the
        barriers inside segments, the grid-wide dependences, the launch (per batch).
    activation_bytes, weight_bytes : int
    adds : int
        Adds over all layers: rows computed x (adds a row + outputs).
    phases : int
        Phases of the chain (segments, grid segments counted a layer each).
    dependences : dict
        {'block': n, 'cluster': n, 'grid': n, 'launch': n}: dependences charged.
    limit : str
        The largest part of the chain (or 'weights'/'activations' when traffic bounds).
    unmeasured : list of str
        Constants that were not measured (their terms are zero).
    """

    seconds: float
    bound: str
    traffic_s: float
    chain_s: float
    activation_s: float
    weight_s: float
    arithmetic_s: float
    barrier_s: float
    grid_s: float
    launch_s: float
    activation_bytes: int
    weight_bytes: int
    adds: int
    phases: int
    dependences: dict
    limit: str
    unmeasured: list

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_counts(values, name: str, depth: int) -> np.ndarray:
    out = np.asarray(values, dtype=np.int64).reshape(-1)
    if out.size != depth:
        raise OptionError(f"{name}: {out.size} values for {depth} layers")
    if (out < 0).any():
        raise OptionError(f"{name}: counts must be >= 0")
    return out


def _check_segments(segments: Sequence[Segment], depth: int) -> list[Segment]:
    segs = [s if isinstance(s, Segment) else Segment.parse(s) for s in segments]
    at = 0
    for s in segs:
        if s.first != at:
            raise OptionError(f"segments: layer {at} expected next, got {s.first}..{s.stop}")
        at = s.stop
    if at != depth:
        raise OptionError(f"segments cover layers 0..{at}, the network has {depth}")
    return segs


def cell_floor(*, widths: Sequence[int], rows_in: Sequence[int], rows_out: Sequence[int],
               adds_per_row: Sequence[int], weight_bytes: int, bytes_per_value: int, precision: str,
               constants: FloorConstants, segments: Sequence | None = None, batches: int = 1) -> CellFloor:
    """The honest floor of one run (module docstring).

    Parameters
    ----------
    widths : sequence of int, length L + 1
        Inputs of layer 1, then the outputs of each layer (``Network.widths``).
    rows_in : sequence of int, length L
        Rows each layer computes (``extra['rows_computed']``; summed over batches).
    rows_out : sequence of int, length L
        Rows alive after each layer (before any merge that follows it).
    adds_per_row : sequence of int, length L
        Adds a row costs at each layer, besides one per output: the layer's nonzeros, or
        those of its distinct columns where the engine sums each distinct column once.
    weight_bytes : int
        Bytes of every layer's weights as the engine stores them (indices, values, maps).
    bytes_per_value : int
        Bytes of one activation (4 fp32, 8 fp64).
    precision : {'fp32', 'fp64'}
        Selects the add rate.
    constants : FloorConstants
    segments : sequence of Segment or [first, stop, scope], optional
        The engine's schedule, covering layers 0..L-1 in order; default: every layer a
        grid segment (rows leave the chip after every layer).
    batches : int
        Runs of all layers (each pays the barriers and the launch).
    """
    widths = [int(w) for w in widths]
    depth = len(widths) - 1
    if depth < 1:
        raise OptionError(f"widths: {len(widths)} values, expected L + 1 >= 2")
    rin = _as_counts(rows_in, "rows_in", depth)
    rout = _as_counts(rows_out, "rows_out", depth)
    adds = _as_counts(adds_per_row, "adds_per_row", depth)
    if isinstance(batches, bool) or int(batches) < 1:
        raise OptionError(f"batches={batches!r}: expected an integer >= 1")
    batches = int(batches)
    segs = _check_segments(segments if segments is not None else
                           [Segment(k, k + 1, "grid") for k in range(depth)], depth)
    unmeasured = []
    rate = constants.add_per_s.get(precision)
    if rate is None:
        unmeasured.append(f"add_per_s[{precision}]")

    def dep(scope: str, cluster=None) -> float:
        value = constants.dependence_s(scope, cluster)
        if value is None:
            name = {"block": "block_barrier_s", "cluster": "cluster_barrier_s", "grid": "grid_barrier_s/launch_s"}
            if name[scope] not in unmeasured:
                unmeasured.append(name[scope])
            return 0.0
        return value

    # Phases: an on-chip segment is one phase; a grid segment is a phase a layer.
    phases = []
    for s in segs:
        if s.on_chip:
            phases.append((s.first, s.stop, s))
        else:
            phases.extend((k, k + 1, s) for k in range(s.first, s.stop))
    act_bytes = 0
    act_s = arith_total = barrier_total = 0.0
    chain = 0.0
    counts = {"block": 0, "cluster": 0, "grid": 0, "launch": batches}
    total_adds = 0
    for a, b, s in phases:
        bytes_in = int(rin[a]) * widths[a] * bytes_per_value
        bytes_out = int(rout[b - 1]) * widths[b] * bytes_per_value
        t_act = transfer_seconds(bytes_in, constants) + transfer_seconds(bytes_out, constants)
        phase_adds = int(sum(int(rin[k]) * (int(adds[k]) + widths[k + 1]) for k in range(a, b)))
        t_arith = phase_adds / rate if rate else 0.0
        t_barriers = (b - a - 1) * batches * dep(s.scope, s.cluster)
        counts[s.scope] += (b - a - 1) * batches
        chain += max(t_act, t_arith, t_barriers)
        act_bytes += bytes_in + bytes_out
        act_s += t_act
        arith_total += t_arith
        barrier_total += t_barriers
        total_adds += phase_adds
    grid_boundaries = (len(phases) - 1) * batches
    counts["grid"] += grid_boundaries
    grid_s = grid_boundaries * dep("grid") if grid_boundaries else 0.0
    launch = constants.launch_s
    if launch is None and "launch_s" not in unmeasured:
        unmeasured.append("launch_s")
    launch_s = batches * (launch or 0.0)
    chain += grid_s + launch_s
    weight_s = transfer_seconds(int(weight_bytes), constants)
    traffic = act_s + weight_s
    seconds = max(traffic, chain)
    if traffic >= chain:
        bound, limit = "traffic", "weights" if weight_s > act_s else "activations"
    else:
        parts = {"activations": act_s, "arithmetic": arith_total, "barriers": barrier_total, "grid": grid_s,
                 "launch": launch_s}
        bound, limit = "chain", max(parts, key=parts.get)
    return CellFloor(seconds=float(seconds), bound=bound, traffic_s=float(traffic), chain_s=float(chain),
                     activation_s=float(act_s), weight_s=float(weight_s), arithmetic_s=float(arith_total),
                     barrier_s=float(barrier_total), grid_s=float(grid_s), launch_s=float(launch_s),
                     activation_bytes=int(act_bytes), weight_bytes=int(weight_bytes), adds=int(total_adds),
                     phases=len(phases), dependences=counts, limit=limit, unmeasured=unmeasured)


def floor_of_run(network, *, survivors: Sequence[int], alive_inputs: int, extra: Mapping[str, Any],
                 bytes_per_value: int, precision: str, constants: FloorConstants,
                 nonzeros: Sequence[int] | None = None) -> CellFloor:
    """The honest floor of one engine run, from what the engine reports (:func:`cell_floor`).

    From ``extra`` (``InferenceResult.extra``), where the engine gives them:
    ``rows_computed`` (else the samples alive before each layer), ``rows_left`` (rows
    after each layer; ignored after several ``batches``, whose counts are not summed:
    then the rows entering the next layer, a lower bound, and at the last layer
    min(rows computed, survivors)), ``segments`` (else a grid segment a layer),
    ``adds_per_row`` (else each layer's nonzeros), ``weight_bytes`` (else
    :data:`WEIGHT_INDEX_BYTES` a nonzero) and ``batches`` (else 1). ``nonzeros``: the
    layers' nonzeros when already known (:func:`layer_nonzeros`).
    """
    alive = [int(v) for v in survivors]
    rows_in = extra.get("rows_computed")
    if rows_in is None:
        rows_in = [int(alive_inputs), *alive[:-1]]
    rows_in = [int(v) for v in rows_in]
    batches = int(extra.get("batches", 1))
    rows_out = extra.get("rows_left") if batches == 1 else None
    if rows_out is None:
        rows_out = [*rows_in[1:], min(rows_in[-1], alive[-1])]
    adds = extra.get("adds_per_row")
    weight_bytes = extra.get("weight_bytes")
    if adds is None or weight_bytes is None:
        nonzeros = layer_nonzeros(network) if nonzeros is None else nonzeros
        adds = nonzeros if adds is None else adds
        weight_bytes = WEIGHT_INDEX_BYTES * int(sum(nonzeros)) if weight_bytes is None else weight_bytes
    return cell_floor(widths=network.widths, rows_in=rows_in, rows_out=rows_out, adds_per_row=adds,
                      weight_bytes=int(weight_bytes), bytes_per_value=bytes_per_value, precision=precision,
                      constants=constants, segments=extra.get("segments"), batches=batches)


def floor_check(measured_s: float, floor_s: float) -> str:
    """'ok' when ``measured_s >= floor_s``; else a sentence saying the model is wrong."""
    if floor_s <= 0 or measured_s >= floor_s:
        return "ok"
    return (f"measured {measured_s:.4g} s is below the floor {floor_s:.4g} s: the floor model is wrong "
            "(a constant measured too slow, or bytes counted that need not move)")


def layer_nonzeros(network) -> list[int]:
    """Nonzeros of each layer (a dense layer counts every entry), without building lazy layers
    whose counts are known; others are built once each."""
    layers = network.layers
    depth = network.depth
    known = getattr(layers, "layer_nnz", None)
    if known is not None:
        return [int(v) for v in known[:depth]]
    per = getattr(layers, "nnz_per_layer", None)
    if per is not None:
        return [int(per)] * depth
    out = []
    for k in range(depth):
        w = layers[k]
        out.append(int(w.size) if isinstance(w, np.ndarray) else int(w.nnz))
    return out
