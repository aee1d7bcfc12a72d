"""CPU engines and their peers, timed in one run on the same generated data.

Engines (all on the same network and features, each checked against the fp64 reference):

* ``cpu fp32`` / ``cpu fp64`` -- spdnn's numba engine;
* ``scipy fp32`` / ``scipy fp64`` -- spdnn's reference engine (scipy CSR products);
* ``graphblas fp32`` (and ``fp64`` with ``--graphblas-fp64``) -- SuiteSparse:GraphBLAS
  through python-graphblas, the way LAGraph's DNN code does it, per layer::

      Y = Y  plus.times  W_k          mxm: the layer's products
      Y = Y  plus.plus   B_k          mxm with the diagonal bias matrix: adds b_k[j]
                                      only where Y has an entry (the structure)
      Y = select(Y > 0)               ReLU: entries <= 0 leave the structure
      Y = min(Y, 32)                  apply with a scalar: the cap

  followed by pruning: rows that became empty (dead samples) are dropped. The variant
  "no compaction" leaves them as empty rows (LAGraph's code as published).

The network is materialized once (the generator's layers are lazy) and converted to
each engine's layout outside the timed region; the table shows the median inference
seconds and TeraEdges/s (samples x edges / seconds / 1e12). Exit status 1 when any
engine's categories differ from the fp64 reference (each difference is explained
with spdnn.verify).

Usage::

    python benchmarks/cpu_peers.py                       # generated 1024 x 120, 60,000 samples
    python benchmarks/cpu_peers.py --neurons 64 --layers 8 --samples 500 --repeats 1
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import scipy.sparse as sp

import spdnn
from spdnn.bench import cpu_model, materialized, time_engine, time_runs, write_json
from spdnn.engines import get_engine
from spdnn.generate import cached_challenge
from spdnn.network import Network
from spdnn.report import format_ids
from spdnn.verify import compare_categories, explain_differences


def graphblas_prepare(network: Network, dtype):
    """Weights as GraphBLAS matrices and each layer's bias as a diagonal matrix."""
    import graphblas as gb

    n = network.neurons
    diag = np.arange(n)
    weights = [gb.io.from_scipy_sparse(w.astype(dtype)) for w in network.layers]
    biases = [gb.Matrix.from_coo(diag, diag, network.bias[k].astype(dtype), nrows=n, ncols=n)
              for k in range(network.depth)]
    return weights, biases


def graphblas_infer(weights, biases, features: sp.csr_matrix, dtype, ymax: float, *, compact: bool = True):
    """LAGraph's DNN inference, with pruning of dead samples when ``compact``.

    Without ``compact`` it is LAGraph's loop as published: the four steps only, dead
    samples stay as empty rows of Y (SuiteSparse skips them, but Y keeps every row),
    and survivors are not counted per layer.

    Returns
    -------
    categories : int64 array, sorted 1-based sample ids alive at the end
    survivors : int64 array (L,), or None without ``compact``
    """
    import graphblas as gb
    from graphblas import binary, monoid, semiring

    y = gb.io.from_scipy_sparse(features.astype(dtype))
    ids = np.arange(features.shape[0], dtype=np.int64)
    survivors = np.zeros(len(weights), dtype=np.int64) if compact else None
    for k, (w, b) in enumerate(zip(weights, biases)):
        y = y.mxm(w, semiring.plus_times).new()      # Z = Y W_k
        y << y.mxm(b, semiring.plus_plus)            # + b_k where Z has an entry (B_k diagonal)
        y << y.select(">", 0)                        # ReLU
        y << y.apply(binary.min, right=ymax)         # cap at ymax
        if compact:
            alive = y.reduce_rowwise(monoid.any).new().to_coo(values=False)[0].astype(np.int64)
            survivors[k] = len(alive)
            if len(alive) < y.nrows:                 # prune: keep only the samples still alive
                y = y[alive, :].new()
                ids = ids[alive]
            if len(alive) == 0:
                break
    alive = y.reduce_rowwise(monoid.any).new().to_coo(values=False)[0].astype(np.int64)
    return np.sort(ids[alive]) + 1, survivors


def time_spdnn_engine(name: str, precision: str, network, features, repeats: int):
    """(median inference seconds, preprocessing seconds, last InferenceResult) of an spdnn engine."""
    timing = time_engine(get_engine(name, precision=precision), network, features, repeats)
    return timing.median_seconds, timing.warmup.preprocess_seconds, timing.results[-1]


def time_graphblas(network, features, precision: str, repeats: int, *, compact: bool = True):
    """(median inference seconds, preprocessing seconds, categories, survivors): wall clock of
    :func:`graphblas_infer` after one warm-up; the conversion of the weights is the preprocessing."""
    dtype = np.float32 if precision == "fp32" else np.float64
    t0 = time.perf_counter()
    weights, biases = graphblas_prepare(network, dtype)
    prep = time.perf_counter() - t0
    timing = time_runs(lambda: graphblas_infer(weights, biases, features, dtype, network.ymax, compact=compact),
                       repeats)
    cats, surv = timing.results[-1]
    return timing.median_seconds, prep, cats, surv


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--neurons", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=120)
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of the cpu engine (median)")
    ap.add_argument("--peer-repeats", type=int, default=1, help="timed runs of scipy and GraphBLAS")
    ap.add_argument("--graphblas-fp64", action="store_true", help="also time GraphBLAS in fp64")
    ap.add_argument("--json-out", default=None, help="write the results as JSON")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    network, features, truth, info = cached_challenge(args.neurons, args.layers, seed=args.seed,
                                                      samples=None if args.samples == 60000 else args.samples)
    network = materialized(network, max_edges=network.edges)
    data_seconds = time.perf_counter() - t0
    samples, edges = features.shape[0], network.edges
    print(f"data: generated {args.neurons}x{args.layers}, {samples} samples, seed {args.seed} "
          f"({data_seconds:.1f} s to load/generate); truth from {info.get('engine')} fp64: {len(truth)} categories",
          file=sys.stderr)

    rows = []  # (engine, precision, median, preprocess, categories, survivors)
    plan = [("cpu", "fp32", args.repeats), ("cpu", "fp64", args.repeats),
            ("reference", "fp64", args.peer_repeats), ("reference", "fp32", args.peer_repeats)]
    for name, precision, repeats in plan:
        print(f"timing {name} {precision} ...", file=sys.stderr)
        med, prep, res = time_spdnn_engine(name, precision, network, features, repeats)
        rows.append(("scipy" if name == "reference" else name, precision, med, prep, res.categories, res.survivors,
                     repeats))
    for precision in ["fp32"] + (["fp64"] if args.graphblas_fp64 else []):
        for compact in (True, False):
            label = "graphblas" if compact else "graphblas (no compaction)"
            print(f"timing {label} {precision} ...", file=sys.stderr)
            med, prep, cats, surv = time_graphblas(network, features, precision, args.peer_repeats,
                                                   compact=compact)
            rows.append((label, precision, med, prep, cats, surv, args.peer_repeats))

    reference = next(r for r in rows if r[0] == "scipy" and r[1] == "fp64")[4]
    ok = True
    report = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
              "command": "python " + " ".join(sys.argv), "neurons": args.neurons, "layers": args.layers,
              "samples": samples, "edges": edges, "seed": args.seed, "spdnn": spdnn.__version__,
              "truth_count": len(truth), "reference_equals_truth": bool(compare_categories(reference, truth).passed),
              "engines": []}
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores; {args.neurons}x{args.layers}, {samples:,} samples\n")
    print("| engine | precision | runs | median inference (s) | TeraEdges/s | preprocess (s) | categories "
          "| = fp64 reference |")
    print("|---|---|---|---|---|---|---|---|")
    for name, precision, med, prep, cats, surv, repeats in rows:
        cmp = compare_categories(cats, reference)
        ok &= bool(cmp.passed)
        teps = samples * edges / med / 1e12
        print(f"| {name} | {precision} | {repeats} | {med:.3f} | {teps:.4f} | {prep:.2f} | {len(cats)} | "
              f"{'yes' if cmp.passed else 'NO'} |")
        report["engines"].append({"engine": name, "precision": precision, "runs": repeats, "median_seconds": med,
                                  "teraedges_per_second": teps, "preprocess_seconds": prep,
                                  "categories_count": len(cats), "equals_reference": bool(cmp.passed),
                                  "missing": cmp.missing, "extra": cmp.extra,
                                  "survivors": surv})
    for entry, (name, precision, *_rest) in zip(report["engines"], rows):
        if not entry["equals_reference"]:
            cats = _rest[2]
            print(f"\n{name} {precision} differs from the fp64 reference: missing {format_ids(entry['missing'])}; "
                  f"extra {format_ids(entry['extra'])}")
            explanation = explain_differences(network, features, cats, reference, found_precision=precision)
            print(explanation.to_text())
            entry["explanation"] = explanation.to_dict()
    if not report["reference_equals_truth"]:
        print("\nthe scipy fp64 reference differs from the cached generated truth", file=sys.stderr)
        ok = False
    if args.json_out:
        write_json(report, args.json_out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
