"""spdnn.verify: comparing categories, tracing samples, explaining fp32/fp64 differences."""
from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines.cpu import CpuEngine
from spdnn.engines.reference import ReferenceEngine, reference_layer
from spdnn.errors import OptionError
from spdnn.network import Network
from spdnn.verify import (SPLIT_RTOL, TruthOrigin, compare_categories, explain_differences, trace_sample,
                          trace_sample_exact, truth_origin)

from factories import general_features, general_network, random_layer


# -- compare_categories ------------------------------------------------------------------

def test_compare_equal_sets_any_order():
    c = compare_categories([5, 1, 3], np.array([1, 3, 5]))
    assert c.passed and c.missing.size == 0 and c.extra.size == 0
    assert (c.found_count, c.truth_count) == (3, 3)


def test_compare_missing_and_extra():
    c = compare_categories([1, 2, 7, 9], [2, 3, 4, 9])
    assert not c.passed
    assert c.missing.dtype == np.int64 and c.extra.dtype == np.int64
    np.testing.assert_array_equal(c.missing, [3, 4])
    np.testing.assert_array_equal(c.extra, [1, 7])
    assert json.loads(json.dumps(c.to_dict()))["missing"] == [3, 4]


def test_compare_empty_and_duplicates():
    assert compare_categories([], []).passed
    c = compare_categories([2, 2, 3], [3])
    np.testing.assert_array_equal(c.extra, [2])
    assert c.found_count == 2


@pytest.mark.parametrize("bad", [[0, 1], [-2], [1.5], ["a"]])
def test_compare_rejects_bad_ids(bad):
    with pytest.raises(OptionError):
        compare_categories(bad, [1])


# -- the unstable fixed point ----------------------------------------------------------------

N = 32
BIAS = -0.3125                   # exact in float32 and float64: v* = 0.3125
DEPTH = 48
OFFSET = 2.0 ** -40              # below float32's resolution at 0.3125, within float64's


@pytest.fixture
def fixed_point_case():
    """Every column has 32 weights of 1/16, so a uniform row v becomes 2v + b.

    Sample 3 starts at v* - 2**-40: float64 (exact here) walks away from v* and dies;
    float32 rounds the input to v* exactly and stays there for ever (survives).
    The other samples are ordinary random inputs.
    """
    w = sp.csr_matrix(np.full((N, N), 1.0 / 16.0))
    network = Network.from_layers([w] * DEPTH, BIAS)
    rng = np.random.default_rng(11)
    rows = (rng.random((5, N)) < 0.4).astype(float)
    rows[2, :] = 0.3125 - OFFSET
    return network, sp.csr_matrix(rows)


def _exact_death_layer() -> int:
    """The same recurrence in Fractions, independently of spdnn: v' = 2v + b."""
    v = Fraction(0.3125 - OFFSET)
    for k in range(1, DEPTH + 1):
        v = min(max(2 * v + Fraction(BIAS), Fraction(0)), Fraction(32))
        if v == 0:
            return k
    raise AssertionError("the construction should die")


def test_fixed_point_engines_disagree(fixed_point_case):
    network, features = fixed_point_case
    fp64 = ReferenceEngine(precision="fp64").run(network, features)
    fp32 = CpuEngine(precision="fp32").run(network, features)
    assert 3 not in fp64.categories and 3 in fp32.categories
    assert np.array_equal(np.setdiff1d(fp32.categories, fp64.categories), [3])


def test_explanation_names_split_and_right_engine(fixed_point_case):
    network, features = fixed_point_case
    truth = ReferenceEngine(precision="fp64").run(network, features).categories
    found = CpuEngine(precision="fp32").run(network, features).categories
    explanation = explain_differences(network, features, found, truth, found_precision="fp32")
    assert not explanation.comparison.passed
    assert len(explanation.records) == 1
    record = explanation.records[0]
    death = _exact_death_layer()
    assert record.sample == 3 and record.in_set == "extra"
    assert not record.fp64.survives and record.fp64.death_layer == death
    assert record.fp32.survives and record.fp32.final_max == pytest.approx(0.3125)
    assert record.exact is not None and not record.exact.survives and record.exact.death_layer == death
    assert record.right == "fp64" and record.reproduced and explanation.explained
    # After layer k the float64 row is v* - 2**(k-40) and the float32 row is v*: the
    # split is the first k with 2**(k-40) > SPLIT_RTOL * (v* - 2**(k-40)).
    expected = next(k for k in range(1, DEPTH + 1)
                    if 2.0 ** (k - 40) > SPLIT_RTOL * (0.3125 - 2.0 ** (k - 40)))
    assert record.split_layer == expected and record.split_reason == "values"
    assert record.split_layer < death
    text = explanation.to_text()
    assert "sample 3" in text and f"layer {expected}" in text and "right: fp64" in text
    payload = json.loads(json.dumps(explanation.to_dict()))
    assert payload["records"][0]["split_layer"] == expected


def test_exact_trace_agrees_with_fp64_where_fp64_is_exact(fixed_point_case):
    network, features = fixed_point_case
    row = features[2]
    floats = trace_sample(network, row, precision="fp64")
    exact = trace_sample_exact(network, row)
    assert len(exact.alive) == len(floats) == _exact_death_layer()
    for k in range(len(floats)):
        values = exact.values(k)
        dense = np.zeros(N)
        for i, v in values.items():
            dense[i] = v
            assert Fraction(float(v)) == v          # every value is a float64 exactly
        np.testing.assert_array_equal(dense, floats[k])
    assert exact.alive[-1] is False and all(exact.alive[:-1])
    # float32 stays on the fixed point
    f32 = trace_sample(network, row, precision="fp32")
    assert len(f32) == DEPTH and f32[-1].dtype == np.float32
    assert np.all(f32[-1] == np.float32(0.3125))


# -- tracing against the reference -------------------------------------------------------------

def test_trace_matches_reference_layers(rng):
    network = general_network(rng, neurons=24, depth=6, weights="normal", bias_kind="mixed")
    features = general_features(rng, 5, 24)
    for s in range(features.shape[0]):
        trace = trace_sample(network, features[s], precision="fp64")
        y = features[s].astype(np.float64)
        for k, layer in enumerate(trace):
            y = reference_layer(y, network.layers[k], network.bias[k], network.ymax)
            np.testing.assert_array_equal(layer, y.toarray()[0])
        assert len(trace) == network.depth or not trace[-1].any()


def test_exact_trace_close_to_fp64_on_random_networks(rng):
    network = general_network(rng, neurons=20, depth=5, weights="positive", bias_kind="negative")
    features = general_features(rng, 4, 20)
    for s in range(features.shape[0]):
        floats = trace_sample(network, features[s], precision="fp64")
        exact = trace_sample_exact(network, features[s])
        assert exact.alive == [bool(a.any()) for a in floats][:len(exact.alive)]
        for k in range(min(len(floats), len(exact.layers))):
            dense = np.zeros(20)
            for i, v in exact.values(k).items():
                dense[i] = float(v)
            np.testing.assert_allclose(dense, floats[k], rtol=1e-12, atol=1e-12)


def test_trace_rejects_bad_input(fixed_point_case):
    network, features = fixed_point_case
    with pytest.raises(OptionError):
        trace_sample(network, np.ones(N + 1))
    with pytest.raises(OptionError):
        trace_sample(network, features[0], precision="fp16")
    with pytest.raises(OptionError):
        trace_sample_exact(network, np.ones(N - 1))


# -- explanation edge cases ---------------------------------------------------------------------

def test_explain_matching_sets(fixed_point_case):
    network, features = fixed_point_case
    truth = ReferenceEngine(precision="fp64").run(network, features).categories
    explanation = explain_differences(network, features, truth, truth)
    assert explanation.comparison.passed and explanation.records == [] and explanation.explained
    assert "match" in explanation.to_text()


def test_explain_flags_differences_rounding_cannot_explain(fixed_point_case):
    """An fp64 run that 'missed' a well-conditioned survivor: no rounding explains that."""
    network, features = fixed_point_case
    truth = ReferenceEngine(precision="fp64").run(network, features).categories
    assert truth.size >= 1
    found = truth[1:]
    explanation = explain_differences(network, features, found, truth, found_precision="fp64", exact_limit=0)
    record = explanation.records[0]
    assert record.sample == truth[0] and record.in_set == "missing"
    assert record.fp64.survives and record.fp32.survives
    assert record.split_layer is None and record.exact is None and record.right == "unknown"
    assert not record.reproduced and not explanation.explained
    assert "NOT reproduced" in explanation.to_text()


def test_explain_rejects_ids_beyond_features(fixed_point_case):
    network, features = fixed_point_case
    with pytest.raises(OptionError, match="beyond"):
        explain_differences(network, features, [1, 99], [1])


# -- what the evidence shows about the truth (issue 12, item 7) ------------------------------

def test_truth_origin_compares_known_keys():
    origin = truth_origin({"bias": -0.3, "neurons": 64, "seed": None, "samples": 200},
                          {"bias": np.float64(-0.2), "neurons": 64, "seed": 3, "layers": 4}, source="info.json")
    assert origin.differences == ["bias: this run -0.2, the truth's -0.3"]
    assert origin.source == "info.json" and not origin.same_data
    same = truth_origin({"bias": -0.3, "neurons": 64}, {"bias": -0.3, "neurons": np.int64(64)}, source="x",
                        same_data=True)
    assert same.differences == [] and same.same_data
    # a known difference overrides the caller's belief that the data are the same
    assert not truth_origin({"bias": -0.3}, {"bias": -0.2}, source="x", same_data=True).same_data


@pytest.fixture
def truth_missing_a_survivor(fixed_point_case):
    """A 'truth' without one well-conditioned survivor: every computation disagrees with it."""
    network, features = fixed_point_case
    found = ReferenceEngine(precision="fp64").run(network, features).categories
    assert found.size >= 2
    return network, features, found, found[1:]


@pytest.mark.parametrize("origin, verdict, says, never", [
    (None, "truth or data", "or the truth file is wrong; nothing known here tells which", "the truth is wrong"),
    (TruthOrigin(source="computed here", same_data=True), "truth wrong",
     "computed from this run's own network, bias and inputs (computed here)", "nothing known here"),
    (TruthOrigin(source="info.json", differences=["bias: this run -0.2, the truth's -0.3"]), "other data",
     "The run's data differ from those the truth was made with (info.json): bias: this run -0.2, the truth's -0.3",
     "the truth is wrong"),
])
def test_explanation_blames_what_the_evidence_shows(truth_missing_a_survivor, origin, verdict, says, never):
    network, features, found, truth = truth_missing_a_survivor
    explanation = explain_differences(network, features, found, truth, found_precision="fp64", exact_limit=1,
                                      origin=origin)
    (record,) = explanation.records
    assert record.truth_disputed and record.reproduced
    assert explanation.verdict == verdict and not explanation.explained
    text = explanation.to_text()
    assert says in text and never not in text and "rounding effects" not in text
    assert json.loads(json.dumps(explanation.to_dict()))["verdict"] == verdict


def test_rounding_verdict(fixed_point_case):
    network, features = fixed_point_case
    truth = ReferenceEngine(precision="fp64").run(network, features).categories
    found = CpuEngine(precision="fp32").run(network, features).categories
    explanation = explain_differences(network, features, found, truth, found_precision="fp32")
    assert explanation.verdict == "rounding"
    assert "rounding effects of fp32 on ill-conditioned samples (docs/challenge.md, Numerics)" in explanation.to_text()


def test_trace_limit_counts_the_rest(rng):
    network = general_network(rng, neurons=16, depth=3, weights="positive", bias_kind="negative")
    features = general_features(rng, 30, 16)
    truth = ReferenceEngine(precision="fp64").run(network, features).categories
    found = np.setdiff1d(np.arange(1, 31), truth)  # every sample on the wrong side
    explanation = explain_differences(network, features, found, truth, found_precision="fp64", exact_limit=0,
                                      trace_limit=4)
    assert len(explanation.records) == 4 and explanation.untraced == 26
    assert [r.sample for r in explanation.records] == list(range(1, 5))
    text = explanation.to_text(limit=2)
    assert "- ... and 28 more differing sample(s) (26 not traced)" in text
    assert not explanation.explained


# -- general networks ------------------------------------------------------------------------

def _general(rng):
    from spdnn.network import Network

    layers = [rng.standard_normal((6, 8)), random_layer(rng, 8, 0.5), rng.standard_normal((8, 3))]
    return Network.from_layers(layers, [0.3, rng.standard_normal(8), -0.1], bias_rule=["dense", "structural", "dense"],
                               activation=["relu", "relu", "identity"], ymax=[1.0, None, None])


def test_traces_of_a_general_network_equal_the_reference(rng):
    from spdnn.engines.reference import ReferenceEngine
    from spdnn.verify import trace_sample, trace_sample_exact

    net = _general(rng)
    x = sp.csr_matrix(rng.standard_normal((5, 6)) * (rng.random((5, 6)) < 0.6))
    result = ReferenceEngine().run(net, x, outputs="activations")
    for i in range(5):
        trace = trace_sample(net, x[i])
        assert len(trace) == 3 and trace[-1].shape == (3,)
        np.testing.assert_array_equal(trace[-1], result.outputs[i])      # same order, same bits
        exact = trace_sample_exact(net, x[i])
        final = exact.values(2)
        exact_row = np.array([float(final.get(j, 0)) for j in range(3)])
        np.testing.assert_allclose(exact_row, result.outputs[i], rtol=1e-9, atol=1e-12)
        assert exact.alive[-1] == bool(np.any(result.outputs[i]))


def test_explain_predictions_finds_near_ties_decided_by_rounding():
    from spdnn.network import Network
    from spdnn.verify import explain_predictions

    # output 0 = x, output 1 = x + tiny: float64 sees output 1 larger, float32 rounds it to a tie (-> 0)
    tiny = 2.0 ** -30
    w = np.array([[1.0, 1.0]])
    net = Network.from_layers([w], [np.array([0.0, tiny])], bias_rule="dense", activation="identity")
    x = sp.csr_matrix(np.array([[1.0], [2.0 ** -10]]))
    f64 = spdnn_infer(net, x, "fp64")
    f32 = spdnn_infer(net, x, "fp32")
    assert f64.tolist() == [1, 1] and f32.tolist() == [0, 1]
    e = explain_predictions(net, x, f32, f64, found_precision="fp32", exact_limit=2)
    assert e.differing == 1 and e.verdict == "rounding"
    r = e.records[0]
    assert (r.sample, r.found, r.truth, r.fp32, r.fp64, r.exact) == (1, 0, 1, 0, 1, 1)
    assert r.margin < 1e-8 and "near tie" in e.to_text()
    wrong = explain_predictions(net, x, np.array([1, 0]), f64, found_precision="fp64")
    assert wrong.verdict == "engine" and "NOT reproduced" in wrong.to_text()
    assert explain_predictions(net, x, f64, f64).verdict == "match"


def spdnn_infer(net, x, precision):
    from spdnn.engines.reference import ReferenceEngine

    return ReferenceEngine(precision=precision).run(net, x, outputs="predictions").predictions
