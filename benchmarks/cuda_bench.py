#!/usr/bin/env python3
"""The CUDA engine's techniques, one variant at a time, on generated challenge cells.

Usage (on a GPU machine; ``benchmarks/devdata.py seed`` first saves generating inputs)::

    python3 benchmarks/cuda_bench.py --out OUT --cells 1024x120,4096x120 --reps 5 \\
        --variants default,nomerge,nodedupe,perlayer,mb1,sliced,cusparse

``spdnn bench`` compares engines; this script compares configurations of the CUDA
engine (and the cuSPARSE baseline), each a *variant* of :data:`VARIANTS`. Everything it
measures comes from :mod:`spdnn.bench`: data and float64 truth from
:func:`spdnn.generate.cached_challenge`, the timing loop :func:`~spdnn.bench.time_engine`
(median of ``--reps`` runs after a warm-up; inference only), the edge count
``network.edges``, the honest floor :func:`spdnn.floor.floor_of_run` at constants measured at
the start (:func:`spdnn.floor_probe.measure_gpu`) and beside it the v1 floor
:func:`spdnn.floor.floor_estimate` at the measured copy bandwidth
:func:`~spdnn.bench.gpu_copy_gbs`, and the published figures
:data:`~spdnn.bench.PUBLISHED`. Per cell it also checks the engine's fp64 mode against
the scipy float64 reference bit for bit (categories, survivors, activations) on the first
``--ref-samples`` samples, and with ``--official DIR`` the official N=1024 subset first.

Writes OUT/cuda_bench.json (after every cell) and prints a table last. Exit status 1
when any variant of any engine (cuSPARSE included) gives categories other than the
float64 truth, or a check fails; 2 on a usage error.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np

from spdnn.bench import LAUNCH_LATENCY_S, PUBLISHED, gpu_copy_gbs, materialized, parse_cells, time_engine, write_json
from spdnn.floor import floor_estimate, floor_of_run
from spdnn.engines import get_engine
from spdnn.errors import SpdnnError
from spdnn.generate import cached_challenge
from spdnn.verify import compare_categories

#: Poison for unwritten activation rows in the checks (finite and positive: a kernel
#: reading a row nothing wrote makes a dead sample live).
POISON = 1e30


def _config(n: int, **kwargs):
    from spdnn.engines.cuda.layout import choose_config

    return choose_config(n, 4, **kwargs)


def variant_engine(variant: str, n: int):
    """(engine name, constructor options) of a variant at N neurons (fp32).

    default: the engine as shipped; nomerge: identical rows not merged; nodedupe: every
    one of the N columns computed (no distinct-column deduplication); perlayer: one kernel
    launch a layer instead of rows kept in shared memory across layers (stationary
    tiles); mbK: tiles of K rows; nodedupe_mbK: both; tTmbK: T threads a block and tiles
    of K; sliced: outputs sliced over blocks; stream: weights streamed from pinned host
    memory; cusparse: the library baseline (batched at N >= 16384).
    """
    if variant == "default":
        return "cuda", {}
    if variant == "nomerge":
        return "cuda", {"merge": False}
    if variant == "nodedupe":
        return "cuda", {"dedupe": False}
    if variant == "perlayer":
        return "cuda", {"config": _config(n, virtual=n // 16, stationary=False)}
    if variant == "stream":
        return "cuda", {"stream_weights": True}
    if variant == "sliced":
        from spdnn.engines.cuda.layout import KernelConfig

        return "cuda", {"config": KernelConfig(threads=256, cols_per_thread=1, rows_per_tile=8, chunk=n)}
    if variant.startswith("nodedupe_mb"):
        return "cuda", {"config": _config(n, rows_per_tile=int(variant[len("nodedupe_mb"):]), stationary=False),
                        "dedupe": False}
    if variant.startswith("mb") and variant[2:].isdigit():               # variant names: mb = rows per tile
        return "cuda", {"config": _config(n, virtual=n // 16, rows_per_tile=int(variant[2:]))}
    if variant.startswith("t") and "mb" in variant and variant[1:].replace("mb", "", 1).isdigit():
        threads, rows = variant[1:].split("mb")
        return "cuda", {"config": _config(n, virtual=n // 16, rows_per_tile=int(rows), threads=int(threads))}
    if variant == "cusparse":
        return "cusparse", ({"batch_samples": 15000 if n == 16384 else 4000} if n >= 16384 else {})
    raise SpdnnError(f"--variants: unknown variant {variant!r} (see variant_engine)")


def reference_check(network, features, samples: int) -> dict:
    """cuda fp64 against the scipy float64 reference on the first ``samples`` samples, bit for bit."""
    sub = features[:samples]
    reference = get_engine("reference", precision="fp64")
    ref = reference.run(materialized(network), sub)
    ref_rows, ref_values = reference.activations()
    engine = get_engine("cuda", precision="fp64", poison=POISON)
    got = engine.run(network, sub)
    rows, values = engine.activations()
    same = bool(np.array_equal(got.categories, ref.categories) and np.array_equal(got.survivors, ref.survivors)
                and np.array_equal(rows, ref_rows) and (values != ref_values).nnz == 0)
    return {"samples": samples, "categories": int(len(ref.categories)), "bit_identical": same,
            "reference_seconds": ref.inference_seconds}


def official_check(folder: Path) -> bool:
    """cuda fp32 and fp64 on the official N=1024 subset give exactly its truth."""
    from spdnn.formats import read_categories, read_features, read_network

    network = read_network(folder / "neuron1024.tar.gz", cache=False)
    features = read_features(folder / "sparse-images-1024-first1200.mtx.gz", cache=False)
    truth = read_categories(folder / "neuron1024-l120-categories-first1200.mtx")
    ok = True
    for precision in ("fp32", "fp64"):
        result = get_engine("cuda", precision=precision, poison=POISON).run(network, features)
        good = bool(np.array_equal(result.categories, truth))
        print(f"official 1024x120, first 1200, cuda {precision}: {len(result.categories)} categories, "
              f"equal to the truth: {good}", flush=True)
        ok &= good
    return ok


def run_cell(n: int, layers: int, args, bandwidth_gbs: float, constants) -> dict:
    """Every variant of one cell; the record says whether all of them matched the truth."""
    import cupy as cp

    network, features, truth, info = cached_challenge(n, layers, seed=args.seed, samples=args.samples)
    alive_inputs = int(np.count_nonzero(np.diff(features.indptr)))
    cell = {"neurons": n, "layers": layers, "samples": int(features.shape[0]), "edges": network.edges,
            "categories_count": int(len(truth)), "truth_info": info, "published": PUBLISHED.get((n, layers)),
            "runs": {}, "passed": True}
    count = args.ref_samples.get((n, layers), args.ref_samples.get(n))
    if count:
        cell["reference_check"] = check = reference_check(network, features, min(count, features.shape[0]))
        cell["passed"] &= check["bit_identical"]
        print(f"{n}x{layers}: cuda fp64 against the reference on {check['samples']} samples: "
              f"bit-identical {check['bit_identical']}", flush=True)
    variants = args.variants if layers == 120 and n < 16384 else (
        args.variants_large if layers == 120 else args.variants_deep)
    for variant in variants:
        name, options = variant_engine(variant, n)
        engine = get_engine(name, precision="fp32", **options)
        timing = time_engine(engine, network, features, args.reps)
        result = timing.results[-1]
        compared = [compare_categories(r.categories, truth) for r in [timing.warmup, *timing.results]]
        passed = all(c.passed for c in compared)
        cell["passed"] &= passed
        median = timing.median_seconds
        floor = floor_estimate(result.survivors, alive_inputs=alive_inputs, neurons=n, bytes_per_value=4,
                               edges=network.edges, bandwidth_gbs=bandwidth_gbs,
                               launch_latency_s=LAUNCH_LATENCY_S["gpu"], device="gpu",
                               rows_computed=result.extra.get("rows_computed"))
        honest = floor_of_run(network, survivors=result.survivors, alive_inputs=alive_inputs, extra=result.extra,
                              bytes_per_value=4, precision="fp32", constants=constants)
        cell["runs"][variant] = {
            "engine": name, "options": options, "median_seconds": median, "times": timing.seconds,
            "teraedges_per_second": result.samples * network.edges / median / 1e12, "passed": passed,
            "preprocess_seconds": timing.warmup.preprocess_seconds, "floor": honest.to_dict(),
            "floor_ratio": median / honest.seconds, "floor_v1": floor.to_dict(),
            "floor_ratio_v1": median / floor.seconds, "survivors": result.survivors,
            "rows_computed": result.extra.get("rows_computed"), "extra": result.extra}
        bad = next((c for c in compared if not c.passed), None)
        teps = cell["runs"][variant]["teraedges_per_second"]
        print(f"  {n}x{layers} {variant:12s} {median * 1e3:9.3f} ms  {teps:7.2f} TE/s  x{median / honest.seconds:.2f} "
              f"floor ({honest.bound}: {honest.limit})  x{median / floor.seconds:.2f} floor v1  "
              + ("PASS" if bad is None else f"FAIL ({bad.missing.size} missing, {bad.extra.size} extra)"),
              flush=True)
        del engine, timing
        cp.get_default_memory_pool().free_all_blocks()
    return cell


def print_table(results: dict) -> None:
    print("\n| N x L | variant | ms | TeraEdges/s | x floor | x floor (v1) | best published TE/s | categories |")
    print("|---|---|---|---|---|---|---|---|")
    for cell in results["cells"]:
        published = max((cell.get("published") or {}).values(), default=None)
        for variant, run in cell.get("runs", {}).items():
            print(f"| {cell['neurons']}x{cell['layers']} | {variant} | {run['median_seconds'] * 1e3:.3f} | "
                  f"{run['teraedges_per_second']:.1f} | {run['floor_ratio']:.2f} | {run['floor_ratio_v1']:.2f} | "
                  f"{'-' if published is None else published} | {'PASS' if run['passed'] else 'FAIL'} |")


def _ref_samples(text: str) -> dict:
    """``1024:60000,4096x120:3000`` -> {1024: 60000, (4096, 120): 3000}."""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, count = item.partition(":")
        try:
            out[tuple(parse_cells(key)[0]) if "x" in key else int(key)] = int(count)
        except ValueError:
            raise SpdnnError(f"--ref-samples: {item!r} is not N:samples or NxL:samples") from None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--cells", default="1024x120", help="NxL cells, comma-separated, or grid")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per variant (median)")
    ap.add_argument("--samples", type=int, default=None, help="first samples only (default all 60,000)")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--ref-samples", default="1024:60000,4096:3000,16384:1000,65536:300",
                    help="N:samples or NxL:samples of the fp64 check against the reference")
    ap.add_argument("--variants", default="default,nomerge,nodedupe,perlayer,mb1,sliced,cusparse",
                    help="variants at L = 120, N < 16384 (see variant_engine)")
    ap.add_argument("--variants-deep", default="default,nomerge,cusparse", help="variants at L != 120")
    ap.add_argument("--variants-large", default="default,nodedupe,cusparse", help="variants at N >= 16384, L = 120")
    ap.add_argument("--official", type=Path, default=None, help="folder of the official N=1024 subset")
    args = ap.parse_args(argv)
    try:
        cells = parse_cells(args.cells)
        args.ref_samples = _ref_samples(args.ref_samples)
        args.variants, args.variants_deep, args.variants_large = (
            v.split(",") for v in (args.variants, args.variants_deep, args.variants_large))
        for v in {*args.variants, *args.variants_deep, *args.variants_large}:
            variant_engine(v, 1024)
        if args.reps < 1:
            raise SpdnnError(f"--reps {args.reps}: expected at least 1")
    except SpdnnError as exc:
        print(f"cuda_bench: error: {exc}", file=sys.stderr)
        return 2
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    bandwidth = gpu_copy_gbs()
    from spdnn.floor_probe import measure_gpu

    constants = measure_gpu(log=lambda line: print(line, flush=True))
    results = {"device": props["name"].decode(), "cupy": cp.__version__, "copy_bandwidth_gbs": bandwidth,
               "floor_constants": constants.to_dict(), "cells": []}
    print(f"device {results['device']}, copy bandwidth {bandwidth:.0f} GB/s (read + write)", flush=True)
    ok = official_check(args.official) if args.official else True
    args.out.mkdir(parents=True, exist_ok=True)
    for n, layers in cells:
        try:
            cell = run_cell(n, layers, args, bandwidth, constants)
        except Exception:  # a failed cell is reported and fails the run; the next cell still runs
            cell = {"neurons": n, "layers": layers, "passed": False, "error": traceback.format_exc()}
            print(f"{n}x{layers}: FAILED\n{cell['error']}", flush=True)
        ok &= cell["passed"]
        results["cells"].append(cell)
        write_json(results, args.out / "cuda_bench.json")
    print_table(results)
    print("ALL CHECKS PASSED" if ok else "SOME CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
