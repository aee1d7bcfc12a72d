"""What ``spdnn predict`` does: read a model and inputs, run one engine, score, write outputs.

The command itself (options, the error convention) lives in :mod:`spdnn.cli`; this module
holds the steps so they can be used and tested without the command line.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from .errors import FormatError, OptionError

__all__ = ["PredictInputs", "load_predict_inputs", "run_predict", "format_predict", "write_array", "OUTPUT_KINDS"]

#: What ``--outputs FILE`` holds: the argmax of each sample (int64), or its final row.
OUTPUT_KINDS = ("predictions", "activations")


@dataclass
class PredictInputs:
    """The model, the selected samples and their labels.

    Attributes
    ----------
    network : Network
    features : scipy.sparse.csr_matrix (samples, n_0)
    labels : numpy.ndarray of int64 (samples,) or None
    model, inputs, labels_path : str
        The files read (labels_path None without labels).
    first : int
        0-based row of the inputs file where the selection starts.
    read_seconds : float
    """

    network: object
    features: object
    labels: np.ndarray | None
    model: str
    inputs: str
    labels_path: str | None
    first: int
    read_seconds: float


def load_predict_inputs(model, inputs, labels=None, *, samples: int | None = None, skip: int = 0,
                        trust_pickle: bool = False, progress: bool | None = None) -> PredictInputs:
    """Read the model, the inputs (rows ``skip`` .. ``skip + samples``) and their labels.

    The labels file must hold one label for every row of the inputs file (a mismatched
    pair of files is refused, naming both counts).
    """
    import time

    from .formats.inputs import read_inputs, read_labels
    from .models import read_model

    t0 = time.perf_counter()
    network = read_model(model, trust_pickle=trust_pickle)
    features = read_inputs(inputs, network.inputs, progress=progress)
    total = int(features.shape[0])
    if skip >= total and total:
        raise OptionError(f"skip={skip}: the inputs {inputs} hold only {total} samples")
    stop = total if samples is None else min(total, skip + samples)
    y = None
    if labels is not None:
        y = read_labels(labels)
        if y.shape[0] != total:
            raise FormatError(f"{y.shape[0]} labels for the {total} samples of {inputs}", path=labels)
        y = y[skip:stop]
    if skip or stop < total:
        features = features[skip:stop]
    return PredictInputs(network, features, y, str(model), str(inputs), None if labels is None else str(labels),
                         skip, time.perf_counter() - t0)


def run_predict(job: PredictInputs, *, engine: str = "auto", precision: str = "fp32",
                outputs_kind: str = "predictions", progress: bool = False, **options) -> tuple[dict, object]:
    """Run ``job`` on one engine; return (the JSON summary, the InferenceResult).

    Summary keys: ``samples``, ``accuracy`` (None without labels), ``predictions``
    (``{"count": samples, "file": None}``; the command fills in the file), ``inference_seconds``,
    ``teraedges_per_second`` (samples x sum of nonzero weights / inference seconds / 1e12),
    ``engine``, ``precision``, and ``model``, ``inputs``, ``labels``, ``first_sample``,
    ``widths``, ``layers``, ``edges``, ``read_seconds``, ``preprocess_seconds``, ``network``.
    """
    from .engines import get_engine

    if outputs_kind not in OUTPUT_KINDS:
        raise OptionError(f"outputs_kind={outputs_kind!r}: expected one of {list(OUTPUT_KINDS)}")
    net = job.network
    result = get_engine(engine, precision=precision, progress=progress, **options).run(
        net, job.features, outputs="activations" if outputs_kind == "activations" else "predictions")
    acc = None if job.labels is None else float(result.accuracy(job.labels))
    summary = {
        "samples": int(result.samples), "accuracy": acc,
        "predictions": {"count": int(result.samples), "file": None, "kind": outputs_kind},
        "inference_seconds": float(result.inference_seconds),
        "teraedges_per_second": float(result.teraedges_per_second) if result.inference_seconds > 0 else None,
        "engine": result.engine, "precision": result.precision,
        "model": job.model, "inputs": job.inputs, "labels": job.labels_path, "first_sample": job.first,
        "widths": [int(w) for w in net.widths], "layers": int(net.depth), "edges": int(net.edges),
        "network": net.describe(), "read_seconds": float(job.read_seconds),
        "preprocess_seconds": float(result.preprocess_seconds),
    }
    return summary, result


def format_predict(summary: dict) -> str:
    """The text report of ``spdnn predict``."""
    first = summary["first_sample"]
    rows = f" (rows {first}..{first + summary['samples'] - 1})" if first else ""
    lines = [
        f"model:        {summary['model']} ({summary['network']}, {summary['edges']:,} edges)",
        f"inputs:       {summary['inputs']}{rows}",
        f"engine:       {summary['engine']} ({summary['precision']})",
        f"samples:      {summary['samples']:,}",
    ]
    if summary["accuracy"] is not None:
        correct = round(summary["accuracy"] * summary["samples"])
        lines.append(f"accuracy:     {summary['accuracy']:.4f} ({correct:,} of {summary['samples']:,} correct, "
                     f"labels {summary['labels']})")
    tes = summary["teraedges_per_second"]
    lines.append(f"inference:    {summary['inference_seconds']:.4f} s"
                 + ("" if tes is None or not math.isfinite(tes) else f", {tes:.4g} TeraEdges/s"))
    lines.append(f"reading:      {summary['read_seconds']:.3f} s, preprocessing {summary['preprocess_seconds']:.3f} s")
    return "\n".join(lines)


def write_array(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` to ``path`` as ``.npy``, atomically (nothing is left on failure)."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    with atomic_path(path, size=array.nbytes + 128) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    return path
