"""Formatting of results for people (aligned text) and for programs (JSON).

Nothing here computes anything: each function turns a plain dict (built by the CLI
or by :mod:`spdnn.bench`) into text. JSON is written with :func:`to_json`, which
understands numpy scalars and arrays, so callers never convert by hand.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_open
from .errors import SpdnnError, format_bytes

__all__ = ["to_json", "write_json", "jsonable", "format_ids", "format_seconds", "format_run", "format_comparison",
           "format_info", "format_cache", "format_bench"]


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths, sets and tuples (recursively) into JSON types.

    Non-finite floats become ``None`` (JSON has no NaN/inf).
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    return str(obj)


def to_json(obj: Any, *, indent: int | None = None) -> str:
    """One JSON document for ``obj`` (see :func:`jsonable` for the conversions)."""
    return json.dumps(jsonable(obj), indent=indent, sort_keys=False)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON (:func:`to_json`), atomically; returns the path.

    Raises :class:`SpdnnError` naming the path when it cannot be written (a full disk is
    the :class:`~spdnn.errors.DiskFullError` of :func:`spdnn._atomic.atomic_open`)."""
    path = Path(path)
    try:
        with atomic_open(path, "w") as fh:
            fh.write(to_json(obj, indent=1) + "\n")
    except SpdnnError:
        raise
    except OSError as exc:
        raise SpdnnError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def format_ids(ids: Iterable[int], *, limit: int = 20) -> str:
    """Comma-separated 1-based ids, the first ``limit`` of them and a count of the rest."""
    ids = [int(i) for i in ids]
    if not ids:
        return "none"
    shown = ", ".join(str(i) for i in ids[:limit])
    if len(ids) > limit:
        shown += f", ... ({len(ids) - limit} more)"
    return shown


def format_seconds(seconds: float | None) -> str:
    """A duration with a unit that keeps three significant digits (``'1.23 ms'``)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds >= 1:
        return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool] | None = None) -> str:
    """Align columns; ``right[i]`` right-aligns column i (numbers)."""
    cols = len(header)
    right = right or [False] * cols
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(cols)]
    lines = []
    for r in [header, *rows]:
        cells = [str(c).rjust(w) if ra else str(c).ljust(w) for c, w, ra in zip(r, widths, right)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_comparison(passed: bool | None, missing: Sequence[int], extra: Sequence[int], *,
                      found_count: int, truth_count: int | None) -> str:
    """PASS/FAIL lines for a categories check (``passed=None``: no truth to check against)."""
    if passed is None:
        return f"check:        none (no truth categories; {found_count} found)"
    if passed:
        return f"check:        PASS ({found_count} categories equal the truth)"
    lines = [f"check:        FAIL ({found_count} found, {truth_count} in the truth)",
             f"  missing ({len(missing)}, in the truth but not found): {format_ids(missing)}",
             f"  extra   ({len(extra)}, found but not in the truth):   {format_ids(extra)}"]
    return "\n".join(lines)


def _survivors_note(survivors) -> str:
    if survivors is None or len(survivors) == 0:
        return ""
    return f" (alive after layer 1: {int(survivors[0]):,}; after layer {len(survivors)}: {int(survivors[-1]):,})"


def format_run(summary: Mapping[str, Any]) -> str:
    """Human-readable report of one ``spdnn run`` (the keys of its JSON object)."""
    lines = [
        f"data:         {summary['source']}",
        f"network:      {summary['neurons']} neurons x {summary['layers']} layers, "
        f"{summary['edges']:,} edges; {summary['samples']:,} samples",
        f"engine:       {summary['engine']} ({summary['precision']})"
        + (f", {summary['ranks']} MPI ranks" if summary.get("ranks", 1) > 1 else ""),
        f"categories:   {summary['categories_count']} found" + _survivors_note(summary.get("survivors")),
        format_comparison(summary.get("passed"), summary.get("missing", []), summary.get("extra", []),
                          found_count=summary["categories_count"], truth_count=summary.get("truth_count")),
        f"read:         {format_seconds(summary['read_seconds'])} (reading and conversion of the data)",
        *([f"truth:        {format_seconds(summary['truth_seconds'])} (float64 truth of the generated data, "
           "computed once and cached)"] if summary.get("truth_seconds") else []),
        f"preprocess:   {format_seconds(summary['preprocess_seconds'])} (engine: weights and features)",
        f"inference:    {format_seconds(summary['inference_seconds'])}",
        f"throughput:   {summary['teraedges_per_second']:.4g} TeraEdges/s "
        f"(samples x edges / inference seconds)",
    ]
    text = summary.get("explanation_text")
    if text:
        lines += ["", "verification:", *("  " + ln for ln in text.rstrip().splitlines())]
    return "\n".join(lines)


def format_info(info: Mapping[str, Any]) -> str:
    """Human-readable ``spdnn info``."""
    lines = [f"spdnn {info['version']} (python {info['python']}, numpy {info['numpy']}, scipy {info['scipy']})",
             "engines:"]
    width = max(len(n) for n in info["engines"])
    for name, e in info["engines"].items():
        mark = "yes" if e["available"] else "no "
        lines.append(f"  {name.ljust(width)}  {mark}  {e['reason']}")
    lines.append(f"auto engine:  {info['auto_engine']}")
    devices = info["devices"]
    if devices:
        lines.append("devices:")
        for d in devices:
            lines.append(f"  cuda:{d['id']}  {d['name']}  {d['memory_bytes'] / 2**30:.1f} GiB")
    else:
        lines.append(f"devices:      none ({info['cuda_reason']})")
    lines.append(f"mpi:          {'yes' if info['mpi']['available'] else 'no'} ({info['mpi']['reason']})")
    lines.append(f"numba:        {info['numba']['reason']}; threads {info['numba'].get('threads', '-')}")
    lines.append(f"cpu cores:    {info['cpu_count']}")
    lines.append(f"cache dir:    {info['cache_dir']}")
    if "cache" in info:
        lines.append(f"cache size:   {format_bytes(info['cache']['total_bytes'])} (spdnn cache info)")
    if "memory" in info:
        mem = info["memory"]
        lines.append(f"memory:       {format_bytes(mem['host_available_bytes'])} available here; "
                     "peak needs of 60,000 samples (spdnn.memory):")
        lines.append("  N x L          generate   read    run cpu   run cuda (device)")
        for row in mem["needs"]:
            lines.append(f"  {row['neurons']:>5} x {row['layers']:<5} "
                         f"{format_bytes(row['generate_host_bytes']):>9} {format_bytes(row['read_host_bytes']):>8} "
                         f"{format_bytes(row['run_cpu_host_bytes']):>9} {format_bytes(row['run_cuda_device_bytes']):>10}")
    return "\n".join(lines)


def format_cache(cache: Mapping[str, Any]) -> str:
    """Human-readable ``spdnn cache info``: where, how much, how many entries."""
    return "\n".join([f"cache dir:  {cache['path']}",
                      f"size:       {format_bytes(cache['total_bytes'])} (parsed official data "
                      f"{format_bytes(cache['binary_bytes'])}: {cache['network_entries']} networks, "
                      f"{cache['features_entries']} feature sets; generated data {format_bytes(cache['generated_bytes'])})"])


def _count(n: int) -> str:
    """A count in three significant digits with k/M/G (``'1.23M'``)."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def _ratio(value) -> str:
    """A measured/floor ratio in three digits, ``!`` appended below 1 (the floor model is wrong)."""
    if value is None:
        return "-"
    return f"{value:.3g}" + ("!" if value < 1 else "")


def format_bench(report: Mapping[str, Any]) -> str:
    """The benchmark table: one row per cell and engine run (see :func:`spdnn.bench.run_bench`).

    Per row: median time, TeraEdges/s, the honest floor (:func:`spdnn.floor.cell_floor`),
    ``xfloor`` (median / floor; marked ``!`` when below 1: the model is wrong), what bounds
    the floor (``traffic`` or ``chain``, and its largest part), ``xfloor(v1)`` (median /
    the first model's floor, :func:`spdnn.floor.floor_estimate`), ``rows``: activation rows the engine computed over all
    layers against the rows of the samples alive (fewer computed when it merges), and
    ``check`` (every run's categories equal the truth). The first row of a cell also
    shows the published figures of that N x L (seed V100 / seed A100 / XY-2021 / SNICIT,
    TeraEdges/s; docs/challenge.md, Published figures).
    """
    header = ["N x L", "samples", "categories", "engine", "time", "TE/s", "floor", "xfloor", "bound", "xfloor(v1)",
              "rows", "published TE/s", "check"]
    right = [False, True, True, False, True, True, True, True, False, True, True, False, False]
    rows = []
    for cell in report["cells"]:
        published = cell.get("published")
        shown = "/".join(f"{v:g}" for v in published.values()) if published else "-"
        for i, label in enumerate(report["engines"]):
            e = cell["engines"][label]
            alive = int(cell["alive_inputs"]) + int(sum(e["survivors"][:-1]))
            computed = alive if e.get("rows_computed") is None else int(sum(e["rows_computed"]))
            kind = (cell.get("source") or {}).get("kind", "generated")
            name = f"{cell['neurons']}x{cell['layers']}" + ("" if kind == "generated" else f" {kind}")
            rows.append([name if i == 0 else "",
                         f"{cell['samples']:,}" if i == 0 else "", str(cell["categories_count"]) if i == 0 else "",
                         label, format_seconds(e["median_seconds"]), f"{e['teraedges_per_second']:.3g}",
                         f"{format_seconds(e['floor']['seconds'])} ({e['floor']['device']})",
                         _ratio(e.get("floor_ratio")), f"{e['floor']['bound']}: {e['floor']['limit']}",
                         _ratio(e.get("floor_ratio_v1")), f"{_count(computed)}/{_count(alive)}",
                         shown if i == 0 else "", "PASS" if e["passed"] else "FAIL"])
    lines = [_table(header, rows, right=right)]
    for cell in report["cells"]:
        for label in report["engines"]:
            e = cell["engines"][label]
            if e.get("floor_check", "ok") != "ok":
                lines.append(f"{cell['neurons']}x{cell['layers']} {label}: {e['floor_check']}")
            if not e["passed"]:
                lines.append(f"{cell['neurons']}x{cell['layers']} {label}: missing {format_ids(e['missing'])}; "
                             f"extra {format_ids(e['extra'])}")
    lines.append(f"median of {report['repeats']} runs after a warm-up; precision {report['precision']}; "
                 "TE/s = samples x edges / inference seconds / 1e12; xfloor = median / floor (docs/floor.md: "
                 "max(traffic, chain of phases, barriers and launches) at constants measured on the card); "
                 "xfloor(v1) = median / the first model's floor (rows read and written at the bandwidth + a launch "
                 "a layer); rows = computed / alive over all layers; published = seed V100/seed A100/XY-2021 "
                 "A6000/SNICIT A6000")
    return "\n".join(lines)
