"""Shared test factories: random networks and features, and the official subset.

One home for the inputs the test files build (they used to define their own copies,
which drifted). Everything random takes a ``numpy.random.Generator`` (the ``rng``
fixture of ``conftest.py``, whose seed pytest prints), so a failure can be replayed.

Weights (``values`` of :func:`random_layer`):

- ``"normal"``: N(0, sigma) with sigma = 1.5 / sqrt(n * density), so that an activation
  row keeps a size of order one over many layers;
- ``"standard"``: N(0, 1);
- ``"fp16"``: multiples of 1/64 in [-8/64, 24/64), exact in half precision;
- a number: every weight equal to it (the challenge's uniform 1/16 = 0.0625, or 0.3);
- a pair ``(low, high)``: uniform on [low, high).

Bias (``bias`` of :func:`random_network`): a kind from :data:`BIAS_KINDS` drawn per layer
and neuron, or anything :meth:`spdnn.network.Network.from_layers` accepts (a number, a
vector (N,), an array (L, N)).
"""
from __future__ import annotations

import re
import tarfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from spdnn.engines import engine_class
from spdnn.engines.reference import ReferenceEngine
from spdnn.network import Network

__all__ = ["BIAS_KINDS", "GENERAL_WEIGHTS", "random_layer", "random_bias", "random_network",
           "duplicate_column_network", "random_features", "general_network", "general_features", "reference_run",
           "GENERAL_CAPS", "feedforward_network", "general_cases", "GENERAL_CASES", "general_case",
           "engine_availability", "read_official_subset", "challenge_cache", "same_csr", "packed_entries"]

#: Per-neuron bias kinds of :func:`random_bias`: the sign pattern matters to the engines
#: (a positive bias can revive a dead row's structural nonzeros, a negative one prunes).
BIAS_KINDS = ("negative", "positive", "mixed", "constant")


def _weights(rng: np.random.Generator, count: int, n: int, density: float, values) -> np.ndarray:
    if isinstance(values, str):
        if values == "normal":
            return rng.normal(0.0, 1.5 / np.sqrt(n * density), count)
        if values == "standard":
            return rng.standard_normal(count)
        if values == "fp16":
            return rng.integers(-8, 24, count) / 64.0
        raise ValueError(f"unknown weight kind {values!r}")
    if isinstance(values, tuple):
        low, high = values
        return rng.uniform(low, high, count)
    return np.full(count, float(values))


def random_layer(rng: np.random.Generator, n: int, density: float = 0.1, *, values="normal",
                 columns: int | None = None) -> sp.csr_matrix:
    """A random sparse layer, shape (n, columns or n), float64 CSR with sorted indices.

    ``density`` is the expected fraction of nonzeros; ``values`` as in the module docstring.
    """
    w = sp.random(n, n if columns is None else columns, density=density, format="csr", random_state=rng)
    w.data = _weights(rng, w.nnz, n, density, values)
    w.sort_indices()
    return w


def random_bias(rng: np.random.Generator, depth: int, n: int, kind: str = "mixed"):
    """Bias of one of :data:`BIAS_KINDS`: an array (depth, n), or a scalar for 'constant'.

    negative: U(-0.4, 0); positive: U(0, 0.2); mixed: U(-0.2, 0.3) (both signs, leaning
    positive so that samples survive several layers); constant: -0.25 everywhere.
    """
    if kind == "negative":
        return rng.uniform(-0.4, 0.0, (depth, n))
    if kind == "positive":
        return rng.uniform(0.0, 0.2, (depth, n))
    if kind == "mixed":
        return rng.uniform(-0.2, 0.3, (depth, n))
    if kind == "constant":
        return -0.25
    raise ValueError(f"unknown bias kind {kind!r}: expected one of {BIAS_KINDS}")


def _bias(rng, depth, n, bias):
    return random_bias(rng, depth, n, bias) if isinstance(bias, str) else bias


def random_network(rng: np.random.Generator, n: int, depth: int, *, density: float = 0.1, values="normal",
                   bias="mixed", ymax: float = 32.0) -> Network:
    """``depth`` layers of :func:`random_layer`; ``bias`` a kind of :data:`BIAS_KINDS` or explicit values."""
    layers = [random_layer(rng, n, density, values=values) for _ in range(depth)]
    return Network.from_layers(layers, _bias(rng, depth, n, bias), ymax=ymax)


def duplicate_column_network(rng: np.random.Generator, n: int, depth: int, distinct: int, *,
                             density: float = 0.1, values="normal", bias="mixed") -> Network:
    """Layers whose n columns are copies of ``distinct`` random columns, shuffled.

    Like RadiX-Net (N/16 distinct columns, docs/challenge.md, Generator): every one of
    the ``distinct`` columns appears at least once, the others are random repeats, so a
    layer has at most ``distinct`` different columns.
    """
    layers = []
    for _ in range(depth):
        base = random_layer(rng, n, density, values=values, columns=distinct).tocsc()
        pick = np.concatenate([np.arange(distinct), rng.integers(0, distinct, n - distinct)])
        layers.append(base[:, rng.permutation(pick)].tocsr())
    return Network.from_layers(layers, _bias(rng, depth, n, bias))


def random_features(rng: np.random.Generator, samples: int, n: int, density: float = 0.3, *,
                    values="binary", dead=()) -> sp.csr_matrix:
    """Random inputs, shape (samples, n), float64 CSR with sorted indices.

    ``values``: 'binary' (every nonzero 1, like the challenge), 'normal' (N(0, 1),
    negative inputs too) or a pair (low, high) (uniform). The rows listed in ``dead``
    are emptied: those samples are dead from the start.
    """
    f = sp.random(samples, n, density=density, format="csr", random_state=rng)
    if isinstance(values, tuple):
        f.data = rng.uniform(values[0], values[1], f.nnz)
    elif values == "normal":
        f.data = rng.normal(0.0, 1.0, f.nnz)
    elif values == "binary":
        f.data[:] = 1.0
    else:
        raise ValueError(f"unknown feature values {values!r}")
    if len(dead):
        keep = np.ones(samples, dtype=bool)
        keep[list(dead)] = False
        f = sp.csr_matrix(sp.diags(keep.astype(np.float64)) @ f)
        f.eliminate_zeros()
    f.sort_indices()
    return f


#: Weight kinds of :func:`general_network`: value generators (rng, count) -> values.
GENERAL_WEIGHTS = {
    "normal": lambda rng, count: rng.normal(0.0, 0.6, count),
    "uniform16": lambda rng, count: np.full(count, 0.0625),
    "uniform03": lambda rng, count: np.full(count, 0.3),
    "positive": lambda rng, count: rng.uniform(0.0, 0.5, count),
}


def general_network(rng: np.random.Generator, *, neurons: int | None = None, depth: int | None = None,
                    weights: str | None = None, bias_kind: str | None = None) -> Network:
    """A random network exercising every general path of an engine.

    Unless given: N in [5, 70), depth in [1, 10), a weight kind of :data:`GENERAL_WEIGHTS`
    (negative and positive values, or one value per layer), a bias kind of
    :data:`BIAS_KINDS`, and ymax among 32, 1 and 4.5. Each layer has its own density in
    [0.02, 0.4), and about one row and one column in ten is empty.
    """
    n = int(rng.integers(5, 70)) if neurons is None else neurons
    depth = int(rng.integers(1, 10)) if depth is None else depth
    weights = str(rng.choice(sorted(GENERAL_WEIGHTS))) if weights is None else weights
    layers = []
    for _ in range(depth):
        w = sp.random(n, n, density=rng.uniform(0.02, 0.4), random_state=rng, format="csr")
        rows = (rng.random(n) >= 0.1).astype(np.float64)          # some empty rows and columns
        cols = (rng.random(n) > 0.1).astype(np.float64)
        w = sp.csr_matrix(sp.diags(rows) @ w @ sp.diags(cols))
        w.sort_indices()
        w.data = GENERAL_WEIGHTS[weights](rng, w.nnz)
        layers.append(w)
    kind = str(rng.choice(BIAS_KINDS)) if bias_kind is None else bias_kind
    ymax = float(rng.choice([32.0, 1.0, 4.5]))
    return Network.from_layers(layers, random_bias(rng, depth, n, kind), ymax=ymax)


#: Caps of :func:`feedforward_network`'s ReLU layers (None: uncapped).
GENERAL_CAPS = (1.0, 32.0, None)


def _general_layer(rng: np.random.Generator, n_in: int, n_out: int, dense: bool):
    """One layer of :func:`feedforward_network`: sparse CSR, or a dense array with about a
    quarter of its entries zero; weights N(0, 1.2 / sqrt(expected terms per output))."""
    density = 0.75 if dense else rng.uniform(0.08, 0.5)
    sigma = 1.2 / np.sqrt(max(1.0, n_in * density))
    if dense:
        w = rng.normal(0.0, sigma, (n_in, n_out))
        w[rng.random((n_in, n_out)) >= density] = 0.0
        return w
    w = sp.random(n_in, n_out, density=density, format="csr", random_state=rng)
    w.data = rng.normal(0.0, sigma, w.nnz)
    w.sort_indices()
    return w


def feedforward_network(rng: np.random.Generator, *, widths=None, dense=None, bias_rules=None, activations=None,
                        caps=None, bias=None) -> Network:
    """A random network of the general form (:mod:`spdnn.network`); each argument not given
    is drawn per layer.

    ``widths`` (n_0, ..., n_L): 2 to 5 layers of widths in [3, 40); ``dense``: whether each
    layer is a dense array (one in three); ``bias_rules``: 'structural' or 'dense';
    ``activations``: 'relu', and the last layer 'identity' half the time; ``caps``: from
    :data:`GENERAL_CAPS`; ``bias``: per layer a negative or positive scalar, or a vector of
    both signs.
    """
    if widths is None:
        widths = [int(v) for v in rng.integers(3, 40, int(rng.integers(3, 7)))]
    depth = len(widths) - 1
    dense = [bool(rng.random() < 1 / 3) for _ in range(depth)] if dense is None else list(dense)
    if bias_rules is None:
        bias_rules = [str(rng.choice(["structural", "dense"])) for _ in range(depth)]
    if activations is None:
        activations = ["relu"] * (depth - 1) + [str(rng.choice(["relu", "identity"]))]
    if caps is None:
        caps = [GENERAL_CAPS[int(rng.integers(len(GENERAL_CAPS)))] for _ in range(depth)]
    if bias is None:
        kinds = rng.integers(0, 3, depth)
        bias = [float(rng.uniform(-0.3, 0.0)) if kind == 0 else float(rng.uniform(0.0, 0.2)) if kind == 1
                else rng.uniform(-0.3, 0.3, widths[k + 1]) for k, kind in enumerate(kinds)]
    layers = [_general_layer(rng, widths[k], widths[k + 1], dense[k]) for k in range(depth)]
    return Network.from_layers(layers, bias, ymax=caps, bias_rule=bias_rules, activation=activations)


def general_cases(rng: np.random.Generator) -> dict:
    """{name: (network, features)}: planted general networks where a shortcut would be wrong.

    - 'revive': ReLU kills every row in layer 1, then a positive dense bias revives them
      (dropping zero rows would be wrong); inputs with zero rows.
    - 'negative_constant': a middle identity layer of equal weights makes each row one
      negative constant (rows with the same input sum are equal: merged), then ReLU
      layers with a dense bias of both signs; uncapped.
    - 'rectangular_mixed': widths 23 -> 41 -> 9 -> 30 -> 5, dense and sparse, both rules,
      caps 1, none and 32, a linear output layer.
    - 'zero_rows_kept': structural layers, then a dense layer with a positive dense bias:
      zero input rows may not be dropped before it.
    """
    cases = {}
    x = random_features(rng, 90, 16, 0.3, dead=[0, 7, 50])
    cases["revive"] = (Network.from_layers([-abs(_general_layer(rng, 16, 16, False)),
                                            _general_layer(rng, 16, 12, True)],
                                           [0.0, rng.permutation(np.linspace(0.05, 0.4, 12))],
                                           bias_rule=["structural", "dense"],
                                           ymax=[1.0, None]), x)
    x = random_features(rng, 120, 10, 0.4, dead=[3, 4])
    cases["negative_constant"] = (Network.from_layers(
        [sp.csr_matrix(np.full((10, 14), -0.5)),
         _general_layer(rng, 14, 20, False), _general_layer(rng, 20, 6, True)],
        [-0.25, rng.uniform(-0.2, 0.3, 20), 0.1], bias_rule=["structural", "dense", "dense"],
        activation=["identity", "relu", "relu"], ymax=None), x)
    x = random_features(rng, 150, 23, 0.3, values="normal", dead=[10])
    cases["rectangular_mixed"] = (feedforward_network(
        rng, widths=[23, 41, 9, 30, 5], dense=[True, False, True, False],
        bias_rules=["dense", "structural", "dense", "dense"], activations=["relu", "relu", "relu", "identity"],
        caps=[1.0, None, 32.0, None], bias=[rng.uniform(-0.3, 0.3, 41), -0.1, 0.2, rng.uniform(-1, 1, 5)]), x)
    x = random_features(rng, 100, 30, 0.2, dead=range(0, 100, 9))
    cases["zero_rows_kept"] = (feedforward_network(
        rng, widths=[30, 30, 25, 8], dense=[False, False, True], bias_rules=["structural", "structural", "dense"],
        activations=["relu", "relu", "relu"], caps=[32.0, 32.0, None], bias=[-0.1, 0.05, 0.3]), x)
    return cases


def general_features(rng: np.random.Generator, samples: int, neurons: int) -> sp.csr_matrix:
    """Random inputs of a random density in [0.05, 0.5): binary or N(0, 1) (negative too), half and half."""
    density = rng.uniform(0.05, 0.5)
    return random_features(rng, samples, neurons, density, values="binary" if rng.random() < 0.5 else "normal")


#: Named general networks (:func:`general_case`): every general path an engine must run.
GENERAL_CASES = ("rectangular", "dense_and_sparse", "dense_bias_negative", "dense_bias_positive", "cap1",
                 "uncapped", "identity_output", "revive", "one_value")


def dies_before_the_last_layer(rng: np.random.Generator) -> tuple[Network, sp.csr_matrix]:
    """(network, 40 features): 9 -> 3 -> 13 whose first layer kills every row (a structural
    bias of -1000 sends every nonzero below 0): nothing is held at the last, wider layer."""
    network = feedforward_network(rng, widths=[9, 3, 13], bias_rules=["structural"] * 2, activations=["relu"] * 2,
                                  bias=[-1e3, -0.1])
    return network, random_features(rng, 40, 9, 0.5)


def survivors_continue_mid_network() -> tuple[Network, sp.csr_matrix]:
    """(network, 60 features): a rectangular network whose batches of 10 samples run a head
    of layers, after which the survivors of every batch (3 of them, 30 values wide) continue
    together before layer 4 (seeded: the path is certain)."""
    rng = np.random.default_rng(9)
    network = feedforward_network(rng, widths=[12, 20, 9, 30, 7], bias_rules=["structural"] * 4,
                                  activations=["relu"] * 4, bias=[-0.6, -0.3, -0.3, -0.1])
    return network, random_features(rng, 60, 12, 0.3)


def general_case(rng: np.random.Generator, name: str, samples: int = 120) -> tuple[Network, sp.csr_matrix]:
    """(network, features) of the general case ``name`` of :data:`GENERAL_CASES`.

    rectangular: sparse layers 50->90->70->130->12, structural bias (rows die), ReLU capped at 32;
    dense_and_sparse: dense 40->64, three sparse 64x64, dense 64->10 identity, dense bias;
    dense_bias_negative / dense_bias_positive: sparse 60x60 layers, a dense bias <= 0 (rows
    may be pruned) or of both signs (they may not); cap1 / uncapped: ReLU capped at 1, or
    not at all (a dense bias); identity_output: sparse layers ending in an identity layer
    with negative outputs; revive: layer 1 zeroes most rows, layer 2's positive dense bias
    revives them; one_value: one weight value a layer (0.0625, then 0.3) and half-precision
    values. Features have some empty rows and values of both signs.
    """
    def sparse(n_in, n_out, density=0.15, values="normal"):
        return random_layer(rng, n_in, density, values=values, columns=n_out)

    def dense(n_in, n_out):
        return rng.normal(0.0, 1.2 / np.sqrt(n_in), (n_in, n_out))

    if name == "rectangular":
        widths = (50, 90, 70, 130, 12)
        layers = [sparse(a, b) for a, b in zip(widths, widths[1:])]
        net = Network.from_layers(layers, [rng.uniform(low, 0.1, b) for low, b in zip((-0.3, -0.5, -1, -2), widths[1:])])
    elif name == "dense_and_sparse":
        layers = [dense(40, 64), sparse(64, 64), sparse(64, 64), sparse(64, 64), dense(64, 10)]
        bias = [rng.normal(0, 0.2, w.shape[1]) for w in layers]
        net = Network.from_layers(layers, bias, bias_rule="dense", activation=["relu"] * 4 + ["identity"],
                                  ymax=None)
    elif name in ("dense_bias_negative", "dense_bias_positive", "cap1", "uncapped"):
        layers = [sparse(60, 60, 0.2) for _ in range(6)]
        low, high = (-0.3, 0.0) if name == "dense_bias_negative" else (-0.2, 0.2)
        ymax = {"cap1": 1.0, "uncapped": None}.get(name, 32.0)
        net = Network.from_layers(layers, rng.uniform(low, high, (6, 60)), bias_rule="dense", ymax=ymax)
    elif name == "identity_output":
        layers = [sparse(48, 80), sparse(80, 80), sparse(80, 12, 0.3, "standard")]
        net = Network.from_layers(layers, [-0.1, rng.normal(0, 0.1, 80), rng.normal(0, 0.5, 12)],
                                  bias_rule=["structural", "dense", "dense"], activation=["relu", "relu", "identity"],
                                  ymax=[4.0, None, None])
    elif name == "revive":
        kill = sparse(40, 40, 0.2, (-1.0, -0.1))             # every weight negative
        net = Network.from_layers([kill, sparse(40, 40, 0.2), sparse(40, 40, 0.2)], [0.0, 0.4, -0.2],
                                  bias_rule="dense")
    elif name == "one_value":
        layers = [sparse(70, 70, 0.2, 0.0625), sparse(70, 70, 0.2, 0.3), sparse(70, 70, 0.2, "fp16")]
        net = Network.from_layers(layers, -0.05, bias_rule="dense", ymax=[32.0, 2.0, 32.0])
    else:
        raise ValueError(f"unknown general case {name!r}")
    dead = [1, samples // 2] if samples > 2 else []
    # revive: positive inputs, so that layer 1's negative weights zero every row
    values = (0.1, 1.0) if name == "revive" else (-0.5, 1.0)
    features = random_features(rng, samples, net.inputs, 0.3, values=values, dead=dead)
    return net, features


def reference_run(network: Network, features, precision: str = "fp64"):
    """(InferenceResult, rows, values) of the reference engine: its result and final activations."""
    engine = ReferenceEngine(precision=precision)
    result = engine.run(network, features)
    rows, values = engine.activations()
    return result, rows, values


def engine_availability(name: str) -> tuple[bool, str]:
    """(usable here, why not) for a registered engine; an engine whose module cannot even
    be imported here counts as unavailable, with the exception as the reason."""
    try:
        return engine_class(name).availability()
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


def _read_tsv_triples(raw: bytes) -> np.ndarray:
    return np.array(raw.split(), dtype=np.float64).reshape(-1, 3)


def _read_mtx(path: Path) -> sp.csr_matrix:
    """A MatrixMarket coordinate file (pattern or real, optionally gzipped); a pattern reads as ones."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        lines = [line for line in fh if not line.startswith("%")]
    rows, cols, nnz = (int(v) for v in lines[0].split())
    t = np.array(" ".join(lines[1:]).split(), dtype=np.float64).reshape(nnz, -1)
    values = t[:, 2] if t.shape[1] > 2 else np.ones(nnz)
    return sp.csr_matrix((values, (t[:, 0].astype(np.int64) - 1, t[:, 1].astype(np.int64) - 1)), shape=(rows, cols))


def read_official_subset(official_dir: Path):
    """(network, features, truth ids) of the official N=1024, L=120 subset: the 120 layers of
    ``neuron1024.tar.gz``, the first 1,200 inputs and their 19 categories.

    Read with tarfile and numpy alone, independently of :mod:`spdnn.formats`, so that an
    engine test cannot pass or fail through a reader's bug. Features are binary (1.0);
    truth ids are 1-based int64, ascending.
    """
    n = 1024
    layers = {}
    with tarfile.open(official_dir / "neuron1024.tar.gz") as tar:
        for member in tar:
            match = re.search(r"n1024-l(\d+)\.tsv$", member.name)
            if not member.isfile() or match is None:
                continue
            t = _read_tsv_triples(tar.extractfile(member).read())
            layers[int(match.group(1))] = sp.csr_matrix(
                (t[:, 2], (t[:, 0].astype(np.int64) - 1, t[:, 1].astype(np.int64) - 1)), shape=(n, n))
    assert sorted(layers) == list(range(1, 121)), "official tarball lacks some of the 120 layers"
    features = _read_mtx(official_dir / "sparse-images-1024-first1200.mtx.gz")
    features.data[:] = 1.0
    truth = _read_mtx(official_dir / "neuron1024-l120-categories-first1200.mtx").tocoo()
    ids = np.unique(truth.row + 1 if truth.shape[0] > 1 else truth.col + 1).astype(np.int64)
    return Network.from_layers([layers[k] for k in range(1, 121)], -0.30), features, ids


def challenge_cache(path: Path, neurons: int, layers: int, samples: int) -> np.ndarray:
    """Fill the cache folder ``path`` (``SPDNN_CACHE_DIR``) with a generated cell: the first
    ``samples`` challenge inputs of N = ``neurons`` and their float64 truth after ``layers``
    layers; return the truth (1-based ids). The environment is left as it was."""
    import pytest

    from spdnn.generate import cached_challenge

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPDNN_CACHE_DIR", str(path))
        return np.asarray(cached_challenge(neurons, layers, samples=samples)[2])


def same_csr(a, b) -> bool:
    """Exact equality of two sparse matrices: shape, pattern and value bits (after sorting indices)."""
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    a.sort_indices()
    b.sort_indices()
    return (a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
            and np.array_equal(a.data.view(np.int64), b.data.view(np.int64)))


def sum_then_scale_traps() -> dict[str, tuple[Network, sp.csr_matrix]]:
    """{name: (network, features)} on which summing first and scaling once by a layer's
    single power-of-two weight differs from the contract's per-term products: subnormal
    products ('subnormal'), and sums that overflow before the scale ('overflow').
    Deterministic (no seed to print)."""
    n = 32
    w = sp.csr_matrix(np.full((n, n), 2.0 ** -4))
    rng = np.random.default_rng(5)
    tiny = rng.integers(1, 2 ** 20, size=(6, n)) * 5e-324            # subnormal inputs
    subnormal = (Network.from_layers([w, w], 0.0, ymax=1e300),
                 sp.csr_matrix(np.vstack([tiny, rng.random((3, n))])))
    huge = rng.uniform(1.0e307, 1.7e307, size=(5, n))                 # 32 of them overflow a sum
    overflow = (Network.from_layers([w, w], 0.0, ymax=1.5e308), sp.csr_matrix(huge))
    return {"subnormal": subnormal, "overflow": overflow}


def packed_entries(p, config, n_in: int, n_out: int):
    """(input i, output j, value) of every real entry of the packed layer ``p``
    (spdnn.engines.cuda.layout), padding skipped, in the order the layer kernel adds a
    column's terms: chunk by chunk, entry by entry of its lane."""
    nchunks, slices = config.nchunks(n_in), config.slices(n_out)
    meta = p.meta.reshape(slices, nchunks, config.cols_per_thread, config.nwarps, 2)
    for s in range(slices):
        for c in range(nchunks):
            for t in range(config.cols_per_thread):
                for wp in range(config.nwarps):
                    off, width = meta[s, c, t, wp]
                    for lane in range(32):
                        j = s * config.outputs_per_block + t * config.threads + wp * 32 + lane
                        for k in range(width):
                            e = off + 32 * k + lane
                            if p.idx[e] != config.chunk:
                                yield c * config.chunk + int(p.idx[e]), j, p.values[e]
