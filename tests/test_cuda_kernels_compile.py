"""The CUDA kernels compile for Hopper (sm_90) with the template instances the engine asks
for, without a GPU: nvcc takes each kernel file as the engine builds it (common.cuh first)
and instantiates every name :func:`kernel_instances` gives for a spread of blockings.
Skipped where nvcc is absent (about ten seconds of compiling where it is).
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from spdnn.engines.cuda.engine import kernel_instances, kernel_source
from spdnn.engines.cuda.layout import VALUE_ARRAY, VALUE_SCALAR, VALUE_SUM_THEN_SCALE, KernelConfig, choose_config

_C1024 = choose_config(1024, 4, virtual=64).__dict__
CASES = [  # (config, neurons, dtype, value dtype, value mode[, tail blocking])
    (choose_config(1024, 4, virtual=64), 1024, np.float32, None, VALUE_SUM_THEN_SCALE),
    (KernelConfig(**{**_C1024, "prefetch": True}), 1024, np.float32, None, VALUE_SUM_THEN_SCALE,
     KernelConfig(**{**_C1024, "mb": 1, "prefetch": True, "stages": 5})),
    (KernelConfig(**{**_C1024, "prefetch": True, "stages": 2}), 1024, np.float64, None, VALUE_SCALAR,
     KernelConfig(**{**_C1024, "mb": 1})),
    (choose_config(16384, 8, virtual=1024), 16384, np.float64, None, VALUE_SCALAR),
    (choose_config(65536, 4, virtual=4096), 65536, np.float32, None, VALUE_SUM_THEN_SCALE),
    (choose_config(700, 8), 700, np.float64, np.float16, VALUE_ARRAY),
    (KernelConfig(threads=32, opt=4, mb=4, chunk=700), 700, np.float64, np.float32, VALUE_ARRAY),
    (KernelConfig(threads=64, opt=2, mb=2, chunk=250, dedupe=True), 600, np.float64, np.float16, VALUE_ARRAY),
    (KernelConfig(threads=64, opt=2, mb=8, chunk=480, stationary=True, prefetch=True), 480, np.float32,
     np.float16, VALUE_ARRAY),
]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("filename", ["stationary.cu", "layer.cu", "merge.cu"])
def test_kernels_compile_for_sm90(tmp_path, filename):
    names = sorted({name for case in CASES
                    for name in kernel_instances(*case[:5], tail=case[5] if len(case) > 5 else None)
                    .get(filename, {}).values()})
    assert names, filename
    code = kernel_source(filename) + "\n" + "\n".join(
        f"static const void* spdnn_instance_{i} = reinterpret_cast<const void*>(&{name});"
        for i, name in enumerate(names))
    src = tmp_path / filename
    src.write_text(code)
    run = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-Xptxas", "-v", "-c", str(src),
                          "-o", str(tmp_path / "out.o")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "spill" in run.stderr                                   # ptxas reported every kernel
    for line in run.stderr.splitlines():
        if "bytes spill stores" in line:
            stores = int(line.split("bytes spill stores")[0].split(",")[-1])
            assert stores <= 64, f"{filename}: register spills: {line.strip()}"
