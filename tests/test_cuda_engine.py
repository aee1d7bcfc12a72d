"""CUDA and cuSPARSE engines on the device (skipped without a GPU).

Every run poisons the activation buffers first (a kernel reading a row nothing wrote
then changes the categories); fp64 must equal the float64 reference bit for bit, with
every kernel (stationary tiles, per-layer, sliced, chunked), with merging on and off,
batched, streamed and in segments.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines import get_engine
from spdnn.engines.cuda.plan import merge_points
from spdnn.engines.cuda.layout import KernelConfig
from spdnn.errors import OptionError, SpdnnError
from spdnn.network import Network

from factories import duplicate_column_network, random_features, random_network, reference_run

pytestmark = pytest.mark.gpu

POISON = 1e30      # finite and positive: an unwritten read would make a sample live


def dying_features(rng, samples, n, density=0.3):
    """Random binary inputs whose middle sample is empty (dead from the start)."""
    return random_features(rng, samples, n, density, dead=[samples // 2])


def check_same(eng, net, feats, precision="fp64"):
    """Run ``eng``; categories and survivors equal the reference's, fp64 activations bit for bit."""
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


def stationary(n, **fields):
    return KernelConfig(**{"threads": 128, "cols_per_thread": 1, "rows_per_tile": 4, "chunk": n, "stationary": True,
                           **fields})


@pytest.fixture(scope="module")
def official(official_dir):
    from factories import read_official_subset

    return read_official_subset(official_dir)


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
@pytest.mark.parametrize("kernel", ["auto", "per-layer", "no-dedupe"])
@pytest.mark.parametrize("merge", ["auto", False])
def test_official_subset_gives_the_truth(official, precision, kernel, merge):
    net, feats, truth = official
    per_layer = KernelConfig(threads=256, cols_per_thread=1, rows_per_tile=4, chunk=1024, dedupe=True)
    options = {"auto": {}, "per-layer": {"config": per_layer}, "no-dedupe": {"dedupe": False}}[kernel]
    res = get_engine("cuda", precision=precision, poison=POISON, merge=merge, **options).run(net, feats)
    np.testing.assert_array_equal(res.categories, truth)
    assert res.extra["config"]["stationary"] is (kernel != "per-layer")
    assert res.extra["config"]["dedupe"] is (kernel != "no-dedupe")     # official layers: N/16 distinct columns
    assert res.extra["value_mode"] == ("sum_then_scale" if precision == "fp32" else "scalar")
    ref = reference_run(net, feats, precision)[0]
    np.testing.assert_array_equal(res.survivors, ref.survivors)
    assert res.extra["graph"] is True


@pytest.mark.parametrize("values", ["normal", "fp16", 0.3, 0.0625])
@pytest.mark.parametrize("n", [96, 1000])
def test_random_networks_fp64_exact(rng, values, n):
    net = random_network(rng, n, 8, values=values)
    feats = dying_features(rng, 150, n)
    eng = get_engine("cuda", precision="fp64", poison=POISON)
    res = check_same(eng, net, feats)
    expected = {"normal": "array", "fp16": "array", 0.3: "scalar", 0.0625: "scalar"}[values]
    assert res.extra["value_mode"] == expected
    if values == "fp16":
        assert res.extra["value_dtype"] == "float16"


@pytest.mark.parametrize("config", [KernelConfig(threads=64, cols_per_thread=2, rows_per_tile=2, chunk=100),
                                    KernelConfig(threads=32, cols_per_thread=4, rows_per_tile=4, chunk=700),
                                    KernelConfig(threads=128, cols_per_thread=1, rows_per_tile=1, chunk=333)], ids=str)
def test_per_layer_sliced_and_chunked_blockings_fp64_exact(rng, config):
    """Outputs sliced over blocks (compaction kernel) and inputs staged in chunks."""
    n = 700
    net = random_network(rng, n, 6)
    feats = dying_features(rng, 90, n)
    eng = get_engine("cuda", precision="fp64", poison=POISON, config=config)
    res = check_same(eng, net, feats)
    assert res.extra["config"]["slices"] == config.slices(n) and res.extra["config"]["stationary"] is False


@pytest.mark.parametrize("rows_per_tile", [1, 2, 4, 8])
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("dedupe", [False, True])
def test_stationary_blockings_fp64_exact(rng, rows_per_tile, prefetch, dedupe):
    """Tiles of 1..8 rows kept in shared memory, with and without the cp.async prefetch
    of the next layer, general and deduplicated layers, mixed-sign bias."""
    n = 480        # half-precision values: the prefetch stages of 8-row tiles fit shared memory
    if dedupe:
        net = duplicate_column_network(rng, n, 7, 50, values="fp16")
    else:
        net = random_network(rng, n, 7, density=0.02, values="fp16")
    feats = dying_features(rng, 211, n)
    cfg = stationary(n, rows_per_tile=rows_per_tile, prefetch=prefetch, dedupe=dedupe,
                     cols_per_thread=1 if dedupe else 4)
    res = check_same(get_engine("cuda", precision="fp64", poison=POISON, config=cfg, merge=False), net, feats)
    assert res.extra["config"]["stationary"] and res.extra["config"]["prefetch"] is prefetch


@pytest.mark.parametrize("stages", [2, 4, 6])
@pytest.mark.parametrize("rows_per_tile", [1, 4])
def test_prefetch_depths_fp64_exact(rng, stages, rows_per_tile):
    """Prefetch rings of 2..6 stages (1..5 layers in flight), segments shorter and longer
    than the ring (depth 3 without merging; 40 with merge passes at 16 and 32)."""
    n = 480
    for depth, merge in ((3, False), (40, True)):
        net = duplicate_column_network(rng, n, depth, 50, values="fp16")
        feats = dying_features(rng, 150, n)
        cfg = stationary(n, rows_per_tile=rows_per_tile, prefetch=True, stages=stages, dedupe=True, cols_per_thread=1)
        res = check_same(get_engine("cuda", precision="fp64", poison=POISON, config=cfg, merge=merge), net, feats)
        assert res.extra["config"]["stages"] == stages


@pytest.mark.parametrize("tail_rows_per_sm", [0, 1000])
def test_tail_instance_fp64_exact(rng, monkeypatch, tail_rows_per_sm):
    """Segments after a merge run the one-row tail instance when few rows are left: forced
    on for every such segment (1000 rows a multiprocessor) and off (0), both equal the
    reference bit for bit, on a network whose rows do not converge (many rows in the tail)."""
    import spdnn.engines.cuda.engine as cuda_engine

    monkeypatch.setattr(cuda_engine, "TAIL_ROWS_PER_SM", tail_rows_per_sm)
    n = 1024
    net = duplicate_column_network(rng, n, 40, 64, values="normal")      # ~480 distinct rows stay
    feats = planted_duplicates(rng, n, 500)
    res = check_same(get_engine("cuda", precision="fp64", poison=POISON), net, feats)
    tail = res.extra["config"]["tail"]
    assert tail is not None and tail["rows_per_tile"] == 1 and res.extra["config"]["rows_per_tile"] > 1
    assert res.extra["merged_samples"] > 0 and res.survivors[-1] > 0


@pytest.mark.parametrize("values, bias", [("normal", -0.05), ("normal", 0.05), (0.0625, -0.3)])
def test_distinct_tail_fp64_exact(rng, monkeypatch, values, bias):
    """With one bias value the tail instance is kernels/tail.cu (rows held as their distinct
    values): forced on for every segment after a merge, bit for bit the reference's, with
    many rows in the tail and some dying there."""
    import spdnn.engines.cuda.engine as cuda_engine

    monkeypatch.setattr(cuda_engine, "TAIL_ROWS_PER_SM", 1000)
    n = 1024
    dup = duplicate_column_network(rng, n, 40, 64, values=values)
    net = Network.from_layers(dup.layers, bias)
    feats = planted_duplicates(rng, n, 500)
    res = check_same(get_engine("cuda", precision="fp64", poison=POISON), net, feats)
    assert res.extra["config"]["tail"]["distinct"] and res.extra["merged_samples"] > 0


@pytest.mark.parametrize("n", [4096, 16384])
def test_distinct_tail_radixnet_wide_rows(rng, n):
    """RadiX-Net at N = 4096 and 16384 (the distinct tail's prefetch fits beside 1,025
    values where a 16384-value row left no room): fp64 bit for bit the reference's and
    fp32's categories equal fp32 without merging (no tail)."""
    from spdnn.generate import radixnet_network

    net = radixnet_network(n, 40)
    dense, sparse = (0.5, 0.1) if n == 4096 else (0.4, 0.15)          # half the rows live, half die
    feats = sp.vstack([random_features(rng, 100, n, dense), dying_features(rng, 100, n, sparse)]).tocsr()
    res = check_same(get_engine("cuda", precision="fp64", poison=POISON), net, feats)
    assert res.extra["config"]["tail"]["distinct"]
    on = get_engine("cuda", precision="fp32", poison=POISON).run(net, feats)
    off = get_engine("cuda", precision="fp32", poison=POISON, merge=False).run(net, feats)
    np.testing.assert_array_equal(on.categories, off.categories)
    np.testing.assert_array_equal(on.survivors, off.survivors)


def test_fp32_matches_reference_categories(rng):
    net = random_network(rng, 512, 6, values=0.0625, bias=-0.05)
    feats = dying_features(rng, 200, 512, density=0.5)
    res = get_engine("cuda", precision="fp32", poison=POISON).run(net, feats)
    ref = reference_run(net, feats, "fp64")[0]
    np.testing.assert_array_equal(res.categories, ref.categories)


def test_many_tiles_positive_bias(rng):
    """More tiles than one wave of blocks (tickets handed out many times), positive bias
    (dense rows), both precisions."""
    n = 512
    net = duplicate_column_network(rng, n, 6, 40)
    net = Network.from_layers(list(net.layers), rng.uniform(0.0, 0.1, size=(6, n)))
    feats = dying_features(rng, 30000, n, density=0.05)
    for precision in ("fp32", "fp64"):
        res = check_same(get_engine("cuda", precision=precision, poison=POISON), net, feats, precision)
        assert res.extra["config"]["stationary"]


def test_batches_forced_small(rng):
    net = random_network(rng, 256, 5)
    feats = dying_features(rng, 203, 256)
    eng = get_engine("cuda", precision="fp64", poison=POISON, batch_samples=37)
    res = check_same(eng, net, feats)
    assert res.extra["batches"] == 6


@pytest.mark.parametrize("per_layer", [False, True])
def test_streaming_in_chunks(rng, per_layer):
    """Weights streamed from pinned host memory a chunk of layers at a time (resident
    prefix + chunks when capped, all chunks when forced), merging across chunks."""
    n, depth = 256, 40
    net = random_network(rng, n, depth, density=0.1)
    feats = dying_features(rng, 120, n)
    cfg = KernelConfig(threads=256, cols_per_thread=1, rows_per_tile=4, chunk=n) if per_layer else None
    eng = get_engine("cuda", precision="fp64", poison=POISON, memory_cap_bytes=6_000_000, config=cfg)
    res = check_same(eng, net, feats)
    assert res.extra["stream_weights"] is True and res.extra["weight_chunks"] >= 1
    eng2 = get_engine("cuda", precision="fp64", poison=POISON, stream_weights=True, batch_samples=50, config=cfg)
    res2 = check_same(eng2, net, feats)
    assert res2.extra["stream_weights"] is True and res2.extra["batches"] == 3
    assert res2.extra["weight_chunks"] >= 4


def test_segments_and_reload(rng):
    """infer(start, stop) in pieces, and activations() loaded back, give the whole run."""
    n, depth = 300, 40
    net = duplicate_column_network(rng, n, depth, 30, values=0.0625, bias=-0.05)
    feats = dying_features(rng, 80, n)
    ref, rrows, rvals = reference_run(net, feats)
    eng = get_engine("cuda", precision="fp64", poison=POISON)
    eng.prepare(net)
    eng.load(feats)
    _, s1, _ = eng.infer(0, 20)                   # crosses the merge point at 16
    rows, vals = eng.activations()
    eng.load(vals)                                  # as if moved to another rank
    cats, s2, _ = eng.infer(20, depth)
    np.testing.assert_array_equal(np.concatenate([s1, s2]), ref.survivors)
    np.testing.assert_array_equal(rows[cats - 1] + 1, ref.categories)
    _, vals2 = eng.activations()
    np.testing.assert_array_equal(vals2.toarray(), rvals.toarray())


class _CountingDevice:
    """A CuPy device whose synchronize() calls are counted (its attributes are read-only)."""

    def __init__(self, device):
        self._device, self.syncs = device, 0

    def synchronize(self):
        self.syncs += 1
        self._device.synchronize()

    def __getattr__(self, name):
        return getattr(self._device, name)


def test_debug_mode_synchronizes_every_launch(rng, monkeypatch):
    monkeypatch.setenv("SPDNN_CUDA_DEBUG", "1")
    net = random_network(rng, 128, 20)
    feats = dying_features(rng, 40, 128)
    eng = get_engine("cuda", precision="fp64", merge=True)
    assert eng.debug
    eng.prepare(net)
    device = _CountingDevice(eng._device)
    eng._device = device
    launches = []
    real_launch = eng._launch

    def counting_launch(*args, **kwargs):
        launches.append(args[0])
        before = device.syncs
        real_launch(*args, **kwargs)
        assert device.syncs == before + 1, f"launch of {args[0]} not synchronized"

    monkeypatch.setattr(eng, "_launch", counting_launch)
    eng.load(feats)
    eng.infer()
    assert "find" in launches and "mcompact" in launches and "stationary" in launches   # merged at 16
    assert len(launches) > 3
    # a failing launch names its kernel and the layers it ran
    def broken(*args, **kwargs):
        raise RuntimeError("launch failed (test)")

    monkeypatch.setattr(eng, "_launch", real_launch)
    kernel = eng._k["stationary"]
    monkeypatch.setitem(eng._k, "stationary", type(kernel)(broken, kernel.name))
    eng.load(feats)
    with pytest.raises(SpdnnError, match=r"spdnn_stationary<.*layers 1\.\.16"):
        eng.infer()


def test_forced_blocking_too_big_for_shared_memory(rng):
    n = 4000
    net = random_network(rng, n, 2, density=0.3)          # 1,200 entries a column
    cfg = KernelConfig(threads=256, cols_per_thread=16, rows_per_tile=4, chunk=n, stationary=True, prefetch=True)
    with pytest.raises(OptionError, match="shared memory"):
        get_engine("cuda", precision="fp64", config=cfg).prepare(net)


def test_cusparse_baseline_official(official):
    net, feats, truth = official
    res = get_engine("cusparse", precision="fp32").run(net, feats)
    np.testing.assert_array_equal(res.categories, truth)
    res = get_engine("cusparse", precision="fp32", batch_samples=500).run(net, feats)
    np.testing.assert_array_equal(res.categories, truth)


@pytest.mark.parametrize("n, distinct", [(1000, 70), (3000, 400), (1001, 33)])
@pytest.mark.parametrize("values", ["normal", 0.0625, 0.3])
def test_deduplicated_columns_fp64_exact(rng, n, distinct, values):
    net = duplicate_column_network(rng, n, 5, distinct, values=values)
    feats = dying_features(rng, 100, n)
    res = check_same(get_engine("cuda", precision="fp64", poison=POISON), net, feats)
    assert res.extra["config"]["dedupe"] is True and res.extra["distinct_columns"] <= distinct


def test_deduplicated_chunked_per_layer_fp64_exact(rng):
    n = 600
    net = duplicate_column_network(rng, n, 5, 90)
    feats = dying_features(rng, 77, n)
    cfg = KernelConfig(threads=64, cols_per_thread=2, rows_per_tile=2, chunk=250, dedupe=True)
    res = check_same(get_engine("cuda", precision="fp64", poison=POISON, config=cfg), net, feats)
    assert res.extra["config"]["nchunks"] == 3


@pytest.mark.parametrize("wide_rows", [0, 100_000])
@pytest.mark.parametrize("values", ["normal", 0.0625])
def test_wide_path_fp64_exact(rng, monkeypatch, wide_rows, values):
    """Per-layer deduplicated layers after the first merge take the wide path (rows spread
    over the grid) when few rows are left: forced for every row count (100,000) and off (0);
    three input chunks, values loaded or one per layer, ~200 distinct rows kept (normal) or
    converging to one (0.0625): bit for bit the reference's, and merging still finds rows."""
    import spdnn.engines.cuda.engine as cuda_engine

    monkeypatch.setattr(cuda_engine, "WIDE_ROWS", wide_rows)
    n = 600
    net = duplicate_column_network(rng, n, 40, 90, values=values)
    feats = planted_duplicates(rng, n, 230)
    cfg = KernelConfig(threads=64, cols_per_thread=2, rows_per_tile=2, chunk=250, dedupe=True)
    res = check_same(get_engine("cuda", precision="fp64", poison=POISON, config=cfg), net, feats)
    assert res.extra["config"]["nchunks"] == 3 and res.extra["merged_samples"] > 0
    assert res.survivors[-1] > 0


def test_radixnet_lazy_network_fp32_and_fp64(rng):
    from spdnn.generate import radixnet_network

    net = radixnet_network(1024, 24)
    feats = dying_features(rng, 300, 1024, density=0.12)
    ref = reference_run(net, feats)[0]
    for precision in ("fp32", "fp64"):
        res = get_engine("cuda", precision=precision, poison=POISON).run(net, feats)
        np.testing.assert_array_equal(res.categories, ref.categories)
        assert res.extra["config"]["dedupe"] is True


# -- merging identical rows ------------------------------------------------------------------

def planted_duplicates(rng, n: int, samples: int) -> sp.csr_matrix:
    """Features with exact duplicate rows, and rows that differ only in inputs no weight
    reads (identical from the first layer on): merging has something to find."""
    base = random_features(rng, samples, n, density=0.3).toarray()
    base[samples // 3: samples // 3 + 20] = base[0]                  # 21 copies of row 0
    base[samples // 2: samples // 2 + 10] = base[1]
    base[samples // 2: samples // 2 + 10, :4] = rng.random((10, 4))   # differ only on inputs 0..3
    return sp.csr_matrix(base)


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
@pytest.mark.parametrize("per_layer", [False, True])
def test_merging_is_exact(rng, precision, per_layer):
    """Merge on and off give the same categories, survivors and activations bit for bit
    (fp64: the reference's), while merging computes fewer rows after the merge points."""
    _merge_on_off(rng, precision, per_layer)


def test_merging_with_batches(rng):
    """Features in batches: each batch merges its own rows; totals count every sample."""
    _merge_on_off(rng, "fp64", False, batch_samples=150)


def _merge_on_off(rng, precision, per_layer, **options):
    n, depth = 256, 40
    net = random_network(rng, n, depth, density=0.08, values=(-0.1, 0.3), bias=rng.uniform(-0.2, 0.05, n))
    w0 = net.layers[0].tolil()
    w0[:4, :] = 0                                                    # inputs 0..3 are never read
    net = Network.from_layers([w0.tocsr(), *net.layers[1:]], net.bias)
    feats = planted_duplicates(rng, n, 400)
    cfg = KernelConfig(threads=256, cols_per_thread=1, rows_per_tile=2, chunk=n) if per_layer else None
    on = get_engine("cuda", precision=precision, poison=POISON, merge=True, config=cfg, **options)
    off = get_engine("cuda", precision=precision, poison=POISON, merge=False, config=cfg, **options)
    a = check_same(on, net, feats, precision) if precision == "fp64" else on.run(net, feats)
    b = off.run(net, feats)
    np.testing.assert_array_equal(a.categories, b.categories)
    np.testing.assert_array_equal(a.survivors, b.survivors)
    if options:          # batches: activations() would hold the last batch alone; compare every sample's outputs
        out_a = on.run(net, feats, outputs="activations").outputs
        out_b = off.run(net, feats, outputs="activations").outputs
        assert out_a.shape == (feats.shape[0], n)
        np.testing.assert_array_equal(out_a.view(np.uint8), out_b.view(np.uint8))
    else:
        rows_a, vals_a = on.activations()
        rows_b, vals_b = off.activations()
        np.testing.assert_array_equal(rows_a, rows_b)
        np.testing.assert_array_equal(vals_a.toarray(), vals_b.toarray())
    assert b.extra["merged_samples"] == 0
    rc_a, rc_b = np.array(a.extra["rows_computed"]), np.array(b.extra["rows_computed"])
    assert rc_a[16] < rc_b[16] and (rc_a[16:] <= rc_b[16:]).all() and (rc_a[:16] == rc_b[:16]).all()
    assert rc_b[0] == 400 and (rc_b[1:] == b.survivors[:-1]).all()   # off: every alive row
    if options:
        assert a.extra["batches"] == b.extra["batches"] > 1
    else:
        assert a.extra["merged_samples"] >= 29


def test_merging_radixnet_converges_to_one_row(rng):
    """RadiX-Net survivors saturate to one constant row: after merging one row remains,
    and the results equal the unmerged run's (fp32) and the reference's (fp64)."""
    from spdnn.generate import radixnet_network

    net = radixnet_network(1024, 70, bias=-0.3)
    feats = dying_features(rng, 3000, 1024, density=0.12)
    for precision in ("fp32", "fp64"):
        on = get_engine("cuda", precision=precision, poison=POISON).run(net, feats)
        off = get_engine("cuda", precision=precision, poison=POISON, merge=False).run(net, feats)
        np.testing.assert_array_equal(on.categories, off.categories)
        np.testing.assert_array_equal(on.survivors, off.survivors)
        if on.categories.size > 1:
            assert on.extra["rows_computed"][-1] < on.survivors[-2]
    ref = reference_run(net, feats)[0]
    np.testing.assert_array_equal(on.categories, ref.categories)


def test_merge_points():
    assert merge_points(120) == [16, 32, 64]
    assert merge_points(16) == [] and merge_points(17) == [16]
    assert merge_points(1920)[-1] == 1024
