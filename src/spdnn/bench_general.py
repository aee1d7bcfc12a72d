"""``spdnn bench`` on general networks (issue 17, point 8): the CUDA engine (merging off),
the cuSPARSE baseline and PyTorch peers side by side, on the same card, against a floor.

Cells (``--cells``, names):

* ``wide4096``, ``wide16384``: random square layers of N = 4096 (12 layers) or 16384 (4
  layers), 32 nonzeros a column at random rows, per-entry values N(0, 2/32) (He scaling: a
  ReLU row keeps its size from layer to layer), a dense bias U(-0.05, 0) (so rows may be
  pruned), ReLU uncapped;
* ``sweep4096``: the same N = 4096 layers (4 of them) at 50, 80, 90, 95, 99, 99.5 and 99.9%
  zeros (one cell each, ``zeros4096:P`` names one): where dense products win;
* ``mnistshape``: the shape of the trained MNIST network of issue 17 (784 -> 1024 dense,
  24 sparse 1024 x 1024 at 95% zeros, 1024 -> 10 dense identity; dense bias; ReLU capped at
  1) with random weights, on the 60,000 MNIST training images (pixel / 255);
* ``model:PATH``: a model file (``.spdnn``, ``.onnx``; :func:`spdnn.models.read_model`) on
  the 60,000 MNIST training images (pixel / 255) when it takes 784 inputs, else on the
  wide cells' random inputs of its width (e.g. the network ``benchmarks/train_mnist.py``
  trains);
* ``general``: all of the above but ``model:``.

Inputs of the wide cells: 60,000 rows (``--samples``), 20% nonzeros a row at random
columns, values U(0, 1), seeded. Every weight and input comes from ``numpy.random`` with
``--seed``.

Peers (``torch-fp32``, ``torch-tf32``: ``relu(x @ W + b)`` with dense W, TF32 off / on;
``torch-csr``: ``torch.sparse.mm`` of W^T in CSR with the activations transposed): the same
bias rule, activation and cap, no pruning; they exist only here (``import torch`` happens
when they run). Engines are timed by :func:`spdnn.bench.time_engine`, peers by
:func:`spdnn.bench.time_runs` around a synchronized forward pass: one timing loop. The
floor is the honest floor of ``spdnn bench`` (:class:`spdnn.bench.HonestFloors`, its
constants measured after every timing, docs/floor.md) with the layers' widths and the
weights' bytes (an index and a value per sparse weight, every value of a dense layer); the
first model's floor (:func:`spdnn.floor.floor_estimate`) stays beside it as ``floor_v1``. Predictions
(argmax of the last layer) are checked against the CUDA engine's fp64 run, which equals
the float64 reference bit for bit (tests/test_cuda_general_gpu.py).
"""
from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from .bench import LAUNCH_LATENCY_S, HonestFloors, _bandwidths, _machine, given_constants, time_engine, time_runs
from .floor import floor_estimate, layer_nonzeros
from .engines import engine_device, fastest_exact_engine, get_engine
from .engines._cupy import release_device_memory
from .errors import OptionError, SpdnnError
from .network import Network
from .verify import explain_predictions

__all__ = ["GENERAL_CELLS", "PEERS", "is_general_cell", "parse_general_cells", "wide_network", "wide_features",
           "mnist_shape_network", "mnist_features", "run_general_bench", "format_general"]

#: Named cells: name -> (N, layers, nonzeros a column), or the mnist shape.
WIDE = {"wide4096": (4096, 12, 32), "wide16384": (16384, 4, 32)}
SWEEP_ZEROS = (50.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9)
SWEEP_LAYERS = 4
GENERAL_CELLS = (*WIDE, "sweep4096", "mnistshape", "general")
PEERS = ("torch-fp32", "torch-tf32", "torch-csr")


def is_general_cell(item: str) -> bool:
    item = item.strip()
    return item.lower() in GENERAL_CELLS or item.lower().startswith("zeros4096:") or item.startswith("model:")


def parse_general_cells(items: Sequence[str]) -> list[str]:
    """Expand ``general`` and ``sweep4096`` into cell names; check each."""
    out = []
    for chunk in items:
        for item in str(chunk).split(","):
            item = item.strip()
            if item.startswith("model:"):
                if not item[6:]:
                    raise OptionError(f"--cells: {item!r}: expected model:PATH (a .spdnn or .onnx model file)")
                out.append(item)
                continue
            item = item.lower()
            if not item:
                continue
            if item == "general":
                out += [*WIDE, "mnistshape", *(f"zeros4096:{z:g}" for z in SWEEP_ZEROS)]
            elif item == "sweep4096":
                out += [f"zeros4096:{z:g}" for z in SWEEP_ZEROS]
            elif item in WIDE or item == "mnistshape":
                out.append(item)
            elif item.startswith("zeros4096:"):
                try:
                    z = float(item.split(":", 1)[1])
                except ValueError:
                    z = float("nan")
                if not 0 <= z < 100:
                    raise OptionError(f"--cells: {item!r}: expected zeros4096:P with 0 <= P < 100 (percent zeros)")
                out.append(item)
            else:
                raise OptionError(f"--cells: {item!r} is not a general cell ({', '.join(GENERAL_CELLS)}, zeros4096:P)")
    return list(dict.fromkeys(out))


def wide_network(n: int, depth: int, per_column: int, *, seed: int = 0, bias_low: float = -0.05) -> Network:
    """``depth`` random N x N layers of ``per_column`` nonzeros a column (distinct random rows),
    values N(0, 2 / per_column), a dense bias U(bias_low, 0), ReLU uncapped."""
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(depth):
        rows = np.argsort(rng.random((n, n), dtype=np.float32), axis=1)[:, :per_column] if per_column > n // 8 \
            else np.stack([rng.choice(n, per_column, replace=False) for _ in range(n)])
        rows = np.sort(rows, axis=1).ravel()
        values = rng.normal(0.0, np.sqrt(2.0 / per_column), rows.size)
        w = sp.csc_matrix((values, rows, np.arange(0, n * per_column + 1, per_column)), shape=(n, n)).tocsr()
        layers.append(w)
    bias = rng.uniform(bias_low, 0.0, (depth, n))
    return Network.from_layers(layers, bias, bias_rule="dense", ymax=None)


def wide_features(samples: int, n: int, *, density: float = 0.2, seed: int = 0) -> sp.csr_matrix:
    """``samples`` rows of N inputs, each nonzero with probability ``density``, values U(0, 1)
    (made 4,096 rows at a time)."""
    rng = np.random.default_rng(seed + 1)
    parts = []
    for first in range(0, samples, 4096):
        rows = min(4096, samples - first)
        values = rng.random((rows, n), dtype=np.float32)
        keep = (rng.random((rows, n), dtype=np.float32) < density) & (values != 0)
        r, c = np.nonzero(keep)                     # row-major, as CSR stores them
        indptr = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=rows), out=indptr[1:])
        parts.append(sp.csr_matrix((values[r, c].astype(np.float64), c.astype(np.int32), indptr), shape=(rows, n)))
    return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, n))


def mnist_shape_network(*, seed: int = 0, hidden: int = 1024, depth: int = 24, zeros: float = 0.95) -> Network:
    """784 -> ``hidden`` dense, ``depth`` sparse hidden x hidden at ``zeros``, hidden -> 10 dense
    identity; dense bias; ReLU capped at 1 (the trained network's shape, random weights)."""
    rng = np.random.default_rng(seed)
    per_column = max(1, int(round((1 - zeros) * hidden)))
    first = rng.normal(0.0, np.sqrt(2.0 / 784), (784, hidden))
    sparse = wide_network(hidden, depth, per_column, seed=seed + 7).layers
    last = rng.normal(0.0, np.sqrt(1.0 / hidden), (hidden, 10))
    layers = [first, *sparse, last]
    bias = [rng.uniform(-0.05, 0.05, w.shape[1]) for w in layers]
    return Network.from_layers(layers, bias, bias_rule="dense", activation=["relu"] * (depth + 1) + ["identity"],
                               ymax=1.0)


def mnist_features(samples: int) -> sp.csr_matrix:
    """The first ``samples`` MNIST training images as rows of 784 values, pixel / 255."""
    from .generate.mnist import load_mnist

    images = load_mnist()[:samples].reshape(-1, 784).astype(np.float64) / 255.0
    return sp.csr_matrix(images)


def general_cell_data(name: str, samples: int, seed: int) -> tuple[Network, sp.csr_matrix, str]:
    """The network, features and a one-line description of general cell ``name`` (:data:`GENERAL_CELLS`,
    ``zeros4096:P``, ``model:PATH``), ``samples`` rows made from ``seed``."""
    if name in WIDE:
        n, depth, per = WIDE[name]
        return (wide_network(n, depth, per, seed=seed), wide_features(samples, n, seed=seed),
                f"N={n}, {depth} layers, {per} nonzeros a column ({100 * (1 - per / n):.2f}% zeros), dense bias")
    if name.startswith("zeros4096:"):
        zeros = float(name.split(":", 1)[1])
        per = max(1, int(round((1 - zeros / 100) * 4096)))
        return (wide_network(4096, SWEEP_LAYERS, per, seed=seed), wide_features(samples, 4096, seed=seed),
                f"N=4096, {SWEEP_LAYERS} layers, {zeros:g}% zeros ({per} a column), dense bias")
    if name == "mnistshape":
        return (mnist_shape_network(seed=seed), mnist_features(samples),
                "784->1024 dense, 24 x 1024^2 at 95% zeros, 1024->10 dense; cap 1; MNIST images")
    if name.startswith("model:"):
        from .models import read_model

        network = read_model(name[6:])
        features = mnist_features(samples) if network.inputs == 784 else wide_features(samples, network.inputs,
                                                                                        seed=seed)
        return network, features, f"{name[6:]}: {network.describe()}, {network.edges:,} edges"
    raise OptionError(f"--cells: unknown general cell {name!r}")


def _weight_bytes(network: Network, itemsize: int) -> int:
    total = 0
    for k in range(network.depth):
        w = network.layers[k]
        total += w.size * itemsize if isinstance(w, np.ndarray) else w.nnz * (2 + itemsize)
    return total


def _torch_on_gpu():
    """(torch, '') where PyTorch runs on a CUDA device here, else (None, why not)."""
    try:
        import torch
    except ImportError as exc:
        return None, f"needs PyTorch: pip install torch ({exc})"
    if not torch.cuda.is_available():
        return None, "needs a CUDA device for PyTorch"
    return torch, ""


class TorchPeer:
    """A PyTorch forward pass of a network: ``relu(x @ W + b)`` layer by layer (``kind``
    'torch-fp32' or 'torch-tf32', dense weights) or ``torch.sparse.mm`` with W^T in CSR and
    the activations transposed ('torch-csr'); the same bias rule, activation and cap; every
    row computed (no pruning)."""

    def __init__(self, kind: str, precision: str):
        torch, why = _torch_on_gpu()
        if torch is None:
            raise SpdnnError(f"peer {kind!r} {why}")
        self.torch, self.kind = torch, kind
        self.dtype = torch.float32 if precision == "fp32" else torch.float64

    def prepare(self, network: Network) -> None:
        torch, dev = self.torch, "cuda"
        self.network = network
        self.w, self.b = [], []
        for k in range(network.depth):
            w = network.layers[k]
            if self.kind == "torch-csr" and not isinstance(w, np.ndarray):
                wt = sp.csr_matrix(w.T)
                self.w.append(torch.sparse_csr_tensor(torch.from_numpy(wt.indptr.astype(np.int64)),
                                                      torch.from_numpy(wt.indices.astype(np.int64)),
                                                      torch.from_numpy(wt.data), size=wt.shape,
                                                      dtype=self.dtype, device=dev))
            else:
                dense = w if isinstance(w, np.ndarray) else w.toarray()
                mat = dense.T if self.kind == "torch-csr" else dense
                self.w.append(torch.as_tensor(np.ascontiguousarray(mat), dtype=self.dtype, device=dev))
            self.b.append(torch.as_tensor(np.asarray(network.bias[k]), dtype=self.dtype, device=dev))
        torch.cuda.synchronize()

    def load(self, features: sp.csr_matrix) -> None:
        x = self.torch.as_tensor(features.toarray(), dtype=self.dtype, device="cuda")
        self.x = x.t().contiguous() if self.kind == "torch-csr" else x
        self.torch.cuda.synchronize()

    def forward(self):
        """Final activations (samples x n_L), synchronized."""
        torch, net = self.torch, self.network
        torch.backends.cuda.matmul.allow_tf32 = self.kind == "torch-tf32"
        y = self.x
        for k in range(net.depth):
            rule = net.rule(k)
            if self.kind == "torch-csr":
                z = torch.sparse.mm(self.w[k], y) if self.w[k].layout == torch.sparse_csr else self.w[k] @ y
                b = self.b[k][:, None]
            else:
                z, b = y @ self.w[k], self.b[k]
            z = z + b if rule.bias_rule == "dense" else torch.where(z != 0, z + b, torch.zeros_like(z))
            if rule.activation == "relu":
                z = z.clamp(min=0, max=None if rule.cap == float("inf") else rule.cap)
            y = z
        out = y.t() if self.kind == "torch-csr" else y
        torch.cuda.synchronize()
        return out

    def predictions(self) -> np.ndarray:
        return self.torch.argmax(self.forward(), dim=1).cpu().numpy().astype(np.int64)


def run_general_bench(cells: Sequence[str], engines: Sequence[str] = ("cuda", "cusparse"),
                      peers: Sequence[str] = PEERS, *, repeats: int = 3, samples: int = 60000,
                      precision: str = "fp32", seed: int = 0, bandwidth_gbs: float | str = "auto",
                      progress: bool | None = None, log: Callable[[str], None] | None = None,
                      truth_engine: str = "auto", checkpoint: Callable[[dict], None] | None = None,
                      floor_constants_from=None) -> dict[str, Any]:
    """Time ``engines`` (the CUDA engine with merging off) and ``peers`` on general cells.

    Returns a JSON-ready report: ``cells`` (name, description, widths, edges, samples,
    ``engines``: per label median_seconds, times, teraedges_per_second, floor, floor_ratio,
    floor_check (the honest floor: filled as the cell is timed where ``floor_constants_from`` is for
    its device, else after the last cell), floor_v1, floor_ratio_v1,
    prediction_mismatches (against the CUDA engine's fp64 run), verdict (of
    :func:`spdnn.verify.explain_predictions` on the mismatches), passed, rows_computed, error
    (a peer that could not run, e.g. out of memory)), ``passed`` (every spdnn engine's
    predictions equal fp64's, or differ only where the verification finds near ties decided
    by rounding), ``machine``.
    ``truth_engine`` computes the fp64 predictions (any exact engine: they are the reference's;
    'auto': cuda, else cpu, else reference). The peers need PyTorch on a GPU: where there
    is none they are skipped, said in the log and in ``peers_skipped``;
    ``checkpoint(report)`` is called after every cell (the CLI writes ``--json-out`` there)
    and once more with the floors; ``floor_constants_from``: as :func:`spdnn.bench.run_bench`'s.
    """
    log = log or (lambda line: None)
    cell_names = parse_general_cells(cells)
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise OptionError(f"--repeats {repeats}: expected an integer >= 1")
    truth_engine = fastest_exact_engine() if truth_engine == "auto" else truth_engine
    for name in (*engines, truth_engine):           # fail before any long step when one cannot run here
        get_engine(name, precision="fp64" if name == truth_engine else precision,
                   **({"merge": False} if name == "cuda" else {}))
    floor_constants_from = given_constants(floor_constants_from)      # a bad file fails now, not after the cells
    skipped = None
    if peers:
        torch, why = _torch_on_gpu()
        if torch is None:
            skipped, peers = f"PyTorch peers {', '.join(peers)} skipped: {why}", ()
            log(skipped)
    devices = {engine_device(e) for e in engines} | ({"gpu"} if peers else set())
    bandwidths = _bandwidths(devices, bandwidth_gbs)
    itemsize = 4 if precision == "fp32" else 8
    report: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": _machine(bandwidths),
        "precision": precision, "repeats": repeats, "seed": seed, "samples": samples, "peers_skipped": skipped,
        "cells": []}
    honest = HonestFloors(floor_constants_from, bandwidth_gbs=bandwidth_gbs, log=log)
    for name in cell_names:
        t0 = time.perf_counter()
        network, features, about = general_cell_data(name, samples, seed)
        log(f"{name}: {about} ({time.perf_counter() - t0:.1f} s to make)")
        cell: dict[str, Any] = {"name": name, "description": about, "widths": list(network.widths),
                                "edges": network.edges, "samples": int(features.shape[0]), "engines": {}}
        exact = get_engine(truth_engine, precision="fp64").run(network, features, outputs="predictions")
        truth = exact.predictions
        cell["fp64_seconds"] = exact.inference_seconds
        alive_inputs = int(np.count_nonzero(np.diff(features.indptr)))
        nonzeros = layer_nonzeros(network)
        weight_bytes = _weight_bytes(network, itemsize)

        def floor_of(rows, device):
            depth = network.depth
            surv = [features.shape[0]] * depth if rows is None else list(rows[1:]) + [rows[-1]]
            return floor_estimate(surv, alive_inputs=features.shape[0], neurons=network.inputs,
                                  bytes_per_value=itemsize, edges=network.edges,
                                  bandwidth_gbs=bandwidths[device]["gbs"], launch_latency_s=LAUNCH_LATENCY_S[device],
                                  device=device, rows_computed=rows,
                                  widths=network.widths, weight_bytes=weight_bytes)

        for label in [*engines, *peers]:
            entry: dict[str, Any] = {}
            try:
                if label in PEERS:
                    peer = TorchPeer(label, precision)
                    peer.prepare(network)
                    peer.load(features)
                    timing = time_runs(peer.forward, repeats, progress=progress, desc=f"{name} {label}")
                    predicted, rows = peer.predictions(), None
                    survivors, extra = [features.shape[0]] * network.depth, {}       # no pruning
                    del peer
                else:
                    options = {"merge": False} if label == "cuda" else {}
                    eng = get_engine(label, precision=precision, **options)
                    timing = time_engine(eng, network, features, repeats, progress=progress, desc=f"{name} {label}")
                    rows = timing.results[-1].extra.get("rows_computed")
                    survivors, extra = timing.results[-1].survivors, dict(timing.results[-1].extra)
                    predicted = eng.run(network, features, outputs="predictions").predictions
                    del eng
                median = timing.median_seconds
                device = "gpu" if label in PEERS else engine_device(label)
                floor = floor_of(rows, device)
                mismatches = int(np.count_nonzero(predicted != truth))
                verdict = "match"
                if mismatches and label not in PEERS:
                    verdict = explain_predictions(network, features, predicted, truth, found_precision=precision,
                                                  exact_limit=1, trace_limit=50).verdict
                entry = {"times": timing.seconds, "median_seconds": median,
                         "teraedges_per_second": features.shape[0] * network.edges / median / 1e12,
                         "floor_v1": floor.to_dict(), "floor_ratio_v1": median / floor.seconds,
                         "rows_computed": rows, "prediction_mismatches": mismatches, "verdict": verdict,
                         "passed": label in PEERS or verdict in ("match", "rounding")}
                honest.add(f"{name}: {label}", entry, device, network.widths, survivors=survivors,
                           alive_inputs=alive_inputs, extra={**extra, "weight_bytes": weight_bytes},
                           bytes_per_value=itemsize, precision=precision, nonzeros=nonzeros)
                log(f"{name}: {label} median {median:.4g} s, x{entry['floor_ratio_v1']:.2f} floor v1, "
                    f"{mismatches} predictions differ from fp64")
            except Exception as exc:           # a peer out of memory must not end the bench
                if label not in PEERS:
                    raise
                entry = {"error": f"{type(exc).__name__}: {exc}"[:300], "passed": True}
                log(f"{name}: {label} failed: {entry['error']}")
            finally:
                _free_device_memory()
            cell["engines"][label] = entry
        report["cells"].append(cell)
        report["passed"] = all(e.get("passed", False) for c in report["cells"] for e in c["engines"].values())
        if checkpoint is not None:
            checkpoint(report)
    constants = honest.resolve()
    report["floor_constants"] = {device: c.to_dict() for device, c in constants.items()}
    report["passed"] = all(e.get("passed", False) for c in report["cells"] for e in c["engines"].values())
    if checkpoint is not None:
        checkpoint(report)
    return report


def _free_device_memory() -> None:
    """Give the device memory of the engine or peer just timed back (CuPy's pool:
    :func:`spdnn.engines._cupy.release_device_memory`; PyTorch's cache where it is loaded)."""
    import sys

    release_device_memory()
    if "torch" in sys.modules:
        sys.modules["torch"].cuda.empty_cache()


def format_general(report: dict[str, Any]) -> str:
    """The report as a table: per cell and engine the median, TeraEdges/s, the ratio to the
    floor, the speed-up of the CUDA engine over each, and the predictions differing from fp64."""
    machine = report["machine"]
    lines = [f"general networks, {report['precision']}, {machine.get('gpu') or machine.get('processor') or '?'}, "
             f"{report['samples']} samples, median of {report['repeats']}"]
    lines.append(f"{'cell':<16} {'engine':<11} {'median s':>10} {'TE/s':>8} {'xfloor':>7} {'cuda x':>7} {'pred!=':>7}")
    for cell in report["cells"]:
        cuda = cell["engines"].get("cuda", {}).get("median_seconds")
        for label, e in cell["engines"].items():
            if "error" in e:
                lines.append(f"{cell['name']:<16} {label:<11} {'failed: ' + e['error'][:60]}")
                continue
            speed = f"{e['median_seconds'] / cuda:7.2f}" if cuda else f"{'':>7}"
            ratio = f"{e['floor_ratio']:7.2f}" if e.get("floor_ratio") is not None else f"{'-':>7}"
            lines.append(f"{cell['name']:<16} {label:<11} {e['median_seconds']:10.4g} {e['teraedges_per_second']:8.2f} "
                         f"{ratio} {speed} {e['prediction_mismatches']:7d}")
        peers = [e["median_seconds"] for k, e in cell["engines"].items() if k != "cuda" and "median_seconds" in e]
        if cuda and peers:
            lines.append(f"{'':<16} cuda is {min(peers) / cuda:.2f}x the best other")
    # The sweep's answer: at which densities a dense product (fp32 or TF32) beats the cuda
    # engine, among the swept cells where both ran.
    dense = ("torch-fp32", "torch-tf32")
    compared = [c for c in report["cells"] if c["name"].startswith("zeros4096:")
                and "median_seconds" in c["engines"].get("cuda", {})
                and any("median_seconds" in c["engines"].get(k, {}) for k in dense)]
    if compared:
        won = [c["name"] for c in compared if min(c["engines"][k]["median_seconds"] for k in dense
                                                  if "median_seconds" in c["engines"].get(k, {}))
               < c["engines"]["cuda"]["median_seconds"]]
        lines.append("dense products beat the cuda engine at: " + (", ".join(won) or "none of the densities swept"))
    elif any(c["name"].startswith("zeros4096:") for c in report["cells"]):
        lines.append("dense products against the cuda engine: not compared (the sweep needs both)")
    if report.get("peers_skipped"):
        lines.append(report["peers_skipped"])
    lines.append("PASS" if report["passed"] else "FAIL: predictions of an spdnn engine differ from fp64")
    return "\n".join(lines)
