#!/usr/bin/env python3
"""Carry generated challenge inputs to a machine with no time to make them.

A lent GPU machine counts every minute, and generating the 60,000 challenge inputs
takes from seconds (N = 1024) to minutes (N = 65536). This script moves them in the
bit-packed form of :mod:`spdnn.formats.packed` (about 2 MB at N = 1024, 4x more per 4x N):

    # here: write DIR/features-{N}.npz from spdnn's cache (generated first if missing)
    python benchmarks/devdata.py make --neurons 1024,4096,16384 --out .devdata/features

    # there (DIR carried): put them into spdnn's cache; `spdnn bench` and the other
    # benchmarks then find them through spdnn.generate.cached_challenge
    python benchmarks/devdata.py seed .devdata/features

The truth is not carried: ``cached_challenge`` computes it where it runs, with the
fastest exact float64 engine there. Exit status: 0 done, 2 a bad argument or a damaged or
missing file (one line ``devdata: error: ...``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from spdnn.errors import SpdnnError
from spdnn.formats.packed import read_packed_features, write_packed_features
from spdnn.generate import cached_challenge
from spdnn.generate.challenge import store_cached_features
from spdnn.generate.radixnet import check_neurons


def make(neurons: list[int], out: Path) -> None:
    """Write ``out/features-{N}.npz`` for every N (features through spdnn's cache)."""
    out.mkdir(parents=True, exist_ok=True)
    for n in neurons:
        t = time.perf_counter()
        # One layer: the cache's truth for it costs one layer; the features are the full set.
        _, features, _, _ = cached_challenge(n, 1)
        path = write_packed_features(out / f"features-{n}.npz", features)
        print(f"{path}: {features.shape[0]} x {n}, {features.nnz:,} nonzeros, {path.stat().st_size / 1e6:.1f} MB "
              f"({time.perf_counter() - t:.1f} s)")


def seed(folder: Path) -> None:
    """Store every ``folder/features-{N}.npz`` in spdnn's cache of generated inputs."""
    files = sorted(folder.glob("features-*.npz"))
    if not files:
        raise SpdnnError(f"{folder}: no features-*.npz files")
    for path in files:
        features = read_packed_features(path)
        cached = store_cached_features(features)
        print(f"{path.name}: {features.shape[0]} x {features.shape[1]}, {features.nnz:,} nonzeros -> {cached}")


def _neuron_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of N") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="job", required=True)
    mk = sub.add_parser("make", help="write bit-packed features-{N}.npz files")
    mk.add_argument("--neurons", type=_neuron_list, required=True, help="comma-separated N, e.g. 1024,4096")
    mk.add_argument("--out", type=Path, required=True, help="folder of the files")
    sd = sub.add_parser("seed", help="put carried features-{N}.npz files into spdnn's cache")
    sd.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.job == "make":
            make([check_neurons(n) for n in args.neurons], args.out)
        else:
            seed(args.folder)
    except SpdnnError as exc:
        print(f"devdata: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
