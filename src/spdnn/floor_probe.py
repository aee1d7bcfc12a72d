"""Measure the floor's constants on a device (:class:`spdnn.floor.FloorConstants`).

GPU (:func:`measure_gpu`, CuPy; kernels in ``floor_probe.cu``, compiled at run time):

* ``bandwidth_gbs``: the faster of :func:`spdnn.bench.gpu_copy_gbs` (a 1 GiB CuPy copy)
  and ``probe_copy`` over the same footprint (loads and stores bypassing L1);
* ``cache_bandwidth_gbs``: ``probe_copy`` repeated over a footprint of a quarter and of an
  eighth of L2 (the faster), ``cache_bytes`` the L2 size the device reports;
* ``add_per_s``: every thread eight independent chains of fp32 (fp64) adds, the chip full;
* ``block_barrier_s``: a chain of ``__syncthreads`` exchanging a shared word, one block a
  multiprocessor, the fastest of 128..1024 threads a block;
* ``cluster_barrier_s``: a chain of cluster barriers exchanging a word through
  distributed shared memory, clusters of 2, 4 and 8 blocks (sm_90; absent elsewhere);
* ``grid_barrier_s``: the faster of cooperative groups' ``grid.sync()`` (cooperative
  launch) and an atomic counter barrier, one block a multiprocessor;
* ``launch_s``: a chain of full-grid kernels (one block a multiprocessor) captured in a
  CUDA graph, each reading what the previous one wrote.

Every chain runs one warm-up launch and ``repeats`` timed launches (CUDA events); the
median over the steps is kept. A part the runtime cannot build or run (no cluster
support, no cooperative-groups headers) is recorded in ``details['unavailable']`` and its
constant stays None. About two to five seconds, most of it compiling.

CPU (:func:`measure_host`): the parallel host copy of :func:`spdnn.bench.host_bandwidth_gbs`,
far beyond and within the last-level cache (its size from sysfs); barriers, parallel
regions and adds are not measured (None: their terms are left out of the floor).
"""
from __future__ import annotations

import datetime as _dt
import statistics
from pathlib import Path
from typing import Any

from .floor import FloorConstants

__all__ = ["PROBE_SOURCE", "measure_gpu", "measure_host", "probe_source"]

PROBE_SOURCE = Path(__file__).with_name("floor_probe.cu")

#: Steps of each chain (long enough, milliseconds, that a launch's own cost is under 1% of
#: it: a constant measured too slow would raise the floor).
BARRIER_STEPS = 100_000
GRID_STEPS = 20_000
GRAPH_STEPS = 2_000
ADD_STEPS = 16_384
BLOCK_SIZES = (128, 256, 512, 1024)
CLUSTER_SIZES = (2, 4, 8)


def probe_source() -> str:
    """The CUDA source of the probes."""
    return PROBE_SOURCE.read_text()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def measure_host(*, bandwidth_gbs: float | None = None) -> FloorConstants:
    """Constants of the host: copy bandwidth (measured unless ``bandwidth_gbs`` is given) and
    last-level cache size (the rest unmeasured)."""
    from .bench import cpu_model, host_bandwidth_gbs

    cache = 0
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
        digits = size.rstrip("KMG")
        if digits.isdigit():
            cache = max(cache, int(digits) * scale)
    gbs = host_bandwidth_gbs() if bandwidth_gbs is None else float(bandwidth_gbs)
    # within the cache: a copy whose source and destination fill a quarter of it
    cache_gbs = host_bandwidth_gbs(megabytes=max(1, cache // 8 // 2**20), repeats=20) if cache else None
    return FloorConstants(device="cpu", name=cpu_model(), bandwidth_gbs=gbs, cache_bytes=cache,
                          cache_bandwidth_gbs=cache_gbs,
                          details={"measured": _now(), "how": "parallel host copies (beyond and within the cache; "
                                                              "cache size: sysfs, largest level); barriers, "
                                                              "launches and adds not measured"})


class _Timer:
    """Median seconds of a callable's device work, by CUDA events (one warm-up call first)."""

    def __init__(self, cp, repeats: int):
        self.cp, self.repeats = cp, repeats

    def __call__(self, fn) -> float:
        cp = self.cp
        fn()
        cp.cuda.Device().synchronize()
        times = []
        for _ in range(self.repeats):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
        return float(statistics.median(times))


def _module(cp, define: str | None):
    options = ("-std=c++17",) + ((f"-D{define}",) if define else ())
    return cp.RawModule(code=probe_source(), options=options)


def measure_gpu(*, repeats: int = 5, log=None) -> FloorConstants:
    """Measure the constants of the current CUDA device (module docstring)."""
    from .bench import gpu_copy_gbs
    from .engines._cupy import cupy

    import numpy as np

    log = log or (lambda line: None)
    cp = cupy("floor probe")
    dev = cp.cuda.Device()
    attrs = dev.attributes
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    sms = int(attrs["MultiProcessorCount"])
    l2 = int(attrs.get("L2CacheSize", props.get("l2CacheSize", 0)))
    timer = _Timer(cp, repeats)
    details: dict[str, Any] = {"measured": _now(), "sms": sms, "l2_bytes": l2, "repeats": repeats,
                               "cupy": cp.__version__, "unavailable": {}}
    main = _module(cp, None)

    # ---- bandwidth: device memory, then within L2
    def copy_gbs(nbytes: int, reps: int) -> float:
        n4 = max(nbytes // 16, 1)
        src = cp.ones(n4 * 4, dtype=cp.float32)
        dst = cp.empty_like(src)
        kernel = main.get_function("probe_copy")
        blocks = sms * 8
        seconds = timer(lambda: kernel((blocks,), (256,), (src, dst, np.int64(n4), np.int32(reps))))
        return 2 * n4 * 16 * reps / seconds / 1e9

    cupy_copy = gpu_copy_gbs(megabytes=1024, repeats=max(repeats, 3))
    probe_hbm = copy_gbs(2**30, 1)
    details["bandwidth"] = {"cupy_copy_1GiB": cupy_copy, "probe_copy_1GiB": probe_hbm}
    bandwidth = max(cupy_copy, probe_hbm)
    log(f"floor probe: device memory {bandwidth:.0f} GB/s")
    cache_gbs = None
    if l2 > 0:
        within = {f"footprint_{l2 // d}": copy_gbs(l2 // d // 2, 500) for d in (4, 8)}
        details["cache_bandwidth"] = within
        cache_gbs = max(within.values())
        log(f"floor probe: L2 ({l2 // 2**20} MiB) {cache_gbs:.0f} GB/s")

    # ---- add throughput
    adds = {}
    blocks, threads = sms * 8, 256
    for precision, kname, dtype in (("fp32", "probe_add_f32", np.float32), ("fp64", "probe_add_f64", np.float64)):
        out = cp.empty(blocks * threads, dtype=dtype)
        kernel = main.get_function(kname)
        seconds = timer(lambda: kernel((blocks,), (threads,), (np.int32(ADD_STEPS), dtype(1e-7), out)))
        adds[precision] = blocks * threads * 8 * ADD_STEPS / seconds
    log(f"floor probe: adds fp32 {adds['fp32'] / 1e12:.1f} T/s, fp64 {adds['fp64'] / 1e12:.1f} T/s")

    # ---- block barriers
    out = cp.empty(sms * 1024, dtype=cp.int32)
    kernel = main.get_function("probe_block_barrier")
    by_threads = {str(t): timer(lambda t=t: kernel((sms,), (t,), (np.int32(BARRIER_STEPS), out))) / BARRIER_STEPS
                  for t in BLOCK_SIZES}
    details["block_barrier_by_threads"] = by_threads
    block = min(by_threads.values())
    log(f"floor probe: block barrier {block * 1e9:.1f} ns")

    # ---- cluster barriers (sm_90)
    clusters = {}
    try:
        cmod = _module(cp, "SPDNN_PROBE_CLUSTER")
        for size in CLUSTER_SIZES:
            kernel = cmod.get_function(f"probe_cluster_barrier_{size}")
            grid = max(size, sms // size * size)
            clusters[str(size)] = timer(
                lambda: kernel((grid,), (256,), (np.int32(BARRIER_STEPS), out))) / BARRIER_STEPS
        log("floor probe: cluster barrier " + ", ".join(f"{k}: {v * 1e9:.1f} ns" for k, v in clusters.items()))
    except Exception as exc:  # no sm_90, or the runtime cannot launch clusters
        details["unavailable"]["cluster_barrier"] = f"{type(exc).__name__}: {exc}"[:500]

    # ---- grid barriers: atomic counter and cooperative groups
    words = cp.zeros(2 * sms, dtype=cp.int32)
    counter = cp.zeros(1, dtype=cp.uint32)
    grid_variants = {}
    kernel = main.get_function("probe_grid_barrier")

    def atomic():
        counter.fill(0)
        _cooperative(kernel, (sms,), (128,), (np.int32(GRID_STEPS), counter, words, out))

    # the counter's reset (a small fill) is timed with the chain: far less than its GRID_STEPS barriers
    grid_variants["atomic"] = timer(atomic) / GRID_STEPS
    try:
        gmod = _module(cp, "SPDNN_PROBE_CG")
        gkernel = gmod.get_function("probe_grid_sync")
        grid_variants["grid.sync"] = timer(
            lambda: _cooperative(gkernel, (sms,), (128,), (np.int32(GRID_STEPS), words, out), required=True)
        ) / GRID_STEPS
    except Exception as exc:  # cooperative-groups headers or cooperative launch missing
        details["unavailable"]["grid.sync"] = f"{type(exc).__name__}: {exc}"[:500]
    details["grid_barrier"] = grid_variants
    grid_barrier = min(grid_variants.values())
    log("floor probe: grid barrier " + ", ".join(f"{k}: {v * 1e6:.2f} us" for k, v in grid_variants.items()))

    # ---- kernels launched from a CUDA graph
    launches = {}
    step = main.get_function("probe_graph_step")
    for label, blocks_ in (("full_grid", sms), ("one_block", 1)):
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            for i in range(GRAPH_STEPS):
                step((blocks_,), (32,), (words, np.int32(i & 1)))
            graph = stream.end_capture()
        launches[label] = timer(lambda: graph.launch(cp.cuda.get_current_stream())) / GRAPH_STEPS
    details["graph_launch"] = launches
    log("floor probe: graph launch " + ", ".join(f"{k}: {v * 1e6:.2f} us" for k, v in launches.items()))
    details["how"] = ("chains of dependent steps timed by CUDA events, median of the repeats; "
                      "see spdnn.floor_probe")
    return FloorConstants(device="gpu", name=name, bandwidth_gbs=float(bandwidth), cache_bytes=l2,
                          cache_bandwidth_gbs=cache_gbs, add_per_s=adds, block_barrier_s=float(block),
                          cluster_barrier_s=clusters, grid_barrier_s=float(grid_barrier),
                          launch_s=float(launches["full_grid"]), details=details)


def _cooperative(kernel, grid, block, args, *, required: bool = False):
    """Launch cooperatively (every block resident) where this CuPy can; else plainly, unless
    ``required`` (grid.sync() needs the cooperative launch)."""
    try:
        kernel(grid, block, args, enable_cooperative_groups=True)
    except TypeError:
        if required:
            raise
        kernel(grid, block, args)
