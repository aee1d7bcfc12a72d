#!/usr/bin/env python3
"""Measure the honest floor's constants on this machine and write them as JSON.

    python benchmarks/floor_constants.py --out floor-constants.json          # the current GPU
    python benchmarks/floor_constants.py --device cpu --out host.json        # the host
    spdnn bench --cells grid --engines cuda --floor-constants floor-constants.json

The measurements are :mod:`spdnn.floor_probe`'s (GPU: copies beyond and within L2, fp32
and fp64 add throughput, chains of block, cluster and grid barriers, kernels launched
from a CUDA graph; a few seconds); ``spdnn bench`` measures the same itself at its start
when it is not given a file. Prints one line a constant (and each variant measured), then
writes the JSON (:func:`spdnn.floor.write_constants`). Exit status 2 on a usage error or
when the device cannot be measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spdnn.errors import SpdnnError
from spdnn.floor import write_constants


def describe(constants) -> list[str]:
    """One line a constant, in the units of docs/floor.md."""
    c = constants
    lines = [f"device       {c.name} ({c.device})",
             f"bandwidth    {c.bandwidth_gbs:,.0f} GB/s (device memory, read + write)",
             f"cache        {c.cache_bytes / 2**20:,.0f} MiB at "
             + ("unmeasured" if c.cache_bandwidth_gbs is None else f"{c.cache_bandwidth_gbs:,.0f} GB/s")]
    for precision, rate in sorted(c.add_per_s.items()):
        lines.append(f"adds {precision}    {rate / 1e12:,.2f} T/s")

    def ns(value):
        return "unmeasured" if value is None else f"{value * 1e9:,.1f} ns"

    lines.append(f"block        {ns(c.block_barrier_s)} a barrier")
    for size, value in sorted(c.cluster_barrier_s.items(), key=lambda kv: int(kv[0])):
        lines.append(f"cluster {size:>2}   {ns(value)} a barrier")
    lines.append(f"grid         {ns(c.grid_barrier_s)} a barrier")
    lines.append(f"launch       {ns(c.launch_s)} a graph-launched kernel")
    for key in ("block_barrier_by_threads", "grid_barrier", "graph_launch", "bandwidth", "cache_bandwidth",
                "unavailable"):
        if c.details.get(key):
            lines.append(f"  {key}: {json.dumps(c.details[key])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="what to measure (default: the GPU)")
    ap.add_argument("--repeats", type=int, default=5, help="timed launches of each probe (median)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        print("floor_constants: error: --repeats must be at least 1", file=sys.stderr)
        return 2
    from spdnn import floor_probe

    try:
        if args.device == "gpu":
            constants = floor_probe.measure_gpu(repeats=args.repeats, log=lambda line: print(line, flush=True))
        else:
            constants = floor_probe.measure_host()
        write_constants(constants, args.out)
    except SpdnnError as exc:
        print(f"floor_constants: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(describe(constants)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
