"""spdnn.generate: RadiX-Net weights, MNIST features and truth against the official data."""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines.reference import ReferenceEngine
from spdnn.errors import DataNotFoundError, FormatError, OptionError
from spdnn.network import LazyLayers, Network
from spdnn.generate import (cached_challenge, challenge_features, default_bias, features_device,
                            generate_challenge, image_shape, load_mnist, place_value, radixnet_base,
                            radixnet_layer, radixnet_network, radixnet_permutations, reference_features,
                            write_challenge)
from spdnn.generate import features as features_module
from spdnn.generate import mnist as mnist_module
from spdnn.generate._features_array import ArrayShortAxis
from spdnn.generate._features_cpu import CpuShortAxis
from spdnn.engines import fastest_exact_engine
from spdnn.formats import read_mtx
from spdnn.errors import DiskFullError, SpdnnWarning
from spdnn.generate import challenge as challenge_module
from spdnn.generate.challenge import GENERATOR_VERSION, layer_file_bytes, store_cached_features

from factories import random_features, same_csr


def official_layer_bytes(official_dir, k: int) -> bytes:
    with tarfile.open(official_dir / "neuron1024.tar.gz") as tar:
        return tar.extractfile(f"neuron1024/n1024-l{k}.tsv").read()


def parse_layer(raw: bytes, n: int) -> sp.csr_matrix:
    d = np.loadtxt(io.BytesIO(raw))
    rows, cols = d[:, 0].astype(np.int64) - 1, d[:, 1].astype(np.int64) - 1
    return sp.csr_matrix((d[:, 2], (rows, cols)), shape=(n, n))


# --- RadiX-Net weights ---------------------------------------------------------------------

@pytest.mark.parametrize("k", range(1, 7))
def test_layers_1_to_6_equal_official(official_dir, k, tmp_path):
    from spdnn.formats import write_layer_tsv

    raw = official_layer_bytes(official_dir, k)
    w = radixnet_layer(1024, k)
    assert same_csr(w, parse_layer(raw, 1024))
    out = tmp_path / f"n1024-l{k}.tsv"
    write_layer_tsv(out, w)
    assert out.read_bytes() == raw


def column_inputs(w: sp.spmatrix) -> np.ndarray:
    """The sorted input neurons of every output neuron, shape (N, 32) (every column has 32)."""
    c = sp.csc_matrix(w)
    c.sort_indices()
    assert np.all(np.diff(c.indptr) == 32)
    return c.indices.reshape(c.shape[1], 32)


def grouped_like_base(w: sp.spmatrix) -> bool:
    """Output neurons v and v + a M (a = 0..15, M = N / 16) have identical input sets."""
    cols = column_inputs(w)
    n = cols.shape[0]
    blocks = cols.reshape(16, n // 16, 32)
    return bool(np.all(blocks == blocks[:1]))


def test_official_layers_keep_the_column_grouping(official_dir):
    """Every official N=1024 layer keeps K_p's columns: v and v + aM share their inputs,
    and the later layers are a row permutation of K_p (not the base itself)."""
    from spdnn.formats import read_network

    net = read_network(official_dir / "neuron1024.tar.gz", bias=-0.3, cache=False)
    assert net.depth == 120
    for k in range(1, 121):
        w = net.layers[k - 1]
        assert grouped_like_base(w), f"layer {k}"
        base_cols = column_inputs(radixnet_base(1024, place_value(1024, k)))
        # the rows of W are K_p's rows in another order (same patterns, same multiplicities)
        rows_w, rows_b = (np.sort(sp.csr_matrix(m).indices.reshape(1024, 32), axis=1)
                          for m in (w, radixnet_base(1024, place_value(1024, k))))
        assert np.array_equal(rows_w[np.lexsort(rows_w.T)], rows_b[np.lexsort(rows_b.T)]), f"layer {k}"
        assert (k <= 6) == np.array_equal(column_inputs(w), base_cols), f"layer {k}"


@pytest.mark.parametrize("neurons", [1024, 4096, 16384, 65536])
def test_generated_layers_keep_the_column_grouping(neurons, seed):
    s = (neurons // 16).bit_length() - 1
    k = s + 1 + seed % (2 * s)                 # one later (permuted) layer
    w = radixnet_layer(neurons, k, seed=seed)
    assert grouped_like_base(w)
    rows = radixnet_permutations(neurons, k, seed=seed)
    # not grouped by rows: input neurons u and u + M are not the same row of K_p
    assert not np.array_equal(rows[: neurons // 16] % (neurons // 16), rows[neurons // 16: neurons // 8] % (neurons // 16))


@pytest.mark.parametrize("neurons", [32, 64, 128, 1024, 4096])
def test_every_layer_has_32_per_row_and_column(neurons):
    s = (neurons // 16).bit_length() - 1
    for k in sorted({1, s, s + 1, 2 * s + 3, 13}):
        w = radixnet_layer(neurons, k, seed=3)
        assert w.shape == (neurons, neurons) and w.dtype == np.float64
        assert w.has_canonical_format
        assert np.all(np.diff(w.indptr) == 32)
        assert np.all(np.bincount(w.indices, minlength=neurons) == 32)
        assert np.all(w.data == 1 / 16)


def test_base_pattern_definition():
    """K_p[u', v'] = 1 exactly when u = v or u = (v + p) mod M (u = u' mod M, v = v' mod M)."""
    n, m = 128, 8
    for p in (1, 2, 4):
        dense = radixnet_base(n, p).toarray() * 16
        u = np.arange(n)[:, None] % m
        v = np.arange(n)[None, :] % m
        assert np.array_equal(dense, ((u == v) | (u == (v + p) % m)).astype(float))


def test_later_layers_are_row_permutations_of_the_base(seed):
    n = 256                                   # S = 4
    assert radixnet_permutations(n, 4, seed=seed) is None
    for k in (5, 6, 11, 40):
        rows = radixnet_permutations(n, k, seed=seed)
        assert rows.dtype == np.int64 and np.array_equal(np.sort(rows), np.arange(n))
        w = radixnet_layer(n, k, seed=seed)
        base = radixnet_base(n, place_value(n, k))
        assert same_csr(w, base[rows])
        assert same_csr(w[np.argsort(rows)], base)
        assert not same_csr(w, base)


def test_layers_are_deterministic_per_seed_in_any_order(seed):
    n, k = 512, 20
    late_first = radixnet_layer(n, k, seed=seed)
    radixnet_layer(n, k - 1, seed=seed)
    assert same_csr(late_first, radixnet_layer(n, k, seed=seed))
    other = radixnet_layer(n, k, seed=seed + 1)
    assert not same_csr(late_first, other)
    assert same_csr(radixnet_layer(n, 3, seed=seed), radixnet_layer(n, 3, seed=seed + 1))


def test_place_values_cycle():
    assert [place_value(1024, k) for k in range(1, 14)] == [1, 2, 4, 8, 16, 32, 1, 2, 4, 8, 16, 32, 1]
    assert [place_value(32, k) for k in range(1, 4)] == [1, 1, 1]


@pytest.mark.parametrize("bad", [0, 16, 48, 1000, 1024.0, "1024", True])
def test_bad_neurons_rejected(bad):
    with pytest.raises(OptionError, match="neurons"):
        radixnet_layer(bad, 1)


def test_bad_layer_and_seed_rejected():
    with pytest.raises(OptionError, match="layer"):
        radixnet_layer(1024, 0)
    with pytest.raises(OptionError, match="seed"):
        radixnet_layer(1024, 9, seed=-1)
    with pytest.raises(OptionError, match="layers"):
        radixnet_network(1024, 0)


def test_network_is_lazy_with_official_bias():
    net = radixnet_network(1024, 120, seed=5)
    assert isinstance(net, Network) and isinstance(net.layers, LazyLayers)
    assert net.neurons == 1024 and net.depth == 120
    assert net.edges == 32 * 1024 * 120
    assert net.uniform_bias() == -0.30
    assert same_csr(net.layers[99], radixnet_layer(1024, 100, seed=5))
    small = radixnet_network(64, 5, seed=5, bias=-0.2, materialize=True)
    assert isinstance(small.layers, list) and len(small.layers) == 5
    assert all(same_csr(w, radixnet_layer(64, k + 1, seed=5)) for k, w in enumerate(small.layers))


def test_network_needs_bias_off_the_official_sizes():
    with pytest.raises(OptionError, match="bias"):
        radixnet_network(64, 4)
    assert radixnet_network(64, 4, bias=-0.2).uniform_bias() == -0.2


def test_default_bias_extends_the_official_rule():
    assert [default_bias(n) for n in (1024, 4096, 16384, 65536)] == [-0.30, -0.35, -0.40, -0.45]
    assert default_bias(64) == -0.2 and default_bias(32) == -0.175 and default_bias(2048) == -0.325


# --- MNIST ---------------------------------------------------------------------------------

def test_load_mnist_shipped_file(mnist_path):
    images = load_mnist()
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    raw = gzip.decompress(mnist_path.read_bytes())
    assert hashlib.md5(raw).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"
    assert np.array_equal(images[59999], np.frombuffer(raw[-784:], dtype=np.uint8).reshape(28, 28))


def test_load_mnist_bad_files(tmp_path, mnist_path):
    with pytest.raises(DataNotFoundError, match="missing.gz"):
        load_mnist(tmp_path / "missing.gz")
    head = gzip.decompress(mnist_path.read_bytes())[:16 + 784 * 3]
    bad_magic = tmp_path / "magic.idx"
    bad_magic.write_bytes(b"\x00\x00\x08\x01" + head[4:])
    with pytest.raises(FormatError, match="magic.idx.*magic"):
        load_mnist(bad_magic)
    short = tmp_path / "short.idx.gz"
    short.write_bytes(gzip.compress(head))              # header says 60000 images, 3 present
    with pytest.raises(FormatError, match="short.idx.gz.*bytes, expected"):
        load_mnist(short)
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(gzip.compress(head)[:-20])
    with pytest.raises(FormatError, match="corrupt.gz"):
        load_mnist(corrupt)
    good = tmp_path / "three.idx"
    good.write_bytes(head[:4] + np.array([3], dtype=">u4").tobytes() + head[8:])
    assert load_mnist(good).shape == (3, 28, 28)


# --- features ------------------------------------------------------------------------------

def direct_features(images: np.ndarray, s_r: int, s_c: int) -> sp.csr_matrix:
    """The recipe of docs/challenge.md, Generator, the straightforward way: full fft2/ifft2 in memory."""
    count, h, w = images.shape
    a = images.transpose(1, 0, 2).reshape(h, count * w).astype(np.float64)
    shifted = np.fft.fftshift(np.fft.fft2(a))
    padded = np.zeros((s_r, s_c * count), dtype=np.complex128)
    # centred pad (or crop): keep the middle min(n, m) entries of each shifted axis
    kr, kc = min(h, s_r), min(w * count, s_c * count)
    padded[(s_r - kr) // 2:(s_r - kr) // 2 + kr, (s_c * count - kc) // 2:(s_c * count - kc) // 2 + kc] = \
        shifted[(h - kr) // 2:(h - kr) // 2 + kr, (w * count - kc) // 2:(w * count - kc) // 2 + kc]
    del shifted
    spectrum = np.fft.ifftshift(padded)
    del padded
    mag = np.abs(np.fft.ifft2(spectrum))
    del spectrum
    keep = (mag / mag.max()) > 0.5
    keep = keep.reshape(s_r, count, s_c).transpose(1, 2, 0).reshape(count, s_r * s_c)
    return sp.csr_matrix(keep.astype(np.float64))


def no_fallback(*args, **kwargs):
    raise AssertionError("the fast path fell back to reference_features")


@pytest.fixture(scope="module")
def features_1024():
    """challenge_features(1024) on the CPU, which must not need the reference fallback."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(features_module, "reference_features", no_fallback)
        return challenge_features(1024, device="cpu")


def test_features_1024_equal_official_rows(official_dir, features_1024):
    official = read_mtx(official_dir / "sparse-images-1024-first1200.mtx.gz")
    assert official.shape == (1200, 1024)
    x = features_1024
    assert x.shape == (60000, 1024) and x.dtype == np.float64 and x.has_sorted_indices
    assert x.indices.dtype == np.int32 and np.all(x.data == 1.0)
    assert same_csr(x[:1200], official.astype(np.float64))


def test_features_1024_official_total(features_1024):
    assert features_1024.nnz == 6_374_505


def test_features_samples_are_first_rows_of_the_whole_set(features_1024, monkeypatch):
    monkeypatch.setattr(features_module, "reference_features", no_fallback)
    part = challenge_features(1024, samples=300, device="cpu")
    assert same_csr(part, features_1024[:300])


@pytest.fixture(scope="module")
def some_images():
    return np.asarray(load_mnist()[:1500])


def fast_paths():
    """The short-axis passes that run here: the CPU kernels, and the array code of the GPU
    path with numpy arrays (the same code runs with CuPy on a GPU)."""
    return {"cpu": CpuShortAxis, "array": ArrayShortAxis}


@pytest.mark.parametrize("path", ["cpu", "array"])
@pytest.mark.parametrize("neurons", [1024, 4096, 32, 64, 128, 512, 2048])
def test_fast_features_equal_direct_fft(some_images, neurons, path, monkeypatch):
    """Square and rectangular images, padded and cropped axes: the fast paths give the
    straightforward fft2/ifft2 features, without the reference fallback."""
    s_r, s_c = image_shape(neurons)
    monkeypatch.setattr(features_module, "reference_features", no_fallback)
    fast = features_module._features(neurons, some_images, len(some_images), fast_paths()[path])
    assert fast.shape == (len(some_images), neurons) and fast.has_canonical_format
    assert fast.nnz > 0 and fast.indices.max() < neurons
    assert same_csr(fast, direct_features(some_images, s_r, s_c))


@pytest.mark.parametrize("neurons", [1024, 128])
def test_reference_features_equal_direct_fft(some_images, neurons):
    assert same_csr(reference_features(neurons, images=some_images),
                    direct_features(some_images, *image_shape(neurons)))


def test_ambiguous_pixels_fall_back_to_the_reference(some_images, monkeypatch):
    """A pixel within AMBIGUITY of the threshold sends the features to reference_features
    (here every pixel is, with AMBIGUITY = 1): same result, through the fallback."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("samples"))
        return reference_features(*args, **kwargs)

    monkeypatch.setattr(features_module, "AMBIGUITY", 1.0)
    monkeypatch.setattr(features_module, "reference_features", spy)
    images = some_images[:300]
    got = challenge_features(256, images=images, samples=120, device="cpu")
    assert calls == [120]
    assert same_csr(got, direct_features(images, 16, 16)[:120])


def test_features_do_not_depend_on_blocking(some_images, monkeypatch):
    """Chunks of the CPU pass, blocks of the array pass, batches of long rows: same features."""
    monkeypatch.setattr(features_module, "reference_features", no_fallback)
    images, n = some_images[:700], 4096
    a = features_module._features(n, images, len(images), CpuShortAxis, chunk_bytes=1)
    b = features_module._features(n, images, len(images), CpuShortAxis, chunk_bytes=1 << 30)
    c = features_module._features(n, images, 77, ArrayShortAxis, block_bytes=3 * 8 * n)
    assert same_csr(a, b) and same_csr(c, a[:77])
    plan_1 = features_module._plan(images, 64, 64, np, features_module.numpy_fft(), batch=1)
    plan_5 = features_module._plan(images, 64, 64, np, features_module.numpy_fft(), batch=5)
    assert np.array_equal(plan_1.g, plan_5.g) and np.array_equal(plan_1.g0, plan_5.g0)


def test_features_device():
    from spdnn.config import cupy_status
    from spdnn.errors import EngineUnavailableError

    assert features_device("cpu") == "cpu"
    assert features_device("auto") == ("gpu" if cupy_status()[0] else "cpu")
    with pytest.raises(OptionError, match="device"):
        features_device("tpu")
    if not cupy_status()[0]:
        with pytest.raises(EngineUnavailableError, match="device='gpu'"):
            challenge_features(64, device="gpu")


def test_image_shapes():
    assert image_shape(1024) == (32, 32) and image_shape(65536) == (256, 256)
    assert image_shape(32) == (4, 8) and image_shape(128) == (8, 16) and image_shape(2048) == (32, 64)
    with pytest.raises(OptionError, match="neurons"):
        image_shape(100)


def test_features_bad_arguments(some_images):
    with pytest.raises(OptionError, match="samples"):
        challenge_features(64, images=some_images, samples=len(some_images) + 1)
    with pytest.raises(OptionError, match="images"):
        challenge_features(64, images=np.zeros((3, 27, 28)))
    with pytest.raises(OptionError, match="zero"):
        challenge_features(64, images=np.zeros((3, 28, 28)))
    with pytest.raises(OptionError, match="neurons"):
        challenge_features(100, images=some_images)


@pytest.mark.gpu
@pytest.mark.parametrize("neurons", [1024, 4096, 65536])
def test_gpu_features_equal_cpu_and_official(neurons, request, monkeypatch):
    """The GPU path (cuFFT, cuBLAS) gives the CPU path's features for all 60,000 images,
    the official first 1,200 rows at N = 1024 (where the official data is present) and
    the official totals, without the reference fallback."""
    monkeypatch.setattr(features_module, "reference_features", no_fallback)
    totals = {1024: 6_374_505, 4096: 25_019_051, 65536: 392_191_985}
    gpu = challenge_features(neurons, device="gpu")
    assert gpu.shape == (60000, neurons) and gpu.nnz == totals[neurons]
    if neurons == 1024:
        official_dir = request.getfixturevalue("official_dir")
        official = read_mtx(official_dir / "sparse-images-1024-first1200.mtx.gz")
        assert same_csr(gpu[:1200], official.astype(np.float64))
    cpu = challenge_features(neurons, device="cpu")
    assert same_csr(gpu, cpu)


@pytest.mark.slow
def test_fast_features_equal_direct_fft_all_images():
    images = np.asarray(load_mnist())
    for neurons in (1024, 4096):
        s = image_shape(neurons)
        assert same_csr(challenge_features(neurons, device="cpu"), direct_features(images, *s))


@pytest.mark.slow
@pytest.mark.parametrize("neurons,total", [(4096, 25_019_051), (16384, 98_858_913), (65536, 392_191_985)])
def test_features_official_totals(neurons, total, monkeypatch):
    monkeypatch.setattr(features_module, "reference_features", no_fallback)
    x = challenge_features(neurons, device="cpu")
    assert x.shape == (60000, neurons) and x.nnz == total


# --- whole challenges ----------------------------------------------------------------------

@pytest.fixture
def small_mnist(monkeypatch):
    """The first 600 MNIST images stand in for the 60,000 (fast transforms)."""
    images = np.asarray(load_mnist()[:600])
    monkeypatch.setattr(mnist_module, "load_mnist", lambda path=None: images)
    return images


def tree_bytes(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_challenge_layout_and_round_trip(tmp_path, small_mnist):
    from spdnn.engines import get_engine
    from spdnn.formats import read_categories, read_features, read_network

    n, depth = 64, 8
    files = write_challenge(tmp_path / "a", n, depth, seed=7, samples=300)
    names = set(tree_bytes(tmp_path / "a"))
    expected = {f"neuron64/n64-l{k}.tsv" for k in range(1, depth + 1)}
    expected |= {"sparse-images-64.tsv.gz", "neuron64-l8-categories.tsv", "neuron64-l8-categories.json"}
    assert names == expected                       # nothing else (no temporary files left)
    assert files.layer_files == [tmp_path / "a" / "neuron64" / f"n64-l{k}.tsv" for k in range(1, depth + 1)]

    net = read_network(files.network, bias=default_bias(n), cache=False)
    assert net.depth == depth
    for k in range(depth):
        assert same_csr(net.layers[k], radixnet_layer(n, k + 1, seed=7))
    feats = read_features(files.features, n, samples=300, cache=False)
    assert same_csr(feats, challenge_features(n, samples=300))
    truth = read_categories(files.truth)
    reference = get_engine("reference", precision="fp64").run(radixnet_network(n, depth, seed=7, bias=-0.2), feats)
    assert np.array_equal(truth, reference.categories)
    info = json.loads(files.info.read_text())
    assert info["precision"] == "fp64" and info["engine"] == fastest_exact_engine()
    assert (info["neurons"], info["layers"], info["seed"], info["samples"]) == (64, 8, 7, 300)
    assert info["categories_count"] == len(truth) and info["generator_version"] == GENERATOR_VERSION
    assert "seconds" not in info
    for path in files.layer_files:                 # the size the free-space check counts on
        assert path.stat().st_size == layer_file_bytes(n)


def test_write_challenge_same_seed_same_bytes(tmp_path, small_mnist):
    # (not N=32: there M=2 and K_1 is all ones, which every permutation leaves unchanged)
    write_challenge(tmp_path / "a", 64, 4, seed=1, samples=100)
    write_challenge(tmp_path / "b", 64, 4, seed=1, samples=100)
    write_challenge(tmp_path / "c", 64, 4, seed=2, samples=100)
    a, b, c = (tree_bytes(tmp_path / d) for d in "abc")
    assert a == b
    assert a["neuron64/n64-l2.tsv"] == c["neuron64/n64-l2.tsv"]          # layers 1..S: no permutation
    assert a["neuron64/n64-l3.tsv"] != c["neuron64/n64-l3.tsv"]
    assert a["sparse-images-64.tsv.gz"] == c["sparse-images-64.tsv.gz"]


def test_generate_challenge_truth_is_the_fp64_reference(small_mnist):
    from spdnn.engines import get_engine

    net, feats, truth, info = generate_challenge(128, 10, seed=4, samples=200, truth_engine="reference")
    assert feats.shape == (200, 128) and truth.dtype == np.int64
    assert info["engine"] == "reference" and info["bias"] == default_bias(128)
    again = get_engine("reference", precision="fp64").run(net, feats)
    assert np.array_equal(truth, again.categories)
    with pytest.raises(OptionError, match="samples"):
        generate_challenge(128, 10, samples=0)


def test_cached_features_of_every_image_are_the_full_set(tmp_path, monkeypatch, small_mnist):
    """Asking for every image by count caches them as the full set, which then serves
    any subset (``spdnn bench`` asks for 60,000, ``spdnn run`` for all)."""
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    count = small_mnist.shape[0]
    _, feats, _, _ = cached_challenge(64, 4, samples=count)
    names = sorted(p.name for p in (tmp_path / "cache" / "generated").glob("features-*"))
    assert len(names) == 1 and "-all-" in names[0]
    _, every, _, _ = cached_challenge(64, 4)
    _, head, _, _ = cached_challenge(64, 4, samples=100)
    assert same_csr(every, feats) and same_csr(head, feats[:100])
    assert len(list((tmp_path / "cache" / "generated").glob("features-*"))) == 1   # no subset file made


def test_cached_challenge_reuses_features_and_truth(tmp_path, monkeypatch, small_mnist):
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    net, feats, truth, info = cached_challenge(64, 12, seed=3, samples=250)
    assert info["cached"] is False
    start = time.perf_counter()
    net2, feats2, truth2, info2 = cached_challenge(64, 12, seed=3, samples=250)
    assert time.perf_counter() - start < 1.0
    assert info2["cached"] is True
    assert same_csr(feats, feats2) and np.array_equal(truth, truth2)
    assert same_csr(net.layers[11], net2.layers[11])
    _, _, direct_truth, _ = generate_challenge(64, 12, seed=3, samples=250)
    assert np.array_equal(truth, direct_truth)
    # a corrupt cache file is rebuilt, not a crash
    for path in (tmp_path / "cache" / "generated").iterdir():
        path.write_bytes(b"garbage")
    _, feats3, truth3, info3 = cached_challenge(64, 12, seed=3, samples=250)
    assert info3["cached"] is False
    assert same_csr(feats, feats3) and np.array_equal(truth, truth3)


def test_stored_features_serve_cached_challenge(tmp_path, monkeypatch, small_mnist, rng):
    """store_cached_features (inputs carried from another machine) replaces generation."""
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    count = small_mnist.shape[0]
    stored = random_features(rng, count, 64, density=0.1)
    assert store_cached_features(stored).exists()
    network, feats, truth, _ = cached_challenge(64, 3, samples=50)
    assert same_csr(feats, stored[:50])              # random, not MNIST: the stored set was used
    assert np.array_equal(truth, ReferenceEngine(precision="fp64").run(network, stored[:50]).categories)
    with pytest.raises(OptionError, match=f"the full set of {count}"):
        store_cached_features(stored[:10])
    with pytest.raises(OptionError, match="neurons=100"):
        store_cached_features(sp.csr_matrix((count, 100)))


def test_layer_file_bytes_is_exact(tmp_path):
    from spdnn.formats import write_layer_tsv

    for n in (32, 1024, 4096):
        path = tmp_path / f"l{n}.tsv"
        write_layer_tsv(path, radixnet_layer(n, 3, seed=1))
        assert path.stat().st_size == layer_file_bytes(n)
    assert challenge_module._digits_total(9) == 9 and challenge_module._digits_total(100) == 9 + 180 + 3


def test_generate_logs_each_step_and_times_it(small_mnist):
    lines = []
    _, _, truth, info = generate_challenge(64, 4, samples=100, log=lines.append)
    assert [line.split(":")[0] for line in lines] == ["features N=64", "truth 64x4"]
    assert fastest_exact_engine() in lines[1]
    assert set(info["seconds"]) == {"features", "truth"} and min(info["seconds"].values()) > 0


# --- writing the official layout: nothing partial, ever ------------------------------------

def staging_folders(out) -> list:
    return sorted(out.glob(".spdnn-generate-*"))


def test_write_challenge_checks_everything_before_touching_out(tmp_path, small_mnist):
    """Issue 12: OUT is not created for a bad N, L, samples, seed or truth engine."""
    out = tmp_path / "out"
    for kwargs in ({"neurons": 100}, {"layers": 0}, {"samples": 0}, {"seed": -1}, {"truth_engine": "nope"}):
        args = {"neurons": 64, "layers": 4, **kwargs}
        with pytest.raises(OptionError):
            write_challenge(out, args.pop("neurons"), args.pop("layers"), **args)
        assert not out.exists()
    result = cli_invoke("generate", "-n", 100, "-l", 4, "--out", out)
    assert result.exit_code == 2 and "--neurons 100" in result.stderr and not out.exists()


def test_write_challenge_replaces_an_older_network_whole(tmp_path, small_mnist):
    out = tmp_path / "out"
    write_challenge(out, 64, 8, samples=100)
    (out / "neuron64" / "mine.txt").write_text("x")
    (out / "other.txt").write_text("kept")
    write_challenge(out, 64, 4, samples=100)
    assert sorted(p.name for p in (out / "neuron64").iterdir()) == [f"n64-l{k}.tsv" for k in range(1, 5)]
    assert (out / "other.txt").read_text() == "kept" and (out / "neuron64-l8-categories.tsv").exists()
    assert staging_folders(out) == []


def test_write_challenge_disk_full_leaves_out_as_it_was(tmp_path, small_mnist, monkeypatch):
    """Issue 12, item 1: ENOSPC while writing the third layer: DiskFullError naming that file
    where it was to go, every file of the earlier write untouched, no staging folder left."""
    import spdnn.formats as formats

    out = tmp_path / "out"
    write_challenge(out, 64, 4, seed=1, samples=100)
    before = tree_bytes(out)
    real = formats.write_layer_tsv

    def full_on_third(path, w):
        if path.name == "n64-l3.tsv":
            with open(path, "wb") as fh:
                fh.write(b"1\t2\t")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, w)

    monkeypatch.setattr(formats, "write_layer_tsv", full_on_third)
    with pytest.raises(DiskFullError) as caught:
        write_challenge(out, 64, 6, seed=2, samples=100)
    assert caught.value.path == str(out / "neuron64" / "n64-l3.tsv")
    assert "no space left on device" in str(caught.value)
    assert tree_bytes(out) == before and staging_folders(out) == []


def test_write_challenge_checks_free_space_first(tmp_path, small_mnist, monkeypatch):
    """Not enough room for the layer files: DiskFullError with the bytes needed, nothing written."""
    import collections
    import shutil

    Usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "out"
    with pytest.raises(DiskFullError) as caught:
        write_challenge(out, 64, 4, samples=100)
    assert caught.value.needed >= 4 * layer_file_bytes(64) and caught.value.free == 1000
    assert caught.value.path == str(out / "neuron64")
    assert list(out.iterdir()) == []


def test_stale_staging_folders_are_removed_live_ones_kept(tmp_path, small_mnist):
    import fcntl

    out = tmp_path / "out"
    dead, live = out / ".spdnn-generate-dead.tmp", out / ".spdnn-generate-live.tmp"
    for stage in (dead, live):
        (stage / "neuron64").mkdir(parents=True)
        (stage / "neuron64" / "n64-l1.tsv").write_bytes(b"x" * 1000)
        (stage / ".lock").touch()
    (out / ".sparse-images-64.tsv.gz.abc123.tmp").write_bytes(b"old")       # an atomic writer's, old
    os.utime(out / ".sparse-images-64.tsv.gz.abc123.tmp", (1, 1))
    with open(live / ".lock", "r+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)                            # its writer is alive
        write_challenge(out, 64, 4, samples=100)
        assert not dead.exists() and live.exists()
    assert not (out / ".sparse-images-64.tsv.gz.abc123.tmp").exists()


KILLED_WRITER = """
import os, sys, time
import numpy as np
import spdnn.formats as formats
from spdnn.generate import mnist, write_challenge

images = np.asarray(mnist.load_mnist()[:600])
mnist.load_mnist = lambda path=None: images
real = formats.write_layer_tsv

def slow(path, w):
    real(path, w)
    if path.name == "n64-l2.tsv":
        print("WRITING", flush=True)
        time.sleep(120)

formats.write_layer_tsv = slow
write_challenge(sys.argv[1], 64, 6, samples=100)
"""


def test_killed_generate_leaves_nothing_after_a_rerun(tmp_path, small_mnist):
    """Issue 12, item 10: ``kill -9`` in the middle of writing leaves a staging folder, which
    the next run removes (its lock died with its writer); the rerun's output is complete."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out)], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout.readline().strip() == "WRITING"
        assert len(staging_folders(out)) == 1 and not (out / "neuron64").exists()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert len(staging_folders(out)) == 1                 # what a killed run leaves
    files = write_challenge(out, 64, 4, samples=100)
    assert staging_folders(out) == [] and sorted(p.name for p in out.iterdir()) == [
        "neuron64", "neuron64-l4-categories.json", "neuron64-l4-categories.tsv", "sparse-images-64.tsv.gz"]
    assert len(files.layer_files) == 4 and all(p.exists() for p in files.layer_files)


# --- the generated-data cache: optional, shared, self-cleaning -----------------------------

def test_unwritable_cache_warns_once_and_keeps_the_data(tmp_path, monkeypatch, small_mnist):
    """Issue 12, item 2: a cache that cannot be created (here: below a file) gives one
    warning naming it, and the data and truth all the same."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(SpdnnWarning, match="cache .*file/cache/generated cannot be written") as seen:
        _, feats, truth, info = cached_challenge(64, 4, samples=150)
    assert len(seen) == 1 and info["cached"] is False
    _, _, direct_truth, _ = generate_challenge(64, 4, samples=150)
    assert np.array_equal(truth, direct_truth)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_cache_write_failure_warns_once_and_leaves_nothing(tmp_path, monkeypatch, small_mnist, code):
    """A full (or read-only) file system under the cache: one warning (naming the space for a
    full disk), no partial file, the run goes on; the next call, with room, caches."""
    import spdnn.formats.npz as npz

    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    real = np.savez

    def failing(file, *args, **kwargs):
        file.write(b"PK\x03\x04")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(np, "savez", failing)
    with pytest.warns(SpdnnWarning) as seen:
        _, feats, truth, info = cached_challenge(64, 4, samples=150)
    assert len(seen) == 1
    message = str(seen[0].message)
    assert str(tmp_path / "cache") in message
    if code == errno.ENOSPC:
        assert "no space left on device" in message and "free" in message
    folder = tmp_path / "cache" / "generated"
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]          # nothing partial, no truth either
    assert npz is not None
    monkeypatch.setattr(np, "savez", real)
    _, feats2, truth2, info2 = cached_challenge(64, 4, samples=150)
    assert same_csr(feats, feats2) and np.array_equal(truth, truth2) and info2["cached"] is False
    assert len(list(folder.glob("*.npz"))) == 1 and len(list(folder.glob("truth-*.json"))) == 1


def test_cache_removes_temporaries_of_killed_writers(tmp_path, monkeypatch, small_mnist):
    """No other process uses the cache: every temporary file is a killed writer's and goes.
    Another process holds the cache: only temporaries over an hour old go."""
    import fcntl

    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "generated"
    folder.mkdir(parents=True)
    fresh, old = folder / ".features-n64-all-v2.npz.a1.tmp", folder / ".truth-x.json.b2.tmp"
    for path in (fresh, old):
        path.write_bytes(b"x" * 100)
    os.utime(old, (1, 1))
    (folder / ".lock").touch()
    with open(folder / ".lock", "r+b") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_SH)                    # a concurrent run
        cached_challenge(64, 2, samples=50)
        assert fresh.exists() and not old.exists()
    cached_challenge(64, 2, samples=50)
    assert not fresh.exists()


CONCURRENT_RUN = """
import json, sys
import numpy as np
from spdnn.generate import mnist, cached_challenge

images = np.asarray(mnist.load_mnist()[:600])
mnist.load_mnist = lambda path=None: images
_, feats, truth, info = cached_challenge(64, 6, samples=400)
print(json.dumps({"truth": truth.tolist(), "nnz": int(feats.nnz)}))
"""


def test_concurrent_runs_share_one_cache(tmp_path):
    """Issue 12: three processes fill an empty cache at once: each gets the same data, the
    cache ends with one features file and one truth, no temporary file, and serves a fourth."""
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SPDNN_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_RUN], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0
        results.append(json.loads(out))
    assert all(r == results[0] for r in results)
    folder = cache / "generated"
    assert sorted(p.suffix for p in folder.iterdir() if not p.name.startswith(".")) == [".json", ".npz"]
    assert list(folder.glob(".*.tmp")) == []
    fourth = subprocess.run([sys.executable, "-c", CONCURRENT_RUN], capture_output=True, text=True, env=env)
    assert fourth.returncode == 0 and json.loads(fourth.stdout) == results[0]


# --- what ``spdnn run`` and ``spdnn generate`` show of the generator -------------------------

def cli_invoke(*args):
    from click.testing import CliRunner

    from spdnn.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_first_run_prints_status_without_a_terminal_and_times_the_truth_apart(tmp_path, monkeypatch,
                                                                               small_mnist):
    """Issue 12 (small ones): the first ``spdnn run`` says what it is making on stderr even
    when stderr is not a terminal; the truth's seconds are reported apart from ``read``."""
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    real = challenge_module._truth_engine

    class Slow:
        def __init__(self, engine):
            self.engine, self.name = engine, engine.name

        def run(self, *args):
            time.sleep(2.0)
            return self.engine.run(*args)

    monkeypatch.setattr(challenge_module, "_truth_engine", lambda name, progress: Slow(real(name, progress)))
    result = cli_invoke("run", "-n", 64, "-l", 4, "--samples", 200, "--engine", "reference", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["passed"] is True and summary["truth_seconds"] >= 2.0
    assert summary["read_seconds"] < summary["truth_seconds"]
    status = result.stderr.splitlines()
    assert status[0].startswith("generated data N=64: first use") and str(tmp_path / "cache") in status[0]
    assert any(line.startswith("truth 64x4: computing it in float64") for line in status)
    again = cli_invoke("run", "-n", 64, "-l", 4, "--samples", 200, "--engine", "reference")
    assert again.exit_code == 0 and again.stderr == "" and "truth:" not in again.stdout
    quiet = cli_invoke("run", "-n", 64, "-l", 5, "--samples", 200, "--engine", "reference", "--no-progress")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_run_with_an_unwritable_cache_warns_once_and_passes(tmp_path, monkeypatch, small_mnist):
    """Issue 12, item 2, through the CLI: the default job's kind of run, no writable cache."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(blocker / "cache"))
    result = cli_invoke("run", "-n", 64, "-l", 4, "--samples", 200, "--engine", "reference", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout
    warnings_seen = [line for line in result.stderr.splitlines() if line.startswith("spdnn: warning:")]
    assert len(warnings_seen) == 1 and "cannot be written" in warnings_seen[0]
