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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._atomic import atomic_path
from .._progress import progress_bar
from ..config import cache_dir
from ..errors import EngineUnavailableError, FormatError, OptionError
from ..formats.npz import read_features_npz, write_features_npz
from ..network import Network
from . import mnist as _mnist
from .mnist import challenge_features
from .radixnet import check_neurons, default_bias, radixnet_network

__all__ = ["generate_challenge", "write_challenge", "cached_challenge", "compute_truth", "ChallengeFiles",
           "GENERATOR_VERSION", "store_cached_features"]

#: Bumped whenever generated data would change; part of every cache key and of ``info``.
#: 1: later layers permuted rows and columns; 2: rows only, as the official layers.
GENERATOR_VERSION = 2


def _version() -> str:
    from .. import __version__

    return __version__


def _truth_engine(name: str, progress: bool | None):
    """An engine in fp64 mode: 'auto' is cpu if it can run here, else reference."""
    from ..engines import get_engine

    if name == "auto":
        try:
            return get_engine("cpu", precision="fp64", progress=bool(progress))
        except EngineUnavailableError:
            return get_engine("reference", precision="fp64", progress=bool(progress))
    return get_engine(name, precision="fp64", progress=bool(progress))


def compute_truth(network: Network, features: sp.csr_matrix, *, engine: str = "auto",
                  progress: bool | None = None) -> tuple[np.ndarray, str]:
    """The categories of ``features`` through ``network`` in float64.

    Parameters
    ----------
    network : Network
    features : csr_matrix (samples, N)
    engine : str
        An engine name run with ``precision='fp64'``; 'auto' means 'cpu' where it is
        available, else 'reference'.
    progress : bool, optional

    Returns
    -------
    (categories, engine_name)
        Sorted 1-based int64 sample ids, and the engine that computed them.
    """
    runner = _truth_engine(engine, progress)
    result = runner.run(network, features)
    return np.asarray(result.categories, dtype=np.int64), runner.name


def _check_samples(samples) -> None:
    if samples is not None and (isinstance(samples, (bool, np.bool_))
                                or not isinstance(samples, (int, np.integer)) or samples < 1):
        raise OptionError(f"samples={samples!r}: expected None (all) or an integer >= 1")


def _check_layers(layers) -> int:
    if isinstance(layers, (bool, np.bool_)) or not isinstance(layers, (int, np.integer)) or layers < 1:
        raise OptionError(f"layers={layers!r}: expected an integer >= 1")
    return int(layers)


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


def generate_challenge(neurons: int, layers: int, *, seed: int = 0, samples: int | None = None,
                       truth_engine: str = "auto", progress: bool | None = None, bias=None
                       ) -> tuple[Network, sp.csr_matrix, np.ndarray, dict]:
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
        Engine for the truth, always in fp64 ('auto': cpu if available, else reference).
    progress : bool, optional
        Progress bars (default: only on a terminal).
    bias : float or array (N,) or (L, N), optional
        Default :func:`~spdnn.generate.radixnet.default_bias` (the official bias for
        official N).

    Returns
    -------
    network : Network
        Lazy RadiX-Net layers (built on access).
    features : csr_matrix, float64, (samples, N)
    truth : ndarray of int64
        Sorted 1-based ids of the samples alive after L layers, in float64.
    info : dict
        JSON-serializable: engine, precision, seed, neurons, layers, samples, versions.
    """
    n = check_neurons(neurons)
    depth = _check_layers(layers)
    _check_samples(samples)
    network = radixnet_network(n, depth, seed=seed, bias=default_bias(n) if bias is None else bias)
    features = challenge_features(n, samples=samples, progress=progress)
    truth, engine = compute_truth(network, features, engine=truth_engine, progress=progress)
    info = _info(n, depth, int(seed), features.shape[0], engine, network, features, truth)
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


def write_challenge(out_dir: str | os.PathLike, neurons: int, layers: int, *, seed: int = 0,
                    samples: int | None = None, truth_engine: str = "auto",
                    progress: bool | None = None, bias=None) -> ChallengeFiles:
    """Generate a challenge instance and write it in the official layout.

    Files (each written atomically; the same seed gives the same bytes)::

        out_dir/neuron{N}/n{N}-l{k}.tsv           k = 1..L, `row \\t col \\t 6.250000e-02`
        out_dir/sparse-images-{N}.tsv.gz          `sample \\t feature \\t 1`
        out_dir/neuron{N}-l{L}-categories.tsv     the float64 truth, one id a line
        out_dir/neuron{N}-l{L}-categories.json    info: engine and precision of the truth, seed, ...

    Parameters are those of :func:`generate_challenge`.

    Returns
    -------
    ChallengeFiles
    """
    from ..formats import write_categories, write_features_tsv, write_layer_tsv

    network, features, truth, info = generate_challenge(neurons, layers, seed=seed, samples=samples,
                                                        truth_engine=truth_engine, progress=progress,
                                                        bias=bias)
    n, depth = network.neurons, network.depth
    out = Path(out_dir)
    net_dir = out / f"neuron{n}"
    net_dir.mkdir(parents=True, exist_ok=True)
    layer_files = []
    for k in progress_bar(range(depth), enabled=progress, desc=f"writing neuron{n}"):
        path = net_dir / f"n{n}-l{k + 1}.tsv"
        write_layer_tsv(path, network.layers[k])
        layer_files.append(path)
    features_path = out / f"sparse-images-{n}.tsv.gz"
    write_features_tsv(features_path, features)
    truth_path = out / f"neuron{n}-l{depth}-categories.tsv"
    write_categories(truth_path, truth)
    info_path = out / f"neuron{n}-l{depth}-categories.json"
    _write_json(info_path, info)
    return ChallengeFiles(network=net_dir, layer_files=layer_files, features=features_path,
                          truth=truth_path, info=info_path)


def _write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- cache -------------------------------------------------------------------------------

def _generated_dir() -> Path:
    return cache_dir() / "generated"


def _features_file(neurons: int, samples: int | None) -> Path:
    part = "all" if samples is None else f"first{samples}"
    return _generated_dir() / f"features-n{neurons}-{part}-v{GENERATOR_VERSION}.npz"


def _save_features(path: Path, features: sp.csr_matrix) -> None:
    write_features_npz(path, features, values=False)


def _load_features(path: Path, neurons: int) -> sp.csr_matrix | None:
    """The cached pattern as CSR with value 1, or None when missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return read_features_npz(path, neurons)
    except FormatError:
        return None


def _cached_features(neurons: int, samples: int | None, progress: bool | None) -> sp.csr_matrix:
    full = _load_features(_features_file(neurons, None), neurons)
    if full is not None:
        if samples is None or samples == full.shape[0]:
            return full
        if 0 <= samples < full.shape[0]:
            return full[:samples]
    if samples is not None:
        part = _load_features(_features_file(neurons, samples), neurons)
        if part is not None:
            return part
    features = challenge_features(neurons, samples=samples, progress=progress)
    # every image asked for by count is the full set: cache it as such, for every later subset
    whole = samples is None or features.shape[0] == _mnist.load_mnist().shape[0]
    _save_features(_features_file(neurons, None if whole else samples), features)
    return features


def cached_challenge(neurons: int, layers: int, *, seed: int = 0, samples: int | None = None,
                     progress: bool | None = None, bias=None) -> tuple[Network, sp.csr_matrix, np.ndarray, dict]:
    """:func:`generate_challenge` with features and truth cached on disk.

    The features (``features-n{N}-...npz``) and the truth with its info
    (``truth-n{N}-l{L}-seed{seed}-....json``) live under
    ``spdnn.config.cache_dir()/"generated"`` (honours ``SPDNN_CACHE_DIR``), are written
    atomically, and are reused by later calls; an unreadable cache file is rebuilt. The
    network is not cached: its layers are made on access from ``seed``. The truth is
    cached for the default bias only; with another ``bias`` it is recomputed.

    Returns
    -------
    (network, features, truth, info)
        As :func:`generate_challenge` (truth engine 'auto'); ``info["cached"]`` tells
        whether the truth came from the cache.
    """
    n = check_neurons(neurons)
    depth = _check_layers(layers)
    _check_samples(samples)
    network = radixnet_network(n, depth, seed=seed, bias=default_bias(n) if bias is None else bias)
    features = _cached_features(n, samples, progress)
    count = features.shape[0]
    truth_file = _generated_dir() / f"truth-n{n}-l{depth}-seed{int(seed)}-samples{count}-v{GENERATOR_VERSION}.json"
    info = None if bias is not None else _load_truth(truth_file)
    if info is None:
        truth, engine = compute_truth(network, features, progress=progress)
        info = _info(n, depth, int(seed), count, engine, network, features, truth)
        if bias is None:
            _write_json(truth_file, {**info, "categories": truth.tolist()})
        info["cached"] = False
    else:
        truth = np.asarray(info.pop("categories"), dtype=np.int64)
        info["cached"] = True
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
