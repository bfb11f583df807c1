"""The body crop of the network input: the body fills the input whatever the field of view; the table does not count."""

from __future__ import annotations

import numpy as np

from backend.ml.dicom import AIR_HU, MIN_BODY_BOX, body_boxes, to_network_input
from backend.ml.network import PRESETS, build_manifest, manifest_crops_body, preset_from_manifest

WINDOWS = ((50.0, 400.0),)


def _slice(
    size: int = 512, *, radius: float = 100.0, centre: tuple[int, int] = (260, 240), table: bool = True
) -> np.ndarray:
    """float32 [1, size, size]: air, a soft-tissue disc (the body) at ``centre`` (row, col), a thin table below."""
    yy, xx = np.mgrid[0:size, 0:size]
    hu = np.full((1, size, size), AIR_HU, dtype=np.float32)
    hu[0][(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2] = 40.0
    if table:
        hu[0, 420:424, 20:500] = 200.0  # 4 px shell spanning the field of view
    return hu


def test_box_surrounds_the_body_and_ignores_the_table() -> None:
    top, left, bottom, right = body_boxes(_slice())[0]
    assert bottom - top == right - left  # square
    assert (top, left) <= (160, 140)  # the whole disc is inside
    assert bottom >= 360
    assert right >= 340
    assert bottom < 420 + 10  # the table shell did not stretch the box down to it
    assert right - left < 260  # about the disc (200 px) plus margins, not the field of view (512)


def test_same_body_in_a_wider_field_of_view_gives_the_same_input() -> None:
    small = _slice(256, radius=110.0, centre=(128, 128), table=False)
    wide = np.full((1, 512, 512), AIR_HU, dtype=np.float32)
    wide[:, 128:384, 128:384] = small[0]
    a = to_network_input(small, windows=WINDOWS, image_size=64, crop_body=True)
    b = to_network_input(wide, windows=WINDOWS, image_size=64, crop_body=True)
    assert np.abs(a - b).mean() < 0.02
    uncropped = to_network_input(wide, windows=WINDOWS, image_size=64, crop_body=False)
    assert np.abs(a - uncropped).mean() > 0.1  # without the crop the body is half the size


def test_slice_without_body_keeps_the_whole_image_and_small_parts_are_not_blown_up() -> None:
    empty = np.full((1, 100, 120), AIR_HU, dtype=np.float32)
    assert body_boxes(empty)[0].tolist() == [0, 0, 100, 120]
    tiny = _slice(512, radius=20.0, table=False)
    top, _, bottom, _ = body_boxes(tiny)[0]
    assert bottom - top >= MIN_BODY_BOX * 512 - 1


def test_crop_pads_with_air_and_stays_in_range() -> None:
    # the disc touches the image edges, so the square box goes past them
    hu = _slice(256, radius=120.0, centre=(128, 128), table=False)
    hu[0, :, :8] = 300.0  # bright column at the edge
    out = to_network_input(hu, windows=((50.0, 400.0), (-600.0, 1500.0)), image_size=48, crop_body=True)
    assert out.shape == (1, 2, 48, 48)
    assert out.dtype == np.float32
    assert 0.0 <= out.min() <= out.max() <= 1.0
    assert out[0, 1, 0, 0] > 0.0  # padding is air through the lung window (> 0), not a hard 0


def test_manifest_records_the_crop_and_old_manifests_mean_no_crop() -> None:
    manifest = build_manifest(PRESETS["cpu"], fingerprint="x", metrics={})
    assert manifest.preprocessing["crop"] == "body"
    assert manifest_crops_body(manifest)
    assert preset_from_manifest(manifest).crop_body
    without = {k: v for k, v in manifest.preprocessing.items() if k != "crop"}
    assert not manifest_crops_body(manifest.model_copy(update={"preprocessing": without}))
