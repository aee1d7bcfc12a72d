"""Validators of the options shared by the API, the engines and the CLI (one home each).

Each returns the value in its canonical form or raises :class:`~spdnn.errors.OptionError`
naming the argument and what was expected, so ``batch_samples=2.5`` is the same error
on every engine, and the CLI reports it as one ``spdnn: error:`` line.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import OptionError

__all__ = ["PRECISIONS", "check_precision", "positive_int", "optional_positive_int", "optional_index", "check_choice",
           "check_tristate", "check_merge", "check_balance"]

#: Accepted precision names and the activation dtype each means.
PRECISIONS = {"fp32": np.float32, "fp64": np.float64}


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1 (a bool or a float such as 2.5 is refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise OptionError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def optional_positive_int(value, name: str) -> int | None:
    """None, or :func:`positive_int`."""
    return None if value is None else positive_int(value, name)


def optional_index(value, name: str) -> int | None:
    """None, or ``value`` as an int >= 0 (a device number, say)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise OptionError(f"{name}={value!r}: expected None or an integer >= 0")
    return int(value)


def check_precision(precision) -> str:
    """Validate a precision name ('fp32' or 'fp64') and return it."""
    if precision not in PRECISIONS:
        raise OptionError(f"precision={precision!r}: expected one of {sorted(PRECISIONS)}")
    return precision


def check_choice(value, name: str, choices: Iterable):
    """``value`` if it is one of ``choices`` (compared with ==), else OptionError."""
    choices = list(choices)
    if isinstance(value, (bool, np.bool_)) and not any(isinstance(c, bool) for c in choices):
        raise OptionError(f"{name}={value!r}: expected one of {choices}")
    if value not in choices:
        raise OptionError(f"{name}={value!r}: expected one of {choices}")
    return value


def check_tristate(value, name: str):
    """'auto', True or False; the strings 'on'/'off' (as the CLI spells them) map to True/False."""
    mapping = {"auto": "auto", "on": True, "off": False, True: True, False: False}
    if isinstance(value, str) or isinstance(value, (bool, np.bool_)):
        key = bool(value) if isinstance(value, (bool, np.bool_)) else value
        if key in mapping:
            return mapping[key]
    raise OptionError(f"{name}={value!r}: expected 'auto', 'on'/True or 'off'/False")


def check_merge(value):
    """The ``merge`` option of the engines that merge identical samples: 'auto', True or False."""
    return check_tristate(value, "merge")


def check_balance(value):
    """The ``balance`` option of the MPI path: 'auto', True, False (or a policy object, passed through)."""
    if value is None:
        return False
    if hasattr(value, "decide"):
        return value
    return check_tristate(value, "balance")
