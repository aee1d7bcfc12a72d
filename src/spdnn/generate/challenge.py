"""A whole challenge instance, generated offline: network, features and float64 truth.

* :func:`generate_challenge` builds it in memory (truth from an engine in float64 mode),
* :func:`write_challenge` writes it in the official file layout (docs/challenge.md, Formats),
* :func:`cached_challenge` keeps features and truth under ``cache_dir()/generated`` so
  that ``spdnn run`` without ``--data`` pays for generation only once.

The truth is what the float64 reference computes (docs/challenge.md, Numerics); for speed any
engine in its float64 mode may stand in for it, since the fp64 exactness contract makes
them equal bit for bit. ``info`` records which engine and precision produced it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._atomic import atomic_write_bytes
from .._progress import progress_bar
from ..config import cache_dir
from ..errors import DISK_FULL_ERRNOS, DiskFullError, FormatError, OptionError, SpdnnWarning
from ..formats.npz import read_features_npz, write_features_npz
from ..engines._cupy import release_device_memory
from ..network import Network
from ..options import optional_positive_int, positive_int
from . import mnist as _mnist
from ._files import Staging, cache_session
from .features import challenge_features, features_device
from .radixnet import FAN, check_neurons, default_bias, radixnet_network

__all__ = ["generate_challenge", "write_challenge", "cached_challenge", "compute_truth", "ChallengeFiles",
           "GENERATOR_VERSION", "FEATURES_GZIP_LEVEL", "layer_file_bytes", "store_cached_features"]

#: Bumped whenever generated data would change; part of every cache key and of ``info``.
#: 1: later layers permuted rows and columns; 2: rows only, as the official layers.
GENERATOR_VERSION = 2


def _version() -> str:
    from .. import __version__

    return __version__


def _quiet(message: str) -> None:
    """The default ``log``: say nothing."""


def _truth_engine(name: str, progress: bool | None):
    """An engine in fp64 mode; 'auto' is :func:`spdnn.engines.fastest_exact_engine` (cuda
    where a GPU is usable, else cpu, else reference)."""
    from ..engines import fastest_exact_engine, get_engine

    return get_engine(fastest_exact_engine() if name == "auto" else name, precision="fp64",
                      progress=bool(progress))


def compute_truth(network: Network, features: sp.csr_matrix, *, engine: str = "auto",
                  progress: bool | None = None) -> tuple[np.ndarray, str]:
    """The categories of ``features`` through ``network`` in float64.

    Parameters
    ----------
    network : Network
    features : csr_matrix (samples, N)
    engine : str
        An engine name run with ``precision='fp64'``; 'auto' is the fastest engine here
        whose fp64 mode is bit-identical to the reference
        (:func:`spdnn.engines.fastest_exact_engine`).
    progress : bool, optional

    Returns
    -------
    (categories, engine_name)
        Sorted 1-based int64 sample ids, and the engine that computed them.
    """
    runner = _truth_engine(engine, progress)
    result = runner.run(network, features)
    name = runner.name
    del runner
    release_device_memory()          # the next job (often a GPU engine) gets the truth engine's memory
    return np.asarray(result.categories, dtype=np.int64), name


def _info(neurons: int, layers: int, seed: int, samples: int, engine: str, network: Network,
          features: sp.csr_matrix, truth: np.ndarray) -> dict:
    return {
        "generator": "spdnn.generate (RadiX-Net weights, MNIST Fourier-resampled inputs)",
        "generator_version": GENERATOR_VERSION,
        "spdnn_version": _version(),
        "neurons": neurons,
        "layers": layers,
        "seed": seed,
        "samples": samples,
        "bias": network.uniform_bias(),
        "features_nnz": int(features.nnz),
        "engine": engine,
        "precision": "fp64",
        "categories_count": int(len(truth)),
    }


def _network(neurons, layers, seed, samples, bias) -> Network:
    """Validate the common arguments (before any work) and build the lazy network."""
    n = check_neurons(neurons)
    depth = positive_int(layers, "layers")
    optional_positive_int(samples, "samples")
    return radixnet_network(n, depth, seed=seed, bias=default_bias(n) if bias is None else bias)


def _timed_truth(network, features, engine, progress, log) -> tuple[np.ndarray, str, float]:
    runner = _truth_engine(engine, progress)
    log(f"truth {network.neurons}x{network.depth}: computing it in float64 with the {runner.name} engine, "
        f"{features.shape[0]:,} samples")
    start = time.perf_counter()
    result = runner.run(network, features)
    seconds, name = time.perf_counter() - start, runner.name
    del runner
    release_device_memory()          # the next job (often a GPU engine) gets the truth engine's memory
    return np.asarray(result.categories, dtype=np.int64), name, seconds


def _timed_features(neurons, samples, device, progress, log) -> tuple[sp.csr_matrix, float]:
    log(f"features N={neurons}: computing them from MNIST ({features_device(device)})")
    start = time.perf_counter()
    features = challenge_features(neurons, samples=samples, device=device, progress=progress)
    return features, time.perf_counter() - start


def generate_challenge(neurons: int, layers: int, *, seed: int = 0, samples: int | None = None,
                       truth_engine: str = "auto", device: str = "auto", progress: bool | None = None,
                       bias=None, log=None) -> tuple[Network, sp.csr_matrix, np.ndarray, dict]:
    """Generate a challenge instance in memory.

    Parameters
    ----------
    neurons : int
        N = 16 * 2**S, S >= 1.
    layers : int
        L >= 1.
    seed : int
        Seed of the weight permutations (layers S+1 and later).
    samples : int, optional
        First ``samples`` MNIST images (default all 60,000).
    truth_engine : str
        Engine for the truth, always in fp64 ('auto': the fastest exact one here,
        :func:`spdnn.engines.fastest_exact_engine`).
    device : {'auto', 'cpu', 'gpu'}
        Where the features are computed (:func:`~spdnn.generate.features.challenge_features`).
    progress : bool, optional
        Progress bars (default: only on a terminal).
    bias : float or array (N,) or (L, N), optional
        Default :func:`~spdnn.generate.radixnet.default_bias` (the official bias for
        official N).
    log : callable(str), optional
        Receives one status line as each step starts (the CLI prints them on stderr).

    Returns
    -------
    network : Network
        Lazy RadiX-Net layers (built on access).
    features : csr_matrix, float64, (samples, N)
    truth : ndarray of int64
        Sorted 1-based ids of the samples alive after L layers, in float64.
    info : dict
        JSON-serializable: engine, precision, seed, neurons, layers, samples, versions;
        ``info["seconds"]`` (not part of what is written to disk): the seconds spent on
        the features and on the truth.
    """
    log = log or _quiet
    network = _network(neurons, layers, seed, samples, bias)
    _truth_engine(truth_engine, False)                  # fails now, not after the features
    features, feature_seconds = _timed_features(network.neurons, samples, device, progress, log)
    truth, engine, truth_seconds = _timed_truth(network, features, truth_engine, progress, log)
    info = _info(network.neurons, network.depth, int(seed), features.shape[0], engine, network, features, truth)
    info["seconds"] = {"features": feature_seconds, "truth": truth_seconds}
    return network, features, truth, info


@dataclass(frozen=True)
class ChallengeFiles:
    """Paths written by :func:`write_challenge` (the official layout under one folder).

    Attributes
    ----------
    network : Path
        ``out/neuron{N}`` holding ``n{N}-l{k}.tsv``, k = 1..L.
    layer_files : list of Path
        Those L files in layer order.
    features : Path
        ``out/sparse-images-{N}.tsv.gz``.
    truth : Path
        ``out/neuron{N}-l{L}-categories.tsv``.
    info : Path
        ``out/neuron{N}-l{L}-categories.json``: how the truth was made.
    """

    network: Path
    layer_files: list
    features: Path
    truth: Path
    info: Path


#: gzip level of the written features: 5x faster than level 6 for 20% more bytes (measured
#: at N = 16384: 4.8 against 24.3 s a GB of text; 0.239 against 0.200 of its size).
FEATURES_GZIP_LEVEL = 1


def _digits_total(n: int) -> int:
    """Decimal digits of 1, 2, ..., n together."""
    total, width, low = 0, 1, 1
    while low <= n:
        high = min(n, 10 * low - 1)
        total += (high - low + 1) * width
        width, low = width + 1, 10 * low
    return total


def layer_file_bytes(neurons: int) -> int:
    """Exact size of one ``n{N}-l{k}.tsv`` of a RadiX-Net layer: N * 32 lines
    ``row \t col \t 6.250000e-02``, every row and every column 32 times."""
    return FAN * (2 * _digits_total(neurons) + len("\t\t6.250000e-02\n") * neurons)


def _json_text(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_challenge(out_dir: str | os.PathLike, neurons: int, layers: int, *, seed: int = 0,
                    samples: int | None = None, truth_engine: str = "auto", device: str = "auto",
                    progress: bool | None = None, bias=None, log=None) -> ChallengeFiles:
    """Generate a challenge instance and write it in the official layout.

    Files (the same seed gives the same bytes)::

        out_dir/neuron{N}/n{N}-l{k}.tsv           k = 1..L, `row \t col \t 6.250000e-02`
        out_dir/sparse-images-{N}.tsv.gz          `sample \t feature \t 1`
        out_dir/neuron{N}-l{L}-categories.tsv     the float64 truth, one id a line
        out_dir/neuron{N}-l{L}-categories.json    info: engine and precision of the truth, seed, ...

    Every argument is checked before ``out_dir`` is touched. The features are made in
    memory; then everything is written into a staging folder inside ``out_dir`` (the
    layer files and the features by threads on all cores, while the truth is computed)
    and renamed into place: a failure (a full disk, Ctrl-C, a kill) leaves ``out_dir`` as
    it was (an existing ``neuron{N}`` folder is replaced whole, so no layer of an older,
    deeper network stays beside the new ones). Staging folders and temporary files left
    by killed runs are removed first. Before anything is written the exact size of the
    layer files (:func:`layer_file_bytes`) is checked against the free space.

    Parameters are those of :func:`generate_challenge` (``log`` also hears where the
    files go).

    Returns
    -------
    ChallengeFiles

    Raises
    ------
    DiskFullError
        The disk cannot hold the files; names the file (in ``out_dir``) and the bytes
        needed and free. Nothing is left behind.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..formats import write_categories, write_features_tsv, write_layer_tsv
    from .features import _workers

    log = log or _quiet
    network = _network(neurons, layers, seed, samples, bias)
    _truth_engine(truth_engine, False)                  # fails now, before anything is made or written
    n, depth = network.neurons, network.depth
    features, _ = _timed_features(n, samples, device, progress, log)
    out = Path(out_dir)
    names = {"network": f"neuron{n}", "features": f"sparse-images-{n}.tsv.gz",
             "truth": f"neuron{n}-l{depth}-categories.tsv", "info": f"neuron{n}-l{depth}-categories.json"}
    with Staging(out) as stage:
        try:
            net_dir = stage.path / names["network"]
            net_dir.mkdir()
            # the truth and its info are at most a line of (digits + 1) a sample and a few KB
            count = features.shape[0]
            rest = depth * layer_file_bytes(n) + count * (len(str(count)) + 1) + 4096
            free = shutil.disk_usage(stage.path).free
            if free < rest:
                raise DiskFullError(out / names["network"], needed=rest, free=free)

            def layer(k: int) -> None:
                write_layer_tsv(net_dir / f"n{n}-l{k + 1}.tsv", network.layers[k])

            # the files that do not need the truth are written while it is computed
            log(f"writing {out}: neuron{n} ({depth} layer files) and {names['features']}, in the background")
            with ThreadPoolExecutor(max(1, min(_workers(), depth + 1))) as pool:
                jobs = [pool.submit(write_features_tsv, stage.path / names["features"], features,
                                    compresslevel=FEATURES_GZIP_LEVEL)]
                jobs += [pool.submit(layer, k) for k in range(depth)]
                try:
                    truth, engine, _ = _timed_truth(network, features, truth_engine, progress, log)
                    for job in progress_bar(jobs, enabled=progress, desc=f"writing {out.name or out}"):
                        job.result()
                except BaseException:
                    for job in jobs:
                        job.cancel()
                    raise
            info = _info(n, depth, int(seed), count, engine, network, features, truth)
            write_categories(stage.path / names["truth"], truth)
            atomic_write_bytes(stage.path / names["info"], _json_text(info).encode("utf-8"))
            stage.commit(names.values())
        except OSError as exc:
            raise _about_out(exc, stage.path, out) from exc
    return ChallengeFiles(network=out / names["network"],
                          layer_files=[out / names["network"] / f"n{n}-l{k + 1}.tsv" for k in range(depth)],
                          features=out / names["features"], truth=out / names["truth"], info=out / names["info"])


def _about_out(exc: OSError, stage: Path, out: Path) -> OSError:
    """``exc`` restated about the final path in ``out`` where it names a staging path."""
    name = getattr(exc, "filename", None)
    if name is None:
        return exc
    try:
        final = out / Path(os.fsdecode(name)).relative_to(stage)
    except ValueError:
        return exc
    if isinstance(exc, DiskFullError):
        return DiskFullError(final, needed=exc.needed, written=exc.written, free=exc.free, code=exc.errno)
    if exc.errno in DISK_FULL_ERRNOS:
        return DiskFullError(final, free=shutil.disk_usage(out).free, code=exc.errno)
    try:
        return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno or 0), os.fspath(final))
    except TypeError:
        return OSError(exc.errno, exc.strerror, os.fspath(final))


# --- cache -------------------------------------------------------------------------------

def _generated_dir() -> Path:
    return cache_dir() / "generated"


def _features_file(neurons: int, samples: int | None) -> Path:
    part = "all" if samples is None else f"first{samples}"
    return _generated_dir() / f"features-n{neurons}-{part}-v{GENERATOR_VERSION}.npz"


def _truth_file(neurons: int, layers: int, seed: int, samples: int) -> Path:
    return _generated_dir() / f"truth-n{neurons}-l{layers}-seed{seed}-samples{samples}-v{GENERATOR_VERSION}.json"


def _save_features(path: Path, features: sp.csr_matrix) -> None:
    write_features_npz(path, features, values=False)


def _load_features(path: Path, neurons: int) -> sp.csr_matrix | None:
    """The cached pattern as CSR with value 1, or None when missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return read_features_npz(path, neurons)
    except (FormatError, OSError):
        return None


#: Cache folders already warned about in this process (one warning each).
_WARNED: set[str] = set()


class _CacheWriter:
    """Writes into the generated-data cache, or, when it cannot, warns once and goes on:
    the cache only saves time, so a read-only, unwritable or full cache never stops a run."""

    def __init__(self, folder: Path, problem: OSError | None):
        self.folder = folder
        self.problem = problem

    def write(self, what, *args) -> None:
        """``what(*args)`` unless the cache is known unwritable; an OSError makes it so."""
        if self.problem is None:
            try:
                what(*args)
                return
            except OSError as exc:             # DiskFullError included: the writer left nothing
                self.problem = exc
        key = os.fspath(self.folder)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(f"the generated-data cache {self.folder} cannot be written ({_reason(self.problem)}); "
                          "the data are kept in memory for this run only", SpdnnWarning, stacklevel=4)


def _reason(exc: OSError) -> str:
    if isinstance(exc, DiskFullError):
        return str(exc)
    where = f"{exc.filename}: " if exc.filename else ""
    return where + (exc.strerror or str(exc)).rstrip(".").lower()


class _FirstUse:
    """A ``log`` that says ``first`` before its first line (nothing when nothing is made)."""

    def __init__(self, log, first: str):
        self.log, self.first = log, first

    def __call__(self, line: str) -> None:
        if self.first:
            self.log(self.first)
            self.first = ""
        self.log(line)


def _cached_features(neurons: int, samples: int | None, device: str, progress, log,
                     cache: _CacheWriter) -> tuple[sp.csr_matrix, float]:
    """The features from the cache, or made, cached and timed (seconds 0 from the cache)."""
    full = _load_features(_features_file(neurons, None), neurons)
    if full is not None:
        if samples is None or samples == full.shape[0]:
            return full, 0.0
        if 0 <= samples < full.shape[0]:
            return full[:samples], 0.0
    if samples is not None:
        part = _load_features(_features_file(neurons, samples), neurons)
        if part is not None:
            return part, 0.0
    features, seconds = _timed_features(neurons, samples, device, progress, log)
    # every image asked for by count is the full set: cache it as such, for every later subset
    whole = samples is None or features.shape[0] == _mnist.load_mnist().shape[0]
    cache.write(_save_features, _features_file(neurons, None if whole else samples), features)
    return features, seconds


def cached_challenge(neurons: int, layers: int, *, seed: int = 0, samples: int | None = None,
                     device: str = "auto", progress: bool | None = None, bias=None,
                     log=None) -> tuple[Network, sp.csr_matrix, np.ndarray, dict]:
    """:func:`generate_challenge` with features and truth cached on disk.

    The features (``features-n{N}-...npz``) and the truth with its info
    (``truth-n{N}-l{L}-seed{seed}-....json``) live under
    ``spdnn.config.cache_dir()/"generated"`` (honours ``SPDNN_CACHE_DIR``), are written
    atomically, and are reused by later calls; an unreadable cache file is rebuilt. The
    network is not cached: its layers are made on access from ``seed``. The truth is
    cached for the default bias only; with another ``bias`` it is recomputed.

    The cache only saves time: when it cannot be written (read-only, no permission, a
    full disk) one :class:`~spdnn.errors.SpdnnWarning` says so and the data are used from
    memory. Concurrent calls share it safely (files are renamed into place whole), and
    temporary files of killed writers are removed (see :mod:`spdnn.generate._files`).

    Parameters are those of :func:`generate_challenge` (truth engine 'auto'); ``log``
    receives a status line for each step that is not served from the cache.

    Returns
    -------
    (network, features, truth, info)
        As :func:`generate_challenge`; ``info["cached"]`` tells whether the truth came
        from the cache, ``info["seconds"]`` what this call spent making features and
        truth (0 for what came from the cache).
    """
    log = log or _quiet
    network = _network(neurons, layers, seed, samples, bias)
    n, depth = network.neurons, network.depth
    folder = _generated_dir()
    with cache_session(folder) as problem:
        cache = _CacheWriter(folder, problem)
        log = _FirstUse(log, f"generated data N={n}: first use of these data, made once and cached in {folder}")
        features, feature_seconds = _cached_features(n, samples, device, progress, log, cache)
        count = features.shape[0]
        truth_file = _truth_file(n, depth, int(seed), count)
        info = None if bias is not None else _load_truth(truth_file)
        if info is None:
            truth, engine, truth_seconds = _timed_truth(network, features, "auto", progress, log)
            info = _info(n, depth, int(seed), count, engine, network, features, truth)
            if bias is None:
                text = _json_text({**info, "categories": truth.tolist()}).encode("utf-8")
                cache.write(atomic_write_bytes, truth_file, text)
            info["cached"] = False
        else:
            truth, truth_seconds = np.asarray(info.pop("categories"), dtype=np.int64), 0.0
            info["cached"] = True
    info["seconds"] = {"features": feature_seconds, "truth": truth_seconds}
    return network, features, truth, info


def _load_truth(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("categories"), list):
        return None
    return info


def store_cached_features(features) -> Path:
    """Put the full challenge inputs of N = ``features.shape[1]`` into the cache.

    For inputs made elsewhere (``benchmarks/devdata.py`` carries them bit-packed to a
    machine with no time to generate them): later :func:`cached_challenge` calls for
    that N use them instead of generating. They must be ``challenge_features(N)``, all
    of its rows; only the shape is checked.

    Returns
    -------
    pathlib.Path
        The cache file written (atomically).
    """
    n = check_neurons(features.shape[1])
    images = _mnist.load_mnist().shape[0]
    if features.shape[0] != images:
        raise OptionError(f"features: {features.shape[0]} samples, the cache keeps the full set of {images}")
    path = _features_file(n, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_features(path, sp.csr_matrix(features))
    return path
