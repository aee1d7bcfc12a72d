"""spdnn.report: text and JSON output of the CLI, from plain dicts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from spdnn.report import format_comparison, format_ids, format_run, format_seconds, jsonable, to_json


def test_format_ids():
    assert format_ids([]) == "none"
    assert format_ids(range(1, 4)) == "1, 2, 3"
    assert format_ids(range(1, 31), limit=5) == "1, 2, 3, 4, 5, ... (25 more)"
    assert format_ids(np.array([7, 9], dtype=np.int64)) == "7, 9"


def test_jsonable_and_to_json():
    doc = jsonable({"a": np.int64(3), "b": np.array([1.5, np.inf]), "c": (np.float32(2),), "p": Path("/x/y"),
                    "s": {4}, 5: np.bool_(True)})
    assert doc == {"a": 3, "b": [1.5, None], "c": [2.0], "p": "/x/y", "s": [4], "5": True}
    assert json.loads(to_json({"x": np.arange(3), "nan": math.nan})) == {"x": [0, 1, 2], "nan": None}


@pytest.mark.parametrize("seconds, text", [(None, "-"), (math.nan, "-"), (2.5e-7, "0.25 us"), (1.234e-3, "1.23 ms"),
                                           (0.5, "500 ms"), (1.5, "1.5 s"), (150.4, "150 s")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_format_comparison():
    assert format_comparison(None, [], [], found_count=3, truth_count=None).endswith("none (no truth categories; 3 found)")
    assert "PASS (3 categories equal the truth)" in format_comparison(True, [], [], found_count=3, truth_count=3)
    text = format_comparison(False, [2], [9, 11], found_count=4, truth_count=3)
    lines = text.splitlines()
    assert "FAIL (4 found, 3 in the truth)" in lines[0]
    assert lines[1].endswith("): 2") and lines[2].endswith("9, 11")


def _summary(**over):
    base = {"source": "generated", "neurons": 64, "layers": 3, "edges": 6144, "samples": 200, "engine": "cpu",
            "precision": "fp32", "ranks": 1, "categories_count": 2, "survivors": [150, 40, 2], "passed": True,
            "missing": [], "extra": [], "truth_count": 2, "read_seconds": 0.5, "preprocess_seconds": 0.01,
            "inference_seconds": 0.002, "teraedges_per_second": 200 * 6144 / 0.002 / 1e12}
    base.update(over)
    return base


def test_format_run_lines():
    text = format_run(_summary())
    lines = text.splitlines()
    assert lines[0] == "data:         generated"
    assert "64 neurons x 3 layers, 6,144 edges; 200 samples" in lines[1]
    assert lines[2] == "engine:       cpu (fp32)"
    assert "2 found (alive after layer 1: 150; after layer 3: 2)" in lines[3]
    assert "PASS" in lines[4]
    assert "inference:    2 ms" in text and "throughput:   0.0006144 TeraEdges/s" in text
    assert "verification" not in text


def test_format_run_mpi_and_explanation():
    text = format_run(_summary(ranks=4, passed=False, missing=[5], extra=[], truth_count=3,
                               explanation_text="line one\nline two"))
    assert "engine:       cpu (fp32), 4 MPI ranks" in text
    assert "FAIL" in text and text.endswith("verification:\n  line one\n  line two")
