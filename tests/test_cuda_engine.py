"""CUDA and cuSPARSE engines on the device (skipped without a GPU).

Every run poisons the activation buffers first (a kernel reading a row nothing wrote
then changes the categories); fp64 must equal the float64 reference bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

from spdnn.engines import get_engine
from spdnn.engines.cuda.layout import KernelConfig
from spdnn.network import Network

from factories import duplicate_column_network, random_features, random_network, reference_run

pytestmark = pytest.mark.gpu

POISON = 1e30      # finite and positive: an unwritten read would make a sample live


def dying_features(rng, samples, n, density=0.3):
    """Random binary inputs whose middle sample is empty (dead from the start)."""
    return random_features(rng, samples, n, density, dead=[samples // 2])


def check_same(eng, net, feats, precision="fp64"):
    res = eng.run(net, feats)
    ref, rrows, rvals = reference_run(net, feats, precision)
    np.testing.assert_array_equal(res.categories, ref.categories)
    np.testing.assert_array_equal(res.survivors, ref.survivors)
    if precision == "fp64" and res.extra.get("batches", 1) == 1:
        rows, vals = eng.activations()
        np.testing.assert_array_equal(rows, rrows)
        np.testing.assert_array_equal(vals.toarray(), rvals.toarray())
    assert ref.categories.size > 0
    return res


@pytest.fixture(scope="module")
def official(official_dir):
    from spdnn.formats.official import read_categories, read_features, read_network

    net = read_network(official_dir / "neuron1024.tar.gz", cache=False)
    feats = read_features(official_dir / "sparse-images-1024-first1200.mtx.gz", cache=False)
    truth = read_categories(official_dir / "neuron1024-l120-categories-first1200.mtx")
    return net, feats, truth


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
@pytest.mark.parametrize("graph", [True, False])
@pytest.mark.parametrize("dedupe", ["auto", False])
def test_official_subset_gives_the_truth(official, precision, graph, dedupe):
    net, feats, truth = official
    eng = get_engine("cuda", precision=precision, poison=POISON, use_graph=graph, dedupe=dedupe)
    res = eng.run(net, feats)
    np.testing.assert_array_equal(res.categories, truth)
    assert res.extra["graph"] is graph
    assert res.extra["dedupe"] is (dedupe == "auto")     # official layers: N/16 distinct columns
    assert res.extra["value_mode"] == "sum_then_scale"
    ref = reference_run(net, feats, precision)[0]
    np.testing.assert_array_equal(res.survivors, ref.survivors)


@pytest.mark.parametrize("values", ["normal", "fp16", 0.3, 0.0625])
@pytest.mark.parametrize("n", [96, 1000])
def test_random_networks_fp64_exact(rng, values, n):
    net = random_network(rng, n, 8, values=values)
    feats = dying_features(rng, 150, n)
    eng = get_engine("cuda", precision="fp64", poison=POISON)
    res = check_same(eng, net, feats)
    expected = {"normal": "array", "fp16": "array", 0.3: "scalar", 0.0625: "sum_then_scale"}[values]
    assert res.extra["value_mode"] == expected
    if values == "fp16":
        assert res.extra["value_dtype"] == "float16"


@pytest.mark.parametrize("config", [KernelConfig(threads=64, opt=2, mb=2, chunk=100),
                                    KernelConfig(threads=32, opt=4, mb=4, chunk=700),
                                    KernelConfig(threads=128, opt=1, mb=1, chunk=333)], ids=str)
def test_sliced_and_chunked_blockings_fp64_exact(rng, config):
    """Outputs sliced over blocks (compaction kernel) and inputs staged in chunks."""
    n = 700
    net = random_network(rng, n, 6)
    feats = dying_features(rng, 90, n)
    eng = get_engine("cuda", precision="fp64", poison=POISON, config=config)
    res = check_same(eng, net, feats)
    assert res.extra["config"]["slices"] == config.slices(n)


def test_fp32_matches_reference_categories(rng):
    net = random_network(rng, 512, 6, values=0.0625, bias=-0.05)
    feats = dying_features(rng, 200, 512, density=0.5)
    res = get_engine("cuda", precision="fp32", poison=POISON).run(net, feats)
    ref = reference_run(net, feats, "fp64")[0]
    np.testing.assert_array_equal(res.categories, ref.categories)


def test_batches_forced_small(rng):
    net = random_network(rng, 256, 5)
    feats = dying_features(rng, 203, 256)
    eng = get_engine("cuda", precision="fp64", poison=POISON, batch_samples=37)
    res = check_same(eng, net, feats)
    assert res.extra["batches"] == 6


def test_streaming_forced_by_a_memory_cap(rng):
    net = random_network(rng, 256, 30, density=0.1)     # ~3 MB of fp64 weights
    feats = dying_features(rng, 120, 256)
    eng = get_engine("cuda", precision="fp64", poison=POISON, memory_cap_bytes=3_000_000)
    res = check_same(eng, net, feats)
    assert res.extra["stream_weights"] is True
    eng2 = get_engine("cuda", precision="fp64", poison=POISON, stream_weights=True, batch_samples=50)
    res2 = check_same(eng2, net, feats)
    assert res2.extra["stream_weights"] is True and res2.extra["batches"] == 3


def test_segments_and_reload(rng):
    """infer(start, stop) in pieces, and activations() loaded back, give the whole run."""
    n, depth = 300, 9
    net = random_network(rng, n, depth)
    feats = dying_features(rng, 80, n)
    ref, rrows, rvals = reference_run(net, feats)
    eng = get_engine("cuda", precision="fp64", poison=POISON)
    eng.prepare(net)
    eng.load(feats)
    _, s1, _ = eng.infer(0, 4)
    rows, vals = eng.activations()
    eng.load(vals)                                  # as if moved to another rank
    cats, s2, _ = eng.infer(4, depth)
    np.testing.assert_array_equal(np.concatenate([s1, s2]), ref.survivors)
    np.testing.assert_array_equal(rows[cats - 1] + 1, ref.categories)
    _, vals2 = eng.activations()
    np.testing.assert_array_equal(vals2.toarray(), rvals.toarray())


def test_debug_mode_checks_every_launch(rng, monkeypatch):
    monkeypatch.setenv("SPDNN_CUDA_DEBUG", "1")
    net = random_network(rng, 128, 3)
    feats = dying_features(rng, 40, 128)
    eng = get_engine("cuda", precision="fp64")
    assert eng.debug
    res = check_same(eng, net, feats)
    assert res.extra["graph"] is False


def test_cusparse_baseline_official(official):
    net, feats, truth = official
    res = get_engine("cusparse", precision="fp32").run(net, feats)
    np.testing.assert_array_equal(res.categories, truth)
    res = get_engine("cusparse", precision="fp32", batch_samples=500).run(net, feats)
    np.testing.assert_array_equal(res.categories, truth)


@pytest.mark.parametrize("n, distinct", [(1000, 70), (3000, 400), (1001, 33)])
@pytest.mark.parametrize("values", ["normal", 0.0625, 0.3])
@pytest.mark.parametrize("kernel", ["auto", "block", "warp"])
def test_deduplicated_columns_fp64_exact(rng, n, distinct, values, kernel):
    net = duplicate_column_network(rng, n, 5, distinct, values=values)
    feats = dying_features(rng, 100, n)
    eng = get_engine("cuda", precision="fp64", poison=POISON, kernel=kernel)
    res = check_same(eng, net, feats)
    assert res.extra["dedupe"] is True and res.extra["distinct_columns"] <= distinct
    warps = res.extra["config"]["warps"]
    assert (warps > 0) is (kernel == "warp")


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
@pytest.mark.parametrize("kernel", ["block", "warp", "block-noprefetch"])
def test_official_subset_both_dedupe_kernels(official, precision, kernel):
    net, feats, truth = official
    prefetch = kernel != "block-noprefetch"
    res = get_engine("cuda", precision=precision, poison=POISON, kernel=kernel.split("-")[0],
                     prefetch=prefetch).run(net, feats)
    np.testing.assert_array_equal(res.categories, truth)
    assert (res.extra["config"]["warps"] > 0) is (kernel == "warp")
    assert (res.extra["config"]["prefetch"] > 0) is (kernel == "block")


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("n, dedupe", [(1000, "auto"), (2048, False), (300, False)])
def test_prefetch_fp64_exact(rng, prefetch, n, dedupe):
    """Register prefetch of the next item's rows, with and without deduplication and with
    output slices (300: several items a tile), against the reference bit for bit."""
    if dedupe == "auto":
        net = duplicate_column_network(rng, n, 5, 60)
    else:
        net = random_network(rng, n, 5, density=0.03)
    feats = dying_features(rng, 2500, n, density=0.1)
    cfg = KernelConfig(threads=128, opt=1, mb=2, chunk=n) if n == 300 else None
    eng = get_engine("cuda", precision="fp64", poison=POISON, prefetch=prefetch, config=cfg, dedupe=dedupe)
    res = check_same(eng, net, feats)
    assert (res.extra["config"]["prefetch"] > 0) is prefetch


def test_warp_kernel_many_samples_positive_bias(rng):
    """More samples than one wave of warps (the grid-stride loop), positive bias (dense rows)."""
    n = 512
    net = duplicate_column_network(rng, n, 6, 40)
    net = Network.from_layers(list(net.layers), rng.uniform(0.0, 0.1, size=(6, n)))
    feats = dying_features(rng, 30000, n, density=0.05)
    for precision in ("fp32", "fp64"):
        eng = get_engine("cuda", precision=precision, poison=POISON, kernel="warp")
        res = check_same(eng, net, feats, precision)
        assert res.extra["config"]["warps"] > 0


def test_deduplicated_chunked_small_tiles_fp64_exact(rng):
    n = 600
    net = duplicate_column_network(rng, n, 5, 90)
    feats = dying_features(rng, 77, n)
    cfg = KernelConfig(threads=64, opt=2, mb=2, chunk=250, dedupe=True)
    res = check_same(get_engine("cuda", precision="fp64", poison=POISON, config=cfg), net, feats)
    assert res.extra["config"]["nchunks"] == 3


def test_radixnet_lazy_network_fp32_and_fp64(rng):
    from spdnn.generate import radixnet_network

    net = radixnet_network(1024, 24)
    feats = dying_features(rng, 300, 1024, density=0.12)
    ref = reference_run(net, feats)[0]
    for precision in ("fp32", "fp64"):
        res = get_engine("cuda", precision=precision, poison=POISON).run(net, feats)
        np.testing.assert_array_equal(res.categories, ref.categories)
        assert res.extra["dedupe"] is True
