"""The CUDA kernels compile for Hopper (sm_90) with the template instances the engine asks
for, without a GPU: nvcc takes each kernel file as the engine builds it (its ``#include``d
headers resolved by :func:`kernel_source`) and instantiates every name
:func:`kernel_instances` gives for a spread of blockings. Skipped where nvcc is absent
(about ten seconds of compiling where it is). The include resolution itself is tested
without nvcc.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from spdnn.engines.cuda import compilation
from spdnn.engines.cuda.compilation import KERNEL_DIR, kernel_instances, kernel_source
from spdnn.errors import SpdnnError
from spdnn.engines.cuda.layout import VALUE_ARRAY, VALUE_SCALAR, VALUE_SUM_THEN_SCALE, KernelConfig, choose_config

_C1024 = choose_config(1024, 4, virtual=64).__dict__
_C16384 = choose_config(16384, 4, virtual=1024).__dict__
CASES = [  # (config, neurons, dtype, value dtype, value mode[, tail blocking[, distinct tail]])
    (choose_config(1024, 4, virtual=64), 1024, np.float32, None, VALUE_SUM_THEN_SCALE),
    (KernelConfig(**{**_C1024, "prefetch": True}), 1024, np.float32, None, VALUE_SUM_THEN_SCALE,
     KernelConfig(**{**_C1024, "rows_per_tile": 1, "prefetch": True, "stages": 5})),
    (KernelConfig(**{**_C1024, "prefetch": True, "stages": 2}), 1024, np.float64, None, VALUE_SCALAR,
     KernelConfig(**{**_C1024, "rows_per_tile": 1})),
    (choose_config(16384, 8, virtual=1024), 16384, np.float64, None, VALUE_SCALAR),
    (choose_config(65536, 4, virtual=4096), 65536, np.float32, None, VALUE_SUM_THEN_SCALE),
    (choose_config(700, 8), 700, np.float64, np.float16, VALUE_ARRAY),
    (KernelConfig(threads=32, cols_per_thread=4, rows_per_tile=4, chunk=700), 700, np.float64, np.float32, VALUE_ARRAY),
    (KernelConfig(threads=64, cols_per_thread=2, rows_per_tile=2, chunk=250, dedupe=True), 600, np.float64, np.float16,
     VALUE_ARRAY),
    (KernelConfig(threads=64, cols_per_thread=2, rows_per_tile=8, chunk=480, stationary=True, prefetch=True), 480,
     np.float32, np.float16, VALUE_ARRAY),
    # the distinct tail (tail.cu)
    (KernelConfig(**{**_C1024, "prefetch": True}), 1024, np.float32, None, VALUE_SUM_THEN_SCALE,
     KernelConfig(**{**_C1024, "rows_per_tile": 1, "prefetch": True, "stages": 4}), True),
    (KernelConfig(**_C16384), 16384, np.float64, np.float32, VALUE_ARRAY,
     KernelConfig(**{**_C16384, "rows_per_tile": 1, "prefetch": True, "stages": 2}), True),
    (KernelConfig(**_C16384), 16384, np.float32, None, VALUE_SCALAR,
     KernelConfig(**{**_C16384, "rows_per_tile": 1, "prefetch": True, "stages": 3}), True),
]


def test_kernel_source_resolves_includes_once_recursively_in_order(tmp_path, monkeypatch):
    (tmp_path / "a.cuh").write_text('// a\n#include "b.cuh"\nint a;\n')
    (tmp_path / "b.cuh").write_text("int b;\n")
    (tmp_path / "k.cu").write_text('#include "b.cuh"\n  #include "a.cuh"\n#include "a.cuh"\nint k;\n')
    (tmp_path / "bad.cu").write_text('#include "a.cuh"\n#include "missing.cuh"\n')
    monkeypatch.setattr(compilation, "KERNEL_DIR", tmp_path)
    assert kernel_source("k.cu") == "int b;\n\n// a\n\nint a;\n\n\nint k;\n"
    with pytest.raises(SpdnnError, match=r"'bad.cu' includes 'missing.cuh'"):
        kernel_source("bad.cu")
    with pytest.raises(SpdnnError, match="no kernel file 'nope.cu'"):
        kernel_source("nope.cu")


@pytest.mark.parametrize("filename", ["stationary.cu", "layer.cu", "merge.cu", "general.cu", "tail.cu"])
def test_every_kernel_file_names_its_headers(filename):
    """Each kernel file includes common.cuh first; nothing is left unresolved; no header
    comes in twice; the cp.async helpers reach only the files that stage asynchronously
    (stationary.cu; layer.cu and general.cu through chunked_tile.cuh)."""
    text = (KERNEL_DIR / filename).read_text()
    includes = [line.split('"')[1] for line in text.splitlines() if line.startswith("#include")]
    assert includes[0] == "common.cuh"
    code = kernel_source(filename)
    assert "#include" not in "\n".join(line for line in code.splitlines() if not line.lstrip().startswith("//"))
    assert code.count("enum ValueMode") == 1
    assert ("cp_async16" in code) == (filename != "merge.cu")
    assert ("mix64" in code) == (filename == "merge.cu")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("filename", ["stationary.cu", "layer.cu", "merge.cu", "tail.cu"])
def test_kernels_compile_for_sm90(tmp_path, filename):
    names = sorted({name for case in CASES
                    for name in kernel_instances(*case[:5], tail=case[5] if len(case) > 5 else None,
                                                 distinct_tail=len(case) > 6 and case[6])
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


def _general_names(filename):
    """Every instance of ``filename`` the general path asks for on the general test cases
    (fp32 and fp64; one value, per-entry values, half-precision values; compacting or not,
    pipelined or not; dense layers) and on a wide layer (N = 16384: 32 outputs a thread)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from factories import GENERAL_CASES, general_case
    from spdnn.engines.cuda.general import general_instances, plan_general
    from spdnn.network import Network
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    nets = [general_case(rng, case, samples=4)[0] for case in GENERAL_CASES]
    wide = sp.random(16384, 16384, density=2e-4, format="csr", random_state=1)
    nets.append(Network.from_layers([wide], -0.1, bias_rule="dense"))
    names = set()
    for net in nets:
        for dtype in (np.float32, np.float64):
            for blocking in (None, {"pipelined": True}):
                if blocking and net is nets[-1]:
                    continue                # N = 16384: two buffers of its rows do not fit
                layers = plan_general(net, dtype, blocking=blocking)
                names |= set(general_instances(layers, dtype).get(filename, {}).values())
    # one instance of each (types, value mode, compacting, pipelined) and every
    # 32-outputs-a-thread one (about twenty in all would take two minutes)
    kept = {}
    for name in sorted(names):
        args = name.partition("<")[2].rstrip(">").split(", ")
        key = (name.partition("<")[0], *args[:3], *args[-2:]) if len(args) == 8 else (name,)
        if len(args) == 8 and args[5] == "32":
            key = (name,)
        kept.setdefault(key, name)
    return sorted(kept.values())


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_general_kernels_compile_for_sm90(tmp_path):
    names = _general_names("general.cu")
    assert any("true>" in n for n in names) and any("false>" in n for n in names)
    assert any(n.endswith(", true, true>") for n in names) and any(n.endswith(", false, true>") for n in names)
    assert "spdnn_general_dense<double>" in names and "spdnn_general_count" in names
    code = kernel_source("general.cu") + "\n" + "\n".join(
        f"static const void* spdnn_instance_{i} = reinterpret_cast<const void*>(&{name});"
        for i, name in enumerate(names))
    src = tmp_path / "general.cu"
    src.write_text(code)
    run = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-Xptxas", "-v", "-c", str(src),
                          "-o", str(tmp_path / "out.o")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    for line in run.stderr.splitlines():
        if "bytes spill stores" in line:
            stores = int(line.split("bytes spill stores")[0].split(",")[-1])
            assert stores <= 64, f"general.cu: register spills: {line.strip()}"
