"""The host side of the CUDA engine's challenge path, on the CPU: plan, upload, compile,
load, queue every kernel of a run and read back, with CuPy replaced by a host stand-in
(tests/fake_cupy.py). Every launch's arguments are bound by name and checked against the
kernel's parameters (engines/cuda/kernel_args.py) as on a GPU; the kernels do not run, so
what is checked here is what reaches them (names, element types, integer ranges) and
which kernels a blocking queues, never a result (the GPU tests check those)."""
from __future__ import annotations

import numpy as np
import pytest

import spdnn.engines.cuda.engine as engine_module
from spdnn.engines.cuda.compilation import template_arguments
from spdnn.engines.cuda.engine import CudaEngine
from spdnn.engines.cuda.layout import KernelConfig
from spdnn.generate import radixnet_network
from spdnn.network import Network

import fake_cupy
from factories import feedforward_network, random_features, random_network


@pytest.fixture
def launches(monkeypatch):
    return fake_cupy.install(monkeypatch, engine_module)


def _run(engine, network, features):
    """prepare, load, warm_up (the graph's capture), infer and the activations' read-back."""
    engine.prepare(network)
    engine.load(features)
    engine.warm_up(0, network.depth)
    engine._infer(0, network.depth)
    rows, values = engine._activations()
    assert values.shape[1] == network.outputs and len(rows) == values.shape[0]


def _kernels(launches) -> set[str]:
    return {template_arguments(name)[0] for name, _ in launches}


@pytest.mark.parametrize("debug", [True, False], ids=["launch_by_launch", "graph"])
@pytest.mark.parametrize("one_bias", [True, False], ids=["one_bias", "bias_per_neuron"])
def test_stationary_segments_merges_and_tail(launches, rng, debug, one_bias):
    """Segments after each merge queue a tail instance: the distinct tail (tail.cu) where
    the bias is one value, the one-row stationary instance where it is not."""
    net = radixnet_network(1024, 40)
    if not one_bias:
        net = Network.from_layers(net.layers, rng.uniform(-0.4, -0.2, (40, 1024)), ymax=net.ymax)
    engine = CudaEngine(precision="fp32", debug=debug)
    _run(engine, net, random_features(rng, 300, 1024, 0.2))
    assert engine.config.stationary and engine.tail_config is not None
    assert engine._plan.distinct_tail == one_bias
    names = [name for name, _ in launches]
    assert _kernels(launches) == {"spdnn_densify", "spdnn_stationary", "spdnn_merge_find", "spdnn_merge_compact",
                                  "spdnn_copy_count", *(["spdnn_tail"] if one_bias else [])}
    tails = [(template_arguments(name)[0], what) for name, what in launches if what.endswith("(tail)")]
    kernel = "spdnn_tail" if one_bias else "spdnn_stationary"
    assert tails == [(kernel, "layers 17..32 (tail)"), (kernel, "layers 33..40 (tail)")]  # after the merges at 16, 32
    assert names.count(next(n for n in names if n.startswith("spdnn_merge_find"))) == 2


def test_per_layer_deduplicated_blocking_queues_the_wide_path(launches, rng):
    net = radixnet_network(1024, 20)
    cfg = KernelConfig(threads=128, cols_per_thread=1, rows_per_tile=4, chunk=1024, dedupe=True)
    engine = CudaEngine(precision="fp64", config=cfg, debug=True)
    _run(engine, net, random_features(rng, 100, 1024, 0.2))
    kernels = _kernels(launches)
    assert {"spdnn_layer", "spdnn_wide_sums", "spdnn_wide_expand", "spdnn_wide_place"} <= kernels
    wide = [what for name, what in launches if name.startswith("spdnn_wide_sums")]
    assert wide == [f"layer {k + 1}, wide sums" for k in range(16, 20)]   # after the first merge only


def test_sliced_per_layer_blocking_compacts_with_per_entry_values(launches, rng):
    net = random_network(rng, 512, 5, density=0.05, values="normal")
    cfg = KernelConfig(threads=64, cols_per_thread=2, rows_per_tile=4, chunk=256)
    engine = CudaEngine(precision="fp64", config=cfg, merge=False)
    _run(engine, net, random_features(rng, 50, 512, 0.3))
    assert engine.config.slices(512) == 4
    assert [name for name, _ in launches].count("spdnn_compact<double>") == 5
    layer = next(name for name, _ in launches if name.startswith("spdnn_layer"))
    assert template_arguments(layer)[1][1] in ("double", "float", "unsigned short")   # values stored per entry


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_streamed_weights_run_chunk_by_chunk(launches, rng, precision):
    net = random_network(rng, 256, 24, density=0.05, values="fp16")
    engine = CudaEngine(precision=precision, stream_weights=True)
    _run(engine, net, random_features(rng, 80, 256, 0.3))
    assert engine.streaming and len(engine._plan.chunks) >= 3
    covered = []                                    # every layer queued once, in order, across the chunks
    for name, what in launches:
        if name.startswith(("spdnn_stationary", "spdnn_layer")) and not what.endswith("(tail)"):
            first, _, last = what.split(" ")[1].partition("..")
            covered += list(range(int(first), int(last or first) + 1))
    assert covered == list(range(1, 25))
    starts = {a + 1 for a, _ in engine._plan.chunks}
    assert starts <= {int(what.split(" ")[1].partition("..")[0]) for name, what in launches
                      if name.startswith(("spdnn_stationary", "spdnn_layer"))}    # segments cut at chunks


def test_a_launch_with_a_wrong_argument_is_refused(launches, rng):
    """The binding is what the GPU launch does too: a wrong element type never reaches a kernel."""
    net = radixnet_network(1024, 4)
    engine = CudaEngine(precision="fp32", debug=True)
    engine.prepare(net)
    engine.load(random_features(rng, 20, 1024, 0.2))
    engine._wts = [w.astype(np.int64).view(fake_cupy.DeviceArray) for w in engine._wts]
    with pytest.raises(TypeError, match=r"spdnn_stationary: mult_in \(const int\*\) needs an array of int32"):
        engine._infer(0, 4)


@pytest.mark.parametrize("debug", [True, False], ids=["launch_by_launch", "graph"])
def test_general_path_launches_bind_through_the_gpu_backend(launches, rng, debug):
    """The general path's launches through CupyKernels (the numpy replay checks the same
    launch dicts with results, tests/test_cuda_general.py)."""
    net = feedforward_network(rng, widths=[40, 64, 64, 10], dense=[True, False, False, True])
    engine = CudaEngine(precision="fp64", debug=debug)
    engine.prepare(net)
    assert engine._general is not None
    engine.load(random_features(rng, 30, 40, 0.5))
    engine._infer(0, net.depth)
    kernels = _kernels(launches)
    assert {"spdnn_densify", "spdnn_general_dense", "spdnn_general_sparse", "spdnn_copy_count"} <= kernels
