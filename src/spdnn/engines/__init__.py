"""Engines behind one interface, picked by name.

============  ==============================================  =====================
name          what                                            needs
============  ==============================================  =====================
reference     scipy, the official semantics (float64 truth)   scipy
cpu           numba, fused and pruned, all cores              numba
cuda          CuPy + CUDA C++ kernels compiled at run time    a GPU, ``spdnn[gpu]``
cusparse      library baseline: CuPy cuSPARSE SpMM per layer  a GPU, ``spdnn[gpu]``
============  ==============================================  =====================

``auto`` picks cuda where a GPU is usable, else cpu, else reference; given a network, the
first of them that supports it (:meth:`Engine.supports`).
"""
from __future__ import annotations

import importlib
import inspect

from ..config import cupy_status, env_flag
from ..errors import EngineUnavailableError, OptionError
from .base import Engine, InferenceResult, PRECISIONS

__all__ = ["Engine", "InferenceResult", "PRECISIONS", "ENGINES", "get_engine", "engine_class",
           "available_engines", "resolve_engine_name", "engine_device", "engine_merges", "fastest_exact_engine"]

#: name -> "module:Class", imported lazily so a CPU machine never imports CuPy.
ENGINES: dict[str, str] = {
    "reference": "spdnn.engines.reference:ReferenceEngine",
    "cpu": "spdnn.engines.cpu:CpuEngine",
    "cuda": "spdnn.engines.cuda:CudaEngine",
    "cusparse": "spdnn.engines.cusparse:CusparseEngine",
}


def engine_class(name: str) -> type[Engine]:
    """The engine class registered under ``name`` (imports its module)."""
    if name not in ENGINES:
        raise OptionError(f"engine {name!r}: expected one of {['auto', *ENGINES]}")
    module, cls = ENGINES[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise EngineUnavailableError(f"engine {name!r} cannot be imported: {exc}") from exc
    return getattr(mod, cls)


def available_engines() -> dict[str, tuple[bool, str]]:
    """{name: (available, reason)} for every registered engine."""
    out = {}
    for name in ENGINES:
        try:
            out[name] = engine_class(name).availability()
        except EngineUnavailableError as exc:
            out[name] = (False, str(exc))
    return out


def resolve_engine_name(name: str, network=None) -> str:
    """Turn 'auto' into the best engine available here; check any other name exists.

    With ``network`` (a :class:`~spdnn.network.Network`), 'auto' picks the best engine
    that also supports it (:meth:`Engine.supports`): cuda, cpu, reference in that order.
    A named engine is returned as it is (:func:`get_engine` and :meth:`Engine.run` refuse
    a network it does not support, with the reason).
    """
    if name != "auto":
        engine_class(name)
        return name

    def usable(candidate: str) -> bool:
        try:
            cls = engine_class(candidate)
        except EngineUnavailableError:
            return False
        return cls.availability()[0] and (network is None or cls.supports(network)[0])

    if not env_flag("SPDNN_DISABLE_GPU") and cupy_status()[0] and usable("cuda"):
        return "cuda"
    if usable("cpu"):
        return "cpu"
    return "reference"


def engine_device(name: str) -> str:
    """'cpu' or 'gpu': where the engine registered under ``name`` computes (class attribute)."""
    return engine_class(name).device


def engine_merges(name: str) -> bool:
    """Whether the engine registered under ``name`` merges identical samples: its
    constructor takes ``merge='auto'|True|False``."""
    return "merge" in inspect.signature(engine_class(name)).parameters


def fastest_exact_engine(network=None) -> str:
    """Name of the fastest engine here whose fp64 mode is bit-identical to the reference.

    The order is cuda (where a GPU is usable and ``SPDNN_DISABLE_GPU`` is unset), cpu,
    reference; every engine tried must have ``exact_fp64`` (the cuSPARSE baseline has not)
    and, with ``network``, support it.
    """
    name = resolve_engine_name("auto", network)
    if not engine_class(name).exact_fp64:  # pragma: no cover - auto never picks a baseline
        name = "cpu" if engine_class("cpu").availability()[0] else "reference"
    return name


def get_engine(name: str = "auto", network=None, **options) -> Engine:
    """Instantiate an engine by name ('auto' picks the best available, and with
    ``network`` the best that supports it: :func:`resolve_engine_name`).

    ``options`` are the engine constructor's keywords; ``precision=None`` means the
    engine's default (fp64 for the reference, fp32 for the others). ``merge='auto'`` is
    accepted by every engine (the README: an engine that does not merge ignores it);
    ``merge`` on or off for such an engine, or a keyword the engine does not take, is an
    :class:`OptionError` naming it.

    Raises :class:`EngineUnavailableError` with the reason when it cannot run here, and
    :class:`OptionError` with the reason when a named engine cannot run ``network``.
    """
    if not isinstance(name, str):
        raise OptionError(f"engine={name!r}: expected one of {['auto', *ENGINES]}")
    name = resolve_engine_name(name, network)
    cls = engine_class(name)
    accepted = inspect.signature(cls).parameters
    if options.get("precision", "") is None:
        del options["precision"]
    if "merge" in options and "merge" not in accepted:
        if options["merge"] != "auto":
            raise OptionError(f"merge={options['merge']!r}: engine {name!r} does not merge identical samples; "
                              f"use merge='auto' (or an engine that merges: "
                              f"{', '.join(n for n in ENGINES if n != name and _merges(n)) or 'none here'})")
        del options["merge"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise OptionError(f"engine {name!r} takes no option {', '.join(unknown)} (its options: "
                          f"{', '.join(accepted)})")
    ok, why = cls.availability()
    if not ok:
        raise EngineUnavailableError(f"engine {name!r} is not available: {why}")
    if network is not None:
        ok, why = cls.supports(network)
        if not ok:
            raise OptionError(f"engine {name!r} cannot run this network: {why}")
    return cls(**options)


def _merges(name: str) -> bool:
    try:
        return engine_merges(name)
    except EngineUnavailableError:
        return False
