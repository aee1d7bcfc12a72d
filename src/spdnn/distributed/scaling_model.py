"""A model of how an MPI run scales with the number of ranks P, fitted to measurements.

Per cell (docs/scaling.md gives the derivation and the measured fits)::

    T(P) = a * W(P) + c * L + o1 + alpha * log2(P)

``a`` seconds per row x layer and ``c`` seconds per layer; ``o1`` the 1-rank time outside
``engine.infer``; ``alpha`` the extra overhead measured at P = 2; ``W(P)`` the rows x
layers of the busiest rank: ``Wd / P + k * L``, with ``Wd`` the work of the samples that
die and ``k`` the final survivors of the busiest rank under a static layout (``block`` or
``shuffled``, exact from the categories), or ``ceil(S / P)`` under perfect rebalancing
(``balanced``; S the final survivors).

:func:`fit_model` fits ``a`` and ``c`` to the segments of one segmented 1-rank run
(:func:`spdnn.distributed.run_distributed` with balancing on records each segment's busy
seconds and rows x layers); :func:`fit_static` fits ``T = a * W(P) + C`` to whole static
runs at several P instead. Runs are the dicts of
:meth:`spdnn.engines.base.InferenceResult.to_dict` as ``run_distributed`` fills them.
``benchmarks/mpi_bench.py`` measures the runs and prints the fits.
"""
from __future__ import annotations

import math

import numpy as np

from .balance import owners

__all__ = ["MODES", "LAYOUT_KINDS", "PREDICT_RANKS", "busiest_survivors", "fit_model", "fit_static",
           "prediction_table", "format_model", "format_static", "format_predictions"]

#: The measured balancing modes: name -> (balance option, layout). 'block' is the seed's
#: static contiguous split; 'off' the static shuffled split (spdnn's default layout);
#: 'on' the cost-aware rebalancing policy; 'force' rebalancing at any imbalance.
MODES = {"block": ("off", "block"), "off": ("off", "shuffled"), "on": ("on", "shuffled"),
         "force": ("force", "shuffled")}
#: Layouts the model predicts: the two static splits and perfect rebalancing.
LAYOUT_KINDS = ("block", "shuffled", "balanced")
#: Rank counts predicted by default.
PREDICT_RANKS = (1, 2, 4, 8, 16, 32, 64)


def busiest_survivors(samples: int, P: int, layout: str, cats: np.ndarray) -> int:
    """Final survivors of the busiest of P ranks under a static split (``layout`` of
    :func:`~spdnn.distributed.owners`); ``cats`` are the 1-based ids of the survivors."""
    if not cats.size:
        return 0
    return int(np.bincount(owners(samples, P, layout=layout)[cats - 1], minlength=P).max())


def fit_model(one: dict, two: dict | None, *, layers: int, samples: int, predict=PREDICT_RANKS,
              unsegmented: dict | None = None, measured: dict | None = None) -> dict:
    """Fit the scaling model (module docstring) to measured runs and predict P ranks.

    Parameters
    ----------
    one : dict
        The 1-rank ``on`` run (``InferenceResult.to_dict()``; its ``extra["segments"]``
        hold per-segment busy seconds and rows x layers).
    two : dict or None
        {mode: run dict} of the 2-rank runs: a static one (``off``, else ``block``)
        gives the overhead ``alpha``; every one is checked against the prediction.
    layers, samples : int
    unsegmented : dict, optional
        The 1-rank ``off`` run (all layers in one segment). Segmenting has a cost of its
        own (on an H100, one graph per segment and a host synchronization at each
        boundary: +4% to +24% at 1 rank), so the segment profile fixes only the ratio of
        ``a`` to ``c``; both are scaled so that the model reproduces this run's busy time,
        and ``t1``, ``o1`` come from it.
    measured : dict, optional
        {P: {mode: run dict}} of runs at any P to check the predictions against
        (``checks``: one entry per run).

    Returns
    -------
    dict with the parameters (``a``, ``c``, ``o1``, ``alpha``, ``Wd``, ``S``), the
    check at P = 2 (predicted against measured), ``checks`` at every measured P, and
    ``predictions``: for each P, seconds, speed-up and efficiency of the static splits
    (``block``, ``shuffled``) and of perfect rebalancing (``balanced``).
    """
    segs = one["extra"]["segments"]
    busy = np.array([s["busy_seconds"][0] for s in segs], dtype=np.float64)
    rows = np.array([s["row_layers"][0] for s in segs], dtype=np.float64)
    nlay = np.array([s["stop"] - s["start"] for s in segs], dtype=np.float64)
    # Least squares under the constraint that the whole run is reproduced exactly
    # (a * sum(rows) + c * L = sum(busy)): substitute c, fit a alone.
    a = c = None
    total_busy, total_rows, total_layers = float(busy.sum()), float(rows.sum()), float(nlay.sum())
    if len(segs) >= 2 and total_layers > 0:
        x = rows - total_rows * nlay / total_layers
        y = busy - total_busy * nlay / total_layers
        if float(x @ x) > 0:
            a_fit = float(x @ y / (x @ x))
            c_fit = (total_busy - a_fit * total_rows) / total_layers
            if a_fit >= 0 and c_fit >= 0:
                a, c = a_fit, c_fit
    if a is None:   # fewer than two segments, or a negative coefficient: one term only
        a, c = (total_busy / total_rows, 0.0) if total_rows > 0 else (0.0, total_busy / max(total_layers, 1.0))
    t1 = float(one["inference_seconds"])
    o1 = max(t1 - float(busy.sum()), 0.0)
    calibrated, scale = False, 1.0      # scale: segment busy times -> the unsegmented run's
    if unsegmented is not None and total_busy > 0:
        busy_one = float(max(unsegmented["extra"]["rank_busy_seconds"]))
        scale = busy_one / total_busy
        a, c = a * scale, c * scale
        t1 = float(unsegmented["inference_seconds"])
        o1 = max(t1 - busy_one, 0.0)
        calibrated = True
    total_work = float(rows.sum())
    cats = np.asarray(one["categories"], dtype=np.int64)
    S = int(len(cats))
    Wd = max(total_work - S * layers, 0.0)

    def busiest_block(P: int, layout: str) -> int:
        return busiest_survivors(samples, P, layout, cats)

    def predict_seconds(P: int, alpha: float, kind: str) -> float:
        k = math.ceil(S / P) if kind == "balanced" else busiest_block(P, kind)
        return a * (Wd / P + k * layers) + c * layers + o1 + alpha * math.log2(P)

    alpha, check = 0.0, {}
    static = [m for m in ("off", "block") if two and m in two and two[m]["extra"]["rebalances"] == 0]
    if two:
        base = two[static[0]] if static else next(iter(two.values()))
        t2 = float(base["inference_seconds"])
        busy2 = max(base["extra"]["rank_busy_seconds"])
        alpha = max((t2 - busy2) - o1, 0.0)
        for mode, run in two.items():
            kind = "balanced" if run["extra"]["rebalances"] > 0 else MODES[mode][1]
            predicted = predict_seconds(2, alpha, kind)
            check[mode] = {"measured": float(run["inference_seconds"]), "predicted": predicted,
                           "error": predicted / float(run["inference_seconds"]) - 1.0}
    checks = []
    for P, runs in sorted((measured or {}).items()):
        for mode, run in runs.items():
            if P < 2 or run["extra"]["rebalances"] > 0 or mode not in ("off", "block"):
                continue            # the model predicts static splits and perfect balance only
            predicted = predict_seconds(P, alpha, MODES[mode][1])
            checks.append({"ranks": P, "mode": mode, "measured": float(run["inference_seconds"]),
                           "predicted": predicted, "error": predicted / float(run["inference_seconds"]) - 1.0})
    predictions = prediction_table(predict, t1, lambda P, kind: predict_seconds(P, alpha, kind))
    return {"a_seconds_per_row_layer": a, "c_seconds_per_layer": c, "o1_seconds": o1, "alpha_seconds": alpha,
            "Wd_row_layers": Wd, "S_final_survivors": S, "t1_seconds": t1, "segments_fitted": len(segs),
            "fit_residual_seconds": (float(np.abs(busy * scale - (a * rows + c * nlay)).max())
                                     if len(segs) else 0.0),
            "calibrated_on_unsegmented_run": calibrated,
            "check_P2": check, "checks": checks, "predictions": predictions}


def fit_static(one: dict, measured: dict, *, layers: int, samples: int, fit_ranks,
               predict=PREDICT_RANKS) -> dict | None:
    """The same model fitted on whole static runs at several P instead of one run's segments.

    ``T = a * W(P) + C`` by least squares over the static runs (``off``: shuffled, ``block``)
    with P in ``fit_ranks``, ``W(P)`` exact from the categories (as in :func:`fit_model`);
    ``C = c * L + o1`` (alpha is folded in). At one rank every segment of a run has
    thousands of rows, so the segment fit cannot tell a per-layer cost ``c`` from a
    per-row cost at a few hundred rows; runs at P = 2 and 4 can.

    Parameters
    ----------
    one : dict
        The 1-rank ``on`` run (its segments give the total work and the categories).
    measured : dict
        {P: {mode: run dict}}.
    fit_ranks : iterable of int
        Rank counts whose static runs are fitted; the others are only checked.

    Returns
    -------
    dict (``a_seconds_per_row_layer``, ``C_seconds``, ``fitted``, ``checks``,
    ``predictions``) or None with fewer than two distinct work values.
    """
    cats = np.asarray(one["categories"], dtype=np.int64)
    S = int(len(cats))
    total_work = float(sum(sg["row_layers"][0] for sg in one["extra"]["segments"]))
    Wd = max(total_work - S * layers, 0.0)

    def work(P: int, kind: str) -> float:
        k = math.ceil(S / P) if kind == "balanced" else busiest_survivors(samples, P, kind, cats)
        return Wd / P + k * layers

    points = []
    for P, runs in sorted(measured.items()):
        for mode, run in runs.items():
            if mode in ("off", "block") and run["extra"]["rebalances"] == 0:
                points.append((P, mode, work(P, MODES[mode][1]), float(run["inference_seconds"])))
    fit = [(w, t) for P, _, w, t in points if P in set(fit_ranks)]
    if len({w for w, _ in fit}) < 2:
        return None
    w_arr, t_arr = np.array(fit).T
    a, C = np.polyfit(w_arr, t_arr, 1)
    t1 = min(t for P, _, _, t in points if P == 1) if any(P == 1 for P, *_ in points) else a * total_work + C
    checks = [{"ranks": P, "mode": m, "measured": t, "predicted": a * w + C, "error": (a * w + C) / t - 1.0,
               "fitted": P in set(fit_ranks)} for P, m, w, t in points]
    predictions = prediction_table(predict, t1, lambda P, kind: a * work(P, kind) + C)
    return {"a_seconds_per_row_layer": float(a), "C_seconds": float(C), "fit_ranks": sorted(set(fit_ranks)),
            "checks": checks, "predictions": predictions}


def prediction_table(ranks, t1: float, seconds) -> list[dict]:
    """For each P: seconds, speed-up over ``t1`` and efficiency of every layout kind,
    ``seconds(P, kind)`` being the model's time."""
    table = []
    for P in ranks:
        row = {"ranks": P}
        for kind in LAYOUT_KINDS:
            t = seconds(P, kind)
            row[kind] = {"seconds": t, "speedup": t1 / t if t > 0 else float("inf"),
                         "efficiency": t1 / t / P if t > 0 else float("inf")}
        table.append(row)
    return table


def format_predictions(predictions: list[dict]) -> str:
    """The prediction table as aligned text: per P, seconds, speed-up and efficiency per layout kind."""
    lines = [f"  {'P':>4}" + "".join(f" {k + ' s':>11} {'speedup':>7} {'eff':>5}" for k in LAYOUT_KINDS)]
    for p in predictions:
        cols = (f" {p[k]['seconds']:>11.4f} {p[k]['speedup']:>7.2f} {p[k]['efficiency']:>5.2f}" for k in LAYOUT_KINDS)
        lines.append(f"  {p['ranks']:>4}" + "".join(cols))
    return "\n".join(lines)


def format_model(m: dict) -> str:
    """A :func:`fit_model` result as text: parameters, checks against measured runs, predictions."""
    lines = [f"model: T(P) = a*W(P) + c*L + o1 + alpha*log2(P);  a = {m['a_seconds_per_row_layer']:.3e} s/row-layer, "
             f"c = {m['c_seconds_per_layer']:.3e} s/layer, o1 = {m['o1_seconds']:.4f} s, "
             f"alpha = {m['alpha_seconds']:.4f} s, S = {m['S_final_survivors']}, Wd = {m['Wd_row_layers']:.4g} "
             f"row-layers (fit on {m['segments_fitted']} segments, worst residual {m['fit_residual_seconds']:.2e} s)"]
    if m.get("calibrated_on_unsegmented_run"):
        lines.append("  (a, c scaled to reproduce the unsegmented 1-rank run)")
    for mode, c in m["check_P2"].items():
        lines.append(f"  check P=2 {mode:>5}: measured {c['measured']:.4f} s, predicted {c['predicted']:.4f} s "
                     f"({100 * c['error']:+.1f}%)")
    for c in m.get("checks", []):
        if c["ranks"] > 2:
            lines.append(f"  check P={c['ranks']} {c['mode']:>5}: measured {c['measured']:.4f} s, predicted "
                         f"{c['predicted']:.4f} s ({100 * c['error']:+.1f}%)")
    lines.append(format_predictions(m["predictions"]))
    return "\n".join(lines)


def format_static(m: dict | None) -> str:
    """A :func:`fit_static` result as text ('' for None)."""
    if m is None:
        return ""
    lines = [f"static-run fit on P in {m['fit_ranks']}: T(P) = a*W(P) + C;  a = {m['a_seconds_per_row_layer']:.3e} "
             f"s/row-layer, C = {m['C_seconds']:.4f} s"]
    for c in m["checks"]:
        lines.append(f"  P={c['ranks']} {c['mode']:>5}: measured {c['measured']:.4f} s, predicted "
                     f"{c['predicted']:.4f} s ({100 * c['error']:+.1f}%){'' if c['fitted'] else '  <- not fitted'}")
    lines.append(format_predictions(m["predictions"]))
    return "\n".join(lines)
