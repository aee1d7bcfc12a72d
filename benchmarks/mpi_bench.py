#!/usr/bin/env python3
"""Several ranks against one over MPI, and the fit of the scaling model.

One command runs every rank count and balancing mode of every cell, checks every run's
categories and survivors against the 1-rank run and its categories against the float64
truth, prints a table and the fits of :mod:`spdnn.distributed.scaling_model`, and writes
everything as JSON (``--out``; default ``$OUT/mpi_bench.json`` when ``$OUT`` is set)::

    # on a 2-GPU host (Open MPI as root: the launcher flags are added by themselves)
    python3 benchmarks/mpi_bench.py --engine cuda --cells 16384x120,65536x120 --ranks 1,2

    # the same on a CPU machine, tiny
    python benchmarks/mpi_bench.py --engine cpu --cells 1024x24 --samples 600 --ranks 1,2

    # refit and predict from a saved JSON
    python benchmarks/mpi_bench.py fit mpi_bench.json

Per cell: data and truth from :func:`spdnn.generate.cached_challenge` (the first
``--samples`` inputs), the features written once to ``--workdir`` as an ``.npz`` that each
rank memory-maps (it reads only its rows); then for each rank count P one launch of
``benchmarks/mpi_worker.py`` (plain ``python`` for P = 1, ``mpiexec -n P`` otherwise),
which prepares the engine once and times every mode (see
:data:`spdnn.distributed.scaling_model.MODES`; P = 1 runs ``off`` and ``on`` only, ``on``
giving the per-segment timings the model is fitted to). ``mpi_profile.py`` measures how
unevenly samples die across static splits (no MPI).

Exit status: 0 when every run of every cell equals the 1-rank run and the truth, 1 on
any mismatch (or a launch that failed or was skipped), 2 on a usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from spdnn.bench import parse_cells, write_json
from spdnn.distributed import save_npz_source
from spdnn.distributed.scaling_model import MODES, fit_model, fit_static, format_model, format_static
from spdnn.errors import SpdnnError
from spdnn.generate import cached_challenge
from spdnn.generate.challenge import GENERATOR_VERSION

WORKER = Path(__file__).resolve().with_name("mpi_worker.py")


def mpiexec_command(explicit: str | None) -> list[str]:
    """The launcher: ``explicit`` split on spaces, else mpiexec beside python or on PATH
    (with ``--bind-to none`` and, as root, ``--allow-run-as-root`` for Open MPI)."""
    if explicit:
        return explicit.split()
    beside = Path(sys.executable).with_name("mpiexec")
    exe = str(beside) if beside.exists() else shutil.which("mpiexec")
    if exe is None:
        raise SpdnnError("no mpiexec beside python or on PATH: pass --mpiexec")
    cmd = [exe]
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    if "Open MPI" in version or "OpenRTE" in version:
        cmd += ["--bind-to", "none"]
        if os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
    return cmd


def launch(args, cell: str, features: Path, ranks: int, modes: str, out: Path, timeout: float) -> dict | None:
    """One worker launch on ``ranks`` ranks; its JSON, or None when it failed or timed out."""
    worker = [sys.executable, str(WORKER), "--cell", cell, "--features", str(features), "--samples",
              str(args.samples), "--engine", args.engine, "--precision", args.precision, "--modes", modes,
              "--repeat", str(args.repeat), "--seed", str(args.seed), "--out", str(out)]
    if args.engine_options:
        worker += ["--engine-options", args.engine_options]
    cmd = worker if ranks == 1 else mpiexec_command(args.mpiexec) + ["-n", str(ranks)] + worker
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if args.engine == "cpu" and ranks > 1 and "NUMBA_NUM_THREADS" not in os.environ:
        env["NUMBA_NUM_THREADS"] = str(os.cpu_count() or 1)
    print(f"[mpi_bench] {cell}: {ranks} rank(s), modes {modes}: {' '.join(cmd)}", flush=True)
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)     # the launcher and every rank it started
        proc.wait()
        print(f"[mpi_bench] {cell}: {ranks} rank(s) did not finish in {timeout:.0f} s", flush=True)
        return None
    if proc.returncode != 0 or not out.exists():
        print(f"[mpi_bench] {cell}: {ranks} rank(s) failed (exit {proc.returncode})", flush=True)
        return None
    got = json.loads(out.read_text())
    if got["ranks"] != ranks:
        print(f"[mpi_bench] {cell}: asked for {ranks} ranks, the workers saw {got['ranks']}: the launcher does "
              f"not match mpi4py's MPI library; pass --mpiexec", flush=True)
        return None
    return got


def fits(record: dict) -> None:
    """Add the model fits to a cell record that has a 1-rank 'on' run (``model``, ``static_fits``)."""
    runs = {int(p): got["modes"] for p, got in record["launches"].items()}
    if 1 not in runs or "on" not in runs[1]:
        return
    record["model"] = fit_model(runs[1]["on"], runs.get(2), layers=record["layers"], samples=record["samples"],
                                unsegmented=runs[1].get("off"), measured=runs)
    # fitted on 1-2 ranks (the rest checks it), then on all of them
    record["static_fits"] = [fit_static(runs[1]["on"], runs, layers=record["layers"], samples=record["samples"],
                                        fit_ranks=[p for p in runs if p <= upto]) for upto in sorted({2, max(runs)})]


def run_cell(args, neurons: int, layers: int, deadline: float) -> dict:
    cell = f"{neurons}x{layers}"
    t = time.perf_counter()
    network, features, truth, info = cached_challenge(neurons, layers, seed=args.seed, samples=args.samples)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"features-n{neurons}-s{features.shape[0]}-v{GENERATOR_VERSION}.npz"
    if not path.exists():
        save_npz_source(path, features, values=False)
    record = {"cell": cell, "neurons": neurons, "layers": layers, "samples": int(features.shape[0]),
              "edges": network.edges, "truth_count": int(len(truth)), "truth_info": info,
              "data_seconds": time.perf_counter() - t, "launches": {}, "rows": [], "passed": True}
    for ranks in args.ranks:
        left = deadline - time.time()
        if left < 30:
            print(f"[mpi_bench] {cell}: skipping {ranks} rank(s): --max-seconds reached", flush=True)
            record["passed"] = False
            continue
        modes = "off,on" if ranks == 1 else args.modes
        got = launch(args, cell, path, ranks, modes, workdir / f"out-{cell}-{ranks}.json", left)
        if got is None:
            record["passed"] = False
            continue
        record["launches"][ranks] = got
    base = record["launches"].get(1, {}).get("modes", {})
    t1 = min((r["inference_seconds"] for r in base.values()), default=None)
    reference = base.get("off") or next(iter(base.values()), None)
    if reference is None and record["launches"]:
        reference = next(iter(next(iter(record["launches"].values()))["modes"].values()))
    for ranks, got in record["launches"].items():
        for mode, r in got["modes"].items():
            e = r["extra"]
            same = r["categories"] == reference["categories"] and r["survivors"] == reference["survivors"]
            equal_truth = bool(np.array_equal(truth, r["categories"]))
            record["passed"] &= same and equal_truth
            record["rows"].append({
                "ranks": ranks, "mode": mode, "seconds": r["inference_seconds"],
                "all_seconds": r["all_inference_seconds"], "teraedges_per_second": r["teraedges_per_second"],
                "speedup": (t1 / r["inference_seconds"]) if t1 else None,
                "imbalance": e["imbalance"], "rebalances": e["rebalances"], "rows_moved": e["rows_moved"],
                "bytes_moved": e["bytes_moved"], "reload_seconds": max(e["rank_reload_seconds"]),
                "rank_busy_seconds": e["rank_busy_seconds"], "categories": len(r["categories"]),
                "same_as_1_rank": same, "truth": equal_truth,
                "prepare_seconds": got["prepare_seconds"], "resources": got["resources"],
            })
    fits(record)
    return record


def format_cell(record: dict) -> str:
    lines = [f"\n{record['cell']}  ({record['samples']} samples, {record['truth_count']} categories in the truth)"]
    head = (f"{'ranks':>5} {'mode':>5} {'seconds':>9} {'TE/s':>8} {'speedup':>7} {'imbal':>6} {'rebal':>5} "
            f"{'MB moved':>8} {'reload s':>8} {'cats':>5} {'same':>4} {'truth':>5}")
    lines += [head, "-" * len(head)]
    for r in record["rows"]:
        speedup = f"{r['speedup']:.2f}" if r["speedup"] else "-"
        lines.append(f"{r['ranks']:>5} {r['mode']:>5} {r['seconds']:>9.4f} {r['teraedges_per_second']:>8.3f} "
                     f"{speedup:>7} {r['imbalance']:>6.3f} {r['rebalances']:>5} {r['bytes_moved'] / 1e6:>8.2f} "
                     f"{r['reload_seconds']:>8.4f} {r['categories']:>5} {'yes' if r['same_as_1_rank'] else 'NO':>4} "
                     f"{'yes' if r['truth'] else 'NO':>5}")
    if "model" in record:
        lines.append(format_model(record["model"]))
    lines += [format_static(m) for m in record.get("static_fits", []) if m is not None]
    return "\n".join(lines)


def drive(args) -> int:
    out = args.out or (Path(os.environ["OUT"]) / "mpi_bench.json" if os.environ.get("OUT") else None)
    deadline = time.time() + args.max_seconds
    report = {"argv": sys.argv, "engine": args.engine, "precision": args.precision, "repeat": args.repeat,
              "host": os.uname().nodename, "cells": []}
    for neurons, layers in args.cells:
        record = run_cell(args, neurons, layers, deadline)
        report["cells"].append(record)
        print(format_cell(record), flush=True)
        if out:   # after every cell, so a later timeout keeps what was measured
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            write_json(report, out)
    passed = all(c["passed"] for c in report["cells"])
    print(f"\n[mpi_bench] {'PASS' if passed else 'FAIL'}: every run equals the 1-rank run and the truth"
          + ("" if passed else " (or a launch failed / was skipped)") + (f"; JSON: {out}" if out else ""))
    return 0 if passed else 1


def refit(path: Path) -> int:
    """Print the fits of every cell of a saved report."""
    report = json.loads(Path(path).read_text())
    for record in report["cells"]:
        fits(record)
        print(record["cell"])
        if "model" not in record:
            print("  no 1-rank 'on' run to fit")
            continue
        print(format_model(record["model"]))
        print("\n".join(format_static(m) for m in record["static_fits"] if m is not None))
    return 0


def _ranks(text: str) -> list[int]:
    try:
        ranks = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if ranks[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: rank counts must be at least 1")
    return ranks


def _modes(text: str) -> str:
    if any(m not in MODES for m in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated subset of {sorted(MODES)}")
    return text


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fit"]:
        if len(argv) != 2:
            print("usage: mpi_bench.py fit RESULTS.json", file=sys.stderr)
            return 2
        return refit(Path(argv[1]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="16384x120,65536x120", help="NxL cells, comma-separated")
    p.add_argument("--ranks", type=_ranks, default=[1, 2], help="comma-separated rank counts")
    p.add_argument("--modes", type=_modes, default="block,off,on,force",
                   help="modes of the multi-rank launches: block (static contiguous split), off (static "
                        "shuffled split), on (cost-aware rebalancing), force (rebalance at any imbalance)")
    p.add_argument("--samples", type=int, default=60000, help="first samples of the challenge inputs")
    p.add_argument("--engine", default="cuda")
    p.add_argument("--precision", choices=("fp32", "fp64"), default="fp32")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per mode after a warm-up (fastest kept)")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--engine-options", default=None, help="JSON dict of engine constructor options")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "spdnn-mpi-bench"),
                   help="where the per-cell feature files and per-launch JSON go")
    p.add_argument("--mpiexec", default=None, help="launcher command (default: mpiexec, flags for Open MPI)")
    p.add_argument("--max-seconds", type=float, default=560.0,
                   help="stop launching new runs after this many seconds (device commands stop at 600)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: $OUT/mpi_bench.json)")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.samples < 1:
        p.error("--repeat and --samples must be at least 1")
    try:
        args.cells = parse_cells(args.cells)
        return drive(args)
    except SpdnnError as exc:
        print(f"mpi_bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
