"""The cusparse engine's host logic on the CPU: numpy and scipy stand in for CuPy and
cupyx.scipy.sparse (the engine's array calls are a subset of numpy's), so its pruning,
bias rules, caps, widths and read-back run in CI; on the GPU the same tests of
``test_engines.py`` run it for real."""
from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines import cusparse as cusparse_module
from spdnn.engines.reference import ReferenceEngine

from factories import GENERAL_CASES, feedforward_network, general_case, random_features


class _Device:
    id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def host_cupy(monkeypatch):
    """numpy as ``cupy``, scipy.sparse as ``cupyx.scipy.sparse``."""
    cp = ModuleType("cupy")
    for name in ("asarray", "ascontiguousarray", "where", "clip", "zeros", "float32", "float64"):
        setattr(cp, name, getattr(np, name))
    cp.asnumpy = np.asarray
    cp.cuda = SimpleNamespace(
        get_current_stream=lambda: SimpleNamespace(synchronize=lambda: None),
        Device=lambda i: _Device(),
        runtime=SimpleNamespace(getDevice=lambda: 0, memGetInfo=lambda: (1 << 30, 1 << 31),
                                getDeviceProperties=lambda i: {"name": b"host stand-in"}))
    cp.get_default_memory_pool = lambda: SimpleNamespace(free_bytes=lambda: 0)
    cupyx = ModuleType("cupyx")
    cupyx_scipy = ModuleType("cupyx.scipy")
    cupyx.scipy = cupyx_scipy
    cupyx_scipy.sparse = sp
    for name, module in {"cupy": cp, "cupyx": cupyx, "cupyx.scipy": cupyx_scipy, "cupyx.scipy.sparse": sp}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(cusparse_module, "cupy_status", lambda: (True, "host stand-in"))
    return cp


def _same_as_reference(network, features, **options):
    ref = ReferenceEngine(precision="fp64").run(network, features, outputs="activations")
    engine = cusparse_module.CusparseEngine(precision="fp64", **options)
    got = engine.run(network, features, outputs="activations")
    np.testing.assert_array_equal(got.categories, ref.categories)
    np.testing.assert_array_equal(got.survivors, ref.survivors)
    assert got.outputs.shape == ref.outputs.shape
    np.testing.assert_allclose(got.outputs, ref.outputs, rtol=1e-12, atol=1e-12)
    return engine, got


@pytest.mark.parametrize("case", GENERAL_CASES)
@pytest.mark.parametrize("batch", [None, 7])
def test_general_cases_on_the_host(host_cupy, rng, case, batch):
    network, features = general_case(rng, case)
    _same_as_reference(network, features, batch_samples=batch)


def test_every_row_dead_before_the_last_layer_on_the_host(host_cupy, rng):
    """Rows all dead after layer 1 of a network that widens: the rows held are none, at the
    last layer's width (was the width where the loop stopped)."""
    network = feedforward_network(rng, widths=[9, 3, 13], bias_rules=["structural"] * 2, activations=["relu"] * 2,
                                  bias=[-1e3, -0.1])
    engine, result = _same_as_reference(network, random_features(rng, 40, 9, 0.5))
    assert result.survivors.tolist() == [0, 0]
    rows, values = engine.activations()
    assert rows.shape == (0,) and values.shape == (0, 13)


def test_survivors_continue_at_a_later_layer_s_width_on_the_host(host_cupy):
    from test_engines import survivors_continue_mid_network

    network, features = survivors_continue_mid_network()
    _, result = _same_as_reference(network, features, batch_samples=10)
    assert result.extra["merged_batches"]["layer"] == 3
