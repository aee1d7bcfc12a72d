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

import numpy as np
import pytest

from spdnn.engines import ENGINES, engine_class
from spdnn.engines.reference import ReferenceEngine
from spdnn.verify import explain_differences

from factories import engine_availability, general_features, general_network, read_official_subset

PRECISIONS = ["fp32", "fp64"]


@pytest.fixture(params=sorted(ENGINES))
def engine_name(request) -> str:
    ok, why = engine_availability(request.param)
    if not ok:
        pytest.skip(f"engine {request.param!r} not available here: {why}")
    return request.param


@pytest.fixture(params=PRECISIONS)
def precision(request) -> str:
    return request.param


def make_engine(name: str, precision: str):
    return engine_class(name)(precision=precision)


# -- (a) the official subset -----------------------------------------------------------------

@pytest.fixture(scope="session")
def official_case(official_dir):
    """(network, features, truth ids) of the official first 1,200 samples, read once."""
    network, features, truth_ids = read_official_subset(official_dir)
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

@pytest.mark.parametrize("case", range(6))
def test_random_networks(engine_name, precision, rng, case):
    network = general_network(rng)
    features = general_features(rng, int(rng.integers(0, 200)), network.neurons)
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
    network = general_network(rng, depth=int(rng.integers(3, 9)), bias_kind="negative")
    features = general_features(rng, int(rng.integers(20, 150)), network.neurons)
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
