"""Kernel arguments by name, checked: one definition of every kernel's parameters.

Every kernel of ``kernels/*.cu`` has its parameters written once more here, in
:data:`ARGUMENTS` (name and C++ type, in the signature's order). A launch gives its
arguments by *name* (a dict); :meth:`KernelArgs.bind` checks them and returns them in
the signature's order: every parameter given and none unknown, each array of the element
type the parameter points to, each scalar converted to the parameter's type (an integer
out of range, or a fraction for an integer, is refused). CuPy passes positional
arguments unchecked, so before this an argument left out, swapped or of the wrong type
ran silently on wrong memory.

``tests/test_cuda_kernel_args.py`` reads every kernel's signature from ``kernels/*.cu``
and checks that it is the definition here, field for field (CPU, in CI); the numpy replay
of the kernels (:mod:`.emulate`) binds its launches through the same definitions.

Why not a struct parameter: a kernel taking one struct by value (forwarding to its body)
changed the machine code of 29 of the 39 instances compiled for sm_90 (the non-coherent
loads of ``__restrict__`` parameters lost, different scheduling), which no measurement
justified; the signatures stay as they are and are checked against these definitions
(the git branch ``struct-args`` holds the struct version, to be timed against this one).

Types: ``T`` is the activation type (float or double), ``V`` the stored weight value
type (float, double, or unsigned short: half-precision bits, passed as a float16 array);
pointers are written ``const X*`` (read) or ``X*`` (written).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["Field", "KernelArgs", "ARGUMENTS", "kernel_args", "row_arguments"]

#: numpy type of each C++ element type a pointer may point to or a scalar may have
#: (``T`` and ``V`` are resolved per instance; ``int2`` arrays are int32 pairs).
_C_TO_NUMPY = {"int": np.int32, "long long": np.int64, "unsigned short": np.uint16,
               "unsigned long long": np.uint64, "int2": np.int32}


@dataclass(frozen=True)
class Field:
    """One parameter: ``name`` and its C++ type ``ctype`` (e.g. ``const T*``, ``int``)."""

    name: str
    ctype: str

    @property
    def pointer(self) -> bool:
        return self.ctype.endswith("*")

    @property
    def element(self) -> str:
        """The pointed-to type (pointers) or the type (scalars), without const."""
        return self.ctype.rstrip("*").replace("const ", "").strip()

    def numpy_type(self, t, v) -> np.dtype:
        """The numpy type of the element (``T`` -> ``t``, ``V`` -> ``v``)."""
        e = self.element
        return np.dtype(t if e == "T" else v if e == "V" else _C_TO_NUMPY[e])


@dataclass(frozen=True)
class KernelArgs:
    """The parameters of one kernel (``kernel``: its name without template arguments)."""

    kernel: str
    fields: tuple[Field, ...]

    def bind(self, values: dict, t, v=None) -> tuple:
        """The arguments of ``values`` ({parameter: array or number}) in the signature's
        order, for activation type ``t`` and stored value type ``v`` (default ``t``):
        arrays as given (checked), scalars as numpy scalars of the parameter's type.

        Raises TypeError naming the kernel and the parameter: one missing or unknown, an
        array of another element type (or an odd count for ``int2``), a scalar that is not
        a number, or not an integer within range for an integer parameter.
        """
        checks = _checks(self, np.dtype(t), np.dtype(t if v is None else v))
        if len(values) != len(checks) or not all(name in values for name, *_ in checks):
            names = [name for name, *_ in checks]
            missing = [n for n in names if n not in values]
            unknown = [n for n in values if n not in names]
            raise TypeError(f"{self.kernel}: arguments missing {missing}, unknown {unknown}")
        out = []
        for name, ctype, pointer, want, bounds in checks:
            value = values[name]
            if pointer:
                if getattr(value, "dtype", None) != want or not hasattr(value, "data"):
                    got = getattr(value, "dtype", None)
                    raise TypeError(f"{self.kernel}: {name} ({ctype}) needs an array of {want}, got "
                                    f"{type(value).__name__}{'' if got is None else ' of ' + str(got)}")
                if ctype.endswith("int2*") and value.size % 2:
                    raise TypeError(f"{self.kernel}: {name} ({ctype}) needs pairs of int32, got {value.size} values")
                out.append(value)
                continue
            if type(value) not in _NUMBERS and not isinstance(value, (np.integer, np.floating)):
                raise TypeError(f"{self.kernel}: {name} ({ctype}) needs a number, got {type(value).__name__}")
            if bounds is not None and (isinstance(value, (float, np.floating)) or
                                       not bounds[0] <= int(value) <= bounds[1]):
                raise TypeError(f"{self.kernel}: {name} ({ctype}) = {value!r} is not an integer within "
                                f"{bounds[0]}..{bounds[1]}")
            out.append(want.type(value))
        return tuple(out)


#: Python number types a scalar parameter takes (numpy's integer and floating scalars too).
_NUMBERS = (int, float)


@functools.lru_cache(maxsize=None)
def _checks(spec: KernelArgs, t: np.dtype, v: np.dtype) -> tuple:
    """Per parameter of ``spec``: (name, ctype, pointer, numpy type, integer bounds or None)."""
    out = []
    for f in spec.fields:
        want = f.numpy_type(t, v)
        bounds = None
        if not f.pointer and want.kind in "iu":
            info = np.iinfo(want)
            bounds = (int(info.min), int(info.max))
        out.append((f.name, f.ctype, f.pointer, want, bounds))
    return tuple(out)


def _fields(*specs: tuple) -> tuple[Field, ...]:
    return tuple(Field(*s) for s in specs)


# -- the arguments of every kernel -------------------------------------------------------------
# Groups of fields several kernels share, in the order they take them; the kernels' comments
# (kernels/*.cu) say what each field holds and who reads or writes it.

#: The row buffers of a step: activations (rows x n), sample ids and multiplicities (the
#: samples a row stands for after merging), read from *_in, written to *_out.
ROWS = (("y_in", "const T*"), ("y_out", "T*"), ("ids_in", "const int*"), ("ids_out", "int*"),
        ("mult_in", "const int*"), ("mult_out", "int*"))
#: Row counters on the device: rows entering, rows and samples leaving.
COUNTS = (("count_in", "const int*"), ("count_out", "int*"))
#: A layer's packed weights (engines/cuda/layout.py): buffer-local 16-bit indices, values
#: (per entry, in V), the warp-slice table (offset, width).
WEIGHTS = (("entry_idx", "const unsigned short*"), ("entry_val", "const V*"), ("warp_slices", "const int2*"))
#: The range of row counts a launch runs for (it returns at once outside rows_lo..rows_hi).
RANGE = (("rows_lo", "int"), ("rows_hi", "int"))

ARGUMENTS: dict[str, KernelArgs] = {}


def _define(kernel: str, *groups) -> None:
    ARGUMENTS[kernel] = KernelArgs(kernel, _fields(*[f for g in groups for f in g]))


# layer.cu
_define("spdnn_layer", ROWS, COUNTS, (("samples_out", "int*"), ("flags", "int*")), WEIGHTS,
        (("bias", "const T*"), ("out_map", "const unsigned short*"), ("scalar", "T"), ("ymax", "T"), ("n", "int"),
         ("chunk", "int"), ("nchunks", "int"), ("slices", "int")), RANGE)
_define("spdnn_wide_sums", (("y_in", "const T*"), ("count_in", "const int*")), RANGE, WEIGHTS,
        (("scalar", "T"), ("sums", "T*"), ("live", "int*"), ("n", "int"), ("chunk", "int"), ("nchunks", "int"),
         ("cols_per_thread", "int"), ("layout_warps", "int")))
_define("spdnn_wide_expand", (("sums", "const T*"), ("vcols", "int"), ("count_in", "const int*")),
        RANGE, (("out_map", "const unsigned short*"), ("bias", "const T*"), ("scalar", "T"), ("ymax", "T"),
                ("z_out", "T*"), ("live", "int*"), ("n", "int")))
_define("spdnn_wide_place", (("z", "const T*"),), ROWS[1:], (("live", "const int*"),
        ("count_in", "const int*")), RANGE, (("count_out", "int*"), ("samples_out", "int*"), ("n", "int")))
_define("spdnn_compact", (("src", "const T*"), ("dst", "T*")), ROWS[2:], (("flags", "int*"),), COUNTS,
        (("samples_out", "int*"), ("n", "int")), RANGE)
_define("spdnn_copy_count", (("src", "const int*"), ("dst", "int*")))
_define("spdnn_densify", (("indptr", "const long long*"), ("indices", "const int*"),
        ("data", "const T*"), ("y", "T*"), ("rows", "int"), ("n", "int")))
# stationary.cu
_define("spdnn_stationary", ROWS, COUNTS,
        (("ticket", "int*"), ("deaths", "int*"), ("sample_deaths", "int*")), WEIGHTS,
        (("entry_off", "const long long*"), ("ebase", "long long"), ("max_entries", "int"),
         ("out_map", "const unsigned short*"), ("kbase", "int"), ("bias", "const T*"), ("bias_stride", "long long"),
         ("ubias", "T"), ("scalars", "const T*"), ("ymax", "T"), ("n", "int"), ("k0", "int"), ("k1", "int")), RANGE)
# tail.cu
_define("spdnn_tail", ROWS, COUNTS, (("ticket", "int*"), ("deaths", "int*"), ("sample_deaths", "int*"),
        ("entry_cidx", "const unsigned short*"), ("entry_val", "const V*"), ("warp_slices", "const int2*"),
        ("entry_off", "const long long*"), ("max_entries", "int"), ("out_map", "const unsigned short*"),
        ("reps", "const unsigned short*"), ("ubias", "T"), ("scalars", "const T*"), ("ymax", "T"), ("n", "int"),
        ("k0", "int"), ("k1", "int")), RANGE)
# merge.cu
_define("spdnn_merge_find", (("y", "const T*"), ("mult", "const int*"), ("count_in", "const int*"),
        ("keys", "unsigned long long*"), ("vals", "int*"), ("tmask", "int"), ("rep", "int*"), ("mult_add", "int*"),
        ("n", "int")))
_define("spdnn_merge_compact", ROWS, COUNTS,
        (("rep", "const int*"), ("mult_add", "int*"), ("parent", "int*"), ("n", "int")))
# general.cu
_define("spdnn_general_sparse", ROWS, COUNTS, (("samples_out", "int*"), ("flags", "int*")),
        WEIGHTS, (("bias", "const T*"), ("scalar", "T"), ("dense_bias", "int"), ("relu", "int"), ("cap", "T"),
                  ("n_in", "int"), ("n_out", "int"), ("chunk", "int"), ("nchunks", "int"), ("slices", "int")))
_define("spdnn_general_dense", (("y_in", "const T*"), ("y_out", "T*"), ("count_in", "const int*"),
        ("flags", "int*"), ("w", "const T*"), ("bias", "const T*"), ("dense_bias", "int"), ("relu", "int"),
        ("cap", "T"), ("n_in", "int"), ("n_out", "int")))
_define("spdnn_general_count", (("flags", "const int*"),), COUNTS)


def kernel_args(kernel: str) -> KernelArgs:
    """The parameters of ``kernel`` (its name, with or without template arguments)."""
    base = kernel.split("<", 1)[0].strip()
    try:
        return ARGUMENTS[base]
    except KeyError:
        raise KeyError(f"no parameters defined for kernel {base!r} (kernel_args.ARGUMENTS)") from None


def row_arguments(cur: int, ids, mult, y=None) -> dict:
    """The :data:`ROWS` arguments of a step reading buffer ``cur`` (0 or 1) of each pair and
    writing the other: ids and multiplicities, and the activations when ``y`` is given."""
    nxt = 1 - cur
    out = {} if y is None else {"y_in": y[cur], "y_out": y[nxt]}
    out.update(ids_in=ids[cur], ids_out=ids[nxt], mult_in=mult[cur], mult_out=mult[nxt])
    return out
