"""spdnn.bench (cell parser, floor) and the scripts of benchmarks/ (the MPI scaling model,
the packed feature files)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.bench import floor_estimate, parse_cells
from spdnn.distributed import NpzSource
from spdnn.errors import OptionError

from factories import engine_availability

MPI_TIMEOUT = 300


# ----------------------------------------------------------------- spdnn.bench helpers


def test_parse_cells():
    assert parse_cells("1024x120, 4096X480") == [(1024, 120), (4096, 480)]
    assert parse_cells(["64x8", "32x1,128x2"]) == [(64, 8), (32, 1), (128, 2)]
    for bad in ("", "1024", "1000x120", "16x4", "1024x0", "ax3"):
        with pytest.raises(OptionError, match="--cells"):
            parse_cells(bad)


def test_floor_estimate_by_hand():
    # alive before: 10, 6, 3; after: 6, 3, 2 -> (16 + 9 + 5) rows x 8 neurons x 4 bytes = 960 bytes,
    # plus 2 bytes x 100 edges = 1160 bytes; at 1 GB/s 1.16 us, plus 3 launches x 1 us.
    fl = floor_estimate([6, 3, 2], alive_inputs=10, neurons=8, bytes_per_value=4, edges=100,
                        bandwidth_gbs=1.0, launch_latency_s=1e-6, device="cpu")
    assert fl.bytes == 1160 and fl.launches == 3
    assert fl.seconds == pytest.approx(1160e-9 + 3e-6)
    with pytest.raises(OptionError):
        floor_estimate([1], alive_inputs=1, neurons=8, bytes_per_value=4, edges=1, bandwidth_gbs=0,
                       launch_latency_s=0, device="cpu")


# --------------------------------------------------------------- benchmarks/mpi_bench.py


def _bench_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mpi_bench.py"
    spec = importlib.util.spec_from_file_location("spdnn_mpi_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_run(segments, *, seconds, categories, busy=None, rebalances=0):
    return {"inference_seconds": seconds, "categories": categories,
            "extra": {"segments": segments, "rank_busy_seconds": busy or [], "rebalances": rebalances}}


def test_bench_model_recovers_parameters():
    bench = _bench_module()
    a, c, layers, samples = 2e-6, 1e-4, 40, 1000
    spans = [(0, 2, 1800), (2, 4, 900), (4, 8, 700), (8, 16, 800), (16, 40, 2400)]
    segs = [{"start": s, "stop": e, "row_layers": [rl], "busy_seconds": [a * rl + c * (e - s)]} for s, e, rl in spans]
    total = sum(s["busy_seconds"][0] for s in segs)
    cats = list(range(901, 1001))            # all 100 survivors in the last tenth: a skewed static split
    one = _fake_run(segs, seconds=total + 0.001, categories=cats)
    two = {"off": _fake_run([], seconds=total / 2 + 0.0012, categories=cats, busy=[total / 2, total / 2])}
    m = bench.fit_model(one, two, layers=layers, samples=samples, predict=(1, 2, 8, 64))
    assert m["a_seconds_per_row_layer"] == pytest.approx(a, rel=1e-6)
    assert m["c_seconds_per_layer"] == pytest.approx(c, rel=1e-6)
    assert m["o1_seconds"] == pytest.approx(0.001, rel=1e-6)
    assert m["alpha_seconds"] == pytest.approx(0.0002, rel=1e-6)
    assert m["S_final_survivors"] == 100
    p = {row["ranks"]: row for row in m["predictions"]}
    assert p[1]["block"]["seconds"] == pytest.approx(one["inference_seconds"], rel=1e-6)
    # every survivor is in the last block of the contiguous split: dealing chunks or
    # rebalancing must predict faster runs
    assert p[8]["balanced"]["seconds"] <= p[8]["shuffled"]["seconds"] < p[8]["block"]["seconds"]
    assert p[64]["balanced"]["speedup"] > p[8]["balanced"]["speedup"] > 1
    assert 0 < p[64]["block"]["efficiency"] < p[8]["block"]["efficiency"] <= 1


def test_bench_packed_inputs_and_upsampling(tmp_path, rng):
    bench = _bench_module()
    dense = rng.random((7, 64)) < 0.3                      # 7 images of 8 x 8, column-major features
    np.savez(tmp_path / "features-64.npz", bits=np.packbits(dense, axis=1), n=np.int64(64),
             nnz=np.int64(dense.sum()))
    got = bench.read_packed(tmp_path / "features-64.npz")
    assert got.shape == (7, 64) and (got != sp.csr_matrix(dense.astype(np.float64))).nnz == 0
    up = bench.upsample_2x2(got, 64)
    images = dense.reshape(7, 8, 8).transpose(0, 2, 1)     # [sample, row, col] from feature c * 8 + r
    big = np.kron(images, np.ones((2, 2), dtype=bool))     # 16 x 16, each pixel a 2 x 2 block
    expect = big.transpose(0, 2, 1).reshape(7, 256)        # back to column-major features
    assert up.has_sorted_indices and (up != sp.csr_matrix(expect.astype(np.float64))).nnz == 0
    path, _, origin = bench.features_file(tmp_path / "work", 256, 5, "packed", tmp_path)
    assert "upsampled" in origin and NpzSource(path).samples == 5
    assert (NpzSource(path).rows(0, 5) != up[:5]).nnz == 0


def test_bench_fast_features_shape():
    bench = _bench_module()
    f = bench.fast_features(1024, 5)
    assert f.shape == (5, 1024) and f.nnz > 0 and set(np.unique(f.data)) == {1.0}
    assert np.all(np.diff(f.indptr) > 0)


@pytest.mark.mpi
def test_bench_script_runs_one_and_two_ranks(tmp_path):
    engine = "cpu" if engine_availability("cpu")[0] else "reference"
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "mpi_bench.py"), "--engine",
           engine, "--cells", "1024x12", "--samples", "240", "--ranks", "1,2", "--inputs", "fast", "--repeat", "0",
           "--workdir", str(tmp_path / "work"), "--out", str(out)]
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=MPI_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    (cell,) = report["cells"]
    assert cell["passed"] and {(r["ranks"], r["mode"]) for r in cell["rows"]} == {
        (1, "off"), (1, "on"), (2, "block"), (2, "off"), (2, "on"), (2, "force")}
    assert all(r["same_as_1_rank"] for r in cell["rows"])
    assert "predictions" in cell["model"] and "off" in cell["model"]["check_P2"]


def test_bench_static_fit_recovers_parameters_and_checks_unfitted_runs():
    bench = _bench_module()
    a, C, layers, samples = 3e-6, 0.02, 40, 1000
    spans = [(0, 2, 1800), (2, 4, 900), (4, 8, 700), (8, 16, 800), (16, 40, 2400)]
    segs = [{"start": s, "stop": e, "row_layers": [rl], "busy_seconds": [0.0]} for s, e, rl in spans]
    cats = list(range(1, 1001, 10))                      # 100 survivors spread over the samples
    one = _fake_run(segs, seconds=0.0, categories=cats)
    np_cats = np.asarray(cats)
    total = sum(rl for *_, rl in spans)
    Wd = total - len(cats) * layers

    def static(P, layout):
        k = bench._busiest(samples, P, layout, np_cats)
        return _fake_run([], seconds=a * (Wd / P + k * layers) + C, categories=cats)

    measured = {P: {"off": static(P, "shuffled"), "block": static(P, "block")} for P in (1, 2, 4)}
    m = bench.fit_static(one, measured, layers=layers, samples=samples, fit_ranks=[1, 2])
    assert m["a_seconds_per_row_layer"] == pytest.approx(a, rel=1e-6)
    assert m["C_seconds"] == pytest.approx(C, rel=1e-6)
    unfitted = [c for c in m["checks"] if not c["fitted"]]
    assert {c["ranks"] for c in unfitted} == {4} and all(abs(c["error"]) < 1e-9 for c in unfitted)
    assert bench.fit_static(one, {1: measured[1]}, layers=layers, samples=samples, fit_ranks=[1]) is None
