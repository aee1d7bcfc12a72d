#!/usr/bin/env python3
"""Blockings of the CUDA engine's general sparse kernel, side by side on general cells.

Usage (on a GPU machine)::

    python3 benchmarks/general_blockings.py --out OUT --cells wide4096,zeros4096:99 --reps 3 \\
        --blockings default,t512c8r4,t256c16r4,t1024c4r8

A blocking ``tTcCrR`` forces T threads a block, C columns a thread and tiles of R rows on
every sparse layer, ``tTcCrRkK`` also stages at most K inputs at once (equal chunks), and a
final ``p`` stages the next tile while the current one is summed (``pipelined``), and a
final ``b`` (or ``b`` alone: the default blocking) orders each column's entries for the
shared-memory banks (``bank_order``) (``CudaEngine(blocking=...)``; :func:`spdnn.engines.cuda.layout.choose_general_config`
says what ``default`` picks). Every run is fp32, merging off (what general networks get),
60,000 samples by default; the timing loop is :func:`spdnn.bench.time_engine` (median of
``--reps`` after a warm-up, inference only). Each blocking's final activations must equal
those of the first blocking of the same order of summation that ran bit for bit (the sum
order of an output depends on the bank order only, not on the blocking): a difference
fails the script (exit 1). Bank-ordered runs also report how many predictions and how
far their activations differ from the ascending order's. Writes OUT/general_blockings.json after every
blocking and prints one line per run.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from spdnn.bench import time_engine
from spdnn.bench_general import general_cell_data
from spdnn.engines import get_engine
from spdnn.report import write_json


def parse_blocking(name: str) -> dict | None:
    """``default`` -> None; ``t512c8r4`` -> threads 512, cols_per_thread 8, rows_per_tile 4;
    ``t512c8r8k2048`` -> the same with 8 rows and chunk 2048; a final ``p``: pipelined, ``b``:
    bank order (both: ``pb``); ``default``/``b`` alone: the default blocking (with bank order)."""
    if name == "default":
        return None
    if name == "b":
        return {"bank_order": True}
    m = re.fullmatch(r"t(\d+)c(\d+)r(\d+)(?:k(\d+))?(p?)(b?)", name)
    if not m:
        raise SystemExit(f"general_blockings: error: --blockings: {name!r} is not 'default', 'b' or "
                         "tTcCrR[kK][p][b]")
    out = dict(threads=int(m[1]), cols_per_thread=int(m[2]), rows_per_tile=int(m[3]))
    if m[4] is not None:
        out["chunk"] = int(m[4])
    if m[5]:
        out["pipelined"] = True
    if m[6]:
        out["bank_order"] = True
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cells", default="wide4096,zeros4096:99")
    ap.add_argument("--blockings", default="default,t512c8r8,t512c8r8k2048,t512c8r8k1366,t256c16r8k2048,"
                                           "t1024c4r16k1024,t512c8r2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--samples", type=int, default=60000)
    args = ap.parse_args(argv)
    blockings = [(b, parse_blocking(b)) for b in args.blockings.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    report, failed = {"cells": []}, False
    for cell in args.cells.split(","):
        network, features, about = general_cell_data(cell, args.samples, 0)
        print(f"{cell}: {about}", flush=True)
        entry = {"name": cell, "description": about, "edges": network.edges, "runs": []}
        report["cells"].append(entry)
        first = {}                  # the first outputs of each order of summation
        for name, blocking in blockings:
            run = {"blocking": name}
            try:
                engine = get_engine("cuda", precision="fp32", merge=False, blocking=blocking)
                timing = time_engine(engine, network, features, args.reps)
                outputs = engine.run(network, features, outputs="activations").outputs
                order = bool((blocking or {}).get("bank_order"))
                base = first.setdefault(order, outputs)
                same = np.array_equal(outputs.view(np.uint32), base.view(np.uint32))
                failed |= not same
                run.update(median_seconds=timing.median_seconds, seconds=timing.seconds, equal_to_first=same,
                           teraedges_per_second=features.shape[0] * network.edges / timing.median_seconds / 1e12)
                note = "equal" if same else "DIFFERENT"
                if order and False in first:    # another order of summation: how far from ascending
                    asc = first[False]
                    run["predictions_differing"] = int((outputs.argmax(1) != asc.argmax(1)).sum())
                    run["max_abs_difference"] = float(np.abs(outputs.astype(np.float64) - asc).max())
                    note += (f"; vs ascending order: {run['predictions_differing']} predictions differ, "
                             f"max |diff| {run['max_abs_difference']:.3g}")
                print(f"  {name:12s} {1e3 * timing.median_seconds:9.2f} ms  "
                      f"{run['teraedges_per_second']:6.2f} TE/s  {note}", flush=True)
            except Exception as exc:  # noqa: BLE001 - one blocking that cannot run does not stop the others
                run["error"] = f"{type(exc).__name__}: {exc}"
                print(f"  {name:12s} error: {run['error'][:160]}", flush=True)
            entry["runs"].append(run)
            write_json(report, args.out / "general_blockings.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
