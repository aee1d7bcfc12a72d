"""The binary cache: keyed by content, reused, rebuilt when damaged, shared, cleaned, reported."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.formats import cache as fcache
from spdnn.formats import cache_info, clear_cache, features, networks, read_features, read_network
from spdnn.formats import write_features_tsv, write_layer_tsv
from spdnn.errors import ChecksumError, SpdnnWarning
from spdnn.network import LazyLayers

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(root))
    return root / "binary" / f"v{fcache.CACHE_VERSION}"


@pytest.fixture
def parse_counter(monkeypatch):
    """Counts layer and feature parses (text reads), so a test can tell a cache hit from a miss."""
    calls = {"layers": 0, "features": 0}
    layer_stream = networks.parse_layer_stream
    stream_features = features._stream_to_npz

    def counting_layer(*args, **kwargs):
        calls["layers"] += 1
        return layer_stream(*args, **kwargs)

    def counting_features(*args, **kwargs):
        calls["features"] += 1
        return stream_features(*args, **kwargs)

    monkeypatch.setattr(networks, "parse_layer_stream", counting_layer)
    monkeypatch.setattr(features, "_stream_to_npz", counting_features)
    return calls


def official_valued_layer(rng, n, density=0.1):
    w = sp.random(n, n, density=density, format="csr", random_state=rng)
    w.data[:] = 0.0625
    return w


def small_network(rng, directory, n=48, depth=3):
    directory.mkdir(parents=True, exist_ok=True)
    layers = []
    for k in range(1, depth + 1):
        w = sp.random(n, n, density=0.1, format="csr", random_state=rng)
        write_layer_tsv(directory / f"n{n}-l{k}.tsv", w)
        layers.append(w)
    return layers


def assert_same_network(a, b):
    assert a.depth == b.depth and a.neurons == b.neurons
    for x, y in zip(a.layers, b.layers):
        assert (x != y).nnz == 0 and x.dtype == y.dtype == np.float64


def entries(root, kind="network"):
    return sorted(root.glob(f"{kind}-*"))


def is_mapped(array) -> bool:
    """Whether ``array`` is a view of a memory-mapped file."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = getattr(array, "base", None)
    return False


def rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """What `cp -p` / `rsync -t` / `touch -d` leave: other bytes, the same size and mtime."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


# --- reuse and keys -----------------------------------------------------------------------

def test_network_cache_reused_and_memory_mapped(rng, tmp_path, cache_root, parse_counter):
    written = small_network(rng, tmp_path / "neuron48")
    first = read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 3 and len(entries(cache_root)) == 1
    second = read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 3  # no text parsed
    assert_same_network(first, second)
    assert isinstance(second.layers, LazyLayers) and second.edges == sum(w.nnz for w in written)
    w = second.layers[1]
    assert w.has_canonical_format and (w != written[1]).nnz == 0
    assert is_mapped(w.indices)  # mapped from the entry, not copied
    # cache=False neither reads nor writes the cache, and still streams (lazy layers).
    third = read_network(tmp_path, bias=-0.3, cache=False)
    assert parse_counter["layers"] == 6 and len(entries(cache_root)) == 1
    assert isinstance(third.layers, LazyLayers)
    assert_same_network(first, third)


def test_rewrite_keeping_size_and_mtime_is_seen(rng, tmp_path, cache_root, parse_counter):
    """A stale entry must never be served: the key is the content, not (size, mtime)."""
    directory = tmp_path / "neuron48"
    directory.mkdir()
    path = directory / "n48-l1.tsv"
    w = official_valued_layer(rng, 48)
    write_layer_tsv(path, w)
    assert read_network(tmp_path, bias=-0.3).layers[0].data[0] == 0.0625
    text = path.read_bytes()
    rewrite_keeping_size_and_mtime(path, text.replace(b"6.250000e-02", b"1.250000e-01"))
    net = read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 2
    assert np.all(net.layers[0].data == 0.125)
    assert len(entries(cache_root)) == 1  # the stale entry of this source was removed


def test_touch_reparses_but_keeps_the_entry(rng, tmp_path, cache_root, parse_counter):
    small_network(rng, tmp_path / "neuron48")
    read_network(tmp_path, bias=-0.3)
    (before,) = entries(cache_root)
    path = tmp_path / "neuron48" / "n48-l2.tsv"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 6  # the state changed: hashed again while parsed
    assert entries(cache_root) == [before]  # same bytes, same entry
    read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 6  # and the new state is remembered


def test_layers_asked_for_are_part_of_the_key(rng, tmp_path, cache_root, parse_counter):
    written = small_network(rng, tmp_path / "neuron48", depth=4)
    sub = read_network(tmp_path, layers=[4, 2], bias=-0.3)
    assert sub.depth == 2 and (sub.layers[0] != written[3]).nnz == 0 and (sub.layers[1] != written[1]).nnz == 0
    full = read_network(tmp_path, bias=-0.3)
    assert full.depth == 4 and parse_counter["layers"] == 6 and len(entries(cache_root)) == 2
    assert full.truncated(2).edges == written[0].nnz + written[1].nnz


def test_same_bytes_elsewhere_share_the_entry(rng, tmp_path, cache_root, parse_counter):
    small_network(rng, tmp_path / "a" / "neuron48")
    small_network(np.random.default_rng(rng.integers(1 << 30)), tmp_path / "b" / "neuron48")
    for k in (1, 2, 3):
        (tmp_path / "b" / "neuron48" / f"n48-l{k}.tsv").write_bytes(
            (tmp_path / "a" / "neuron48" / f"n48-l{k}.tsv").read_bytes())
    a = read_network(tmp_path / "a", bias=-0.3)
    b = read_network(tmp_path / "b", bias=-0.3)
    assert_same_network(a, b)
    assert len(entries(cache_root)) == 1


def test_archive_cache_and_invalidation(rng, tmp_path, cache_root, parse_counter):
    layers = small_network(rng, tmp_path / "src", n=32, depth=2)
    archive = tmp_path / "neuron32.tar.gz"

    def pack():
        with tarfile.open(archive, "w:gz") as tar:
            for k in (2, 1):  # members out of order
                tar.add(tmp_path / "src" / f"n32-l{k}.tsv", arcname=f"neuron32/n32-l{k}.tsv")

    pack()
    net = read_network(archive, bias=-0.1)
    net2 = read_network(archive, bias=-0.1)
    assert parse_counter["layers"] == 2
    assert_same_network(net, net2)
    assert (net2.layers[0] != layers[0]).nnz == 0 and (net2.layers[1] != layers[1]).nnz == 0
    write_layer_tsv(tmp_path / "src" / "n32-l1.tsv", sp.identity(32, format="csr") * 0.5)
    pack()
    changed = read_network(archive, bias=-0.1)
    assert parse_counter["layers"] == 4 and np.all(changed.layers[0].data == 0.5)
    assert len(entries(cache_root)) == 1


@pytest.mark.parametrize("damage", ["layer-garbage", "layer-truncated", "layer-missing", "meta-garbage"])
def test_damaged_cache_entry_is_rebuilt(rng, tmp_path, cache_root, parse_counter, damage):
    small_network(rng, tmp_path / "neuron48")
    good = read_network(tmp_path, bias=-0.3)
    (entry,) = entries(cache_root)
    layer = entry / "l00002.npy"
    if damage == "layer-garbage":
        layer.write_bytes(b"not an npy file" * 10)
    elif damage == "layer-truncated":
        layer.write_bytes(layer.read_bytes()[:-8])
    elif damage == "layer-missing":
        layer.unlink()
    else:
        (entry / "meta.json").write_text("{not json")
    again = read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 6
    assert_same_network(good, again)


@pytest.mark.parametrize("array", ["indices", "indptr", "values"])
def test_same_size_overwrite_of_a_cached_layer_is_caught(rng, tmp_path, cache_root, parse_counter, monkeypatch,
                                                         array):
    """Issue 19, item 5: a layer file changed in place (same size, valid header) is caught by
    its CRC-32 on the first map in a process, names the file, and the next read re-parses."""
    small_network(rng, tmp_path / "neuron48")
    good = read_network(tmp_path, bias=-0.3)
    (entry,) = entries(cache_root)
    name = "l00002.values.npy" if array == "values" else "l00002.npy"
    arr = np.load(entry / name, mmap_mode="r+")
    if array == "indices":
        arr[49:] = arr[49:][::-1].copy()       # same columns, another order: a valid-looking CSR
    elif array == "indptr":
        arr[10] = arr[10] + 1
    else:
        arr[:] = arr[::-1].copy()
    arr.flush()
    del arr
    monkeypatch.setattr(fcache, "_verified", set())  # a new process
    damaged = read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 3  # served from the cache ...
    with pytest.raises(ChecksumError, match=rf"{name}: damaged binary cache file"):
        damaged.layers[1]                # ... and caught on the first map
    again = read_network(tmp_path, bias=-0.3)
    assert parse_counter["layers"] == 6  # the entry was dropped: parsed again
    assert_same_network(good, again)


def test_layer_checksum_is_checked_once_per_process(rng, tmp_path, cache_root, monkeypatch):
    small_network(rng, tmp_path / "neuron48")
    net = read_network(tmp_path, bias=-0.3)
    monkeypatch.setattr(fcache, "_verified", set())
    calls = []
    crc = fcache._crc
    monkeypatch.setattr(fcache, "_crc", lambda a: calls.append(1) or crc(a))
    net.layers[0]
    first = len(calls)
    assert first == 2  # the index file and the values file (random weights are stored)
    for _ in range(3):
        net.layers[0]
    assert len(calls) == first


# --- features ----------------------------------------------------------------------------

def test_features_cache(rng, tmp_path, cache_root, parse_counter):
    x = sp.random(30, 20, density=0.2, format="csr", random_state=rng)
    x.data[:] = 1.0
    path = tmp_path / "sparse-images-20.tsv"
    write_features_tsv(path, x)
    a = read_features(path, neurons=20, samples=30)
    b = read_features(path, neurons=20, samples=30)
    assert parse_counter["features"] == 1 and (a != b).nnz == 0 and b.has_canonical_format
    assert b.data.strides == (0,)  # values of 1 are not stored
    read_features(path, neurons=20, samples=40)  # a different request, a different entry
    assert parse_counter["features"] == 2 and len(entries(cache_root, "features")) == 2
    y = x.copy()
    y.data[:] = 2.0
    write_features_tsv(path, y)
    c = read_features(path, neurons=20, samples=30)
    assert parse_counter["features"] == 3 and np.all(c.data == 2.0) and c.shape == (30, 20)


def test_features_rewrite_keeping_size_and_mtime(tmp_path, cache_root):
    path = tmp_path / "f.tsv"
    path.write_bytes(b"1\t1\t1\n2\t2\t1\n")
    assert read_features(path, neurons=3, samples=2).toarray().tolist() == [[1, 0, 0], [0, 1, 0]]
    rewrite_keeping_size_and_mtime(path, b"1\t3\t1\n2\t2\t1\n")
    assert read_features(path, neurons=3, samples=2).toarray().tolist() == [[0, 0, 1], [0, 1, 0]]


# --- an unwritable cache, leftovers, sharing ----------------------------------------------

def test_unwritable_cache_warns_once_and_still_streams(rng, tmp_path, monkeypatch, parse_counter):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(blocker))
    monkeypatch.setattr(fcache, "_warned", set())
    written = small_network(rng, tmp_path / "neuron48")
    with pytest.warns(SpdnnWarning, match="cannot write the binary cache .*file.*reading into a temporary folder"):
        net = read_network(tmp_path, bias=-0.3)
    assert isinstance(net.layers, LazyLayers) and (net.layers[2] != written[2]).nnz == 0
    folder = net.layers._make.folder
    assert folder.is_dir() and not str(folder).startswith(str(blocker))
    assert read_network(tmp_path, bias=-0.3).depth == 3  # no second warning (warnings are errors here)
    assert parse_counter["layers"] == 6
    del net
    import gc

    gc.collect()
    assert not folder.exists()  # the private copy went with the network


def test_full_disk_falls_back_to_memory(rng, tmp_path, cache_root, monkeypatch, parse_counter):
    import errno

    written = small_network(rng, tmp_path / "neuron48")
    monkeypatch.setattr(fcache, "_warned", set())

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fcache.np, "save", full)
    with pytest.warns(SpdnnWarning) as record:
        net = read_network(tmp_path, bias=-0.3)
    messages = [str(r.message) for r in record]
    assert any("binary cache" in m and "No space left" in m for m in messages)
    assert any("reading into memory" in m for m in messages)
    assert isinstance(net.layers, list) and (net.layers[0] != written[0]).nnz == 0
    assert not any(cache_root.glob("network-*")) and not any((cache_root / "tmp").iterdir())


def test_stale_scratch_of_a_killed_process_is_removed(rng, tmp_path, cache_root):
    small_network(rng, tmp_path / "neuron48", depth=6)
    script = textwrap.dedent("""
        import sys, time
        from spdnn.formats import cache, networks
        add = cache.LayerWriter.add
        def slow(self, k, w):
            add(self, k, w)
            print("wrote", k, flush=True)
            time.sleep(60)
        cache.LayerWriter.add = slow
        networks.read_network(sys.argv[1], bias=-0.3)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("wrote")
        scratch = [p for p in (cache_root / "tmp").iterdir() if p.is_dir()]
        assert len(scratch) == 1 and any(scratch[0].rglob("l*.npy"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert scratch[0].exists()  # what a kill -9 leaves
    fcache._cleaned.cache_clear()
    net = read_network(tmp_path, bias=-0.3)
    assert net.depth == 6 and not scratch[0].exists()
    assert [p.name for p in (cache_root / "tmp").iterdir()] == []


def test_a_live_scratch_folder_is_kept(tmp_path, cache_root):
    with fcache.scratch_dir() as mine:
        (mine / "x").write_bytes(b"in progress")
        assert fcache.clean_stale() == 0
        assert (mine / "x").exists()
    assert not mine.exists()


#: A process that reads the network in argv[1] and counts its layer parses (each slowed
#: down by argv[2] seconds, so that concurrent readers overlap).
COUNTING_READ = textwrap.dedent("""
    import sys, time
    from spdnn.formats import networks
    parse = networks.parse_layer_stream
    count = [0]
    def counting(*a, **k):
        count[0] += 1
        time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
        return parse(*a, **k)
    networks.parse_layer_stream = counting
    net = networks.read_network(sys.argv[1], bias=-0.3, progress=False)
""")


def test_concurrent_readers_parse_once(rng, tmp_path, cache_root):
    """Two processes (say, MPI ranks) ask for the same network: one parses, the other waits and maps."""
    small_network(rng, tmp_path / "neuron48", depth=4)
    script = COUNTING_READ + "print(count[0], net.edges, type(net.layers).__name__)\n"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), "0.3"], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(int(o[0]) for o in outs) == [0, 4]  # parsed once, by one of them
    assert outs[0][1:] == outs[1][1:] and outs[0][2] == "LazyLayers"
    assert len(entries(cache_root)) == 1


def test_older_cache_versions_are_removed(rng, tmp_path, cache_root):
    old = cache_root.parent / "network-0123.npz"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x" * 1000)
    (cache_root.parent / "v1").mkdir()
    small_network(rng, tmp_path / "neuron48")
    fcache._cleaned.cache_clear()
    read_network(tmp_path, bias=-0.3)
    assert sorted(p.name for p in cache_root.parent.iterdir()) == [cache_root.name]


def test_cache_info_and_clear(rng, tmp_path, cache_root):
    small_network(rng, tmp_path / "neuron48")
    assert cache_info()["total_bytes"] == 0
    read_network(tmp_path, bias=-0.3)
    x = sp.random(10, 48, density=0.3, format="csr", random_state=rng)
    write_features_tsv(tmp_path / "sparse-images-48.tsv", x)
    read_features(tmp_path / "sparse-images-48.tsv", neurons=48, samples=10)
    generated = cache_root.parents[1] / "generated"
    generated.mkdir()
    (generated / "features.npz").write_bytes(b"y" * 5000)
    info = cache_info()
    assert info["network_entries"] == 1 and info["features_entries"] == 1
    assert info["generated_bytes"] == 5000 and info["binary_bytes"] > 1000
    assert info["total_bytes"] == info["binary_bytes"] + info["generated_bytes"]
    freed = clear_cache()
    assert freed >= info["total_bytes"] - 4096  # records and locks may stay
    after = cache_info()
    assert after["network_entries"] == after["features_entries"] == 0 and after["generated_bytes"] == 0
    json.dumps(after)


def test_official_archive_cached(official_dir, cache_root):
    first = read_network(official_dir / "neuron1024.tar.gz", layers=20)
    t = time.perf_counter()
    second = read_network(official_dir / "neuron1024.tar.gz", layers=20)
    assert time.perf_counter() - t < 2.0
    assert_same_network(first, second)


def test_cache_command(rng, tmp_path, cache_root):
    from click.testing import CliRunner

    from spdnn.cli import cli

    small_network(rng, tmp_path / "neuron48")
    read_network(tmp_path, bias=-0.3)
    result = CliRunner().invoke(cli, ["cache", "info", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["network_entries"] == 1
    text = CliRunner().invoke(cli, ["cache", "info"]).stdout
    assert str(cache_root.parents[1]) in text and "1 networks" in text
    result = CliRunner().invoke(cli, ["cache", "clear"])
    assert result.exit_code == 0 and result.stdout.startswith("removed ")
    assert cache_info()["network_entries"] == 0


@pytest.mark.mpi
def test_mpi_ranks_read_the_cache_once(rng, tmp_path, cache_root):
    """Under mpiexec every rank calls read_network; one parses, the others map its files."""
    import shutil

    small_network(rng, tmp_path / "neuron48", depth=5)
    script = "from mpi4py import MPI\n" + COUNTING_READ + textwrap.dedent("""
        folder = str(net.layers._make.folder)
        got = MPI.COMM_WORLD.gather((count[0], folder, net.edges), root=0)
        if MPI.COMM_WORLD.rank == 0:
            print(" ".join(f"{c},{f},{e}" for c, f, e in got))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([shutil.which("mpiexec"), "-n", "3", sys.executable, "-c", script, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ranks = [r.split(",") for r in out.stdout.split()]
    assert sorted(int(r[0]) for r in ranks) == [0, 0, 5]          # parsed once
    assert len({r[1] for r in ranks}) == 1 and len({r[2] for r in ranks}) == 1  # the same mapped entry
    assert [p.name for p in entries(cache_root)] == [Path(ranks[0][1]).name]
