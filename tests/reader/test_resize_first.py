"""Resize-then-window preprocessing: what it computes, how close it stays to window-then-resize, and that a model is
always served with the order it was trained with (manifest, slice cache, prediction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.ml.dataset import LabeledSeries, build_cache, cache_key
from backend.ml.dicom import AIR_HU, load_slices, read_series, resize, to_network_input, window
from backend.ml.network import (
    PRESETS,
    Preset,
    build_manifest,
    create_network,
    load_model,
    manifest_resizes_first,
    preset_from_manifest,
    save_model,
)
from backend.ml.predict import predict_series
from tests.inference.test_predict import write_ct_series

WINDOWS = ((50.0, 400.0), (120.0, 240.0), (250.0, 300.0))


def _abdomen(size: int = 256, seed: int = 0) -> np.ndarray:
    """float32 [2, size, size] HU: a noisy soft-tissue body, a bright vessel and a bone ring, in air."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    hu = np.full((2, size, size), AIR_HU, dtype=np.float32)
    body = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16
    hu[:, body] = 60.0 + 15.0 * rng.standard_normal((2, int(body.sum())))
    hu[:, (yy - 0.5) ** 2 + (xx - 0.45) ** 2 < 0.002] = 300.0  # contrast-filled vessel
    ring = np.abs(np.hypot(yy - 0.6, xx - 0.5) - 0.05) < 0.01
    hu[:, ring] = 900.0
    return hu


def test_without_crop_it_is_the_window_of_the_resized_hu() -> None:
    hu = _abdomen()
    out = to_network_input(hu, windows=WINDOWS, image_size=64, crop_body=False, resize_first=True)
    np.testing.assert_array_equal(out, window(resize(hu[:, None], 64)[:, 0], WINDOWS))
    assert out.shape == (2, 3, 64, 64)
    assert out.dtype == np.float32


@pytest.mark.parametrize("crop_body", [False, True])
def test_it_stays_close_to_window_then_resize_but_is_not_the_same(crop_body: bool) -> None:
    hu = _abdomen()
    first = to_network_input(hu, windows=WINDOWS, image_size=64, crop_body=crop_body, resize_first=True)
    second = to_network_input(hu, windows=WINDOWS, image_size=64, crop_body=crop_body)
    assert first.shape == second.shape
    assert 0.0 <= first.min() <= first.max() <= 1.0
    difference = np.abs(first - second)
    assert difference.mean() < 0.02  # the same image: only pixels near edges that cross a window limit differ
    assert difference.max() > 0.05  # but edges crossing a window's limits differ: the order is part of the model


def test_manifest_records_the_order_and_older_manifests_mean_window_first() -> None:
    preset = Preset(name="x", arch="test_efficientnet", image_size=32, windows=WINDOWS, resize_first=True)
    manifest = build_manifest(preset, fingerprint="x", metrics={})
    assert manifest.preprocessing["order"] == "resize, then window"
    assert manifest_resizes_first(manifest)
    assert preset_from_manifest(manifest).resize_first
    older = {k: v for k, v in manifest.preprocessing.items() if k != "order"}
    assert not manifest_resizes_first(manifest.model_copy(update={"preprocessing": older}))
    window_first = build_manifest(PRESETS["paper"], fingerprint="x", metrics={})
    assert window_first.preprocessing["order"] == "window, then resize"
    assert not manifest_resizes_first(window_first)


def test_slice_cache_and_prediction_follow_the_model(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s", n_slices=12, level_hu=150, seed=4)
    series = read_series(tmp_path / "s")
    options = {"windows": WINDOWS, "image_size": 16, "crop_body": True}
    indices = np.arange(12)
    assert cache_key(series, indices, windows=WINDOWS, size=16) != cache_key(
        series, indices, windows=WINDOWS, size=16, resize_first=True
    )
    example = LabeledSeries(series=series, phase="venous")
    cached = build_cache([example], cache_dir=tmp_path / "cache", k=12, resize_first=True, **options).series[0]
    expected = load_slices(series, list(range(12)), resize_first=True, **options)
    np.testing.assert_array_equal(cached.images, np.rint(expected * 255).astype(np.uint8))

    preset = Preset(
        name="tiny", arch="test_efficientnet", image_size=16, windows=WINDOWS, crop_body=True, resize_first=True
    )
    save_model(
        tmp_path / "m", network=create_network(preset), manifest=build_manifest(preset, fingerprint="t", metrics={})
    )
    model = load_model(tmp_path / "m", device="cpu", bf16=False)
    assert model.resize_first
    prediction = predict_series(model, series)
    images = load_slices(series, prediction.slice_indices.tolist(), resize_first=True, **options)
    np.testing.assert_allclose(prediction.slice_probabilities, model.predict_proba(images), atol=1e-5)
