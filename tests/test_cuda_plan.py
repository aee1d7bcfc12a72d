"""The CUDA engine's plan (spdnn.engines.cuda.plan), on the CPU: blocking, prefetch and tail
choices, shared memory, streaming splits, phases, counters and merge bookkeeping."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines.cuda.layout import (VALUE_ARRAY, VALUE_SCALAR, VALUE_SUM_THEN_SCALE, KernelConfig,
                                      distinct_tail_smem_bytes, stationary_smem_bytes)
from spdnn.engines.cuda.plan import (PREFETCH_STAGES, TAIL_STAGES, Counters, Phase, check_invariants,
                                     count_survivors, merge_points, merge_roots, merged_members, plan_challenge,
                                     plan_streaming)
from spdnn.errors import DeviceMemoryError, OptionError, SpdnnError
from spdnn.generate import radixnet_network
from spdnn.network import Network

from factories import duplicate_column_network, random_network

H100_SMEM = 227 * 1024
LOTS = 1 << 40


def _plan(network, dtype=np.float32, **options):
    options = {"smem_limit": H100_SMEM, "budget": LOTS, **options}
    return plan_challenge(network, dtype, lambda k: network.layers[k], **options)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_radixnet_plan_is_stationary_deduplicated_with_prefetch_and_a_tail(dtype):
    net = radixnet_network(1024, 20)
    plan, packed = _plan(net, dtype)
    cfg = plan.config
    assert cfg.stationary and cfg.dedupe and cfg.fits_stationary(1024)
    assert cfg.prefetch and cfg.prefetch_stages == PREFETCH_STAGES
    tail = plan.tail_config
    assert tail is not None and tail.rows_per_tile == 1 and tail.prefetch_stages == TAIL_STAGES
    assert (tail.threads, tail.cols_per_thread, tail.chunk, tail.dedupe) == (cfg.threads, cfg.cols_per_thread,
                                                                              cfg.chunk, cfg.dedupe)
    itemsize = np.dtype(dtype).itemsize
    assert plan.smem == stationary_smem_bytes(cfg, itemsize, max_entries=plan.max_entries) <= H100_SMEM
    # one bias value: the distinct tail (tail.cu), with its composed indices and reps resident
    assert plan.distinct_tail
    assert plan.tail_smem == distinct_tail_smem_bytes(tail, itemsize, max_entries=plan.max_entries) <= H100_SMEM
    assert plan.tail_smem < stationary_smem_bytes(tail, itemsize, max_entries=plan.max_entries)
    # one weight value a layer: no values stored
    assert plan.values.mode in (VALUE_SUM_THEN_SCALE, VALUE_SCALAR) and plan.value_dtype is None
    assert plan.value_bytes == 0 and np.all(plan.scalars == 1 / 16)
    assert 1 <= plan.distinct_columns <= 1024 / 16
    assert plan.adds_per_row == [p.packed_nnz for p in packed] and all(a > 0 for a in plan.adds_per_row)
    assert np.array_equal(np.diff(plan.entry_off), [p.entries for p in packed])
    assert np.array_equal(np.diff(plan.meta_off), [p.meta.shape[0] for p in packed])
    assert plan.max_entries == max(p.entries for p in packed)
    assert np.array_equal(plan.layer_bytes, [p.entries * 2 + 2 * 1024 for p in packed])
    tail_bytes = 2 * sum(p.entries for p in packed) + 2 * tail.outputs_per_block * net.depth
    assert plan.weight_bytes == plan.layer_bytes.sum() + sum(p.meta.nbytes for p in packed) + tail_bytes
    assert plan.padding_ratio >= 1.0
    assert not plan.streaming and plan.resident == net.depth
    assert plan.describe()["config"]["tail"] == {"rows_per_tile": 1, "stages": TAIL_STAGES, "distinct": True}


def test_the_distinct_tail_needs_one_bias_merging_and_resident_weights(rng):
    """A bias per neuron (outputs of one distinct column may differ), no merging (no tail
    segments) or streamed weights (composed indices are resident only): the one-row
    stationary instance or none, never the distinct tail."""
    net = radixnet_network(1024, 20)
    per_neuron = Network.from_layers(net.layers, rng.uniform(-0.4, -0.2, (20, 1024)), ymax=net.ymax)
    plan, _ = _plan(per_neuron)
    assert plan.tail_config is not None and not plan.distinct_tail
    assert plan.tail_smem == stationary_smem_bytes(plan.tail_config, 4, max_entries=plan.max_entries)
    plan, _ = _plan(net, merge=False)
    assert not plan.distinct_tail
    plan, _ = _plan(net, stream_weights=True)
    assert plan.streaming and not plan.distinct_tail and plan.tail_config is not None
    plan, _ = _plan(net)
    assert plan.distinct_tail and not plan.streaming


def test_per_entry_values_are_stored_in_the_narrowest_exact_type(rng):
    net = random_network(rng, 256, 6, density=0.05, values="normal")
    plan, _ = _plan(net, np.float64)
    assert plan.values.mode == VALUE_ARRAY and plan.value_dtype == np.float64 and plan.value_bytes == 8
    assert plan.describe()["value_mode"] == "array"
    assert np.all(plan.scalars == 0)


def test_a_small_shared_memory_gives_up_prefetch_not_correctness(rng):
    """With little shared memory the prefetch stages do not fit: the plan keeps the
    blocking without them, and what it asks for still fits."""
    net = duplicate_column_network(rng, 1024, 6, 64, values=0.0625)
    roomy, _ = _plan(net)
    assert roomy.config.stationary and roomy.config.prefetch_stages == PREFETCH_STAGES
    tight_limit = stationary_smem_bytes(roomy.config, 4, max_entries=roomy.max_entries) - 1
    plan, _ = _plan(net, smem_limit=tight_limit)
    assert plan.smem <= tight_limit
    assert not (plan.config.stationary and plan.config.prefetch_stages >= PREFETCH_STAGES)


def test_forced_blockings_are_checked_and_kept_as_given(rng):
    net = random_network(rng, 512, 4, density=0.05)
    forced = KernelConfig(threads=128, cols_per_thread=4, rows_per_tile=4, chunk=512, stationary=True)
    plan, _ = _plan(net, forced=forced)
    assert plan.config == forced and plan.tail_config is None
    with pytest.raises(OptionError, match="stationary needs chunk == N"):
        _plan(net, forced=KernelConfig(threads=128, cols_per_thread=4, rows_per_tile=4, chunk=256, stationary=True))
    with pytest.raises(OptionError, match="bytes of shared memory a block"):
        _plan(net, forced=KernelConfig(threads=128, cols_per_thread=4, rows_per_tile=16, chunk=512, stationary=True),
              smem_limit=16 * 1024)


# -- streaming -------------------------------------------------------------------------------

def _check_split(sizes, resident, chunks, slot):
    depth = len(sizes)
    covered = [k for a, b in chunks for k in range(a, b)]
    assert covered == list(range(resident, depth)), "chunks cover the streamed layers in order, once"
    for a, b in chunks:
        assert b - a == 1 or sizes[a:b].sum() <= slot, "a chunk fits its slot unless it is one layer"


@pytest.mark.parametrize("seed", range(5))
def test_streaming_splits_cover_every_layer(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1_000, 50_000, size=int(rng.integers(2, 60))).astype(np.int64)
    total = int(sizes.sum())
    assert plan_streaming(sizes, 100, 10 * total, 8, "auto") == (len(sizes), [], 0)     # fits: resident
    resident, chunks, slot = plan_streaming(sizes, 100, 3 * total // 4 + 10_000, 8, "auto")
    assert chunks and 0 <= resident < len(sizes)
    _check_split(sizes, resident, chunks, slot)
    room = 3 * total // 4 + 10_000 - 100 - 64 * 8
    assert sizes[:resident].sum() + 2 * slot <= room, "the resident prefix and two slots fit the budget"
    resident, chunks, slot = plan_streaming(sizes, 100, 10 * total, 8, True)           # forced: all streamed
    assert resident == 0 and len(chunks) >= min(4, len(sizes)) - 1
    _check_split(sizes, resident, chunks, slot)
    assert plan_streaming(sizes, 100, 10, 8, False) == (len(sizes), [], 0)             # never


def test_streaming_refuses_a_budget_without_two_slots():
    sizes = np.array([10_000, 10_000, 10_000], dtype=np.int64)
    with pytest.raises(DeviceMemoryError, match="even streaming, two slots of 10000 bytes"):
        plan_streaming(sizes, 0, 20_000, 8)


# -- phases ----------------------------------------------------------------------------------

def _covers(phases, start, stop):
    layers = [k for ph in phases if ph.kind != "merge" for k in range(ph.a, ph.b)]
    assert layers == list(range(start, stop))


@pytest.mark.parametrize("start,stop", [(0, 120), (0, 40), (17, 90), (64, 65)])
def test_stationary_phases_cut_at_merges_and_chunks(start, stop):
    plan, _ = _plan(radixnet_network(1024, 120))
    plan.resident, plan.chunks = 50, [(50, 70), (70, 120)]
    phases = plan.phases(start, stop)
    _covers(phases, start, stop)
    merges = [ph.a for ph in phases if ph.kind == "merge"]
    assert merges == [k for k in merge_points(120) if start < k < stop]
    for i, ph in enumerate(phases):
        if ph.kind == "merge":
            assert phases[i + 1] == Phase("stationary", ph.a, phases[i + 1].b, ph.chunk, few=True)
        else:
            assert ph.kind == "stationary" and ph.few == (ph.a in merges)
            assert len({plan.chunk_of(k) for k in range(ph.a, ph.b)}) == 1 and ph.chunk == plan.chunk_of(ph.a)
    plan.merging = False
    assert [ph.kind for ph in plan.phases(start, stop)] == ["stationary"] * len(
        [ph for ph in plan.phases(start, stop)])


def test_layer_phases_take_the_wide_path_after_the_first_merge(rng):
    net = random_network(rng, 256, 40, density=0.05)
    plan, _ = _plan(net, forced=KernelConfig(threads=64, cols_per_thread=2, rows_per_tile=4, chunk=128))
    phases = plan.phases(0, 40)
    _covers(phases, 0, 40)
    assert [ph.a for ph in phases if ph.kind == "merge"] == [16, 32]
    assert all(ph.few == (ph.a >= 16) for ph in phases if ph.kind == "layer")


# -- counters and merges ---------------------------------------------------------------------

def test_counters_do_not_overlap():
    c = Counters(7)
    spans = sorted((c.offset[name], c.offset[name] + length) for name, length in
                   [("counts", 8), ("wcounts", 8), ("deaths", 8), ("wdeaths", 8), ("ctr", 22), ("tickets", 22),
                    ("cur", 1)])
    assert spans[0][0] == 0 and spans[-1][1] == c.size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert c.at("deaths", 3) == c.offset["deaths"] + 3


@pytest.mark.parametrize("stationary", [True, False])
def test_survivors_are_recovered_from_what_the_kernels_count(rng, stationary):
    """Write the counters as the kernels would for a known history of deaths and merges;
    count_survivors gives back that history."""
    depth, start, stop = 40, 5, 40
    plan, _ = _plan(random_network(rng, 256, depth, density=0.05),
                    forced=None if stationary else KernelConfig(threads=64, cols_per_thread=2, rows_per_tile=4,
                                                                chunk=128))
    if stationary:
        assert plan.config.stationary
    phases = plan.phases(start, stop)
    counters = Counters(depth)
    stats = np.zeros(counters.size, dtype=np.int64)
    rows = samples = 1000
    want_survivors, want_entering, want_leaving = [], [], []
    for i, ph in enumerate(phases):
        if ph.kind == "merge":
            rows = int(rows - rng.integers(0, rows // 2 + 1))     # rows merged away, samples kept
            stats[counters.at("ctr", i)] = rows
            continue
        for k in range(ph.a, ph.b):
            dead = int(rng.integers(0, max(rows // 10, 1)))
            dead_samples = dead + int(rng.integers(0, 3)) if dead else 0
            want_entering.append(rows)
            rows, samples = rows - dead, samples - dead_samples
            want_leaving.append(rows)
            want_survivors.append(samples)
            if ph.kind == "stationary":
                stats[counters.at("deaths", k + 1)] = dead
                stats[counters.at("wdeaths", k + 1)] = dead_samples
            else:
                stats[counters.at("counts", k + 1)] = rows
                stats[counters.at("wcounts", k + 1)] = samples
    survivors, entering, leaving = count_survivors(counters, stats, phases, start, stop, 1000, 1000)
    np.testing.assert_array_equal(survivors, want_survivors)
    np.testing.assert_array_equal(entering, want_entering)
    np.testing.assert_array_equal(leaving, want_leaving)


def test_merge_roots_follow_chains_and_members_include_the_merged():
    parents = np.array([-1, 0, 1, -1, 3, -1, 2], dtype=np.int32)        # 6 -> 2 -> 1 -> 0, 4 -> 3
    root = merge_roots(parents)
    np.testing.assert_array_equal(root, [0, 0, 0, 3, 3, 5, 0])
    np.testing.assert_array_equal(merged_members(np.array([3, 0]), root), [0, 1, 2, 3, 4, 6])
    np.testing.assert_array_equal(merged_members(np.array([5]), root), [5])
    assert merge_roots(np.full(4, -1)) is None and merge_roots(None) is None
    np.testing.assert_array_equal(merged_members(np.array([4, 1]), None), [1, 4])


def test_the_plan_keeps_no_packed_layer(rng):
    """The packed layers (the host arrays to upload) are returned beside the plan, not
    held by it: at N = 65536 they are gigabytes."""
    net = random_network(rng, 128, 3, density=0.1)
    plan, packed = _plan(net)
    held = [v for v in vars(plan).values() if isinstance(v, list) and v and not isinstance(v[0], (int, tuple))]
    assert not held and len(packed) == 3
    assert isinstance(net.layers[0], sp.csr_matrix)


@pytest.mark.parametrize("n", [256, 1000, 1024])
def test_plans_keep_what_the_kernels_assume(rng, n):
    """Every plan passes check_invariants (plan_challenge runs it); a plan whose entries
    are not multiples of 8 under prefetch is refused naming the rule."""
    net = duplicate_column_network(rng, n, 4, n // 16, values=0.0625)
    plan, _ = _plan(net)
    assert np.all(plan.entry_off % 8 == 0) and plan.max_entries % 8 == 0
    assert plan.config.prefetch or n != 1024              # RadiX-like 1024: prefetched
    if plan.config.prefetch:
        bent = dataclasses.replace(plan, entry_off=plan.entry_off + 4)
        with pytest.raises(SpdnnError, match="entries are not multiples of 8"):
            check_invariants(bent)
