"""spdnn's model file (``.spdnn``): round trips, memory mapping, atomic writes, and every
kind of damage refused with a FormatError naming the file; and the shared importer parts
(storage by density, activations folded into layers)."""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.errors import FormatError, OptionError
from spdnn.models import LayerSpec, assemble, choose_storage, load_model, read_header, save_model
from spdnn.models.spdnn_format import MAGIC
from spdnn.network import LazyLayers, Network

from factories import general_network, random_bias, random_layer, reference_run, same_csr


def mixed_network(rng) -> Network:
    """784-like rectangular net: a dense input layer, sparse hidden ones, a dense identity output."""
    hidden = [random_layer(rng, 12, 0.2) for _ in range(3)]
    layers = [rng.standard_normal((20, 12))] + hidden + [rng.standard_normal((12, 4))]
    bias = [rng.standard_normal(12), *(random_bias(rng, 1, 12, "mixed")[0] for _ in hidden), rng.standard_normal(4)]
    return Network.from_layers(layers, bias, bias_rule=["dense", "structural", "dense", "dense", "dense"],
                               activation=["relu"] * 4 + ["identity"], ymax=[None, 1.0, 32.0, 4.5, None])


def assert_same_network(a: Network, b: Network) -> None:
    assert a.widths == b.widths
    assert a.bias_rules == b.bias_rules and a.activations == b.activations
    assert [float(c) for c in a.caps] == [float(c) for c in b.caps]
    for k in range(a.depth):
        assert a.is_dense(k) == b.is_dense(k)
        if a.is_dense(k):
            assert np.array_equal(a.layers[k].view(np.int64), b.layers[k].view(np.int64))
        else:
            assert same_csr(a.layers[k], b.layers[k])
        assert np.array_equal(np.asarray(a.bias[k]).view(np.int64), np.asarray(b.bias[k]).view(np.int64))


def _maps_file(array) -> bool:
    """Whether ``array`` is a view of a numpy.memmap (no copy of the file's bytes)."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base
    return False


def test_round_trip_mixed_network_is_exact_and_memory_mapped(rng, tmp_path):
    net = mixed_network(rng)
    path = save_model(net, tmp_path / "m.spdnn", metadata={"note": "test"})
    back = load_model(path)
    assert_same_network(net, back)
    assert read_header(path)["metadata"] == {"note": "test"}
    # the arrays map the file: no copy
    for array in (back.layers[0], back.layers[1].data, back.layers[1].indices, back.layers[1].indptr, back.bias[4]):
        assert _maps_file(array)
    assert not back.layers[0].flags.writeable and not back.layers[1].data.flags.writeable
    # every array starts at a multiple of 64 bytes
    for entry in read_header(path)["layers"]:
        for name in ("indptr", "indices", "data", "weights", "bias"):
            if name in entry:
                assert entry[name]["offset"] % 64 == 0
    x = sp.csr_matrix(rng.random((7, 20)))
    want, got = reference_run(net, x)[0], reference_run(back, x)[0]
    assert np.array_equal(want.categories, got.categories)


def test_round_trip_challenge_network_keeps_its_form(rng, tmp_path):
    net = general_network(rng)
    back = load_model(save_model(net, tmp_path / "c.spdnn"))
    assert_same_network(net, back)
    assert back.challenge_form == net.challenge_form
    assert back.ymax == net.ymax


def test_same_network_same_bytes(rng, tmp_path):
    net = mixed_network(rng)
    a = save_model(net, tmp_path / "a.spdnn").read_bytes()
    b = save_model(load_model(tmp_path / "a.spdnn"), tmp_path / "b.spdnn").read_bytes()
    assert a == b


def test_failed_write_leaves_nothing(rng, tmp_path):
    """A layer that fails half-way through the write (a lazy layer built twice: for the
    header, then for its bytes) leaves no file and no temporary behind."""
    layers = [random_layer(rng, 16, 0.2) for _ in range(3)]
    builds = []

    def make(k):
        builds.append(k)
        if len(builds) > 4:                   # the second build of layer 2
            raise OSError(5, "injected read error")
        return layers[k]

    net = Network.from_layers(LazyLayers(make, 3), -0.1)
    with pytest.raises(OSError, match="injected"):
        save_model(net, tmp_path / "m.spdnn")
    assert list(tmp_path.iterdir()) == []
    back = load_model(save_model(Network.from_layers(LazyLayers(lambda k: layers[k], 3), -0.1), tmp_path / "m.spdnn"))
    assert all(same_csr(a, b) for a, b in zip(layers, back.layers))


def _rewrite_header(path, change):
    """Apply ``change(header)`` and rewrite the file with the same header length."""
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[8:16])[0]
    header = json.loads(raw[16:16 + length])
    change(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= length
    path.write_bytes(raw[:16] + text + b" " * (length - len(text)) + raw[16 + length:])


def _array_at(path, layer, name):
    header = read_header(path)
    spec = header["layers"][layer][name]
    return spec["offset"], np.dtype(spec["dtype"]), spec["count"]


def _poke(path, layer, name, index, value):
    offset, dtype, _ = _array_at(path, layer, name)
    raw = bytearray(path.read_bytes())
    raw[offset + index * dtype.itemsize: offset + (index + 1) * dtype.itemsize] = np.array([value], dtype).tobytes()
    path.write_bytes(bytes(raw))


def _make_indptr_decrease(path, layer):
    """Zero the indptr entry after the first positive one: a decrease whatever the layer's pattern."""
    offset, dtype, count = _array_at(path, layer, "indptr")
    indptr = np.frombuffer(path.read_bytes(), dtype, count, offset)
    k = int(np.argmax(indptr > 0))
    assert 0 < k < count - 2, "the damaged layer needs entries before its last two rows"
    _poke(path, layer, "indptr", k + 1, 0)


DAMAGE = {
    "magic": (lambda p: p.write_bytes(b"NOTSPDNN" + p.read_bytes()[8:]), "not a spdnn model file"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
    "header length": (lambda p: p.write_bytes(p.read_bytes()[:8] + struct.pack("<Q", 1 << 40) + p.read_bytes()[16:]),
                      "runs past the end"),
    "version": (lambda p: _rewrite_header(p, lambda h: h.update(version=99)), "version 99.*newer"),
    "widths": (lambda p: _rewrite_header(p, lambda h: h["widths"].__setitem__(1, 13)), "shape"),
    "dtype": (lambda p: _rewrite_header(p, lambda h: h["layers"][1]["data"].update(dtype="<f4")), "layer 2 data.*dtype"),
    "offset": (lambda p: _rewrite_header(p, lambda h: h["layers"][0]["bias"].update(offset=h["size"] - 8)),
               "layer 1 bias.*past the end"),
    "overlap": (lambda p: _rewrite_header(p, lambda h: h["layers"][0]["bias"].update(
        offset=h["layers"][0]["weights"]["offset"])), "overlaps"),
    "activation": (lambda p: _rewrite_header(p, lambda h: h["layers"][2].update(activation="tanh")),
                   "layer 3: activation 'tanh'"),
    "cap": (lambda p: _rewrite_header(p, lambda h: h["layers"][1].update(cap=-1)), "layer 2: cap -1"),
    "index range": (lambda p: _poke(p, 1, "indices", 0, 12), "layer 2 indices: 12 is outside 0..11"),
    "index order": (lambda p: _make_indptr_decrease(p, 1), "layer 2 indptr: decreases"),
    "nan weight": (lambda p: _poke(p, 0, "weights", 3, np.nan), "layer 1 weights: non-finite"),
    "inf bias": (lambda p: _poke(p, 4, "bias", 0, np.inf), "layer 5 bias: non-finite"),
    "indptr end": (lambda p: _poke(p, 2, "indptr", 12, 10 ** 6), "layer 3 indptr"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_file_is_refused_naming_file_and_fault(damage, rng, tmp_path):
    net = mixed_network(rng)
    path = save_model(net, tmp_path / "m.spdnn")
    hurt, message = DAMAGE[damage]
    hurt(path)
    with pytest.raises(FormatError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_indices_out_of_order_within_a_row(tmp_path):
    w = sp.csr_matrix(np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]))
    path = save_model(Network.from_layers([w], 0.0, bias_rule="dense"), tmp_path / "m.spdnn")
    offset, dtype, count = _array_at(path, 0, "indices")
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 2 * dtype.itemsize] = np.array([1, 0], dtype).tobytes()   # row 1: columns 1, 0
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="not strictly ascending in row 1"):
        load_model(path)


def test_not_a_model_file(tmp_path):
    path = tmp_path / "x.spdnn"
    path.write_bytes(b"short")
    with pytest.raises(FormatError, match="x.spdnn: not a spdnn model file"):
        load_model(path)
    path.write_bytes(MAGIC + struct.pack("<Q", 5) + b"nojso")
    with pytest.raises(FormatError, match="JSON"):
        load_model(path)


def test_save_refuses_non_network_and_bad_metadata(rng, tmp_path):
    with pytest.raises(OptionError, match="expected a spdnn.Network"):
        save_model([np.eye(3)], tmp_path / "m.spdnn")
    with pytest.raises(OptionError, match="metadata"):
        save_model(mixed_network(rng), tmp_path / "m.spdnn", metadata={"x": object()})
    assert not (tmp_path / "m.spdnn").exists()


# ------------------------------------------------------------------ shared importer parts


def test_storage_by_density_and_override(rng):
    sparse_w = np.where(rng.random((10, 8)) < 0.2, rng.standard_normal((10, 8)), 0.0)
    sparse_w[0, 0] = 1.0
    dense_w = rng.standard_normal((8, 6))
    assert choose_storage(sparse_w) == ("sparse" if np.count_nonzero(sparse_w) <= 20 else "dense")
    assert choose_storage(dense_w) == "dense"
    exact = np.zeros((4, 4))
    exact.flat[:4] = 1.0                                # exactly 25%: sparse
    assert choose_storage(exact) == "sparse"
    exact.flat[4] = 1.0
    assert choose_storage(exact) == "dense"
    specs = lambda: [LayerSpec(exact, np.zeros(4), "a"), LayerSpec(dense_w[:4, :4], np.ones(4), "b")]
    net = assemble(specs())
    assert [net.is_dense(k) for k in range(2)] == [True, True]
    net = assemble(specs(), sparse_threshold=0.4)
    assert [net.is_dense(k) for k in range(2)] == [False, True]
    net = assemble(specs(), storage=["dense", "sparse"])
    assert [net.is_dense(k) for k in range(2)] == [True, False]
    assert net.bias_rules == ("dense", "dense")
    with pytest.raises(OptionError, match="storage of layer 2: 'csr'"):
        assemble(specs(), storage=["auto", "csr"])
    with pytest.raises(OptionError, match="sparse_threshold"):
        assemble(specs(), sparse_threshold=1.5)
    with pytest.raises(OptionError, match="no linear layer"):
        assemble([])


@pytest.mark.parametrize("steps, want", [
    ([(0, None)], ("relu", math.inf)),
    ([(0, 1.0)], ("relu", 1.0)),
    ([(0, None), (0, 6.0)], ("relu", 6.0)),
    ([(0, 6.0), (None, 1.0)], ("relu", 1.0)),
    ([(0, None), (-1.0, None)], ("relu", math.inf)),
    ([(None, None)], ("identity", math.inf)),
])
def test_activations_fold_into_relu_with_cap(steps, want):
    spec = LayerSpec(np.eye(2), np.zeros(2), "x")
    for low, high in steps:
        assert spec.clamp(low, high, "act") is None
    assert (spec.activation, spec.cap) == want


@pytest.mark.parametrize("steps, message", [
    ([(-1.0, 1.0)], "lower bound of -1"),
    ([(None, 1.0)], "lower bound of none"),
    ([(0, None), (0.5, None)], "lower bound of 0.5 after a ReLU"),
    ([(0, 0.0)], "upper bound of 0"),
])
def test_activations_that_are_not_a_relu_are_refused(steps, message):
    spec = LayerSpec(np.eye(2), np.zeros(2), "x")
    reasons = [spec.clamp(low, high, "act") for low, high in steps]
    assert reasons[-1] is not None and message in reasons[-1]
