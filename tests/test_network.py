"""spdnn.network: canonical layers and features, the Network's validation, edges, lazy layers."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.errors import OptionError
from spdnn.network import OFFICIAL_BIAS, YMAX, LazyLayers, Network, as_features, as_layer

from factories import random_layer, random_network, same_csr


def test_challenge_constants():
    assert YMAX == 32.0
    assert OFFICIAL_BIAS == {1024: -0.30, 4096: -0.35, 16384: -0.40, 65536: -0.45}


def test_as_layer_is_canonical_float64_csr():
    # duplicates summed, indices sorted, integer input promoted to float64
    coo = sp.coo_matrix((np.array([1, 2, 3]), (np.array([0, 0, 2]), np.array([1, 1, 0]))), shape=(3, 3))
    w = as_layer(coo)
    assert isinstance(w, sp.csr_matrix) and w.dtype == np.float64 and w.has_canonical_format
    assert w.nnz == 2 and w[0, 1] == 3.0 and w[2, 0] == 3.0
    unsorted = sp.csr_matrix((np.array([1.0, 2.0]), np.array([2, 0]), np.array([0, 2, 2, 2])), shape=(3, 3))
    assert not unsorted.has_sorted_indices
    fixed = as_layer(unsorted)
    assert fixed.has_canonical_format and fixed.indices.tolist() == [0, 2]


def test_as_layer_shape_errors_name_the_layer():
    with pytest.raises(OptionError, match=r"layer 3: shape \(3, 4\) is not square"):
        as_layer(sp.csr_matrix((3, 4)), name="layer 3")
    with pytest.raises(OptionError, match=r"layer: shape \(3, 3\), expected \(4, 4\)"):
        as_layer(sp.eye(3), neurons=4)


def test_as_features():
    f = as_features(np.array([[0, 2], [1, 0]]), neurons=2)
    assert f.dtype == np.float64 and f.has_canonical_format and f.toarray().tolist() == [[0, 2], [1, 0]]
    with pytest.raises(OptionError, match="2 columns, expected 3"):
        as_features(np.ones((1, 2)), neurons=3)
    with pytest.raises(OptionError, match="non-finite"):
        as_features(np.array([[np.nan, 1.0]]))


@pytest.mark.parametrize("bias, expect", [
    (-0.3, np.full((2, 4), -0.3)),
    (np.arange(4.0), np.tile(np.arange(4.0), (2, 1))),
    (np.arange(8.0).reshape(2, 4), np.arange(8.0).reshape(2, 4)),
])
def test_from_layers_broadcasts_bias(bias, expect):
    net = Network.from_layers([sp.eye(4), sp.eye(4)], bias)
    assert net.bias.shape == (2, 4) and net.bias.dtype == np.float64
    np.testing.assert_array_equal(net.bias, expect)
    assert (net.neurons, net.depth, net.ymax) == (4, 2, YMAX)


@pytest.mark.parametrize("layers, bias, ymax, message", [
    ([], 0.0, 32.0, "at least one layer"),
    ([sp.eye(4), sp.eye(3)], 0.0, 32.0, r"layer 2: shape \(3, 3\) does not follow layer 1's \(4, 4\)"),
    ([sp.eye(4)], np.zeros(3), 32.0, r"bias: shape \(3,\)"),
    ([sp.eye(4)], np.zeros((2, 4)), 32.0, r"bias: shape \(2, 4\)"),
    ([sp.eye(4)], np.inf, 32.0, "bias: non-finite"),
    ([sp.eye(4)], 0.0, 0.0, "ymax of layer 1: 0.0: expected a positive cap"),
    ([sp.eye(4)], 0.0, np.nan, "ymax of layer 1: nan"),
    ([sp.eye(4)], 0.0, "x", "ymax of layer 1: 'x' is not a number"),
    ([sp.eye(4), sp.eye(4)], 0.0, [1.0], "ymax: 1 values for 2 layers"),
    ([sp.eye(4) * np.inf], 0.0, 32.0, r"layer 1: weight inf at \(row 1, column 1\) is not finite"),
    ([np.array([[1.0, 2.0], [np.nan, 0.0]])], 0.0, 32.0, r"layer 1: weight nan at \(row 2, column 1\) is not finite"),
    ([np.ones(3)], 0.0, 32.0, r"layer 1: a weight matrix needs 2 dimensions"),
])
def test_from_layers_rejects_bad_input(layers, bias, ymax, message):
    with pytest.raises(OptionError, match=message):
        Network.from_layers(layers, bias, ymax=ymax)


def test_edges_counts_every_layer(rng):
    net = random_network(rng, 30, 4, density=0.2)
    assert net.edges == sum(w.nnz for w in net.layers) > 0


def test_uniform_bias():
    layers = [sp.eye(3)] * 2
    assert Network.from_layers(layers, -0.25).uniform_bias() == -0.25
    assert Network.from_layers(layers, np.full((2, 3), 0.5)).uniform_bias() == 0.5    # equal, not broadcast
    assert Network.from_layers(layers, np.array([0.0, 0.0, 0.1])).uniform_bias() is None


def test_truncated_is_a_view_of_the_first_layers(rng):
    net = random_network(rng, 20, 5)
    head = net.truncated(3)
    assert head.depth == 3 and head.ymax == net.ymax
    assert all(a is b for a, b in zip(head.layers, net.layers))
    np.testing.assert_array_equal(head.bias, net.bias[:3])
    for bad in (0, 6):
        with pytest.raises(OptionError, match=f"depth {bad}: expected 1..5"):
            net.truncated(bad)


def _lazy(rng, n=12, depth=5):
    """LazyLayers over fixed random layers, counting the calls of ``make``."""
    made = [random_layer(rng, n, 0.3) for _ in range(depth)]
    calls = []

    def make(k):
        calls.append(k)
        return made[k]

    return LazyLayers(make, depth), made, calls


def test_lazy_layers_sequence(rng):
    lazy, made, calls = _lazy(rng)
    assert len(lazy) == 5 and lazy.nnz_total is None
    assert same_csr(lazy[1], made[1]) and same_csr(lazy[-1], made[4])
    assert [same_csr(a, b) for a, b in zip(lazy[1:4], made[1:4])] == [True] * 3
    assert calls == [1, 4, 1, 2, 3]                          # made on every access, never cached
    for bad in (5, -6):
        with pytest.raises(IndexError, match="out of range for depth 5"):
            lazy[bad]
    head = lazy.truncated(2)
    assert len(head) == 2 and same_csr(head[1], made[1])


def test_network_over_lazy_layers(rng):
    lazy, made, calls = _lazy(rng)
    net = Network.from_layers(lazy, -0.1)
    assert net.layers is lazy and net.depth == 5 and net.neurons == 12
    assert net.edges == sum(w.nnz for w in made)            # counted once by building every layer ...
    calls.clear()
    assert net.edges == sum(w.nnz for w in made) and calls == []   # ... and remembered
    head = net.truncated(3)
    assert isinstance(head.layers, LazyLayers) and head.depth == 3


def test_lazy_edges_from_known_nnz_build_nothing(rng):
    calls = []
    lazy = LazyLayers(lambda k: calls.append(k) or sp.eye(8, format="csr"), 7, nnz_per_layer=8)
    assert lazy.nnz_total == 56 and lazy.truncated(3).nnz_total == 24
    net = Network.from_layers(lazy, 0.0)
    calls.clear()                                            # from_layers reads layer 0 for N
    assert net.edges == 56 and calls == []


def test_lazy_edges_from_per_layer_counts_build_nothing(rng):
    """The binary cache knows every layer's nnz: edges of a network and of a head without a build."""
    lazy, made, calls = _lazy(rng)
    counted = LazyLayers(lazy._make, 5, layer_nnz=[w.nnz for w in made])
    assert counted.nnz_total == sum(w.nnz for w in made)
    head = Network.from_layers(counted, -0.1).truncated(2)
    calls.clear()
    assert head.edges == made[0].nnz + made[1].nnz and calls == []
    with pytest.raises(OptionError, match="layer_nnz: 2 counts for 5 layers"):
        LazyLayers(lazy._make, 5, layer_nnz=[1, 2])


# -- general networks ---------------------------------------------------------------------

def _mlp(rng):
    """784-like toy: dense 6->5 input layer, sparse 5->5, dense 5->3 linear output."""
    return Network.from_layers(
        [rng.standard_normal((6, 5)), random_layer(rng, 5, 0.5), rng.standard_normal((5, 3))],
        [0.1, np.arange(5.0) - 2, np.zeros(3)],
        bias_rule="dense", activation=["relu", "relu", "identity"], ymax=[1.0, None, None])


def test_rectangular_dense_network_shapes(rng):
    net = _mlp(rng)
    assert net.widths == (6, 5, 5, 3) and (net.inputs, net.outputs, net.depth) == (6, 3, 3)
    assert net.is_dense(0) and not net.is_dense(1) and net.is_dense(2)
    assert isinstance(net.layers[0], np.ndarray) and net.layers[0].flags.c_contiguous
    assert isinstance(net.bias, tuple) and [b.shape for b in net.bias] == [(5,), (5,), (3,)]
    assert net.caps == (1.0, np.inf, np.inf) and net.activations == ("relu", "relu", "identity")
    assert net.edges == sum(int(np.count_nonzero(w)) if isinstance(w, np.ndarray) else w.nnz for w in net.layers)
    assert not net.challenge_form
    with pytest.raises(OptionError, match="several widths"):
        net.neurons
    with pytest.raises(OptionError, match="cuda engine runs only networks of the challenge's form"):
        net.require_challenge_form("cuda engine")
    assert "widths 6->5->5->3" in net.describe() and "2 dense" in net.describe()
    head = net.truncated(2)
    assert head.widths == (6, 5, 5) and head.caps == (1.0, np.inf) and head.bias_rules == ("dense", "dense")


def test_challenge_form_is_the_default():
    net = Network.from_layers([sp.eye(4)] * 3, -0.3)
    assert net.challenge_form and net.bias_rules == ("structural",) * 3 and net.caps == (32.0,) * 3
    assert not Network.from_layers([sp.eye(4)] * 3, -0.3, ymax=None).challenge_form       # uncapped
    assert not Network.from_layers([sp.eye(4)] * 3, -0.3, bias_rule="dense").challenge_form
    assert not Network.from_layers([np.eye(4)] * 3, -0.3).challenge_form                   # dense layers


@pytest.mark.parametrize("rule, activation, bias, keeps", [
    ("structural", "relu", 0.5, True),        # no bias where Z == 0
    ("structural", "identity", 0.5, True),
    ("dense", "relu", -0.5, True),            # relu(0 - 0.5) == 0
    ("dense", "relu", 0.0, True),
    ("dense", "relu", 0.5, False),            # a positive dense bias revives a zero row
    ("dense", "identity", -0.5, False),       # a linear layer keeps the negative bias
    ("dense", "identity", 0.0, True),
])
def test_keeps_zero(rule, activation, bias, keeps):
    net = Network.from_layers([sp.eye(3)], bias, bias_rule=rule, activation=activation)
    assert net.keeps_zero(0) is keeps


def test_prunes_after_needs_every_later_layer_to_keep_zeros():
    net = Network.from_layers([sp.eye(3)] * 4, [-0.1, 0.2, -0.1, -0.1], bias_rule="dense")
    assert [net.prunes_after(k) for k in range(5)] == [False, False, True, True, True]
    mixed = Network.from_layers([sp.eye(3)] * 2, np.array([[-1.0, 0.0, 0.3], [-1, -1, -1]]), bias_rule="dense")
    assert not mixed.keeps_zero(0) and mixed.keeps_zero(1)


def test_bias_forms_of_rectangular_networks(rng):
    layers = [np.ones((2, 3)), np.ones((3, 1))]
    net = Network.from_layers(layers, 0.25)
    assert [b.tolist() for b in net.bias] == [[0.25] * 3, [0.25]]
    with pytest.raises(OptionError, match=r"bias of layer 2: shape \(3,\), expected \(\) or \(1,\)"):
        Network.from_layers(layers, [np.zeros(3), np.zeros(3)])
    with pytest.raises(OptionError, match="bias: 3 values for 2 layers"):
        Network.from_layers(layers, [0.0, 0.0, 0.0])
    same = Network.from_layers([sp.eye(3)] * 2, [0.5, -0.5])       # one scalar a layer
    assert same.bias.shape == (2, 3) and same.bias[1].tolist() == [-0.5] * 3


@pytest.mark.parametrize("kwargs, message", [
    ({"bias_rule": "everywhere"}, r"bias_rule of layer 1: 'everywhere': expected one of \['structural', 'dense'\]"),
    ({"activation": "tanh"}, r"activation of layer 1: 'tanh'"),
    ({"activation": ["relu"] * 3}, "activation: 3 values for 2 layers"),
])
def test_from_layers_rejects_bad_rules(kwargs, message):
    with pytest.raises(OptionError, match=message):
        Network.from_layers([sp.eye(2)] * 2, 0.0, **kwargs)


@pytest.mark.parametrize("layers", ["abc", 3, None])
def test_from_layers_rejects_what_is_not_a_sequence_of_matrices(layers):
    with pytest.raises(OptionError, match="layers"):
        Network.from_layers(layers, 0.0)
