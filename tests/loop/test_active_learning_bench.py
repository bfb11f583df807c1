"""Smoke test of the active-learning simulation benchmark at a tiny size (the real run is in bench/)."""

from __future__ import annotations

import csv
import math

import pytest

from bench import active_learning


@pytest.mark.slow
def test_simulation_writes_both_strategies_per_round(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "--out", str(out), "--data", str(tmp_path / "phantoms"), "--n-per-class", "4", "--matrix", "64",
        "--max-slices", "6", "--initial", "4", "--budget", "2", "--rounds", "1", "--epochs", "1",
        "--image-size", "32", "--threads", "1",
    ]  # fmt: skip
    assert active_learning.main(argv) == 0
    with (out / "active_learning.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["strategy"], r["round"], r["n_labels"]) for r in rows] == [
        ("ctphase", "0", "4"),
        ("ctphase", "1", "6"),
        ("random", "0", "4"),
        ("random", "1", "6"),
    ]
    assert rows[0]["test_macro_f1"] == rows[2]["test_macro_f1"], "both strategies start from the same first model"
    for row in rows:
        assert 0.0 <= float(row["test_macro_f1"]) <= 1.0
        share = float(row["errors_in_top20"])
        assert math.isnan(share) or 0.0 <= share <= 1.0
    assert (out / "active_learning.png").stat().st_size > 0
    assert "strategy  round  labels" in capsys.readouterr().out
