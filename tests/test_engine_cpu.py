"""The numba CPU engine: its fast-path detection, batching, guards and errors.

Agreement with the reference on official and random networks is in test_engines.py;
this file covers what only the CPU engine has.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines import get_engine
from spdnn.engines._cpu_kernels import MODE_SUM, MODE_UNIFORM, MODE_VALUES
from spdnn.engines.cpu import CpuEngine
from spdnn.engines.reference import ReferenceEngine
from spdnn.errors import OptionError, SpdnnError
from spdnn.generate import radixnet_network
from spdnn.network import Network

from factories import general_features, general_network, sum_then_scale_traps


def _same_as_reference(network, features, *, precision="fp64", **options):
    engine = CpuEngine(precision=precision, **options)
    result = engine.run(network, features)
    reference = ReferenceEngine(precision="fp64")
    ref = reference.run(network, features)
    np.testing.assert_array_equal(result.categories, ref.categories)
    if precision == "fp64":                     # fp32 survivors may differ on the way
        np.testing.assert_array_equal(result.survivors, ref.survivors)
        rows, values = engine.activations()
        ref_rows, ref_values = reference.activations()
        np.testing.assert_array_equal(rows, ref_rows)
        assert (values != ref_values).nnz == 0
    return result


def test_registered_and_available():
    ok, why = CpuEngine.availability()
    assert ok, why
    engine = get_engine("cpu")
    assert isinstance(engine, CpuEngine) and engine.precision == "fp32"


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_options(bad):
    with pytest.raises(OptionError):
        CpuEngine(tile=bad)
    with pytest.raises(OptionError):
        CpuEngine(batch_samples=bad)
    with pytest.raises(OptionError):
        CpuEngine(precision="fp16")


def test_fast_path_detection():
    n = 64
    radix = radixnet_network(n, 3, materialize=True, bias=-0.3)
    general = Network.from_layers([sp.random(n, n, density=0.2, random_state=1, format="csr")], np.linspace(-1, 0, n))
    third = Network.from_layers([radix.layers[0] * (0.3 / 0.0625)], -0.1)
    for precision, net, mode, ell, uniform_bias, dedupe, virtual in [
        ("fp32", radix, MODE_SUM, 32, True, False, -1),
        ("fp64", radix, MODE_SUM, 32, True, False, -1),      # 1/16 is a power of two
        ("fp32", third, MODE_SUM, 32, True, False, -1),      # fp32: sum then multiply for any value
        ("fp64", third, MODE_UNIFORM, 32, True, False, -1),  # 0.3 is not: multiply every term
        ("fp64", general, MODE_VALUES, -1, False, "auto", -1),  # no repeated columns: nothing to gain
        ("fp64", radix, MODE_SUM, 2, True, "auto", n // 16),   # N/16 distinct columns, 2 a row
        ("fp32", third, MODE_SUM, 2, True, True, n // 16),
    ]:
        engine = CpuEngine(precision=precision, dedupe=dedupe)
        engine.prepare(net)
        layer = engine._layers[0]
        assert (layer.mode, layer.row_width, layer.uniform_bias) == (mode, ell, uniform_bias), (precision, mode)
        assert layer.virtual == virtual and (virtual < 0 or layer.out_map.shape == (n,))
        if ell >= 0:
            assert layer.indptr.size == 1                     # ELLPACK reads no row pointers


def test_fp64_guard_falls_back_to_per_term_products():
    """On the sum-then-scale traps (bits checked for every engine in test_engines.py) the
    CPU engine's per-batch guard must pick the per-term mode."""
    for network, features in sum_then_scale_traps().values():
        result = CpuEngine(precision="fp64").run(network, features)
        assert result.extra["layer_modes"]["uniform"] >= 1


def test_batches_and_tiles_agree(rng):
    network = general_network(rng, neurons=40, depth=5, bias_kind="mixed")
    features = general_features(rng, 100, 40)
    for options in ({"batch_samples": 7, "tile": 8}, {"batch_samples": 33}, {"tile": 16}):
        result = _same_as_reference(network, features, **options)
        if "batch_samples" in options:
            assert result.extra["batches"] == -(-100 // options["batch_samples"])


def test_segments_across_batches(rng):
    network = general_network(rng, neurons=30, depth=6, bias_kind="negative")
    features = general_features(rng, 90, 30)
    full = CpuEngine(precision="fp64").run(network, features)
    engine = CpuEngine(precision="fp64", batch_samples=20)
    engine.prepare(network)
    engine.load(features)
    _, s1, _ = engine.infer(0, 2)
    cats, s2, _ = engine.infer(2, 6)
    np.testing.assert_array_equal(cats, full.categories)
    np.testing.assert_array_equal(np.concatenate([s1, s2]), full.survivors)


def test_finished_batches_keep_only_their_survivors(rng):
    """Between batches the engine holds the survivors, not a batch-sized buffer each
    (at N=65536 in fp64 that was 30 GiB for the 60,000 challenge inputs)."""
    network = general_network(rng, neurons=64, depth=6, bias_kind="negative")
    features = sp.lil_matrix(general_features(rng, 400, 64))
    features[:200] = 0                                   # the first half dies at layer 1
    features = features.tocsr()
    engine = CpuEngine(precision="fp64", batch_samples=64, tile=8)
    engine.prepare(network)
    engine.load(features)
    _, s1, _ = engine.infer(0, 3)
    held = [(len(b.rows), b.values.shape[0]) for b in engine._blocks]
    assert len(held) == -(-400 // 64)
    assert all(tiles == max(1, -(-alive // 8)) for alive, tiles in held)
    assert sum(tiles for _, tiles in held) <= 400 // 8 - 200 // 8 + 3  # the dead half's buffers went
    cats, s2, _ = engine.infer(3, 6)                                   # segments still continue
    full = CpuEngine(precision="fp64").run(network, features)
    np.testing.assert_array_equal(cats, full.categories)
    np.testing.assert_array_equal(np.concatenate([s1, s2]), full.survivors)


def test_lazy_network_matches_materialized():
    lazy = radixnet_network(64, 9, seed=3, bias=-0.3)
    rng = np.random.default_rng(0)
    features = sp.csr_matrix((rng.random((50, 64)) < 0.3).astype(float))
    _same_as_reference(lazy, features)
    _same_as_reference(lazy, features, precision="fp32")


def test_edge_cases():
    n = 16
    empty_layer = sp.csr_matrix((n, n))
    net = Network.from_layers([sp.eye(n, format="csr"), empty_layer, sp.eye(n, format="csr")], -0.1)
    features = sp.csr_matrix(np.ones((4, n)))
    result = _same_as_reference(net, features)
    assert result.categories.size == 0 and list(result.survivors) == [4, 0, 0]
    # no samples at all
    result = CpuEngine().run(net, sp.csr_matrix((0, n)))
    assert result.categories.size == 0 and list(result.survivors) == [0, 0, 0]
    # positive bias on an all-zero row adds nothing: the row stays dead
    up = Network.from_layers([sp.eye(n, format="csr")], 0.5)
    mixed = sp.csr_matrix(np.vstack([np.zeros(n), np.ones(n)]))
    result = _same_as_reference(up, mixed)
    np.testing.assert_array_equal(result.categories, [2])


def test_infer_arguments_checked():
    engine = CpuEngine()
    with pytest.raises(SpdnnError):
        engine.infer()
    net = radixnet_network(32, 3, bias=-0.3)
    engine.prepare(net)
    engine.load(sp.csr_matrix(np.ones((2, 32))))
    for start, stop in [(-1, 2), (2, 1), (0, 4)]:
        with pytest.raises(OptionError, match="infer"):
            engine.infer(start, stop)


def test_progress_bar_shown_when_asked(capsys):
    net = radixnet_network(32, 4, bias=-0.3)
    result = CpuEngine(progress=True).run(net, sp.csr_matrix(np.ones((3, 32))))
    assert result.survivors.shape == (4,)
    assert "cpu fp32 layers" in capsys.readouterr().err
    CpuEngine(progress=False).run(net, sp.csr_matrix(np.ones((3, 32))))
    assert capsys.readouterr().err == ""


def test_segments_carry_merged_samples():
    network = radixnet_network(64, 20, seed=4, bias=-0.3, materialize=True)
    rng = np.random.default_rng(3)
    features = sp.csr_matrix((rng.random((200, 64)) < 0.35).astype(float))
    full = ReferenceEngine(precision="fp64").run(network, features)
    engine = CpuEngine(precision="fp64", batch_samples=70)
    engine.prepare(network)
    engine.load(features)
    _, s1, extra = engine.infer(0, 12)
    assert extra["merged_samples"] > 0
    rows, values = engine.activations()              # members expanded to their own rows
    assert len(rows) == s1[-1] == values.shape[0]
    other = CpuEngine(precision="fp64")
    other.prepare(network)
    other.load(values)
    cats, s2, _ = other.infer(12, 20)
    np.testing.assert_array_equal(np.sort(rows[cats - 1] + 1), full.categories)
    np.testing.assert_array_equal(np.concatenate([s1, s2]), full.survivors)
    cats_same, s3, _ = engine.infer(12, 20)          # and within the engine that merged them
    np.testing.assert_array_equal(cats_same, full.categories)
    np.testing.assert_array_equal(s3, s2)


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_distinct_columns_are_exact(rng, precision):
    """Summing each distinct column once gives the bits of summing every column (and, in
    fp64, the reference's), on networks with repeated columns and mixed-sign weights."""
    from factories import duplicate_column_network

    network = duplicate_column_network(rng, 96, 6, 20, bias="mixed")
    features = general_features(rng, 150, 96)
    a, b = CpuEngine(precision=precision, dedupe=True), CpuEngine(precision=precision, dedupe=False)
    ra, rb = a.run(network, features), b.run(network, features)
    assert a._layers[0].virtual <= 20 and b._layers[0].virtual == -1
    np.testing.assert_array_equal(ra.categories, rb.categories)
    np.testing.assert_array_equal(ra.survivors, rb.survivors)
    assert ra.categories.size > 0
    rows_a, values_a = a.activations()
    rows_b, values_b = b.activations()
    np.testing.assert_array_equal(rows_a, rows_b)
    assert (values_a != values_b).nnz == 0
    if precision == "fp64":
        _same_as_reference(network, features, dedupe=True)
