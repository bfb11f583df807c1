"""Preview rendering (pure numpy on a synthetic abdomen, and on a phantom DICOM series), cache, URL and route."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from PIL import Image

from backend.config import Settings
from backend.ml.dicom import read_series
from backend.ml.preview import (
    PREVIEW_HEIGHT,
    PREVIEW_WIDTH,
    RENDERER_VERSION,
    PreviewError,
    SliceGeometry,
    choose_levels,
    compose_preview,
    coronal_slab,
    render_series_png,
    sample_indices,
)
from backend.previews import (
    InvalidSeriesUidError,
    PreviewConfigError,
    cached_preview,
    check_uid,
    create_preview_router,
    ensure_preview,
    preview_url,
)


def _ellipse(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0


def synthetic_abdomen(m: int = 48, n: int = 128, *, enhanced: bool = True) -> npt.NDArray[np.float32]:
    """float32 [m, n, n] HU, feet -> head: fat body with a muscle wall, spine, aorta, liver (top), kidneys
    (middle), bladder (bottom), lungs (top 8%)."""
    vol = np.full((m, n, n), -1000.0, np.float32)
    c = n / 2
    for k in range(m):
        z = k / (m - 1)
        s = vol[k]
        body = _ellipse(s.shape, c, c, 0.43 * n, 0.33 * n)
        s[body] = -90.0
        s[body & ~_ellipse(s.shape, c, c, 0.39 * n, 0.29 * n)] = 50.0
        s[_ellipse(s.shape, c, 0.66 * n, 0.07 * n, 0.07 * n)] = 450.0  # vertebral body
        s[_ellipse(s.shape, c + 0.03 * n, 0.53 * n, 0.04 * n, 0.04 * n)] = 300.0 if enhanced else 40.0  # aorta
        if z > 0.62:
            s[_ellipse(s.shape, 0.33 * n, 0.43 * n, 0.2 * n, 0.17 * n)] = 110.0 if enhanced else 55.0  # liver
        if 0.35 < z < 0.6:
            for cx in (0.31 * n, 0.69 * n):
                s[_ellipse(s.shape, cx, 0.62 * n, 0.06 * n, 0.09 * n)] = 190.0 if enhanced else 32.0  # kidneys
        if z < 0.15:
            s[_ellipse(s.shape, c, 0.38 * n, 0.1 * n, 0.08 * n)] = 320.0 if enhanced else 10.0  # bladder
        if z > 0.92:
            for cx in (0.31 * n, 0.69 * n):
                s[_ellipse(s.shape, cx, 0.45 * n, 0.14 * n, 0.18 * n)] = -850.0  # lungs
    return vol


def _geometry(m: int, step_mm: float = 5.0) -> SliceGeometry:
    return SliceGeometry(positions_mm=np.arange(m) * step_mm, pixel_spacing_mm=(2.7, 2.7))


def test_sample_indices_cover_both_ends() -> None:
    assert sample_indices(10).tolist() == list(range(10))
    picked = sample_indices(300, 64)
    assert picked.dtype == np.int64
    assert len(picked) == 64
    assert picked[0] == 0
    assert picked[-1] == 299
    assert np.all(np.diff(picked) > 0)
    with pytest.raises(PreviewError):
        sample_indices(0)


def test_levels_follow_the_anatomy_when_enhanced() -> None:
    vol = synthetic_abdomen()
    liver, kidneys, pelvis = choose_levels(vol, _geometry(len(vol)))
    assert (liver.name, kidneys.name, pelvis.name) == ("liver / portal vein", "kidneys", "pelvis")
    assert 0.62 < liver.relative_z < 0.92
    assert liver.how == "HU"
    assert 0.35 < kidneys.relative_z < 0.6
    assert kidneys.how == "HU"
    assert pelvis.relative_z < 0.15
    assert pelvis.how == "HU"


def test_levels_fall_back_to_position_without_contrast() -> None:
    vol = synthetic_abdomen(enhanced=False)
    liver, kidneys, pelvis = choose_levels(vol, _geometry(len(vol)))
    assert liver.relative_z > 0.55
    assert kidneys.how == "position"
    assert kidneys.relative_z < liver.relative_z
    assert pelvis.how == "position"
    assert pelvis.relative_z < 0.2


def test_coronal_slab_shows_the_aorta_not_the_spine() -> None:
    vol = synthetic_abdomen()
    coronal, how = coronal_slab(vol, _geometry(len(vol)), reference_sample=len(vol) // 2)
    assert coronal.shape == (len(vol), vol.shape[2])
    assert coronal.dtype == np.float32
    assert how == "MIP through the aorta, in front of the spine"
    centre = vol.shape[2] // 2 + int(0.03 * vol.shape[2])
    assert coronal[len(vol) // 2, centre] == pytest.approx(300.0)  # the aorta, at full brightness


def test_compose_preview_size_and_content() -> None:
    vol = synthetic_abdomen()
    image = compose_preview(vol, _geometry(len(vol)), title="ABD ART | 48 slices x 5 mm")
    assert image.size == (PREVIEW_WIDTH, PREVIEW_HEIGHT)
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels[40:, 640:].max() == 255
    assert pixels[40:, 640:].mean() > 10
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 180) & (pixels[..., 2] < 80)
    assert yellow.sum() > 500  # the level labels are drawn


def test_compose_preview_single_slice_and_bad_input() -> None:
    one = synthetic_abdomen()[30:31]
    image = compose_preview(one, _geometry(1), title="one slice")
    assert image.size == (PREVIEW_WIDTH, PREVIEW_HEIGHT)
    with pytest.raises(PreviewError):
        compose_preview(np.zeros((4, 8), np.float32), _geometry(4), title="x")
    with pytest.raises(PreviewError):
        compose_preview(synthetic_abdomen()[:3], _geometry(5), title="x")


def test_render_a_phantom_series(phantom_series_dir: Path, tmp_path: Path) -> None:
    series = read_series(phantom_series_dir)
    png = render_series_png(series)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == (PREVIEW_WIDTH, PREVIEW_HEIGHT)
    assert np.asarray(image.convert("L"))[40:, :].std() > 20  # real anatomy, not a blank canvas

    path = ensure_preview(series, preview_dir=tmp_path)
    assert path == tmp_path / RENDERER_VERSION / f"{series.series_instance_uid}.png"
    assert path.read_bytes() == png  # deterministic
    mtime = path.stat().st_mtime_ns
    assert ensure_preview(series, preview_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime
    assert cached_preview(tmp_path, series.series_instance_uid) == path
    assert not list(path.parent.glob(".tmp-*"))


def test_uid_checks() -> None:
    assert check_uid("1.2.840.10008.1") == "1.2.840.10008.1"
    for bad in ("../etc/passwd", "1..2", "1.2.", "", "1" * 65, "1.2/3", "abc"):
        with pytest.raises(InvalidSeriesUidError):
            check_uid(bad)


def test_preview_url_through_label_studio_local_files(tmp_path: Path) -> None:
    settings = Settings(label_studio_files_root=tmp_path / "files", preview_dir=tmp_path / "files" / "prev iews")
    assert preview_url(settings, "1.2.3") == f"/data/local-files/?d=prev%20iews/{RENDERER_VERSION}/1.2.3.png"
    remote = Settings(
        label_studio_files_root=Path("/label-studio/files"),
        label_studio_preview_dir=Path("/label-studio/files/previews"),
        preview_dir=tmp_path / "anything",
    )
    assert preview_url(remote, "1.2") == f"/data/local-files/?d=previews/{RENDERER_VERSION}/1.2.png"
    outside = Settings(label_studio_files_root=tmp_path / "files", preview_dir=tmp_path / "previews")
    with pytest.raises(PreviewConfigError, match="sub-folder"):
        preview_url(outside, "1.2")


def test_preview_url_through_the_backend() -> None:
    settings = Settings(ml_backend_url="http://api:9090/")
    assert preview_url(settings, "1.2") == "http://api:9090/previews/1.2.png"
    with pytest.raises(PreviewConfigError, match="CTPHASE_LABEL_STUDIO_FILES_ROOT"):
        preview_url(Settings(), "1.2")


def test_route_serves_cached_previews_behind_auth(tmp_path: Path) -> None:
    target = tmp_path / RENDERER_VERSION / "1.2.3.png"
    target.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(target)

    def auth(authorization: str | None = None) -> None:  # header-free stand-in: a query parameter
        if authorization != "ok":
            raise HTTPException(401, "no")

    app = FastAPI()
    app.include_router(create_preview_router(preview_dir=tmp_path, auth=auth))
    client = TestClient(app)
    assert client.get("/previews/1.2.3.png").status_code == 401
    ok = client.get("/previews/1.2.3.png", params={"authorization": "ok"})
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "image/png"
    assert ok.content == target.read_bytes()
    for missing in ("9.9.png", "1.2.3.jpg", "..%2F1.2.3.png", "1.2.3"):
        assert client.get(f"/previews/{missing}", params={"authorization": "ok"}).status_code == 404
