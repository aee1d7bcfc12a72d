"""Kernel arguments as named structs, defined once here for both sides of a launch.

Every kernel of ``kernels/*.cu`` takes one parameter, a struct passed by value (CUDA's
parameter space, up to 4 KB). Its fields are written once, in :data:`ARGUMENTS`; from
that one definition come

* the C++ declaration (:func:`declarations`, compiled ahead of the kernels as the header
  ``kernel_args.cuh``, which no file on disk holds),
* the host struct (:meth:`ArgStruct.pack`: a numpy record with the same layout, passed
  by CuPy by value), filled by field *name* and checked: every field given, none
  unknown, each array of the element type the field points to, each scalar in range.

Positional arguments that nothing checks against the signature (up to 30 before) can no
longer be passed in the wrong order, left out, or of the wrong type without an error
naming the kernel and the field. ``tests/test_cuda_kernel_args.py`` compiles the
declarations with nvcc and checks that every field's offset and the struct's size equal
the numpy record's.

Types of fields: ``T`` is the activation type (float or double), ``V`` the stored weight
value type (float, double, or unsigned short for half-precision bits); pointers are
written ``const X*`` (read) or ``X*`` (written).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["ArgStruct", "ARGUMENTS", "arg_struct", "declarations", "HEADER"]

#: The name kernel files include to get the declarations (resolved by
#: :func:`.compilation.kernel_source`).
HEADER = "kernel_args.cuh"

#: numpy type of each C++ element type a pointer may point to, or a scalar may be
#: (``T`` and ``V`` are resolved per instance).
_C_TO_NUMPY = {"int": np.int32, "long long": np.int64, "unsigned short": np.uint16,
               "unsigned long long": np.uint64, "int2": np.int32}


@dataclass(frozen=True)
class Field:
    """One field: ``name``, its C++ ``ctype`` (e.g. ``const T*``, ``int``), what it holds."""

    name: str
    ctype: str
    doc: str = ""

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
class ArgStruct:
    """The argument struct of one kernel (``kernel``: its name without template arguments)."""

    kernel: str
    struct: str
    fields: tuple[Field, ...]

    @property
    def templated(self) -> tuple[str, ...]:
        """The template parameters the struct needs: ('T', 'V'), ('T',) or ()."""
        used = {f.element for f in self.fields}
        return ("T", "V") if "V" in used else ("T",) if "T" in used else ()

    def declaration(self) -> str:
        """The C++ declaration of the struct."""
        head = f"template <{', '.join('typename ' + p for p in self.templated)}>\n" if self.templated else ""
        body = "".join(f"    {f.ctype} {f.name};{'  // ' + f.doc if f.doc else ''}\n" for f in self.fields)
        return f"// Arguments of {self.kernel} (kernel_args.py)\n{head}struct {self.struct} {{\n{body}}};\n"

    def dtype(self, t, v=None) -> np.dtype:
        """The numpy record of the struct for activation type ``t`` and value type ``v``
        (C layout: natural alignment, padding included)."""
        return _record(self, np.dtype(t), np.dtype(t if v is None else v))

    def pack(self, values: dict, t, v=None) -> np.ndarray:
        """The struct filled from ``values`` ({field: array or number}), as a 1-element numpy
        record array (CuPy passes it by value). Arrays give their device address (CuPy) or
        host address (numpy, for tests); the caller keeps them alive while the launch may run.

        Raises TypeError naming the kernel and the field: a field missing or unknown, an
        array of another element type, a scalar out of its type's range.
        """
        check_arguments(self, values, t, v)
        record = np.zeros(1, dtype=self.dtype(t, v))
        for f in self.fields:
            value = values[f.name]
            record[f.name] = _address(value) if f.pointer else value
        return record


def _address(array) -> int:
    data = array.data
    return int(data.ptr) if hasattr(data, "ptr") else int(array.ctypes.data)


def check_arguments(spec: ArgStruct, values: dict, t, v=None) -> None:
    """Check ``values`` against ``spec`` (see :meth:`ArgStruct.pack`) without packing them:
    the numpy replay of the kernels (:mod:`.emulate`) checks its launches with it."""
    v = t if v is None else v
    names = [f.name for f in spec.fields]
    missing = [n for n in names if n not in values]
    unknown = [n for n in values if n not in names]
    if missing or unknown:
        raise TypeError(f"{spec.kernel}: arguments missing {missing}, unknown {unknown}")
    for f in spec.fields:
        value, want = values[f.name], f.numpy_type(t, v)
        if f.pointer:
            got = getattr(value, "dtype", None)
            if got is None or np.dtype(got) != want:
                raise TypeError(f"{spec.kernel}: {f.name} ({f.ctype}) needs an array of {want}, got "
                                f"{type(value).__name__}{'' if got is None else ' of ' + str(got)}")
            if f.element == "int2" and value.size % 2:
                raise TypeError(f"{spec.kernel}: {f.name} ({f.ctype}) needs pairs of int32, got {value.size} values")
        elif np.dtype(want).kind in "iu":
            info = np.iinfo(want)
            if isinstance(value, (float, np.floating)) or not info.min <= int(value) <= info.max:
                raise TypeError(f"{spec.kernel}: {f.name} ({f.ctype}) = {value!r} is not an integer of its range")
        elif not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{spec.kernel}: {f.name} ({f.ctype}) needs a number, got {type(value).__name__}")


@lru_cache(maxsize=None)
def _record(spec: ArgStruct, t: np.dtype, v: np.dtype) -> np.dtype:
    formats = [np.uint64 if f.pointer else f.numpy_type(t, v) for f in spec.fields]
    return np.dtype({"names": [f.name for f in spec.fields], "formats": formats}, align=True)


def _fields(*specs: tuple) -> tuple[Field, ...]:
    return tuple(Field(*s) for s in specs)


# -- the arguments of every kernel -------------------------------------------------------------
# Groups of fields several kernels share, in the order they take them.

#: The row buffers of a step: activations, sample ids and multiplicities (samples a row
#: stands for after merging), read from *_in, written to *_out.
ROWS = (("y_in", "const T*"), ("y_out", "T*"), ("ids_in", "const int*"), ("ids_out", "int*"),
        ("mult_in", "const int*"), ("mult_out", "int*"))

ARGUMENTS: dict[str, ArgStruct] = {}


def arg_struct(kernel: str) -> ArgStruct:
    """The argument struct of ``kernel`` (its name, with or without template arguments)."""
    base = kernel.split("<", 1)[0].strip()
    try:
        return ARGUMENTS[base]
    except KeyError:
        raise KeyError(f"no argument struct for kernel {base!r} (kernel_args.ARGUMENTS)") from None


def declarations() -> str:
    """The C++ declarations of every struct (the text of :data:`HEADER`)."""
    return "\n".join(spec.declaration() for spec in ARGUMENTS.values())


def _define(kernel: str, struct: str, *groups) -> None:
    ARGUMENTS[kernel] = ArgStruct(kernel, struct, _fields(*[f for g in groups for f in g]))
