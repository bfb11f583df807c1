"""End to end on real DICOM phantoms: ``ctphase train`` -> a loadable model -> probabilities for real slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backend.cli import main
from backend.ml.dicom import load_slices
from backend.ml.network import MANIFEST_FILE, load_model
from backend.ml.train import load_labeled_series

pytestmark = pytest.mark.slow


def test_cli_trains_a_loadable_model_on_phantoms(phantom_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    code = main(
        [
            "train",
            str(phantom_dataset),
            "--labels",
            str(phantom_dataset / "labels.csv"),
            "--out",
            str(out),
            "--preset",
            "cpu",
            "--epochs",
            "1",
            "--slices-per-series",
            "4",
            "--val-fraction",
            "0.25",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--head-data",
            str(phantom_dataset),  # the training and validation series themselves: all left out of the head's set
            "--memory-format",
            "channels_last",
            "--no-progress",
        ]
    )
    assert code == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["preset"] == "cpu"
    assert manifest["metrics"]["memory_format"] == "channels_last"  # pinned: no probe
    assert manifest["metrics"]["probe_steps_per_second"] is None
    assert manifest["metrics"]["n_val_series"] >= 1
    assert manifest["metrics"]["series_head"]["n_head_only_series"] == 0
    model = load_model(out)
    examples = load_labeled_series(phantom_dataset, phantom_dataset / "labels.csv")
    series = examples[0].series
    assert model.crop_body  # the cpu preset crops slices to the body; the manifest says so
    images = load_slices(
        series,
        [0, series.n_slices // 2, series.n_slices - 1],
        windows=model.windows,
        image_size=model.image_size,
        crop_body=model.crop_body,
    )
    probs = model.predict_proba(images)
    assert probs.shape == (3, 4)
    assert np.all((probs >= 0) & (probs <= 1))
    assert main(["train", str(phantom_dataset), "--out", str(out), "--no-progress"]) == 2  # never overwrites


def test_head_data_options_are_checked(
    phantom_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", str(phantom_dataset), "--out", str(tmp_path / "m"), "--no-progress"]
    assert main([*base, "--head-labels", str(phantom_dataset / "labels.csv")]) == 2
    assert "--head-labels needs --head-data" in capsys.readouterr().err
    assert main([*base, "--head-data", str(tmp_path / "missing")]) == 2
    assert "--head-data" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_labels_that_match_no_series_are_refused(phantom_dataset: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("series_instance_uid,phase\n1.2.3.4,venous\n")
    with pytest.raises(ValueError, match="none of the 1 series"):
        load_labeled_series(phantom_dataset, labels)
    labels.write_text("series_instance_uid,phase\n1.2.3.4,portal\n")
    with pytest.raises(ValueError, match="unknown phase 'portal'"):
        load_labeled_series(phantom_dataset, labels)
