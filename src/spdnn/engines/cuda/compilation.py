"""Compiling the CUDA engine's kernels: sources, template instances, modules, occupancy.

Kernels live in ``kernels/*.cu`` and are compiled at run time by NVRTC through CuPy (no
build step); a module is compiled once a process per device and file and instance set,
and CuPy keeps the binary in its on-disk cache, keyed by the whole source text. Nothing
here imports CuPy at module import time; :func:`kernel_source` and
:func:`kernel_instances` are plain text (tests compile them with nvcc, no GPU needed).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import SpdnnError
from .._cupy import cupy
from . import kernel_args
from .layout import KernelConfig

__all__ = ["KERNEL_DIR", "kernel_source", "kernel_instances", "ctype", "CompiledKernel", "compiled_kernels",
           "blocks_per_sm", "template_arguments", "instance_types", "bind_arguments"]

KERNEL_DIR = Path(__file__).parent / "kernels"

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
           np.dtype(np.float16): "unsigned short"}


def ctype(dtype) -> str:
    """The C++ type the kernels use for ``dtype`` (half-precision weights as their bits)."""
    return _CTYPES[np.dtype(dtype)]


#: A kernel file's request for a header of ``kernels/``: a line ``#include "name.cuh"``.
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"\n]+)"[ \t]*$', re.MULTILINE)


def kernel_source(filename: str) -> str:
    """The source compiled for ``kernels/<filename>``: the file with its includes resolved.

    NVRTC is given text, not an include path, so each line ``#include "name.cuh"`` is
    replaced by the text of ``kernels/name.cuh`` (its own includes resolved the same way,
    recursively and in order); a header comes in once, where first named, and a later
    line naming it again is dropped. CuPy's compile cache is keyed by
    the whole resulting text, so a change to any header recompiles the files that include it.

    Raises
    ------
    SpdnnError
        A file names a header that is not in ``kernels/`` (the error names both).
    """
    included: set[str] = set()

    def text_of(name: str, named_by: str | None) -> str:
        path = KERNEL_DIR / name
        if not path.is_file():
            if named_by is None:
                raise SpdnnError(f"no kernel file {name!r} in {KERNEL_DIR}")
            raise SpdnnError(f"kernel file {named_by!r} includes {name!r}, which is not in {KERNEL_DIR}")
        return path.read_text()

    def resolve(name: str, named_by: str | None) -> str:
        def header(match: re.Match) -> str:
            wanted = match.group(1)
            if wanted in included:
                return ""
            included.add(wanted)
            return resolve(wanted, name)

        return _INCLUDE.sub(header, text_of(name, named_by))

    included.add(filename)
    return resolve(filename, None)


def kernel_instances(config: KernelConfig, neurons: int, dtype, value_dtype, value_mode: int, *,
                     tail: KernelConfig | None = None, distinct_tail: bool = False) -> dict[str, dict[str, str]]:
    """The kernel template instances a challenge run needs: {file: {role: instance}}.

    Roles: 'stationary' or 'layer' (the layer kernel of ``config``), 'tail' (the stationary
    kernel of ``tail``, if given; ``tail.cu``'s distinct tail with ``distinct_tail``),
    'wide_sums', 'wide_expand' and 'wide_place' (the wide path of per-layer
    deduplicated blockings), 'compact', 'densify', 'copy' (``layer.cu``), 'find' and
    'mcompact' (``merge.cu``). ``value_dtype`` is the stored weight type for
    :data:`.layout.VALUE_ARRAY` (else None).
    """
    cfg = config
    t = ctype(dtype)
    v = t if value_dtype is None else ctype(value_dtype)
    flag = {True: "true", False: "false"}
    layer = {"compact": f"spdnn_compact<{t}>", "densify": f"spdnn_densify<{t}>", "copy": "spdnn_copy_count"}
    out = {}

    def stationary(c: KernelConfig) -> str:
        return (f"spdnn_stationary<{t}, {v}, {value_mode}, {c.threads}, {c.rows_per_tile}, {c.cols_per_thread}, "
                f"{flag[c.dedupe]}, {c.prefetch_stages}>")

    if cfg.stationary:
        out["stationary.cu"] = {"stationary": stationary(cfg)}
        if tail is not None and distinct_tail:
            out["tail.cu"] = {"tail": f"spdnn_tail<{t}, {v}, {value_mode}, {tail.threads}, {tail.cols_per_thread}, "
                                      f"{tail.prefetch_stages}>"}
        elif tail is not None:
            out["stationary.cu"]["tail"] = stationary(tail)
    else:
        fused = cfg.slices(neurons) == 1
        layer["layer"] = (f"spdnn_layer<{t}, {v}, {value_mode}, {cfg.threads}, {cfg.rows_per_tile}, "
                          f"{cfg.cols_per_thread}, {flag[fused]}, {flag[cfg.dedupe]}>")
        if cfg.dedupe:
            layer["wide_sums"] = f"spdnn_wide_sums<{t}, {v}, {value_mode}>"
            layer["wide_expand"] = f"spdnn_wide_expand<{t}, {value_mode}>"
            layer["wide_place"] = f"spdnn_wide_place<{t}>"
    out["layer.cu"] = layer
    out["merge.cu"] = {"find": f"spdnn_merge_find<{t}>", "mcompact": f"spdnn_merge_compact<{t}>"}
    return out


@functools.lru_cache(maxsize=None)
def _module(device_id: int, filename: str, names: tuple[str, ...]):
    """The RawModule of :func:`kernel_source` ``(filename)`` (its headers included) with these
    template instances."""
    cp = cupy("cuda")
    with cp.cuda.Device(device_id):
        return cp.RawModule(code=kernel_source(filename), options=("-std=c++17",), name_expressions=list(names))


#: numpy type of a template's type argument (half-precision weights are stored as float16,
#: read by the kernels as their bits).
_NUMPY_OF_C = {"float": np.float32, "double": np.float64, "unsigned short": np.float16}


def template_arguments(name: str) -> tuple[str, list[str]]:
    """('spdnn_x', ['a', 'b', 'c']) of a template instance name 'spdnn_x<a, b, c>'."""
    if "<" not in name:
        return name, []
    base, rest = name.split("<", 1)
    return base.strip(), [a.strip() for a in rest.rstrip().rstrip(">").split(",")]


@functools.lru_cache(maxsize=None)
def instance_types(name: str) -> tuple[np.dtype, np.dtype]:
    """(T, V) of a template instance as numpy types: its first and second type arguments
    (V defaults to T; T to float32 where the kernel has none)."""
    types = [np.dtype(_NUMPY_OF_C[a]) for a in template_arguments(name)[1][:2] if a in _NUMPY_OF_C]
    t = types[0] if types else np.dtype(np.float32)
    return t, types[1] if len(types) > 1 else t


def bind_arguments(name: str, values: dict) -> tuple:
    """The arguments ``values`` ({parameter: value}) of the kernel instance ``name``, checked
    and in its signature's order (:meth:`.kernel_args.KernelArgs.bind`)."""
    return kernel_args.kernel_args(name).bind(values, *instance_types(name))


@dataclass(frozen=True)
class CompiledKernel:
    """A compiled kernel (``fn``: a cupy RawKernel) and the template instance it is."""

    fn: object
    name: str

    def launch(self, grid: int, block: int, values: dict, smem: int = 0, *, debug_device=None,
               what: str = "") -> None:
        """Queue the kernel on the current stream (capturable) with its arguments by name
        (:func:`bind_arguments`). ``debug_device``: synchronize it after the launch and
        turn a failure into a SpdnnError naming the kernel and ``what``."""
        args = bind_arguments(self.name, values)
        try:
            self.fn((int(grid),), (int(block),), args, shared_mem=int(smem))
            if debug_device is not None:
                debug_device.synchronize()
        except Exception as exc:
            if debug_device is None:
                raise
            raise SpdnnError(f"cuda engine: kernel {self.name} failed ({what}): {exc}") from exc


def compiled_kernels(device_id: int, filename: str, names: dict[str, str]) -> dict[str, CompiledKernel]:
    """{role: CompiledKernel} for ``names`` = {role: template instance} of one kernel file
    (compiled on first use per device)."""
    module = _module(device_id, filename, tuple(names.values()))
    with cupy("cuda").cuda.Device(device_id):
        return {role: CompiledKernel(module.get_function(name), name) for role, name in names.items()}


def blocks_per_sm(kernel: CompiledKernel, threads: int, smem: int, dev) -> int:
    """Resident blocks of ``kernel`` a multiprocessor holds (registers, threads, shared
    memory: ``smem`` dynamic bytes a block) on CuPy device ``dev``."""
    attrs = dev.attributes
    regs = max(int(kernel.fn.num_regs), 1)
    regs_per_warp = -(-regs * 32 // 256) * 256
    by_regs = attrs.get("MaxRegistersPerMultiprocessor", 65536) // (regs_per_warp * (threads // 32))
    by_threads = attrs.get("MaxThreadsPerMultiProcessor", 2048) // threads
    static = int(kernel.fn.shared_size_bytes)
    by_smem = attrs.get("MaxSharedMemoryPerMultiprocessor", 228 * 1024) // (smem + static + 1024)
    return max(1, min(by_regs, by_threads, by_smem, 32))
