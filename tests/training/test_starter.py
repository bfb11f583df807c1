"""ensure_starter_model: keeps an existing model, refuses to overwrite a foreign folder."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from backend.ml.network import ModelArtifactError, Preset, build_manifest, create_network, save_model
from backend.ml.starter import STARTER_MAX_SLICES, ensure_phantoms, ensure_starter_model


def test_an_existing_model_is_kept(tmp_path: Path, tiny_preset: Preset) -> None:
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    manifest = build_manifest(tiny_preset, fingerprint="0" * 64, metrics={})
    written = save_model(model_dir, network=create_network(tiny_preset), manifest=manifest)
    assert ensure_starter_model(model_dir) == model_dir
    assert (model_dir / "model.safetensors").stat().st_size > 0
    assert written.weights_sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no phantoms generated


def test_foreign_or_broken_folders_are_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    with pytest.raises(FileExistsError, match="holds no model"):
        ensure_starter_model(tmp_path / "other")
    with pytest.raises(FileExistsError, match=r"no labels\.csv"):
        ensure_phantoms(tmp_path / "other")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{}")
    with pytest.raises(ModelArtifactError, match="format_version"):
        ensure_starter_model(tmp_path / "broken")


def test_starter_phantoms_are_uncompressed_and_capped(tmp_path: Path) -> None:
    """The starter set skips the (lossless) codecs: the pixels are the same and rendering and caching are faster."""
    phantoms = ensure_phantoms(tmp_path / "ph", n_per_class=2, seed=3)
    with (phantoms / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8
    assert {row["transfer_syntax"] for row in rows} == {"explicit_little"}
    assert max(int(row["n_slices"]) for row in rows) <= STARTER_MAX_SLICES
    assert ensure_phantoms(phantoms, n_per_class=2, seed=3) == phantoms  # reused, not regenerated
