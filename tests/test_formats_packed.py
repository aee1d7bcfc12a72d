"""spdnn.formats.packed: bit-packed binary features round-trip exactly; damaged files are refused."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.errors import FormatError, OptionError
from spdnn.formats import packed
from spdnn.formats.packed import read_packed_features, write_packed_features

from factories import random_features, same_csr


@pytest.mark.parametrize("samples, n", [(50, 64), (33, 13), (0, 16), (7, 1)])
def test_round_trip(tmp_path, rng, samples, n):
    features = sp.lil_matrix(random_features(rng, samples, n, density=0.3))
    if samples:
        features[samples // 2] = 0                          # an empty row stays empty
    path = write_packed_features(tmp_path / "f.npz", features)
    got = read_packed_features(path)
    assert got.dtype == np.float64 and got.has_sorted_indices and got.shape == (samples, n)
    assert same_csr(got, features)
    assert list(tmp_path.iterdir()) == [path]


def test_round_trip_in_chunks(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(packed, "_CHUNK_BITS", 3 * 40)     # 3 rows of 40 bits at a time
    features = random_features(rng, 20, 40, density=0.5)
    assert same_csr(read_packed_features(write_packed_features(tmp_path / "f.npz", features)), features)


def test_bits_are_numpy_packbits_of_the_dense_rows(tmp_path):
    features = sp.csr_matrix(np.array([[1, 0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1, 0]], dtype=float))
    path = write_packed_features(tmp_path / "f.npz", features)
    with np.load(path) as z:
        assert z["bits"].tolist() == [[0b10000000, 0b10000000], [0b00000001, 0]]
        assert (int(z["n"]), int(z["nnz"])) == (9, 3)


def test_only_binary_features(tmp_path):
    with pytest.raises(OptionError, match="binary"):
        write_packed_features(tmp_path / "f.npz", sp.csr_matrix(np.array([[0.5, 1.0]])))
    assert not list(tmp_path.iterdir())
    explicit_zero = sp.csr_matrix((np.array([1.0, 0.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 3))
    assert read_packed_features(write_packed_features(tmp_path / "z.npz", explicit_zero)).nnz == 1


@pytest.mark.parametrize("members, message", [
    ({"bits": np.zeros((2, 1), np.uint8), "n": np.int64(8)}, "no member nnz"),
    ({"bits": np.zeros((2, 2), np.uint8), "n": np.int64(8), "nnz": np.int64(0)}, "n=8"),
    ({"bits": np.zeros((2, 1), np.int16), "n": np.int64(8), "nnz": np.int64(0)}, "int16"),
    ({"bits": np.zeros(2, np.uint8), "n": np.int64(8), "nnz": np.int64(0)}, "do not hold rows"),
    ({"bits": np.full((2, 1), 3, np.uint8), "n": np.int64(8), "nnz": np.int64(5)}, "4 set bits.*nnz=5"),
    ({"bits": np.zeros((2, 1), np.uint8), "n": np.arange(2), "nnz": np.int64(0)}, "scalars"),
])
def test_damaged_files_name_the_file(tmp_path, members, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **members)
    with pytest.raises(FormatError, match=message) as info:
        read_packed_features(path)
    assert str(path) in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        read_packed_features(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FormatError, match="junk.npz: not a readable .npz"):
        read_packed_features(tmp_path / "junk.npz")
