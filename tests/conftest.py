"""Shared fixtures and markers.

Markers: ``gpu`` (skipped without CuPy and a CUDA device), ``mpi`` (skipped without
mpi4py and mpiexec), ``slow`` (skipped unless ``--runslow``). Random seeds come from
the ``seed`` fixture, printed so a failure can be replayed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from spdnn.engines import ENGINES

REPO = Path(__file__).resolve().parents[1]
#: The project's shared data (never committed): ../shared/data beside the checkout,
#: or SPDNN_SHARED_DATA (on the device machine, a carried copy).
SHARED_DATA = Path(os.environ.get("SPDNN_SHARED_DATA", REPO.parent / "shared" / "data"))
OFFICIAL = SHARED_DATA / "official"

# Hypothesis profiles of the property-based tests (tests/test_fuzz.py). "ci", the default:
# a short, reproducible run (derandomized, no example database). "long": many examples
# and no deadline, for ``--hypothesis-profile long`` and benchmarks/fuzz.py
# (SPDNN_FUZZ_EXAMPLES sets the examples per test).
settings.register_profile(
    "ci", max_examples=25, derandomize=True, database=None, deadline=10000, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "long", max_examples=int(os.environ.get("SPDNN_FUZZ_EXAMPLES", "2000")), derandomize=False, database=None,
    deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.load_profile("ci")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    from spdnn.config import cupy_status, mpi_status

    gpu_ok, gpu_why = cupy_status()
    mpi_ok, mpi_why = mpi_status()
    if mpi_ok and shutil.which("mpiexec") is None:
        mpi_ok, mpi_why = False, "mpiexec is not on PATH"
    for item in items:
        if "gpu" in item.keywords and not gpu_ok:
            item.add_marker(pytest.mark.skip(reason=f"needs a CUDA GPU: {gpu_why}"))
        if "mpi" in item.keywords and not mpi_ok:
            item.add_marker(pytest.mark.skip(reason=f"needs MPI: {mpi_why}"))
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow test: pass --runslow"))


@pytest.fixture
def seed(request):
    """A fresh random seed per test, printed (pytest shows it on failure)."""
    s = int(os.environ.get("SPDNN_TEST_SEED", np.random.SeedSequence().entropy % (2**32)))
    print(f"[{request.node.name}] seed={s} (replay with SPDNN_TEST_SEED={s})")
    return s


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)


@pytest.fixture
def host_cupy(monkeypatch):
    """numpy as ``cupy`` and scipy.sparse as ``cupyx.scipy.sparse`` for the cusparse engine
    (tests/fake_cupy.py, :func:`install_numpy`)."""
    import fake_cupy
    from spdnn.engines import cusparse

    return fake_cupy.install_numpy(monkeypatch, cusparse)


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """../shared/data/official; tests using it skip with a reason where it is absent."""
    if not (OFFICIAL / "neuron1024.tar.gz").exists():
        pytest.skip(f"official data not found at {OFFICIAL} (set SPDNN_SHARED_DATA)")
    return OFFICIAL


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    """The MNIST training images shipped in the package."""
    import spdnn

    return Path(spdnn.__file__).parent / "data" / "train-images-idx3-ubyte.gz"


@pytest.fixture(params=sorted(ENGINES))
def engine_name(request) -> str:
    """Every registered engine's name, skipped (with the reason) where it cannot run here."""
    from factories import engine_availability

    ok, why = engine_availability(request.param)
    if not ok:
        pytest.skip(f"engine {request.param!r} not available here: {why}")
    return request.param
