#!/usr/bin/env python3
"""One launch of ``benchmarks/mpi_bench.py``: every rank runs this (under ``mpiexec -n P``).

Each rank builds the cell's network, memory-maps the features file (reading only its
own rows), prepares the engine once, and for each balancing mode of
:data:`spdnn.distributed.scaling_model.MODES` runs
:func:`spdnn.distributed.run_distributed` through :func:`spdnn.bench.time_runs` (one
warm-up, then ``--repeat`` runs). Rank 0 writes one JSON object to ``--out``: ``ranks``,
``engine``, ``precision``, ``prepare_seconds`` (slowest rank), ``resources`` and, per
mode, the fastest run (``InferenceResult.to_dict()``) with ``all_inference_seconds``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from spdnn.bench import parse_cells, time_runs, write_json
from spdnn.distributed import BalancePolicy, HeadSource, NpzSource, bind_resources, run_distributed, world
from spdnn.distributed.scaling_model import MODES
from spdnn.engines import get_engine, resolve_engine_name
from spdnn.generate import radixnet_network
from spdnn.generate.radixnet import default_bias


def mode_options(mode: str) -> dict:
    """The :func:`run_distributed` keywords of a mode of MODES."""
    balance, layout = MODES[mode]
    policy = {"off": False, "on": True, "force": BalancePolicy(threshold=1.0, cost_aware=False)}[balance]
    return {"balance": policy, "layout": layout}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", required=True, help="NxL")
    ap.add_argument("--features", required=True, help="features .npz (spdnn.distributed.NpzSource)")
    ap.add_argument("--samples", type=int, required=True, help="first samples of the features")
    ap.add_argument("--modes", required=True, help=f"comma-separated modes of {sorted(MODES)}")
    ap.add_argument("--out", required=True, help="JSON written by rank 0")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--precision", choices=("fp32", "fp64"), default="fp32")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per mode after a warm-up")
    ap.add_argument("--seed", type=int, default=0, help="generator seed of the network")
    ap.add_argument("--engine-options", default=None, help="JSON dict of engine constructor options")
    args = ap.parse_args(argv)

    here = world()
    name = resolve_engine_name(args.engine)
    bound = bind_resources(name, here)
    ((neurons, layers),) = parse_cells(args.cell)
    network = radixnet_network(neurons, layers, seed=args.seed, bias=default_bias(neurons))
    source = HeadSource(NpzSource(args.features), args.samples)
    engine = get_engine(name, precision=args.precision, **json.loads(args.engine_options or "{}"))
    t = time.perf_counter()
    engine.prepare(network)
    prepare_seconds = time.perf_counter() - t
    if here.comm is not None:
        prepare_seconds = max(here.comm.allgather(prepare_seconds))
    out = {"ranks": here.size, "engine": name, "precision": args.precision, "prepare_seconds": prepare_seconds,
           "resources": bound, "modes": {}}
    for mode in args.modes.split(","):
        options = mode_options(mode)
        timing = time_runs(lambda: run_distributed(network, source, engine=engine, **options), args.repeat,
                           seconds=lambda result: result.inference_seconds)
        best = min(timing.results, key=lambda result: result.inference_seconds)
        out["modes"][mode] = {**best.to_dict(), "all_inference_seconds": timing.seconds}
    if here.rank == 0:
        write_json(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
