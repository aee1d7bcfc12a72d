"""spdnn.bench_general on the CPU: cell names, data, and the bench loop with CPU engines
(the GPU engines and PyTorch peers run on the device: benchmarks/device_general.sh)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn import bench_general as bg
from spdnn.errors import OptionError
from spdnn.floor import floor_check


def test_cell_names():
    cells = bg.parse_general_cells(["general"])
    assert cells[:3] == ["wide4096", "wide16384", "mnistshape"]
    assert [c for c in cells if c.startswith("zeros")] == [f"zeros4096:{z:g}" for z in bg.SWEEP_ZEROS]
    assert bg.is_general_cell("zeros4096:97") and not bg.is_general_cell("1024x120")
    with pytest.raises(OptionError, match="zeros4096:P"):
        bg.parse_general_cells(["zeros4096:100"])
    with pytest.raises(OptionError, match="not a general cell"):
        bg.parse_general_cells(["wide5"])


def test_wide_data_have_the_stated_shape():
    net = bg.wide_network(256, 3, 8, seed=1)
    assert all(np.all(np.diff(w.tocsc().indptr) == 8) for w in net.layers)
    assert not net.challenge_form and net.prunes_after(0)
    f = bg.wide_features(300, 256)
    assert f.shape == (300, 256) and 0.15 < f.nnz / (300 * 256) < 0.25 and f.data.min() > 0
    f = bg.wide_features(5000, 64, seed=3)          # two blocks of 4096 rows: the plain construction's matrix
    rng = np.random.default_rng(4)
    plain = []
    for rows in (4096, 904):
        values = rng.random((rows, 64), dtype=np.float32)
        keep = rng.random((rows, 64), dtype=np.float32) < 0.2
        plain.append(np.where(keep, values, np.float32(0)).astype(np.float64))
    want = sp.csr_matrix(np.vstack(plain))
    assert f.has_canonical_format and np.array_equal(f.indptr, want.indptr) and np.array_equal(f.indices, want.indices)
    assert np.array_equal(f.data, want.data)


def test_bench_loop_on_cpu_engines(monkeypatch):
    monkeypatch.setitem(bg.WIDE, "wide4096", (128, 3, 8))
    report = bg.run_general_bench(["wide4096"], engines=("cpu", "reference"), peers=(), repeats=2, samples=200,
                                  precision="fp64", bandwidth_gbs=100.0, truth_engine="reference")
    cell = report["cells"][0]
    assert report["passed"] and cell["widths"] == [128] * 4
    assert set(report["floor_constants"]) == {"cpu"}
    for e in cell["engines"].values():
        assert e["prediction_mismatches"] == 0 and len(e["times"]) == 2
        # the honest floor (constants measured after the timings) and the first model's beside it
        assert e["floor"]["device"] == "cpu" and e["floor"]["seconds"] > 0
        assert e["floor_ratio"] == pytest.approx(e["median_seconds"] / e["floor"]["seconds"])
        assert e["floor_check"] == floor_check(e["median_seconds"], e["floor"]["seconds"])
        assert e["floor_ratio_v1"] == pytest.approx(e["median_seconds"] / e["floor_v1"]["seconds"])
    text = bg.format_general(report)
    assert "wide4096" in text and "PASS" in text


def test_given_constants_fill_each_cell_s_floor_as_it_is_timed(monkeypatch):
    """With the constants given, the checkpoint after the first cell already holds its honest
    floor (a bench cut short keeps them); without, floors wait for the end."""
    from spdnn.floor import FloorConstants

    monkeypatch.setitem(bg.WIDE, "wide4096", (64, 2, 4))
    monkeypatch.setitem(bg.WIDE, "wide16384", (96, 2, 4))
    given = FloorConstants(device="cpu", name="made-up host", bandwidth_gbs=3.5, cache_bytes=2**20,
                           cache_bandwidth_gbs=20.0, add_per_s={"fp64": 1e9}, launch_s=4e-6)
    for constants in (given, None):
        seen = []
        bg.run_general_bench(["wide4096", "wide16384"], engines=("cpu",), peers=(), repeats=1, samples=50,
                             precision="fp64", truth_engine="reference", floor_constants_from=constants,
                             checkpoint=lambda report: seen.append(
                                 [e["floor_ratio"] for c in report["cells"] for e in c["engines"].values()]))
        first = seen[0]                              # after the first cell
        assert len(first) == 1 and (first[0] is not None) == (constants is not None)
        assert all(r is not None for r in seen[-1]) and len(seen[-1]) == 2


def test_model_cell_runs_a_model_file_on_mnist():
    from spdnn.models.example import example_files

    path = example_files().model
    assert bg.parse_general_cells([f"model:{path}"]) == [f"model:{path}"]
    with pytest.raises(OptionError, match="expected model:PATH"):
        bg.parse_general_cells(["model:"])
    report = bg.run_general_bench([f"model:{path}"], engines=("cpu",), peers=(), repeats=1, samples=300,
                                  precision="fp32", bandwidth_gbs=100.0, truth_engine="reference")
    cell = report["cells"][0]
    assert cell["widths"][0] == 784 and cell["samples"] == 300
    entry = cell["engines"]["cpu"]
    # fp32 against the fp64 reference: equal, or differing only on near ties the verification explains
    assert entry["verdict"] in ("match", "rounding") and report["passed"]


def test_a_mismatch_the_verification_cannot_explain_fails_the_cell(monkeypatch):
    monkeypatch.setitem(bg.WIDE, "wide4096", (64, 2, 8))
    real = bg.get_engine

    def lying(name, *args, **kwargs):
        engine = real(name, *args, **kwargs)
        if name == "cpu":
            run = engine.run

            def wrong(*a, **k):
                result = run(*a, **k)
                if result.predictions is not None:
                    result.predictions = (result.predictions + 1) % a[0].outputs
                return result
            engine.run = wrong
        return engine

    monkeypatch.setattr(bg, "get_engine", lying)
    report = bg.run_general_bench(["wide4096"], engines=("cpu",), peers=(), repeats=1, samples=100,
                                  precision="fp64", bandwidth_gbs=100.0, truth_engine="reference")
    entry = report["cells"][0]["engines"]["cpu"]
    assert entry["prediction_mismatches"] > 0 and entry["verdict"] == "engine" and not report["passed"]



def test_the_table_says_where_dense_products_win():
    def entry(ms):
        return {"median_seconds": ms / 1e3, "teraedges_per_second": 1.0, "floor_ratio": 2.0,
                "prediction_mismatches": 0}

    def report(engines_by_cell):
        return {"precision": "fp32", "machine": {"gpu": "test card"}, "samples": 10, "repeats": 1, "passed": True,
                "cells": [{"name": name, "engines": {k: entry(ms) for k, ms in engines.items()}}
                          for name, engines in engines_by_cell.items()]}

    text = bg.format_general(report({"zeros4096:95": {"cuda": 10, "torch-tf32": 5, "torch-fp32": 30},
                                     "zeros4096:99": {"cuda": 5, "torch-tf32": 20, "torch-fp32": 60}}))
    assert "dense products beat the cuda engine at: zeros4096:95\n" in text
    assert "cuda is 0.50x the best other" in text                       # at 95%, TF32 takes half the time
    text = bg.format_general(report({"zeros4096:99": {"cuda": 5, "torch-tf32": 20}}))
    assert "beat the cuda engine at: none of the densities swept" in text
    text = bg.format_general(report({"zeros4096:99": {"cpu": 5}}))
    assert "not compared (the sweep needs both)" in text


def test_general_blockings_script_parses_and_reports_each_blocking(tmp_path):
    """benchmarks/general_blockings.py: a bad blocking name is refused before any work; on a
    machine without the cuda engine every blocking is reported as an error in the JSON (the
    device runs it for real)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "general_blockings.py"
    env = dict(os.environ, SPDNN_CACHE_DIR=str(tmp_path), NUMBA_NUM_THREADS="1")
    bad = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--blockings", "default,t5c"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "'t5c' is not" in bad.stderr
    from factories import engine_availability

    if engine_availability("cuda")[0]:
        pytest.skip("the cuda engine runs here: the device runs this script")
    run = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--cells", "wide4096", "--samples", "20",
                          "--blockings", "default,t512c8r8k2048"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "general_blockings.json").read_text())
    runs = report["cells"][0]["runs"]
    assert [r["blocking"] for r in runs] == ["default", "t512c8r8k2048"] and all("error" in r for r in runs)
