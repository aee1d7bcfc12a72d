"""The cuSPARSE baseline's layer loop on general networks, on the CPU: CuPy replaced by numpy
and cupyx.scipy.sparse by scipy (the same calls), so the rules, the pruning and the
outputs are checked in CI; the GPU tests (test_cuda_general_gpu.py) run the real thing."""
from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines import cusparse as cusparse_module
from spdnn.engines import get_engine

from factories import GENERAL_CASES, general_case


@pytest.fixture
def numpy_cupy(monkeypatch):
    """cupy -> numpy (with asnumpy and a stream that has nothing to wait for); cupyx CSR -> scipy."""
    fake = types.SimpleNamespace(**{name: getattr(np, name) for name in ("asarray", "where", "clip",
                                                                          "ascontiguousarray")})
    fake.asnumpy = np.asarray
    stream = types.SimpleNamespace(synchronize=lambda: None)
    fake.cuda = types.SimpleNamespace(get_current_stream=lambda: stream)
    csp = types.ModuleType("cupyx.scipy.sparse")
    csp.csr_matrix = sp.csr_matrix
    cupyx = types.ModuleType("cupyx")
    scipy_mod = types.ModuleType("cupyx.scipy")
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setitem(sys.modules, "cupyx.scipy", scipy_mod)
    monkeypatch.setitem(sys.modules, "cupyx.scipy.sparse", csp)
    monkeypatch.setattr(cusparse_module, "cupy", lambda name: fake)
    monkeypatch.setattr(cusparse_module, "device", lambda name, i: contextlib.nullcontext("numpy"))
    monkeypatch.setattr(cusparse_module, "device_name", lambda dev: "numpy")


@pytest.mark.parametrize("case", GENERAL_CASES)
def test_cusparse_runs_general_networks(rng, numpy_cupy, case):
    net, feats = general_case(rng, case)
    eng = cusparse_module.CusparseEngine(precision="fp64", batch_samples=50)
    assert eng.supports(net)[0]
    got = eng.run(net, feats, outputs="activations")
    want = get_engine("reference", precision="fp64").run(net, feats, outputs="activations")
    np.testing.assert_array_equal(got.categories, want.categories)
    np.testing.assert_array_equal(got.survivors, want.survivors)
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_allclose(got.outputs, want.outputs, rtol=1e-12, atol=1e-12)
    assert got.extra["batches"] == 3
