"""The cusparse engine's host logic on the CPU: numpy and scipy stand in for CuPy and
cupyx.scipy.sparse (the ``host_cupy`` fixture, tests/conftest.py; the engine's array calls
are a subset of numpy's), so its pruning, bias rules, caps, widths and read-back run in CI;
on the GPU the same tests of ``test_engines.py`` run it for real."""
from __future__ import annotations

import numpy as np
import pytest

from spdnn.engines import cusparse as cusparse_module
from spdnn.engines.reference import ReferenceEngine

from factories import GENERAL_CASES, dies_before_the_last_layer, general_case, survivors_continue_mid_network


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
    engine, result = _same_as_reference(*dies_before_the_last_layer(rng))
    assert result.survivors.tolist() == [0, 0]
    rows, values = engine.activations()
    assert rows.shape == (0,) and values.shape == (0, 13)


def test_survivors_continue_at_a_later_layer_s_width_on_the_host(host_cupy):
    network, features = survivors_continue_mid_network()
    _, result = _same_as_reference(network, features, batch_samples=10)
    assert result.extra["merged_batches"]["layer"] == 3
