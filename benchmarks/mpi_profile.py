#!/usr/bin/env python3
"""How unevenly samples die across the static splits of P ranks (one process, no MPI).

    python benchmarks/mpi_profile.py 1024x120 --ranks 2,8,64 --engine cpu

Runs a generated cell (:func:`spdnn.generate.cached_challenge`) one layer at a time and,
after each layer, counts the alive samples each of P ranks would hold under the seed's
contiguous blocks and under spdnn's shuffled chunks (:func:`spdnn.distributed.owners`).
Per P and layout it prints the per-layer imbalance (max / mean of the ranks' counts) and
the work-weighted slowdown of the static split, ``sum_k max_r alive_r(k) / sum_k
mean_r alive_r(k)``: what the busiest rank pays when a layer costs in proportion to its
alive rows (docs/scaling.md, section 2). Exit status 1 when the final categories differ
from the float64 truth, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from spdnn.bench import materialized, parse_cells, write_json
from spdnn.distributed import owners
from spdnn.engines import get_engine
from spdnn.errors import SpdnnError
from spdnn.generate import cached_challenge
from spdnn.verify import compare_categories

#: The layers whose imbalance the table shows (and the last one).
SHOWN_LAYERS = (1, 2, 4, 8, 16, 32, 64)


def static_profile(neurons: int, layers: int, ranks, *, samples: int = 60000, engine: str = "cpu",
                   seed: int = 0) -> dict:
    """The survivor profile of the cell's static splits (see the module docstring).

    Returns
    -------
    dict
        ``survivors`` after each layer, ``passed`` (final categories equal the truth),
        and ``splits``: per (P, layout) ``per_layer_imbalance`` (length L, of the rows
        entering each layer), ``work_weighted_slowdown``, ``final_counts_max`` and
        ``final_counts_mean``.
    """
    network, features, truth, _ = cached_challenge(neurons, layers, seed=seed, samples=samples)
    count = features.shape[0]
    eng = get_engine(engine, precision="fp32")
    eng.prepare(materialized(network))
    eng.load(features)
    keys = [(P, layout) for P in ranks for layout in ("block", "shuffled")]
    own = {key: owners(count, key[0], layout=key[1]) for key in keys}
    alive = np.flatnonzero(np.diff(features.indptr) > 0)
    counts = {key: [np.bincount(own[key][alive], minlength=key[0])] for key in keys}
    survivors, categories = [], np.zeros(0, dtype=np.int64)
    for k in range(layers):
        categories, _, _ = eng.infer(k, k + 1)
        alive = np.asarray(categories, dtype=np.int64) - 1
        survivors.append(len(alive))
        for key in keys:
            counts[key].append(np.bincount(own[key][alive], minlength=key[0]))
    out = {"cell": f"{neurons}x{layers}", "samples": count, "survivors": survivors,
           "passed": bool(compare_categories(categories, truth).passed), "splits": []}
    for (P, layout) in keys:
        c = np.array(counts[(P, layout)][:-1], dtype=np.float64)   # alive before each layer: its rows
        mean = c.mean(axis=1)
        per_layer = np.where(mean > 0, c.max(axis=1) / np.where(mean > 0, mean, 1), 1.0)
        final = counts[(P, layout)][-1]
        out["splits"].append({"ranks": P, "layout": layout, "per_layer_imbalance": per_layer.tolist(),
                              "work_weighted_slowdown": float(c.max(axis=1).sum() / mean.sum()),
                              "final_counts_max": int(final.max()), "final_counts_mean": float(final.mean())})
    return out


def format_profile(prof: dict) -> str:
    lines = [f"{prof['cell']}, {prof['samples']} samples; survivors after layers 1..: {prof['survivors'][:12]} ... "
             f"{prof['survivors'][-1]} ({'equal to' if prof['passed'] else 'NOT equal to'} the float64 truth)",
             f"{'P':>4} {'layout':>8} {'work-weighted slowdown':>23} {'final max/mean':>15}  imbalance of the rows "
             f"entering layers {','.join(map(str, SHOWN_LAYERS))},L"]
    for r in prof["splits"]:
        pl = r["per_layer_imbalance"]
        picks = [pl[i - 1] for i in SHOWN_LAYERS if i <= len(pl)] + [pl[-1]]
        lines.append(f"{r['ranks']:>4} {r['layout']:>8} {r['work_weighted_slowdown']:>23.3f} "
                     f"{r['final_counts_max']:>6}/{r['final_counts_mean']:<8.1f}  "
                     + " ".join(f"{v:.2f}" for v in picks))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell", help="NxL")
    ap.add_argument("--ranks", default="2,8,64", help="comma-separated rank counts")
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--engine", default="cpu")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--out", default=None, help="write the profile as JSON")
    args = ap.parse_args(argv)
    try:
        cells = parse_cells(args.cell)
        if len(cells) != 1:
            raise SpdnnError(f"{args.cell!r}: expected one cell NxL")
        try:
            ranks = [int(v) for v in args.ranks.split(",")]
        except ValueError:
            raise SpdnnError(f"--ranks {args.ranks!r}: expected comma-separated integers") from None
        prof = static_profile(*cells[0], ranks, samples=args.samples, engine=args.engine, seed=args.seed)
    except SpdnnError as exc:
        print(f"mpi_profile: error: {exc}", file=sys.stderr)
        return 2
    print(format_profile(prof))
    if args.out:
        write_json(prof, args.out)
    return 0 if prof["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
