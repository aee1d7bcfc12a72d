"""Engine.run over batches: the survivors of every batch merged before the tail.

Every engine is forced to batch (a subclass whose ``_batch_size`` is small) and must give
the unbatched run's results: categories, survivors per layer, ``rows_computed`` (where
it does not merge identical samples) and the final activations, bit for bit in fp64
(categories in fp32 too). Cases: a generated challenge network (RadiX-Net), the official
N=1024 subset, a general network that never prunes (plain batching, nothing merged) and
one that prunes only from its second layer on.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.engines import engine_class
from spdnn.engines.base import _head_bounds
from spdnn.errors import DeviceMemoryError
from spdnn.network import Network

from factories import read_official_subset


def batched(cls, features_batch: int, survivors_batch: int | None = None, samples: int = -1):
    """``cls`` loading ``features_batch`` features at a time and ``survivors_batch``
    survivors (default: all of them) when the matrix is not the ``samples`` features."""

    def _batch_size(self, features):
        if features.shape[0] == samples or survivors_batch is None and features.shape[0] > features_batch:
            return features_batch
        return features.shape[0] if survivors_batch is None else survivors_batch

    return type(f"Batched{cls.__name__}", (cls,), {"_batch_size": _batch_size})


def options(cls, merge) -> dict:
    return {"merge": merge} if "merge" in inspect.signature(cls).parameters else {}


def assert_same_run(batched_result, whole, precision, *, rows_computed: bool):
    np.testing.assert_array_equal(batched_result.categories, whole.categories)
    np.testing.assert_array_equal(batched_result.survivors, whole.survivors)
    if rows_computed and "rows_computed" in whole.extra:
        assert batched_result.extra["rows_computed"] == whole.extra["rows_computed"]
    if precision == "fp64":
        assert batched_result.outputs.dtype == whole.outputs.dtype == np.float64
        np.testing.assert_array_equal(batched_result.outputs.view(np.int64), whole.outputs.view(np.int64))
        np.testing.assert_array_equal(batched_result.predictions, whole.predictions)


def test_head_bounds_double():
    assert _head_bounds(40) == [1, 3, 7, 15, 31]
    assert _head_bounds(1) == [] and _head_bounds(2) == [1]


@pytest.fixture(scope="module")
def radixnet_case():
    from spdnn.generate import radixnet_network

    network = radixnet_network(64, 40, seed=1, bias=-0.45, materialize=True)
    rng = np.random.default_rng(2)
    dense = (rng.random((300, 64)) < 0.35).astype(float)
    dense[[5, 77]] = 0                                      # two samples dead from the start
    return network, sp.csr_matrix(dense)


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
@pytest.mark.parametrize("merge", [False, "auto"])
@pytest.mark.parametrize("survivors_batch", [None, 7], ids=["tail-merged", "tail-by-batches"])
def test_batched_challenge_run_equals_whole_run(engine_name, precision, merge, survivors_batch, radixnet_case):
    network, features = radixnet_case
    cls = engine_class(engine_name)
    if merge is False and "merge" not in inspect.signature(cls).parameters:
        pytest.skip(f"{engine_name} does not merge samples")
    whole = cls(precision=precision, **options(cls, merge)).run(network, features, outputs="activations")
    assert whole.categories.size > survivors_batch if survivors_batch else whole.categories.size > 0
    engine = batched(cls, 40, survivors_batch, samples=300)(precision=precision, **options(cls, merge))
    result = engine.run(network, features, outputs="activations")
    assert result.extra["batches"] == 8 and result.extra["batch_samples"] == 40
    if survivors_batch is None:
        merged = result.extra["merged_batches"]
        assert merged["layer"] in _head_bounds(40) and merged["samples"] == result.survivors[merged["layer"] - 1]
    else:
        assert "merged_batches" not in result.extra               # survivors never fit 7 rows
    assert_same_run(result, whole, precision, rows_computed=merge is False)


def test_merging_batches_can_be_turned_off(radixnet_case, monkeypatch):
    from spdnn.engines.reference import ReferenceEngine

    network, features = radixnet_case
    monkeypatch.setenv("SPDNN_MERGE_BATCHES", "0")
    result = batched(ReferenceEngine, 40, samples=300)().run(network, features)
    assert result.extra["batches"] == 8 and "merged_batches" not in result.extra
    np.testing.assert_array_equal(result.survivors, ReferenceEngine().run(network, features).survivors)


def test_batched_official_subset(engine_name, official_dir):
    network, features, truth = read_official_subset(official_dir)
    cls = engine_class(engine_name)
    if not cls.exact_fp64:
        pytest.skip(f"{engine_name}: its fp64 is not bound to the reference's bits")
    whole = cls(precision="fp64").run(network, features, outputs="predictions")
    result = batched(cls, 100, samples=1200)(precision="fp64").run(network, features, outputs="predictions")
    np.testing.assert_array_equal(result.categories, truth)
    assert result.extra["merged_batches"]["samples"] == result.survivors[result.extra["merged_batches"]["layer"] - 1]
    np.testing.assert_array_equal(result.survivors, whole.survivors)
    np.testing.assert_array_equal(result.predictions, whole.predictions)


def _general(rng, first_bias: float) -> tuple[Network, sp.csr_matrix]:
    """Six layers of widths 12 -> 9 -> 9 -> 7 -> 7 -> 7 -> 5: the first with a dense bias
    ``first_bias``, the others dense bias 0.05 (never prune) or structural (prune)."""
    widths = [12, 9, 9, 7, 7, 7, 5]
    layers = [sp.random(a, b, density=0.5, random_state=rng, format="csr") for a, b in zip(widths, widths[1:])]
    for w in layers:
        w.data = rng.normal(0.0, 0.8, w.nnz)
    return layers, sp.csr_matrix(rng.normal(0, 1, (90, 12)) * (rng.random((90, 12)) < 0.4))


def test_batched_general_network_that_never_prunes(rng):
    """A positive dense bias revives zero rows: no row may be dropped, so nothing is merged
    and every batch runs whole."""
    from spdnn.engines.reference import ReferenceEngine

    layers, features = _general(rng, 0.1)
    net = Network.from_layers(layers, [0.1] + [0.05] * 5, bias_rule="dense", activation=["relu"] * 5 + ["identity"])
    assert not any(net.prunes_after(k) for k in range(net.depth))
    whole = ReferenceEngine().run(net, features, outputs="activations")
    result = batched(ReferenceEngine, 16, samples=90)().run(net, features, outputs="topk", top_k=3)
    assert result.extra["batches"] == 6 and "merged_batches" not in result.extra
    np.testing.assert_array_equal(result.categories, whole.categories)
    np.testing.assert_array_equal(result.survivors, whole.survivors)
    np.testing.assert_array_equal(result.top_indices[:, 0], whole.predictions)
    full = batched(ReferenceEngine, 16, samples=90)().run(net, features, outputs="activations")
    np.testing.assert_array_equal(full.outputs.view(np.int64), whole.outputs.view(np.int64))


def test_batched_general_network_merges_where_it_prunes(rng):
    """Dense positive bias in layers 0-1, structural after: rows may be dropped only from
    layer 2 on (0-based); the boundary 1 is skipped and the survivors merge at 3."""
    from spdnn.engines.reference import ReferenceEngine

    layers, features = _general(rng, 0.1)
    rules = ["dense", "dense", "structural", "structural", "structural", "dense"]
    head = Network.from_layers(layers[:2], [0.1, 0.05], bias_rule="dense")
    z = ReferenceEngine().run(head, features, outputs="activations").outputs @ layers[2].toarray()
    threshold = np.sort(z.max(axis=1))[-9]                       # layer 2's bias leaves 8 rows alive
    net = Network.from_layers(layers, [0.1, 0.05, -threshold, -0.1, -0.1, 0.0], bias_rule=rules)
    assert [net.prunes_after(k) for k in range(7)] == [False, False, True, True, True, True, True]
    whole = ReferenceEngine().run(net, features, outputs="activations")
    assert 0 < whole.survivors[2] <= 12                        # 8, more on ties
    result = batched(ReferenceEngine, 45, samples=90)().run(net, features, outputs="activations")
    assert result.extra["merged_batches"]["layer"] == 3
    np.testing.assert_array_equal(result.categories, whole.categories)
    np.testing.assert_array_equal(result.survivors, whole.survivors)
    np.testing.assert_array_equal(result.outputs.view(np.int64), whole.outputs.view(np.int64))


# -- the CUDA engine's batch size (host arithmetic, no device needed) --------------------------

def test_cuda_batch_size_fits_every_batch_not_just_the_average():
    """The first rows carry most nonzeros: a batch size from the average would not pass
    the check of the load (the failure '41201 samples do not fit ... at most 41182')."""
    from spdnn.engines.cuda.plan import batch_size, samples_fitting

    def fitting(f):
        return samples_fitting(1_000_000, 1000, 4, int(np.count_nonzero(np.diff(f.indptr))), int(f.nnz))

    dense = np.zeros((3000, 200))
    dense[:600, :] = 1.0                                 # 200 nonzeros a row, then 5
    dense[600:, :5] = 1.0
    features = sp.csr_matrix(dense)
    batch = batch_size(features, 1_000_000, 1000, 4)
    assert batch < fitting(features)
    for b0 in range(0, 3000, batch):
        part = features[b0:b0 + batch]
        assert part.shape[0] <= fitting(part), f"batch at {b0} does not fit"
    assert batch_size(features, 1_000_000, 1000, 4, cap=100) == 100
    with pytest.raises(DeviceMemoryError, match="not even 64 samples"):
        batch_size(features, 20_000, 1000, 4, least=64)


def test_cuda_memory_cap_from_the_environment(monkeypatch):
    from spdnn.engines.cuda.engine import CudaEngine
    from spdnn.errors import OptionError

    monkeypatch.setenv("SPDNN_CUDA_MEMORY_CAP", "71G")
    assert CudaEngine().memory_cap_bytes == 71 << 30
    assert CudaEngine(memory_cap_bytes=5000).memory_cap_bytes == 5000     # the option wins
    monkeypatch.setenv("SPDNN_CUDA_MEMORY_CAP", "lots")
    with pytest.raises(OptionError, match="SPDNN_CUDA_MEMORY_CAP='lots'"):
        CudaEngine()


@pytest.mark.gpu
def test_cuda_batches_by_its_budget_and_merges_the_tail(radixnet_case):
    """batch_samples=40 makes the engine's own _batch_size batch; the survivors then fit
    and run together; the graph of the first segment is captured in warm_up."""
    from spdnn.engines.cuda.engine import CudaEngine

    network, features = radixnet_case
    whole = CudaEngine(precision="fp64").run(network, features, outputs="activations")
    result = CudaEngine(precision="fp64", batch_samples=40).run(network, features, outputs="activations")
    assert result.extra["batches"] == 8 and "merged_batches" in result.extra and result.extra["graph"]
    assert_same_run(result, whole, "fp64", rows_computed=False)
