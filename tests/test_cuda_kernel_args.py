"""Kernel arguments by name (spdnn.engines.cuda.kernel_args): the definitions equal every
kernel's signature in kernels/*.cu, parameter for parameter; binding refuses what would
reach a kernel wrong. CPU only."""
from __future__ import annotations

import re

import numpy as np
import pytest

from spdnn.engines.cuda.compilation import (KERNEL_DIR, bind_arguments, instance_types, kernel_instances,
                                            template_arguments)
from spdnn.engines.cuda.kernel_args import ARGUMENTS, kernel_args, row_arguments
from spdnn.engines.cuda.layout import VALUE_ARRAY, VALUE_SCALAR, KernelConfig, choose_config

_SIGNATURE = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\((.*?)\)\s*\{", re.S)


def _signatures() -> dict[str, list[tuple[str, str]]]:
    """{kernel: [(parameter, C++ type without __restrict__), ...]} of every kernels/*.cu."""
    out = {}
    for path in sorted(KERNEL_DIR.glob("*.cu")):
        for m in _SIGNATURE.finditer(path.read_text()):
            params = []
            for p in m.group(2).split(","):
                p = re.sub(r"\s+", " ", p.replace("__restrict__", "")).strip()
                ctype, name = p.rsplit(" ", 1)
                params.append((name, ctype.replace(" *", "*").strip()))
            out[m.group(1)] = params
    return out


def test_every_kernel_signature_is_its_definition():
    signatures = _signatures()
    assert set(signatures) == set(ARGUMENTS), "a kernel without a definition, or a definition without a kernel"
    for kernel, params in signatures.items():
        assert [(f.name, f.ctype) for f in ARGUMENTS[kernel].fields] == params, kernel


def test_every_instance_the_engine_asks_for_has_a_definition():
    cfgs = [choose_config(1024, 4, virtual=64),
            KernelConfig(threads=64, cols_per_thread=2, rows_per_tile=4, chunk=256, dedupe=True),
            KernelConfig(threads=64, cols_per_thread=2, rows_per_tile=4, chunk=256)]
    for cfg in cfgs:
        for names in kernel_instances(cfg, 1024, np.float32, np.float16, VALUE_ARRAY).values():
            for name in names.values():
                assert kernel_args(name).kernel == template_arguments(name)[0]


def test_instance_types_follow_the_template_arguments():
    assert instance_types("spdnn_layer<double, unsigned short, 2, 64, 4, 2, true, false>") == (
        np.dtype(np.float64), np.dtype(np.float16))
    assert instance_types("spdnn_wide_expand<float, 0>") == (np.dtype(np.float32), np.dtype(np.float32))
    assert instance_types("spdnn_copy_count")[0] == np.dtype(np.float32)


def _values(kernel: str, t, v):
    """Valid arguments for ``kernel`` (small host arrays and numbers)."""
    out = {}
    for f in kernel_args(kernel).fields:
        want = f.numpy_type(t, v)
        out[f.name] = np.zeros(4, want) if f.pointer else (3 if want.kind in "iu" else 0.5)
    return out


def test_binding_orders_converts_and_passes_arrays_through():
    name = "spdnn_layer<float, float, 1, 128, 4, 2, true, false>"
    values = _values(name, np.float32, np.float32)
    values["n"], values["scalar"] = np.int64(1024), 0.0625
    bound = bind_arguments(name, dict(reversed(list(values.items()))))          # any order in, signature order out
    fields = kernel_args(name).fields
    assert [f.name for f in fields][:2] == ["y_in", "y_out"] and bound[0] is values["y_in"]
    by_name = dict(zip((f.name for f in fields), bound))
    assert type(by_name["n"]) is np.int32 and by_name["n"] == 1024
    assert type(by_name["scalar"]) is np.float32 and type(by_name["rows_hi"]) is np.int32


REFUSED = {
    "missing": (lambda v: v.pop("n"), r"missing \['n'\]"),
    "unknown": (lambda v: v.update(wts_in=v["mult_in"]), r"unknown \['wts_in'\]"),
    "element type": (lambda v: v.update(mult_in=np.zeros(4, np.int64)),
                     r"mult_in \(const int\*\) needs an array of int32"),
    "value type": (lambda v: v.update(entry_val=np.zeros(4, np.float32)),
                   r"entry_val \(const V\*\) needs an array of float16"),
    "not an array": (lambda v: v.update(bias=[0.0, 1.0]), r"bias \(const T\*\) needs an array of float64, got list"),
    "odd int2": (lambda v: v.update(warp_slices=np.zeros(3, np.int32)), r"warp_slices \(const int2\*\) needs pairs"),
    "fraction": (lambda v: v.update(chunk=2.5), r"chunk \(int\) = 2.5 is not an integer"),
    "range": (lambda v: v.update(rows_hi=2 ** 31), r"rows_hi \(int\) = 2147483648 is not an integer within"),
    "not a number": (lambda v: v.update(ymax="32"), r"ymax \(T\) needs a number, got str"),
    "bool": (lambda v: v.update(slices=True), r"slices \(int\) needs a number, got bool"),
}


@pytest.mark.parametrize("fault", sorted(REFUSED))
def test_binding_refuses_what_would_reach_the_kernel_wrong(fault):
    name = "spdnn_layer<double, unsigned short, 2, 64, 4, 2, true, false>"
    values = _values(name, np.float64, np.float16)
    hurt, message = REFUSED[fault]
    hurt(values)
    with pytest.raises(TypeError, match="spdnn_layer: " + message if fault not in ("missing", "unknown")
                       else message):
        bind_arguments(name, values)


def test_row_arguments_read_one_buffer_and_write_the_other():
    y, ids, mult = ["y0", "y1"], ["i0", "i1"], ["m0", "m1"]
    assert row_arguments(1, ids, mult, y) == {"y_in": "y1", "y_out": "y0", "ids_in": "i1", "ids_out": "i0",
                                              "mult_in": "m1", "mult_out": "m0"}
    assert "y_in" not in row_arguments(0, ids, mult)


def test_a_scalar_value_mode_instance_binds_without_stored_values():
    name = f"spdnn_stationary<float, float, {VALUE_SCALAR}, 256, 4, 1, true, 3>"
    assert len(bind_arguments(name, _values(name, np.float32, np.float32))) == len(kernel_args(name).fields)
