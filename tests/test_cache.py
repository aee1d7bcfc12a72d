"""The binary cache: reused on the next read, rebuilt when the source changes or the entry is damaged."""
from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.formats import cache as fcache
from spdnn.formats import official, read_features, read_network, write_features_tsv, write_layer_tsv
from spdnn.formats import tsv

from factories import random_layer


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(root))
    return root / "binary"


@pytest.fixture
def parse_counter(monkeypatch):
    """Counts layer and feature parses (text reads), so a test can tell a cache hit from a miss."""
    calls = {"layers": 0, "entries": 0}
    layer_stream = tsv.parse_layer_stream
    read_entries = official.read_entries

    def counting_layer(*args, **kwargs):
        calls["layers"] += 1
        return layer_stream(*args, **kwargs)

    def counting_entries(*args, **kwargs):
        calls["entries"] += 1
        return read_entries(*args, **kwargs)

    monkeypatch.setattr(official, "parse_layer_stream", counting_layer)
    monkeypatch.setattr(official, "read_entries", counting_entries)
    return calls


def small_network(rng, directory, n=48, depth=3):
    directory.mkdir(parents=True, exist_ok=True)
    layers = []
    for k in range(1, depth + 1):
        w = random_layer(rng, n, 0.1, values=(0.0, 1.0))
        write_layer_tsv(directory / f"n{n}-l{k}.tsv", w)
        layers.append(w)
    return layers


def assert_same_network(a, b):
    assert a.depth == b.depth and a.neurons == b.neurons
    for x, y in zip(a.layers, b.layers):
        assert (x != y).nnz == 0 and x.dtype == y.dtype == np.float64


def bump_mtime(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_cache_path_is_keyed_and_under_cache_dir(cache_root):
    a = fcache.cache_path("network", {"x": 1, "y": [1, 2]})
    assert a.parent == cache_root and a.name.startswith("network-") and a.suffix == ".npz"
    assert a == fcache.cache_path("network", {"y": [1, 2], "x": 1})
    assert a != fcache.cache_path("network", {"x": 2, "y": [1, 2]})
    assert a != fcache.cache_path("features", {"x": 1, "y": [1, 2]})


def test_network_cache_reused(rng, tmp_path, cache_root, parse_counter):
    small_network(rng, tmp_path / "neuron48")
    first = read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 3
    entries = list(cache_root.glob("network-*.npz"))
    assert len(entries) == 1
    second = read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 3  # no text parsed
    assert_same_network(first, second)
    assert all(w.has_canonical_format for w in second.layers)
    # cache=False neither reads nor writes the cache.
    read_network(tmp_path, bias=-0.3, cache=False)
    assert parse_counter["layers"] == 6 and len(list(cache_root.glob("*.npz"))) == 1


def test_network_cache_invalidated_by_touch_and_change(rng, tmp_path, cache_root, parse_counter):
    small_network(rng, tmp_path / "neuron48")
    read_network(tmp_path, bias=-0.3)
    bump_mtime(tmp_path / "neuron48" / "n48-l2.tsv")
    read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 6
    w = sp.identity(48, format="csr") * 0.5
    write_layer_tsv(tmp_path / "neuron48" / "n48-l2.tsv", w)
    net = read_network(tmp_path, bias=-0.3)
    assert (net.layers[1] != w).nnz == 0
    # Requested layers are part of the key.
    sub = read_network(tmp_path, layers=2, bias=-0.3)
    assert sub.depth == 2 and (sub.layers[1] != w).nnz == 0
    # Stale entries of a changed source were removed: one per request remains.
    assert len(list(cache_root.glob("network-*.npz"))) == 2


def test_archive_cache_and_invalidation(rng, tmp_path, cache_root, parse_counter):
    layers = small_network(rng, tmp_path / "src", n=32, depth=2)
    archive = tmp_path / "neuron32.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for k in (1, 2):
            tar.add(tmp_path / "src" / f"n32-l{k}.tsv", arcname=f"neuron32/n32-l{k}.tsv")
    net = read_network(archive, bias=-0.1)
    net2 = read_network(archive, bias=-0.1)
    assert parse_counter["layers"] == 2
    assert_same_network(net, net2)
    assert (net2.layers[0] != layers[0]).nnz == 0
    bump_mtime(archive)
    read_network(archive, bias=-0.1)
    assert parse_counter["layers"] == 4


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_cache_entry_is_rebuilt(rng, tmp_path, cache_root, parse_counter, damage):
    small_network(rng, tmp_path / "neuron48")
    good = read_network(tmp_path, bias=-0.3)
    (entry,) = cache_root.glob("network-*.npz")
    blob = entry.read_bytes()
    entry.write_bytes({"garbage": b"not a zip file" * 100, "truncated": blob[: len(blob) // 2], "empty": b""}[damage])
    again = read_network(tmp_path, bias=-0.3)  # pytest turns any warning into an error
    assert parse_counter["layers"] == 6
    assert_same_network(good, again)
    assert entry.read_bytes() == blob  # rewritten in full


def test_cache_entry_with_foreign_key_is_ignored(rng, tmp_path, cache_root, parse_counter):
    small_network(rng, tmp_path / "neuron48")
    read_network(tmp_path, bias=-0.3)
    (entry,) = cache_root.glob("network-*.npz")
    with np.load(entry) as z:
        arrays = {name: z[name] for name in z.files}
    arrays["__key__"] = np.frombuffer(b"another key", np.uint8)
    with open(entry, "wb") as fh:
        np.savez(fh, **arrays)
    read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 6


def test_features_cache(rng, tmp_path, cache_root, parse_counter):
    x = sp.random(30, 20, density=0.2, format="csr", random_state=rng)
    x.data[:] = 1.0
    path = tmp_path / "sparse-images-20.tsv"
    write_features_tsv(path, x)
    a = read_features(path, neurons=20)
    b = read_features(path, neurons=20)
    assert parse_counter["entries"] == 1 and (a != b).nnz == 0 and b.has_canonical_format
    read_features(path, neurons=20, samples=30)  # different request, different entry
    assert parse_counter["entries"] == 2
    y = x.copy()
    y.data[:] = 2.0
    write_features_tsv(path, y)
    c = read_features(path, neurons=20)
    assert parse_counter["entries"] == 3 and np.all(c.data == 2.0)


def test_unwritable_cache_is_not_an_error(rng, tmp_path, monkeypatch, parse_counter):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(blocker))
    small_network(rng, tmp_path / "neuron48")
    assert read_network(tmp_path, bias=-0.3).depth == 3
    assert read_network(tmp_path, bias=-0.3).depth == 3
    assert parse_counter["layers"] == 6


def test_official_archive_cached(official_dir, cache_root):
    import time

    first = read_network(official_dir / "neuron1024.tar.gz", layers=20)
    t = time.perf_counter()
    second = read_network(official_dir / "neuron1024.tar.gz", layers=20)
    assert time.perf_counter() - t < 2.0
    assert_same_network(first, second)
