"""The CUDA engine's general path on the CPU (runs in CI): its plan, its layout of rectangular
layers, and the whole engine (CudaEngine's own code, spdnn.engines.cuda.general's
orchestration) driven through a numpy replay of every kernel (emulate.NumpyKernels).

fp64 must equal the float64 reference bit for bit on every general case, with blockings that
slice the outputs and chunk the inputs, in batches and in segments; pruning happens only
where the network allows it.
"""
from __future__ import annotations

import numpy as np
import pytest

from spdnn.engines.cuda.emulate import NumpyKernels
from spdnn.engines.cuda.engine import CudaEngine
from spdnn.engines.cuda.general import GeneralPath, general_instances, plan_general
from spdnn.engines.cuda.layout import (VALUE_ARRAY, VALUE_SCALAR, KernelConfig, bank_phase, choose_general_config,
                                       gather_wavefronts, pack_layer)
from spdnn.errors import DeviceMemoryError, OptionError
from spdnn.network import Network

from factories import GENERAL_CASES, general_case, packed_entries, random_layer, survivors_continue_mid_network

#: Blockings of the sparse layers: the default; tiny blocks that slice every layer's outputs
#: and (with a small shared memory) chunk its inputs; one row a tile.
BLOCKINGS = {
    "default": ({}, 227 * 1024),
    "sliced_chunked": ({"threads": 32, "cols_per_thread": 1, "rows_per_tile": 2}, 2 * 8 * 24),
    "mb1": ({"threads": 64, "cols_per_thread": 2, "rows_per_tile": 1}, 227 * 1024),
    "forced_chunk": ({"threads": 64, "cols_per_thread": 1, "rows_per_tile": 4, "chunk": 5}, 227 * 1024),
    "pipelined": ({"threads": 32, "cols_per_thread": 2, "rows_per_tile": 4, "pipelined": True}, 227 * 1024),
}


class EmulatedCuda(CudaEngine):
    """CudaEngine whose general path runs on :class:`NumpyKernels` (no GPU, no CuPy)."""

    def __init__(self, *, smem_limit: int = 227 * 1024, budget: int = 1 << 30, **options):
        super().__init__(**options)
        self.smem_limit, self.budget = smem_limit, budget
        self.backends: list[NumpyKernels] = []

    def _general_path(self, network):
        layers = plan_general(network, self.dtype, smem_limit=self.smem_limit, blocking=self.blocking)
        backend = NumpyKernels(general_instances(layers, self.dtype))
        self.backends.append(backend)
        return GeneralPath(network, self.dtype, backend, layers, budget_bytes=lambda: self.budget,
                           weights_count=True, poison=self.poison, batch_samples=self.batch_samples, label="numpy")


def run_both(net, feats, precision="fp64", **options):
    """(engine result with activations, reference result with activations, engine)."""
    eng = EmulatedCuda(precision=precision, **options)
    got = eng.run(net, feats, outputs="activations")
    want = get_reference(net, feats, precision)
    return got, want, eng


def get_reference(net, feats, precision):
    from spdnn.engines import get_engine

    return get_engine("reference", precision=precision).run(net, feats, outputs="activations")


def assert_bitwise(got, want):
    np.testing.assert_array_equal(got.categories, want.categories)
    np.testing.assert_array_equal(got.survivors, want.survivors)
    assert got.outputs.dtype == want.outputs.dtype
    np.testing.assert_array_equal(got.outputs.view(np.uint64), want.outputs.view(np.uint64))
    np.testing.assert_array_equal(got.predictions, want.predictions)


@pytest.mark.parametrize("case", GENERAL_CASES)
@pytest.mark.parametrize("blocking", sorted(BLOCKINGS))
def test_general_cases_fp64_equal_the_reference_bit_for_bit(rng, case, blocking):
    net, feats = general_case(rng, case)
    assert not net.challenge_form
    forced, smem = BLOCKINGS[blocking]
    got, want, eng = run_both(net, feats, blocking=forced or None, smem_limit=smem, poison=1e30)
    assert_bitwise(got, want)
    assert got.extra["path"] == "general" and got.extra["merge"] is False
    if blocking == "sliced_chunked":
        sparse = [layer for layer in eng._general.layers if not layer.dense]
        assert any(layer.config.slices(layer.n_out) > 1 for layer in sparse)
        assert any(layer.config.nchunks(layer.n_in) > 1 for layer in sparse)


@pytest.mark.parametrize("case", GENERAL_CASES)
@pytest.mark.parametrize("blocking", [None, {"bank_order": True}], ids=["ascending", "bank_order"])
def test_general_cases_fp32_predictions_equal_fp64(rng, case, blocking):
    net, feats = general_case(rng, case)
    got = EmulatedCuda(precision="fp32", blocking=blocking).run(net, feats, outputs="activations")
    want = get_reference(net, feats, "fp64")
    assert got.outputs.dtype == np.float32
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_allclose(got.outputs, want.outputs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["dense_and_sparse", "revive", "identity_output"])
def test_general_batches_and_segments_fp64(rng, case):
    net, feats = general_case(rng, case, samples=131)
    whole = get_reference(net, feats, "fp64")
    batched = EmulatedCuda(precision="fp64", batch_samples=25).run(net, feats, outputs="activations")
    assert batched.extra["batches"] == 6
    assert_bitwise(batched, whole)
    # segments: layers 0..1, then the rest, on the same loaded rows
    eng = EmulatedCuda(precision="fp64")
    eng.prepare(net)
    eng.load(feats)
    first, _, _ = eng.infer(0, 2)
    cats, survivors, extra = eng.infer(2, net.depth)
    np.testing.assert_array_equal(cats, whole.categories)
    np.testing.assert_array_equal(survivors, whole.survivors[2:])
    rows, values = eng.activations()
    np.testing.assert_array_equal(rows, whole.categories - 1)
    np.testing.assert_array_equal(values.toarray(), whole.outputs[rows])


def test_pruning_only_where_the_network_allows_it(rng):
    net, feats = general_case(rng, "revive")
    assert not net.prunes_after(1) and net.prunes_after(2)
    got, want, eng = run_both(net, feats)
    assert_bitwise(got, want)
    layers = eng._general.layers
    assert [layer.prune for layer in layers] == [net.prunes_after(k + 1) for k in range(net.depth)]
    assert not layers[0].prune and layers[1].prune
    # layer 1 kills most rows but keeps them all (layer 2's bias revives them)
    assert got.survivors[0] < feats.shape[0] - 2
    assert got.extra["rows_computed"][1] == got.extra["rows_computed"][0]
    assert got.survivors[1] > got.survivors[0]
    # the dead inputs are held too: layer 1 may not drop zero rows before a reviving layer
    assert not net.prunes_after(0) and got.extra["rows_computed"][0] == feats.shape[0]


def test_structural_layers_prune_in_the_kernel_and_dense_ones_by_compaction(rng):
    net, feats = general_case(rng, "rectangular")
    got, want, eng = run_both(net, feats)
    assert_bitwise(got, want)
    launches = eng.backends[-1].launches
    assert "spdnn_general_count" not in launches                # every layer may prune
    assert all(layer.compact for layer in eng._general.layers)    # one slice each: fused
    assert got.extra["rows_computed"][0] == feats.shape[0] - 2    # the empty inputs were dropped
    net, feats = general_case(rng, "dense_and_sparse")
    got, want, eng = run_both(net, feats)
    assert_bitwise(got, want)
    assert "spdnn_general_dense" in eng.backends[-1].launches


def test_plan_value_modes_and_kernels(rng):
    net, _ = general_case(rng, "one_value")
    for precision, dtype in (("fp64", np.float64), ("fp32", np.float32)):
        layers = plan_general(net, dtype)
        assert [layer.value_mode for layer in layers] == [VALUE_SCALAR, VALUE_SCALAR, VALUE_ARRAY]
        assert layers[2].value_dtype == np.float16
        assert layers[0].scalar == 0.0625
        names = general_instances(layers, dtype)
        assert set(names) == {"general.cu", "layer.cu"}
        t = "double" if precision == "fp64" else "float"
        assert all(f"<{t}, " in name for name in names["general.cu"].values() if "sparse" in name)
    net, _ = general_case(rng, "dense_and_sparse")
    layers = plan_general(net, np.float32)
    assert layers[0].dense and layers[0].weights.dtype == np.float32 and layers[0].weights.shape == (40, 64)
    assert layers[0].kernel(np.float32) == "spdnn_general_dense<float>"
    assert layers[-1].cap == float("inf") and not layers[-1].relu and layers[-1].dense_bias


@pytest.mark.parametrize("shape", [(50, 130), (300, 20), (64, 64)])
@pytest.mark.parametrize("config", [KernelConfig(threads=32, cols_per_thread=2, rows_per_tile=2, chunk=37),
                                    KernelConfig(threads=64, cols_per_thread=1, rows_per_tile=4, chunk=300)], ids=str)
def test_pack_layer_rectangular_places_every_nonzero_once(rng, shape, config):
    n_in, n_out = shape
    w = random_layer(rng, n_in, 0.1, columns=n_out)
    p = pack_layer(w, config)
    got, last = np.zeros(shape), {}
    for i, j, value in packed_entries(p, config, n_in, n_out):
        assert j < n_out and i < n_in and last.get(j, -1) < i           # ascending inputs in each column
        last[j] = i
        got[i, j] += value
    np.testing.assert_array_equal(got, w.toarray())
    with pytest.raises(OptionError, match="expected"):
        pack_layer(w, config, 64) if shape != (64, 64) else pack_layer(w, config, 65)


def test_survivors_continue_at_a_later_layer_s_width_emulated():
    """The general path loads survivors of a later layer as rows of that layer's width
    (it once took every load for the inputs' width: layer 4 refused rows of 12)."""
    net, feats = survivors_continue_mid_network()
    eng = EmulatedCuda(precision="fp64", batch_samples=10, poison=1e30)
    got = eng.run(net, feats, outputs="activations")
    assert got.extra["merged_batches"]["layer"] == 3
    assert_bitwise(got, get_reference(net, feats, "fp64"))


def test_a_forced_chunk_cuts_the_inputs_in_equal_parts():
    cfg = choose_general_config(4096, 4096, 4, rows_per_tile=8, chunk=2048)
    assert cfg.chunk == 2048 and cfg.nchunks(4096) == 2 and 3 * cfg.staging_bytes(4) <= 227 * 1024
    assert choose_general_config(4096, 4096, 4, rows_per_tile=8, chunk=1500).chunk == 1366     # 3 equal parts
    for bad in (0, 4097, 2.5, True):        # 8 rows of 4096 inputs fit: at most 4096
        with pytest.raises(OptionError, match="chunk="):
            choose_general_config(4096, 4096, 4, rows_per_tile=8, chunk=bad)
    with pytest.raises(OptionError, match="chunk="):         # 16 rows: at most what fits the shared memory
        choose_general_config(4096, 4096, 4, rows_per_tile=16, chunk=4096)


@pytest.mark.parametrize("rows_per_tile", [1, 2, 4, 8])
def test_bank_order_reorders_each_column_and_reads_fewer_conflicting_banks(rng, rows_per_tile):
    """The bank-aware order packs every nonzero once, keeps every warp slice's width, and
    (a random layer: conflicts are likely) models fewer shared-memory wavefronts than the
    ascending order for the Tile of its blocking (4 to 32 bytes)."""
    w = random_layer(rng, 300, 0.08)[:, :260].tocsr()
    shape = w.shape
    base = choose_general_config(*shape, 4, threads=64, cols_per_thread=2, rows_per_tile=rows_per_tile, chunk=150)
    bank = choose_general_config(*shape, 4, threads=64, cols_per_thread=2, rows_per_tile=rows_per_tile, chunk=150,
                                 bank_order=True)
    p, q = pack_layer(w, base, itemsize=4), pack_layer(w, bank, itemsize=4)
    np.testing.assert_array_equal(p.meta, q.meta)                    # same widths, same offsets
    got = np.zeros(shape)
    seen = set()
    for i, j, value in packed_entries(q, bank, *shape):
        assert (i, j) not in seen
        seen.add((i, j))
        got[i, j] += value
    np.testing.assert_array_equal(got, w.toarray())
    order = [i for i, j, _ in packed_entries(q, bank, *shape) if j == 7]
    assert sorted(order) == list(w[:, 7].nonzero()[0])
    tile = 4 * rows_per_tile
    before, steps = gather_wavefronts(p.idx, p.meta, tile)
    after, steps_after = gather_wavefronts(q.idx, q.meta, tile)
    assert steps == steps_after and steps <= after < before
    assert bank_phase(tile)[0] == {4: 32, 8: 16}.get(tile, 8)


def test_bank_order_is_float32_only():
    with pytest.raises(OptionError, match="float32 only"):
        choose_general_config(64, 64, 8, bank_order=True)
    with pytest.raises(OptionError, match="bank_order="):
        choose_general_config(64, 64, 4, bank_order=1)
    with pytest.raises(OptionError, match="itemsize"):
        pack_layer(random_layer(np.random.default_rng(1), 64, 0.1), choose_general_config(64, 64, 4, bank_order=True))
    with pytest.raises(OptionError, match="general sparse kernel"):
        KernelConfig(threads=32, cols_per_thread=1, rows_per_tile=1, chunk=8, dedupe=True, bank_order=True)


def test_a_pipelined_blocking_stages_whole_rows_twice():
    cfg = choose_general_config(4096, 4096, 4, threads=1024, cols_per_thread=4, rows_per_tile=4, pipelined=True)
    assert cfg.pipelined and cfg.nchunks(4096) == 1
    plain = choose_general_config(4096, 4096, 4, threads=1024, cols_per_thread=4, rows_per_tile=4)
    assert cfg.staging_bytes(4) == 2 * plain.staging_bytes(4) <= 227 * 1024
    with pytest.raises(OptionError, match="pipelined=True: two buffers"):    # 8 rows: one buffer fits, not two
        choose_general_config(4096, 4096, 4, rows_per_tile=8, pipelined=True)
    with pytest.raises(OptionError, match="pipelined=True: two buffers"):    # a chunked row cannot be
        choose_general_config(4096, 4096, 4, rows_per_tile=2, chunk=2048, pipelined=True)
    with pytest.raises(OptionError, match="pipelined="):
        choose_general_config(64, 64, 4, pipelined="yes")
    with pytest.raises(OptionError, match="general sparse kernel"):
        KernelConfig(threads=32, cols_per_thread=1, rows_per_tile=1, chunk=8, stationary=True, pipelined=True)
    assert CudaEngine(blocking={"pipelined": True}).blocking == {"pipelined": True}


def test_choose_general_config():
    cfg = choose_general_config(4096, 4096, 4)      # 4-row tiles: two blocks' inputs fit (8 rows: one)
    assert (cfg.threads, cfg.cols_per_thread, cfg.rows_per_tile, cfg.chunk) == (512, 8, 4, 4096)
    assert 2 * cfg.staging_bytes(4) <= 227 * 1024 < 4 * cfg.staging_bytes(4)
    assert cfg.slices(4096) == 1
    assert choose_general_config(1024, 1024, 4).rows_per_tile == 8        # 8 rows fit twice
    cfg = choose_general_config(8192, 8192, 4)      # no 4-row tile fits twice: the largest that fits once
    assert cfg.rows_per_tile == 4 and cfg.staging_bytes(4) <= 227 * 1024 < 2 * cfg.staging_bytes(4)
    cfg = choose_general_config(784, 10, 8)
    assert cfg.threads == 32 and cfg.cols_per_thread == 1 and cfg.chunk == 784
    cfg = choose_general_config(100_000, 64, 8, smem_limit=48 * 1024)
    assert cfg.chunk * cfg.nchunks(100_000) >= 100_000 and (cfg.chunk + 1) * cfg.rows_per_tile * 8 <= 48 * 1024
    cfg = choose_general_config(16384, 16384, 4)
    assert cfg.cols_per_thread == 32 and cfg.rows_per_tile == 2 and cfg.slices(16384) == 1


def test_general_path_refuses_weights_beyond_the_budget(rng):
    net, feats = general_case(rng, "dense_and_sparse")
    with pytest.raises(DeviceMemoryError, match="do not fit the device memory budget"):
        EmulatedCuda(precision="fp64", budget=20_000).run(net, feats)


def test_blocking_option_is_checked():
    with pytest.raises(OptionError, match="blocking="):
        CudaEngine(blocking={"threads": 32, "mb": 4})


def test_challenge_networks_keep_their_path(rng):
    """A challenge-form network never reaches the general path (without CuPy, preparing it
    fails on the challenge path's need for CuPy; with CuPy it prepares the challenge path)."""
    net = Network.from_layers([random_layer(rng, 64, 0.1) for _ in range(3)], -0.3)
    assert net.challenge_form
    eng = EmulatedCuda(precision="fp64")
    try:
        eng.prepare(net)
    except Exception as error:      # noqa: BLE001 - whatever the missing CuPy raises
        assert "cupy" in str(error).lower() or "cuda" in str(error).lower()
        assert not eng.backends
    assert eng._general is None
