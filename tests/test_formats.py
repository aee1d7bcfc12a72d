"""Readers and writers of the official layout and MatrixMarket: content, validation, speed paths."""
from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn._atomic import atomic_path
from spdnn.errors import DataNotFoundError, FormatError, OptionError
from spdnn.formats import (find_official, read_categories, read_features, read_layer, read_mtx, read_network,
                           write_categories, write_features_tsv, write_layer_tsv)
from spdnn.network import OFFICIAL_BIAS

from factories import random_layer, same_csr


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))


def write_network_dir(directory: Path, layers, n, gz=False):
    directory.mkdir(parents=True, exist_ok=True)
    for k, w in enumerate(layers, start=1):
        write_layer_tsv(directory / f"n{n}-l{k}.tsv{'.gz' if gz else ''}", w)


def make_tar(path: Path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# --- official data -------------------------------------------------------------------------

def test_official_network_from_archive(official_dir):
    net = read_network(official_dir / "neuron1024.tar.gz", cache=False)
    assert net.depth == 120 and net.neurons == 1024
    assert net.uniform_bias() == OFFICIAL_BIAS[1024]
    for w in net.layers:
        assert w.shape == (1024, 1024) and w.dtype == np.float64 and w.has_canonical_format
        assert np.all(np.diff(w.indptr) == 32)
        assert np.all(np.bincount(w.indices, minlength=1024) == 32)
        assert np.all(w.data == 0.0625)
    assert net.edges == 32 * 1024 * 120


def test_official_layers_subset_and_writer_bytes(official_dir, tmp_path):
    net = read_network(official_dir / "neuron1024.tar.gz", layers=6, cache=False)
    assert net.depth == 6
    with tarfile.open(official_dir / "neuron1024.tar.gz") as tar:
        for k in (1, 6):
            original = tar.extractfile(f"neuron1024/n1024-l{k}.tsv").read()
            out = tmp_path / f"n1024-l{k}.tsv"
            write_layer_tsv(out, net.layers[k - 1])
            assert out.read_bytes() == original


def test_official_features_truth_and_reference(official_dir):
    x = read_features(official_dir / "sparse-images-1024-first1200.mtx.gz", cache=False)
    assert x.shape == (1200, 1024) and x.nnz == 122713 and x.dtype == np.float64
    assert x.has_canonical_format and np.all(x.data == 1.0)
    truth = read_categories(official_dir / "neuron1024-l120-categories-first1200.mtx")
    assert truth.dtype == np.int64 and truth.size == 19
    assert np.all(np.diff(truth) > 0) and truth[0] >= 1 and truth[-1] <= 1200
    from spdnn.engines import get_engine
    net = read_network(official_dir / "neuron1024.tar.gz")
    result = get_engine("reference", precision="fp64").run(net, x)
    assert np.array_equal(result.categories, truth)


def test_find_official_in_shared_dir(official_dir):
    paths = find_official(official_dir)
    assert paths.neurons == 1024 and paths.layers == 120
    assert paths.network.name == "neuron1024.tar.gz"
    assert paths.features.name == "sparse-images-1024-first1200.mtx.gz"
    assert paths.truth.name == "neuron1024-l120-categories-first1200.mtx"


# --- layers and networks -------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_layer_roundtrip_exact(rng, tmp_path, gz):
    w = random_layer(rng, 50)
    path = tmp_path / ("w.tsv.gz" if gz else "w.tsv")
    write_layer_tsv(path, w)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    got = read_layer(path, neurons=50)
    assert got.dtype == np.float64 and got.has_canonical_format and same_csr(got, w)


def test_layer_official_value_format_and_order(tmp_path):
    w = sp.csr_matrix(([0.0625, 0.0625, 0.0625], ([2, 0, 1], [0, 1, 1])), shape=(3, 3))
    write_layer_tsv(tmp_path / "w.tsv", w)
    assert (tmp_path / "w.tsv").read_text() == "3\t1\t6.250000e-02\n1\t2\t6.250000e-02\n2\t2\t6.250000e-02\n"


@pytest.mark.parametrize("order", ["row", "column", "shuffled"])
def test_entry_order_does_not_matter(rng, tmp_path, order):
    w = random_layer(rng, 40, density=0.2)
    coo = w.tocoo()
    keys = {"row": np.lexsort((coo.col, coo.row)), "column": np.lexsort((coo.row, coo.col)),
            "shuffled": rng.permutation(coo.nnz)}[order]
    text = "".join(f"{r + 1}\t{c + 1}\t{v!r}\n" for r, c, v in zip(coo.row[keys].tolist(), coo.col[keys].tolist(),
                                                                  coo.data[keys].tolist()))
    (tmp_path / "w.tsv").write_text(text)
    got = read_layer(tmp_path / "w.tsv", neurons=40)
    assert got.has_canonical_format and same_csr(got, w)


def test_writer_blocks_and_caller_matrix_untouched(rng, tmp_path):
    from spdnn.formats import tsv

    x = sp.random(30, 12, density=0.4, format="csr", random_state=rng)
    x.data = np.round(x.data * 4) / 4  # a few distinct values
    write_features_tsv(tmp_path / "one.tsv", x)
    tsv._write_compressed(tmp_path / "blocks.tsv", x.indptr, x.indices, x.data, "%g", major_first=True,
                          entries_per_block=7)
    assert (tmp_path / "one.tsv").read_bytes() == (tmp_path / "blocks.tsv").read_bytes()
    assert same_csr(read_features(tmp_path / "blocks.tsv", neurons=12, samples=30, cache=False), x)
    # A non-canonical input (unsorted, duplicates) is written summed and sorted, and left as it was.
    m = sp.csr_matrix((np.array([1.0, 2.0, 3.0]), np.array([2, 0, 2]), np.array([0, 3, 3])), shape=(2, 3))
    before = (m.indices.copy(), m.data.copy())
    write_layer_tsv(tmp_path / "w.tsv", m)
    assert (tmp_path / "w.tsv").read_text() == "1\t1\t2.000000e+00\n1\t3\t4.000000e+00\n"
    assert np.array_equal(m.indices, before[0]) and np.array_equal(m.data, before[1])


def test_layer_size_from_max_index(tmp_path):
    (tmp_path / "w.tsv").write_text("1\t7\t0.5\n3\t2\t-2\n")
    w = read_layer(tmp_path / "w.tsv")
    assert w.shape == (7, 7) and w[0, 6] == 0.5 and w[2, 1] == -2.0


@pytest.mark.parametrize("text", ["6.250000e-02", "1", "-0.5", "1E3", "+2.5", ".5", "5.", "0", "-0.0",
                                  "0.1000000000000000055511151231257827", "123456789012345678901234",
                                  "1e-300", "2.2250738585072014e-308", "4.9e-324", "1.7976931348623157e308"])
def test_value_spellings_convert_exactly(tmp_path, text):
    (tmp_path / "w.tsv").write_text(f"1\t1\t{text}\n")
    got = read_layer(tmp_path / "w.tsv", neurons=1).toarray()[0, 0]
    assert got == float(text) or (float(text) == 0 and got == 0)


def test_random_values_roundtrip_bits(rng, tmp_path):
    values = np.concatenate([rng.standard_normal(500), rng.uniform(-1e-5, 1e5, 500),
                             np.round(rng.standard_normal(500), 3), [-0.0, 0.0]])
    lines = "".join(f"{i + 1}\t1\t{v!r}\n" for i, v in enumerate(values.tolist()))
    (tmp_path / "w.tsv").write_text(lines)
    got = read_layer(tmp_path / "w.tsv", neurons=values.size)
    assert np.all(np.diff(got.indptr) == 1)  # explicit zeros kept, one entry a row
    assert np.array_equal(got.data.view(np.int64), values.view(np.int64))  # bit for bit, -0.0 included


def test_network_from_directory_and_parent(rng, tmp_path):
    layers = [random_layer(rng, 64, values=0.0625) for _ in range(4)]
    write_network_dir(tmp_path / "neuron64", layers, 64, gz=True)
    for source in (tmp_path / "neuron64", tmp_path):
        net = read_network(source, bias=-0.2, cache=False)
        assert net.depth == 4 and net.neurons == 64 and net.uniform_bias() == -0.2
        assert all(same_csr(a, b) for a, b in zip(net.layers, layers))
    net = read_network(tmp_path, layers=[2, 3], bias=-0.2, cache=False)
    assert same_csr(net.layers[0], layers[1]) and same_csr(net.layers[1], layers[2])


def test_network_bias_default_official_only(rng, tmp_path):
    write_network_dir(tmp_path / "neuron64", [random_layer(rng, 64)], 64)
    with pytest.raises(OptionError, match="bias"):
        read_network(tmp_path, cache=False)


def test_network_official_bias_default(tmp_path):
    w = sp.identity(1024, format="csr") * 0.0625
    write_network_dir(tmp_path / "neuron1024", [w, w], 1024)
    net = read_network(tmp_path, cache=False)
    assert net.uniform_bias() == OFFICIAL_BIAS[1024] and net.depth == 2


def test_network_gap_names_missing_file(rng, tmp_path):
    d = tmp_path / "neuron64"
    write_network_dir(d, [random_layer(rng, 64) for _ in range(3)], 64)
    (d / "n64-l2.tsv").unlink()
    with pytest.raises(DataNotFoundError, match=r"n64-l2\.tsv"):
        read_network(d, bias=-0.3, cache=False)
    with pytest.raises(DataNotFoundError, match=r"n64-l4\.tsv"):
        read_network(d, layers=[1, 3, 4], bias=-0.3, cache=False)


def test_network_several_sizes_needs_choice(rng, tmp_path):
    write_network_dir(tmp_path / "neuron64", [random_layer(rng, 64)], 64)
    write_network_dir(tmp_path / "neuron32", [random_layer(rng, 32)], 32)
    with pytest.raises(OptionError, match=r"32, 64"):
        read_network(tmp_path, bias=-0.3, cache=False)
    assert read_network(tmp_path, neurons=32, bias=-0.3, cache=False).neurons == 32


def test_network_missing_source(tmp_path):
    with pytest.raises(DataNotFoundError):
        read_network(tmp_path / "nope", cache=False)
    with pytest.raises(DataNotFoundError, match="no network"):
        read_network(tmp_path, cache=False)


def test_network_from_small_archive(rng, tmp_path):
    layers = [random_layer(rng, 32) for _ in range(3)]
    write_network_dir(tmp_path / "src", layers, 32)
    members = {f"neuron32/n32-l{k}.tsv": (tmp_path / "src" / f"n32-l{k}.tsv").read_bytes() for k in (3, 1, 2)}
    make_tar(tmp_path / "neuron32.tar.gz", members)
    net = read_network(tmp_path / "neuron32.tar.gz", bias=-0.1, cache=False)
    assert net.depth == 3 and all(same_csr(a, b) for a, b in zip(net.layers, layers))
    with pytest.raises(DataNotFoundError, match=r"n32-l4\.tsv"):
        read_network(tmp_path / "neuron32.tar.gz", layers=4, bias=-0.1, cache=False)


def test_network_archive_with_gap(rng, tmp_path):
    data = b"1\t1\t1\n"
    make_tar(tmp_path / "neuron32.tar.gz", {"neuron32/n32-l1.tsv": data, "neuron32/n32-l3.tsv": data})
    with pytest.raises(DataNotFoundError, match=r"n32-l2\.tsv"):
        read_network(tmp_path / "neuron32.tar.gz", bias=-0.1, cache=False)


def test_network_truncated_archive(rng, tmp_path):
    layers = [random_layer(rng, 64, density=0.3) for _ in range(3)]
    write_network_dir(tmp_path / "src", layers, 64)
    members = {f"neuron64/n64-l{k}.tsv": (tmp_path / "src" / f"n64-l{k}.tsv").read_bytes() for k in (1, 2, 3)}
    make_tar(tmp_path / "full.tar.gz", members)
    blob = (tmp_path / "full.tar.gz").read_bytes()
    (tmp_path / "neuron64.tar.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FormatError, match=r"neuron64\.tar\.gz.*(truncated|corrupt)"):
        read_network(tmp_path / "neuron64.tar.gz", bias=-0.1, cache=False)


def test_network_corrupt_archive(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("neuron32/n32-l1.tsv")
        data = b"1\t1\t1\n" * 10
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    blob = bytearray(raw.getvalue())
    blob[148:156] = b"garbage!"  # the header checksum field
    (tmp_path / "neuron32.tar.gz").write_bytes(gzip.compress(bytes(blob)))
    with pytest.raises(FormatError, match="truncated or corrupt"):
        read_network(tmp_path / "neuron32.tar.gz", bias=-0.1, cache=False)


def test_network_bad_member_names_member_and_line(tmp_path):
    make_tar(tmp_path / "neuron32.tar.gz", {"neuron32/n32-l1.tsv": b"1\t1\t1\n2\t40\t1\n"})
    with pytest.raises(FormatError) as err:
        read_network(tmp_path / "neuron32.tar.gz", bias=-0.1, cache=False)
    assert "neuron32.tar.gz:neuron32/n32-l1.tsv:2:" in str(err.value) and "1..32" in str(err.value)


# --- validation: each error names the file, the line and what was wrong --------------------

BAD_LAYERS = [
    ("1\t1\t1\n2\t2\n", 2, "wrong number of fields: found 2, expected 3"),
    ("1\t1\t1\n2\t2\t1\t9\n", 2, "wrong number of fields: found 4, expected 3"),
    ("1\t1\t1\n\n2\t2\t1\n", 2, "wrong number of fields: found 0"),
    ("1\t1\t1\nx\t2\t1\n", 2, "non-numeric row 'x'"),
    ("1\t1\t1\n2\t2\tabc\n", 2, "non-numeric value 'abc'"),
    ("1\t1.5\t1\n", 1, "non-integer column '1.5'"),
    ("1\t-1\t1\n", 1, "column -1 out of range 1..4"),
    ("1\t+1\t1\n", 1, "column '+1' is not written as plain digits"),
    ("1\t1e0\t1\n", 1, "column '1e0' is not written as plain digits"),
    ("99999999999\t1\t1\n", 1, "row 99999999999 out of range 1..4"),
    ("1\t1\t1\n0\t2\t1\n", 2, "row 0 out of range 1..4"),
    ("1\t1\t1\n2\t5\t1\n", 2, "column 5 out of range 1..4"),
    ("1\t1\t1\n2\t2\t1\n1\t1\t3\n", 3, "duplicate entry (row 1, column 1), first given on line 1"),
    ("2\t2\t1\n1\t1\t1\n3\t3\t1\n2\t2\t1\n", 4, "duplicate entry (row 2, column 2), first given on line 1"),
    ("1\t1\t1\n2\t2\tnan\n", 2, "value nan is not finite"),
    ("1\t1\t1\n2\t2\t-inf\n", 2, "value -inf is not finite"),
    ("1\t1\t1e999\n", 1, "value inf is not finite"),
]


@pytest.mark.parametrize("text,line,message", BAD_LAYERS)
@pytest.mark.parametrize("gz", [False, True])
def test_bad_layer_lines(tmp_path, text, line, message, gz):
    path = tmp_path / ("bad.tsv.gz" if gz else "bad.tsv")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    with pytest.raises(FormatError) as err:
        read_layer(path, neurons=4)
    assert err.value.line == line and err.value.path == str(path)
    assert f"{path}:{line}: " in str(err.value) and message in str(err.value)


def test_bad_line_in_a_later_block(tmp_path, monkeypatch):
    from spdnn.formats import text
    monkeypatch.setattr(text, "CHUNK_BYTES", 64)
    lines = [f"{i}\t{i}\t1" for i in range(1, 101)]
    lines[76] = "77\t77\toops"
    (tmp_path / "w.tsv").write_text("\n".join(lines))  # no final newline
    blocks = list(text.iter_line_blocks(io.BytesIO((tmp_path / "w.tsv").read_bytes()), "w"))
    assert len(blocks) > 10 and all(b.endswith(b"\n") for b in blocks[:-1])
    with pytest.raises(FormatError, match=r"w\.tsv:77: non-numeric value 'oops'"):
        read_layer(tmp_path / "w.tsv", neurons=100)
    lines[76] = "77\t77\t1"
    (tmp_path / "w.tsv").write_text("\n".join(lines))
    assert read_layer(tmp_path / "w.tsv", neurons=100).nnz == 100


def test_bad_line_in_a_later_gzip_block_stops_reader(tmp_path, monkeypatch):
    import threading

    from spdnn.formats import text
    monkeypatch.setattr(text, "CHUNK_BYTES", 256)
    lines = [f"{i}\t1\t1" for i in range(1, 2001)]
    lines[1500] = "1501\t1"
    (tmp_path / "f.tsv.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(FormatError, match=r"f\.tsv\.gz:1501: wrong number of fields: found 2"):
        read_features(tmp_path / "f.tsv.gz", cache=False)
    assert not any(t.name == "spdnn-read-ahead" for t in threading.enumerate())


def test_crlf_and_spaces_accepted(tmp_path):
    (tmp_path / "w.tsv").write_bytes(b"1 2  0.5\r\n 2\t1\t1 \r\n")
    w = read_layer(tmp_path / "w.tsv")
    assert w.shape == (2, 2) and w[0, 1] == 0.5 and w[1, 0] == 1.0


def test_network_from_official_parent_dir(official_dir):
    net = read_network(official_dir, layers=[1, 2], cache=False)
    assert net.depth == 2 and net.neurons == 1024


def test_empty_files(tmp_path):
    (tmp_path / "w.tsv").write_bytes(b"")
    with pytest.raises(FormatError, match=r"w\.tsv: empty file"):
        read_layer(tmp_path / "w.tsv")
    (tmp_path / "f.tsv.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(FormatError, match=r"f\.tsv\.gz: empty file"):
        read_features(tmp_path / "f.tsv.gz", cache=False)
    (tmp_path / "m.mtx").write_bytes(b"")
    with pytest.raises(FormatError, match=r"m\.mtx:1: empty file"):
        read_features(tmp_path / "m.mtx", cache=False)


@pytest.mark.parametrize("fraction", [0.3, 0.77, 0.999])
def test_truncated_gzip_names_the_line_where_the_data_stop(tmp_path, fraction):
    import zlib

    text = "".join(f"{i % 500 + 1}\t{(i * 7) % 500 + 1}\t{i * 1e-3:.6e}\n" for i in range(100_000)).encode()
    blob = gzip.compress(text)
    cut = blob[: int(len(blob) * fraction)]
    readable = zlib.decompressobj(31).decompress(cut)  # every byte a reader can get from the cut file
    (tmp_path / "w.tsv.gz").write_bytes(cut)
    with pytest.raises(FormatError, match="compressed data is (truncated|corrupt)") as err:
        read_layer(tmp_path / "w.tsv.gz", neurons=500)
    assert err.value.line == readable.count(b"\n") + 1  # the first line not complete


def test_missing_layer_file(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"nope\.tsv"):
        read_layer(tmp_path / "nope.tsv")


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_bad_gzip(rng, tmp_path, damage):
    w = random_layer(rng, 200, density=0.2)
    write_layer_tsv(tmp_path / "w.tsv.gz", w)
    blob = bytearray((tmp_path / "w.tsv.gz").read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob[len(blob) // 2: len(blob) // 2 + 64] = bytes(64)
    (tmp_path / "w.tsv.gz").write_bytes(bytes(blob))
    with pytest.raises(FormatError, match=r"w\.tsv\.gz:\d+: compressed data is (truncated|corrupt)") as err:
        read_layer(tmp_path / "w.tsv.gz", neurons=200)
    assert 1 <= err.value.line <= w.nnz


# --- MatrixMarket --------------------------------------------------------------------------

MTX_OK = "%%MatrixMarket matrix coordinate real general\n% comment\n3 4 3\n1 2 0.5\n3 4 -1\n2 1 2\n"


def test_mtx_real_and_pattern(tmp_path):
    (tmp_path / "a.mtx").write_text(MTX_OK)
    a = read_mtx(tmp_path / "a.mtx")
    assert a.shape == (3, 4) and a[0, 1] == 0.5 and a[2, 3] == -1 and a[1, 0] == 2
    (tmp_path / "p.mtx.gz").write_bytes(gzip.compress(b"%%MatrixMarket matrix coordinate pattern general\n"
                                                      b"2 3 2\n2 3\n1 1\n"))
    x = read_features(tmp_path / "p.mtx.gz", neurons=3, samples=2, cache=False)
    assert x.shape == (2, 3) and x.toarray().tolist() == [[1, 0, 0], [0, 0, 1]]
    (tmp_path / "i.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n1 1 1\n1 1 7\n")
    assert read_mtx(tmp_path / "i.mtx")[0, 0] == 7.0


BAD_MTX = [
    ("%%MatrixMarket matrix coordinate real\n1 1 1\n1 1 1\n", 1, "bad MatrixMarket banner"),
    ("%MatrixMarket matrix coordinate real general\n1 1 1\n1 1 1\n", 1, "bad MatrixMarket banner"),
    ("1 1 1\n1 1 1\n", 1, "bad MatrixMarket banner"),
    ("%%MatrixMarket matrix array real general\n1 1\n1\n", 1, "unsupported MatrixMarket layout 'array'"),
    ("%%MatrixMarket matrix coordinate complex general\n1 1 1\n1 1 1 0\n", 1, "field 'complex'"),
    ("%%MatrixMarket matrix coordinate real symmetric\n1 1 1\n1 1 1\n", 1, "symmetry 'symmetric'"),
    ("%%MatrixMarket matrix coordinate real general\n%c\n3 3\n1 1 1\n", 3, "bad size line '3 3'"),
    ("%%MatrixMarket matrix coordinate real general\n3 x 1\n1 1 1\n", 2, "bad size line"),
    ("%%MatrixMarket matrix coordinate real general\n% only comments\n", 3, "missing size line"),
    ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1\n2 2 1\n1 2 1\n", 5, "found more"),
    ("%%MatrixMarket matrix coordinate real general\n3 3 5\n1 1 1\n", 4, "declares 5, found 1"),
    ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1\n2 3 1\n", 4, "column 3 out of range 1..2"),
    ("%%MatrixMarket matrix coordinate pattern general\n2 2 2\n1 1\n1 2 1\n", 4, "found 3, expected 2"),
    ("%%MatrixMarket matrix coordinate pattern general\n2 2 2\n1 1\n1 1\n", 4, "duplicate entry"),
]


@pytest.mark.parametrize("text,line,message", BAD_MTX)
def test_bad_mtx(tmp_path, text, line, message):
    path = tmp_path / "bad.mtx"
    path.write_text(text)
    with pytest.raises(FormatError) as err:
        read_mtx(path)
    assert err.value.line == line and message in str(err.value) and str(path) in str(err.value)


def test_mtx_features_shape_checked(tmp_path):
    (tmp_path / "a.mtx").write_text(MTX_OK)
    with pytest.raises(FormatError, match="declares 4 features"):
        read_features(tmp_path / "a.mtx", neurons=5, cache=False)
    with pytest.raises(FormatError, match="declares 3 samples"):
        read_features(tmp_path / "a.mtx", samples=2, cache=False)


# --- features and categories ---------------------------------------------------------------

def test_features_tsv_roundtrip(rng, tmp_path):
    x = sp.random(40, 16, density=0.3, format="csr", random_state=rng)
    x.data[:] = 1.0
    write_features_tsv(tmp_path / "sparse-images-16.tsv.gz", x)
    text = gzip.decompress((tmp_path / "sparse-images-16.tsv.gz").read_bytes()).decode()
    first = text.splitlines()[0].split("\t")
    assert first[2] == "1" and len(text.splitlines()) == x.nnz
    samples_in_file = [int(t.split("\t")[0]) for t in text.splitlines()]
    assert samples_in_file == sorted(samples_in_file)
    got = read_features(tmp_path / "sparse-images-16.tsv.gz", neurons=16, samples=40, cache=False)
    assert same_csr(got, x)
    # Without neurons, N is the largest feature id; without samples, the official 60,000 rows.
    default = read_features(tmp_path / "sparse-images-16.tsv.gz", cache=False)
    assert default.shape == (60000, int(x.indices.max()) + 1) and same_csr(default[:40, :], x[:, :default.shape[1]])


def test_features_tsv_bounds(tmp_path):
    (tmp_path / "f.tsv").write_text("1\t1\t1\n5\t2\t1\n")
    with pytest.raises(FormatError, match=r"f\.tsv:2: sample 5 out of range 1..4"):
        read_features(tmp_path / "f.tsv", samples=4, cache=False)
    with pytest.raises(FormatError, match=r"f\.tsv:2: feature 2 out of range 1..1"):
        read_features(tmp_path / "f.tsv", neurons=1, cache=False)


@pytest.mark.parametrize("cache", [True, False])
def test_features_sample_count_is_official_unless_told(tmp_path, cache):
    path = tmp_path / "sparse-images-4.tsv"
    path.write_text("1\t1\t1\n3\t2\t1\n")
    got = read_features(path, cache=cache)
    assert got.shape == (60000, 2) and got.nnz == 2  # the trailing empty samples count
    assert read_features(path, samples=98, cache=cache).shape == (98, 2)
    path.write_text("1\t1\t1\n5000000\t2\t1\n3\t2\t1\n")  # one stray line
    with pytest.raises(FormatError, match=r"sparse-images-4\.tsv:2: sample 5000000 out of range 1\.\.60000 "
                                          r"\(the official number of samples; pass samples= or --samples"):
        read_features(path, cache=cache)
    assert read_features(path, samples=5_000_000, cache=cache).shape == (5_000_000, 2)


def test_features_out_of_order_and_duplicates_stream_or_fall_back(tmp_path):
    (tmp_path / "f.tsv").write_text("2\t1\t1\n1\t3\t1\n1\t1\t0.5\n")  # rows out of order
    got = read_features(tmp_path / "f.tsv", neurons=3, samples=2)
    assert got.toarray().tolist() == [[0.5, 0, 1], [1, 0, 0]]
    (tmp_path / "d.tsv").write_text("1\t1\t1\n1\t2\t1\n1\t2\t1\n")
    with pytest.raises(FormatError, match=r"d\.tsv:3: duplicate entry \(sample 1, feature 2\), first given on line 2"):
        read_features(tmp_path / "d.tsv", neurons=3, samples=2)
    (tmp_path / "e.tsv").write_text("2\t1\t1\n1\t3\t1\n2\t1\t1\n")
    with pytest.raises(FormatError, match=r"e\.tsv:3: duplicate entry \(sample 2, feature 1\), first given on line 1"):
        read_features(tmp_path / "e.tsv", neurons=3, samples=2)


def test_features_duplicate_across_blocks(tmp_path, monkeypatch):
    from spdnn.formats import text

    monkeypatch.setattr(text, "CHUNK_BYTES", 16)
    lines = [f"{i}\t1\t1" for i in range(1, 40)]
    lines.insert(20, lines[19])
    (tmp_path / "f.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=r"f\.tsv:21: duplicate entry \(sample 20, feature 1\), first given on "
                                          r"line 20"):
        read_features(tmp_path / "f.tsv", neurons=1, samples=40)


def test_truth_ids_beyond_the_samples_named_when_read(tmp_path):
    (tmp_path / "c.tsv").write_text("3\n60001\n7\n")
    assert read_categories(tmp_path / "c.tsv").tolist() == [3, 7, 60001]
    with pytest.raises(FormatError, match=r"c\.tsv:2: sample id 60001 is beyond the 60,000 samples of the features"):
        read_categories(tmp_path / "c.tsv", samples=60000)
    (tmp_path / "c.mtx").write_text("%%MatrixMarket matrix coordinate pattern general\n%\n20 1 2\n4 1\n12 1\n")
    with pytest.raises(FormatError, match=r"c\.mtx:5: sample id 12 is beyond the 10 samples"):
        read_categories(tmp_path / "c.mtx", samples=10)


def test_categories_tsv_and_mtx(tmp_path):
    (tmp_path / "c.tsv").write_text("5\n2\n40\n")
    assert read_categories(tmp_path / "c.tsv").tolist() == [2, 5, 40]
    (tmp_path / "empty.tsv").write_text("")
    assert read_categories(tmp_path / "empty.tsv").size == 0
    (tmp_path / "row.mtx").write_text("%%MatrixMarket matrix coordinate pattern general\n1 9 2\n1 9\n1 3\n")
    assert read_categories(tmp_path / "row.mtx").tolist() == [3, 9]
    (tmp_path / "dup.tsv").write_text("1\n7\n3\n7\n")
    with pytest.raises(FormatError, match=r"dup\.tsv:4: duplicate id 7 \(first given on line 2\)"):
        read_categories(tmp_path / "dup.tsv")
    (tmp_path / "zero.tsv").write_text("1\n0\n")
    with pytest.raises(FormatError, match=r"zero\.tsv:2: id 0 out of range"):
        read_categories(tmp_path / "zero.tsv")
    (tmp_path / "two.tsv").write_text("1\n2\t3\n")
    with pytest.raises(FormatError, match=r"two\.tsv:2: wrong number of fields"):
        read_categories(tmp_path / "two.tsv")
    (tmp_path / "m.mtx").write_text("%%MatrixMarket matrix coordinate pattern general\n3 2 1\n1 1\n")
    with pytest.raises(FormatError, match="must be a vector"):
        read_categories(tmp_path / "m.mtx")


def test_write_categories(tmp_path):
    write_categories(tmp_path / "c.tsv", [9, 3, 3, 12])
    assert (tmp_path / "c.tsv").read_text() == "3\n9\n12\n"
    write_categories(tmp_path / "c.tsv.gz", np.array([4, 1]))
    assert gzip.decompress((tmp_path / "c.tsv.gz").read_bytes()) == b"1\n4\n"
    with pytest.raises(OptionError):
        write_categories(tmp_path / "bad.tsv", [0, 1])
    assert not (tmp_path / "bad.tsv").exists()


# --- atomic writes -------------------------------------------------------------------------

def test_atomic_path_success_and_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and not tmp.exists()
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_writer_error_leaves_no_file(tmp_path, monkeypatch):
    from spdnn.formats import tsv

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tsv, "_format_lines", broken)
    with pytest.raises(RuntimeError):
        write_layer_tsv(tmp_path / "w.tsv.gz", sp.identity(4, format="csr"))
    assert list(tmp_path.iterdir()) == []


# --- locating the layout -------------------------------------------------------------------

def test_find_official_layouts(rng, tmp_path):
    write_network_dir(tmp_path / "neuron64", [random_layer(rng, 64) for _ in range(3)], 64)
    paths = find_official(tmp_path)
    assert paths.neurons == 64 and paths.layers == 3 and paths.features is None and paths.truth is None
    (tmp_path / "sparse-images-64.tsv.gz").write_bytes(b"")
    (tmp_path / "sparse-images-64-first10.mtx").write_bytes(b"")
    (tmp_path / "neuron64-l3-categories.tsv").write_text("1\n")
    paths = find_official(tmp_path)
    assert paths.features.name == "sparse-images-64.tsv.gz" and paths.truth.name == "neuron64-l3-categories.tsv"
    (tmp_path / "neuron64-l5-categories.tsv").write_text("1\n")
    with pytest.raises(OptionError, match=r"L = \[3, 5\]"):
        find_official(tmp_path)
    assert find_official(tmp_path, layers=5).truth.name == "neuron64-l5-categories.tsv"
    (tmp_path / "neuron32.tar.gz").write_bytes(b"")
    with pytest.raises(OptionError, match=r"N = \[32, 64\]"):
        find_official(tmp_path)
    only32 = find_official(tmp_path, neurons=32)
    assert only32.network.name == "neuron32.tar.gz" and only32.layers is None and only32.features is None
    with pytest.raises(DataNotFoundError):
        find_official(tmp_path, neurons=128)
    with pytest.raises(DataNotFoundError):
        find_official(tmp_path / "neuron64")


def test_flat_folder_of_layer_files_gets_a_hint(rng, tmp_path):
    write_network_dir(tmp_path, [random_layer(rng, 16) for _ in range(120)], 16)
    (tmp_path / "sparse-images-16.tsv").write_text("1\t1\t1\n")
    with pytest.raises(DataNotFoundError) as err:
        find_official(tmp_path)
    message = str(err.value)
    assert "holds 120 layer files n16-l{k}.tsv directly" in message and "neuron16/" in message
    assert len(message) < 300 and "n16-l7.tsv" not in message
    (tmp_path / "elsewhere").mkdir()
    for i in range(30):
        (tmp_path / "elsewhere" / f"file{i:02d}.txt").write_text("")
    with pytest.raises(DataNotFoundError, match=r"found: file00\.txt, .*file07\.txt and 22 more$"):
        find_official(tmp_path / "elsewhere")


@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_archive_with_zeroed_bytes_is_a_corrupt_archive(rng, tmp_path, where):
    members = {}
    for k in (1, 2, 3):
        write_layer_tsv(tmp_path / "l.tsv", random_layer(rng, 64, density=0.3))
        members[f"neuron64/n64-l{k}.tsv"] = (tmp_path / "l.tsv").read_bytes()
    make_tar(tmp_path / "neuron64.tar.gz", members)
    blob = bytearray((tmp_path / "neuron64.tar.gz").read_bytes())
    at = int(len(blob) * where)
    blob[at:at + 512] = bytes(512)
    (tmp_path / "neuron64.tar.gz").write_bytes(bytes(blob))
    with pytest.raises(FormatError, match=r"neuron64\.tar\.gz: archive is (truncated|corrupt)"):
        read_network(tmp_path / "neuron64.tar.gz", bias=-0.1)
    with pytest.raises(FormatError, match=r"neuron64\.tar\.gz: archive is (truncated|corrupt)"):
        read_network(tmp_path / "neuron64.tar.gz", layers=[1], bias=-0.1, cache=False)


# --- streaming: memory does not grow with the number of layers or feature lines -------------

def _peak_bytes(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("cache", [True, False])
def test_reading_holds_a_layer_at_a_time(rng, tmp_path, monkeypatch, cache):
    from spdnn.formats import text

    monkeypatch.setattr(text, "CHUNK_BYTES", 1 << 16)  # blocks smaller than a layer
    n, depth = 2048, 24
    layer_bytes = 32 * n * (4 + 8)  # one parsed layer as CSR: int32 indices + float64 values
    for k in range(1, depth + 1):
        w = random_layer(rng, n, density=32 / n, values=0.0625)
        write_layer_tsv(tmp_path / f"{'short' if k <= 4 else 'long'}" / f"n{n}-l{k}.tsv", w)
    for k in range(1, 5):  # the short network is the first 4 layers of the long one
        (tmp_path / "long" / f"n{n}-l{k}.tsv").write_bytes((tmp_path / "short" / f"n{n}-l{k}.tsv").read_bytes())
    short_peak, short = _peak_bytes(lambda: read_network(tmp_path / "short", bias=-0.3, cache=cache))
    long_peak, long = _peak_bytes(lambda: read_network(tmp_path / "long", bias=-0.3, cache=cache))
    assert short.depth == 4 and long.depth == depth
    # Six times the layers, the same peak: at most a few layers are ever held at once.
    assert long_peak < short_peak + layer_bytes, (short_peak, long_peak, layer_bytes)
    assert long_peak < 8 * layer_bytes, (long_peak, layer_bytes)
    assert same_csr(long.layers[3], short.layers[3])


def test_reading_features_holds_a_block_at_a_time(rng, tmp_path, monkeypatch):
    from spdnn.formats import text

    monkeypatch.setattr(text, "CHUNK_BYTES", 1 << 16)
    x = sp.random(30000, 784, density=0.05, format="csr", random_state=rng)
    x.data[:] = 1.0
    write_features_tsv(tmp_path / "f.tsv.gz", x)
    entries_bytes = x.nnz * (4 + 4 + 8)  # the whole file parsed at once: two int32 ids and a value
    peak, got = _peak_bytes(lambda: read_features(tmp_path / "f.tsv.gz", neurons=784, samples=30000))
    assert same_csr(got, x)
    assert peak < entries_bytes / 4, (peak, entries_bytes)
