"""The ``spdnn`` command line end to end, on a small generated network.

Every command runs through click's CliRunner with ``SPDNN_CACHE_DIR`` in a temporary
directory; the data (N=64, L=12, the first 200 samples) are generated once per module.
Also: the formatting helpers of ``spdnn.report``.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import http.server
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from spdnn.cli import cli

from factories import challenge_cache

N, L, S = 64, 12, 200
SMALL = ["--neurons", str(N), "--layers", str(L), "--samples", str(S)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache dir, filled once with the small challenge; returns (dir, truth)."""
    path = tmp_path_factory.mktemp("spdnn-cache")
    truth = challenge_cache(path, N, L, S)
    assert len(truth) >= 1, "the small challenge must have at least one category"
    return path, truth


def _runner() -> CliRunner:
    """A CliRunner keeping stderr apart from stdout (click 8.1 needs mix_stderr=False)."""
    kwargs = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}
    return CliRunner(**kwargs)


@pytest.fixture
def spdnn_cli(cache, monkeypatch):
    """invoke(*args) -> click Result with separate stdout/stderr, cache dir set."""
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(cache[0]))
    runner = _runner()

    def invoke(*args):
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a bug, not a handled error: show its traceback
        return result

    return invoke


def _no_traceback(result):
    assert "Traceback" not in result.stdout + result.stderr


def _one_error_line(result, prefix="spdnn: error: "):
    """stderr is exactly one line starting with ``prefix``, and no traceback; returns the line."""
    _no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    return lines[0]


def _listed(text, label):
    """The ids printed on the line starting with ``label`` ('missing' or 'extra')."""
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(label))
    return [int(v) for v in line.split("):", 1)[1].replace(",", " ").split()]


def _truth_file(path, ids):
    path.write_text("".join(f"{int(i)}\n" for i in ids))
    return path


# ------------------------------------------------------------------------- run


def test_run_text_pass(spdnn_cli, cache):
    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--no-progress")
    assert result.exit_code == 0, result.stdout + result.stderr
    out = result.stdout
    assert "PASS" in out and "FAIL" not in out
    assert f"{len(cache[1])} found" in out
    for word in ("data:", "engine:", "reference", "inference:", "preprocess:", "read:", "TeraEdges/s"):
        assert word in out


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_run_json_pass(spdnn_cli, cache, precision):
    result = spdnn_cli("run", *SMALL, "--engine", "auto", "--precision", precision, "--json", "--no-progress")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)  # exactly one JSON object on stdout
    for key in ("engine", "neurons", "layers", "samples", "categories_count", "passed", "inference_seconds",
                "preprocess_seconds", "teraedges_per_second", "read_seconds", "precision", "survivors"):
        assert key in doc, key
    assert doc["passed"] is True
    assert (doc["neurons"], doc["layers"], doc["samples"], doc["precision"]) == (N, L, S, precision)
    assert doc["categories"] == cache[1].tolist()
    assert doc["categories_count"] == len(cache[1])
    assert len(doc["survivors"]) == L and doc["survivors"][-1] == len(cache[1])
    edges = 32 * N * L
    assert doc["teraedges_per_second"] == pytest.approx(S * edges / doc["inference_seconds"] / 1e12)


def test_run_wrong_truth_fails(spdnn_cli, cache, tmp_path):
    truth = cache[1]
    dropped = int(truth[0])
    added = next(i for i in range(1, S + 1) if i not in set(truth.tolist()))
    wrong = _truth_file(tmp_path / "wrong.tsv", sorted([*truth[1:].tolist(), added]))
    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--truth", wrong, "--no-explain", "--no-progress")
    assert result.exit_code == 1
    assert "FAIL" in result.stdout
    assert _listed(result.stdout, "missing") == [added] and _listed(result.stdout, "extra") == [dropped]

    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--truth", wrong, "--json", "--no-progress")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["passed"] is False
    assert doc["missing"] == [added] and doc["extra"] == [dropped]
    assert doc["explanation"]  # the verification's report of the differing samples


def test_run_wrong_truth_explained_in_text(spdnn_cli, cache, tmp_path):
    """A truth file of unknown origin that every computation disagrees with: the verification
    says it cannot tell a wrong truth from other data, and never blames rounding."""
    truth = cache[1]
    wrong = _truth_file(tmp_path / "wrong.tsv", truth[1:])
    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--precision", "fp64", "--truth", wrong,
                       "--no-progress")
    assert result.exit_code == 1
    assert "verification:" in result.stdout
    report = result.stdout.split("verification:")[1]
    assert str(int(truth[0])) in report
    assert "rounding effects" not in report and "the truth is wrong" not in report
    assert "or the truth file is wrong; nothing known here tells which" in report


def test_run_saves_categories_and_verify(spdnn_cli, cache, tmp_path):
    out = tmp_path / "found.tsv"
    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--save-categories", out, "--no-progress")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert [int(v) for v in out.read_text().split()] == cache[1].tolist()

    truth = _truth_file(tmp_path / "truth.tsv", cache[1])
    result = spdnn_cli("verify", out, truth)
    assert result.exit_code == 0 and "PASS" in result.stdout

    other = _truth_file(tmp_path / "other.tsv", [*cache[1][1:].tolist(), S + 7])
    result = spdnn_cli("verify", out, other)
    assert result.exit_code == 1
    assert "FAIL" in result.stdout
    assert _listed(result.stdout, "missing") == [S + 7] and _listed(result.stdout, "extra") == [int(cache[1][0])]
    result = spdnn_cli("verify", out, other, "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 1 and doc["passed"] is False
    assert doc["missing"] == [S + 7] and doc["extra"] == [int(cache[1][0])]


@pytest.fixture(scope="module")
def generated(cache, tmp_path_factory):
    """``spdnn generate`` once per module (N=64, 4 layers, 200 samples): (output dir, click result)."""
    out = tmp_path_factory.mktemp("generated") / "gen"
    mp = pytest.MonkeyPatch()
    mp.setenv("SPDNN_CACHE_DIR", str(cache[0]))
    result = _runner().invoke(cli, ["generate", "--neurons", str(N), "--layers", "4", "--samples", str(S),
                                    "--out", str(out), "--no-progress"])
    mp.undo()
    return out, result


def test_generate_then_run_data(spdnn_cli, generated):
    out, result = generated
    assert result.exit_code == 0, result.stdout + result.stderr
    assert str(out) in result.stdout
    assert sorted(p.name for p in (out / f"neuron{N}").iterdir()) == [f"n{N}-l{k}.tsv" for k in range(1, 5)]
    truth_file = out / f"neuron{N}-l4-categories.tsv"
    assert truth_file.exists() and (out / f"sparse-images-{N}.tsv.gz").exists()

    result = spdnn_cli("run", "--data", out, "--engine", "reference", "--json", "--no-progress")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["passed"] is True and (doc["neurons"], doc["layers"], doc["samples"]) == (N, 4, S)
    assert doc["categories"] == [int(v) for v in truth_file.read_text().split()]

    # The same data generated in memory (and cached) give the same categories.
    result = spdnn_cli("run", "--neurons", N, "--layers", 4, "--samples", S, "--engine", "reference", "--json",
                       "--no-progress")
    assert json.loads(result.stdout)["categories"] == doc["categories"]


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server (127.0.0.1, free port) serving ``tmp_path/www``: (root dir, base url)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


def test_download_from_local_server(spdnn_cli, http_root, tmp_path):
    root, url = http_root
    (root / "dnn").mkdir()
    (root / "dnn" / "neuron1024-l120-categories.tsv").write_text("3\n17\n")
    out = tmp_path / "dl"
    result = spdnn_cli("download", "--neurons", 1024, "--layers", 120, "--out", out, "--what", "truth",
                       "--base-url", url, "--no-progress")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (out / "neuron1024-l120-categories.tsv").read_text() == "3\n17\n"
    assert "neuron1024-l120-categories.tsv" in result.stdout

    # Not on the server: one clean error line naming the address, exit 2, no partial file.
    result = spdnn_cli("download", "--neurons", 1024, "--layers", 120, "--out", out, "--what", "features",
                       "--base-url", url, "--no-progress")
    assert result.exit_code == 2
    assert result.stderr.startswith("spdnn: error:") and "sparse-images-1024.tsv.gz" in result.stderr
    assert not (out / "sparse-images-1024.tsv.gz").exists()
    _no_traceback(result)


def test_run_official_subset(spdnn_cli, official_dir):
    """The official N=1024 network on the official first 1,200 images: exactly the official truth."""
    from spdnn.formats import read_categories

    truth = read_categories(official_dir / "neuron1024-l120-categories-first1200.mtx")
    result = spdnn_cli("run", "--data", official_dir, "--json", "--no-progress")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["passed"] is True and doc["categories"] == truth.tolist()
    assert (doc["neurons"], doc["layers"], doc["samples"]) == (1024, 120, 1200)


def test_info(spdnn_cli):
    result = spdnn_cli("info")
    assert result.exit_code == 0
    assert "reference" in result.stdout and "cache dir" in result.stdout
    result = spdnn_cli("info", "--json")
    doc = json.loads(result.stdout)
    assert doc["engines"]["reference"]["available"] is True
    assert set(doc["engines"]) >= {"reference", "cpu", "cuda", "cusparse"}
    assert doc["auto_engine"] in doc["engines"] and doc["engines"][doc["auto_engine"]]["available"]
    for key in ("version", "devices", "mpi", "numba", "cache_dir"):
        assert key in doc


def test_version_via_python_m():
    proc = subprocess.run([sys.executable, "-m", "spdnn", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "spdnn" in proc.stdout


@pytest.mark.mpi
def test_run_under_mpiexec(cache):
    """``mpiexec -n 2 spdnn run``: samples split over 2 ranks, one JSON object (rank 0), same categories."""
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    env = {**os.environ, "SPDNN_CACHE_DIR": str(cache[0]), "NUMBA_NUM_THREADS": "1"}
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "spdnn", "run", *SMALL, "--engine", "reference", "--json",
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ranks"] == 2 and doc["passed"] is True
    assert doc["categories"] == cache[1].tolist()


# ----------------------------------------------------------------------- bench


def test_bench_json_and_plot(spdnn_cli, cache, tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = spdnn_cli("bench", "--cells", f"{N}x{L}", "--engines", "reference", "--repeats", 2, "--samples", S,
                       "--json-out", out, "--plot", png, "--bandwidth-gbs", 10, "--no-progress")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert f"{N}x{L}" in result.stdout and "PASS" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["passed"] is True and doc["engines"] == ["reference"] and doc["repeats"] == 2
    (cell,) = doc["cells"]
    assert (cell["neurons"], cell["layers"], cell["samples"]) == (N, L, S)
    assert cell["categories_count"] == len(cache[1]) and len(cell["survivors"]) == L
    e = cell["engines"]["reference"]
    assert len(e["times"]) == 2 and e["median_seconds"] == pytest.approx(float(np.median(e["times"])))
    assert e["teraedges_per_second"] == pytest.approx(S * 32 * N * L / e["median_seconds"] / 1e12)
    assert e["floor_v1"]["bandwidth_gbs"] == 10 and e["floor"]["seconds"] > 0
    assert doc["floor_constants"]["cpu"]["bandwidth_gbs"] == 10            # both floors take --bandwidth-gbs
    assert e["floor_ratio"] == pytest.approx(e["median_seconds"] / e["floor"]["seconds"])
    assert e["floor_ratio_v1"] == pytest.approx(e["median_seconds"] / e["floor_v1"]["seconds"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_plot_without_matplotlib(spdnn_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = spdnn_cli("bench", "--cells", f"{N}x{L}", "--engines", "reference", "--samples", S,
                       "--plot", tmp_path / "x.png", "--no-progress")
    assert result.exit_code == 2
    assert "spdnn: error:" in result.stderr and "matplotlib" in result.stderr
    _no_traceback(result)
    assert not (tmp_path / "x.png").exists()


def test_bench_json_stdout(spdnn_cli, cache):
    result = spdnn_cli("bench", "--cells", f"{N}x{L}", "--engines", "reference", "--repeats", 1, "--samples", S,
                       "--json", "--no-progress")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["cells"][0]["engines"]["reference"]["passed"] is True
    bw = doc["machine"]["bandwidth"]["cpu"]
    assert bw["gbs"] > 0 and "measured" in bw["how"]


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("args, names", [
    (["run", "--data", "/no/such/dir"], ["--data", "/no/such/dir"]),
    (["run", "--engine", "bogus"], ["--engine", "bogus"]),
    (["run", "--precision", "fp16"], ["--precision", "fp16"]),
    (["run", "--samples", "0"], ["--samples"]),
    (["run", "--truth", "/no/such/truth.tsv"], ["--truth"]),
    (["verify", "/no/such/a.tsv", "/no/such/b.tsv"], ["CATEGORIES"]),
    (["bench", "--cells", "100x5"], ["--cells", "100x5"]),
    (["bench", "--cells", "1024by120"], ["--cells", "1024by120"]),
    (["bench", "--engines", "cpu,nope"], ["--engines", "nope"]),
    (["bench", "--bandwidth-gbs", "-3"], ["--bandwidth-gbs"]),
    (["bench", "--json-out", "/dev/null/x.json"], ["--json-out", "/dev/null is not a directory"]),
    (["bench", "--plot", "/"], ["--plot", "is a directory"]),
    (["download", "--neurons", "1024", "--layers", "120", "--out", "x", "--what", "weights"], ["--what", "weights"]),
    (["run", "--bogus"], ["--bogus"]),
    (["run", "--merge", "maybe"], ["--merge", "maybe"]),
    (["generate", "--layers", "4", "--out", "x"], ["--neurons"]),
    (["frobnicate"], ["frobnicate"]),
])
def test_usage_errors_exit_2(spdnn_cli, args, names):
    """click's usage errors too: ONE line ``spdnn: error: ...`` (not click's usage block), exit 2."""
    result = spdnn_cli(*args)
    assert result.exit_code == 2, result.stdout + result.stderr
    _one_error_line(result)
    assert "Usage:" not in result.stderr and not result.stderr.startswith("Error:")
    for name in names:
        assert name in result.stderr, (name, result.stderr)


def test_run_unavailable_engine_exit_2(spdnn_cli):
    from spdnn.engines import available_engines

    missing = [name for name, (ok, _) in available_engines().items() if not ok]
    if not missing:
        pytest.skip("every engine is available here")
    result = spdnn_cli("run", *SMALL, "--engine", missing[0], "--no-progress")
    assert result.exit_code == 2
    assert result.stderr.startswith("spdnn: error:") and missing[0] in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    _no_traceback(result)


def test_run_data_without_features_exit_2(spdnn_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = spdnn_cli("run", "--data", tmp_path / "empty", "--no-progress")
    assert result.exit_code == 2
    assert result.stderr.startswith("spdnn: error:") and len(result.stderr.strip().splitlines()) == 1
    assert "empty" in result.stderr
    _no_traceback(result)


@pytest.fixture
def generated_dir(generated, tmp_path):
    """A private copy of the generated data set, to damage."""
    assert generated[1].exit_code == 0, generated[1].stdout + generated[1].stderr
    return shutil.copytree(generated[0], tmp_path / "gen")


def test_run_data_without_truth(spdnn_cli, generated_dir):
    """No truth file: no PASS/FAIL, exit 0; a non-official N then needs --bias (exit 2 without it)."""
    truth = (generated_dir / f"neuron{N}-l4-categories.tsv").read_text().split()
    for name in (f"neuron{N}-l4-categories.tsv", f"neuron{N}-l4-categories.json"):
        (generated_dir / name).unlink()
    result = spdnn_cli("run", "--data", generated_dir, "--engine", "reference", "--no-progress")
    assert result.exit_code == 2 and "--bias" in result.stderr
    _no_traceback(result)
    result = spdnn_cli("run", "--data", generated_dir, "--engine", "reference", "--bias", -0.2, "--json",
                       "--no-progress")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["passed"] is None and doc["categories"] == [int(v) for v in truth]


def test_run_corrupt_layer_exit_2(spdnn_cli, generated_dir):
    layer = generated_dir / f"neuron{N}" / f"n{N}-l3.tsv"
    lines = layer.read_text().splitlines()
    lines[4] = "5\tseven\t6.250000e-02"
    layer.write_text("\n".join(lines) + "\n")
    result = spdnn_cli("run", "--data", generated_dir, "--engine", "reference", "--no-progress")
    assert result.exit_code == 2
    assert result.stderr.startswith("spdnn: error:") and f"n{N}-l3.tsv" in result.stderr and ":5" in result.stderr
    _no_traceback(result)


def test_run_missing_layer_exit_2(spdnn_cli, generated_dir):
    (generated_dir / f"neuron{N}" / f"n{N}-l2.tsv").unlink()
    result = spdnn_cli("run", "--data", generated_dir, "--engine", "reference", "--no-progress")
    assert result.exit_code == 2
    assert result.stderr.startswith("spdnn: error:") and f"n{N}-l2.tsv" in result.stderr
    _no_traceback(result)


def test_verify_corrupt_file_exit_2(spdnn_cli, tmp_path):
    good = _truth_file(tmp_path / "good.tsv", [1, 5, 9])
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\n5\nnine\n")
    result = spdnn_cli("verify", bad, good)
    assert result.exit_code == 2
    assert result.stderr.startswith("spdnn: error:") and "bad.tsv" in result.stderr
    _no_traceback(result)


def test_console_script_error_line(tmp_path):
    """The installed entry point prints one clean line and exits 2 (no traceback)."""
    exe = shutil.which("spdnn")
    if exe is None:
        pytest.skip("the spdnn console script is not on PATH (package not installed)")
    bad = tmp_path / "bad.tsv"
    bad.write_text("x\n")
    proc = subprocess.run([exe, "verify", str(bad), str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("spdnn: error:") and "bad.tsv" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------- the error convention (README)


class _FillingFile:
    """A writable file object that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, fh, room: int):
        self._fh, self._room = fh, room

    def write(self, data):
        if len(data) > self._room:
            self._fh.write(data[:self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _full_disk_after(monkeypatch, module, *, files: int = 0, room: int = 2):
    """Make ``module.atomic_open`` (the real atomic writer) hit a full disk in the file
    opened after ``files`` good ones, after ``room`` bytes. Returns the paths opened."""
    from spdnn._atomic import atomic_open

    opened = []
    lock = threading.Lock()          # writers may open files from several threads at once

    @contextlib.contextmanager
    def filling(path, *args, **kwargs):
        with lock:
            opened.append(Path(path))
            good = len(opened) <= files   # this file's place in the order, not a later one's
        with atomic_open(path, *args, **kwargs) as fh:
            yield fh if good else _FillingFile(fh, room)

    monkeypatch.setattr(module, "atomic_open", filling)
    return opened


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def test_save_categories_disk_full_prints_result_first(spdnn_cli, cache, tmp_path, monkeypatch):
    """Issue 12, items 1 and 8: the result is printed, then one line naming the user's path
    and the space, exit 2; no file and no temporary left."""
    import spdnn.formats.tsv

    _full_disk_after(monkeypatch, spdnn.formats.tsv)
    out = tmp_path / "found.tsv"
    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--save-categories", out, "--no-progress")
    assert result.exit_code == 2
    assert "PASS" in result.stdout and "inference:" in result.stdout and "written:" not in result.stdout
    line = _one_error_line(result)
    assert line.startswith(f"spdnn: error: --save-categories {out}: no space left on device (needs more than the "
                           "2 bytes written before it filled up, ")
    assert line.endswith("free); nothing was left behind (the result above was not saved)")
    assert not out.exists() and _temporaries(tmp_path) == []


def test_save_categories_disk_full_json(spdnn_cli, cache, tmp_path, monkeypatch):
    import spdnn.formats.tsv

    _full_disk_after(monkeypatch, spdnn.formats.tsv)
    out = tmp_path / "found.tsv"
    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--save-categories", out, "--json",
                       "--no-progress")
    assert result.exit_code == 2
    doc = json.loads(result.stdout)  # the whole result, as without the option
    assert doc["passed"] is True and doc["categories"] == cache[1].tolist()
    assert doc["categories_file"] == str(out)  # asked for: the exit status and stderr say it failed
    assert "no space left on device" in _one_error_line(result) and str(out) in result.stderr
    assert not out.exists()


def test_save_categories_unwritable_path_fails_before_the_run(spdnn_cli, tmp_path):
    """A path that cannot be created is refused at once (exit 2, one line naming it), before any work."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "found.tsv"
    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--save-categories", out, "--no-progress")
    assert result.exit_code == 2 and result.stdout == ""
    line = _one_error_line(result)
    assert "--save-categories" in line and str(out) in line and "is not a directory" in line


def test_save_categories_write_error_names_the_users_path(spdnn_cli, tmp_path, monkeypatch):
    """The atomic writer fails on its temporary file: the message names the path the user gave."""
    import tempfile

    def refuse(*args, dir=None, prefix="", suffix="", **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, prefix + "x1y2z3" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "found.tsv"
    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--save-categories", out, "--no-progress")
    assert result.exit_code == 2 and "PASS" in result.stdout
    line = _one_error_line(result)
    assert line == (f"spdnn: error: --save-categories {out}: Permission denied "
                    "(the result above was not saved)")


def test_generate_disk_full_exit_2(spdnn_cli, cache, tmp_path, monkeypatch):
    """Issue 12, item 1: ``spdnn generate`` on a full disk (the third file it opens): one line
    naming that file where it was to go and the space, exit 2, nothing left in OUT (the
    files are written, in parallel, into a staging folder inside OUT, then renamed)."""
    import spdnn.formats.tsv

    opened = _full_disk_after(monkeypatch, spdnn.formats.tsv, files=2)
    out = tmp_path / "gen"
    result = spdnn_cli("generate", "--neurons", N, "--layers", 4, "--samples", S, "--out", out, "--no-progress")
    assert result.exit_code == 2, result.stdout + result.stderr
    staging = next(p for p in opened[2].parents if p.name.startswith(".spdnn-generate-"))
    line = _one_error_line(result)   # about one of the files that found the disk full (parallel writers)
    assert any(line.startswith(f"spdnn: error: {out / failed.relative_to(staging)}: no space left on device (needs ")
               for failed in opened[2:])
    assert not staging.exists() and _temporaries(tmp_path) == []
    assert not out.exists()  # the command made it: a failure removes it (issue 19, item 13)


def test_run_disk_full_in_the_data_cache(tmp_path, monkeypatch):
    """Issue 12, item 1: the generated-data cache cannot be written (full disk): never the
    code of a FAIL, never a traceback; no temporary file left in the cache."""
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(cache_dir))

    def full(file, *args, **kwargs):
        file.write(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    result = _runner().invoke(cli, ["run", *map(str, SMALL), "--engine", "reference", "--no-progress"])
    assert result.exit_code in (0, 2), result.stdout + result.stderr
    _no_traceback(result)
    if result.exit_code == 2:  # the cache is required: one line naming the cache file
        line = _one_error_line(result)
        assert "no space left on device" in line and str(cache_dir) in line
    else:  # the cache is an optimisation: a warning naming it, and the result
        assert "PASS" in result.stdout and str(cache_dir) in result.stderr
    assert _temporaries(cache_dir) == []


def test_internal_error_exit_3(spdnn_cli, monkeypatch):
    """An unexpected exception: exit 3, one line with the type and a hint to report it."""
    import spdnn.engines

    def broken(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(spdnn.engines, "get_engine", broken)
    monkeypatch.delenv("SPDNN_DEBUG", raising=False)
    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--no-progress")
    assert result.exit_code == 3
    line = _one_error_line(result, prefix="spdnn: internal error: RuntimeError: kaboom")
    assert "please report it" in line and "SPDNN_DEBUG=1" in line

    monkeypatch.setenv("SPDNN_DEBUG", "1")
    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--no-progress")
    assert result.exit_code == 3
    assert result.stderr.startswith("Traceback") and "kaboom" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("spdnn: internal error: RuntimeError: kaboom")


def test_data_error_with_debug_shows_traceback(spdnn_cli, tmp_path, monkeypatch):
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\nnine\n")
    monkeypatch.setenv("SPDNN_DEBUG", "1")
    result = spdnn_cli("verify", bad, bad)
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and result.stderr.strip().splitlines()[-1].startswith("spdnn: error:")


_STALL = """
import sys, time
import spdnn.formats
from spdnn._atomic import atomic_open

def stalled_write(path, ids):
    with atomic_open(path, "wb") as fh:
        fh.write(b"1\\n")
        fh.flush()
        print("writing", file=sys.stderr, flush=True)
        time.sleep(120)

spdnn.formats.write_categories = stalled_write
from spdnn.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                 (signal.SIGTERM, 143, "terminated")])
def test_interrupted_mid_write(cache, tmp_path, signum, code, word):
    """Ctrl-C (SIGINT) exits 130, SIGTERM 143: one line, and the file being written is not left
    half-written (neither the file nor its temporary exists)."""
    out = tmp_path / "found.tsv"
    env = {**os.environ, "SPDNN_CACHE_DIR": str(cache[0]), "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _STALL, "run", *SMALL, "--engine", "reference",
                             "--save-categories", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr.readline().strip() == "writing"
        assert len(_temporaries(tmp_path)) == 1
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code, stderr
    assert "PASS" in stdout
    assert stderr.strip().splitlines()[-1] == f"spdnn: {word}" and "Traceback" not in stderr
    assert not out.exists() and _temporaries(tmp_path) == []


def test_closed_stdout_exits_quietly():
    """``spdnn info | head -0``: the reader went away; no traceback, exit 141."""
    proc = subprocess.Popen([sys.executable, "-m", "spdnn", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    proc.stdout.close()
    with proc.stderr:
        stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 141, stderr
    assert stderr == ""


# ------------------------------------------------- API wording, precision, merge


def test_api_argument_wording_becomes_options(spdnn_cli, generated_dir):
    """A message of the API (``choose one with layers=L``) is shown in the command's options."""
    shutil.copy(generated_dir / f"neuron{N}-l4-categories.tsv", generated_dir / f"neuron{N}-l3-categories.tsv")
    result = spdnn_cli("run", "--data", generated_dir, "--engine", "reference", "--no-progress")
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "--layers L" in line and "layers=" not in line


def test_generate_bad_neurons_names_the_option(spdnn_cli, tmp_path):
    result = spdnn_cli("generate", "--neurons", 1000, "--layers", 2, "--out", tmp_path / "g", "--no-progress")
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert line.startswith("spdnn: error: --neurons 1000: ") and "neurons=" not in line


def test_option_wording_rules():
    from spdnn.cli import _option_wording, run

    assert _option_wording("layers=0: expected >= 1; pass neurons=N", run) == "--layers 0: expected >= 1; pass --neurons N"
    # only whole argument names the command has as options
    assert _option_wording("segment_layers=[3]; Policy.layers=2; batch_samples=2.5", run) == \
        "segment_layers=[3]; Policy.layers=2; batch_samples=2.5"
    from spdnn.cli import generate

    assert _option_wording("truth_engine='x'", generate) == "--truth-engine 'x'"


@pytest.mark.parametrize("engine, expected", [("reference", "fp64"), ("cpu", "fp32")])
def test_default_precision_is_the_engines(spdnn_cli, engine, expected):
    """--precision unset: the engine's own default (the reference runs in fp64, as in the API)."""
    from spdnn.engines import available_engines, engine_class

    if not available_engines()[engine][0]:
        pytest.skip(f"engine {engine} not available here")
    result = spdnn_cli("run", *SMALL, "--engine", engine, "--json", "--no-progress")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["precision"] == expected
    assert inspect.signature(engine_class(engine)).parameters["precision"].default == expected


def test_merge_on_an_engine_that_does_not_merge(spdnn_cli):
    result = spdnn_cli("run", *SMALL, "--engine", "reference", "--merge", "on", "--no-progress")
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert line.startswith("spdnn: error: --merge on: engine 'reference' does not merge identical samples")


@pytest.mark.parametrize("merge, value", [("on", True), ("off", False), ("auto", None)])
def test_merge_reaches_the_engine(spdnn_cli, cache, monkeypatch, merge, value):
    """--merge on/off is passed to a merging engine as merge=True/False; auto leaves its default."""
    import spdnn.engines
    from spdnn.cli import _merging_engines

    if not _merging_engines():
        pytest.skip("no engine here takes merge= yet")
    name = _merging_engines()[0]
    if not spdnn.engines.available_engines()[name][0]:
        pytest.skip(f"engine {name} not available here")
    seen = []
    real = spdnn.engines.get_engine

    def spy(engine, *args, **options):
        seen.append(options.get("merge"))
        return real(engine, *args, **options)

    monkeypatch.setattr(spdnn.engines, "get_engine", spy)
    result = spdnn_cli("run", *SMALL, "--engine", name, "--merge", merge, "--json", "--no-progress")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert seen == [value]
    doc = json.loads(result.stdout)
    assert doc["merge"] == merge and doc["categories"] == cache[1].tolist()


# ----------------------------------------------------- verification and the truth


def test_wrong_bias_is_named_not_blamed_on_the_truth(spdnn_cli, generated_dir):
    """Issue 12, item 7: a wrong --bias; the generator's info beside the truth says which bias
    the truth was made with, and the verification names that difference."""
    made = json.loads((generated_dir / f"neuron{N}-l4-categories.json").read_text())["bias"]
    result = spdnn_cli("run", "--data", generated_dir, "--engine", "reference", "--bias", -0.05, "--no-progress")
    assert result.exit_code == 1, result.stdout + result.stderr
    report = result.stdout.split("verification:")[1]
    assert f"bias: this run -0.05, the truth's {made:g}" in report
    assert "The run's data differ from those the truth was made with" in report
    assert "the truth is wrong" not in report and "rounding effects" not in report
    result = spdnn_cli("run", "--data", generated_dir, "--engine", "reference", "--bias", -0.05, "--json",
                       "--no-progress")
    assert json.loads(result.stdout)["explanation"]["verdict"] == "other data"


def test_truth_beyond_the_samples_is_refused_before_inference(spdnn_cli, generated_dir, tmp_path, monkeypatch):
    """Issue 12, item 6 (CLI side): ids beyond the sample count: exit 2 naming the truth file, no inference."""
    import spdnn.engines

    def never(*args, **kwargs):
        raise AssertionError("inference must not start")

    monkeypatch.setattr(spdnn.engines, "get_engine", never)
    truth = _truth_file(tmp_path / "t.tsv", [3, S + 5])
    result = spdnn_cli("run", "--data", generated_dir, "--truth", truth, "--engine", "reference", "--no-progress")
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert str(truth) in line and f"sample id {S + 5} is beyond the {S} samples" in line


def test_debug_variable_is_validated(spdnn_cli, monkeypatch):
    monkeypatch.setenv("SPDNN_DEBUG", "yes")
    result = spdnn_cli("info")
    assert result.exit_code == 2
    assert _one_error_line(result) == "spdnn: error: environment variable SPDNN_DEBUG='yes': expected 0 or 1"


def test_wrong_bias_on_official_data(spdnn_cli, official_dir):
    """Issue 12, item 7, official files: the official truth's bias is that of its N."""
    result = spdnn_cli("run", "--data", official_dir, "--bias", -0.29, "--engine", "reference", "--json",
                       "--no-progress")
    assert result.exit_code == 1, result.stdout + result.stderr
    explanation = json.loads(result.stdout)["explanation"]
    assert explanation["verdict"] == "other data"
    assert explanation["origin"]["differences"] == ["bias: this run -0.29, the truth's -0.3"]
    assert "taken as the official truth of N=1024" in explanation["origin"]["source"]


@pytest.mark.parametrize("category, text", [("SpdnnWarning", "cache not writable"),
                                            ("RuntimeWarning", "spdnn: cache not writable")])
def test_spdnn_warnings_are_one_line(spdnn_cli, monkeypatch, category, text):
    """A warning issued by spdnn (an SpdnnWarning, or any category from the package) is one
    line ``spdnn: warning: ...``; the command goes on and exits 0."""
    import warnings

    import spdnn.cli
    import spdnn.errors

    def collect(*args, **kwargs):
        if category == "SpdnnWarning":
            warnings.warn(text, spdnn.errors.SpdnnWarning, stacklevel=1)
        else:  # as if issued by a module of the package
            warnings.warn_explicit(text, RuntimeWarning, filename=spdnn.errors.__file__, lineno=1,
                                   module="spdnn.errors")
        return {"version": "x"}

    monkeypatch.setattr(spdnn.cli, "collect_info", collect)
    result = spdnn_cli("info", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "spdnn: warning: cache not writable\n"
    assert json.loads(result.stdout) == {"version": "x"}
