"""spdnn.floor (the honest floor and the v1 model), its constants' JSON, spdnn.floor_probe
(the CUDA probes compile for sm_90; on a GPU they measure), and the cuda engine's report
of its schedule. Every expected figure is derived here from the inputs by the model's
own rules (docs/floor.md), never copied from a run."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from spdnn import floor_probe
from spdnn.errors import FormatError, OptionError
from spdnn.floor import (FloorConstants, Segment, cell_floor, floor_check, floor_of_run, read_constants,
                         transfer_seconds, write_constants)
from spdnn.network import Network

from factories import random_features, random_network

GB = 1e9


def constants(**overrides) -> FloorConstants:
    """Made-up constants with distinct round values (no cache unless asked)."""
    base = dict(device="gpu", name="made-up", bandwidth_gbs=2.0, cache_bytes=0, cache_bandwidth_gbs=None,
                add_per_s={"fp32": 1e9, "fp64": 5e8}, block_barrier_s=1e-7, cluster_barrier_s={"2": 3e-7, "4": 4e-7},
                grid_barrier_s=2e-6, launch_s=3e-6)
    return FloorConstants(**{**base, **overrides})


# ----------------------------------------------------------------------------- transfers


def test_transfer_seconds_splits_at_the_cache():
    c = constants(cache_bytes=1000, cache_bandwidth_gbs=8.0)
    assert transfer_seconds(600, c) == pytest.approx(600 / (8 * GB))
    assert transfer_seconds(2500, c) == pytest.approx(1000 / (8 * GB) + 1500 / (2 * GB))
    free_cache = constants(cache_bytes=1000)                   # cache bandwidth unmeasured: cached bytes free
    assert transfer_seconds(2500, free_cache) == pytest.approx(1500 / (2 * GB))
    assert transfer_seconds(2500, constants()) == pytest.approx(2500 / (2 * GB))


# ----------------------------------------------------------------------------- the model by hand


def _by_hand(widths, rin, rout, adds, weight_bytes, bpv, c, phases, batches=1, precision="fp32"):
    """The docstring's model written out plainly: phases = [(first, stop, scope), ...]."""
    act = weights = 0.0
    chain = 0.0
    for a, b, scope in phases:
        t_act = (rin[a] * widths[a] * bpv + rout[b - 1] * widths[b] * bpv) / (c.bandwidth_gbs * GB)
        t_add = sum(rin[k] * (adds[k] + widths[k + 1]) for k in range(a, b)) / c.add_per_s[precision]
        t_bar = (b - a - 1) * batches * c.dependence_s(scope)
        chain += max(t_act, t_add, t_bar)
        act += t_act
    chain += (len(phases) - 1) * batches * min(c.grid_barrier_s, c.launch_s) + batches * c.launch_s
    weights = weight_bytes / (c.bandwidth_gbs * GB)
    return max(act + weights, chain), act + weights, chain


def test_a_stationary_tail_is_bound_by_its_barriers():
    n, bpv = 64, 4
    widths, rin, rout = [n] * 7, [1] * 6, [1] * 6          # one row through six layers on chip
    adds = [2 * n] * 6
    c = constants(launch_s=1e-7, add_per_s={"fp32": 1e12})
    fl = cell_floor(widths=widths, rows_in=rin, rows_out=rout, adds_per_row=adds, weight_bytes=100,
                    bytes_per_value=bpv, precision="fp32", constants=c, segments=[[0, 6, "block"]])
    expect, traffic, chain = _by_hand(widths, rin, rout, adds, 100, bpv, c, [(0, 6, "block")])
    assert fl.seconds == pytest.approx(expect) and fl.traffic_s == pytest.approx(traffic)
    assert fl.chain_s == pytest.approx(chain)
    # 5 barriers (6 layers, one phase) beat 1 row of traffic and 6 x (128 + 64) adds
    assert fl.barrier_s == pytest.approx(5 * c.block_barrier_s)
    assert fl.bound == "chain" and fl.limit == "barriers"
    assert fl.dependences == {"block": 5, "cluster": 0, "grid": 0, "launch": 1}
    assert fl.activation_bytes == 2 * n * bpv and fl.adds == 6 * (2 * n + n) and fl.phases == 1
    assert fl.unmeasured == []


def test_a_wide_head_is_bound_by_its_traffic():
    n, bpv = 1024, 4
    widths, rin, rout = [n] * 4, [5000, 4000, 3000], [4000, 3000, 2000]
    adds = [0, 0, 0]
    c = constants(add_per_s={"fp32": 1e15})
    fl = cell_floor(widths=widths, rows_in=rin, rows_out=rout, adds_per_row=adds, weight_bytes=10**6,
                    bytes_per_value=bpv, precision="fp32", constants=c)       # default: a grid segment a layer
    phases = [(k, k + 1, "grid") for k in range(3)]
    expect, traffic, _ = _by_hand(widths, rin, rout, adds, 10**6, bpv, c, phases)
    assert fl.seconds == pytest.approx(expect) == pytest.approx(traffic)
    assert fl.bound == "traffic" and fl.limit == "activations"
    assert fl.activation_bytes == sum(a + b for a, b in zip(rin, rout)) * n * bpv
    # 2 grid boundaries at the cheaper of grid barrier (2 us) and launch (3 us)
    assert fl.grid_s == pytest.approx(2 * c.grid_barrier_s) and fl.dependences["grid"] == 2
    assert fl.barrier_s == 0.0


def test_a_mixed_schedule_with_batches_and_rectangular_layers():
    widths = [48, 32, 32, 16, 16, 16, 8]
    rin, rout = [9, 9, 7, 7, 4, 4], [9, 7, 7, 4, 4, 2]
    adds = [11, 12, 13, 14, 15, 16]
    c = constants(add_per_s={"fp64": 2e8})
    segments = [[0, 2, "block"], [2, 3, "grid"], [3, 6, "cluster", 2]]
    fl = cell_floor(widths=widths, rows_in=rin, rows_out=rout, adds_per_row=adds, weight_bytes=777,
                    bytes_per_value=8, precision="fp64", constants=c, segments=segments, batches=3)
    c2 = c.cluster_barrier_s["2"]
    # by hand, with the cluster barrier of size 2 for the last segment
    per = []
    for (a, b), bar in (((0, 2), c.block_barrier_s), ((2, 3), 0.0), ((3, 6), c2)):
        t_act = (rin[a] * widths[a] + rout[b - 1] * widths[b]) * 8 / (2 * GB)
        t_add = sum(rin[k] * (adds[k] + widths[k + 1]) for k in range(a, b)) / 2e8
        per.append((t_act, t_add, (b - a - 1) * 3 * bar))
    chain = sum(max(p) for p in per) + 2 * 3 * c.grid_barrier_s + 3 * c.launch_s
    traffic = sum(p[0] for p in per) + 777 / (2 * GB)
    assert fl.chain_s == pytest.approx(chain) and fl.traffic_s == pytest.approx(traffic)
    assert fl.seconds == pytest.approx(max(chain, traffic))
    assert fl.dependences == {"block": 3, "cluster": 6, "grid": 6, "launch": 3}
    assert fl.barrier_s == pytest.approx(3 * c.block_barrier_s + 6 * c2)
    assert fl.adds == sum(r * (a + w) for r, a, w in zip(rin, adds, widths[1:]))


def test_unmeasured_constants_leave_their_terms_out_and_are_named():
    c = FloorConstants(device="cpu", bandwidth_gbs=4.0)
    fl = cell_floor(widths=[8] * 4, rows_in=[3, 3, 3], rows_out=[3, 3, 3], adds_per_row=[5] * 3, weight_bytes=64,
                    bytes_per_value=4, precision="fp32", constants=c, segments=[[0, 3, "block"]])
    assert fl.arithmetic_s == fl.barrier_s == fl.grid_s == fl.launch_s == 0.0
    assert set(fl.unmeasured) == {"add_per_s[fp32]", "block_barrier_s", "launch_s"}
    assert fl.seconds == pytest.approx((3 * 8 * 4 * 2 + 64) / (4 * GB))


def test_dependence_takes_the_cheapest_mechanism_of_the_scope():
    c = constants()
    assert c.dependence_s("grid") == c.grid_barrier_s                      # 2 us barrier < 3 us launch
    assert constants(grid_barrier_s=None).dependence_s("grid") == 3e-6
    assert c.dependence_s("cluster", 4) == 4e-7
    assert c.dependence_s("cluster", 16) == c.dependence_s("cluster") == 3e-7   # unmeasured size: the fastest
    assert constants(cluster_barrier_s={}).dependence_s("cluster") is None
    with pytest.raises(OptionError, match="scope"):
        c.dependence_s("warp")


@pytest.mark.parametrize("segments, match", [
    ([[0, 2, "block"], [3, 4, "grid"]], "layer 2 expected"),
    ([[0, 2, "block"]], "cover layers 0..2"),
    ([[0, 4, "warp"]], "scope"),
    ([[1, 1, "grid"]], "first < stop"),
])
def test_segments_must_cover_the_layers_in_order(segments, match):
    with pytest.raises(OptionError, match=match):
        cell_floor(widths=[4] * 5, rows_in=[1] * 4, rows_out=[1] * 4, adds_per_row=[1] * 4, weight_bytes=1,
                   bytes_per_value=4, precision="fp32", constants=constants(), segments=segments)


def test_counts_must_have_one_value_a_layer():
    with pytest.raises(OptionError, match="rows_out: 2 values for 3"):
        cell_floor(widths=[4] * 4, rows_in=[1] * 3, rows_out=[1] * 2, adds_per_row=[1] * 3, weight_bytes=1,
                   bytes_per_value=4, precision="fp32", constants=constants())
    with pytest.raises(OptionError, match="batches"):
        cell_floor(widths=[4] * 2, rows_in=[1], rows_out=[1], adds_per_row=[1], weight_bytes=1, bytes_per_value=4,
                   precision="fp32", constants=constants(), batches=0)


def test_floor_check_says_the_model_is_wrong_below_one():
    assert floor_check(2.0, 1.0) == "ok" and floor_check(1.0, 1.0) == "ok"
    assert "model is wrong" in floor_check(0.5, 1.0)


# ----------------------------------------------------------------------------- from an engine's report


def test_floor_of_run_reads_the_engines_report_and_falls_back(rng):
    net = random_network(rng, 12, 4, bias="negative")
    nnz = [int(w.nnz) for w in net.layers]
    c = constants(add_per_s={"fp32": 1e9})
    survivors = [7, 6, 4, 4]
    reported = {"rows_computed": [9, 5, 5, 2], "rows_left": [6, 5, 3, 2], "segments": [[0, 2, "block"], [2, 4, "grid"]],
                "adds_per_row": [3, 3, 3, 3], "weight_bytes": 500}
    got = floor_of_run(net, survivors=survivors, alive_inputs=9, extra=reported, bytes_per_value=4, precision="fp32",
                       constants=c)
    want = cell_floor(widths=net.widths, rows_in=[9, 5, 5, 2], rows_out=[6, 5, 3, 2], adds_per_row=[3] * 4,
                      weight_bytes=500, bytes_per_value=4, precision="fp32", constants=c,
                      segments=[Segment(0, 2, "block"), Segment(2, 4, "grid")])
    assert got == want
    # nothing reported: the samples alive before and after each layer, a grid segment a layer,
    # the layers' nonzeros, 2 bytes a nonzero
    plain = floor_of_run(net, survivors=survivors, alive_inputs=9, extra={}, bytes_per_value=4, precision="fp32",
                         constants=c)
    assert plain == cell_floor(widths=net.widths, rows_in=[9, 7, 6, 4], rows_out=[7, 6, 4, 4], adds_per_row=nnz,
                               weight_bytes=2 * sum(nnz), bytes_per_value=4, precision="fp32", constants=c)
    # several batches: rows_left (the last batch's) is not used, the barriers are paid per batch
    batched = floor_of_run(net, survivors=survivors, alive_inputs=9, extra={**reported, "batches": 2},
                           bytes_per_value=4, precision="fp32", constants=c)
    assert batched == cell_floor(widths=net.widths, rows_in=[9, 5, 5, 2], rows_out=[5, 5, 2, 2],
                                 adds_per_row=[3] * 4, weight_bytes=500, bytes_per_value=4, precision="fp32",
                                 constants=c, segments=reported["segments"], batches=2)
    assert batched.dependences["launch"] == 2


def test_floor_of_run_counts_a_dense_layer_in_full(rng):
    dense = np.ascontiguousarray(rng.standard_normal((5, 3)))
    net = Network.from_layers([dense], bias=0.0, bias_rule="dense", activation="identity", ymax=np.inf)
    fl = floor_of_run(net, survivors=[4], alive_inputs=4, extra={}, bytes_per_value=8, precision="fp64",
                      constants=constants())
    assert fl.adds == 4 * (15 + 3) and fl.weight_bytes == 2 * 15


# ----------------------------------------------------------------------------- constants JSON


def test_constants_json_round_trip(tmp_path):
    c = constants(cache_bytes=50 * 2**20, cache_bandwidth_gbs=9000.0, details={"sms": 132, "unavailable": {}})
    path = write_constants(c, tmp_path / "c.json")
    assert json.loads(path.read_text())["version"] == 1
    assert read_constants(path) == c
    assert FloorConstants.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("text, match", [
    ("{not json", r"c\.json, line 1: not JSON"),
    (json.dumps({"device": "gpu"}), "required"),
    (json.dumps({"device": "gpu", "bandwidth_gbs": 1.0, "flux": 2}), "unknown fields flux"),
    (json.dumps({"device": "gpu", "bandwidth_gbs": 1.0, "launch_s": -1}), "launch_s"),
    (json.dumps({"device": "gpu", "bandwidth_gbs": 0}), "bandwidth_gbs"),
    (json.dumps({"version": 9, "device": "gpu", "bandwidth_gbs": 1.0}), "version 9"),
])
def test_bad_constants_files_are_named(tmp_path, text, match):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(FormatError, match=match) as info:
        read_constants(path)
    assert "c.json" in str(info.value)


# ----------------------------------------------------------------------------- the probes


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("define", [None, "SPDNN_PROBE_CLUSTER", "SPDNN_PROBE_CG"])
def test_probes_compile_for_sm90(tmp_path, define):
    src = tmp_path / "probe.cu"
    src.write_text(floor_probe.probe_source())
    cmd = ["nvcc", "-std=c++17", "-arch=sm_90", "-Xptxas", "-v", "-c", str(src), "-o", str(tmp_path / "p.o")]
    run = subprocess.run(cmd + ([f"-D{define}"] if define else []), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    kernels = {None: ["probe_block_barrier", "probe_grid_barrier", "probe_graph_step", "probe_add_f32",
                      "probe_add_f64", "probe_copy"],
               "SPDNN_PROBE_CLUSTER": [f"probe_cluster_barrier_{s}" for s in floor_probe.CLUSTER_SIZES],
               "SPDNN_PROBE_CG": ["probe_grid_sync"]}[define]
    for name in kernels:
        assert f"'{name}'" in run.stderr, name
    assert "spill stores" not in run.stderr or " 0 bytes spill stores" in run.stderr


def test_host_constants_are_measured():
    c = floor_probe.measure_host(bandwidth_gbs=3.0)
    assert c.device == "cpu" and c.bandwidth_gbs == 3.0 and c.cache_bytes >= 0
    assert c.block_barrier_s is None and c.launch_s is None          # not measured on the host


@pytest.mark.gpu
def test_gpu_probes_measure_an_ordered_card():
    c = floor_probe.measure_gpu(repeats=3)
    assert c.device == "gpu" and c.bandwidth_gbs > 100 and c.cache_bytes > 0
    assert c.cache_bandwidth_gbs > 0 and c.add_per_s["fp32"] > c.add_per_s["fp64"] > 0
    # a block barrier is cheaper than ordering the whole grid, which a launch also does
    assert 0 < c.block_barrier_s < c.grid_barrier_s and c.launch_s > 0
    assert FloorConstants.from_dict(json.loads(json.dumps(c.to_dict()))) == c


@pytest.mark.gpu
@pytest.mark.parametrize("merge", [True, False])
def test_cuda_engine_reports_its_schedule(rng, merge):
    from spdnn.engines import get_engine

    net = random_network(rng, 64, 40, bias="negative")
    feats = random_features(rng, 300, 64)
    res = get_engine("cuda", precision="fp64", merge=merge).run(net, feats)
    extra = res.extra
    segs = [Segment.parse(s) for s in extra["segments"]]
    assert segs[0].first == 0 and segs[-1].stop == net.depth
    assert all(a.stop == b.first for a, b in zip(segs, segs[1:]))
    rin, rout = extra["rows_computed"], extra["rows_left"]
    starts = {s.first for s in segs}
    for k in range(net.depth - 1):
        # rows only die inside a segment; a merge (at a segment start) may only lower the count
        assert rin[k + 1] == rout[k] if k + 1 not in starts else rin[k + 1] <= rout[k]
    assert rout[-1] <= res.survivors[-1] and extra["weight_bytes"] > 0
    assert len(extra["adds_per_row"]) == net.depth
    assert all(0 < a <= w.nnz for a, w in zip(extra["adds_per_row"], net.layers))


def test_floor_constants_script_writes_the_host_constants(tmp_path):
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "floor_constants.py"
    out = tmp_path / "host.json"
    run = subprocess.run([sys.executable, str(script), "--device", "cpu", "--out", str(out)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    c = read_constants(out)
    assert c.device == "cpu" and c.bandwidth_gbs > 0 and f"{c.bandwidth_gbs:,.0f} GB/s" in run.stdout
    usage = subprocess.run([sys.executable, str(script), "--repeats", "0", "--out", str(out)], capture_output=True,
                           text=True, timeout=300)
    assert usage.returncode == 2 and "--repeats" in usage.stderr
