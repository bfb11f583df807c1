"""Fixtures of the training tests: a tiny preset and a stand-in slice loader (no DICOM needed)."""

from __future__ import annotations

import pytest

import backend.ml.dataset
from backend.ml.network import Preset
from tests.training.synthetic import fake_load_slices


@pytest.fixture
def tiny_preset() -> Preset:
    """A ~0.1 M-parameter timm test network at 32 pixels."""
    return Preset(
        name="tiny",
        arch="test_efficientnet",
        image_size=32,
        windows=((50.0, 400.0),),
        epochs=1,
        batch_size=8,
        lr=3e-3,
        slices_per_series=2,
        cache_slices_per_series=4,
    )


@pytest.fixture
def fake_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the DICOM slice loader used by the slice cache with the synthetic one."""
    monkeypatch.setattr(backend.ml.dataset, "load_slices", fake_load_slices)
