"""Random general networks through every engine that runs on the CPU, against the float64
reference: the cpu engine, the cuda engine's general path (numpy replay of its kernels)
and the cusparse engine's host logic (numpy standing in for CuPy: the ``host_cupy``
fixture). Each run draws new networks, features and batch sizes from the test's seed
(replay with SPDNN_TEST_SEED); a random search of this kind found the general path's
mid-network load bug (benchmarks/RESULTS.md)."""
from __future__ import annotations

import numpy as np

from spdnn.engines.cpu import CpuEngine
from spdnn.engines.cusparse import CusparseEngine
from spdnn.engines.reference import ReferenceEngine

from factories import engine_availability, feedforward_network, random_features
from test_cuda_general import EmulatedCuda

CASES = 150


def _case(rng):
    network = feedforward_network(rng)
    samples = int(rng.integers(1, 90))
    features = random_features(rng, samples, network.inputs, rng.uniform(0.05, 0.6),
                               values=["binary", "normal", (0.0, 2.0)][int(rng.integers(3))],
                               dead=rng.choice(samples, size=samples // 5, replace=False))
    batch = int(rng.integers(1, 30)) if rng.random() < 0.4 else None
    return network, features, batch


def test_random_general_networks_agree_with_the_reference(rng, host_cupy):
    for case in range(CASES):
        network, features, batch = _case(rng)
        ref = ReferenceEngine(precision="fp64").run(network, features, outputs="activations")
        engines = {"cpu": CpuEngine(precision="fp64", batch_samples=batch),
                   "cuda (general path, numpy replay)": EmulatedCuda(precision="fp64", poison=1e30,
                                                                      batch_samples=batch),
                   "cusparse (host logic)": CusparseEngine(precision="fp64", batch_samples=batch)}
        if not engine_availability("cpu")[0]:
            del engines["cpu"]                  # numba missing: the other two still run
        for name, engine in engines.items():
            got = engine.run(network, features, outputs="activations")
            where = f"case {case}, {name}, {network.describe()}, batch_samples={batch}"
            np.testing.assert_array_equal(got.categories, ref.categories, err_msg=where)
            np.testing.assert_array_equal(got.survivors, ref.survivors, err_msg=where)
            if engine.exact_fp64:
                assert np.array_equal(got.outputs.view(np.int64), ref.outputs.view(np.int64)), where
            else:
                np.testing.assert_allclose(got.outputs, ref.outputs, rtol=1e-12, atol=1e-12, err_msg=where)
