"""Progress bars for long steps (tqdm), silent unless asked for or on a terminal."""
from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(iterable: Iterable, *, enabled: bool | None = None, desc: str = "", total: int | None = None,
                 unit: str = "it"):
    """Wrap ``iterable`` in a tqdm bar on stderr.

    ``enabled=None`` shows the bar only when stderr is a terminal; ``False`` never.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled, leave=False, file=sys.stderr)
