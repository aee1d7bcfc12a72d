"""One test body for every engine: each runs the same assertions against the fp64 reference.

Parametrised over every registered engine (those not usable on this machine are skipped
with the reason: the CUDA engines run the same body on a GPU machine) and both
precisions. Cases: (a) the official N=1024 subset, 1,200 rows, 120 layers -> exactly the
truth ids; (b) random general networks -> fp64 categories, survivors and activations
equal to the reference bit for bit, fp32 categories equal unless explained by
:mod:`spdnn.verify`; (c) segments: infer(0, k) + activations() + load() + infer(k, L)
equals a full run; (d) inputs on which summing first and scaling once would change the
bits (subnormal products, overflowing sums); (e) engines that merge identical samples:
merge on and off agree bit for bit.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines import ENGINES, engine_class
from spdnn.engines.reference import ReferenceEngine
from spdnn.verify import explain_differences

from factories import (engine_availability, general_features, general_network, read_official_subset,
                       sum_then_scale_traps)

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
    assert result.samples == 1200 and result.edges == 120 * 32 * 1024
    assert result.teraedges_per_second == pytest.approx(1200 * result.edges / result.inference_seconds / 1e12)


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


# -- (d) sum-then-scale traps ----------------------------------------------------------------

@pytest.mark.parametrize("case", ["subnormal", "overflow"])
def test_sum_then_scale_traps_keep_the_bits(engine_name, case):
    """Every weight is 1/16, but subnormal products or overflowing sums make summing first
    wrong: fp64 engines must give the reference's bits anyway."""
    network, features = sum_then_scale_traps()[case]
    reference = ReferenceEngine(precision="fp64")
    ref = reference.run(network, features)
    engine = make_engine(engine_name, "fp64")
    result = engine.run(network, features)
    np.testing.assert_array_equal(result.categories, ref.categories)
    assert ref.categories.size > 0
    if engine.exact_fp64:
        rows, values = engine.activations()
        ref_rows, ref_values = reference.activations()
        np.testing.assert_array_equal(rows, ref_rows)
        assert (values != ref_values).nnz == 0, f"{case}: fp64 activations differ from the reference"


# -- (e) merging identical samples -------------------------------------------------------------

def test_merge_on_and_off_agree(engine_name, precision):
    """RadiX-Net survivors saturate to one constant row; engines that merge identical
    samples must give exactly the unmerged results, and report fewer rows computed."""
    from spdnn.generate import radixnet_network

    cls = engine_class(engine_name)
    if "merge" not in inspect.signature(cls).parameters:
        pytest.skip(f"engine {engine_name!r} does not merge samples")
    network = radixnet_network(64, 40, seed=1, bias=-0.3, materialize=True)
    rng = np.random.default_rng(2)
    features = sp.csr_matrix((rng.random((300, 64)) < 0.35).astype(float))
    merged, plain = cls(precision=precision, merge=True), cls(precision=precision, merge=False)
    a, b = merged.run(network, features), plain.run(network, features)
    assert a.categories.size > 1
    assert a.extra["merged_samples"] > 0 and b.extra["merged_samples"] == 0
    np.testing.assert_array_equal(a.categories, b.categories)
    np.testing.assert_array_equal(a.survivors, b.survivors)
    rows_a, values_a = merged.activations()
    rows_b, values_b = plain.activations()
    np.testing.assert_array_equal(rows_a, rows_b)
    assert (values_a != values_b).nnz == 0
    assert sum(a.extra["rows_computed"]) < sum(b.extra["rows_computed"])
    if precision == "fp64":
        ref = ReferenceEngine(precision="fp64").run(network, features)
        np.testing.assert_array_equal(a.survivors, ref.survivors)
