"""CUDA engine layout (plain numpy, runs in CI): packing invariants and the blocked replay."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines.cuda.emulate import emulate_layer, emulate_network
from spdnn.engines.cuda.layout import (VALUE_ARRAY, VALUE_SCALAR, VALUE_SUM_THEN_SCALE, KernelConfig,
                                       choose_config, entry_values, narrowest_exact_dtype, pack_layer,
                                       stationary_smem_bytes, value_plan)
from spdnn.errors import OptionError

from factories import (duplicate_column_network, packed_entries, random_features, random_layer, random_network,
                       reference_run, sum_then_scale_traps)

#: Small blockings that exercise several warps, output slices and input chunks.
CONFIGS = [
    KernelConfig(threads=64, cols_per_thread=2, rows_per_tile=4, chunk=1000),     # one slice, one chunk (fused path)
    KernelConfig(threads=32, cols_per_thread=2, rows_per_tile=2, chunk=37),       # several slices and chunks
    KernelConfig(threads=64, cols_per_thread=1, rows_per_tile=1, chunk=64),       # several slices, N not a multiple
]


def stationary(n: int, **fields) -> KernelConfig:
    """A stationary blocking of the whole row (one chunk of n, one slice)."""
    return KernelConfig(**{"threads": 64, "cols_per_thread": 2, "rows_per_tile": 4, "chunk": n, "stationary": True,
                           **fields})


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("n", [96, 130])
def test_pack_layer_places_every_nonzero_once(rng, config, n):
    w = random_layer(rng, n, 0.15)
    p = pack_layer(w, config, n)
    nchunks, slices = config.nchunks(n), config.slices(n)
    assert p.meta.shape == (slices * nchunks * config.cols_per_thread * config.nwarps, 2)
    assert p.entries == 32 * int(p.meta[:, 1].sum())
    assert p.nnz == w.nnz and p.entries >= p.nnz
    padding = p.idx == config.chunk
    assert int((~padding).sum()) == w.nnz
    assert np.all(p.values[padding] == 0)
    assert np.all(p.idx[~padding] < config.chunk)
    # Rebuild W from the packed entries: (input, output, value) must be W's nonzeros.
    got, last = np.zeros((n, n)), {}
    for i, j, value in packed_entries(p, config, n, n):
        assert j < n and last.get(j, -1) < i                            # ascending inputs in each column
        last[j] = i
        got[i, j] += value
    np.testing.assert_array_equal(got, w.toarray())
    # Padding only after the real entries of a lane (so sums start with real products).
    for s_ in range(p.meta.shape[0]):
        off, width = p.meta[s_]
        block = p.idx[off:off + 32 * width].reshape(width, 32) if width else np.zeros((0, 32))
        for lane in range(32):
            pads = block[:, lane] == config.chunk
            assert not np.any(pads[:-1] & ~pads[1:])


def test_uniform_layer_and_entry_values(rng):
    n, cfg = 64, CONFIGS[1]
    w = random_layer(rng, n, 0.2, values=0.0625)
    p = pack_layer(w, cfg, n)
    assert p.uniform_value == 0.0625
    p.values = None
    vals = entry_values(p, cfg.chunk)
    assert np.count_nonzero(vals) == w.nnz and set(np.unique(vals)) == {0.0, 0.0625}


def test_value_plan_modes():
    assert value_plan([0.0625, 0.5], [None, None], np.float32).mode == VALUE_SUM_THEN_SCALE
    # fp64: the kernels know no bounds on the activations, so powers of two are multiplied
    # into every term too (sum_then_scale_exact cannot prove the shortcut exact)
    assert value_plan([0.0625, 0.5], [None, None], np.float64).mode == VALUE_SCALAR
    assert value_plan([0.0625, 0.3], [None, None], np.float32).mode == VALUE_SCALAR
    assert value_plan([0.0625, 0.3], [None, None], np.float64).mode == VALUE_SCALAR
    plan = value_plan([None, 0.5], [np.dtype(np.float16), np.dtype(np.float16)], np.float64)
    assert plan.mode == VALUE_ARRAY and plan.value_dtype == np.float16
    assert narrowest_exact_dtype(np.array([0.25, -3.0, 1024.0]), np.float64) == np.float16
    assert narrowest_exact_dtype(np.array([0.1]), np.float64) == np.float64
    assert narrowest_exact_dtype(np.array([1 / 3]), np.float32) == np.float32
    assert narrowest_exact_dtype(np.array([1e5]), np.float64) == np.float32   # overflows fp16


@pytest.mark.parametrize("n", [1024, 4096, 16384, 65536])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_choose_config_fits_the_device(n, itemsize):
    cfg = choose_config(n, itemsize)
    assert cfg.smem_bytes(itemsize) <= 227 * 1024
    assert cfg.cols_per_thread * cfg.rows_per_tile <= 64
    assert cfg.threads <= 512 or cfg.cols_per_thread * cfg.rows_per_tile <= 32
    assert cfg.nchunks(n) * cfg.chunk >= n
    if n <= 4096:
        assert cfg.slices(n) == 1 and cfg.nchunks(n) == 1 and cfg.rows_per_tile >= 2
    if cfg.stationary:
        assert cfg.fits_stationary(n) and stationary_smem_bytes(cfg, itemsize) <= 227 * 1024


@pytest.mark.parametrize("n, virtual, itemsize, stationary_expected", [
    (1024, 64, 4, True), (4096, 256, 4, True), (16384, 1024, 4, True), (16384, 1024, 8, True),
    (65536, 4096, 4, False),           # a row is 256 KiB: more than a block's shared memory
    (20000, None, 4, False),           # 40 outputs a thread: would need slices
])
def test_choose_config_stationary_where_rows_fit(n, virtual, itemsize, stationary_expected):
    cfg = choose_config(n, itemsize, virtual=virtual)
    assert cfg.stationary is stationary_expected
    if cfg.stationary:
        assert cfg.chunk == n and cfg.fits_stationary(n)
        assert stationary_smem_bytes(cfg, itemsize) <= 227 * 1024
        assert cfg.threads * cfg.cols_per_thread >= (virtual or n)
    else:
        assert cfg.smem_bytes(itemsize) <= 227 * 1024
    assert choose_config(n, itemsize, virtual=virtual, stationary=False).stationary is False
    if not stationary_expected:
        with pytest.raises(OptionError, match="stationary"):
            choose_config(n, itemsize, virtual=virtual, stationary=True)


def test_stationary_smem_carving():
    """The same arithmetic as the kernel: rows + zero slot, sums, two prefetch stages."""
    cfg = stationary(1000, dedupe=True, threads=64, cols_per_thread=1, rows_per_tile=4)
    assert stationary_smem_bytes(cfg, 4) == 16016 + 64 * 4 * 4
    pre = KernelConfig(**{**cfg.__dict__, "prefetch": True})
    stage = 16 + 2 * 2048 + 4 * 2048 + 2 * 1000   # warp-slice table, indices, fp32 values, out_map
    assert stationary_smem_bytes(pre, 4, max_entries=2048, value_bytes=4) == 16016 + 1024 + 3 * stage
    with pytest.raises(OptionError, match="prefetch"):
        KernelConfig(threads=32, cols_per_thread=1, rows_per_tile=1, chunk=10, prefetch=True)


def test_kernel_config_rejects_bad_values():
    with pytest.raises(OptionError, match="threads"):
        KernelConfig(threads=48, cols_per_thread=1, rows_per_tile=1, chunk=10)
    with pytest.raises(OptionError, match="chunk"):
        KernelConfig(threads=32, cols_per_thread=1, rows_per_tile=1, chunk=70000)
    with pytest.raises(OptionError, match="rows_per_tile"):
        KernelConfig(threads=32, cols_per_thread=1, rows_per_tile=3, chunk=10)


@pytest.mark.parametrize("config", [*CONFIGS, stationary(96)], ids=str)
@pytest.mark.parametrize("values", ["normal", 0.0625, 0.3])
def test_emulation_equals_reference_fp64(rng, config, values):
    """General weights, positive and negative bias: the replay is bit-identical in fp64."""
    n = 96
    net = random_network(rng, n, 6, density=0.12, values=values)
    feats = random_features(rng, 40, n, dead=[5])     # an empty sample is dead from the start
    res, rows, vals = reference_run(net, feats)
    cats, survivors, erows, ey = emulate_network(net, feats, precision="fp64", config=config)
    np.testing.assert_array_equal(cats, res.categories)
    np.testing.assert_array_equal(survivors, res.survivors)
    assert res.categories.size > 0          # the test means something
    order = np.argsort(erows)
    np.testing.assert_array_equal(ey[order], vals.toarray())   # bit-identical activations


def test_emulation_matches_reference_fp32_categories(rng):
    n = 128
    net = random_network(rng, n, 5, density=0.1, values=0.0625, bias=-0.05)
    feats = random_features(rng, 30, n, density=0.5)
    res, _, _ = reference_run(net, feats, precision="fp32")
    cats, survivors, _, ey = emulate_network(net, feats, precision="fp32", config=CONFIGS[1])
    np.testing.assert_array_equal(cats, res.categories)
    assert ey.dtype == np.float32


def test_emulate_layer_fused_and_sliced_agree(rng):
    n = 100
    w = random_layer(rng, n, 0.1)
    y = rng.uniform(0, 2, size=(7, n))
    bias = rng.uniform(-0.5, 0.5, n)
    outs = []
    for cfg in CONFIGS:
        p = pack_layer(w, cfg, n)
        z, alive = emulate_layer(y, p, cfg, n, bias, 32.0, mode=VALUE_ARRAY, value_dtype=np.float64)
        outs.append(z)
    for z in outs[1:]:
        np.testing.assert_array_equal(z, outs[0])


def test_unique_columns_finds_the_copies(rng):
    from spdnn.engines.columns import unique_columns

    net = duplicate_column_network(rng, 80, 1, 13, density=0.15)
    w = sp.csc_matrix(net.layers[0])
    reps, inverse = unique_columns(w)
    assert reps.size <= 13
    assert (w[:, reps[inverse]] != w).nnz == 0
    # distinct columns really differ
    dense = w[:, reps].toarray().T
    assert len({row.tobytes() for row in dense}) == reps.size


@pytest.mark.parametrize("values", ["normal", "fp16", 0.0625])
def test_unique_columns_csr_and_csc_agree(rng, values):
    """CSR is read as it is (rows, binary search) and CSC column by column: same answer,
    also for a matrix with duplicate entries and unsorted rows (summed and sorted first)."""
    from spdnn.engines.columns import unique_columns

    w = sp.csr_matrix(duplicate_column_network(rng, 300, 1, 40, values=values, density=0.1).layers[0])
    by_rows, by_columns = unique_columns(w), unique_columns(sp.csc_matrix(w))
    for a, b in zip(by_rows, by_columns):
        np.testing.assert_array_equal(a, b)
    assert by_rows[0].size <= 40 and (w[:, by_rows[0][by_rows[1]]] != w).nnz == 0
    coo = w.tocoo()
    half = coo.data / 2                                    # every entry as two halves, rows shuffled
    messy = sp.csr_matrix((np.concatenate([half, half]), (np.concatenate([coo.row, coo.row]),
                                                          np.concatenate([coo.col, coo.col]))), shape=w.shape)
    messy.has_canonical_format = False
    for a, b in zip(unique_columns(messy), by_rows):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_unique_columns_survive_hash_collisions(rng, fmt):
    """Every key equal (all columns collide): only columns equal to the first one are merged
    with it, the others stay their own; nothing is merged that differs."""
    from spdnn.engines.columns import _column_keys, _group

    w = duplicate_column_network(rng, 120, 1, 10, values="normal", density=0.2).layers[0].asformat(fmt)
    bits = w.data.view(np.uint64)
    _, counts = _column_keys(w.indptr, w.indices, bits, w.shape[1], fmt == "csr")
    reps, inverse = _group(w, bits, np.zeros(w.shape[1], dtype=np.uint64), counts, fmt == "csr")
    assert (w[:, reps[inverse]] != w).nnz == 0
    dense = w.toarray()
    copies_of_first = [j for j in range(w.shape[1]) if np.array_equal(dense[:, j], dense[:, 0])]
    assert reps.size == w.shape[1] - len(copies_of_first) + 1 and len(copies_of_first) > 1


@pytest.mark.parametrize("config", [KernelConfig(threads=32, cols_per_thread=1, rows_per_tile=4, chunk=1000, dedupe=True),
                                    KernelConfig(threads=64, cols_per_thread=1, rows_per_tile=2, chunk=30, dedupe=True),
                                    stationary(96, dedupe=True, threads=32, cols_per_thread=1, rows_per_tile=1)],
                         ids=str)
@pytest.mark.parametrize("values", ["normal", 0.0625])
def test_emulation_with_deduplication_equals_reference(rng, config, values):
    n = 96
    net = duplicate_column_network(rng, n, 6, 20, values=values, density=0.15)
    feats = random_features(rng, 40, n)
    res, rows, vals = reference_run(net, feats)
    cats, survivors, erows, ey = emulate_network(net, feats, precision="fp64", config=config)
    np.testing.assert_array_equal(cats, res.categories)
    np.testing.assert_array_equal(survivors, res.survivors)
    assert res.categories.size > 0
    np.testing.assert_array_equal(ey[np.argsort(erows)], vals.toarray())


def test_radixnet_has_n_over_16_distinct_columns():
    from spdnn.engines.columns import unique_columns
    from spdnn.generate import radixnet_layer

    for k in (1, 2, 7):
        reps, _ = unique_columns(sp.csc_matrix(radixnet_layer(256, k)))
        assert reps.size <= 256 // 16
    cfg = choose_config(1024, 4, virtual=64)
    assert cfg.dedupe and cfg.slices(1024) == 1 and stationary_smem_bytes(cfg, 4) <= 227 * 1024
    cfg = choose_config(65536, 4, virtual=4096)
    assert cfg.dedupe and cfg.cols_per_thread * cfg.threads >= 4096 and cfg.smem_bytes(4) <= 227 * 1024


@pytest.mark.parametrize("case", ["subnormal", "overflow"])
@pytest.mark.parametrize("config", [CONFIGS[0], stationary(32, threads=32, cols_per_thread=1)], ids=str)
def test_emulation_keeps_bits_on_sum_then_scale_traps(case, config):
    """The kernels' fp64 value plan multiplies every term (no bounds are known on the
    device), so the replay equals the reference where summing first would not."""
    network, features = sum_then_scale_traps()[case]
    res, rows, vals = reference_run(network, features)
    cats, survivors, erows, ey = emulate_network(network, features, precision="fp64", config=config)
    np.testing.assert_array_equal(cats, res.categories)
    np.testing.assert_array_equal(ey[np.argsort(erows)], vals.toarray())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ["radixnet", "duplicates_normal", "duplicates_scalar"])
def test_distinct_tail_replay_equals_the_stationary_layers_bit_for_bit(rng, dtype, case):
    """kernels/tail.cu's arithmetic (rows held as distinct values, composed indices, one
    expansion at the end) replayed in numpy equals layer-by-layer expansion bit for bit,
    from several first layers k0, with rows dying on the way (negative and positive bias)."""
    from spdnn.engines.cuda.emulate import emulate_distinct_tail
    from spdnn.engines.cuda.plan import plan_challenge
    from spdnn.generate import radixnet_network
    from spdnn.network import Network

    if case == "radixnet":
        n, net = 1024, radixnet_network(1024, 12)
        feats = sp.vstack([random_features(rng, 30, n, 0.5), random_features(rng, 30, n, 0.15)]).tocsr()
    else:
        n = 96
        normal = case == "duplicates_normal"
        dup = duplicate_column_network(rng, n, 12, 20, density=0.3 if normal else 0.15,
                                       values="normal" if normal else 0.0625)
        net = Network.from_layers(dup.layers, -0.02 if normal else 0.05, ymax=3.0)
        feats = sp.vstack([random_features(rng, 30, n, 0.3, values="normal"),
                           random_features(rng, 30, n, 0.02, values="normal")]).tocsr()
    plan, packed = plan_challenge(net, dtype, lambda k: net.layers[k], smem_limit=227 * 1024, budget=1 << 40)
    cfg = plan.config
    assert cfg.dedupe and plan.distinct_tail
    bias = net.uniform_bias()
    y = np.asarray(feats.toarray(), dtype=dtype)
    outputs = []                          # outputs[k]: every row after layer k (dead rows zero)
    for layer in packed:
        y, _ = emulate_layer(y, layer, cfg, n, np.full(n, bias), net.ymax, mode=plan.values.mode,
                             value_dtype=plan.value_dtype)
        outputs.append(y)
    assert 0 < np.count_nonzero(outputs[-1].any(axis=1)) < y.shape[0]        # rows live and rows die
    for k0, k1 in [(1, 12), (4, 9), (11, 12)]:
        z, alive = emulate_distinct_tail(outputs[k0 - 1], packed, cfg, n, bias, net.ymax, k0, k1,
                                         mode=plan.values.mode, value_dtype=plan.value_dtype)
        np.testing.assert_array_equal(alive, outputs[k1 - 1].any(axis=1))
        np.testing.assert_array_equal(np.ascontiguousarray(z).view(np.uint8), np.ascontiguousarray(outputs[k1 - 1]).view(np.uint8))


def test_composed_indices_and_reps(rng):
    from spdnn.engines.cuda.layout import NO_REP, compose_indices, distinct_reps

    out_map = np.array([2, 0, 2, 1, 0], dtype=np.uint16)
    assert distinct_reps(out_map, 4).tolist() == [1, 3, 0, NO_REP]
    with pytest.raises(OptionError, match="does not fit 2 slots"):
        distinct_reps(out_map, 2)
    idx = np.array([4, 5, 0, 3, 5], dtype=np.uint16)                 # 5: the zero slot of 5 inputs
    assert compose_indices(idx, out_map, 5, 7).tolist() == [0, 7, 2, 1, 7]
