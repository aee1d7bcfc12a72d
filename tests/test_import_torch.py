"""PyTorch importer: every supported form of layer and activation gives the network PyTorch
computes (fp64 forward pass vs the reference engine), and anything else is refused naming
the module or node. Needs torch (``pip install 'spdnn[torch]'``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch", reason="the PyTorch importer needs torch (pip install 'spdnn[torch]')")
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

from spdnn.errors import FormatError, OptionError  # noqa: E402
from spdnn.models import from_torch, read_model, read_torch_file  # noqa: E402

from factories import reference_run  # noqa: E402


class Clamp(nn.Module):
    """A custom module calling clamp (recognised through tracing)."""

    def __init__(self, low, high):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x):
        return torch.clamp(x, self.low, self.high)


class Relu6Method(nn.Module):
    def forward(self, x):
        return x.relu().clamp_max(6.0)


def _seeded(seed: int):
    torch.manual_seed(seed)


def _check_same(model, net, rng, n_in, samples=40):
    """spdnn's reference (fp64) equals PyTorch's fp64 forward pass to rounding; same argmax."""
    x = rng.random((samples, n_in)) * (rng.random((samples, n_in)) < 0.6)
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x)).numpy()
    result, _, _ = reference_run(net, sp.csr_matrix(x))
    from spdnn.engines.reference import ReferenceEngine

    got = ReferenceEngine(precision="fp64").run(net, sp.csr_matrix(x), outputs="activations").outputs
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.array_equal(np.argmax(got, axis=1), np.argmax(want, axis=1))


def _pruned(n_in, n_out, amount, seed):
    _seeded(seed)
    lin = nn.Linear(n_in, n_out)
    prune.l1_unstructured(lin, "weight", amount=amount)
    return lin


MODELS = {
    "dense relu": lambda s: nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4)),
    "hardtanh cap 1": lambda s: nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.Hardtanh(0.0, 1.0), nn.Linear(9, 9),
                                              nn.ReLU6(), nn.Dropout(0.5), nn.Linear(9, 4)),
    "custom clamp": lambda s: nn.Sequential(nn.Linear(12, 9), Clamp(0.0, 0.5), nn.Linear(9, 4), Relu6Method()),
    "pruned": lambda s: nn.Sequential(_pruned(12, 9, 0.9, s), nn.ReLU(), _pruned(9, 9, 0.8, s + 1), nn.ReLU(),
                                      nn.Linear(9, 4)),
    "no bias": lambda s: nn.Sequential(nn.Linear(12, 9, bias=False), nn.ReLU(), nn.Linear(9, 4, bias=False)),
    "identity between": lambda s: nn.Sequential(nn.Linear(12, 9), nn.Identity(), nn.Linear(9, 4), nn.ReLU()),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_imported_model_computes_what_torch_computes(name, rng, seed):
    _seeded(seed)
    model = MODELS[name](seed).eval()
    net = from_torch(model)
    assert net.bias_rules == ("dense",) * net.depth
    _check_same(model, net, rng, 12)


def test_activations_and_caps_are_read(seed):
    _seeded(seed)
    net = from_torch(MODELS["hardtanh cap 1"](seed))
    assert net.activations == ("relu", "relu", "identity")
    assert [float(c) for c in net.caps] == [1.0, 6.0, math.inf]
    net = from_torch(MODELS["custom clamp"](seed))
    assert net.activations == ("relu", "relu") and [float(c) for c in net.caps] == [0.5, 6.0]


def test_no_bias_is_zero_bias(seed):
    _seeded(seed)
    net = from_torch(MODELS["no bias"](seed))
    assert all(not np.any(b) for b in net.bias)


def test_pruned_layers_are_sparse_by_density_and_override(seed):
    _seeded(seed)
    model = MODELS["pruned"](seed)
    net = from_torch(model)
    assert [net.is_dense(k) for k in range(3)] == [False, False, True]
    lin = model[0]
    assert net.layers[0].nnz == int((lin.weight_orig * lin.weight_mask != 0).sum())
    # after prune.remove the plain weight holds the zeros: same network
    prune.remove(model[0], "weight")
    again = from_torch(model)
    assert (abs(again.layers[0] - net.layers[0])).nnz == 0
    assert not any(from_torch(model, storage="dense").is_dense(k) is False for k in range(3))
    assert [from_torch(model, sparse_threshold=0.0).is_dense(k) for k in range(3)] == [True, True, True]


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_weight_tensors(layout, rng, seed):
    _seeded(seed)
    model = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4))
    dense_model = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4))
    dense_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        mask = torch.zeros(9 * 12)
        mask[torch.randperm(9 * 12)[:20]] = 1.0          # exactly 20 of 108 nonzero: under the sparse threshold
        w = model[0].weight * mask.reshape(9, 12)
        dense_model[0].weight.copy_(w)
        model[0].weight = nn.Parameter(w.to_sparse() if layout == "coo" else w.to_sparse_csr(), requires_grad=False)
    net = from_torch(model)
    assert not net.is_dense(0) and net.layers[0].nnz == int((w != 0).sum())
    _check_same(dense_model, net, rng, 12)


REFUSED = {
    "conv": (lambda: nn.Sequential(nn.Linear(12, 9), nn.Conv1d(1, 1, 3)), r"module '1' \(Conv1d\) is not supported"),
    "sigmoid": (lambda: nn.Sequential(nn.Linear(12, 9), nn.Sigmoid()), r"module '1' \(Sigmoid\)"),
    "hardtanh -1": (lambda: nn.Sequential(nn.Linear(12, 9), nn.Hardtanh()), "lower bound of -1"),
    "relu first": (lambda: nn.Sequential(nn.ReLU(), nn.Linear(12, 9)), "comes before any Linear"),
    "clamp 0.5": (lambda: nn.Sequential(nn.Linear(12, 9), Clamp(0.5, 1.0)), "lower bound of 0.5"),
    "no linear": (lambda: nn.Sequential(nn.Identity()), "no linear layer"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_models_are_refused_naming_the_module(name):
    make, message = REFUSED[name]
    with pytest.raises(OptionError, match=message):
        from_torch(make())


def test_skip_connection_is_refused():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x) + x

    with pytest.raises(OptionError, match="branches and skip connections"):
        from_torch(Skip())
    with pytest.raises(OptionError, match="expected a torch.nn.Module"):
        from_torch([nn.Linear(2, 2)])


def test_state_dict_file(tmp_path, rng, seed):
    _seeded(seed)
    model = MODELS["pruned"](seed).eval()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    net = read_model(path)
    assert net.activations == ("relu", "relu", "identity") and net.caps[0] == math.inf
    _check_same(model, net, rng, 12)
    capped = read_torch_file(path, hidden_cap=1.0)
    assert [float(c) for c in capped.caps[:2]] == [1.0, 1.0]
    torch.save({"0.weight": torch.zeros(3, 3, 3)}, path)
    with pytest.raises(FormatError, match=r"m.pt: layer 0 of the state dict: weight of shape \(3, 3, 3\)"):
        read_model(path)
    torch.save({"0.running_mean": torch.zeros(3)}, path)
    with pytest.raises(FormatError, match="running_mean"):
        read_model(path)


def test_pickled_module_needs_trust(tmp_path, rng, seed):
    _seeded(seed)
    model = MODELS["hardtanh cap 1"](seed).eval()
    path = tmp_path / "whole.pth"
    torch.save(model, path)
    with pytest.raises(OptionError, match="trust_pickle=True"):
        read_model(path)
    net = read_model(path, trust_pickle=True)
    _check_same(model, net, rng, 12)
    torch.save(nn.Sequential(nn.Linear(3, 3), nn.Tanh()), path)
    with pytest.raises(FormatError, match=r"whole.pth: .*Tanh"):
        read_model(path, trust_pickle=True)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a zip")
    with pytest.raises(FormatError, match="bad.pt: not a PyTorch file"):
        read_model(path)
