"""spdnn.memory: the model follows the engines' and the reader's policies; jobs that cannot fit stop first."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from spdnn import memory
from spdnn.errors import MemoryLimitError, SpdnnWarning
from spdnn.formats import read_network, write_layer_tsv
from spdnn.network import LazyLayers, Network

from factories import random_layer


def test_features_nnz_official_and_scaled():
    assert memory.features_nnz(65536) == 392_191_985
    assert memory.features_nnz(1024, 30000) == (6_374_505 + 1) // 2
    assert memory.features_nnz(256, 100) == int(np.ceil(100 * 256 * memory.FEATURE_DENSITY))


@pytest.mark.parametrize("neurons,precision", [(1024, "fp32"), (16384, "fp64"), (65536, "fp32")])
def test_cpu_batch_rows_is_the_engines(neurons, precision):
    from spdnn.engines import get_engine

    engine = get_engine("cpu", precision=precision)
    layer = sp.identity(neurons, format="csr")
    engine.prepare(Network.from_layers(LazyLayers(lambda k: layer, 1, layer_nnz=[neurons]), -0.3))
    assert engine._batch_rows() == memory.cpu_batch_rows(neurons, precision)


def test_run_estimate_parts():
    n, depth, s = 16384, 120, 60000
    est = memory.estimate_run(n, depth, s, precision="fp32")
    batch = memory.cpu_batch_rows(n, "fp32")
    assert est.notes["batch_samples"] == batch and est.notes["layers_kept"]
    assert est.host["activations"] == 2 * batch * n * 4
    assert batch < s                       # several batches: Engine.run slices one out at a time
    assert est.host["weights"] == depth * (2 * n * 4 + 4 * n)   # 2 distinct entries a row, the map
    assert est.host["features copy"] == batch * (98_858_913 // s + 1) * 12
    small = memory.estimate_run(1024, 120, s)
    assert small.notes["batches"] == 1 and "features copy" not in small.host   # one batch: no slice
    assert est.host["features"] == 98_858_913 * 4 + (s + 1) * 8
    deep = memory.estimate_run(65536, 1920)
    assert not deep.notes["layers_kept"] and deep.host["weights"] < 2**30  # converted per use
    cuda = memory.estimate_run(n, depth, s, engine="cuda", precision="fp64")
    assert cuda.device["activations"] == s * (2 * n * 8 + memory._CUDA_ROW_EXTRA)
    assert cuda.device["weights"] == depth * (2 * 2 * n + 2 * n)
    assert "device" in cuda.describe() and json.loads(json.dumps(cuda.to_dict()))["device_bytes"] == cuda.device_bytes


def test_read_estimate_bounds_the_streaming_reader(rng, tmp_path, monkeypatch):
    import tracemalloc

    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    n, depth = 4096, 3
    for k in range(1, depth + 1):
        write_layer_tsv(tmp_path / "neuron4096" / f"n{n}-l{k}.tsv", random_layer(rng, n, 32 / n, values=0.0625))
    tracemalloc.start()
    try:
        read_network(tmp_path, bias=-0.35)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    est = memory.estimate_read(n, depth)
    assert peak < est.host_bytes - est.host["baseline"]
    assert est.host_bytes == memory.estimate_read(n, 1920, 10**6).host_bytes  # nothing grows with L or S


def test_check_run_batches_smaller_or_refuses():
    n, depth, s, nnz = 16384, 120, 60000, 98_858_913
    full = memory.estimate_run(n, depth, s, nnz=nnz)
    est, options = memory.check_run(n, depth, s, engine="cpu", precision="fp32", nnz=nnz, available=10 * full.host_bytes)
    assert options == {} and est.host_bytes == full.host_bytes
    tight = full.host_bytes - full.host["activations"] // 8  # above the load phase (1.6 GiB)
    est, options = memory.check_run(n, depth, s, engine="cpu", precision="fp32", nnz=nnz, available=tight)
    assert 64 <= options["batch_samples"] < full.notes["batch_samples"] and est.host_bytes <= tight
    with pytest.raises(MemoryLimitError, match=r"a run of N=16384, L=120, 60,000 samples on the cpu engine "
                                               r"\(fp32\) needs about .* is available now .*use fewer samples"):
        memory.check_run(n, depth, s, engine="cpu", precision="fp32", nnz=nnz, available=10**8)


def test_check_fits_warns_within_the_tolerance():
    est = memory.Estimate("run", {"activations": 10**9})
    memory.check_fits(est, "job", available=2 * 10**9)
    with pytest.warns(SpdnnWarning, match="job needs about .* it may not fit"):
        memory.check_fits(est, "job", available=int(0.9 * 10**9))
    with pytest.raises(MemoryLimitError, match="job needs about"):
        memory.check_fits(est, "job", available=int(0.8 * 10**9))


def test_smaller_batch_same_categories(rng):
    """The batch check_run picks is only a batch: the categories do not change."""
    from spdnn.engines import get_engine

    n = 256
    net = Network.from_layers([random_layer(rng, n, 32 / n, values=1 / 16) for _ in range(6)], -0.05)
    x = sp.random(400, n, density=0.2, format="csr", random_state=rng)
    x.data[:] = 1.0
    whole = get_engine("cpu", precision="fp64").run(net, x)
    batched = get_engine("cpu", precision="fp64", batch_samples=64).run(net, x)
    assert batched.extra["batches"] == 7
    assert np.array_equal(whole.categories, batched.categories) and len(whole.categories) > 0


def test_host_available_bytes_is_plausible():
    got = memory.host_available_bytes()
    assert 0 < got < 1 << 50


def test_cli_run_refused_before_inference(monkeypatch, tmp_path):
    from spdnn.cli import cli

    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 10**6)
    result = CliRunner().invoke(cli, ["run", "--neurons", "64", "--layers", "2", "--samples", "50", "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr.startswith("spdnn: error: a run of N=64, L=2, 50 samples on the cpu engine")
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_generate_refused_before_it_starts(monkeypatch, tmp_path):
    from spdnn.cli import cli

    monkeypatch.setattr(memory, "host_available_bytes", lambda: 10**6)
    result = CliRunner().invoke(cli, ["generate", "-n", "1024", "-l", "2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "generating N=1024, L=2 needs about" in result.stderr
    assert not (tmp_path / "out" / "neuron1024").exists()


def test_info_states_memory_and_cache(monkeypatch, tmp_path):
    from spdnn.cli import cli

    monkeypatch.setenv("SPDNN_CACHE_DIR", str(tmp_path / "cache"))
    doc = json.loads(CliRunner().invoke(cli, ["info", "--json"]).stdout)
    rows = {(r["neurons"], r["layers"]): r for r in doc["memory"]["needs"]}
    assert rows[(65536, 120)]["run_cpu_host_bytes"] == memory.estimate_run(65536, 120).host_bytes
    assert doc["cache"]["total_bytes"] == 0 and doc["memory"]["host_available_bytes"] > 0
    text = CliRunner().invoke(cli, ["info"]).stdout
    assert "65536 x 1920" in text and "cache size:" in text


def test_general_network_estimates_use_the_widest_layer(rng):
    """The cpu engine's buffers hold the widest layer's values a row; the challenge's numbers do not move."""
    from spdnn.engines import get_engine

    net = Network.from_layers([random_layer(rng, 20, 0.2, columns=3000), rng.standard_normal((3000, 10))],
                              [0.1, 0.0], bias_rule="dense", activation=["relu", "identity"])
    engine = get_engine("cpu", precision="fp64")
    engine.prepare(net)
    assert engine._batch_rows() == memory.cpu_batch_rows(3000, "fp64")
    est = memory.estimate_network_run(net, 60000, precision="fp64", nnz=60000 * 5)
    batch = memory.cpu_batch_rows(3000, "fp64")
    assert est.notes["widest"] == 3000 and est.notes["batch_samples"] == batch
    assert est.host["activations"] == 2 * batch * 3000 * 8
    assert est.host["weights"] == memory.network_weight_bytes(net) == net.layers[0].nnz * 12 + 21 * 8 + 3000 * 10 * 8
    assert memory.estimate_run(20, 2, 60000, precision="fp64", nnz=60000 * 5).host["activations"] < \
        est.host["activations"] / 10                               # what assuming N = n_0 would have said
    challenge = Network.from_layers([random_layer(rng, 256, 32 / 256, values=1 / 16) for _ in range(3)], -0.3)
    for engine_name in ("cpu", "cuda", "reference"):
        assert memory.estimate_network_run(challenge, 5000, engine=engine_name, nnz=1000, values=False) == \
            memory.estimate_run(256, 3, 5000, engine=engine_name, nnz=1000, layers_in_memory=True)
