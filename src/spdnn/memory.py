"""How much memory each job needs, stated before it starts: generate, read, run.

A model, part by part, of the peak bytes of the three jobs on a network of N neurons,
L layers and S samples (each layer has 32 N edges; the official inputs have about 10%
of their N features set, :func:`features_nnz`); for a general network
(:func:`estimate_network_run`) the activations use its widest layer and the weights its
own size::

    generate   the generator's Fourier resampling (min(28, s) / 2 long rows of
               s x 60,000 complex numbers, s = sqrt(N)) with the features it makes,
               then the float64 truth (a cpu run in fp64 over those features)
    read       the streaming reader: a few 32 MB text blocks in flight, one layer
               parsed, one block of feature lines; nothing grows with L or S
    run        host: the features (int32 ids; values of 1 cost nothing), the engine's
               activations and weights. cpu engine: layers converted and kept
               while all of them take at most 4 GiB (else converted per use), then
               a copy of the features (the batch ``Engine.run`` slices out of them),
               the larger of two phases: the copies its ``load`` makes of the
               feature values, and the layer loop's two dense buffers of batch x N
               values (batch: 1 GiB a buffer by default); with several batches, the
               rows still alive after each (about 3.4% of the official inputs). cuda engine,
               on the device: 2 buffers x rows x N x itemsize of activations (plus 44
               bytes a row of bookkeeping) and 2 bytes an edge of weights
               (the official uniform values cost no bytes), streamed when they do not fit.

:func:`check_run` compares a run's need with the memory available here and, for the
cpu engine, picks the largest batch that fits; :func:`check_generate` does the same for
the generator. A job that cannot fit stops before it starts with
:class:`~spdnn.errors.MemoryLimitError` instead of being killed by the operating system;
one that may not fit is warned about. The figures follow the engines' and the reader's
own policies and were checked against measured peaks (README, "Memory"); they are
estimates within about 15% (:data:`TOLERANCE`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .engines import cpu as _cpu
from .errors import MemoryLimitError, format_bytes
from .network import OFFICIAL_SAMPLES
from .options import check_precision, optional_positive_int, positive_int

__all__ = ["Estimate", "features_nnz", "estimate_generate", "estimate_read", "estimate_run", "cpu_batch_rows",
           "estimate_network_run", "network_weight_bytes",
           "host_available_bytes", "check_fits", "check_run", "check_generate", "memory_table", "TOLERANCE",
           "SURVIVING_FRACTION", "FAN", "REPEATS", "GIB"]

GIB = 1 << 30
#: Edges per neuron of every RadiX-Net and official layer (nonzeros per row and column).
FAN = 32
#: Copies of each distinct column in a challenge layer (RadiX-Net: N/16 distinct columns,
#: docs/challenge.md, Generator); both engines sum each distinct column once.
REPEATS = 16
#: Official total input nonzeros (60,000 samples), docs/challenge.md, Formats.
OFFICIAL_FEATURES_NNZ = {1024: 6_374_505, 4096: 25_019_051, 16384: 98_858_913, 65536: 392_191_985}
#: Fraction of features set in an input, other N (the official ones lie in 0.0997..0.1037).
FEATURE_DENSITY = 0.104

# The reader (formats.text.CHUNK_BYTES blocks; two read ahead for gzip, one parsed, one carried).
_TEXT_BLOCK = 32 << 20
_BLOCKS_IN_FLIGHT = 4
# Bytes a parsed layer entry costs at its peak: 1-based ids and value (16), the CSR
# (int32 ids, float64 values: 12) and its conversion from column order (12), sort keys (8).
_LAYER_ENTRY_PEAK = 48
# Feature lines per text block (``12345\t678\t1\n``: about 12 bytes) and their parsed size.
_FEATURE_LINE_BYTES = 12
_FEATURE_ENTRY_PEAK = 16 + 8
# Interpreter, numpy/scipy/numba, compiled kernels.
_BASELINE = 350 << 20

# The cpu engine's constants are its own (engines/cpu.py): one activation buffer, the
# size under which converted layers are kept, a kept edge. Its load checks isfinite (one
# byte a value); the magnitude range is taken in chunks.
_CPU_LOAD_BYTES_PER_NNZ = 1
#: Fraction of the samples alive after the last layer (official inputs: 1,812..1,994 of
#: 60,000); the cpu engine keeps their rows from batch to batch.
SURVIVING_FRACTION = 0.034
# The cuda engine (engines/cuda/engine.py): device bytes a row beyond its activations; bytes an edge.
_CUDA_ROW_EXTRA = 4 * 8 + 2 * 12
_CUDA_EDGE_BYTES = 2


@dataclass(frozen=True)
class Estimate:
    """Peak bytes of one job, by part.

    Attributes
    ----------
    job : str
        'generate', 'read' or 'run'.
    host, device : dict of str to int
        Bytes of each part at the job's peak (device: empty for host-only jobs).
    notes : dict
        What the figures assume (batch rows, whether layers are kept, ...).
    """

    job: str
    host: dict
    device: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    @property
    def host_bytes(self) -> int:
        """Peak host (resident) bytes."""
        return int(sum(self.host.values()))

    @property
    def device_bytes(self) -> int:
        """Peak device bytes (0 for host-only jobs)."""
        return int(sum(self.device.values()))

    def describe(self) -> str:
        """One line: total and the parts of 1 MiB or more, e.g. ``host 3.1 GiB (activations 2 GiB, ...)``."""
        def side(name: str, parts: dict) -> str:
            shown = sorted(((v, k) for k, v in parts.items() if v >= 1 << 20), reverse=True)
            inner = ", ".join(f"{k} {format_bytes(v)}" for v, k in shown)
            return f"{name} {format_bytes(sum(parts.values()))}" + (f" ({inner})" if inner else "")
        text = side("host", self.host)
        return text + ("; " + side("device", self.device) if self.device else "")

    def to_dict(self) -> dict:
        """JSON-ready: job, host_bytes, device_bytes, the parts and the notes."""
        return {"job": self.job, "host_bytes": self.host_bytes, "device_bytes": self.device_bytes,
                "host": dict(self.host), "device": dict(self.device), "notes": dict(self.notes)}


def _samples(samples) -> int:
    return OFFICIAL_SAMPLES if samples is None else positive_int(samples, "samples")


def features_nnz(neurons: int, samples: int | None = None) -> int:
    """Input nonzeros of S samples at N: the official count scaled to S, else S x N x 0.104."""
    neurons = positive_int(neurons, "neurons")
    s = _samples(samples)
    if neurons in OFFICIAL_FEATURES_NNZ:
        return math.ceil(OFFICIAL_FEATURES_NNZ[neurons] * s / OFFICIAL_SAMPLES)
    return math.ceil(s * neurons * FEATURE_DENSITY)


def _itemsize(precision: str) -> int:
    return 8 if check_precision(precision) == "fp64" else 4


def cpu_batch_rows(neurons: int, precision: str = "fp32", *, buffer_bytes: int | None = None) -> int:
    """Rows of one cpu-engine batch: what fits ``buffer_bytes`` a buffer (default the
    engine's :data:`spdnn.engines.cpu.BUFFER_BYTES`; at least its ``MIN_BATCH``).
    ``neurons``: the widest of the network's widths (N of the challenge)."""
    buffer_bytes = _cpu.BUFFER_BYTES if buffer_bytes is None else buffer_bytes
    return max(_cpu.MIN_BATCH, buffer_bytes // (positive_int(neurons, "neurons") * _itemsize(precision)))


def estimate_read(neurons: int, layers: int, samples: int | None = None) -> Estimate:
    """Peak host bytes of reading an official-layout problem with the streaming reader (cache empty).

    Independent of L and S: one layer and one block of feature lines at a time. The
    features mapped from the cache afterwards are counted by :func:`estimate_run`.
    """
    n = positive_int(neurons, "neurons")
    positive_int(layers, "layers")
    _samples(samples)
    layer = FAN * n * _LAYER_ENTRY_PEAK + (n + 1) * 8 * 2
    feature_block = (_TEXT_BLOCK // _FEATURE_LINE_BYTES) * _FEATURE_ENTRY_PEAK
    host = {"baseline": _BASELINE, "text blocks": _BLOCKS_IN_FLIGHT * _TEXT_BLOCK,
            "parsing": max(layer, feature_block)}
    return Estimate("read", host)


def estimate_run(neurons: int, layers: int, samples: int | None = None, *, engine: str = "cpu",
                 precision: str = "fp32", nnz: int | None = None, values: bool = False,
                 batch_samples: int | None = None, layers_in_memory: bool = False, widest: int | None = None,
                 weight_bytes: int | None = None) -> Estimate:
    """Peak bytes of ``spdnn run`` once the data are read (features mapped from the cache).

    The challenge's square layers by default; a general network (:func:`estimate_network_run`)
    gives its ``widest`` layer and the bytes of its weights.

    Parameters
    ----------
    neurons, layers : int
        N and L (32 N edges a layer).
    samples : int, optional
        S (default 60,000).
    engine : {'cpu', 'cuda', 'reference', ...}
        Engines other than cpu and cuda are modelled as the reference (scipy, sparse
        activations: up to three S x N matrices of int32 ids and values).
    precision : {'fp32', 'fp64'}
    nnz : int, optional
        Input nonzeros (default :func:`features_nnz`).
    values : bool
        Whether the features store values (not all 1).
    batch_samples : int, optional
        The cpu engine's batch (default: its own, :data:`spdnn.engines.cpu.BUFFER_BYTES` a buffer).
    layers_in_memory : bool
        The network's layers are a list of float64 CSR matrices (12 bytes an edge), not
        mapped from the cache or made on demand; the cpu engine then keeps every layer.
    widest : int, optional
        The widest of the network's widths (default N): a row of activations holds this
        many values in the engines' buffers.
    weight_bytes : int, optional
        Bytes of the network's weights as held in float64 (default: the challenge's
        32 N L edges at 12 bytes) and, converted, by the engine (the cpu engine keeps
        them at about the same size; default: RadiX-Net's N/16 distinct columns).
    """
    n = positive_int(neurons, "neurons")
    depth = positive_int(layers, "layers")
    wide = n if widest is None else positive_int(widest, "widest")
    s = _samples(samples)
    f = features_nnz(n, s) if nnz is None else int(nnz)
    item = _itemsize(precision)
    edges = FAN * n * depth
    host = {"baseline": _BASELINE, "features": f * (4 + (8 if values else 0)) + (s + 1) * 8}
    if layers_in_memory:
        host["network"] = edges * 12 if weight_bytes is None else int(weight_bytes)
    device: dict = {}
    notes: dict = {"samples": s, "features_nnz": f, "edges": edges, "widest": wide}
    if engine == "cpu":
        batch = min(s, optional_positive_int(batch_samples, "batch_samples") or cpu_batch_rows(wide, precision))
        kept = layers_in_memory or edges * (4 + item) <= _cpu.LAYER_CACHE_BYTES
        # a kept layer: its distinct columns' entries (int32 ids) and the int32 map of outputs
        distinct_layer = FAN * n // REPEATS * _cpu.KEPT_EDGE_BYTES + 4 * n
        if weight_bytes is not None:
            host["weights"] = int(weight_bytes)          # converted to the engine's dtype: at most as large
        else:
            host["weights"] = depth * distinct_layer if kept else 2 * FAN * n * (4 + item)
        if s > batch:
            host["features copy"] = batch * (f // s + 1) * (4 + 8)   # Engine.run slices a batch out
        load, infer = f * _CPU_LOAD_BYTES_PER_NNZ, 2 * batch * wide * item     # two phases, one after the other
        host["engine load" if load > infer else "activations"] = max(load, infer)
        if s > batch:
            host["survivors"] = math.ceil(s * SURVIVING_FRACTION) * wide * item
        notes.update(batch_samples=batch, batches=-(-s // batch), layers_kept=kept,
                     peak="engine load" if load > infer else "layer loop")
    elif engine == "cuda":
        host["staging"] = f * (4 + item) + s * 8
        device["weights"] = depth * (FAN * n // REPEATS * _CUDA_EDGE_BYTES + 2 * n)   # + 16-bit out_map
        device["activations"] = s * (2 * wide * item + _CUDA_ROW_EXTRA)
    else:
        host["activations"] = 3 * s * wide * (4 + item)
        host["weights"] = edges * (4 + item) * 2 if weight_bytes is None else 2 * int(weight_bytes)
    return Estimate("run", host, device, notes)


def estimate_generate(neurons: int, layers: int, samples: int | None = None) -> Estimate:
    """Peak host bytes of ``spdnn generate`` (features, fp64 truth on the cpu engine, files).

    The largest of its phases: the Fourier resampling with the feature ids collected
    so far, and the truth run over the finished features.
    """
    n = positive_int(neurons, "neurons")
    depth = positive_int(layers, "layers")
    s = _samples(samples)
    side = math.isqrt(n)
    images = OFFICIAL_SAMPLES           # the transform spans every MNIST image, whatever S
    f = features_nnz(n, s)
    # generate.features: hr = min(28, s) / 2 long rows of s * 60,000 complex numbers, and the result
    resample = {"baseline": _BASELINE, "long rows": 16 * (min(28, side) // 2) * side * images,
                "features": f * (4 + 8)}
    truth = estimate_run(n, depth, s, engine="cpu", precision="fp64", nnz=f)
    truth_host = {**truth.host, "features": f * (4 + 8) + (s + 1) * 8}
    host = resample if sum(resample.values()) >= sum(truth_host.values()) else truth_host
    return Estimate("generate", host, notes={"phase": "features" if host is resample else "truth",
                                             "features_nnz": f})


def host_available_bytes() -> int:
    """Bytes this process may still use: MemAvailable, capped by a cgroup limit if any."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):  # pragma: no cover - no sysconf
            available = 1 << 62
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit.isdigit() and int(limit) < 1 << 60:
                available = min(available, int(limit) - int(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return max(int(available), 0)


#: Relative error of the estimates: a job is refused only when even its estimate less
#: this much exceeds what is available, and warned about when its estimate exceeds it.
TOLERANCE = 0.15


def check_fits(estimate: Estimate, what: str, *, available: int | None = None, advice: str = "") -> None:
    """Refuse a job that cannot fit the host memory available now; warn when it may not.

    Raises
    ------
    MemoryLimitError
        ``estimate.host_bytes * (1 - TOLERANCE)`` exceeds ``available`` (default
        :func:`host_available_bytes`): the message names the job, both figures, the
        largest parts and ``advice``.
    """
    import warnings

    from .errors import SpdnnWarning

    available = host_available_bytes() if available is None else int(available)
    need = estimate.host_bytes
    text = (f"{what} needs about {format_bytes(need)} of host memory and {format_bytes(available)} is available now "
            f"({estimate.describe()})")
    if need * (1 - TOLERANCE) > available:
        raise MemoryLimitError(text + (f"; {advice}" if advice else ""))
    if need > available:
        warnings.warn(text + "; it may not fit", SpdnnWarning, stacklevel=2)


def network_weight_bytes(network) -> int:
    """Bytes of a network's weights as held (float64 CSR: 12 bytes an entry and 8 a row
    pointer; a dense layer 8 bytes an entry)."""
    total = 0
    for k in range(network.depth):
        w = network.layers[k]
        total += w.size * 8 if network.is_dense(k) else w.nnz * 12 + (w.shape[0] + 1) * 8
    return int(total)


def estimate_network_run(network, samples: int, *, engine: str = "cpu", precision: str = "fp32",
                         nnz: int | None = None, values: bool = True,
                         batch_samples: int | None = None) -> Estimate:
    """:func:`estimate_run` of ``network`` (any :class:`~spdnn.network.Network`): the
    challenge's model for a network of its form, else the widest layer's buffers and the
    network's own weights (:func:`network_weight_bytes`)."""
    if network.challenge_form:
        return estimate_run(network.neurons, network.depth, samples, engine=engine, precision=precision, nnz=nnz,
                            values=values, batch_samples=batch_samples,
                            layers_in_memory=isinstance(network.layers, list))
    return estimate_run(network.inputs, network.depth, samples, engine=engine, precision=precision, nnz=nnz,
                        values=values, batch_samples=batch_samples, layers_in_memory=True,
                        widest=max(network.widths), weight_bytes=network_weight_bytes(network))


def check_run(neurons: int, layers: int, samples: int, *, engine: str, precision: str, nnz: int,
              values: bool = False, layers_in_memory: bool = False, available: int | None = None,
              batch_samples: int | None = None, widest: int | None = None,
              weight_bytes: int | None = None) -> tuple[Estimate, dict]:
    """Whether a run fits the host memory available now; the engine options that make it fit.

    For the cpu engine the batch is made as large as fits (at most its default); other
    engines are checked as they are (the cuda engine plans its own device memory).
    Parameters are those of :func:`estimate_run` (``widest`` and ``weight_bytes`` for a
    general network); ``available`` defaults to :func:`host_available_bytes`.

    Returns
    -------
    (Estimate, options)
        The estimate of the run as it will be made, and engine options to pass
        (``{"batch_samples": B}`` when the cpu engine must batch smaller, else ``{}``).

    Raises
    ------
    MemoryLimitError
        Even the smallest batch cannot fit (see :func:`check_fits`).
    """
    available = host_available_bytes() if available is None else int(available)
    kwargs = {"engine": engine, "precision": precision, "nnz": nnz, "values": values,
              "layers_in_memory": layers_in_memory, "widest": widest, "weight_bytes": weight_bytes}
    est = estimate_run(neurons, layers, samples, batch_samples=batch_samples, **kwargs)
    options: dict = {}
    if est.host_bytes > available and engine == "cpu" and batch_samples is None and "activations" in est.host:
        fixed = est.host_bytes - est.host["activations"]
        rows = int(min((available - fixed) // (2 * est.notes["widest"] * _itemsize(precision)),
                       est.notes["batch_samples"]))
        if rows >= _cpu.MIN_BATCH:
            options["batch_samples"] = rows
            est = estimate_run(neurons, layers, samples, batch_samples=rows, **kwargs)
    check_fits(est, f"a run of N={neurons}, L={layers}, {samples:,} samples on the {engine} engine ({precision})",
               available=available, advice="use fewer samples (--samples), another engine or a larger machine")
    return est, options


def check_generate(neurons: int, layers: int, samples: int | None = None, *, available: int | None = None) -> Estimate:
    """:func:`check_fits` for ``spdnn generate`` (and the first run of generated data); returns the estimate."""
    est = estimate_generate(neurons, layers, samples)
    check_fits(est, f"generating N={neurons}, L={layers}", available=available,
               advice="generate on a larger machine and copy the files, or use fewer samples (--samples)")
    return est


def memory_table(sizes=((1024, 120), (4096, 120), (16384, 120), (65536, 120), (65536, 1920)), *,
                 precision: str = "fp32") -> list[dict]:
    """Rows for ``spdnn info`` and the README: peak host bytes of generate, read and a cpu
    run, and device bytes of a cuda run, for each (N, L) of 60,000 samples."""
    rows = []
    for n, depth in sizes:
        rows.append({"neurons": n, "layers": depth,
                     "generate_host_bytes": estimate_generate(n, depth).host_bytes,
                     "read_host_bytes": estimate_read(n, depth).host_bytes,
                     "run_cpu_host_bytes": estimate_run(n, depth, precision=precision).host_bytes,
                     "run_cuda_device_bytes": estimate_run(n, depth, engine="cuda",
                                                          precision=precision).device_bytes})
    return rows
