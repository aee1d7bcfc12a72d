"""One test body for every engine: each runs the same assertions against the fp64 reference.

Parametrised over every registered engine (those not usable on this machine are skipped
with the reason: the CUDA engines run the same body on a GPU machine) and both
precisions. Cases: (a) the official N=1024 subset, 1,200 rows, 120 layers -> exactly the
truth ids; (b) random general networks -> fp64 categories, survivors and activations
equal to the reference bit for bit, fp32 categories equal unless explained by
:mod:`spdnn.verify`; (b') general networks (rectangular, dense and sparse layers, both
bias rules, any cap, identity layers, planted cases where pruning would be wrong) -> fp64
outputs and activations equal to the reference bit for bit, fp32 predictions equal to
fp64's where the top two differ clearly, or a clear refusal by an engine that does not
support the network; (c) segments: infer(0, k) + activations() + load() + infer(k, L)
equals a full run; (d) inputs on which summing first and scaling once would change the
bits (subnormal products, overflowing sums); (e) engines that merge identical samples:
merge on and off agree bit for bit.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines import engine_class, get_engine
from spdnn.errors import OptionError, SpdnnError
from spdnn.engines.reference import ReferenceEngine
from spdnn.verify import explain_differences

from factories import (dies_before_the_last_layer, engine_availability, feedforward_network, general_cases,
                       general_features, general_network, random_features, read_official_subset,
                       sum_then_scale_traps, survivors_continue_mid_network)

PRECISIONS = ["fp32", "fp64"]


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


# -- (b') general networks --------------------------------------------------------------------

GENERAL_CASES = ["revive", "negative_constant", "rectangular_mixed", "zero_rows_kept", "random1", "random2",
                 "random3", "random4"]


def _general_case(rng, case):
    if case.startswith("random"):
        network = feedforward_network(rng)
        samples = int(rng.integers(1, 160))
        dead = rng.choice(samples, size=samples // 10, replace=False)
        values = "binary" if rng.random() < 0.5 else "normal"
        return network, random_features(rng, samples, network.inputs, rng.uniform(0.1, 0.5), values=values,
                                        dead=dead)
    return general_cases(rng)[case]


def _clear_margin(outputs: np.ndarray) -> np.ndarray:
    """Rows whose two largest values differ by more than fp32 rounding could move them."""
    if outputs.shape[1] < 2:
        return np.ones(outputs.shape[0], dtype=bool)
    top = np.sort(outputs, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0] > 1e-3 * (1.0 + np.abs(top[:, 1]))


@pytest.mark.parametrize("batched", [False, True], ids=["one_batch", "small_batches"])
@pytest.mark.parametrize("case", GENERAL_CASES)
def test_general_networks(engine_name, precision, rng, case, batched):
    network, features = _general_case(rng, case)
    cls = engine_class(engine_name)
    options = {"precision": precision}
    if batched:
        if "batch_samples" not in inspect.signature(cls).parameters:
            pytest.skip(f"engine {engine_name!r} has no batch_samples")
        options["batch_samples"] = 16
    engine = cls(**options)
    ok, why = cls.supports(network)
    if not ok:
        assert why
        with pytest.raises(OptionError, match="cannot run this network"):
            engine.run(network, features)
        return
    reference = ReferenceEngine(precision="fp64")
    ref = reference.run(network, features, outputs="activations")
    result = engine.run(network, features, outputs="activations")
    assert result.outputs.shape == (features.shape[0], network.outputs)
    assert result.neurons == network.inputs
    if precision == "fp64" and engine.exact_fp64:
        assert result.outputs.dtype == np.float64
        assert np.array_equal(result.outputs.view(np.int64), ref.outputs.view(np.int64)), \
            f"fp64 outputs differ from the reference ({network.describe()})"
        np.testing.assert_array_equal(result.predictions, ref.predictions)
        np.testing.assert_array_equal(result.categories, ref.categories)
        np.testing.assert_array_equal(result.survivors, ref.survivors)
        ref_rows, ref_values = reference.activations()
        try:        # every sample's rows, or refused where the loaded rows would be one batch's alone
            rows, values = engine.activations()
        except SpdnnError as error:
            assert "several batches" in str(error) and result.extra.get("batches", 1) > 1
        else:
            np.testing.assert_array_equal(rows, ref_rows)
            assert values.shape == ref_values.shape and (values != ref_values).nnz == 0
    else:
        # Clear rows: the same prediction. Every row: the prediction is a top value of the
        # fp64 outputs up to fp32 rounding (a tie, e.g. two outputs at the cap, may go either way).
        clear = _clear_margin(ref.outputs)
        np.testing.assert_array_equal(result.predictions[clear], ref.predictions[clear])
        picked = ref.outputs[np.arange(len(ref.outputs)), result.predictions]
        best = ref.outputs.max(axis=1)
        assert np.all(best - picked <= 1e-3 * (1.0 + np.abs(best))), "an fp32 prediction is not a top fp64 output"


def test_planted_cases_exercise_what_they_plant(rng):
    """The planted general cases do what their names say, on the reference."""
    cases = general_cases(rng)
    net, x = cases["revive"]
    ref = ReferenceEngine().run(net, x)
    assert ref.survivors[0] == 0 and ref.survivors[1] == x.shape[0] and not net.prunes_after(0)
    net, x = cases["negative_constant"]
    engine = ReferenceEngine()
    engine.run(net.truncated(1), x)
    rows, values = engine.activations()
    dense = values.toarray()
    assert (dense < 0).all() and (dense.min(axis=1) == dense.max(axis=1)).all()
    assert len(np.unique(dense[:, 0])) < len(rows)                  # equal rows to merge
    net, x = cases["zero_rows_kept"]
    assert not net.prunes_after(1) and (np.diff(x.indptr) == 0).any()
    assert 1 in ReferenceEngine().run(net, x).categories             # sample 1 is a zero input row


def test_cpu_merges_negative_constant_rows_exactly(rng):
    """Rows that became one negative constant are merged, and the results keep the bits."""
    if not engine_availability("cpu")[0]:
        pytest.skip("cpu engine not available")
    net, x = general_cases(rng)["negative_constant"]
    merged, plain = engine_class("cpu")(precision="fp64"), engine_class("cpu")(precision="fp64", merge=False)
    a = merged.run(net, x, outputs="activations")
    b = plain.run(net, x, outputs="activations")
    assert a.extra["merged_samples"] > 0 and b.extra["merged_samples"] == 0
    assert np.array_equal(a.outputs.view(np.int64), b.outputs.view(np.int64))
    np.testing.assert_array_equal(a.survivors, b.survivors)


def test_segments_of_a_rectangular_network(engine_name, precision, rng):
    """infer(0, k) + activations() (n_k wide) + load() + infer(k, L) equals a full run; a
    segment refuses samples of the wrong width."""
    network = feedforward_network(rng, widths=[20, 31, 12, 17, 6], bias_rules=["structural"] * 4,
                                  activations=["relu"] * 4)
    if not engine_class(engine_name).supports(network)[0]:
        pytest.skip(f"engine {engine_name!r} does not run this network")
    features = random_features(rng, 80, 20, 0.3)
    full = make_engine(engine_name, precision).run(network, features)
    first = make_engine(engine_name, precision)
    first.prepare(network)
    first.load(features)
    first.infer(0, 2)
    rows, values = first.activations()
    assert values.shape == (len(rows), 12)
    second = make_engine(engine_name, precision)
    second.prepare(network)
    second.load(values)
    with pytest.raises(OptionError, match="layer 1 takes 20 values a sample and the samples held have 12"):
        second.infer(0, 2)
    cats, _, _ = second.infer(2, network.depth)
    np.testing.assert_array_equal(np.sort(rows[cats - 1] + 1), full.categories)


def test_every_row_dead_before_the_last_layer(engine_name, precision, rng):
    """Rows all dead after layer 1 of a network that widens: activations() is 0 rows of the
    last layer's width (the reference once kept the width where its loop stopped), the
    outputs are zeros of the last width, no category."""
    network, features = dies_before_the_last_layer(rng)
    if not engine_class(engine_name).supports(network)[0]:
        pytest.skip(f"engine {engine_name!r} does not run this network")
    engine = make_engine(engine_name, precision)
    result = engine.run(network, features, outputs="activations")
    assert result.survivors.tolist() == [0, 0] and result.categories.size == 0
    assert result.outputs.shape == (40, 13) and not result.outputs.any()
    rows, values = engine.activations()
    assert rows.shape == (0,) and values.shape == (0, 13)


def test_survivors_continue_at_a_later_layer_s_width(engine_name):
    """Batches, then the survivors of all of them loaded at once before layer 4 (30 values
    a row, not the inputs' 12): every engine equals the float64 reference (the cuda
    engine's general path once loaded them as rows of 12; the emulated test in
    test_cuda_general.py shows the path is taken)."""
    cls = engine_class(engine_name)
    if "batch_samples" not in inspect.signature(cls).parameters:
        pytest.skip(f"engine {engine_name!r} has no batch_samples")
    network, features = survivors_continue_mid_network()
    ref = ReferenceEngine(precision="fp64").run(network, features, outputs="activations")
    result = cls(precision="fp64", batch_samples=10).run(network, features, outputs="activations")
    if "merged_batches" in result.extra:       # engines batched by Engine.run (the cpu engine batches inside)
        assert result.extra["merged_batches"]["layer"] == 3
    np.testing.assert_array_equal(result.survivors, ref.survivors)
    np.testing.assert_array_equal(result.categories, ref.categories)
    if cls.exact_fp64:
        assert np.array_equal(result.outputs.view(np.int64), ref.outputs.view(np.int64))
    else:
        np.testing.assert_allclose(result.outputs, ref.outputs, rtol=1e-12, atol=1e-12)


def test_auto_picks_an_engine_that_supports_the_network(monkeypatch, rng):
    import spdnn.engines as engines
    from spdnn.network import Network

    general = feedforward_network(rng, widths=[5, 7, 3])
    challenge = Network.from_layers([sp.random(8, 8, density=0.5, random_state=1, format="csr")] * 2, -0.3)
    for name in ("cuda", "cusparse", "cpu", "reference"):       # every engine runs every network now
        assert engine_class(name).supports(general)[0] and engine_class(name).supports(challenge)[0]
    # pretend a GPU is usable and cuda runs only the challenge's form: auto takes cuda only
    # for a network it runs
    monkeypatch.setattr(engines, "cupy_status", lambda: (True, "pretend"))
    monkeypatch.setattr(engine_class("cuda"), "availability", classmethod(lambda cls: (True, "pretend")))
    monkeypatch.setattr(engine_class("cuda"), "supports", classmethod(
        lambda cls, net: (net.challenge_form, "only the challenge's form (pretend)")))
    monkeypatch.delenv("SPDNN_DISABLE_GPU", raising=False)
    assert engines.resolve_engine_name("auto", challenge) == "cuda"
    assert engines.resolve_engine_name("auto") == "cuda"
    assert engines.resolve_engine_name("auto", general) == "cpu"
    with pytest.raises(OptionError, match=r"engine 'cuda' cannot run this network: only the challenge's form"):
        engines.get_engine("cuda", general)


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


# -- general networks: the reference against a plain float64 numpy forward pass -----------

def _numpy_forward(net, x):
    """The semantics of spdnn.network written the plain way (dense float64)."""
    y = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    for k in range(net.depth):
        w = net.layers[k]
        z = y @ (w.toarray() if sp.issparse(w) else w)
        b = np.asarray(net.bias[k])
        z = z + (b * (z != 0) if net.bias_rules[k] == "structural" else b)
        y = np.clip(z, 0, net.caps[k]) if net.activations[k] == "relu" else z
    return y


@pytest.mark.parametrize("rule", ["structural", "dense"])
@pytest.mark.parametrize("bias", [-0.2, 0.3])
def test_reference_general_network_matches_numpy(rng, rule, bias):
    from spdnn.network import Network
    from factories import random_layer

    layers = [rng.standard_normal((7, 9)), random_layer(rng, 9, 0.4), rng.standard_normal((9, 4))]
    net = Network.from_layers(layers, [bias, rng.standard_normal(9), 0.1], bias_rule=rule,
                              activation=["relu", "relu", "identity"], ymax=[1.0, None, None])
    dense = sp.random(30, 7, density=0.4, random_state=1).toarray()
    dense[3] = 0                                         # a zero input row
    x = sp.csr_matrix(dense)
    result = get_engine("reference").run(net, x, outputs="activations")
    want = _numpy_forward(net, x)
    np.testing.assert_allclose(result.outputs, want, rtol=1e-12, atol=1e-12)
    assert result.outputs.shape == (30, 4) and result.outputs.dtype == np.float64
    np.testing.assert_array_equal(result.predictions, np.argmax(want, axis=1))
    np.testing.assert_array_equal(result.categories, np.flatnonzero(np.any(want != 0, axis=1)) + 1)
    if rule == "dense":
        assert 4 in result.categories                     # the zero input row is revived by the bias


def test_positive_dense_bias_revives_zero_rows_in_the_reference():
    from spdnn.network import Network

    net = Network.from_layers([sp.eye(3) * -1.0, sp.eye(3)], [0.0, 0.5], bias_rule="dense")
    x = sp.csr_matrix(np.array([[1.0, 0, 0], [0, 0, 0]]))
    result = get_engine("reference").run(net, x, outputs="activations")
    # layer 1 kills both rows (relu(-1) = 0); layer 2 adds 0.5 everywhere
    np.testing.assert_array_equal(result.outputs, np.full((2, 3), 0.5))
    assert result.categories.tolist() == [1, 2] and result.survivors.tolist() == [0, 2]


def test_outputs_are_stitched_across_batches_in_sample_order(rng):
    from spdnn.network import Network

    net = Network.from_layers([rng.standard_normal((5, 6)), rng.standard_normal((6, 3))], 0.1,
                              bias_rule="dense", activation=["relu", "identity"])
    x = sp.csr_matrix(rng.standard_normal((100, 5)))
    whole = get_engine("reference").run(net, x, outputs="activations")

    class Batched(type(get_engine("reference"))):
        def _batch_size(self, features):
            return 20

    engine = Batched()
    batched = engine.run(net, x, outputs="activations")
    np.testing.assert_array_equal(batched.outputs, whole.outputs)
    assert batched.extra["batches"] == 5
    with pytest.raises(SpdnnError, match="several batches"):
        engine.activations()
    top = Batched().run(net, x, outputs="topk", top_k=2)
    np.testing.assert_array_equal(top.top_indices[:, 0], whole.predictions)
    np.testing.assert_array_equal(top.top_values[:, 0], whole.outputs.max(axis=1))
    assert top.outputs is None and top.accuracy(whole.predictions) == 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"outputs": "logits"}, "outputs='logits': expected one of"),
    ({"outputs": "topk"}, "top_k=None: expected a positive integer"),
    ({"outputs": "predictions", "top_k": 3}, "top_k=3: only with outputs='topk'"),
])
def test_run_rejects_bad_outputs(kwargs, message):
    from spdnn.network import Network

    net = Network.from_layers([sp.eye(2)], 0.0)
    with pytest.raises(OptionError, match=message):
        get_engine("reference").run(net, sp.eye(2, format="csr"), **kwargs)


def test_run_refuses_outputs_that_cannot_fit(monkeypatch):
    from spdnn import memory
    from spdnn.errors import MemoryLimitError
    from spdnn.network import Network

    monkeypatch.setattr(memory, "host_available_bytes", lambda: 1000)
    net = Network.from_layers([sp.eye(64)], 0.0)
    with pytest.raises(MemoryLimitError, match=r"outputs='activations': 100 samples x 64 outputs need about"):
        get_engine("reference").run(net, sp.eye(100, 64, format="csr"), outputs="activations")


def test_release_device_memory_imports_nothing_on_a_cpu_machine(monkeypatch):
    """The truth's engine and each timed engine give their device memory back through
    release_device_memory, which must not import CuPy where it was never imported."""
    import sys

    from spdnn.engines._cupy import release_device_memory

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    release_device_memory()
    assert "cupy" not in sys.modules


def test_release_device_memory_empties_the_pool_of_an_imported_cupy(monkeypatch):
    import sys
    import types

    from spdnn.engines._cupy import release_device_memory

    emptied = []
    pool = types.SimpleNamespace(free_all_blocks=lambda: emptied.append(True))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(get_default_memory_pool=lambda: pool))
    release_device_memory()
    assert emptied == [True]
