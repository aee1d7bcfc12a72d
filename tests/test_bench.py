"""spdnn.bench (cells, published figures, floor, timing loop, report) and the scripts of
benchmarks/, run on a small generated cell: each exits 0 when every engine matches the
float64 truth and 1 when one does not (a damaged cached truth stands in for a wrong engine)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spdnn import bench
from spdnn.bench import (GRID, PUBLISHED, bench_runs, floor_estimate, parse_cells, time_engine, time_runs,
                         write_json)
from spdnn.floor import FloorConstants, floor_check, floor_of_run, write_constants
from spdnn.generate import cached_challenge
from spdnn.engines import engine_merges
from spdnn.engines.reference import ReferenceEngine
from spdnn.errors import OptionError, SpdnnError
from spdnn.formats.packed import read_packed_features, write_packed_features
from spdnn.report import format_bench

from factories import challenge_cache, engine_availability, random_features, random_network, same_csr

REPO = Path(__file__).resolve().parents[1]
MPI_TIMEOUT = 300
#: The small cell every script runs on: N x L with the first S samples.
N, L, S = 64, 8, 200


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    """A cache folder holding the small cell's generated features and float64 truth."""
    path = tmp_path_factory.mktemp("bench-cache")
    assert len(challenge_cache(path, N, L, S)) >= 1, "the small cell must have at least one category"
    return path


@pytest.fixture
def wrong_truth_cache(small_cache, tmp_path):
    """A copy of ``small_cache`` whose cached truth lacks its first category."""
    path = tmp_path / "cache"
    shutil.copytree(small_cache, path)
    (truth_file,) = (path / "generated").glob(f"truth-n{N}-l{L}-*.json")
    record = json.loads(truth_file.read_text())
    record["categories"] = record["categories"][1:]
    truth_file.write_text(json.dumps(record))
    return path


def _script(name: str, *args, cache: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``benchmarks/NAME`` with spdnn's cache in ``cache`` (one numba thread)."""
    env = dict(os.environ, SPDNN_CACHE_DIR=str(cache), NUMBA_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------- spdnn.bench helpers


def test_parse_cells():
    assert parse_cells("1024x120, 4096X480") == [(1024, 120), (4096, 480)]
    assert parse_cells(["64x8", "32x1,128x2"]) == [(64, 8), (32, 1), (128, 2)]
    assert parse_cells("1024x120,1024x120") == [(1024, 120)]
    for bad in ("", "1024", "1000x120", "16x4", "1024x0", "ax3"):
        with pytest.raises(OptionError, match="--cells"):
            parse_cells(bad)


def test_grid_is_the_challenge_grid():
    assert parse_cells("grid") == list(GRID) and len(GRID) == 12
    assert {n for n, _ in GRID} == {1024, 4096, 16384, 65536} and {k for _, k in GRID} == {120, 480, 1920}
    assert parse_cells("64x8,grid")[0] == (64, 8) and len(parse_cells("grid,1024x120")) == 12


def test_published_table_equals_the_documented_one():
    """PUBLISHED and the table of docs/challenge.md (Published figures) are the same numbers."""
    text = (REPO / "docs" / "challenge.md").read_text()
    section = text[text.index("## Published figures"):]
    header = next(line for line in section.splitlines() if line.startswith("| N × L"))
    systems = [c.strip() for c in header.strip("|").split("|")][1:]
    rows = re.findall(r"^\| (\d+) × (\d+) \|(.*)\|$", section, flags=re.M)
    documented = {(int(n), int(k)): dict(zip(systems, (float(v) for v in rest.split("|")))) for n, k, rest in rows}
    assert set(documented) == set(PUBLISHED) == set(GRID)
    for cell, figures in PUBLISHED.items():
        assert [(k.replace(" ", ""), v) for k, v in figures.items()] == [
            (k.replace(" ", ""), v) for k, v in documented[cell].items()], cell


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


def test_floor_counts_the_rows_computed():
    survivors = [6, 3, 2]
    plain = floor_estimate(survivors, alive_inputs=10, neurons=8, bytes_per_value=4, edges=100, bandwidth_gbs=1.0,
                           launch_latency_s=0.0, device="gpu")
    # the rows an unmerged engine computes: the samples alive before each layer
    same = floor_estimate(survivors, alive_inputs=10, neurons=8, bytes_per_value=4, edges=100, bandwidth_gbs=1.0,
                          launch_latency_s=0.0, device="gpu", rows_computed=[10, 6, 3])
    assert same == plain
    # merged: reads 10, 2, 1 and writes 2, 1, min(1, 2) -> 17 rows x 32 bytes + 200 bytes
    merged = floor_estimate(survivors, alive_inputs=10, neurons=8, bytes_per_value=4, edges=100, bandwidth_gbs=1.0,
                            launch_latency_s=0.0, device="gpu", rows_computed=[10, 2, 1])
    assert merged.bytes == 17 * 32 + 200 < plain.bytes
    with pytest.raises(OptionError, match="rows_computed"):
        floor_estimate(survivors, alive_inputs=10, neurons=8, bytes_per_value=4, edges=1, bandwidth_gbs=1.0,
                       launch_latency_s=0.0, device="gpu", rows_computed=[10, 2])


def test_bench_runs_one_per_merge_setting_for_engines_that_merge():
    assert engine_merges("cpu") and not engine_merges("reference")
    runs = bench_runs(["cpu", "reference", "cpu"], ["on", "off", True])
    assert [(r.engine, r.merge, r.label) for r in runs] == [
        ("cpu", True, "cpu merge=on"), ("cpu", False, "cpu merge=off"), ("reference", None, "reference")]
    assert runs[0].options == {"merge": True} and runs[2].options == {}
    assert [r.label for r in bench_runs(["cpu", "reference"])] == ["cpu", "reference"]
    assert [r.label for r in bench_runs(["cpu"], ["auto", "off"])] == ["cpu merge=auto", "cpu merge=off"]
    for bad in (["maybe"], []):
        with pytest.raises(OptionError, match="merge"):
            bench_runs(["cpu"], bad)


def test_time_runs_warms_up_then_times_each_call(monkeypatch):
    clock = iter(np.arange(0.0, 100.0, 0.5))             # every perf_counter call advances 0.5 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(clock)))
    calls = []
    timing = time_runs(lambda: calls.append("run") or len(calls), 3, warmup=lambda: calls.append("warm") or 0)
    assert calls == ["warm", "run", "run", "run"]
    assert timing.warmup == 0 and timing.results == [2, 3, 4]
    assert timing.seconds == [0.5, 0.5, 0.5]             # wall clock of each call, warm-up left out
    own_times = iter([9.0, 7.0, 8.0])                    # warm-up, then two timed runs
    own = time_runs(lambda: {"t": next(own_times)}, 2, seconds=lambda r: r["t"])
    assert own.seconds == [7.0, 8.0] and own.median_seconds == 7.5 and own.best_seconds == 7.0
    for bad in (0, -1, 1.5, True):
        with pytest.raises(OptionError, match="repeats"):
            time_runs(lambda: None, bad)


class _CountingReference(ReferenceEngine):
    """The reference engine, counting prepare() calls; ``batches`` fakes a batching engine."""

    def __init__(self, batches=1, **kwargs):
        super().__init__(**kwargs)
        self.prepared, self.batches = 0, batches

    def prepare(self, network):
        self.prepared += 1
        super().prepare(network)

    def infer(self, start=0, stop=None):
        categories, survivors, extra = super().infer(start, stop)
        return categories, survivors, {**extra, "batches": self.batches}


@pytest.mark.parametrize("batches", [1, 3])
def test_time_engine_prepares_once_unless_the_engine_batches(rng, batches):
    network = random_network(rng, 40, 5, bias="negative")
    features = random_features(rng, 60, 40)
    expect = ReferenceEngine(precision="fp64").run(network, features)
    engine = _CountingReference(batches=batches, precision="fp64")
    timing = time_engine(engine, network, features, 3)
    assert engine.prepared == (1 if batches == 1 else 4)
    assert len(timing.results) == 3 and timing.warmup.extra["batches"] == batches
    for result in [timing.warmup, *timing.results]:
        np.testing.assert_array_equal(result.categories, expect.categories)
        np.testing.assert_array_equal(result.survivors, expect.survivors)
        assert (result.samples, result.edges, result.precision) == (60, network.edges, "fp64")
    assert timing.seconds == [r.inference_seconds for r in timing.results]


def test_write_json_is_atomic_and_names_the_file(tmp_path):
    path = write_json({"a": np.int64(3), "b": np.array([1.5])}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"a": 3, "b": [1.5]}
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpdnnError, match="cannot write .*file/r.json"):
        write_json({}, blocker / "r.json")                 # its folder is a file
    assert sorted(tmp_path.iterdir()) == [blocker, path]   # nothing else left behind


@pytest.mark.gpu
def test_gpu_bandwidths_are_positive():
    assert bench.gpu_copy_gbs(megabytes=64, repeats=3) > 0
    gbs, how = bench.gpu_bandwidth_gbs()
    assert gbs > 0 and how


def test_run_bench_every_engine_and_merge_setting(small_cache, monkeypatch):
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(small_cache))
    monkeypatch.setitem(bench.PUBLISHED, (N, L), {"seed V100": 1.0, "seed A100": 2.0, "XY-2021 A6000": 3.0,
                                                  "SNICIT A6000": 4.5})
    events = []                       # the floor's probe runs after every timing, never before one
    for name in ("time_engine", "floor_constants"):
        real = getattr(bench, name)
        monkeypatch.setattr(bench, name, lambda *a, _real=real, _name=name, **k: events.append(_name) or _real(*a, **k))
    report = bench.run_bench([(N, L)], ["cpu", "reference"], repeats=2, samples=S, precision="fp64",
                             merge=["on", "off"], bandwidth_gbs=10.0)
    assert events == ["time_engine"] * 3 + ["floor_constants"]
    assert report["passed"] and report["merge"] == ["on", "off"]
    constants = FloorConstants.from_dict(report["floor_constants"]["cpu"])
    assert constants.bandwidth_gbs == 10.0                     # --bandwidth-gbs replaces the measured one
    network, _, _, _ = cached_challenge(N, L, samples=S)
    assert report["engines"] == ["cpu merge=on", "cpu merge=off", "reference"]
    (cell,) = report["cells"]
    assert cell["published"]["SNICIT A6000"] == 4.5 and len(cell["survivors"]) == L
    for label, entry in cell["engines"].items():
        assert entry["passed"] and len(entry["times"]) == len(entry["repeats"]) == 2
        assert [r["seconds"] for r in entry["repeats"]] == entry["times"]
        assert all(r["passed"] and r["categories_count"] == cell["categories_count"] for r in entry["repeats"])
        expect = floor_estimate(entry["survivors"], alive_inputs=cell["alive_inputs"], neurons=N, bytes_per_value=8,
                                edges=cell["edges"], bandwidth_gbs=10.0, launch_latency_s=bench.LAUNCH_LATENCY_S["cpu"],
                                device="cpu", rows_computed=entry["rows_computed"])
        assert entry["floor_v1"] == expect.to_dict()
        assert entry["floor_ratio_v1"] == pytest.approx(entry["median_seconds"] / expect.seconds)
        honest = floor_of_run(network, survivors=entry["survivors"], alive_inputs=cell["alive_inputs"],
                              extra=entry["extra_info"], bytes_per_value=8, precision="fp64", constants=constants)
        assert entry["floor"] == {"device": "cpu", **honest.to_dict()}
        assert entry["floor_ratio"] == pytest.approx(entry["median_seconds"] / honest.seconds)
        assert entry["floor_check"] == floor_check(entry["median_seconds"], honest.seconds)
    on, off = cell["engines"]["cpu merge=on"], cell["engines"]["cpu merge=off"]
    assert (on["merge"], off["merge"], cell["engines"]["reference"]["merge"]) == (True, False, None)
    assert off["rows_computed"][1:] == list(off["survivors"][:-1])        # unmerged: every alive sample
    assert all(c <= a for c, a in zip(on["rows_computed"][1:], on["survivors"][:-1]))
    assert cell["engines"]["reference"]["rows_computed"] is None
    text = format_bench(report)
    assert "1/2/3/4.5" in text and "cpu merge=off" in text and text.count("PASS") == 3
    assert "xfloor(v1)" in text and "model is wrong" not in text
    # a run faster than its floor is flagged, never clipped
    entry = cell["engines"]["reference"]
    entry["floor_ratio"], entry["floor_check"] = 0.5, floor_check(0.5, 1.0)
    flagged = format_bench(report)
    assert "0.5!" in flagged and "reference: measured 0.5 s is below the floor" in flagged


def test_bench_command_merge_grid_and_exit_status(small_cache, wrong_truth_cache, tmp_path):
    from click.testing import CliRunner

    from spdnn.cli import cli

    def spdnn_bench(cache, *args):
        return CliRunner().invoke(cli, ["bench", "--cells", f"{N}x{L}", "--samples", str(S), "--repeats", "1",
                                        "--bandwidth-gbs", "10", "--no-progress", *map(str, args)],
                                  env={"SPDNN_CACHE_DIR": str(cache)})

    out = tmp_path / "bench.json"
    result = spdnn_bench(small_cache, "--engines", "cpu,reference", "--merge", "on,off", "--json-out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["engines"] == ["cpu merge=on", "cpu merge=off", "reference"] and doc["passed"] is True
    assert "cpu merge=on" in result.output
    bad = spdnn_bench(wrong_truth_cache, "--engines", "reference")
    assert bad.exit_code == 1 and "FAIL" in bad.output
    usage = spdnn_bench(small_cache, "--merge", "maybe")
    assert usage.exit_code == 2 and "--merge" in usage.output
    grid = CliRunner().invoke(cli, ["bench", "--cells", "grid,64x0"])
    assert grid.exit_code == 2 and "64x0" in grid.output       # 'grid' itself parsed, the bad item named


@pytest.mark.parametrize("cell", ["challenge", "general"])
def test_bench_command_reads_floor_constants(small_cache, tmp_path, monkeypatch, cell):
    """--floor-constants FILE: the constants used (no probe) on challenge and general cells alike."""
    from click.testing import CliRunner

    from spdnn import bench_general
    from spdnn.cli import cli

    given = FloorConstants(device="cpu", name="made-up host", bandwidth_gbs=3.5, cache_bytes=2**20,
                           cache_bandwidth_gbs=20.0, add_per_s={"fp32": 1e10}, launch_s=4e-6)
    path = write_constants(given, tmp_path / "constants.json")
    monkeypatch.setitem(bench_general.WIDE, "wide4096", (128, 3, 8))
    cells = f"{N}x{L}" if cell == "challenge" else "wide4096"

    def spdnn_bench(*args):
        return CliRunner().invoke(cli, ["bench", "--cells", cells, "--samples", str(S), "--repeats", "1",
                                        "--engines", "cpu", "--no-progress", *map(str, args)],
                                  env={"SPDNN_CACHE_DIR": str(small_cache)})

    out = tmp_path / "bench.json"
    result = spdnn_bench("--floor-constants", path, "--json-out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert FloorConstants.from_dict(doc["floor_constants"]["cpu"]) == given
    entry = doc["cells"][0]["engines"]["cpu"]
    assert entry["floor"]["launch_s"] == pytest.approx(4e-6)   # the file's launch, once (one batch)
    assert entry["floor_ratio"] == pytest.approx(entry["median_seconds"] / entry["floor"]["seconds"])
    if cell == "general":
        torch, why = bench_general._torch_on_gpu()
        if torch is None:    # no GPU: the PyTorch peers are skipped and said to be, the engines still run
            assert "torch-fp32" in doc["peers_skipped"] and why in doc["peers_skipped"]
            assert set(doc["cells"][0]["engines"]) == {"cpu"}
            assert doc["peers_skipped"] in bench_general.format_general(doc)
        else:
            assert doc["peers_skipped"] is None and "torch-csr" in doc["cells"][0]["engines"]
    timed = []                        # a bad file is refused before any engine is timed
    for module in (bench, bench_general):
        monkeypatch.setattr(module, "time_engine", lambda *a, **k: timed.append(1) or pytest.fail("timed"))
    missing = spdnn_bench("--floor-constants", tmp_path / "none.json")
    assert missing.exit_code == 2 and "none.json" in missing.output and not timed
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    broken = spdnn_bench("--floor-constants", bad)
    assert broken.exit_code == 2 and "bad.json, line 1" in broken.output and "Traceback" not in broken.output


# ----------------------------------------------------------------------- benchmarks/*.py


def test_cpu_peers_passes_and_fails_on_a_wrong_truth(small_cache, wrong_truth_cache, tmp_path):
    """Every engine equals the fp64 reference: exit 0; the cached truth disagrees: exit 1."""
    pytest.importorskip("graphblas")
    out = tmp_path / "peers.json"
    args = ("--neurons", N, "--layers", L, "--samples", S, "--repeats", 1)
    proc = _script("cpu_peers.py", *args, "--json-out", out, cache=small_cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    names = {(e["engine"], e["precision"]) for e in doc["engines"]}
    assert {("cpu", "fp32"), ("scipy", "fp64"), ("scipy", "fp32"), ("graphblas", "fp32")} <= names
    assert all(e["equals_reference"] for e in doc["engines"]) and doc["reference_equals_truth"]
    assert "| graphblas | fp32 |" in proc.stdout
    bad = _script("cpu_peers.py", *args, cache=wrong_truth_cache)
    assert bad.returncode == 1, bad.stdout + bad.stderr


def test_mpi_profile_passes_and_fails_on_a_wrong_truth(small_cache, wrong_truth_cache, tmp_path):
    out = tmp_path / "profile.json"
    proc = _script("mpi_profile.py", f"{N}x{L}", "--ranks", "2,4", "--samples", S, "--out", out, cache=small_cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prof = json.loads(out.read_text())
    assert prof["passed"] and len(prof["survivors"]) == L
    assert {(r["ranks"], r["layout"]) for r in prof["splits"]} == {(2, "block"), (2, "shuffled"), (4, "block"),
                                                                   (4, "shuffled")}
    assert all(r["work_weighted_slowdown"] >= 1 and len(r["per_layer_imbalance"]) == L for r in prof["splits"])
    bad = _script("mpi_profile.py", f"{N}x{L}", "--ranks", "2", "--samples", S, cache=wrong_truth_cache)
    assert bad.returncode == 1 and "NOT equal" in bad.stdout, bad.stdout + bad.stderr
    usage = _script("mpi_profile.py", "grid", cache=small_cache)
    assert usage.returncode == 2 and usage.stderr.startswith("mpi_profile: error:")


def test_cuda_bench_usage_errors_need_no_gpu(tmp_path):
    for args in (["--variants", "bogus"], ["--cells", "100x5"], ["--ref-samples", "1024:x"]):
        proc = _script("cuda_bench.py", "--out", tmp_path, *args, cache=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith("cuda_bench: error:"), proc.stderr


def _sass(body: dict[str, list[str]]) -> str:
    """A cuobjdump -sass listing of mangled functions (name -> instructions)."""
    lines = []
    for name, instructions in body.items():
        lines.append(f"\t\tFunction : {name}")
        lines += [f"        /*{16 * i:04x}*/                   {ins} ;                 /* 0x000 */"
                  for i, ins in enumerate(instructions)]
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="c++filt (binutils) is not on PATH")
def test_kernel_sass_compare_pairs_instances_and_grades_differences(tmp_path):
    """benchmarks/kernel_sass.py compare: instances paired by demangled name even when the
    parameter list changed; identical, parameter-offset-only and real differences told apart."""
    base = {"_Z11spdnn_layerIfEvPKf": ["LDC R1, c[0x0][0x28]", "LDG.E.CONSTANT R3, desc[UR4][R2.64]", "EXIT"],
            "_Z10spdnn_copyv": ["EXIT"]}
    files = ("stationary.cu", "layer.cu", "merge.cu", "general.cu")
    old, same, moved, worse = (tmp_path / d for d in ("old", "same", "moved", "worse"))
    variants = {
        same: base,
        moved: {"_Z11spdnn_layerIfEv4Args": ["LDC R1, c[0x0][0x30]", "LDG.E.CONSTANT R3, desc[UR4][R2.64]", "EXIT"],
                "_Z10spdnn_copyv": ["EXIT"]},          # a struct parameter: other offsets, same code
        worse: {"_Z11spdnn_layerIfEvPKf": ["LDC R1, c[0x0][0x28]", "LDG.E R3, desc[UR4][R2.64]", "EXIT"],
                "_Z10spdnn_copyv": ["EXIT"]},
    }
    for folder, body in [(old, base), *variants.items()]:
        folder.mkdir()
        for name in files:
            (folder / (name + ".sass")).write_text(_sass(body))
    runs = {folder.name: _script("kernel_sass.py", "compare", old, folder, cache=tmp_path) for folder in variants}
    assert runs["same"].returncode == 0 and "{'same': 8}" in runs["same"].stdout
    assert runs["moved"].returncode == 0 and "param-offsets" in runs["moved"].stdout
    assert runs["worse"].returncode == 1 and "DIFF" in runs["worse"].stdout


def test_devdata_seeds_the_cache_with_carried_features(tmp_path, rng):
    """seed: carried bit-packed inputs become the cached full set; make: written back identically."""
    features = random_features(rng, 60000, 32, density=0.02)
    carried = tmp_path / "carried"
    carried.mkdir()
    write_packed_features(carried / "features-32.npz", features)
    cache = tmp_path / "cache"
    proc = _script("devdata.py", "seed", carried, cache=cache)
    assert proc.returncode == 0 and "features-32.npz" in proc.stdout, proc.stdout + proc.stderr
    again = tmp_path / "again"
    proc = _script("devdata.py", "make", "--neurons", "32", "--out", again, cache=cache)   # from the cache
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert same_csr(read_packed_features(again / "features-32.npz"), features)   # not MNIST: the cache's
    for args in (["seed", tmp_path / "empty"], ["make", "--neurons", "100", "--out", again]):
        bad = _script("devdata.py", *args, cache=cache)
        assert bad.returncode == 2 and bad.stderr.startswith("devdata: error:"), bad.stderr


# ------------------------------------------------------------------------ MPI (mpi marker)


@pytest.mark.mpi
def test_mpi_bench_one_and_two_ranks_then_refit(small_cache, tmp_path):
    engine = "cpu" if engine_availability("cpu")[0] else "reference"
    out = tmp_path / "bench.json"
    proc = _script("mpi_bench.py", "--engine", engine, "--cells", f"{N}x{L}", "--samples", S, "--ranks", "1,2",
                   "--repeat", 1, "--workdir", tmp_path / "work", "--out", out, cache=small_cache,
                   timeout=MPI_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    (cell,) = report["cells"]
    assert cell["passed"] and {(r["ranks"], r["mode"]) for r in cell["rows"]} == {
        (1, "off"), (1, "on"), (2, "block"), (2, "off"), (2, "on"), (2, "force")}
    assert all(r["same_as_1_rank"] and r["truth"] for r in cell["rows"])
    assert "predictions" in cell["model"] and "off" in cell["model"]["check_P2"]
    refit = _script("mpi_bench.py", "fit", out, cache=small_cache)
    assert refit.returncode == 0 and "model: T(P)" in refit.stdout, refit.stdout + refit.stderr


# ----------------------------------------------------------------------- bench --data


def test_bench_command_on_official_files(official_dir, tmp_path):
    """``spdnn bench --data DIR``: the official subset timed with repeats, floor and checks;
    a folder without a truth file, a problem not in the folder (exit 2) and a wrong truth
    (exit 1) are told."""
    from click.testing import CliRunner

    from spdnn.cli import cli

    def spdnn_bench(data, *args):
        return CliRunner().invoke(cli, ["bench", "--data", str(data), "--engines", "cpu", "--repeats", "2",
                                        "--bandwidth-gbs", "10", "--no-progress", *map(str, args)],
                                  env={"SPDNN_CACHE_DIR": str(tmp_path / "cache")})

    out = tmp_path / "bench.json"
    result = spdnn_bench(official_dir, "--merge", "on,off", "--json-out", out)
    assert result.exit_code == 0, result.output
    assert "1024x120 official" in result.output and result.output.count("PASS") == 2
    doc = json.loads(out.read_text())
    (cell,) = doc["cells"]
    assert cell["source"]["kind"] == "official" and cell["source"]["features"].endswith("first1200.mtx.gz")
    assert (cell["neurons"], cell["layers"], cell["samples"], cell["categories_count"]) == (1024, 120, 1200, 19)
    for entry in cell["engines"].values():
        assert entry["passed"] and len(entry["times"]) == 2 and entry["floor"]["seconds"] > 0
        assert [r["passed"] for r in entry["repeats"]] == [True, True]
    assert cell["survivors"][-1] == 19

    named = spdnn_bench(official_dir, "--cells", "1024x120", "--samples", "600")
    assert named.exit_code == 0 and "600" in named.output
    missing = spdnn_bench(official_dir, "--cells", "4096x120")
    assert missing.exit_code == 2 and "4096" in missing.output

    no_truth = tmp_path / "no-truth"
    no_truth.mkdir()
    for name in ("neuron1024.tar.gz", "sparse-images-1024-first1200.mtx.gz"):
        (no_truth / name).symlink_to(official_dir / name)
    told = spdnn_bench(no_truth)
    assert told.exit_code == 2 and "no truth file" in told.output

    wrong = tmp_path / "wrong-truth"
    wrong.mkdir()
    for name in ("neuron1024.tar.gz", "sparse-images-1024-first1200.mtx.gz"):
        (wrong / name).symlink_to(official_dir / name)
    (wrong / "neuron1024-l120-categories.tsv").write_text("1\n2\n3\n")
    failed = spdnn_bench(wrong)
    assert failed.exit_code == 1 and "FAIL" in failed.output


def test_run_bench_checkpoints_after_every_cell(small_cache, monkeypatch):
    """The report is handed to ``checkpoint`` after each cell (the CLI writes --json-out
    there, so a bench cut short keeps the cells it finished) and once more at the end."""
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(small_cache))
    seen = []
    report = bench.run_bench([(N, L), (N, L)], ["cpu"], repeats=1, samples=S, precision="fp64",
                             bandwidth_gbs=10.0, checkpoint=lambda r: seen.append(
                                 (len(r["cells"]), r["passed"], bool(r["floor_constants"]))))
    assert seen == [(1, True, False), (2, True, False), (2, True, True)]
    assert report["passed"]
