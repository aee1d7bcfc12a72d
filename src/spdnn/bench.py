"""``spdnn bench``: time engines side by side on challenge cells, against a floor.

For every cell N x L the data is prepared once: generated (:func:`spdnn.generate.cached_challenge`,
60,000 samples by default, float64 truth), or given (:class:`BenchData`: the official
files ``spdnn bench --data DIR`` reads, with their truth); every engine (once per ``merge`` setting for
the engines that merge identical samples) then runs once as a warm-up and ``repeats``
times (:func:`time_engine`); the engine's own ``inference_seconds`` are kept and their
median reported together with TeraEdges/s (samples x edges / seconds / 1e12), as in the
tables of the challenge papers, next to the published figures of that cell
(:data:`PUBLISHED`). Every run's categories are checked against the truth.

Each run is set against two floors (:mod:`spdnn.floor`, docs/floor.md): the honest
floor (:func:`spdnn.floor.cell_floor`: the bytes that must cross memory, the arithmetic
and the dependence between layers of the engine's schedule, at constants measured on the
card by :mod:`spdnn.floor_probe` at the start, or read from ``floor_constants``), whose
ratio is ``xfloor``, and the first model (:func:`spdnn.floor.floor_estimate`: every
layer's rows read and written at the bandwidth plus a launch a layer), ``xfloor(v1)``,
kept beside it so that tables stay comparable with earlier results.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_path
from ._progress import progress_bar
from .engines import PRECISIONS, available_engines, engine_device, engine_merges, get_engine
from .engines._cupy import release_device_memory
from .engines.base import Engine, InferenceResult
from .errors import OptionError, SpdnnError
from .floor import Floor, FloorConstants, floor_check, floor_estimate, floor_of_run, read_constants
from .network import LazyLayers, Network
from .options import check_merge
from .report import write_json

__all__ = ["parse_cells", "default_engines", "Floor", "floor_estimate", "floor_constants", "host_bandwidth_gbs",
           "gpu_copy_gbs", "gpu_bandwidth_gbs", "Timing", "time_runs", "time_engine", "BenchRun", "bench_runs",
           "run_bench",
           "BenchData", "write_json", "write_plot", "require_matplotlib", "materialized", "cpu_model", "PUBLISHED",
           "GRID", "LAUNCH_LATENCY_S", "MATERIALIZE_MAX_EDGES"]

#: Per-layer launch cost assumed by the v1 floor, seconds: a kernel node of a CUDA graph
#: on the GPU; a fork/join of a parallel region (numba/OpenMP) on the CPU.
LAUNCH_LATENCY_S = {"gpu": 2e-6, "cpu": 5e-6}

#: Default engines of ``spdnn bench``, those available here are used.
DEFAULT_ENGINES = ("cuda", "cusparse", "cpu")


#: Lazy (generated) networks up to this many edges are built into memory before timing
#: (about 12 bytes an edge as float64 CSR: 3e8 edges is 3.6 GB).
MATERIALIZE_MAX_EDGES = 300_000_000


def materialized(network: Network, *, max_edges: int = MATERIALIZE_MAX_EDGES) -> Network:
    """The network with its lazy layers built once into a list, if it has at most ``max_edges`` edges.

    Generated networks make each layer on access; engines that read layers inside
    their layer loop (the reference) would otherwise time the generator. Larger
    networks are returned unchanged (lazy), so they never sit in memory at once.
    """
    if not isinstance(network.layers, LazyLayers) or network.edges > max_edges:
        return network
    return Network(layers=list(network.layers), bias=network.bias, ymax=network.ymax)


#: The challenge grid: every official N x L (``--cells grid``).
GRID = tuple((n, layers) for n in (1024, 4096, 16384, 65536) for layers in (120, 480, 1920))

#: Published single-GPU throughput, TeraEdges/s (60000 * 32 * N * L / t), per (N, L):
#: the seed system (HPEC 2020) on a V100 and an A100, XY-2021 and SNICIT (ICPP 2023) on an
#: RTX A6000 (docs/challenge.md, Published figures, which also says what their timers cover).
PUBLISHED: dict[tuple[int, int], dict[str, float]] = {
    (n, layers): dict(zip(("seed V100", "seed A100", "XY-2021 A6000", "SNICIT A6000"), figures))
    for (n, layers), figures in {
        (1024, 120): (10.51, 16.74, 15.8, 17.6),
        (1024, 480): (12.87, 20.99, 23.1, 37.6),
        (1024, 1920): (14.30, 20.68, 26.4, 52.1),
        (4096, 120): (9.45, 14.27, 24.2, 29.1),
        (4096, 480): (11.74, 18.63, 40.2, 85.5),
        (4096, 1920): (13.88, 19.86, 48.3, 169.0),
        (16384, 120): (6.15, 11.60, 26.4, 33.7),
        (16384, 480): (7.45, 14.31, 45.4, 120.0),
        (16384, 1920): (7.84, 15.27, 55.2, 337.0),
        (65536, 120): (3.47, 8.15, 27.0, 32.6),
        (65536, 480): (3.83, 9.08, 45.9, 119.0),
        (65536, 1920): (3.93, 9.33, 55.6, 350.0),
    }.items()
}


def parse_cells(text: str | Sequence[str]) -> list[tuple[int, int]]:
    """Parse ``"1024x120,4096x120"`` (or a list of such strings) into [(N, L), ...].

    The item ``grid`` stands for the whole challenge grid :data:`GRID` (12 cells). Raises
    :class:`OptionError` naming the bad item; N must be 16 * 2**S (S >= 1), L >= 1.
    """
    items = [text] if isinstance(text, str) else list(text)
    cells = []
    for chunk in items:
        for item in str(chunk).split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item == "grid":
                cells.extend(GRID)
                continue
            parts = item.split("x")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise OptionError(f"--cells: {item!r} is not NxL (e.g. 1024x120) or 'grid'")
            n, layers = int(parts[0]), int(parts[1])
            if n < 32 or n % 16 or (n // 16) & (n // 16 - 1):
                raise OptionError(f"--cells: {item!r}: N={n} must be 16 * 2**S with S >= 1 (32, 64, ..., 1024, ...)")
            if layers < 1:
                raise OptionError(f"--cells: {item!r}: L must be at least 1")
            cells.append((n, layers))
    if not cells:
        raise OptionError("--cells: no cell given (e.g. 1024x120,4096x120, or grid)")
    return list(dict.fromkeys(cells))


def default_engines() -> list[str]:
    """The engines of :data:`DEFAULT_ENGINES` available on this machine (at least 'reference')."""
    avail = available_engines()
    names = [n for n in DEFAULT_ENGINES if avail.get(n, (False, ""))[0]]
    return names or ["reference"]


def host_bandwidth_gbs(*, megabytes: int = 256, repeats: int = 5) -> float:
    """Measured host memory bandwidth, GB/s: best of ``repeats`` parallel array copies.

    One thread per core copies its slice (numpy releases the GIL while copying); the
    bytes counted are those read plus those written.
    """
    from concurrent.futures import ThreadPoolExecutor

    n = megabytes * 2**20 // 8
    src = np.ones(n)
    dst = np.empty_like(src)
    workers = max(1, os.cpu_count() or 1)
    bounds = np.linspace(0, n, workers + 1).astype(np.int64)
    slices = [slice(bounds[i], bounds[i + 1]) for i in range(workers)]
    best = float("inf")
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda s: np.copyto(dst[s], src[s]), slices))
            best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def gpu_copy_gbs(*, megabytes: int = 1024, repeats: int = 10) -> float:
    """Measured bandwidth of the current CUDA device, GB/s: a device-to-device copy.

    A ``megabytes`` float32 array is copied ``repeats + 2`` times, each timed with CUDA
    events; the first two are discarded and the median of the rest is returned, counting
    the bytes read plus the bytes written.
    """
    import cupy as cp

    a = cp.ones(megabytes * 2**20 // 4, dtype=cp.float32)
    b = cp.empty_like(a)
    times = []
    for _ in range(repeats + 2):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        b[...] = a
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    nbytes = 2 * a.nbytes
    del a, b
    return nbytes / statistics.median(times[2:]) / 1e9


def gpu_bandwidth_gbs() -> tuple[float, str]:
    """(GB/s, how): the current CUDA device's peak bandwidth, else :func:`gpu_copy_gbs`.

    The peak is memory clock x bus width x 2 (double data rate) from the device
    attributes; where the runtime does not report them, the copy is measured.
    """
    import cupy as cp

    dev = cp.cuda.Device()
    rt = cp.cuda.runtime
    try:
        # cudaDevAttrMemoryClockRate = 36 (kHz), cudaDevAttrGlobalMemoryBusWidth = 37 (bits)
        clock_khz = rt.deviceGetAttribute(getattr(rt, "cudaDevAttrMemoryClockRate", 36), dev.id)
        bus_bits = rt.deviceGetAttribute(getattr(rt, "cudaDevAttrGlobalMemoryBusWidth", 37), dev.id)
        if clock_khz > 0 and bus_bits > 0:
            return clock_khz * 1e3 * bus_bits / 8 * 2 / 1e9, "peak from device attributes"
    except Exception:  # attribute missing in this CUDA/CuPy version: measure instead
        pass
    return gpu_copy_gbs(), "measured device-to-device copy"


@dataclass
class Timing:
    """The runs of one timed job: a warm-up, then the timed repeats.

    Attributes
    ----------
    warmup : object
        What the warm-up call returned (not timed: compilation, caches, graph capture).
    results : list
        What each timed call returned, in order.
    seconds : list of float
        The time of each timed call, seconds (see :func:`time_runs`).
    """

    warmup: Any
    results: list
    seconds: list

    @property
    def median_seconds(self) -> float:
        return float(statistics.median(self.seconds))

    @property
    def best_seconds(self) -> float:
        return float(min(self.seconds))


def time_runs(run: Callable[[], Any], repeats: int, *, warmup: Callable[[], Any] | None = None,
              seconds: Callable[[Any], float] | None = None, progress: bool | None = None,
              desc: str = "") -> Timing:
    """The timing loop of every benchmark: one warm-up call, then ``repeats`` timed calls.

    Parameters
    ----------
    run : callable() -> result
        One timed run.
    repeats : int
        Timed calls, >= 1.
    warmup : callable() -> result, optional
        The warm-up call (default: ``run``).
    seconds : callable(result) -> float, optional
        The time of a run from its result (e.g. an engine's own ``inference_seconds``,
        which leaves out reading and preprocessing); default: the wall-clock seconds of
        the call.
    progress : bool or None
        A progress bar over the calls (None: when stderr is a terminal).
    desc : str
        The bar's label.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise OptionError(f"repeats={repeats!r}: expected an integer >= 1")
    first, results, times = None, [], []
    for i in progress_bar(range(repeats + 1), enabled=progress, desc=desc):
        t0 = time.perf_counter()
        result = (warmup or run)() if i == 0 else run()
        wall = time.perf_counter() - t0
        if i == 0:
            first = result
            continue
        results.append(result)
        times.append(float(wall if seconds is None else seconds(result)))
    return Timing(warmup=first, results=results, seconds=times)


def time_engine(engine: Engine, network: Network, features, repeats: int, *, progress: bool | None = None,
                desc: str = "") -> Timing:
    """Time an engine on one cell: :func:`time_runs` over :class:`~spdnn.engines.base.InferenceResult`.

    The warm-up is ``engine.run(network, features)`` (prepare, load, infer). Each timed
    run then loads the features again into the prepared engine and times ``infer()``
    alone, wall clock, as :meth:`Engine.run` times it; its result has the warm-up's
    fields with this run's categories, survivors, extra, inference seconds, and
    ``preprocess_seconds`` covering ``load`` only. An engine that batched its features in
    the warm-up (``extra['batches'] > 1``: its ``run`` interleaves loading and inference)
    runs whole every time, and its own ``inference_seconds`` count. ``Timing.seconds`` are
    the results' ``inference_seconds``.
    """
    warm: InferenceResult | None = None

    def first() -> InferenceResult:
        nonlocal warm
        warm = engine.run(network, features)
        return warm

    def again() -> InferenceResult:
        if warm.extra.get("batches", 1) > 1:
            return engine.run(network, features)
        t0 = time.perf_counter()
        engine.load(features)
        t1 = time.perf_counter()
        categories, survivors, extra = engine.infer()
        t2 = time.perf_counter()
        return dataclasses.replace(warm, categories=np.asarray(categories, dtype=np.int64),
                                   survivors=np.asarray(survivors, dtype=np.int64), inference_seconds=t2 - t1,
                                   preprocess_seconds=t1 - t0, extra=dict(extra))

    return time_runs(again, repeats, warmup=first, seconds=lambda r: r.inference_seconds, progress=progress,
                     desc=desc)


def require_matplotlib():
    """Import matplotlib with the Agg backend, or raise :class:`SpdnnError` saying what to install."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SpdnnError("--plot needs matplotlib, which is not installed: "
                         "pip install matplotlib (or pip install 'spdnn[dev]')") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(bandwidths: dict[str, dict]) -> dict[str, Any]:
    from . import __version__

    out = {"platform": platform.platform(), "processor": cpu_model(),
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "spdnn": __version__,
           "bandwidth": bandwidths}
    if "gpu" in bandwidths:
        import cupy as cp

        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        out["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
    return out


def _bandwidths(devices: set[str], bandwidth_gbs: float | str) -> dict[str, dict]:
    out = {}
    for device in sorted(devices):
        if bandwidth_gbs != "auto":
            out[device] = {"gbs": float(bandwidth_gbs), "how": "given (--bandwidth-gbs)"}
        elif device == "gpu":
            gbs, how = gpu_bandwidth_gbs()
            out[device] = {"gbs": gbs, "how": how}
        else:
            out[device] = {"gbs": host_bandwidth_gbs(), "how": "measured parallel host copy"}
    return out


def given_constants(given) -> FloorConstants | None:
    """``given`` as :class:`~spdnn.floor.FloorConstants`: None, the constants, their dict, or
    a JSON file of :func:`spdnn.floor.write_constants` (read now: a bad file is refused
    before any long step, naming it)."""
    if isinstance(given, (str, os.PathLike)):
        return read_constants(given)
    if isinstance(given, dict):
        return FloorConstants.from_dict(given)
    return given


def floor_constants(devices: set[str], given=None, *, bandwidth_gbs: float | str = "auto",
                    log: Callable[[str], None] | None = None) -> dict[str, FloorConstants]:
    """{device: constants} of the honest floor for ``devices`` ('cpu', 'gpu').

    ``given``: a :class:`~spdnn.floor.FloorConstants`, its dict, or a JSON file of
    :func:`spdnn.floor.write_constants` (``benchmarks/floor_constants.py``), used for its
    device; every other device is measured now (:mod:`spdnn.floor_probe`: a few seconds
    on a GPU). ``bandwidth_gbs`` other than 'auto' replaces the device-memory bandwidth.
    """
    from . import floor_probe

    log = log or (lambda line: None)
    given = given_constants(given)
    out = {}
    for device in sorted(devices):
        if given is not None and given.device == device:
            constants = given
        elif device == "gpu":
            log("floor constants: measuring the GPU (spdnn.floor_probe)")
            constants = floor_probe.measure_gpu(log=log)
        else:
            constants = floor_probe.measure_host(bandwidth_gbs=None if bandwidth_gbs == "auto" else bandwidth_gbs)
        if bandwidth_gbs != "auto":
            constants = dataclasses.replace(constants, bandwidth_gbs=float(bandwidth_gbs))
        out[device] = constants
    return out


@dataclass(frozen=True)
class _Widths:
    """What :func:`spdnn.floor.floor_of_run` reads of a network when its nonzeros are given:
    the widths (kept instead of the network until the floor's constants are measured)."""

    widths: tuple


class HonestFloors:
    """The honest floors of a bench's timed runs, computed once the floor's constants are
    known: :func:`floor_constants` measures them after every timing (the probe loads the
    device for seconds and leaves memory in CuPy's pool: it must not run before a timed cell).

    :meth:`add` an entry when its run is timed: where ``given`` constants (as
    :func:`floor_constants`'s) are for the entry's device, its floor is filled at once (a
    bench cut short keeps the floors of the cells it finished); otherwise its floor fields
    are None until :meth:`resolve` measures the constants and fills ``floor``,
    ``floor_ratio`` (median / floor: ``xfloor``) and ``floor_check`` of every entry left.
    """

    def __init__(self, given=None, *, bandwidth_gbs: float | str = "auto",
                 log: Callable[[str], None] | None = None):
        self._pending: list = []
        self._devices: set = set()
        self._given = given_constants(given)
        self._bandwidth = bandwidth_gbs
        self._log = log or (lambda line: None)
        # known from the start (no probe): the given device's constants, bandwidth applied
        self._known = {} if self._given is None else floor_constants({self._given.device}, self._given,
                                                                      bandwidth_gbs=bandwidth_gbs)

    def add(self, label: str, entry: dict, device: str, widths, *, survivors, alive_inputs: int, extra: dict,
            bytes_per_value: int, precision: str, nonzeros=None) -> None:
        """Record the run of ``entry`` (its ``median_seconds`` set) for :meth:`resolve`;
        the arguments are :func:`spdnn.floor.floor_of_run`'s (``nonzeros`` given where the
        engine does not report its adds and weight bytes)."""
        entry.update(floor={"device": device}, floor_ratio=None, floor_check=None)
        self._devices.add(device)
        run = functools.partial(floor_of_run, _Widths(tuple(widths)), survivors=survivors, alive_inputs=alive_inputs,
                                extra=extra, bytes_per_value=bytes_per_value, precision=precision, nonzeros=nonzeros)
        if device in self._known:
            self._fill(label, entry, run, self._known[device])
        else:
            self._pending.append((label, entry, device, run))

    def _fill(self, label: str, entry: dict, run, constants: FloorConstants) -> None:
        fl = run(constants=constants)
        median = entry["median_seconds"]
        entry["floor"].update(fl.to_dict())
        entry["floor_ratio"] = median / fl.seconds if fl.seconds > 0 else None
        entry["floor_check"] = floor_check(median, fl.seconds)
        ratio = "-" if entry["floor_ratio"] is None else f"{entry['floor_ratio']:.2f}"
        self._log(f"{label}: x{ratio} floor ({fl.bound}: {fl.limit})")
        if entry["floor_check"] != "ok":
            self._log(f"{label}: {entry['floor_check']}")

    def resolve(self) -> dict[str, FloorConstants]:
        """Fill the floor of every entry still without one (measuring the constants of its
        device now); returns the constants of every device added."""
        constants = floor_constants(self._devices, self._given, bandwidth_gbs=self._bandwidth, log=self._log)
        for label, entry, device, run in self._pending:
            self._fill(label, entry, run, constants[device])
        self._pending = []
        return constants


@dataclass(frozen=True)
class BenchRun:
    """One engine configuration of a bench: engine name, ``merge`` option (None: the
    engine does not merge, or its default), and the label of its column."""

    engine: str
    merge: Any
    label: str

    @property
    def options(self) -> dict[str, Any]:
        """Constructor options besides precision."""
        return {} if self.merge is None else {"merge": self.merge}


def bench_runs(engines: Sequence[str], merge: Sequence = ("auto",)) -> list[BenchRun]:
    """The configurations to time: every engine once per ``merge`` setting if it merges
    identical samples (:func:`spdnn.engines.engine_merges`), else once.

    ``merge`` holds 'auto', 'on'/True or 'off'/False (duplicates dropped). Labels are the
    engine's name, with `` merge=on|off|auto`` when settings other than the default
    'auto' alone are asked for.
    """
    settings = list(dict.fromkeys(check_merge(m) for m in merge))
    if not settings:
        raise OptionError("--merge: no setting given (auto, on, off)")
    spelled = {True: "on", False: "off", "auto": "auto"}
    runs = []
    for name in dict.fromkeys(engines):
        if not engine_merges(name) or settings == ["auto"]:
            runs.append(BenchRun(name, None, name))
            continue
        runs += [BenchRun(name, value, f"{name} merge={spelled[value]}") for value in settings]
    return runs


@dataclass
class BenchData:
    """A cell whose data are given rather than generated (``spdnn bench --data``).

    Attributes
    ----------
    network : Network
    features : scipy.sparse.csr_matrix (samples, N), float64
    truth : numpy.ndarray of int64
        Sorted 1-based ids every run is checked against.
    source : dict
        Where the data come from (JSON-ready; the report's ``source`` of the cell).
    seconds : float
        Seconds spent reading them (the report's ``data_seconds``).
    """

    network: Network
    features: Any
    truth: np.ndarray
    source: dict
    seconds: float = 0.0


def run_bench(cells: Sequence[tuple[int, int]], engines: Sequence[str], *, repeats: int = 5,
              samples: int | None = 60000, precision: str = "fp32", seed: int = 0, merge: Sequence = ("auto",),
              bandwidth_gbs: float | str = "auto", launch_latency_s: float | None = None,
              floor_constants_from=None, progress: bool | None = None, log: Callable[[str], None] | None = None,
              data: Sequence[BenchData] = (), checkpoint: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run the benchmark and return its report (a JSON-ready dict).

    Parameters
    ----------
    cells : sequence of (N, L)
        Generated cells (after those of ``data``).
    engines : sequence of str
        Engine names (``spdnn.engines.ENGINES``); an unavailable one raises
        :class:`~spdnn.errors.EngineUnavailableError` before anything runs.
    repeats : int
        Timed runs per engine and cell (after one warm-up run), >= 1.
    samples : int or None
        First samples of the generated features (None: all 60,000).
    precision : {'fp32', 'fp64'}
    seed : int
        Generator seed of the permuted layers.
    merge : sequence of {'auto', 'on', 'off', True, False}
        Settings of the ``merge`` option; engines that merge run once per setting (see
        :func:`bench_runs`), the others once.
    bandwidth_gbs : float or 'auto'
        Memory bandwidth of both floors; 'auto': the v1 floor measures the host and reads
        the GPU's peak, the honest floor uses its measured constants.
    launch_latency_s : float, optional
        Per-layer launch cost of the v1 floor (default :data:`LAUNCH_LATENCY_S` per device).
    floor_constants_from : FloorConstants, dict, path or None
        Constants of the honest floor (:func:`floor_constants`); None: measured after the last timed run.
    progress : bool or None
        Progress bars on stderr (None: when stderr is a terminal).
    log : callable(str), optional
        Receives one status line per step (the CLI prints them to stderr).
    data : sequence of BenchData
        Cells whose data are given (timed first, with the same repeats, floor and checks).
    checkpoint : callable(dict), optional
        Called with the report after every cell and once more at the end (the CLI writes
        ``--json-out`` there, so a run cut short keeps the cells it finished; their honest
        floors are filled as they are timed when the constants are given, else at the end).

    Returns
    -------
    dict
        ``engines`` (the labels of :func:`bench_runs`, in order), ``repeats``,
        ``precision``, ``merge``, ``machine``, ``passed`` (every run of every cell matched
        the truth) and ``cells``: per cell ``source`` ('generated', or the given data's
        source), neurons, layers, samples, edges,
        alive_inputs, categories_count (the truth's), truth_info, ``published``
        (:data:`PUBLISHED` figures of the cell, or None), ``survivors`` (of a run that
        matched the truth), and ``engines``: per label engine, merge, times (seconds of
        each timed run), median_seconds, teraedges_per_second, preprocess_seconds (the
        warm-up's: prepare and load), ``repeats`` (per timed run: seconds, passed,
        categories_count, rows_computed), passed, categories_count, missing and extra
        (ids against the truth, of the first failing run), survivors, rows_computed (or
        None), floor (the honest floor, :meth:`spdnn.floor.CellFloor.to_dict`), floor_ratio
        (median / floor: ``xfloor``), floor_check (:func:`spdnn.floor.floor_check`),
        floor_v1 (:meth:`Floor.to_dict`), floor_ratio_v1, extra_info (the engine's ``extra``
        of the last run); and ``floor_constants`` ({device: the constants used}).
    """
    from .generate import cached_challenge
    from .verify import compare_categories

    log = log or (lambda line: None)
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise OptionError(f"--repeats {repeats}: expected an integer >= 1")
    if precision not in PRECISIONS:
        raise OptionError(f"--precision {precision!r}: expected one of {sorted(PRECISIONS)}")
    if bandwidth_gbs != "auto" and not float(bandwidth_gbs) > 0:
        raise OptionError(f"--bandwidth-gbs {bandwidth_gbs}: expected a positive number or 'auto'")
    runs = bench_runs(engines, merge)
    # Fail before any long step when an engine cannot run here or the constants' file is bad.
    for run in runs:
        get_engine(run.engine, precision=precision, **run.options)
    floor_constants_from = given_constants(floor_constants_from)
    bandwidths = _bandwidths({engine_device(run.engine) for run in runs}, bandwidth_gbs)
    bytes_per_value = np.dtype(PRECISIONS[precision]).itemsize

    report: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["spdnn", *sys.argv[1:]]) if sys.argv and "spdnn" in sys.argv[0] else None,
        "machine": _machine(bandwidths), "precision": precision, "repeats": repeats, "seed": seed,
        "merge": [m if isinstance(m, str) else {True: "on", False: "off"}[m] for m in merge],
        "engines": [run.label for run in runs],
        "floor_constants": {}, "cells": [],
    }
    honest = HonestFloors(floor_constants_from, bandwidth_gbs=bandwidth_gbs, log=log)
    def generated(neurons: int, layers: int) -> Callable[[], BenchData]:
        def make() -> BenchData:
            log(f"cell {neurons}x{layers}: preparing data (generated, seed {seed}, cached)")
            t0 = time.perf_counter()
            network, features, truth, info = cached_challenge(neurons, layers, seed=seed, samples=samples,
                                                              progress=progress)
            network = materialized(network)
            return BenchData(network, features, truth, {"kind": "generated", "seed": seed, "truth_from": info},
                             time.perf_counter() - t0)
        return make

    jobs = [(lambda given=given: given) for given in data] + [generated(n, layers) for n, layers in cells]
    for job in jobs:
        given = job()
        network, features, truth = materialized(given.network), given.features, np.asarray(given.truth)
        neurons, layers = network.inputs, network.depth
        alive_inputs = int(np.count_nonzero(np.diff(features.indptr)))
        nonzeros = None                                     # the layers' nnz, for engines that do not report
        cell: dict[str, Any] = {
            "source": given.source, "neurons": neurons, "layers": layers, "samples": int(features.shape[0]),
            "edges": network.edges, "data_seconds": given.seconds, "alive_inputs": alive_inputs,
            "categories_count": int(len(truth)), "truth_info": given.source.get("truth_from"),
            "published": PUBLISHED.get((neurons, layers)), "survivors": None, "engines": {},
        }
        for run in runs:
            engine = get_engine(run.engine, precision=precision, **run.options)
            timing = time_engine(engine, network, features, repeats, progress=progress,
                                 desc=f"{neurons}x{layers} {run.label}")
            timed = timing.results
            median = timing.median_seconds
            checks = [compare_categories(res.categories, truth) for res in [timing.warmup, *timed]]
            bad = next((c for c in checks if not c.passed), checks[0])
            last = timed[-1]
            rows_computed = last.extra.get("rows_computed")
            device = engine_device(run.engine)
            floor = floor_estimate(last.survivors, alive_inputs=alive_inputs, neurons=neurons,
                                   bytes_per_value=bytes_per_value, edges=network.edges,
                                   bandwidth_gbs=bandwidths[device]["gbs"],
                                   launch_latency_s=(LAUNCH_LATENCY_S[device] if launch_latency_s is None
                                                     else launch_latency_s),
                                   device=device, rows_computed=rows_computed)
            if nonzeros is None and not {"adds_per_row", "weight_bytes"} <= set(last.extra):
                from .floor import layer_nonzeros

                nonzeros = layer_nonzeros(network)
            entry = {
                "engine": run.engine, "merge": run.merge, "times": timing.seconds, "median_seconds": median,
                "teraedges_per_second": last.samples * network.edges / median / 1e12 if median > 0 else None,
                "preprocess_seconds": timing.warmup.preprocess_seconds,
                "repeats": [{"seconds": res.inference_seconds, "passed": c.passed,
                             "categories_count": int(len(res.categories)),
                             "rows_computed": res.extra.get("rows_computed")}
                            for res, c in zip(timed, checks[1:])],
                "passed": all(c.passed for c in checks), "categories_count": int(len(last.categories)),
                "missing": bad.missing, "extra": bad.extra, "survivors": last.survivors,
                "rows_computed": rows_computed, "floor": None, "floor_ratio": None, "floor_check": None,
                "floor_v1": floor.to_dict(), "floor_ratio_v1": median / floor.seconds,
                "extra_info": last.extra,
            }
            cell["engines"][run.label] = entry
            if cell["survivors"] is None and entry["passed"]:
                cell["survivors"] = [int(s) for s in last.survivors]
            honest.add(f"cell {neurons}x{layers}: {run.label}", entry, device, network.widths,
                       survivors=last.survivors, alive_inputs=alive_inputs, extra=last.extra,
                       bytes_per_value=bytes_per_value, precision=precision, nonzeros=nonzeros)
            log(f"cell {neurons}x{layers}: {run.label} median {median:.4g} s, x{entry['floor_ratio_v1']:.2f} "
                f"floor v1 ({'PASS' if entry['passed'] else 'FAIL'})")
            del engine, timing, timed, last
            release_device_memory()      # the next engine or cell gets this one's device memory
        report["cells"].append(cell)
        report["passed"] = all(e["passed"] for c in report["cells"] for e in c["engines"].values())
        if checkpoint is not None:
            checkpoint(report)
    constants = honest.resolve()
    report["floor_constants"] = {device: c.to_dict() for device, c in constants.items()}
    report["passed"] = all(e["passed"] for c in report["cells"] for e in c["engines"].values())
    if checkpoint is not None:
        checkpoint(report)
    return report


def plot_format(path: str | os.PathLike) -> str:
    """The image format of a plot file, from its extension (``.png``, ``.pdf``, ``.svg``, ...).

    Raises :class:`~spdnn.errors.OptionError` for an extension matplotlib cannot write
    (checked before a benchmark runs), :class:`SpdnnError` when matplotlib is missing.
    """
    plt = require_matplotlib()
    supported = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in supported:
        raise OptionError(f"plot={os.fspath(path)!r}: unknown image extension {('.' + suffix) if suffix else '(none)'}; "
                          f"expected one of {', '.join('.' + k for k in sorted(supported))}")
    return suffix


def write_plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save a PNG: TeraEdges/s per cell and engine (left), median time against the floor (right).

    Raises :class:`SpdnnError` when matplotlib is missing.
    """
    plt = require_matplotlib()
    path = Path(path)
    labels = [f"{c['neurons']}x{c['layers']}" for c in report["cells"]]
    engines = report["engines"]
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(engines))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 2.5 * len(labels) + 4), 4.5))
    for i, name in enumerate(engines):
        teps = [c["engines"][name]["teraedges_per_second"] or 0.0 for c in report["cells"]]
        secs = [c["engines"][name]["median_seconds"] for c in report["cells"]]
        ax1.bar(x + i * width, teps, width, label=name)
        ax2.bar(x + i * width, secs, width, label=name)
    floors = [min(e["floor"]["seconds"] for e in c["engines"].values()) for c in report["cells"]]
    ax2.scatter(x + width * (len(engines) - 1) / 2, floors, marker="_", s=600, color="black", label="floor",
                zorder=3)
    for ax, title, unit in ((ax1, "throughput", "TeraEdges/s"), (ax2, "inference time (median)", "seconds")):
        ax.set_xticks(x + width * (len(engines) - 1) / 2, labels)
        ax.set_xlabel("N x L")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize="small")
    ax2.set_yscale("log")
    machine = report["machine"].get("gpu") or report["machine"]["processor"]
    fig.suptitle(f"spdnn bench, {report['precision']}, {machine}", fontsize="medium")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=plot_format(path))
    except SpdnnError:
        raise
    except OSError as exc:
        raise SpdnnError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
    return path
