"""Render one PNG per series from which a radiologist can judge the contrast phase at a glance.

Layout (``PREVIEW_WIDTH`` x ``PREVIEW_HEIGHT`` pixels, RGB)::

    +----------------------------------------------------------------+
    | title: SeriesDescription | slices x thickness                  |
    +--------------------------------+---------------+---------------+
    |                                | 1 axial:      | 2 axial:      |
    |  coronal MIP in front of the   | liver /       | kidneys       |
    |  spine: aorta, kidneys         | portal vein   |               |
    |  (ticks 1-3 mark the levels)   +---------------+---------------+
    |                                | 3 axial:      | facts: levels |
    |                                | pelvis        | and windows   |
    +--------------------------------+---------------+---------------+

Only ``MAX_DECODED_SLICES`` (64) evenly spaced slices are decoded, whatever the series length; the three axial
levels and the coronal reformat are all taken from that sample.

Level choice (slices sorted feet -> head, relative z = 0 at the feet end of the coverage):

- *body* slices hold at least 5% of the largest body cross-section (HU > -400); *thorax* slices have more than 15%
  of their body outline filled with air (lungs), *leg* slices less than half of the body depth filled along the
  midline (two thighs); both are dropped unless nothing else is left;
- *liver / portal vein*: in the upper 45% of the abdominal range, the slice with the most soft tissue
  (20..250 HU) in the patient's right half of the body (image left);
- *kidneys*: up to 130 mm below the liver level, the slice with the largest enhancing-parenchyma area
  (120..350 HU, away from cortical bone) in two paravertebral boxes; without enhancement (non-contrast) the slice
  50 mm below the liver level;
- *pelvis*: in the lowest 30% of the range, the slice with the most dense (> 200 HU) midline content
  (excreted contrast in the bladder), else the slice 12% above the bottom of the range.

The coronal panel is a maximum intensity projection over a 35 mm anteroposterior slab that ends just behind an
enhanced aorta, or 3 mm in front of the vertebral body, at the kidney level (the aorta, the renal hila and the
kidneys' anterior halves; the vertebrae stay out so they do not hide the aorta), with the body centre as fallback
when no dense midline structure is found. Axial panels
use the abdomen window (centre 50, width 400 HU); the coronal MIP uses centre 100, width 500 HU so enhanced vessels
do not all saturate.

Pure apart from decoding through :func:`backend.ml.dicom.read_hu`: no database, no network, no cache (see
``backend.previews`` for the cache and the route).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from backend.ml.dicom import SeriesInfo

RENDERER_VERSION: Final[str] = "preview-v1"
"""Part of the cache key: bump it whenever the picture changes."""

MAX_DECODED_SLICES: Final[int] = 64
AXIAL_PANEL: Final[int] = 320
CORONAL_PANEL: Final[int] = 2 * AXIAL_PANEL
TITLE_HEIGHT: Final[int] = 30
PREVIEW_WIDTH: Final[int] = CORONAL_PANEL + 2 * AXIAL_PANEL
PREVIEW_HEIGHT: Final[int] = TITLE_HEIGHT + CORONAL_PANEL

AXIAL_WINDOW: Final[tuple[float, float]] = (50.0, 400.0)  # (centre, width), HU
CORONAL_WINDOW: Final[tuple[float, float]] = (100.0, 500.0)

BODY_HU: Final[float] = -400.0
AIR_HU_MAX: Final[float] = -600.0
SOFT_TISSUE_HU: Final[tuple[float, float]] = (20.0, 250.0)
ENHANCED_PARENCHYMA_HU: Final[tuple[float, float]] = (120.0, 350.0)
DENSE_HU: Final[float] = 200.0
BONE_HU: Final[float] = 200.0
THORAX_AIR_FRACTION: Final[float] = 0.15
LEGS_MIDLINE_FRACTION: Final[float] = 0.5
MIN_BODY_FRACTION: Final[float] = 0.05
KIDNEY_FALLBACK_MM: Final[float] = 50.0
KIDNEY_SEARCH_MM: Final[float] = 130.0
CORTICAL_BONE_HU: Final[float] = 500.0
CORONAL_SLAB_MM: Final[float] = 35.0
SPINE_MARGIN_MM: Final[float] = 3.0
MIN_DENSE_WIDTH_MM: Final[float] = 5.0
AORTA_MAX_MM: Final[float] = 32.0
SPINE_SEARCH_MM: Final[float] = 40.0
NO_SPINE: Final[str] = "MIP through the body centre (no spine found)"

_LABEL_COLOUR: Final[tuple[int, int, int]] = (255, 220, 0)
_TEXT_COLOUR: Final[tuple[int, int, int]] = (235, 235, 235)
_BACKGROUND: Final[tuple[int, int, int]] = (0, 0, 0)


class PreviewError(ValueError):
    """The series cannot be rendered (no slices, or a slice array of the wrong shape)."""


@dataclass(frozen=True)
class PreviewLevel:
    """One axial level shown in the preview.

    Attributes:
        name: what the level is meant to show ("liver / portal vein", "kidneys", "pelvis").
        sample: row in the decoded sample (``hu[sample]``).
        relative_z: position within the coverage, 0 = feet end, 1 = head end.
        how: "HU" when an intensity heuristic chose it, "position" when the fallback did.
    """

    name: str
    sample: int
    relative_z: float
    how: str


@dataclass(frozen=True)
class SliceGeometry:
    """Physical geometry of a decoded sample.

    Attributes:
        positions_mm: float64 [m], position of each sampled slice along the slice normal, mm, ascending.
        pixel_spacing_mm: (row spacing, column spacing), mm.
    """

    positions_mm: npt.NDArray[np.float64]
    pixel_spacing_mm: tuple[float, float]


def sample_indices(n_slices: int, max_slices: int = MAX_DECODED_SLICES) -> npt.NDArray[np.int64]:
    """Evenly spaced slice indices covering the whole series, both ends included.

    Returns:
        int64 [min(n_slices, max_slices)], sorted ascending, unique.

    Raises:
        PreviewError: ``n_slices`` < 1 or ``max_slices`` < 1.
    """
    if n_slices < 1 or max_slices < 1:
        raise PreviewError(f"need at least one slice and max_slices >= 1, got n_slices={n_slices}, {max_slices=}")
    if n_slices <= max_slices:
        return np.arange(n_slices, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n_slices - 1, max_slices)).astype(np.int64))


def series_geometry(series: SeriesInfo, indices: Sequence[int]) -> SliceGeometry:
    """Slice positions (mm) of ``indices`` and the in-plane spacing, with fallbacks for missing geometry.

    Positions come from :attr:`SliceRef.position_mm`; when any is missing, ``index * spacing`` is used with the
    slice thickness (else 1 mm). Pixel spacing defaults to 1 mm.
    """
    refs = [series.slices[i] for i in indices]
    known = [ref.position_mm for ref in refs]
    if all(p is not None for p in known) and len(set(known)) == len(known):
        positions = np.asarray(known, dtype=np.float64)
    else:
        step = series.slice_thickness_mm or 1.0
        positions = np.asarray(indices, dtype=np.float64) * step
    spacing = series.pixel_spacing_mm or (1.0, 1.0)
    return SliceGeometry(positions_mm=positions, pixel_spacing_mm=(float(spacing[0]), float(spacing[1])))


def render_series_png(series: SeriesInfo, *, max_slices: int = MAX_DECODED_SLICES) -> bytes:
    """Decode a sample of ``series`` and return its preview as PNG bytes.

    Args:
        series: from :func:`backend.ml.dicom.scan` or :func:`backend.ml.dicom.read_series`.
        max_slices: most slices decoded.

    Returns:
        PNG bytes, RGB, ``PREVIEW_WIDTH`` x ``PREVIEW_HEIGHT``.

    Raises:
        PreviewError: the series has no slices.
        backend.ml.dicom.DicomReadError: a sampled slice cannot be decoded.
    """
    from backend.ml.dicom import read_hu

    indices = sample_indices(series.n_slices, max_slices)
    hu = read_hu(series, indices.tolist())
    geometry = series_geometry(series, indices.tolist())
    image = compose_preview(hu, geometry, title=preview_title(series), n_slices=series.n_slices)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def preview_title(series: SeriesInfo) -> str:
    """Title line: description, slice count and thickness (no patient identifiers)."""
    description = series.metadata.series_description.strip() or "(no SeriesDescription)"
    thickness = f"{series.slice_thickness_mm:g} mm" if series.slice_thickness_mm else "thickness unknown"
    return f"{description[:60]}  |  {series.n_slices} slices x {thickness}"


def compose_preview(
    hu: npt.NDArray[np.float32], geometry: SliceGeometry, *, title: str, n_slices: int | None = None
) -> Image.Image:
    """Lay out the coronal slab, three axial levels and the facts panel.

    Args:
        hu: float32 [m, rows, cols], Hounsfield units, the decoded sample sorted feet -> head.
        geometry: positions (mm) of the ``m`` sampled slices and the pixel spacing.
        title: text for the title bar.
        n_slices: slices in the whole series (for the facts panel; defaults to ``m``).

    Returns:
        RGB image, ``PREVIEW_WIDTH`` x ``PREVIEW_HEIGHT``.

    Raises:
        PreviewError: ``hu`` is not [m, rows, cols] with m >= 1, or ``geometry`` does not match it.
    """
    if hu.ndim != 3 or hu.shape[0] < 1 or hu.shape[1] < 2 or hu.shape[2] < 2:
        raise PreviewError(f"hu must be float32 [m, rows, cols] with m >= 1, got shape {hu.shape}")
    if geometry.positions_mm.shape != (hu.shape[0],):
        raise PreviewError(f"{geometry.positions_mm.shape[0]} slice positions for {hu.shape[0]} slices")
    levels = choose_levels(hu, geometry)
    canvas = Image.new("RGB", (PREVIEW_WIDTH, PREVIEW_HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill=_TEXT_COLOUR, font=_font(16))

    kidney_sample = next(level.sample for level in levels if level.name == "kidneys")
    coronal, slab = coronal_slab(hu, geometry, reference_sample=kidney_sample)
    coronal_aspect = _coronal_aspect(coronal, geometry)
    canvas.paste(_fit(_to_grey(coronal, CORONAL_WINDOW), CORONAL_PANEL, aspect=coronal_aspect), (0, TITLE_HEIGHT))
    _label(draw, (6, TITLE_HEIGHT + 4), f"coronal {CORONAL_SLAB_MM:g} mm {slab}")
    _label(draw, (6, TITLE_HEIGHT + 24), f"W{CORONAL_WINDOW[1]:g} L{CORONAL_WINDOW[0]:g}, head at top")
    _mark_levels(draw, levels, n_samples=hu.shape[0], aspect=coronal_aspect)

    cells = (
        (CORONAL_PANEL, TITLE_HEIGHT),
        (CORONAL_PANEL + AXIAL_PANEL, TITLE_HEIGHT),
        (CORONAL_PANEL, TITLE_HEIGHT + AXIAL_PANEL),
    )
    aspect = geometry.pixel_spacing_mm[0] / geometry.pixel_spacing_mm[1]
    for number, (level, (x, y)) in enumerate(zip(levels, cells, strict=True), start=1):
        axial = _fit(_to_grey(hu[level.sample], AXIAL_WINDOW), AXIAL_PANEL, aspect=aspect * hu.shape[1] / hu.shape[2])
        canvas.paste(axial, (x, y))
        _label(draw, (x + 6, y + 4), f"{number}  {level.name}")
        _label(draw, (x + 6, y + 22), f"z {100 * level.relative_z:.0f}% ({level.how})")
        draw.rectangle((x, y, x + AXIAL_PANEL - 1, y + AXIAL_PANEL - 1), outline=(60, 60, 60))
    _facts(
        draw,
        hu,
        levels,
        n_slices=n_slices or hu.shape[0],
        origin=(CORONAL_PANEL + AXIAL_PANEL, TITLE_HEIGHT + AXIAL_PANEL),
    )
    return canvas


# --- level choice -----------------------------------------------------------------------------------------------


def relative_z(geometry: SliceGeometry) -> npt.NDArray[np.float64]:
    """float64 [m] in [0, 1]: 0 at the lowest (feet) position, 1 at the highest; all 0.5 for a single position."""
    positions = geometry.positions_mm
    span = float(positions.max() - positions.min())
    if span <= 0.0:
        return np.full(positions.shape, 0.5, dtype=np.float64)
    relative: npt.NDArray[np.float64] = (positions - positions.min()) / span
    return relative


def choose_levels(hu: npt.NDArray[np.float32], geometry: SliceGeometry) -> tuple[PreviewLevel, ...]:
    """Pick the liver / portal vein, kidney and pelvis levels of the sample (see the module docstring).

    Args:
        hu: float32 [m, rows, cols], HU, sorted feet -> head.
        geometry: matching slice positions and pixel spacing.

    Returns:
        Three levels, in the order liver / portal vein, kidneys, pelvis.
    """
    z = relative_z(geometry)
    body = hu > BODY_HU
    area = body.sum(axis=(1, 2)).astype(np.float64)
    present = area >= MIN_BODY_FRACTION * max(float(area.max()), 1.0)
    thorax = _air_inside_fraction(hu, body) > THORAX_AIR_FRACTION
    legs = np.array([_midline_body_fraction(b) < LEGS_MIDLINE_FRACTION for b in body])
    abdomen = present & ~thorax & ~legs
    if not abdomen.any():
        abdomen = present if present.any() else np.ones_like(present)
    rows = np.flatnonzero(abdomen)
    lo, hi = float(z[rows].min()), float(z[rows].max())
    span = max(hi - lo, 1e-9)

    upper = rows[z[rows] >= lo + 0.55 * span]
    if not upper.size:  # a single position: every level is that slice
        upper = rows
    liver_scores = np.array([_liver_score(hu[i], body[i]) for i in upper])
    liver = PreviewLevel("liver / portal vein", int(upper[int(np.argmax(liver_scores))]), 0.0, "HU")
    if float(liver_scores.max()) <= 0.0:
        liver = PreviewLevel(liver.name, _nearest(rows, z, lo + 0.75 * span), 0.0, "position")

    kidney = _kidney_level(hu, body, rows, z, geometry, liver_sample=liver.sample)
    pelvis = _pelvis_level(hu, body, rows, z, lo=lo, span=span)
    return tuple(
        PreviewLevel(level.name, level.sample, float(z[level.sample]), level.how) for level in (liver, kidney, pelvis)
    )


def _kidney_level(
    hu: npt.NDArray[np.float32],
    body: npt.NDArray[np.bool_],
    rows: npt.NDArray[np.intp],
    z: npt.NDArray[np.float64],
    geometry: SliceGeometry,
    *,
    liver_sample: int,
) -> PreviewLevel:
    liver_mm = geometry.positions_mm[liver_sample]
    offset = liver_mm - geometry.positions_mm[rows]
    below = rows[(offset > 0.0) & (offset <= KIDNEY_SEARCH_MM)]
    candidates = below if below.size else rows
    scores = np.array([_kidney_score(hu[i], body[i]) for i in candidates])
    min_area = 0.002 * hu.shape[1] * hu.shape[2]
    if scores.size and float(scores.max()) >= min_area:
        return PreviewLevel("kidneys", int(candidates[int(np.argmax(scores))]), 0.0, "HU")
    target_mm = geometry.positions_mm[liver_sample] - KIDNEY_FALLBACK_MM
    nearest = int(rows[int(np.argmin(np.abs(geometry.positions_mm[rows] - target_mm)))])
    return PreviewLevel("kidneys", nearest, 0.0, "position")


def _pelvis_level(
    hu: npt.NDArray[np.float32],
    body: npt.NDArray[np.bool_],
    rows: npt.NDArray[np.intp],
    z: npt.NDArray[np.float64],
    *,
    lo: float,
    span: float,
) -> PreviewLevel:
    lower = rows[z[rows] <= lo + 0.30 * span]
    if lower.size:
        scores = np.array([_bladder_score(hu[i], body[i]) for i in lower])
        if float(scores.max()) >= 0.001 * hu.shape[1] * hu.shape[2]:
            return PreviewLevel("pelvis", int(lower[int(np.argmax(scores))]), 0.0, "HU")
    return PreviewLevel("pelvis", _nearest(rows, z, lo + 0.12 * span), 0.0, "position")


def _nearest(rows: npt.NDArray[np.intp], z: npt.NDArray[np.float64], target: float) -> int:
    return int(rows[int(np.argmin(np.abs(z[rows] - target)))])


def _air_inside_fraction(hu: npt.NDArray[np.float32], body: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """float64 [m]: fraction of each slice's body outline (row-wise hull of the body mask) that is air."""
    left = np.maximum.accumulate(body, axis=2)
    right = np.maximum.accumulate(body[:, :, ::-1], axis=2)[:, :, ::-1]
    inside = left & right
    outline = inside.sum(axis=(1, 2)).astype(np.float64)
    air = (inside & (hu < AIR_HU_MAX)).sum(axis=(1, 2)).astype(np.float64)
    fraction: npt.NDArray[np.float64] = np.divide(air, outline, out=np.zeros_like(air), where=outline > 0)
    return fraction


def _midline_body_fraction(body: npt.NDArray[np.bool_]) -> float:
    """Share of the body's depth covered by body pixels in the midline columns (small between two thighs)."""
    box = _body_box(body)
    if box is None:
        return 0.0
    cx = int(box.centre_x)
    half = max(1, int(0.02 * box.width))
    column = body[box.top : box.bottom, max(0, cx - half) : cx + half + 1].all(axis=1)
    return float(column.mean())


@dataclass(frozen=True)
class _Box:
    """Body bounding box of one slice, pixels (inclusive start, exclusive end)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def centre_x(self) -> float:
        return (self.left + self.right) / 2.0

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def depth(self) -> int:
        return self.bottom - self.top


def _body_box(body: npt.NDArray[np.bool_]) -> _Box | None:
    ys = np.flatnonzero(body.any(axis=1))
    xs = np.flatnonzero(body.any(axis=0))
    if ys.size < 2 or xs.size < 2:
        return None
    return _Box(top=int(ys[0]), bottom=int(ys[-1]) + 1, left=int(xs[0]), right=int(xs[-1]) + 1)


def _in_range(values: npt.NDArray[np.float32], bounds: tuple[float, float]) -> npt.NDArray[np.bool_]:
    return (values >= bounds[0]) & (values <= bounds[1])


def _liver_score(hu: npt.NDArray[np.float32], body: npt.NDArray[np.bool_]) -> float:
    """Soft-tissue pixels in the patient's right half (image left) of the body, in the anterior 75% of its depth."""
    box = _body_box(body)
    if box is None:
        return 0.0
    region = hu[box.top : box.top + int(0.75 * box.depth), box.left : int(box.centre_x)]
    return float(_in_range(region, SOFT_TISSUE_HU).sum())


def _kidney_score(hu: npt.NDArray[np.float32], body: npt.NDArray[np.bool_]) -> float:
    """Enhancing-parenchyma pixels in two paravertebral boxes (12-40% of the width from the midline, posterior).

    Pixels within 3 of cortical bone (> 500 HU) are left out: the cancellous bone of the iliac wings and ribs has
    the same HU as enhancing kidney.
    """
    box = _body_box(body)
    if box is None:
        return 0.0
    y0, y1 = box.top + int(0.45 * box.depth), box.top + int(0.85 * box.depth)
    total = 0.0
    for sign in (-1.0, 1.0):
        xa = int(box.centre_x + sign * 0.12 * box.width)
        xb = int(box.centre_x + sign * 0.40 * box.width)
        region = hu[y0:y1, min(xa, xb) : max(xa, xb)]
        parenchyma = _in_range(region, ENHANCED_PARENCHYMA_HU) & ~_near(region > CORTICAL_BONE_HU, radius=3)
        total += float(parenchyma.sum())
    return total


def _near(mask: npt.NDArray[np.bool_], *, radius: int) -> npt.NDArray[np.bool_]:
    """``mask`` dilated by ``radius`` pixels (square neighbourhood)."""
    grown = mask.copy()
    padded = np.pad(mask, radius)
    rows, cols = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            grown |= padded[radius + dy : radius + dy + rows, radius + dx : radius + dx + cols]
    return grown


def _bladder_score(hu: npt.NDArray[np.float32], body: npt.NDArray[np.bool_]) -> float:
    """Dense (> 200 HU, < 1000 HU) pixels in the central anterior box (12% of the width either side of the midline,
    clear of the femoral heads), where the bladder lies."""
    box = _body_box(body)
    if box is None:
        return 0.0
    region = hu[
        box.top + int(0.15 * box.depth) : box.top + int(0.60 * box.depth),
        int(box.centre_x - 0.12 * box.width) : int(box.centre_x + 0.12 * box.width),
    ]
    return float(((region > DENSE_HU) & (region < 1000.0)).sum())


# --- coronal slab -----------------------------------------------------------------------------------------------


def coronal_slab(
    hu: npt.NDArray[np.float32], geometry: SliceGeometry, *, reference_sample: int
) -> tuple[npt.NDArray[np.float32], str]:
    """Maximum intensity projection over a ``CORONAL_SLAB_MM`` slab just in front of the vertebral bodies.

    The aorta lies directly in front of the spine and the kidneys' anterior halves and hila reach that depth, so
    the slab shows both while leaving the vertebrae (which would hide the aorta in a MIP) out.

    Args:
        hu: float32 [m, rows, cols], HU, sorted feet -> head.
        geometry: matching positions and pixel spacing.
        reference_sample: the slice (kidney level) where the depth of the spine is measured.

    Returns:
        (float32 [m, cols] HU with the head at row 0, a short description of where the slab lies).
    """
    row_mm = geometry.pixel_spacing_mm[0]
    back_row, how = _slab_back_row(hu[reference_sample], pixel_spacing_mm=geometry.pixel_spacing_mm)
    distance = np.abs(geometry.positions_mm - geometry.positions_mm[reference_sample])
    for sample in np.argsort(distance, kind="stable")[1:]:
        if how != NO_SPINE or distance[sample] > SPINE_SEARCH_MM:
            break  # found at the reference level, or nothing near it: an intervertebral disc may hide the spine
        back_row, how = _slab_back_row(hu[sample], pixel_spacing_mm=geometry.pixel_spacing_mm)
    back = min(hu.shape[1], back_row + 1)
    front = max(0, back - max(1, round(CORONAL_SLAB_MM / row_mm)))
    slab = hu[:, front:back, :].max(axis=1)
    return np.ascontiguousarray(slab[::-1], dtype=np.float32), how


def _slab_back_row(hu: npt.NDArray[np.float32], *, pixel_spacing_mm: tuple[float, float]) -> tuple[int, str]:
    """Posterior edge of the coronal slab at this (kidney level) slice, and how it was found.

    Dense (> 200 HU) structures are followed down the midline band (10% of the body width either side) in the
    posterior 65% of the body, as runs of rows holding at least ``MIN_DENSE_WIDTH_MM`` of them:

    - when the first run is small and round (an enhanced or calcified aorta: at most ``AORTA_MAX_MM`` wide and
      long) and another run follows (the spine), the slab ends ``SPINE_MARGIN_MM`` behind that aorta;
    - otherwise the first run is the spine and the slab ends ``SPINE_MARGIN_MM`` in front of it (an unenhanced
      aorta lies inside the slab);
    - with no dense run at all, the slab ends at 65% of the body depth.
    """
    row_mm, col_mm = pixel_spacing_mm
    box = _body_box(hu > BODY_HU)
    if box is None:
        return hu.shape[0] // 2, "through the image centre"
    half_band = max(1, int(0.10 * box.width))
    cx = int(box.centre_x)
    band = hu[:, max(0, cx - half_band) : cx + half_band + 1]
    dense_width_mm = (band > BONE_HU).sum(axis=1) * col_mm
    runs = _runs(dense_width_mm >= MIN_DENSE_WIDTH_MM, start=box.top + int(0.35 * box.depth), stop=box.bottom)
    margin = round(SPINE_MARGIN_MM / row_mm)
    if not runs:
        return box.top + int(0.65 * box.depth), NO_SPINE
    first_start, first_stop = runs[0]
    first_width = float(dense_width_mm[first_start:first_stop].max())
    if len(runs) > 1 and first_width <= AORTA_MAX_MM and (first_stop - first_start) * row_mm <= AORTA_MAX_MM:
        return min(first_stop - 1 + margin, runs[1][0] - 1), "MIP through the aorta, in front of the spine"
    return max(box.top, first_start - margin), "MIP in front of the spine"


def _runs(mask: npt.NDArray[np.bool_], *, start: int, stop: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges where ``mask`` is true, within ``[start, stop)``, gaps of one row bridged."""
    rows = np.flatnonzero(mask[start:stop]) + start
    runs: list[tuple[int, int]] = []
    for row in rows.tolist():
        if runs and row <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], row + 1)
        else:
            runs.append((row, row + 1))
    return runs


def _coronal_aspect(coronal: npt.NDArray[np.float32], geometry: SliceGeometry) -> float:
    """Height / width of the coronal image in millimetres."""
    span_mm = float(geometry.positions_mm.max() - geometry.positions_mm.min())
    height_mm = max(span_mm, 1.0)
    width_mm = coronal.shape[1] * geometry.pixel_spacing_mm[1]
    return height_mm / max(width_mm, 1e-6)


# --- drawing ----------------------------------------------------------------------------------------------------


def _to_grey(hu: npt.NDArray[np.float32], window: tuple[float, float]) -> Image.Image:
    """Window HU (centre, width) to an 8-bit greyscale image."""
    centre, width = window
    scaled = (hu.astype(np.float32) - (centre - width / 2.0)) * (255.0 / width)
    return Image.fromarray(np.clip(scaled, 0.0, 255.0).astype(np.uint8), mode="L")


def _fitted_size(size: int, aspect: float) -> tuple[int, int]:
    """(width, height) of an image with physical height/width ``aspect`` fitted into a ``size`` square."""
    if aspect >= 1.0:
        return max(1, round(size / aspect)), size
    return size, max(1, round(size * aspect))


def _fit(image: Image.Image, size: int, *, aspect: float) -> Image.Image:
    """Resize ``image`` to fit a ``size`` square with the given physical height/width ratio, centred on black."""
    width, height = _fitted_size(size, aspect)
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    panel = Image.new("L", (size, size), 0)
    panel.paste(resized, ((size - width) // 2, (size - height) // 2))
    return panel.convert("RGB")


def _mark_levels(draw: ImageDraw.ImageDraw, levels: Sequence[PreviewLevel], *, n_samples: int, aspect: float) -> None:
    """Numbered ticks on the coronal panel's right edge at the rows of the three axial levels."""
    if n_samples < 2:
        return
    _, height = _fitted_size(CORONAL_PANEL, aspect)
    top = TITLE_HEIGHT + (CORONAL_PANEL - height) // 2
    for number, level in enumerate(levels, start=1):
        # coronal rows run from the last sample (head) at the top to sample 0 (feet) at the bottom
        y = top + round((1.0 - level.sample / (n_samples - 1)) * (height - 1))
        draw.line((CORONAL_PANEL - 28, y, CORONAL_PANEL - 4, y), fill=_LABEL_COLOUR, width=2)
        draw.text((CORONAL_PANEL - 44, y - 8), str(number), fill=_LABEL_COLOUR, font=_font(14))


def _facts(
    draw: ImageDraw.ImageDraw,
    hu: npt.NDArray[np.float32],
    levels: Sequence[PreviewLevel],
    *,
    n_slices: int,
    origin: tuple[int, int],
) -> None:
    x, y = origin
    lines = [f"{n_slices} slices, {hu.shape[0]} decoded", f"image {hu.shape[1]} x {hu.shape[2]}", ""]
    for number, level in enumerate(levels, start=1):
        lines.append(f"{number}: {level.name}")
        lines.append(f"   z {100 * level.relative_z:.0f}%, by {level.how}")
    lines += ["", f"axial W{AXIAL_WINDOW[1]:g} L{AXIAL_WINDOW[0]:g}", RENDERER_VERSION]
    for k, line in enumerate(lines):
        draw.text((x + 10, y + 10 + 18 * k), line, fill=_TEXT_COLOUR, font=_font(14))


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str) -> None:
    """Yellow text with a dark outline, readable on any grey level."""
    draw.text(xy, text, fill=_LABEL_COLOUR, font=_font(15), stroke_width=2, stroke_fill=(0, 0, 0))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)
