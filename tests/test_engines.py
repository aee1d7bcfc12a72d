"""One test body for every engine: each runs the same assertions against the fp64 reference.

Parametrised over every registered engine (those not usable on this machine are skipped
with the reason: the CUDA engines run the same body on a GPU machine) and both
precisions. Cases: (a) the official N=1024 subset, 1,200 rows, 120 layers -> exactly the
truth ids; (b) random general networks -> fp64 categories, survivors and activations
equal to the reference bit for bit, fp32 categories equal unless explained by
:mod:`spdnn.verify`; (c) segments: infer(0, k) + activations() + load() + infer(k, L)
equals a full run.
"""
from __future__ import annotations

import io
import re
import tarfile

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines import ENGINES, engine_class
from spdnn.engines.reference import ReferenceEngine
from spdnn.formats import read_categories, read_features
from spdnn.network import Network
from spdnn.verify import explain_differences

PRECISIONS = ["fp32", "fp64"]


def _availability(name: str) -> tuple[bool, str]:
    try:
        return engine_class(name).availability()
    except Exception as exc:  # an engine module that cannot even be imported here
        return False, f"{type(exc).__name__}: {exc}"


@pytest.fixture(params=sorted(ENGINES))
def engine_name(request) -> str:
    ok, why = _availability(request.param)
    if not ok:
        pytest.skip(f"engine {request.param!r} not available here: {why}")
    return request.param


@pytest.fixture(params=PRECISIONS)
def precision(request) -> str:
    return request.param


def make_engine(name: str, precision: str):
    return engine_class(name)(precision=precision)


# -- (a) the official subset -----------------------------------------------------------------

def _read_official_network(tar_path) -> Network:
    """The 120 official N=1024 layers from neuron1024.tar.gz (tarfile + numpy)."""
    layers = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            match = re.search(r"n1024-l(\d+)\.tsv$", member.name)
            if not member.isfile() or match is None:
                continue
            text = tar.extractfile(member).read()
            a = np.array(text.split(), dtype=np.float64).reshape(-1, 3)
            layers[int(match.group(1))] = sp.csr_matrix(
                (a[:, 2], (a[:, 0].astype(np.int64) - 1, a[:, 1].astype(np.int64) - 1)), shape=(1024, 1024))
    assert sorted(layers) == list(range(1, 121))
    return Network.from_layers([layers[k] for k in range(1, 121)], -0.30)


@pytest.fixture(scope="session")
def official_case(official_dir):
    """(network, features, truth ids) of the official first 1,200 samples, read once."""
    network = _read_official_network(official_dir / "neuron1024.tar.gz")
    features = read_features(official_dir / "sparse-images-1024-first1200.mtx.gz", 1024, cache=False)
    truth_ids = read_categories(official_dir / "neuron1024-l120-categories-first1200.mtx")
    reference = ReferenceEngine(precision="fp64").run(network, features)
    return network, features, truth_ids, reference


def test_official_subset(engine_name, precision, official_case):
    network, features, truth, reference = official_case
    assert truth.size == 19                                   # the official fact
    result = make_engine(engine_name, precision).run(network, features)
    np.testing.assert_array_equal(result.categories, truth)
    assert result.survivors.shape == (120,)
    assert result.survivors[-1] == truth.size
    engine = make_engine(engine_name, precision)
    if precision == "fp64" and getattr(engine, "exact_fp64", True):
        np.testing.assert_array_equal(result.survivors, reference.survivors)
    assert result.inference_seconds >= 0 and result.preprocess_seconds >= 0
    assert result.samples == 1200 and result.edges == 120 * 32 * 1024


# -- (b) random general networks ------------------------------------------------------------

def random_network(rng, *, neurons=None, depth=None, weights=None, bias_kind=None) -> Network:
    """A random network exercising the general path: varied row/column lengths (empty ones
    included), negative and positive weights, per-neuron bias of any sign, any ymax."""
    n = int(rng.integers(5, 70)) if neurons is None else neurons
    depth = int(rng.integers(1, 10)) if depth is None else depth
    weights = rng.choice(["normal", "uniform16", "uniform03", "positive"]) if weights is None else weights
    layers = []
    for _ in range(depth):
        density = rng.uniform(0.02, 0.4)
        w = sp.random(n, n, density=density, random_state=rng, format="csr")
        empty = rng.random(n) < 0.1                           # some empty rows and columns
        w = sp.diags((~empty).astype(float)) @ w @ sp.diags((rng.random(n) > 0.1).astype(float))
        w = sp.csr_matrix(w)
        if weights == "normal":
            w.data = rng.normal(0.0, 0.6, w.nnz)
        elif weights == "uniform16":
            w.data[:] = 0.0625
        elif weights == "uniform03":
            w.data[:] = 0.3
        else:
            w.data = rng.uniform(0.0, 0.5, w.nnz)
        layers.append(w)
    bias_kind = rng.choice(["negative", "positive", "mixed", "constant"]) if bias_kind is None else bias_kind
    bias = {"negative": lambda: rng.uniform(-0.4, 0.0, (depth, n)),
            "positive": lambda: rng.uniform(0.0, 0.2, (depth, n)),
            "mixed": lambda: rng.uniform(-0.3, 0.3, (depth, n)),
            "constant": lambda: -0.25}[bias_kind]()
    ymax = float(rng.choice([32.0, 1.0, 4.5]))
    return Network.from_layers(layers, bias, ymax=ymax)


def random_features(rng, samples: int, neurons: int) -> sp.csr_matrix:
    f = sp.random(samples, neurons, density=rng.uniform(0.05, 0.5), random_state=rng, format="csr")
    if rng.random() < 0.5:
        f.data[:] = 1.0
    else:
        f.data = rng.normal(0.0, 1.0, f.nnz)                  # negative inputs too
    return f


@pytest.mark.parametrize("case", range(6))
def test_random_networks(engine_name, precision, rng, case):
    network = random_network(rng)
    features = random_features(rng, int(rng.integers(0, 200)), network.neurons)
    reference = ReferenceEngine(precision="fp64")
    ref = reference.run(network, features)
    engine = make_engine(engine_name, precision)
    result = engine.run(network, features)
    bitwise = getattr(engine, "exact_fp64", True)   # a library baseline may declare it sums otherwise
    if precision == "fp64" and bitwise:
        np.testing.assert_array_equal(result.categories, ref.categories)
        np.testing.assert_array_equal(result.survivors, ref.survivors)
        rows, values = engine.activations()
        ref_rows, ref_values = reference.activations()
        np.testing.assert_array_equal(rows, ref_rows)
        assert values.shape == ref_values.shape
        assert (values != ref_values).nnz == 0, "fp64 activations differ from the reference"
    elif not np.array_equal(result.categories, ref.categories):
        # fp32 may differ only on ill-conditioned samples, and then verify must say where
        explanation = explain_differences(network, features, result.categories, ref.categories,
                                          found_precision=precision, exact_limit=1)
        text = explanation.to_text()
        assert all(r.split_layer is not None for r in explanation.records), text


# -- (c) segments -----------------------------------------------------------------------------

def test_segments_equal_full_run(engine_name, precision, rng):
    network = random_network(rng, depth=int(rng.integers(3, 9)), bias_kind="negative")
    features = random_features(rng, int(rng.integers(20, 150)), network.neurons)
    full = make_engine(engine_name, precision).run(network, features)
    split = int(rng.integers(1, network.depth))

    first = make_engine(engine_name, precision)
    first.prepare(network)
    first.load(features)
    cats1, surv1, _ = first.infer(0, split)
    rows, values = first.activations()
    np.testing.assert_array_equal(rows + 1, cats1)
    assert values.shape == (len(rows), network.neurons)

    second = make_engine(engine_name, precision)
    second.prepare(network)
    second.load(values)
    cats2, surv2, _ = second.infer(split, network.depth)
    np.testing.assert_array_equal(np.sort(rows[cats2 - 1] + 1), full.categories)
    np.testing.assert_array_equal(np.concatenate([surv1, surv2]), full.survivors)
    # and the state carries over within one engine too
    cats3, surv3, _ = first.infer(split, network.depth)
    np.testing.assert_array_equal(cats3, full.categories)
    np.testing.assert_array_equal(surv3, surv2)
