"""spdnn.distributed.scaling_model: the fits recover known parameters from synthetic runs."""
from __future__ import annotations

import numpy as np
import pytest

from spdnn.distributed import owners
from spdnn.distributed.scaling_model import (LAYOUT_KINDS, busiest_survivors, fit_model, fit_static, format_model,
                                             format_static, prediction_table)


def _fake_run(segments, *, seconds, categories, busy=None, rebalances=0):
    return {"inference_seconds": seconds, "categories": categories,
            "extra": {"segments": segments, "rank_busy_seconds": busy or [], "rebalances": rebalances}}


def test_segment_fit_recovers_parameters():
    a, c, layers, samples = 2e-6, 1e-4, 40, 1000
    spans = [(0, 2, 1800), (2, 4, 900), (4, 8, 700), (8, 16, 800), (16, 40, 2400)]
    segs = [{"start": s, "stop": e, "row_layers": [rl], "busy_seconds": [a * rl + c * (e - s)]} for s, e, rl in spans]
    total = sum(s["busy_seconds"][0] for s in segs)
    cats = list(range(901, 1001))            # all 100 survivors in the last tenth: a skewed static split
    one = _fake_run(segs, seconds=total + 0.001, categories=cats)
    two = {"off": _fake_run([], seconds=total / 2 + 0.0012, categories=cats, busy=[total / 2, total / 2])}
    m = fit_model(one, two, layers=layers, samples=samples, predict=(1, 2, 8, 64))
    assert m["a_seconds_per_row_layer"] == pytest.approx(a, rel=1e-6)
    assert m["c_seconds_per_layer"] == pytest.approx(c, rel=1e-6)
    assert m["o1_seconds"] == pytest.approx(0.001, rel=1e-6)
    assert m["alpha_seconds"] == pytest.approx(0.0002, rel=1e-6)
    assert m["S_final_survivors"] == 100
    p = {row["ranks"]: row for row in m["predictions"]}
    assert p[1]["block"]["seconds"] == pytest.approx(one["inference_seconds"], rel=1e-6)
    # every survivor is in the last block of the contiguous split: dealing chunks or
    # rebalancing must predict faster runs
    assert p[8]["balanced"]["seconds"] <= p[8]["shuffled"]["seconds"] < p[8]["block"]["seconds"]
    assert p[64]["balanced"]["speedup"] > p[8]["balanced"]["speedup"] > 1
    assert 0 < p[64]["block"]["efficiency"] < p[8]["block"]["efficiency"] <= 1


def test_static_fit_recovers_parameters_and_checks_unfitted_runs():
    a, C, layers, samples = 3e-6, 0.02, 40, 1000
    spans = [(0, 2, 1800), (2, 4, 900), (4, 8, 700), (8, 16, 800), (16, 40, 2400)]
    segs = [{"start": s, "stop": e, "row_layers": [rl], "busy_seconds": [0.0]} for s, e, rl in spans]
    cats = list(range(1, 1001, 10))                      # 100 survivors spread over the samples
    one = _fake_run(segs, seconds=0.0, categories=cats)
    np_cats = np.asarray(cats)
    total = sum(rl for *_, rl in spans)
    Wd = total - len(cats) * layers

    def static(P, layout):
        k = busiest_survivors(samples, P, layout, np_cats)
        return _fake_run([], seconds=a * (Wd / P + k * layers) + C, categories=cats)

    measured = {P: {"off": static(P, "shuffled"), "block": static(P, "block")} for P in (1, 2, 4)}
    m = fit_static(one, measured, layers=layers, samples=samples, fit_ranks=[1, 2])
    assert m["a_seconds_per_row_layer"] == pytest.approx(a, rel=1e-6)
    assert m["C_seconds"] == pytest.approx(C, rel=1e-6)
    unfitted = [c for c in m["checks"] if not c["fitted"]]
    assert {c["ranks"] for c in unfitted} == {4} and all(abs(c["error"]) < 1e-9 for c in unfitted)
    assert fit_static(one, {1: measured[1]}, layers=layers, samples=samples, fit_ranks=[1]) is None


def test_busiest_survivors_counts_the_fullest_rank():
    cats = np.array([1, 2, 3, 10])                       # 1-based ids
    assert busiest_survivors(10, 2, "block", cats) == 3  # rows 0-4 and 5-9: three survivors in the first
    assert busiest_survivors(10, 2, "block", np.zeros(0, dtype=np.int64)) == 0
    own = owners(1000, 4, layout="shuffled")
    cats = np.arange(1, 1001, 7)
    assert busiest_survivors(1000, 4, "shuffled", cats) == np.bincount(own[cats - 1], minlength=4).max()


def test_prediction_table_and_text():
    table = prediction_table([1, 2], 2.0, lambda P, kind: 2.0 / P if kind == "balanced" else 1.5)
    assert [row["ranks"] for row in table] == [1, 2]
    assert table[1]["balanced"] == {"seconds": 1.0, "speedup": 2.0, "efficiency": 1.0}
    assert set(table[0]) == {"ranks", *LAYOUT_KINDS}
    assert format_static(None) == ""


def test_fits_print_their_parameters():
    spans = [(0, 2, 1800), (2, 4, 900), (4, 40, 2400)]
    segs = [{"start": s, "stop": e, "row_layers": [rl], "busy_seconds": [1e-6 * rl + 1e-4 * (e - s)]}
            for s, e, rl in spans]
    one = _fake_run(segs, seconds=0.02, categories=list(range(1, 51)))
    m = fit_model(one, None, layers=40, samples=500, predict=(1, 4))
    text = format_model(m)
    assert f"a = {m['a_seconds_per_row_layer']:.3e}" in text and text.count("\n") >= 3
