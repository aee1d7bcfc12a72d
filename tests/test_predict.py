"""``spdnn predict`` and ``spdnn convert`` end to end, the inputs and labels readers, and
the small MNIST network shipped in the package: every engine's predictions equal
PyTorch's fp64 forward pass (the reference engine's where torch is absent), and its
held-out accuracy is the one recorded when it was trained."""
from __future__ import annotations

import gzip
import inspect
import json

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from spdnn.cli import cli
from spdnn.engines import ENGINES, get_engine
from spdnn.errors import FormatError, OptionError
from spdnn.formats.inputs import read_inputs, read_labels
from spdnn.formats.npz import write_features_npz
from spdnn.formats.tsv import write_features_tsv
from spdnn.models import example_files, load_model, read_header, save_model
from spdnn.network import Network

from factories import engine_availability


@pytest.fixture(scope="module")
def example():
    files = example_files()
    if not files.model.is_file():
        pytest.fail(f"the shipped example model is missing: {files.model}")
    from spdnn.generate.mnist import load_mnist, load_mnist_labels

    start, stop = files.held_out
    images = load_mnist()[start:stop].reshape(-1, 784).astype(np.float64) / 255.0
    labels = load_mnist_labels()[start:stop].astype(np.int64)
    return load_model(files.model), images, labels


def _torch_or_reference_predictions(net, images):
    """PyTorch's fp64 forward pass of ``net`` (its layers as nn.Linear), or the reference engine's."""
    try:
        import torch
    except ImportError:
        return get_engine("reference", precision="fp64").run(net, sp.csr_matrix(images),
                                                             outputs="predictions").predictions
    y = torch.from_numpy(images)
    with torch.no_grad():
        for k in range(net.depth):
            w = net.layers[k]
            w = torch.from_numpy(np.array(w) if net.is_dense(k) else w.toarray())
            y = y @ w + torch.from_numpy(np.array(net.bias[k]))
            if net.activations[k] == "relu":
                y = y.clamp(0.0, float(net.caps[k]))
    return y.argmax(1).numpy()


def test_shipped_model_accuracy_as_recorded(example):
    net, images, labels = example
    header = read_header(example_files().model)
    recorded = header["metadata"]["held_out_accuracy"]
    result = get_engine("reference", precision="fp64").run(net, sp.csr_matrix(images), outputs="predictions")
    assert result.accuracy(labels) == recorded
    assert recorded >= 0.95
    assert net.widths[0] == 784 and net.widths[-1] == 10 and net.activations[-1] == "identity"
    assert any(net.is_dense(k) for k in range(net.depth)) and not all(net.is_dense(k) for k in range(net.depth))


@pytest.mark.parametrize("precision", ["fp64", "fp32"])
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_predicts_what_torch_predicts_on_the_shipped_model(engine, precision, example):
    ok, why = engine_availability(engine)
    if not ok:
        pytest.skip(f"engine {engine} is not available here: {why}")
    net, images, labels = example
    want = _torch_or_reference_predictions(net, images)
    try:
        result = get_engine(engine, precision=precision).run(net, sp.csr_matrix(images), outputs="predictions")
    except OptionError as exc:
        pytest.skip(f"engine {engine} does not run general networks yet: {exc}")
    if precision == "fp64":
        assert np.array_equal(result.predictions, want)
    else:   # no bits promised in fp32: differences only where the top two logits nearly tie
        differ = np.flatnonzero(result.predictions != want)
        assert differ.size <= 3, f"{differ.size} predictions differ from fp64"


# ------------------------------------------------------------------------ inputs


def test_inputs_of_every_kind_read_the_same_samples(tmp_path, rng):
    x = rng.random((9, 16)) * (rng.random((9, 16)) < 0.4)
    np.save(tmp_path / "x.npy", x)
    write_features_npz(tmp_path / "x.npz", sp.csr_matrix(x), values=True)
    for name in ("x.npy", "x.npz"):
        got = read_inputs(tmp_path / name, 16)
        assert np.array_equal(got.toarray(), x) and got.dtype == np.float64
    with pytest.raises(FormatError, match="x.npy: 16 values a sample, the network takes 17"):
        read_inputs(tmp_path / "x.npy", 17)
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4)))
    with pytest.raises(FormatError, match="bad.npy: a 3-D"):
        read_inputs(tmp_path / "bad.npy")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    with pytest.raises(FormatError, match="nan.npy: non-finite"):
        read_inputs(tmp_path / "nan.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(FormatError, match="x.csv: unknown inputs file type"):
        read_inputs(tmp_path / "x.csv")


def test_official_tsv_inputs(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    x = sp.random(12, 10, density=0.3, random_state=rng, format="csr")
    x.data[:] = 1.0
    write_features_tsv(tmp_path / "f.tsv", x)
    got = read_inputs(tmp_path / "f.tsv", 10)
    assert got.shape[1] == 10 and np.array_equal(got.toarray()[:12], x.toarray())


def test_idx_images_and_labels(tmp_path):
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2) * 20
    head = np.array([0x803, 3, 2, 2], dtype=">u4").tobytes()
    (tmp_path / "t-idx3-ubyte.gz").write_bytes(gzip.compress(head + images.tobytes()))
    got = read_inputs(tmp_path / "t-idx3-ubyte.gz", 4)
    assert np.array_equal(got.toarray(), images.reshape(3, 4) / 255.0)
    (tmp_path / "l-idx1-ubyte").write_bytes(np.array([0x801, 3], dtype=">u4").tobytes() + bytes([7, 1, 9]))
    assert read_labels(tmp_path / "l-idx1-ubyte").tolist() == [7, 1, 9]
    (tmp_path / "l.txt").write_text("3\n4\nfive\n")
    with pytest.raises(FormatError, match="l.txt:3: 'five' is not an integer label"):
        read_labels(tmp_path / "l.txt")
    with pytest.raises(FormatError, match="l-idx1-ubyte: 3 labels for 5 samples"):
        read_labels(tmp_path / "l-idx1-ubyte", samples=5)
    (tmp_path / "x-idx1-ubyte").write_bytes(head + images.tobytes())
    with pytest.raises(FormatError, match="x-idx1-ubyte: IDX magic"):
        read_labels(tmp_path / "x-idx1-ubyte")


# --------------------------------------------------------------------------- CLI


def _invoke(*args):
    kwargs = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}
    result = CliRunner(**kwargs).invoke(cli, [str(a) for a in args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture
def small(tmp_path, rng):
    """A small rectangular model, inputs and labels (the labels are its own predictions
    on the first 15 samples, wrong on the rest)."""
    net = Network.from_layers([rng.standard_normal((8, 6)), sp.random(6, 6, density=0.3, random_state=rng),
                               rng.standard_normal((6, 3))], [rng.standard_normal(6), 0.1, np.zeros(3)],
                              bias_rule="dense", activation=["relu", "relu", "identity"], ymax=[None, 1.0, None])
    save_model(net, tmp_path / "m.spdnn")
    x = rng.random((20, 8))
    np.save(tmp_path / "x.npy", x)
    pred = get_engine("reference").run(net, sp.csr_matrix(x), outputs="predictions").predictions
    labels = pred.copy()
    labels[15:] = (labels[15:] + 1) % 3
    np.save(tmp_path / "y.npy", labels)
    return tmp_path, pred


def test_predict_json_and_outputs(small):
    folder, pred = small
    r = _invoke("predict", folder / "m.spdnn", folder / "x.npy", "--labels", folder / "y.npy", "--engine",
                "reference", "--json", "--outputs", folder / "p.npy")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("samples", "accuracy", "predictions", "inference_seconds", "teraedges_per_second", "engine",
                "precision"):
        assert key in out
    assert out["samples"] == 20 and out["accuracy"] == 0.75 and out["engine"] == "reference"
    assert out["precision"] == "fp64" and out["predictions"] == {"count": 20, "file": str(folder / "p.npy"),
                                                                  "kind": "predictions"}
    saved = np.load(folder / "p.npy")
    assert saved.dtype == np.int64 and np.array_equal(saved, pred)
    r = _invoke("predict", folder / "m.spdnn", folder / "x.npy", "--engine", "reference", "--skip", 5,
                "--samples", 10, "--outputs", folder / "a.npy", "--outputs-kind", "activations")
    assert r.exit_code == 0, r.stderr
    assert "samples:      10" in r.stdout and "TeraEdges/s" in r.stdout and "accuracy" not in r.stdout
    assert np.load(folder / "a.npy").shape == (10, 3)


BAD = {
    "model": (lambda f: (f / "m.spdnn").write_bytes(b"garbage"), "m.spdnn: not a spdnn model file"),
    "width": (lambda f: np.save(f / "x.npy", np.zeros((3, 5))), "x.npy: 5 values a sample, the network takes 8"),
    "labels": (lambda f: np.save(f / "y.npy", np.zeros(4, dtype=np.int64)), "y.npy: 4 labels for the 20 samples"),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_predict_bad_files_one_line_exit_2(bad, small):
    folder, _ = small
    hurt, message = BAD[bad]
    hurt(folder)
    r = _invoke("predict", folder / "m.spdnn", folder / "x.npy", "--labels", folder / "y.npy", "--engine",
                "reference", "--outputs", folder / "p.npy")
    assert r.exit_code == 2
    assert message in r.stderr and r.stderr.startswith("spdnn: error: ") and r.stderr.count("\n") == 1
    assert not (folder / "p.npy").exists()


def test_predict_usage(small):
    folder, _ = small
    r = _invoke("predict", folder / "m.spdnn")
    assert r.exit_code == 2 and "give MODEL and INPUTS, or --example" in r.stderr
    r = _invoke("predict", "--example", folder / "m.spdnn")
    assert r.exit_code == 2 and "--example replaces MODEL and INPUTS" in r.stderr


def test_predict_example_passes(example):
    r = _invoke("predict", "--example", "--engine", "reference", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["samples"] == 10_000 and out["first_sample"] == 50_000
    assert out["accuracy"] == read_header(example_files().model)["metadata"]["held_out_accuracy"]


def test_convert(small, tmp_path):
    folder, _ = small
    r = _invoke("convert", folder / "m.spdnn", tmp_path / "copy.spdnn")
    assert r.exit_code == 0, r.stderr
    a, b = load_model(folder / "m.spdnn"), load_model(tmp_path / "copy.spdnn")
    assert a.widths == b.widths and a.describe() == b.describe()
    r = _invoke("convert", folder / "x.npy", tmp_path / "no.spdnn")
    assert r.exit_code == 2 and "unknown model file type '.npy'" in r.stderr
    assert not (tmp_path / "no.spdnn").exists()


def test_convert_torch_and_onnx(tmp_path, rng):
    torch = pytest.importorskip("torch", reason="converting a .pt needs torch (pip install 'spdnn[torch]')")
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    r = _invoke("convert", tmp_path / "m.pt", tmp_path / "m.spdnn", "--storage", "sparse")
    assert r.exit_code == 0, r.stderr
    net = load_model(tmp_path / "m.spdnn")
    assert not any(net.is_dense(k) for k in range(net.depth))
    x = rng.random((5, 8))
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x)).numpy()
    got = get_engine("reference").run(net, sp.csr_matrix(x), outputs="activations").outputs
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
