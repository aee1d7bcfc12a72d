"""Fill spdnn's cache of generated data from files made on another machine.

On a lent GPU machine every minute counts: generating the 60,000 challenge inputs takes
12-50 s per size and the float64 truth longer. This script turns the bit-packed feature
files that ``benchmarks/cuda_bench.py`` reads (``features-{N}.npz``: ``bits``, ``n``,
``nnz``) into the cache files of :func:`spdnn.generate.cached_challenge` and copies truth
files (``truth-n{N}-l{L}-....json``, made by ``cached_challenge`` elsewhere) beside them,
so that ``spdnn bench`` finds everything cached. The features are checked against their
recorded nonzero count; a truth file is copied only when its ``features_nnz`` equals that
of the features seeded for its N.

    SPDNN_CACHE_DIR=/tmp/c python benchmarks/seed_cache.py --features .devdata/features \\
        --truth .devdata/truth
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cuda_bench import load_packed_features  # noqa: E402

from spdnn.generate.challenge import _features_file, _generated_dir, _save_features  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=Path, required=True, help="folder of features-{N}.npz (bit-packed)")
    ap.add_argument("--truth", type=Path, help="folder of truth-*.json files to copy")
    args = ap.parse_args(argv)
    _generated_dir().mkdir(parents=True, exist_ok=True)
    nnz = {}
    for path in sorted(args.features.glob("features-*.npz")):
        n = int(path.stem.split("-")[1])
        f = load_packed_features(path)                 # exits on a nonzero-count mismatch
        _save_features(_features_file(n, None), f)
        nnz[n] = int(f.nnz)
        print(f"{path.name}: {f.shape[0]} x {n}, {f.nnz} nonzeros -> {_features_file(n, None)}")
    status = 0
    for path in sorted(args.truth.glob("truth-*.json")) if args.truth else []:
        info = json.loads(path.read_text())
        if nnz.get(info["neurons"]) != info["features_nnz"]:
            print(f"{path.name}: made from {info['features_nnz']} input nonzeros, the features seeded for "
                  f"N={info['neurons']} have {nnz.get(info['neurons'])}: not copied", file=sys.stderr)
            status = 1
            continue
        shutil.copyfile(path, _generated_dir() / path.name)
        print(f"{path.name} -> {_generated_dir()}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
