"""Issue 19, items 1-13: bad inputs and faults that destroyed, hid or misreported data.

Each test fails on the code before the fix. The commands run through click's CliRunner
with ``SPDNN_CACHE_DIR`` in a temporary folder, on a small generated cell (N=64, L=12,
the first 200 samples), or call the API directly.
"""
from __future__ import annotations

import errno
import gzip
import inspect
import io
import json
import os
import stat
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import spdnn
from spdnn.cli import cli
from spdnn.errors import FormatError, OptionError, SpdnnError

from factories import challenge_cache

N, L, S = 64, 12, 200
SMALL = ["--neurons", str(N), "--layers", str(L), "--samples", str(S)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache dir, filled once with the small challenge; returns (dir, truth)."""
    path = tmp_path_factory.mktemp("spdnn-cache")
    return path, challenge_cache(path, N, L, S)


@pytest.fixture
def spdnn_cli(cache, monkeypatch):
    """invoke(*args) -> click Result with separate stdout/stderr; an unhandled exception is raised."""
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(cache[0]))
    kwargs = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}
    runner = CliRunner(**kwargs)

    def invoke(*args):
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


def _error_line(result, code=2) -> str:
    """The exit status is ``code``, stderr ONE line ``spdnn: error: ...``, no traceback; returns it."""
    assert result.exit_code == code, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spdnn: error: "), result.stderr
    return lines[0]


def _run_small(spdnn_cli, *extra):
    return spdnn_cli("run", *SMALL, "--engine", "reference", "--no-progress", *extra)


# ------------------------------------------------- 1. outputs: special files, links, modes


def _read_fifo_in_thread(path: Path, out: list) -> threading.Thread:
    t = threading.Thread(target=lambda: out.append(path.read_text()), daemon=True)
    t.start()
    return t


def test_save_categories_into_a_fifo_writes_in_place(spdnn_cli, cache, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list = []
    reader = _read_fifo_in_thread(fifo, got)
    result = _run_small(spdnn_cli, "--save-categories", fifo)
    reader.join(10)
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert [int(v) for v in got[0].split()] == list(cache[1])


def test_save_categories_into_a_device_keeps_the_device(spdnn_cli, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mknod of a character device needs root")
    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    result = _run_small(spdnn_cli, "--save-categories", dev)
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISCHR(os.lstat(dev).st_mode), "the device was replaced by a regular file"


def test_save_categories_through_a_symlink_keeps_the_link(spdnn_cli, cache, tmp_path):
    real = tmp_path / "sub" / "real.tsv"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.tsv"
    link.symlink_to(real)
    dangling = tmp_path / "dangling.tsv"
    dangling.symlink_to(tmp_path / "sub" / "new.tsv")
    for target in (link, dangling):
        result = _run_small(spdnn_cli, "--save-categories", target)
        assert result.exit_code == 0, result.stderr
        assert target.is_symlink(), "the link itself was replaced"
        assert [int(v) for v in target.read_text().split()] == list(cache[1])
    assert real.read_text() != "old\n" and (tmp_path / "sub" / "new.tsv").is_file()


def test_replaced_file_keeps_its_mode(spdnn_cli, tmp_path):
    out = tmp_path / "cats.tsv"
    out.write_text("")
    os.chmod(out, 0o600)
    result = _run_small(spdnn_cli, "--save-categories", out)
    assert result.exit_code == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text()


def test_save_categories_symlink_loop_is_refused_before_the_run(spdnn_cli, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    line = _error_line(_run_small(spdnn_cli, "--save-categories", loop))
    assert "--save-categories" in line and "loop" in line


@pytest.mark.parametrize("kind", ["challenge", "general"])
def test_bench_json_out_into_a_fifo(spdnn_cli, tmp_path, monkeypatch, kind):
    """A FIFO gets the final report once (a report after every cell, as a regular file
    gets, would wait forever for a second reader), with every cell in it."""
    import spdnn.bench_general as bg

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list = []
    reader = _read_fifo_in_thread(fifo, got)
    if kind == "challenge":
        cells, engines = f"{N}x{L},{N}x{L // 2}", "reference"
    else:
        monkeypatch.setitem(bg.WIDE, "wide4096", (64, 2, 4))
        monkeypatch.setitem(bg.WIDE, "wide16384", (96, 2, 4))
        cells, engines = "wide4096,wide16384", "cpu"
    result = spdnn_cli("bench", "--cells", cells, "--engines", engines, "--repeats", 1, "--samples", S,
                       "--bandwidth-gbs", 10, "--json-out", fifo, "--no-progress")
    reader.join(10)
    assert not reader.is_alive() and result.exit_code == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    report = json.loads(got[0])
    assert report["passed"] is True and len(report["cells"]) == 2 and report["floor_constants"]


def test_bench_json_out_file_holds_each_finished_cell(spdnn_cli, tmp_path, monkeypatch):
    """A regular --json-out file is replaced after every cell: a run interrupted after its
    first cell leaves a whole JSON of that cell (and no temporary file beside it)."""
    import spdnn.bench as benchmod

    out = tmp_path / "bench.json"
    real = benchmod.time_engine
    calls = []

    def interrupted_second_cell(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmod, "time_engine", interrupted_second_cell)
    result = spdnn_cli("bench", "--cells", f"{N}x{L},{N}x{L // 2}", "--engines", "reference", "--repeats", 1,
                       "--samples", S, "--bandwidth-gbs", 10, "--json-out", out, "--no-progress")
    assert result.exit_code == 130, result.stderr
    report = json.loads(out.read_text())
    assert len(report["cells"]) == 1 and report["cells"][0]["engines"]["reference"]["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


# ------------------------------------------------------------- 13. bench options checked first


def test_bench_plot_with_an_unknown_extension_fails_before_running(spdnn_cli, tmp_path):
    pytest.importorskip("matplotlib")
    result = spdnn_cli("bench", "--cells", f"{N}x{L}", "--engines", "reference", "--samples", S,
                       "--plot", tmp_path / "x.txt", "--no-progress")
    line = _error_line(result)
    assert "--plot" in line and ".txt" in line and ".png" in line
    assert result.stdout == "", "the benchmark ran before the option was checked"


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_bench_launch_us_must_be_finite(spdnn_cli, value):
    line = _error_line(spdnn_cli("bench", "--launch-us", value))
    assert "--launch-us" in line and value in line


# ----------------------------------------------------- 2. a check that cannot be read is an error


@pytest.fixture(scope="module")
def generated(cache, tmp_path_factory):
    """``spdnn generate`` once per module (N=64, 6 layers, 200 samples): the output dir."""
    out = tmp_path_factory.mktemp("generated") / "gen"
    mp = pytest.MonkeyPatch()
    mp.setenv("SPDNN_CACHE_DIR", str(cache[0]))
    kwargs = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}
    result = CliRunner(**kwargs).invoke(cli, ["generate", "--neurons", str(N), "--layers", "6", "--samples", str(S),
                                              "--out", str(out), "--no-progress"])
    mp.undo()
    assert result.exit_code == 0, result.stdout + result.stderr
    return out


@pytest.fixture
def data_dir(generated, tmp_path):
    """A private copy of the generated data set, to damage."""
    import shutil

    return shutil.copytree(generated, tmp_path / "gen")


def _feed_fifo(path: Path, text: str, seconds: float = 5.0) -> None:
    """Write ``text`` into the FIFO ``path`` if a reader opens it within ``seconds`` (a
    daemon thread): a command that wrongly reads the FIFO gets data and ends, rather than
    blocking the test forever; one that refuses it leaves the thread to give up."""
    import time

    def feed():
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.02)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            return

    threading.Thread(target=feed, daemon=True).start()


def _unreadable(kind: str, path: Path) -> None:
    """Put something unreadable of ``kind`` at ``path`` (which must not exist); a FIFO is fed
    a valid truth should a reader open it (:func:`_feed_fifo`)."""
    if kind == "dangling":
        path.symlink_to(path.parent / "no-such-file.tsv")
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
        _feed_fifo(path, "1\n")


_WORDS = {"dangling": "dangling symbolic link", "loop": "symbolic link loop", "directory": "is a directory",
          "fifo": "FIFO"}


@pytest.mark.parametrize("kind", sorted(_WORDS))
def test_unreadable_truth_in_the_data_folder_is_an_error(spdnn_cli, data_dir, kind):
    truth = data_dir / f"neuron{N}-l6-categories.tsv"
    truth.unlink()
    _unreadable(kind, truth)
    line = _error_line(spdnn_cli("run", "--data", data_dir, "--engine", "reference", "--no-progress"))
    assert truth.name in line and _WORDS[kind] in line


@pytest.mark.parametrize("kind", sorted(_WORDS))
def test_unreadable_truth_option_is_an_error(spdnn_cli, tmp_path, kind):
    truth = tmp_path / "truth.tsv"
    _unreadable(kind, truth)
    line = _error_line(_run_small(spdnn_cli, "--truth", truth))
    assert "--truth" in line and _WORDS[kind] in line


def test_verify_refuses_a_fifo(spdnn_cli, tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text("1\n2\n")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _feed_fifo(fifo, "1\n2\n")
    line = _error_line(spdnn_cli("verify", fifo, good))
    assert str(fifo) in line and "FIFO" in line


def test_verify_refuses_dev_zero_without_hanging(tmp_path):
    import subprocess
    import sys

    good = tmp_path / "good.tsv"
    good.write_text("1\n")
    env = {**os.environ, "PYTHONPATH": str(Path(spdnn.__file__).parents[1])}
    try:
        proc = subprocess.run([sys.executable, "-m", "spdnn", "verify", "/dev/zero", str(good)], env=env,
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("spdnn verify /dev/zero still ran after 60 s")
    assert proc.returncode == 2 and proc.stderr.startswith("spdnn: error:") and "character device" in proc.stderr


@pytest.mark.parametrize("names", [("n64-l3.tsv", "n64-l03.tsv"), ("n64-l3.tsv", "n64-l3.tsv.gz")])
def test_two_files_for_one_layer_are_an_error(spdnn_cli, data_dir, names):
    folder = data_dir / f"neuron{N}"
    first, second = names
    blob = (folder / first).read_bytes()
    (folder / second).write_bytes(gzip.compress(blob) if second.endswith(".gz") else blob)
    line = _error_line(spdnn_cli("run", "--data", data_dir, "--engine", "reference", "--no-progress"))
    assert first in line and second in line


def test_layer_file_that_is_a_symlink_loop_is_named_as_such(spdnn_cli, data_dir):
    layer = data_dir / f"neuron{N}" / f"n{N}-l2.tsv"
    layer.unlink()
    layer.symlink_to(layer)
    line = _error_line(spdnn_cli("run", "--data", data_dir, "--engine", "reference", "--no-progress"))
    assert layer.name in line and "symbolic link loop" in line


# ------------------------------------------- 9, 10. bounded tokens, lines and messages


def _verify_error(spdnn_cli, tmp_path, body: bytes) -> str:
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(body)
    good = tmp_path / "good.tsv"
    good.write_text("1\n")
    return _error_line(spdnn_cli("verify", bad, good))


def test_a_5000_digit_index_is_a_data_error(spdnn_cli, tmp_path):
    line = _error_line(spdnn_cli("verify", *(_write(tmp_path / n, b) for n, b in
                                             (("bad.tsv", b"1\n" + b"7" * 5000 + b"\n"), ("good.tsv", b"1\n")))))
    assert "bad.tsv:2" in line and "out of range" in line and len(line) < 400


def _write(path: Path, body: bytes) -> Path:
    path.write_bytes(body)
    return path


@pytest.mark.parametrize("where", ["index", "value"])
def test_a_5000_digit_token_in_a_layer_file(tmp_path, where):
    from spdnn.formats.tsv import read_layer

    big = b"9" * 5000
    body = b"1\t1\t0.5\n" + (big + b"\t1\t0.5\n" if where == "index" else b"2\t2\t" + big + b".5x\n")
    with pytest.raises(FormatError) as err:
        read_layer(_write(tmp_path / "w.tsv", body), neurons=4)
    assert err.value.line == 2 and len(str(err.value)) < 400


def test_a_megabyte_of_nul_bytes_gives_a_short_message(spdnn_cli, tmp_path):
    line = _verify_error(spdnn_cli, tmp_path, b"1\n" + b"\0" * (1 << 20) + b"\n")
    assert "bad.tsv:2" in line and "\\x00" in line and len(line) < 400


def test_a_line_without_end_is_refused_before_it_is_gathered(tmp_path):
    from spdnn.formats import text

    with pytest.raises(FormatError) as err:
        text.read_entries(io.BytesIO(b"1\n2\n" + b"3" * (3 * text.MAX_LINE_BYTES)), "big.tsv", nint=1,
                          want_value=False, names=("id",))
    assert err.value.line == 3 and "longer than" in str(err.value) and len(str(err.value)) < 200


def test_a_utf8_bom_is_named(spdnn_cli, tmp_path):
    line = _verify_error(spdnn_cli, tmp_path, b"\xef\xbb\xbf1\n2\n")
    assert "bad.tsv:1" in line and "byte order mark" in line and "\ufffd" not in line


def test_a_bom_in_a_layer_file_is_named(tmp_path):
    from spdnn.formats.tsv import read_layer

    with pytest.raises(FormatError, match="byte order mark"):
        read_layer(_write(tmp_path / "w.tsv", b"\xef\xbb\xbf1\t1\t0.5\n"), neurons=4)


@pytest.mark.parametrize("value", [b"1_0", b"1_000.5"])
def test_python_number_spellings_are_not_numbers(tmp_path, value):
    from spdnn.formats.tsv import read_layer

    with pytest.raises(FormatError) as err:
        read_layer(_write(tmp_path / "w.tsv", b"1\t1\t0.5\n2\t2\t" + value + b"\n"), neurons=4)
    assert err.value.line == 2 and value.decode() in str(err.value)


def test_a_gzip_crc_error_is_called_corruption(tmp_path):
    from spdnn.formats.tsv import read_layer

    blob = bytearray(gzip.compress(b"".join(b"%d\t%d\t0.5\n" % (i, i) for i in range(1, 5))))
    blob[-8] ^= 0xFF  # the CRC-32 of the trailer: the data inflate whole, the check fails
    with pytest.raises(FormatError) as err:
        read_layer(_write(tmp_path / "w.tsv.gz", bytes(blob)), neurons=4)
    assert "CRC" in str(err.value) and "corrupt" in str(err.value) and "truncated" not in str(err.value)


def test_a_truncated_gzip_is_called_truncated(tmp_path):
    from spdnn.formats.tsv import read_layer

    blob = gzip.compress(b"".join(b"%d\t%d\t0.5\n" % (i, i) for i in range(1, 5)))
    with pytest.raises(FormatError, match="truncated"):
        read_layer(_write(tmp_path / "w.tsv.gz", blob[:-12]), neurons=4)


def test_mtx_size_line_with_huge_numbers(tmp_path):
    from spdnn.formats.mtx import read_mtx

    body = b"%%MatrixMarket matrix coordinate pattern general\n" + b"9" * 5000 + b" 4 1\n1 1\n"
    with pytest.raises(FormatError) as err:
        read_mtx(_write(tmp_path / "m.mtx", body))
    assert err.value.line == 2 and len(str(err.value)) < 400


# ------------------------------------------------- 3, 11. counts and the generator's .json


def _json_of(data_dir: Path) -> Path:
    return data_dir / f"neuron{N}-l6-categories.json"


def test_samples_beyond_the_features_file_is_an_error(spdnn_cli, data_dir):
    line = _error_line(spdnn_cli("run", "--data", data_dir, "--engine", "reference", "--samples", 100000,
                                 "--no-progress"))
    assert "--samples 100000" in line and f"sparse-images-{N}" in line and f"{S:,} samples" in line


@pytest.mark.parametrize("how", ["fewer layers", "no generator info"])
def test_sample_count_comes_from_the_features_file(spdnn_cli, data_dir, how):
    args = ["--bias", -0.2]
    if how == "fewer layers":
        args += ["--layers", 3]
    else:
        _json_of(data_dir).unlink()
    result = spdnn_cli("run", "--data", data_dir, "--engine", "reference", "--json", "--no-progress", *args)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    held = max(int(line.split()[0]) for line in gzip.open(data_dir / f"sparse-images-{N}.tsv.gz", "rt"))
    assert doc["samples"] == held == S  # not the official 60,000


@pytest.mark.parametrize("value, words", [(-5, "a positive integer"), ("2000", "a positive integer"),
                                          (10**10, "at most 60,000"), (2.5, "a positive integer"),
                                          (True, "a positive integer")])
def test_generator_info_errors_name_the_json_and_its_key(spdnn_cli, data_dir, value, words):
    info = json.loads(_json_of(data_dir).read_text())
    info["samples"] = value
    _json_of(data_dir).write_text(json.dumps(info))
    line = _error_line(spdnn_cli("run", "--data", data_dir, "--engine", "reference", "--no-progress"))
    assert _json_of(data_dir).name in line and "'samples'" in line and words in line
    assert "--samples" not in line and "memory" not in line


@pytest.mark.parametrize("key, value", [("bias", "-0.2"), ("bias", float("nan")), ("neurons", 0), ("seed", "x")])
def test_generator_info_other_keys_are_checked(spdnn_cli, data_dir, key, value):
    info = json.loads(_json_of(data_dir).read_text())
    info[key] = value
    _json_of(data_dir).write_text(json.dumps(info))
    line = _error_line(spdnn_cli("run", "--data", data_dir, "--engine", "reference", "--no-progress"))
    assert _json_of(data_dir).name in line and repr(key) in line


# --------------------------------------------------------- 6, 7, 8, 12. the Python API


def _tiny(values=0.5, n=8, depth=3):
    """A small dense-ish network and features on which samples survive every layer."""
    w = sp.csr_matrix(np.full((n, n), float(values)))
    x = sp.csr_matrix(np.eye(n)[:4])
    return [w.copy() for _ in range(depth)], x


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_from_layers_refuses_non_finite_weights(bad):
    layers, _ = _tiny()
    layers[1] = layers[1].tolil()
    layers[1][2, 5] = bad
    with pytest.raises(OptionError, match=r"layer 2: weight .* \(row 3, column 6\) is not finite"):
        spdnn.Network.from_layers(layers, -0.1)


@pytest.mark.parametrize("engine", ["reference", "cpu"])
def test_fp32_run_refuses_weights_beyond_float32(engine):
    layers, x = _tiny()
    layers[2] = layers[2].tolil()
    layers[2][0, 0] = 1e39
    net = spdnn.Network.from_layers(layers, -0.1)
    with pytest.raises(OptionError, match=r"layer 3: weight 1e\+39 is beyond the range of float32.*fp64"):
        spdnn.infer(net, x, engine=engine, precision="fp32")
    fp64 = spdnn.infer(net, x, engine=engine, precision="fp64")
    assert fp64.categories.size > 0  # fp64 computes it


def test_fp32_refusal_on_the_command_line_names_the_layer(spdnn_cli, data_dir):
    layer = data_dir / f"neuron{N}" / f"n{N}-l2.tsv"
    lines = layer.read_text().splitlines()
    row, col, _ = lines[0].split("\t")
    lines[0] = f"{row}\t{col}\t1e39"
    layer.write_text("\n".join(lines) + "\n")
    line = _error_line(spdnn_cli("run", "--data", data_dir, "--engine", "cpu", "--precision", "fp32",
                                 "--no-progress"))
    assert "layer 2" in line and "1e+39" in line and "fp64" in line


def test_infer_reference_runs_in_fp64_by_default():
    layers, x = _tiny()
    net = spdnn.Network.from_layers(layers, -0.1)
    assert spdnn.infer(net, x, engine="reference").precision == "fp64"
    assert spdnn.infer(net, x, engine="cpu").precision == "fp32"
    assert spdnn.infer(net, x, engine="reference", precision="fp32").precision == "fp32"


def test_infer_accepts_merge_auto_on_every_engine():
    layers, x = _tiny()
    net = spdnn.Network.from_layers(layers, -0.1)
    want = spdnn.infer(net, x, engine="reference").categories
    assert np.array_equal(spdnn.infer(net, x, engine="reference", merge="auto").categories, want)
    with pytest.raises(OptionError, match=r"merge=True: engine 'reference' does not merge"):
        spdnn.infer(net, x, engine="reference", merge=True)


def test_infer_unknown_keyword_is_an_option_error():
    layers, x = _tiny()
    net = spdnn.Network.from_layers(layers, -0.1)
    with pytest.raises(OptionError, match="bogus_option") as err:
        spdnn.infer(net, x, engine="cpu", bogus_option=3)
    assert "batch_samples" in str(err.value)  # the engine's options are listed


@pytest.mark.parametrize("bias", ["abc", object(), [1, "x"]])
def test_from_layers_bad_bias_is_an_option_error(bias):
    layers, _ = _tiny()
    with pytest.raises(OptionError, match="bias="):
        spdnn.Network.from_layers(layers, bias)


@pytest.mark.parametrize("engine", ["reference", "cpu"])
def test_a_list_as_the_network_is_an_option_error(engine):
    layers, x = _tiny()
    with pytest.raises(OptionError, match="network: expected a spdnn.Network, got list"):
        spdnn.infer(layers, x, engine=engine)


# --------------------------------------------------------------------- 4. tarballs


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _layer_bytes(n: int, value: float) -> bytes:
    return b"".join(b"%d\t%d\t%r\n" % (i, i, value) for i in range(1, n + 1))


def test_a_tarball_holding_a_layer_twice_is_an_error_naming_both(tmp_path, monkeypatch):
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    members = [("neuron8/n8-l1.tsv", _layer_bytes(8, 0.5)), ("neuron8/n8-l2.tsv", _layer_bytes(8, 0.5)),
               ("neuron8/n8-l2.tsv", _layer_bytes(8, 2.0))]
    archive = _tar(tmp_path / "neuron8.tar.gz", members)
    with pytest.raises(FormatError, match=r"neuron8\.tar\.gz: holds layer 2 twice: members neuron8/n8-l2\.tsv and "
                                          r"neuron8/n8-l2\.tsv"):
        spdnn.read_network(archive, bias=-0.1)


def test_a_tarball_of_another_size_says_which(tmp_path, monkeypatch):
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    archive = _tar(tmp_path / "neuron16.tar.gz", [("neuron8/n8-l1.tsv", _layer_bytes(8, 0.5))])
    with pytest.raises(spdnn.DataNotFoundError, match="layers found: none; it holds layers of N = 8"):
        spdnn.read_network(archive, bias=-0.1)


# ------------------------------------------------------------- 13. the smaller items


@pytest.mark.parametrize("url", ["not a url", "ftp://example.org/x", "http://", "/local/path"])
def test_download_bad_base_url_is_a_usage_error(spdnn_cli, tmp_path, url):
    out = tmp_path / "new" / "out"
    line = _error_line(spdnn_cli("download", "--neurons", 1024, "--layers", 120, "--out", out, "--base-url", url,
                                 "--what", "truth", "--no-progress"))
    assert "--base-url" in line
    assert not (tmp_path / "new").exists()


def test_failed_download_removes_the_out_folder_it_created(spdnn_cli, tmp_path):
    out = tmp_path / "new" / "out"
    result = spdnn_cli("download", "--neurons", 1024, "--layers", 120, "--out", out,
                       "--base-url", "http://127.0.0.1:9", "--what", "truth", "--no-progress")
    _error_line(result)
    assert not (tmp_path / "new").exists()


def test_failed_generate_removes_the_out_folder_it_created(spdnn_cli, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied", "somewhere")

    monkeypatch.setattr("spdnn.formats.write_categories", fail)  # write_challenge imports it when called
    out = tmp_path / "gen"
    result = spdnn_cli("generate", "--neurons", N, "--layers", 2, "--samples", 20, "--out", out, "--no-progress")
    _error_line(result)
    assert not out.exists()


def test_a_failed_command_keeps_an_existing_out_folder(spdnn_cli, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    _error_line(spdnn_cli("download", "--neurons", 1024, "--layers", 120, "--out", out,
                          "--base-url", "http://127.0.0.1:9", "--what", "truth", "--no-progress"))
    assert out.is_dir()


def test_a_full_stdout_is_named(tmp_path):
    import subprocess
    import sys

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    env = {**os.environ, "PYTHONPATH": str(Path(spdnn.__file__).parents[1])}
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "spdnn", "info"], stdout=full, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("spdnn: error: stdout") and "no space left" in proc.stderr
