#!/usr/bin/env python3
"""Check and time the CUDA engine (and the cuSPARSE baseline) on many cells in one run.

Usage (on a GPU machine)::

    PYTHONPATH=src python3 benchmarks/cuda_bench.py --out OUT \\
        --cells 1024x120,1024x480,1024x1920,4096x120,16384x120,65536x120 --reps 5

For every N: the inputs (the challenge's MNIST features, or for N above --real-max the
real features of N/4 upsampled 2x2, nearest neighbour: a documented substitute with the
official per-row density), a RadiX-Net network, then per cell:

* truth: the cuda engine in fp64, checked bit for bit against the scipy float64
  reference on the first --ref-samples samples (and on all of them where --ref-full);
* every variant's categories compared with that truth (exit status 1 on a mismatch);
* time: median of --reps inference runs after a warm-up (load() is not timed);
* floor: bytes the surviving samples' activations must move (read + write per layer)
  plus the weights, over the measured device copy bandwidth.

Writes OUT/cuda_bench.json and OUT/cuda_bench.log; prints a table last.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from spdnn.engines import get_engine
from spdnn.engines.reference import ReferenceEngine
from spdnn.generate import challenge_features, radixnet_network

SEED_MS = {(1024, 120): 8.2, (1024, 480): 33.5, (1024, 1920): 135.0, (4096, 120): 48.5,
           (16384, 120): 252.0, (65536, 120): 1800.0}

LOG: list[str] = []


def log(*parts):
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.append(line)


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (median of 10)."""
    import cupy as cp

    a = cp.ones(256 * 1024 * 1024, dtype=np.float32)   # 1 GiB
    b = cp.empty_like(a)
    times = []
    for _ in range(12):
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record()
        b[...] = a
        e1.record()
        e1.synchronize()
        times.append(cp.cuda.get_elapsed_time(e0, e1) / 1e3)
    del a, b
    return 2 * 1024**3 / statistics.median(times[2:])


def upsample2(features: sp.csr_matrix, neurons_small: int) -> sp.csr_matrix:
    """Nearest-neighbour 2x2 upsampling of column-major s x s images (feature = c*s + r)."""
    s = int(round(neurons_small ** 0.5))
    f = features.tocsr()
    c, r = np.divmod(f.indices.astype(np.int64), s)
    cols = np.stack([(2 * c + dc) * (2 * s) + (2 * r + dr) for dc in (0, 1) for dr in (0, 1)], axis=1)
    out = sp.csr_matrix((np.ones(cols.size), cols.ravel().astype(np.int32), f.indptr.astype(np.int64) * 4),
                        shape=(f.shape[0], 4 * neurons_small))
    out.has_sorted_indices = False
    out.sort_indices()
    return out


_FEATURES: dict[int, sp.csr_matrix] = {}


FEATURES_DIR: Path | None = None


def load_packed_features(path: Path) -> sp.csr_matrix:
    """Features saved as bit-packed dense rows (``bits``, ``n``): value 1 where the bit is set."""
    z = np.load(path)
    n = int(z["n"])
    bits = np.unpackbits(z["bits"], axis=1, count=n).astype(bool)
    f = sp.csr_matrix(bits, dtype=np.float64)
    if f.nnz != int(z["nnz"]):
        raise SystemExit(f"{path}: {f.nnz} nonzeros, expected {int(z['nnz'])}")
    return f


def features_for(n: int, real_max: int, samples: int | None) -> tuple[sp.csr_matrix, str]:
    if n in _FEATURES:
        return (_FEATURES[n] if samples is None else _FEATURES[n][:samples]), "cached"
    packed = FEATURES_DIR / f"features-{n}.npz" if FEATURES_DIR else None
    if packed is not None and packed.exists():
        f = load_packed_features(packed)
        kind = f"challenge_features({n}), generated off-device and carried ({packed.name})"
    elif n <= real_max:
        t = time.perf_counter()
        f = challenge_features(n, progress=False)
        kind = f"challenge_features({n}) {time.perf_counter() - t:.1f} s"
    else:
        small, _ = features_for(n // 4, real_max, None)
        f = upsample2(small, n // 4)
        kind = f"upsampled 2x2 from challenge_features({n // 4})"
    _FEATURES[n] = f
    if samples is not None:
        f = f[:samples]
    return f, kind


def time_engine(eng, net, feats, reps: int) -> tuple[float, object, list[float], float]:
    """(median inference seconds, result of the first run, all times, prepare seconds)."""
    t = time.perf_counter()
    res = eng.run(net, feats)                   # warm-up: compile, graph, first pass
    prep = time.perf_counter() - t - res.inference_seconds
    times = [res.inference_seconds]
    if res.extra.get("batches", 1) > 1 or getattr(eng, "batch_samples", None):
        for _ in range(reps - 1):
            times.append(eng.run(net, feats).inference_seconds)
    else:
        for _ in range(reps):
            eng.load(feats)
            t0 = time.perf_counter()
            eng.infer()
            times.append(time.perf_counter() - t0)
        times = times[1:]
    return statistics.median(times), res, times, prep


def floor_seconds(n: int, loaded: int, survivors: np.ndarray, weight_bytes_per_layer: float, bw: float):
    alive_in = np.concatenate(([loaded], survivors[:-1]))
    act = float(np.sum((alive_in + survivors) * n * 4))
    total = act + weight_bytes_per_layer * len(survivors)
    return total / bw, total


def reference_subset_check(net, feats, samples: int, precision_engine_opts: dict) -> str:
    """cuda fp64 == scipy fp64 on the first `samples` samples: categories, survivors, values."""
    sub = feats[:samples]
    ref = ReferenceEngine(precision="fp64")
    t = time.perf_counter()
    r = ref.run(net, sub)
    tref = time.perf_counter() - t
    rrows, rvals = ref.activations()
    eng = get_engine("cuda", precision="fp64", poison=1e30, **precision_engine_opts)
    c = eng.run(net, sub)
    rows, vals = eng.activations()
    same = (np.array_equal(c.categories, r.categories) and np.array_equal(c.survivors, r.survivors)
            and np.array_equal(rows, rrows) and (vals != rvals).nnz == 0)
    return f"reference fp64 on first {samples}: {len(r.categories)} categories, " \
           f"cuda fp64 bit-identical={same} (reference {tref:.1f} s)", same


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".")
    ap.add_argument("--cells", default="1024x120")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--real-max", type=int, default=16384, help="largest N generated with challenge_features")
    ap.add_argument("--samples", type=int, default=None, help="use only the first samples (default 60000)")
    ap.add_argument("--ref-samples", default="1024:60000,4096:3000,16384:1000,65536:300",
                    help="N:samples for the fp64 reference check")
    ap.add_argument("--variants", default="default,nograph,nodedupe,array,full,mb1,sliced,cusparse")
    ap.add_argument("--variants-deep", default="default,nograph,cusparse", help="variants for L != 120")
    ap.add_argument("--variants-large", default="default,nodedupe,cusparse", help="variants for N >= 16384")
    ap.add_argument("--features-dir", default=None, help="features-{N}.npz made off-device (bit-packed)")
    ap.add_argument("--official", default=None, help="directory of the official N=1024 subset (check first)")
    args = ap.parse_args(argv)
    global FEATURES_DIR
    FEATURES_DIR = Path(args.features_dir) if args.features_dir else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(0)
    card = props["name"].decode()
    bw = copy_bandwidth()
    log(f"device: {card}, {props['multiProcessorCount']} SMs, L2 {props['l2CacheSize'] / 2**20:.0f} MiB; "
        f"cupy {cp.__version__}; copy bandwidth {bw / 1e12:.2f} TB/s (read+write)")
    ok = True
    results = {"card": card, "copy_bandwidth": bw, "cells": []}

    if args.official:
        from spdnn.formats.official import read_categories, read_features, read_network

        d = Path(args.official)
        net = read_network(d / "neuron1024.tar.gz", cache=False)
        f = read_features(d / "sparse-images-1024-first1200.mtx.gz", cache=False)
        truth = read_categories(d / "neuron1024-l120-categories-first1200.mtx")
        for prec in ("fp32", "fp64"):
            r = get_engine("cuda", precision=prec, poison=1e30).run(net, f)
            good = np.array_equal(r.categories, truth)
            ok &= good
            log(f"official 1024x120 first 1200, cuda {prec}: {len(r.categories)} ids, equal to truth={good}")

    ref_samples = dict((k, int(v)) for k, v in (kv.split(":") for kv in args.ref_samples.split(",")))
    cells = [tuple(int(x) for x in c.split("x")) for c in args.cells.split(",")]
    variants = args.variants.split(",")
    for n in sorted({c[0] for c in cells}):
        feats, kind = features_for(n, args.real_max, args.samples)
        loaded = int(np.count_nonzero(np.diff(feats.indptr)))
        log(f"\nN={n}: features {feats.shape}, nnz {feats.nnz} ({kind})")
        depth_max = max(c[1] for c in cells if c[0] == n)
        base = radixnet_network(n, depth_max)
        for (nn, depth) in [c for c in cells if c[0] == n]:
            net = base if depth == depth_max else base.truncated(depth)
            edges = 32 * n * depth
            cell = {"neurons": n, "layers": depth, "samples": feats.shape[0], "features": kind, "runs": {}}
            try:
                # Truth: cuda fp64 (checked against the reference on a subset).
                t = time.perf_counter()
                eng64 = get_engine("cuda", precision="fp64", poison=1e30)
                r64 = eng64.run(net, feats)
                truth = r64.categories
                log(f"{n}x{depth}: cuda fp64 {len(truth)} categories, inference {r64.inference_seconds * 1e3:.1f} ms "
                    f"(run {time.perf_counter() - t:.1f} s), batches {r64.extra.get('batches')}")
                cell["fp64_categories"] = int(len(truth))
                cell["fp64_ms"] = r64.inference_seconds * 1e3
                del eng64
                cp.get_default_memory_pool().free_all_blocks()
                count = ref_samples.get(f"{n}x{depth}", ref_samples.get(str(n)))
                if count:
                    msg, same = reference_subset_check(net, feats, min(count, feats.shape[0]), {})
                    ok &= same
                    log(f"{n}x{depth}: {msg}")
                    cell["reference_check"] = msg
                cell_variants = variants
                if depth != 120:
                    cell_variants = args.variants_deep.split(",")
                elif n >= 16384:
                    cell_variants = args.variants_large.split(",")
                for v in cell_variants:
                    if v == "fp64":
                        continue
                    opts, name, reps = {}, "cuda", args.reps
                    from spdnn.engines.cuda.layout import KernelConfig, choose_config
                    if v == "nograph":
                        opts = {"use_graph": False}
                    elif v.startswith("t") and "mb" in v:          # e.g. t128mb4: threads and tile
                        t_, m_ = v[1:].split("mb")
                        opts = {"config": choose_config(n, 4, virtual=n // 16, mb=int(m_), threads=int(t_))}
                    elif v in ("warp", "block"):                    # kernel for deduplicated layers
                        opts = {"kernel": v}
                    elif v == "noprefetch":
                        opts = {"prefetch": False}
                    elif v == "stream":
                        opts = {"stream_weights": True}
                    elif v == "nodedupe":
                        opts = {"dedupe": False}
                        if n >= 65536:
                            reps = 2
                    elif v in ("array", "full"):
                        opts = {"values": v}
                    elif v in ("mb1", "mb2", "mb4", "mb8"):
                        opts = {"config": choose_config(n, 4, virtual=n // 16, mb=int(v[2:]))}
                    elif v in ("nodedupe_mb1", "nodedupe_mb2", "nodedupe_mb4", "nodedupe_mb8"):
                        opts = {"config": choose_config(n, 4, mb=int(v[-1]))}
                    elif v == "sliced":
                        if n > 4096:
                            continue
                        opts = {"config": KernelConfig(threads=256, opt=1, mb=8, chunk=n)}
                    elif v == "cusparse":
                        name, reps = "cusparse", (1 if n >= 65536 else max(2, args.reps // 2))
                        if n >= 16384:
                            opts = {"batch_samples": 15000 if n == 16384 else 4000}
                    elif v != "default":
                        raise SystemExit(f"unknown variant {v!r}")
                    eng = get_engine(name, precision="fp32", **opts)
                    med, res, times, prep = time_engine(eng, net, feats, reps)
                    same = np.array_equal(res.categories, truth)
                    if not same:
                        diff = np.setxor1d(res.categories, truth)
                        log(f"  {v}: categories differ from fp64 in {diff.size} ids: {diff[:10]}")
                        if v != "cusparse":
                            ok = False
                    tes = feats.shape[0] * edges / med / 1e12
                    run = {"ms": med * 1e3, "times_ms": [x * 1e3 for x in times], "teraedges": tes,
                           "equal_fp64": bool(same), "prepare_s": prep, "extra": res.extra}
                    if v == "default":
                        wbytes = 32 * n * 2          # the layer's nonzeros as 16-bit indices, one value
                        fl, fbytes = floor_seconds(n, loaded, res.survivors, wbytes, bw)
                        cell["floor_ms"], cell["floor_bytes"] = fl * 1e3, fbytes
                        cell["survivors"] = [int(x) for x in res.survivors]
                        cell["fp32_categories"] = int(len(res.categories))
                    cell["runs"][v] = run
                    log(f"  {n}x{depth} {v:9s}: {med * 1e3:9.2f} ms  {tes:7.2f} TE/s  equal={same}  "
                        f"(prepare {prep:.1f} s; runs {', '.join(f'{x * 1e3:.2f}' for x in times)})")
                    del eng
                    cp.get_default_memory_pool().free_all_blocks()
            except Exception:
                ok = False
                log(f"{n}x{depth}: FAILED\n{traceback.format_exc()}")
            results["cells"].append(cell)
            (out / "cuda_bench.json").write_text(json.dumps(results, indent=1, default=str))

    log("\n| N x L | variant | ms | TeraEdges/s | vs seed | floor ms | time/floor | equal |")
    log("|---|---|---|---|---|---|---|---|")
    for cell in results["cells"]:
        key = (cell["neurons"], cell["layers"])
        for v, run in cell["runs"].items():
            seed = SEED_MS.get(key)
            fl = cell.get("floor_ms")
            log(f"| {key[0]}x{key[1]} | {v} | {run['ms']:.2f} | {run['teraedges']:.1f} | "
                f"{seed / run['ms'] if seed else float('nan'):.1f}x | {fl if fl else float('nan'):.2f} | "
                f"{run['ms'] / fl if fl else float('nan'):.1f} | {run['equal_fp64']} |")
    (out / "cuda_bench.log").write_text("\n".join(LOG) + "\n")
    log("ALL CHECKS PASSED" if ok else "SOME CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
