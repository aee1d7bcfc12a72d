"""The CUDA engine's general path and the cuSPARSE baseline on general networks, on the
device (skipped without a GPU): the cases of factories.general_case, fp64 bit for bit
against the float64 reference (activation buffers poisoned first), fp32 predictions equal
to fp64's, in batches, with sliced blockings, with and without a graph."""
from __future__ import annotations

import numpy as np
import pytest

from spdnn.engines import get_engine

from factories import GENERAL_CASES, general_case

pytestmark = pytest.mark.gpu

POISON = 1e30      # finite: an unwritten read changes a result


def reference(net, feats, precision="fp64"):
    return get_engine("reference", precision=precision).run(net, feats, outputs="activations")


def assert_bitwise(got, want):
    np.testing.assert_array_equal(got.categories, want.categories)
    np.testing.assert_array_equal(got.survivors, want.survivors)
    np.testing.assert_array_equal(got.outputs.view(np.uint64), want.outputs.view(np.uint64))
    np.testing.assert_array_equal(got.predictions, want.predictions)


@pytest.mark.parametrize("case", GENERAL_CASES)
def test_general_cuda_fp64_bit_for_bit(rng, case):
    net, feats = general_case(rng, case, samples=300)
    got = get_engine("cuda", precision="fp64", poison=POISON).run(net, feats, outputs="activations")
    assert got.extra["path"] == "general" and got.extra["graph"] is True
    assert_bitwise(got, reference(net, feats))


@pytest.mark.parametrize("case", GENERAL_CASES)
@pytest.mark.parametrize("blocking", [None, {"bank_order": True}, {"bank_order": True, "pipelined": True}],
                         ids=["default", "bank_order", "bank_order_pipelined"])
def test_general_cuda_fp32_predictions_equal_fp64(rng, case, blocking):
    net, feats = general_case(rng, case, samples=300)
    got = get_engine("cuda", precision="fp32", poison=POISON, blocking=blocking).run(net, feats,
                                                                                   outputs="activations")
    want = reference(net, feats)
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_allclose(got.outputs, want.outputs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["dense_and_sparse", "revive", "rectangular", "identity_output"])
@pytest.mark.parametrize("options", [{"batch_samples": 70},
                                     {"blocking": {"threads": 32, "cols_per_thread": 1, "rows_per_tile": 2}},
                                     {"blocking": {"threads": 64, "cols_per_thread": 1, "rows_per_tile": 4,
                                                   "pipelined": True}},
                                     {"debug": True}], ids=["batches", "sliced", "pipelined", "debug"])
def test_general_cuda_variants_fp64_bit_for_bit(rng, case, options):
    net, feats = general_case(rng, case, samples=300)
    got = get_engine("cuda", precision="fp64", poison=POISON, **options).run(net, feats, outputs="activations")
    assert_bitwise(got, reference(net, feats))
    if "batch_samples" in options:
        assert got.extra["batches"] == 5


@pytest.mark.parametrize("blocking", [None, {"threads": 1024, "cols_per_thread": 4, "rows_per_tile": 2,
                                              "pipelined": True}], ids=["default", "pipelined"])
def test_general_cuda_wide_layers_fp64(rng, blocking):
    """N = 4096 (the bench's width), 32 nonzeros a column, a dense bias: the default blocking,
    and tiles staged while the one before is summed (many items a block: 500 rows)."""
    import scipy.sparse as sp
    from spdnn.network import Network

    n = 4096
    layers = []
    for _ in range(3):
        rows = np.concatenate([rng.choice(n, 32, replace=False) for _ in range(n)])
        w = sp.csc_matrix((rng.normal(0, 1 / np.sqrt(32), rows.size), rows, np.arange(0, 32 * n + 1, 32)),
                          shape=(n, n)).tocsr()
        layers.append(w)
    net = Network.from_layers(layers, rng.uniform(-0.05, 0.0, (3, n)), bias_rule="dense", ymax=None)
    feats = sp.random(500, n, density=0.05, format="csr", random_state=1)
    got = get_engine("cuda", precision="fp64", poison=POISON, blocking=blocking).run(net, feats,
                                                                                   outputs="activations")
    assert_bitwise(got, reference(net, feats))


@pytest.mark.parametrize("case", GENERAL_CASES)
def test_general_cusparse_matches_the_reference(rng, case):
    net, feats = general_case(rng, case, samples=300)
    got = get_engine("cusparse", precision="fp64").run(net, feats, outputs="activations")
    want = reference(net, feats)
    np.testing.assert_array_equal(got.categories, want.categories)
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_allclose(got.outputs, want.outputs, rtol=1e-9, atol=1e-12)
