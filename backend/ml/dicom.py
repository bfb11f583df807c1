"""Find CT series under a folder, sort their slices geometrically, and decode only the slices asked for.

Discovery reads a bounded head of every file (:data:`HEAD_BYTES`) and walks its top-level data elements up to
group 0028 with a small parser (explicit and implicit VR little endian, the encodings of almost every CT file)
that records the handful of attributes needed to group and sort slices; Pixel Data is then located by its tag.
No pixel bytes are read and no pydicom dataset is built per file (a full pydicom header parse costs ~4-8x more).
Anything the walker does not handle (big endian, deflated or preamble-less files, a header longer than the head,
Enhanced multi-frame objects with their functional groups) falls back to
``pydicom.dcmread(..., stop_before_pixels=True)`` on the file. Series-level metadata (description, contrast,
times, kernel, ...) comes from one full pydicom header parse per series. :func:`scan` never raises for a bad
file: non-DICOM files, DICOMDIRs, non-CT objects, localizers, truncated files and series with mixed orientations
are listed in :attr:`ScanResult.skipped` with their reason.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of the
ImageOrientationPatient row and column cosines, its sign chosen so that its largest component is positive, so
axial series run feet -> head), falling back to InstanceNumber only when geometry is missing. Gaps, duplicates
and fallbacks are reported in :attr:`SeriesInfo.problems`; mixed orientations within one series are refused
(:class:`MixedOrientationError`).

Decoding (:func:`read_hu`) applies the modality transform (RescaleSlope/Intercept, per frame for Enhanced CT),
sets PixelPaddingValue pixels to air, and relies on pydicom for BitsStored masking/sign extension and for the
compressed transfer syntaxes (pylibjpeg, pyjpegls). :func:`window`, :func:`resize` and :func:`load_slices`
turn HU slices into network inputs.

Nothing here logs patient identifiers; UIDs and counts only, at debug level.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.config import disable_value_validation

logger = logging.getLogger(__name__)

DEFAULT_WINDOWS: Final[tuple[tuple[float, float], ...]] = ((50.0, 400.0),)
"""(centre, width) windows in HU; one output channel per window. The default is the paper's abdomen window."""

AIR_HU: Final[float] = -1024.0
"""HU given to padding pixels (PixelPaddingValue), i.e. air."""

HEAD_BYTES: Final[int] = 16 * 1024
"""Bytes read from each file for discovery; longer headers fall back to a pydicom header parse of the file."""

BODY_HU: Final[float] = -500.0
"""Pixels above this HU count as body (or table) for the body crop; fat is about -100, lung about -850."""

MIN_BODY_BOX: Final[float] = 0.4
"""The body crop is never smaller than this fraction of the image side."""

_BODY_GRID: Final[int] = 128  # the body mask is found on a grid of at most this many pixels per side
_BODY_MARGIN: Final[float] = 0.04  # relative margin around the body box

DEFAULT_CHUNK: Final[int] = 12
"""Slices decoded, windowed and resized together by :func:`load_slices`."""

_ORIENTATION_TOLERANCE: Final[float] = 1e-3  # max abs difference of direction cosines within one orientation
_DUPLICATE_POSITION_MM: Final[float] = 1e-3
_GAP_FACTOR: Final[float] = 1.5  # a spacing above 1.5x the median spacing is a gap
_MAX_LISTED: Final[int] = 3  # examples listed in one problem message

# Transfer syntaxes.
_IMPLICIT_LE: Final = "1.2.840.10008.1.2"
_EXPLICIT_LE: Final = "1.2.840.10008.1.2.1"
_RLE: Final = "1.2.840.10008.1.2.5"
_DEFLATED: Final = "1.2.840.10008.1.2.1.99"
_ENCAPSULATED_PREFIX: Final = "1.2.840.10008.1.2.4."
_DICOMDIR_SOP_CLASS: Final = "1.2.840.10008.1.3.10"
_CT_SOP_CLASSES: Final[frozenset[str]] = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    }
)

# Tags (group << 16 | element).
_PIXEL_DATA: Final = 0x7FE00010
_UNDEFINED: Final = 0xFFFFFFFF
_ITEM: Final = 0xE000
_ITEM_END: Final = 0xE00D
_SEQUENCE_END: Final = 0xE0DD
_MEDIA_SOP_CLASS: Final = 0x00020002
_TRANSFER_SYNTAX: Final = 0x00020010
_IMAGE_TYPE: Final = 0x00080008
_SOP_CLASS: Final = 0x00080016
_SOP_INSTANCE: Final = 0x00080018
_ACQUISITION_TIME: Final = 0x00080032
_MODALITY: Final = 0x00080060
_STUDY_UID: Final = 0x0020000D
_SERIES_UID: Final = 0x0020000E
_INSTANCE_NUMBER: Final = 0x00200013
_POSITION: Final = 0x00200032
_ORIENTATION: Final = 0x00200037
_SAMPLES: Final = 0x00280002
_FRAMES: Final = 0x00280008
_ROWS: Final = 0x00280010
_COLUMNS: Final = 0x00280011
_BITS_ALLOCATED: Final = 0x00280100
_SHARED_GROUPS: Final = 0x52009229
_PER_FRAME_GROUPS: Final = 0x52009230
_WANTED: Final[frozenset[int]] = frozenset(
    {
        _IMAGE_TYPE,
        _SOP_CLASS,
        _SOP_INSTANCE,
        _ACQUISITION_TIME,
        _MODALITY,
        _STUDY_UID,
        _SERIES_UID,
        _INSTANCE_NUMBER,
        _POSITION,
        _ORIENTATION,
        _SAMPLES,
        _FRAMES,
        _ROWS,
        _COLUMNS,
        _BITS_ALLOCATED,
    }
)
_WANTED_META: Final[frozenset[int]] = frozenset({_MEDIA_SOP_CLASS, _TRANSFER_SYNTAX})
_LONG_VRS: Final[frozenset[bytes]] = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS: Final[frozenset[bytes]] = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<L")
_EXPLICIT_HEAD: Final = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_IMPLICIT_HEAD: Final = struct.Struct("<HHL")  # group, element, 32-bit length
_PIXEL_TAG_BYTES: Final = b"\xe0\x7f\x10\x00"


# --------------------------------------------------------------------------------------------------- errors


class DicomReadError(Exception):
    """A file or series could not be read; ``str(e) == f"{path}: {reason}"``.

    Attributes:
        path: the file (or series folder) concerned, or None.
        reason: what is wrong, without the path.
    """

    series_instance_uid: str | None = None
    """The series the file belongs to, when its header told (lets :func:`scan` flag incomplete series)."""

    def __init__(self, path: Path | None, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)


class NotCTError(DicomReadError):
    """The file is DICOM but not a CT slice: another modality or SOP class, a DICOMDIR, a colour image, a localizer."""


class MissingPixelDataError(DicomReadError):
    """The file has no Pixel Data element."""


class CorruptDicomError(DicomReadError):
    """The file is truncated or malformed, or its pixel data cannot be decoded."""


class NotDicomError(CorruptDicomError):
    """The file is not DICOM at all (empty, text, an image of another format, ...)."""


class MixedOrientationError(DicomReadError):
    """The slices of one series do not share one ImageOrientationPatient."""


class UnsupportedTransferSyntaxError(DicomReadError):
    """No installed pixel data decoder handles the file's transfer syntax."""


class NoSeriesError(DicomReadError):
    """A path holds no readable CT series."""


class MultipleSeriesError(DicomReadError):
    """:func:`read_series` was given a folder holding several CT series."""


# ------------------------------------------------------------------------------------------ public records


@dataclass(frozen=True)
class SliceRef:
    """Where one slice lives.

    Attributes:
        path: the DICOM file.
        frame: the frame index in a multi-frame (Enhanced) object, else None.
        position_mm: ImagePositionPatient projected on the slice normal, mm; None without geometry.
        instance_number: InstanceNumber of the file, if any.
    """

    path: Path
    frame: int | None
    position_mm: float | None
    instance_number: int | None


@dataclass(frozen=True)
class SeriesMetadata:
    """Series-level attributes useful for phase recognition and review; no patient identifiers.

    Times are DICOM TM strings (HHMMSS.FFFFFF), dates DA (YYYYMMDD); empty (or None) when absent, which is the
    default of every field. ``study_date`` must not be logged.
    """

    series_description: str = ""
    series_number: int | None = None
    body_part_examined: str = ""
    contrast_bolus_agent: str = ""
    contrast_bolus_route: str = ""
    contrast_bolus_volume_ml: float | None = None
    contrast_bolus_start_time: str = ""
    acquisition_time: str = ""
    series_time: str = ""
    study_date: str = ""
    manufacturer: str = ""
    convolution_kernel: str = ""
    kvp: float | None = None


@dataclass(frozen=True)
class SeriesInfo:
    """One CT series, its slices sorted along the slice normal (feet -> head for axial series).

    Attributes:
        series_instance_uid: SeriesInstanceUID.
        study_instance_uid: StudyInstanceUID.
        modality: always "CT".
        slices: the sorted slices.
        rows: image height, pixels. columns: image width, pixels.
        slice_thickness_mm: SliceThickness (mm) or None.
        pixel_spacing_mm: PixelSpacing (row spacing, column spacing), mm, or None.
        metadata: series-level attributes.
        problems: readable notes on gaps, duplicates, InstanceNumber fallback, slices left out, ...
    """

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    slices: tuple[SliceRef, ...]
    rows: int
    columns: int
    slice_thickness_mm: float | None
    pixel_spacing_mm: tuple[float, float] | None
    metadata: SeriesMetadata
    problems: tuple[str, ...]

    @property
    def n_slices(self) -> int:
        """Number of slices."""
        return len(self.slices)


@dataclass(frozen=True)
class SkippedFile:
    """A file that is not part of any returned series, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ScanResult:
    """Every CT series found under a root and every file skipped."""

    series: tuple[SeriesInfo, ...]
    skipped: tuple[SkippedFile, ...]


# ---------------------------------------------------------------------------------------- internal records


@dataclass(frozen=True, slots=True)
class _Frame:
    """One slice as discovered: a file, or one frame of a multi-frame file."""

    path: Path
    frame: int | None
    sop_instance_uid: str
    instance_number: int | None
    position: tuple[float, ...] | None  # ImagePositionPatient, mm
    orientation: tuple[float, ...] | None  # ImageOrientationPatient, 6 direction cosines
    rows: int
    columns: int
    acquisition_time: str


@dataclass(slots=True)
class _FileHeader:
    """What discovery keeps of one CT file."""

    path: Path
    series_uid: str
    study_uid: str
    frames: list[_Frame] = field(default_factory=list)


class _WalkError(Exception):
    """The fast element walker cannot handle this buffer (the caller falls back to pydicom)."""


class _TruncatedError(_WalkError):
    """An element runs past the end of the buffer."""


# ---------------------------------------------------------------------------------------- public functions


def scan(root: Path) -> ScanResult:
    """Find every CT series under ``root`` from file headers only (no pixel data is read).

    Files of any name in nested folders are considered; non-DICOM files, DICOMDIRs, non-CT objects and
    unreadable files are listed in ``skipped`` with their reason. A series whose slices mix orientations is
    not returned: each of its files is skipped with the :class:`MixedOrientationError` reason.

    Args:
        root: a folder tree or a single file.

    Returns:
        The series, ordered by study, SeriesNumber and UID, and the skipped files, ordered by path.

    Raises:
        NoSeriesError: ``root`` does not exist.
    """
    series, failures = _scan(Path(root))
    skipped = tuple(sorted((SkippedFile(path, error.reason) for path, error in failures), key=lambda s: s.path))
    return ScanResult(series=tuple(series), skipped=skipped)


def read_series(path: Path) -> SeriesInfo:
    """Read exactly one CT series from a folder or a single file (headers only).

    Args:
        path: a series folder (sub-folders included) or one DICOM file.

    Returns:
        The series.

    Raises:
        NotCTError, MissingPixelDataError, CorruptDicomError, UnsupportedTransferSyntaxError,
        MixedOrientationError: the only candidate file or series has that problem.
        NoSeriesError: nothing readable as CT at ``path``.
        MultipleSeriesError: several CT series at ``path``.
    """
    path = Path(path)
    series, failures = _scan(path)
    if len(series) > 1:
        uids = ", ".join(s.series_instance_uid for s in series[:_MAX_LISTED])
        more = f" and {len(series) - _MAX_LISTED} more" if len(series) > _MAX_LISTED else ""
        raise MultipleSeriesError(path, f"{len(series)} CT series found ({uids}{more}); give one series")
    if series:
        return series[0]
    distinct = list({id(error): error for _, error in failures}.values())
    if len(distinct) == 1:
        raise distinct[0]
    if not failures:
        raise NoSeriesError(path, "no files found")
    examples = "; ".join(f"{p.name}: {e.reason}" for p, e in failures[:_MAX_LISTED])
    raise NoSeriesError(path, f"no readable CT series in {len(failures)} files ({examples})")


def read_hu(
    series: SeriesInfo,
    indices: Sequence[int],
    *,
    out: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """Decode the slices ``series.slices[i] for i in indices`` and convert them to Hounsfield units.

    Only the files holding those slices are read. The modality transform is ``stored * slope + intercept``
    (per frame for Enhanced CT); pixels equal to PixelPaddingValue (or within PixelPaddingRangeLimit) become
    :data:`AIR_HU`.

    Args:
        series: from :func:`scan` or :func:`read_series`.
        indices: slice indices in ``[0, series.n_slices)``, any order, repeats allowed.
        out: optional float32 [n, rows, cols] buffer to fill (avoids allocating).

    Returns:
        hu: float32 [n, rows, cols], Hounsfield units, in the order of ``indices``.

    Raises:
        IndexError: an index is out of range.
        CorruptDicomError, UnsupportedTransferSyntaxError, MissingPixelDataError: a file cannot be decoded.
        DicomReadError: a file cannot be read (e.g. deleted since the scan).
    """
    idx = _check_indices(indices, series.n_slices)
    shape = (len(idx), series.rows, series.columns)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    wanted: dict[Path, list[tuple[int, int | None]]] = {}
    for k, i in enumerate(idx):
        ref = series.slices[i]
        wanted.setdefault(ref.path, []).append((k, ref.frame))
    with _quiet():
        for path, targets in wanted.items():
            _decode_file(path, targets, out=out, rows=series.rows, columns=series.columns)
    return out


def window(
    hu: npt.NDArray[np.float32],
    windows: Sequence[tuple[float, float]] = DEFAULT_WINDOWS,
    *,
    out: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """Map HU to [0, 1] through one or more (centre, width) windows, one channel per window.

    Args:
        hu: float32 [n, y, x], Hounsfield units.
        windows: (centre, width) pairs in HU, width > 0.
        out: optional float32 [n, c, y, x] buffer to fill.

    Returns:
        float32 [n, c, y, x] in [0, 1]: 0 at or below ``centre - width / 2``, 1 at or above ``centre + width / 2``.
    """
    if hu.ndim != 3:
        raise ValueError(f"hu must be [n, y, x], got shape {hu.shape}")
    if not windows:
        raise ValueError("at least one (centre, width) window is needed")
    for centre, width in windows:
        if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
            raise ValueError(f"window (centre={centre}, width={width}) needs finite values and a width > 0")
    shape = (hu.shape[0], len(windows), hu.shape[1], hu.shape[2])
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    for c, (centre, width) in enumerate(windows):
        channel = out[:, c]
        np.subtract(hu, np.float32(centre - width / 2.0), out=channel)
        np.multiply(channel, np.float32(1.0 / width), out=channel)
        np.clip(channel, 0.0, 1.0, out=channel)
    return out


def resize(images: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    """Resize images to ``size`` x ``size`` with antialiased bilinear interpolation (area-like when shrinking).

    Non-square images are stretched to a square.

    Args:
        images: float32 [n, c, y, x].
        size: output side, pixels (> 0).

    Returns:
        float32 [n, c, size, size].
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [n, c, y, x], got shape {images.shape}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if images.shape[2] == size and images.shape[3] == size:
        return np.ascontiguousarray(images, dtype=np.float32)
    if images.shape[0] == 0:
        return np.empty((0, images.shape[1], size, size), dtype=np.float32)
    import torch
    import torch.nn.functional as nnf

    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    with torch.no_grad():
        resized = nnf.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    result: npt.NDArray[np.float32] = resized.numpy()
    return result


def body_boxes(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Square boxes around the patient's body in each slice, for :func:`to_network_input`'s body crop.

    The body is what stays above :data:`BODY_HU` after an erosion of about 1/40 of the image side: the table, its
    mattress, thin lines and noise vanish, the trunk and thighs stay. The box is the body's bounding box grown by the
    erosion and a margin, squared around its centre, and never smaller than :data:`MIN_BODY_BOX` of the image side
    (so a slice through a small part is not blown up). A slice without a body gets the whole image.

    Args:
        hu: float32 [n, rows, cols], Hounsfield units.

    Returns:
        int64 [n, 4]: (top, left, bottom, right) in pixels, end-exclusive; may extend past the image (padding).
    """
    n, rows, cols = hu.shape
    step = max(1, math.ceil(max(rows, cols) / _BODY_GRID))
    mask = hu[:, ::step, ::step] > BODY_HU
    radius = max(1, round(mask.shape[2] / 40))
    for axis in (1, 2):
        mask = _erode_1d(mask, radius, axis=axis)
    boxes = np.empty((n, 4), dtype=np.int64)
    side_min = MIN_BODY_BOX * max(rows, cols)
    grow = radius * step  # undoes the erosion
    for k in range(n):
        ys, xs = np.flatnonzero(mask[k].any(axis=1)), np.flatnonzero(mask[k].any(axis=0))
        if ys.size == 0:
            boxes[k] = (0, 0, rows, cols)
            continue
        top, bottom = ys[0] * step - grow, (ys[-1] + 1) * step + grow
        left, right = xs[0] * step - grow, (xs[-1] + 1) * step + grow
        side = max((bottom - top) * (1 + _BODY_MARGIN), (right - left) * (1 + _BODY_MARGIN), side_min)
        cy, cx = (top + bottom) / 2.0, (left + right) / 2.0
        y0, x0 = round(cy - side / 2.0), round(cx - side / 2.0)
        boxes[k] = (y0, x0, y0 + round(side), x0 + round(side))
    return boxes


def _erode_1d(mask: npt.NDArray[np.bool_], radius: int, *, axis: int) -> npt.NDArray[np.bool_]:
    """Binary erosion of bool [n, y, x] by a segment of ``2 * radius + 1`` pixels along ``axis`` (1 or 2)."""
    out = mask.copy()
    length = mask.shape[axis]
    for shift in range(1, radius + 1):
        if shift >= length:
            out[...] = False
            break
        head = [slice(None)] * 3
        tail = [slice(None)] * 3
        head[axis], tail[axis] = slice(shift, None), slice(None, -shift)
        out[tuple(head)] &= mask[tuple(tail)]
        out[tuple(tail)] &= mask[tuple(head)]
        edge_low, edge_high = [slice(None)] * 3, [slice(None)] * 3
        edge_low[axis], edge_high[axis] = slice(0, shift), slice(length - shift, None)
        out[tuple(edge_low)] = False
        out[tuple(edge_high)] = False
    return out


def _crop(
    image: npt.NDArray[np.float32], box: npt.NDArray[np.int64], pad: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """float32 [c, h, w] window of ``image`` [c, rows, cols] inside ``box``; outside pixels get ``pad`` [c]."""
    top, left, bottom, right = (int(v) for v in box)
    _, rows, cols = image.shape
    if top >= 0 and left >= 0 and bottom <= rows and right <= cols:
        return image[:, top:bottom, left:right]
    out = np.empty((image.shape[0], bottom - top, right - left), dtype=np.float32)
    out[...] = pad[:, None, None]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(bottom, rows), min(right, cols)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = image[:, y0:y1, x0:x1]
    return out


def to_network_input(
    hu: npt.NDArray[np.float32],
    *,
    windows: Sequence[tuple[float, float]],
    image_size: int,
    crop_body: bool,
    resize_first: bool = False,
    window_buffer: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """The one preprocessing of slices for the network: window, optionally crop to the body, resize.

    Args:
        hu: float32 [n, rows, cols], Hounsfield units.
        windows: (centre, width) HU windows, one channel each.
        image_size: output side, pixels.
        crop_body: crop each slice to a square around the body first (:func:`body_boxes`), so the anatomy fills
            the input whatever the field of view; otherwise the whole image is resized (non-square: stretched).
        resize_first: resize the HU image, then window the small image (one full-size resize instead of one per
            channel, and no full-size windowing: ~2x less preprocessing time per slice with two or three windows).
            Averaging happens in HU rather than in window values, so pixels at edges that cross a window's limits
            differ (mean absolute difference ~0.006 of the window, measured on phantoms): a model must be served
            with the order it was trained with (its manifest records it).
        window_buffer: optional float32 [n, c, rows, cols] scratch buffer for the windowed slices (unused when
            ``resize_first``).

    Returns:
        float32 [n, len(windows), image_size, image_size] in [0, 1], a fresh array (never ``window_buffer``).
    """
    boxes = body_boxes(hu) if crop_body else None
    if resize_first:
        air = np.full(1, AIR_HU, dtype=np.float32)
        return window(_crop_and_resize(hu[:, None], boxes=boxes, pad=air, size=image_size)[:, 0], windows)
    windowed = window(hu, windows, out=window_buffer)
    pad = window(np.full((1, 1, 1), AIR_HU, dtype=np.float32), windows)[0, :, 0, 0]
    resized = _crop_and_resize(windowed, boxes=boxes, pad=pad, size=image_size)
    np.clip(resized, 0.0, 1.0, out=resized)  # interpolation rounding can step past 1 by ~1e-7
    return resized


def _crop_and_resize(
    images: npt.NDArray[np.float32],
    *,
    boxes: npt.NDArray[np.int64] | None,
    pad: npt.NDArray[np.float32],
    size: int,
) -> npt.NDArray[np.float32]:
    """float32 [n, c, size, size], a fresh array: each of ``images`` [n, c, rows, cols] cropped to its box of
    ``boxes`` [n, 4] (pixels outside the image get ``pad`` [c]) and resized; ``boxes=None``: the whole image."""
    if boxes is None:
        resized = resize(images, size)
        return resized.copy() if np.shares_memory(resized, images) else resized
    out = np.empty((images.shape[0], images.shape[1], size, size), dtype=np.float32)
    for k in range(images.shape[0]):
        out[k] = resize(_crop(images[k], boxes[k], pad)[None], size)[0]
    return out


def load_slices(
    series: SeriesInfo,
    indices: Sequence[int],
    *,
    windows: Sequence[tuple[float, float]],
    image_size: int,
    crop_body: bool = False,
    resize_first: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> npt.NDArray[np.float32]:
    """Decode, window and resize slices into network inputs, ``chunk_size`` slices at a time.

    Buffers are allocated once and reused across chunks (fresh large float arrays are slow on small VMs).

    Args:
        series: from :func:`scan` or :func:`read_series`.
        indices: slice indices, as for :func:`read_hu`.
        windows: (centre, width) HU windows, one channel each.
        image_size: output side, pixels.
        crop_body: crop each slice to the body first (see :func:`to_network_input`).
        resize_first: resize in HU, then window (see :func:`to_network_input`).
        chunk_size: slices per chunk (> 0).

    Returns:
        float32 [n, len(windows), image_size, image_size] in [0, 1].
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    idx = _check_indices(indices, series.n_slices)
    n_channels = len(windows)
    result = np.empty((len(idx), n_channels, image_size, image_size), dtype=np.float32)
    chunk = min(chunk_size, max(len(idx), 1))
    hu_buffer = np.empty((chunk, series.rows, series.columns), dtype=np.float32)
    window_buffer = None if resize_first else np.empty((chunk, n_channels, series.rows, series.columns), np.float32)
    for start in range(0, len(idx), chunk):
        part = idx[start : start + chunk]
        m = len(part)
        hu = read_hu(series, part, out=hu_buffer[:m])
        result[start : start + m] = to_network_input(
            hu,
            windows=windows,
            image_size=image_size,
            crop_body=crop_body,
            resize_first=resize_first,
            window_buffer=None if window_buffer is None else window_buffer[:m],
        )
    return result


# --------------------------------------------------------------------------------------------- discovery


@contextmanager
def _quiet() -> Iterator[None]:
    """Run pydicom without value validation (its messages can quote values such as names) or UserWarnings.

    Both are process-wide switches restored on exit; reading never needs validation, so an interleaving
    with another thread can only leave validation off for longer.
    """
    with disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _scan(root: Path) -> tuple[list[SeriesInfo], list[tuple[Path, DicomReadError]]]:
    """Discover series under ``root``; returns the series and (path, error) for every file left out."""
    if not root.exists():
        raise NoSeriesError(root, "no such file or folder")
    failures: list[tuple[Path, DicomReadError]] = []
    groups: dict[str, list[_FileHeader]] = {}
    n_files = 0
    with _quiet():
        for path in _iter_files(root, failures):
            n_files += 1
            try:
                header = _read_header(path)
            except DicomReadError as error:
                failures.append((path, error))
                continue
            groups.setdefault(header.series_uid, []).append(header)
        left_out: dict[str, list[tuple[Path, DicomReadError]]] = {}
        for failed_path, failure in failures:
            if failure.series_instance_uid in groups:
                left_out.setdefault(failure.series_instance_uid, []).append((failed_path, failure))
        series: list[SeriesInfo] = []
        for uid, headers in groups.items():
            try:
                series.append(_assemble(uid, headers, left_out=left_out.get(uid, [])))
            except DicomReadError as error:
                failures.extend((h.path, error) for h in headers)
    series.sort(key=lambda s: (s.study_instance_uid, _none_last(s.metadata.series_number), s.series_instance_uid))
    logger.debug("scanned %d files: %d CT series, %d files left out", n_files, len(series), len(failures))
    return series, failures


def _iter_files(root: Path, failures: list[tuple[Path, DicomReadError]]) -> Iterator[Path]:
    """Yield every regular file under ``root`` (or ``root`` itself), depth first, names sorted.

    Symbolic links are followed; a folder reached twice (link loop) is visited once. Folders that cannot be
    listed are reported in ``failures``.
    """
    if not root.is_dir():
        yield root
        return
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            info = Path(folder).stat()
            key = (info.st_dev, info.st_ino)
            if key in seen:
                continue
            seen.add(key)
            with os.scandir(folder) as entries:
                listed = sorted(entries, key=lambda e: e.name)
        except OSError as error:
            failures.append((Path(folder), DicomReadError(Path(folder), f"cannot list folder: {error.strerror}")))
            continue
        subfolders: list[str] = []
        for entry in listed:
            try:
                if entry.is_dir():
                    subfolders.append(entry.path)
                elif entry.is_file():
                    yield Path(entry.path)
            except OSError as error:
                failures.append((Path(entry.path), DicomReadError(Path(entry.path), f"cannot stat: {error}")))
        stack.extend(reversed(subfolders))


def _read_header(path: Path) -> _FileHeader:
    """Read what discovery needs from one file, reading at most :data:`HEAD_BYTES` in the common case.

    Raises:
        DicomReadError (a subclass naming the reason): the file is not a usable CT image file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise DicomReadError(path, f"cannot open: {error.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        head = os.read(fd, HEAD_BYTES)
        while len(head) < min(HEAD_BYTES, size):  # short reads (network file systems)
            more = os.read(fd, min(HEAD_BYTES, size) - len(head))
            if not more:
                break
            head += more
    except OSError as error:
        raise DicomReadError(path, f"cannot read: {error.strerror}") from None
    finally:
        os.close(fd)
    if not head:
        raise NotDicomError(path, "empty file (0 bytes)")
    has_preamble = len(head) >= 132 and head[128:132] == b"DICM"
    if not has_preamble and not _looks_like_raw_dicom(head):
        raise NotDicomError(path, "not a DICOM file (no 'DICM' marker at byte 128 and no DICOM element at byte 0)")
    if has_preamble:
        try:
            return _header_from_walk(path, head, size)
        except _WalkError:
            pass
    return _header_from_pydicom(path, size, force=not has_preamble)


def _looks_like_raw_dicom(head: bytes) -> bool:
    """True when a preamble-less file starts like a little-endian DICOM dataset (group 0002 or 0008)."""
    if len(head) < 8:
        return False
    group, element = struct.unpack_from("<HH", head)
    return group in (0x0002, 0x0008) and element < 0x0100


def _header_from_walk(path: Path, head: bytes, size: int) -> _FileHeader:
    """Build the header from the file head with the fast walker; raises _WalkError where pydicom must take over.

    The walk covers the File Meta group and the dataset up to group 0028 (every attribute discovery needs);
    Pixel Data is then located by its tag after that point (verified: even offset, OB/OW VR in explicit VR),
    so long private groups between 0028 and 7FE0 cost a byte search, not an element walk.
    """
    meta: dict[int, bytes] = {}
    pos = _walk(head, 132, len(head), explicit=True, values=meta, wanted=_WANTED_META, last_group=0x0002)
    if meta.get(_MEDIA_SOP_CLASS, b"").rstrip(b"\x00 ") == _DICOMDIR_SOP_CLASS.encode():
        raise NotCTError(path, "DICOMDIR (a media directory, not an image)")
    syntax = _text(meta.get(_TRANSFER_SYNTAX))
    if syntax == _IMPLICIT_LE:
        explicit = False
    elif syntax in (_EXPLICIT_LE, _RLE) or syntax.startswith(_ENCAPSULATED_PREFIX):
        explicit = True
    else:
        raise _WalkError(f"transfer syntax {syntax!r}")
    values: dict[int, bytes] = {}
    try:
        pos = _walk(head, pos, len(head), explicit=explicit, values=values, wanted=_WANTED, last_group=0x0028)
    except _TruncatedError:
        if size > len(head):
            raise  # the header goes past the head: let pydicom read the file
        raise CorruptDicomError(path, f"truncated: the file ends inside its header ({size} bytes)") from None
    if _MODALITY not in values or _SERIES_UID not in values:
        raise _WalkError("required attributes not found (elements out of order?)")
    _check_kind(
        path,
        modality=_text(values.get(_MODALITY)),
        sop_class=_text(values.get(_SOP_CLASS)),
        image_type=_text(values.get(_IMAGE_TYPE)),
    )
    if _FRAMES in values:
        raise _WalkError("multi-frame")  # functional groups: pydicom
    series_uid = _text(values.get(_SERIES_UID))
    try:
        pixel = _find_pixel_data(head, pos, explicit=explicit)
        if pixel is None and size <= len(head):
            raise MissingPixelDataError(path, "no Pixel Data (7FE0,0010) element")
        rows, columns = _us(values.get(_ROWS)), _us(values.get(_COLUMNS))
        samples = _us(values.get(_SAMPLES)) or 1
        rows, columns = _check_image(path, rows=rows, columns=columns, samples=samples, syntax=syntax)
        native = syntax in (_IMPLICIT_LE, _EXPLICIT_LE)
        expected = rows * columns * samples * (_us(values.get(_BITS_ALLOCATED)) or 0) // 8
        if pixel is None:
            pixel = _pixel_data_at_end(path, size=size, expected=expected, explicit=explicit) if native else None
            if pixel is None:
                raise _WalkError("Pixel Data not in the head")
        if native:
            _check_native_length(path, pixel=pixel, size=size, expected=expected)
        if not series_uid:
            raise CorruptDicomError(path, "no SeriesInstanceUID")
    except DicomReadError as error:
        error.series_instance_uid = series_uid or None
        raise
    frame = _Frame(
        path=path,
        frame=None,
        sop_instance_uid=_text(values.get(_SOP_INSTANCE)) or str(path),
        instance_number=_int_string(values.get(_INSTANCE_NUMBER)),
        position=_numbers(values.get(_POSITION), 3),
        orientation=_orientation(values.get(_ORIENTATION)),
        rows=rows,
        columns=columns,
        acquisition_time=_text(values.get(_ACQUISITION_TIME)),
    )
    return _FileHeader(path=path, series_uid=series_uid, study_uid=_text(values.get(_STUDY_UID)), frames=[frame])


def _walk(
    buf: bytes,
    pos: int,
    end: int,
    *,
    explicit: bool,
    values: dict[int, bytes],
    wanted: frozenset[int],
    last_group: int,
) -> int:
    """Walk top-level data elements (little endian) from ``pos``, recording the raw values of ``wanted`` tags.

    Args:
        buf: the file head. pos: offset of the first element. end: offset where the buffer ends.
        explicit: explicit VR (else implicit VR).
        values: filled with {tag: raw value bytes}.
        wanted: tags (group << 16 | element) to record.
        last_group: stop at the first element of a later group.

    Returns:
        The offset where the walk stopped: the first element past ``last_group``, or ``end``.

    Raises:
        _TruncatedError: an element runs past ``end``. _WalkError: something the walker does not parse.
    """
    explicit_head = _EXPLICIT_HEAD.unpack_from
    implicit_head = _IMPLICIT_HEAD.unpack_from
    u32 = _U32.unpack_from
    long_vrs, short_vrs = _LONG_VRS, _SHORT_VRS
    while pos < end:
        if pos + 8 > end:
            raise _TruncatedError
        vr = b""
        if explicit:
            group, element, vr, length = explicit_head(buf, pos)
            if group > last_group:
                return pos
            if vr in long_vrs:
                if pos + 12 > end:
                    raise _TruncatedError
                length = u32(buf, pos + 8)[0]
                value = pos + 12
            elif vr in short_vrs:
                value = pos + 8
            else:
                raise _WalkError(f"unexpected VR {vr!r}")
        else:
            group, element, length = implicit_head(buf, pos)
            if group > last_group:
                return pos
            value = pos + 8
        if length == _UNDEFINED:
            if group == 0xFFFE:
                raise _WalkError("item tag at dataset level")
            pos = _skip_sequence(buf, value, end, explicit=explicit and vr != b"UN")
            continue
        pos = value + length
        if pos > end:
            raise _TruncatedError
        tag = group << 16 | element
        if tag in wanted:
            values[tag] = buf[value:pos]
    return pos


def _skip_sequence(buf: bytes, pos: int, end: int, *, explicit: bool) -> int:
    """Skip an undefined-length sequence starting at its first item; returns the offset after its delimiter."""
    while True:
        if pos + 8 > end:
            raise _TruncatedError
        group, element, length = _IMPLICIT_HEAD.unpack_from(buf, pos)
        pos += 8
        if group != 0xFFFE:
            raise _WalkError("expected an item")
        if element == _SEQUENCE_END:
            return pos
        if element != _ITEM:
            raise _WalkError("expected an item")
        pos = _skip_item(buf, pos, end, explicit=explicit) if length == _UNDEFINED else pos + length


def _skip_item(buf: bytes, pos: int, end: int, *, explicit: bool) -> int:
    """Skip the elements of an undefined-length item; returns the offset after its delimiter."""
    while True:
        if pos + 8 > end:
            raise _TruncatedError
        group, element, length = _IMPLICIT_HEAD.unpack_from(buf, pos)
        if group == 0xFFFE and element == _ITEM_END:
            return pos + 8
        nested_explicit = explicit
        if explicit:
            vr = buf[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise _TruncatedError
                length = _U32.unpack_from(buf, pos + 8)[0]
                value = pos + 12
                nested_explicit = vr != b"UN"
            elif vr in _SHORT_VRS:
                length = _U16.unpack_from(buf, pos + 6)[0]
                value = pos + 8
            else:
                raise _WalkError(f"unexpected VR {vr!r}")
        else:
            value = pos + 8
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, value, end, explicit=nested_explicit)
        elif value + length > end:
            raise _TruncatedError
        else:
            pos = value + length


def _find_pixel_data(buf: bytes, pos: int, *, explicit: bool) -> tuple[int, int] | None:
    """(value offset, length) of the Pixel Data element at or after ``pos`` in ``buf``, or None.

    The tag is searched for rather than walked to; a candidate must start at an even offset (element lengths are
    even) and, in explicit VR, carry VR OB or OW with zero reserved bytes.
    """
    while True:
        found = buf.find(_PIXEL_TAG_BYTES, pos)
        if found < 0 or found + 12 > len(buf):
            return None
        if found % 2 == 0:
            if not explicit:
                return found + 8, int(_U32.unpack_from(buf, found + 4)[0])
            if buf[found + 4 : found + 6] in (b"OB", b"OW") and buf[found + 6 : found + 8] == b"\x00\x00":
                return found + 12, int(_U32.unpack_from(buf, found + 8)[0])
        pos = found + 1


def _pixel_data_at_end(path: Path, *, size: int, expected: int, explicit: bool) -> tuple[int, int] | None:
    """Native Pixel Data ending the file (the usual layout) when the header is longer than the head read."""
    start = size - expected - (12 if explicit else 8)
    if expected <= 0 or start < 132:
        return None
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            element = handle.read(12)
    except OSError:
        return None
    return _find_pixel_data(element, 0, explicit=explicit) if element.startswith(_PIXEL_TAG_BYTES) else None


def _header_from_pydicom(path: Path, size: int, *, force: bool) -> _FileHeader:
    """Parse the header with pydicom (stops before pixel data): the fallback for what the walker skips."""
    try:
        with path.open("rb") as handle:
            ds = pydicom.dcmread(handle, stop_before_pixels=True, force=force)
            pixel = _pixel_element(handle, ds)
        if _ds_syntax(ds) == _DEFLATED:  # the file position says nothing inside the deflated stream
            pixel = (0, _UNDEFINED) if "PixelData" in pydicom.dcmread(path, force=force) else None
    except OSError as error:
        raise DicomReadError(path, f"cannot read: {error.strerror}") from None
    except Exception as error:  # pydicom raises many types on malformed input
        if force:
            raise NotDicomError(path, f"not a DICOM file ({type(error).__name__}: {error})") from None
        raise CorruptDicomError(path, f"unreadable DICOM header ({type(error).__name__}: {error})") from None
    if force and "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
        raise NotDicomError(path, "not a DICOM file (no 'DICM' marker and no DICOM identifiers)")
    meta = getattr(ds, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if media_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise NotCTError(path, "DICOMDIR (a media directory, not an image)")
    _check_kind(
        path,
        modality=_ds_text(ds, "Modality"),
        sop_class=_ds_text(ds, "SOPClassUID"),
        image_type=_ds_text(ds, "ImageType"),
    )
    series_uid = _ds_text(ds, "SeriesInstanceUID")
    n_frames = _ds_int(ds, "NumberOfFrames")
    try:
        if pixel is None:
            raise MissingPixelDataError(path, "no Pixel Data (7FE0,0010) element")
        syntax = _ds_syntax(ds)
        rows, columns = _ds_int(ds, "Rows"), _ds_int(ds, "Columns")
        samples = _ds_int(ds, "SamplesPerPixel") or 1
        rows, columns = _check_image(path, rows=rows, columns=columns, samples=samples, syntax=syntax)
        if syntax in (_IMPLICIT_LE, _EXPLICIT_LE, "1.2.840.10008.1.2.2"):
            bits = _ds_int(ds, "BitsAllocated") or 0
            expected = rows * columns * samples * bits * max(n_frames or 1, 1) // 8
            _check_native_length(path, pixel=pixel, size=size, expected=expected)
        if not series_uid:
            raise CorruptDicomError(path, "no SeriesInstanceUID")
    except DicomReadError as error:
        error.series_instance_uid = series_uid or None
        raise
    header = _FileHeader(path=path, series_uid=series_uid, study_uid=_ds_text(ds, "StudyInstanceUID"))
    header.frames = _frames_of(ds, path, rows=rows, columns=columns, n_frames=n_frames)
    return header


def _pixel_element(handle: Any, ds: Any) -> tuple[int, int] | None:
    """(value offset, length) of Pixel Data at the handle's position after a stop_before_pixels parse."""
    start = handle.tell()
    raw = handle.read(12)
    if len(raw) < 8:
        return None
    implicit, little = ds.original_encoding
    order = "<" if little is not False else ">"
    group, element = struct.unpack(order + "HH", raw[:4])
    if (group << 16 | element) != _PIXEL_DATA:
        return None
    if implicit:
        return start + 8, int(struct.unpack(order + "L", raw[4:8])[0])
    if len(raw) < 12:
        return None
    return start + 12, int(struct.unpack(order + "L", raw[8:12])[0])


def _frames_of(ds: Any, path: Path, *, rows: int, columns: int, n_frames: int | None) -> list[_Frame]:
    """One _Frame per image: the file itself, or each frame of a multi-frame object (functional groups)."""
    sop = _ds_text(ds, "SOPInstanceUID") or str(path)
    instance = _ds_int(ds, "InstanceNumber")
    acquisition = _ds_text(ds, "AcquisitionTime") or _ds_text(ds, "AcquisitionDateTime")[8:]
    if n_frames is None:
        return [
            _Frame(
                path=path,
                frame=None,
                sop_instance_uid=sop,
                instance_number=instance,
                position=_ds_numbers(ds, "ImagePositionPatient", 3),
                orientation=_ds_numbers(ds, "ImageOrientationPatient", 6),
                rows=rows,
                columns=columns,
                acquisition_time=acquisition,
            )
        ]
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    frames: list[_Frame] = []
    for index in range(max(n_frames, 1)):
        item = per_frame[index] if index < len(per_frame) else None
        position = _group_numbers(item, shared, "PlanePositionSequence", "ImagePositionPatient", 3)
        orientation = _group_numbers(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient", 6)
        if n_frames <= 1:
            position = position or _ds_numbers(ds, "ImagePositionPatient", 3)
            orientation = orientation or _ds_numbers(ds, "ImageOrientationPatient", 6)
        frames.append(
            _Frame(
                path=path,
                frame=index,
                sop_instance_uid=sop,
                instance_number=instance,
                position=position,
                orientation=orientation or _ds_numbers(ds, "ImageOrientationPatient", 6),
                rows=rows,
                columns=columns,
                acquisition_time=acquisition,
            )
        )
    return frames


def _check_kind(path: Path, *, modality: str, sop_class: str, image_type: str) -> None:
    """Refuse anything but CT slices: other modalities, other SOP classes (when given), localizers (scouts)."""
    if modality != "CT":
        raise NotCTError(path, f"modality {modality!r} is not CT" if modality else "no Modality: not a CT image")
    if sop_class and sop_class not in _CT_SOP_CLASSES:
        from pydicom.uid import UID

        raise NotCTError(path, f"SOP class {UID(sop_class).name} is not a CT image storage class")
    if "LOCALIZER" in image_type.upper().split("\\"):
        raise NotCTError(path, f"CT localizer (scout) image (ImageType {image_type}), not a cross-sectional slice")


def _check_image(path: Path, *, rows: int | None, columns: int | None, samples: int, syntax: str) -> tuple[int, int]:
    """Refuse images without a size, colour images and undecodable transfer syntaxes; returns (rows, columns)."""
    if not rows or not columns:
        raise CorruptDicomError(path, "no Rows/Columns: not an image")
    if samples != 1:
        raise NotCTError(path, f"colour image (SamplesPerPixel {samples}), not a CT slice")
    if not _decoder_available(syntax):
        raise UnsupportedTransferSyntaxError(path, _decoder_problem(syntax))
    return rows, columns


def _check_native_length(path: Path, *, pixel: tuple[int, int], size: int, expected: int) -> None:
    """Refuse native pixel data shorter than the image needs, or running past the end of the file."""
    offset, length = pixel
    if length == _UNDEFINED:
        raise CorruptDicomError(path, "native pixel data with an undefined length")
    if offset + min(length, expected) > size:
        raise CorruptDicomError(
            path, f"truncated: pixel data needs {length} bytes from byte {offset} but the file has {size} bytes"
        )
    if length < expected:
        raise CorruptDicomError(path, f"pixel data holds {length} bytes, the image needs {expected}")


@lru_cache(maxsize=64)
def _decoder_available(syntax: str) -> bool:
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


def _decoder_problem(syntax: str) -> str:
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    name = UID(syntax).name if syntax else "(none)"
    try:
        missing = "; ".join(get_decoder(syntax).missing_dependencies)
    except NotImplementedError:
        return f"transfer syntax {name} ({syntax}) is not supported by pydicom"
    return f"no installed decoder for transfer syntax {name} ({syntax}): {missing}"


# ---------------------------------------------------------------------------------------------- assembly


def _assemble(
    series_uid: str, headers: list[_FileHeader], *, left_out: list[tuple[Path, DicomReadError]]
) -> SeriesInfo:
    """Deduplicate, check and sort the frames of one series; read its metadata from one file.

    ``left_out`` are files of this series skipped during discovery: they are reported in the problems.
    """
    problems: list[str] = []
    if left_out:
        listed = "; ".join(f"{p.name}: {e.reason}" for p, e in left_out[:_MAX_LISTED])
        more = f" and {len(left_out) - _MAX_LISTED} more" if len(left_out) > _MAX_LISTED else ""
        problems.append(f"{len(left_out)} file(s) of this series skipped ({listed}{more})")
    frames = _dedupe([f for h in sorted(headers, key=lambda h: h.path) for f in h.frames], problems)
    frames = _common_size(frames, problems)
    _check_orientation(series_uid, frames, folder=_common_folder(headers))
    ordered, positions = _sort(frames, problems)
    _spacing_problems(positions, problems)
    representative = ordered[len(ordered) // 2].path
    metadata, thickness, spacing = _series_metadata(representative, problems)
    acquisition = min((f.acquisition_time for f in frames if f.acquisition_time), default="")
    if acquisition and acquisition != metadata.acquisition_time:
        metadata = _replace_acquisition(metadata, acquisition)
    slices = tuple(
        SliceRef(path=f.path, frame=f.frame, position_mm=p, instance_number=f.instance_number)
        for f, p in zip(ordered, positions, strict=True)
    )
    logger.debug("series %s: %d slices, %d problems", series_uid, len(slices), len(problems))
    return SeriesInfo(
        series_instance_uid=series_uid,
        study_instance_uid=headers[0].study_uid,
        modality="CT",
        slices=slices,
        rows=ordered[0].rows,
        columns=ordered[0].columns,
        slice_thickness_mm=thickness,
        pixel_spacing_mm=spacing,
        metadata=metadata,
        problems=tuple(problems),
    )


def _dedupe(frames: list[_Frame], problems: list[str]) -> list[_Frame]:
    """Drop repeated (SOPInstanceUID, frame) pairs: the same image stored twice."""
    seen: dict[tuple[str, int | None], _Frame] = {}
    repeats: list[Path] = []
    for frame in frames:
        key = (frame.sop_instance_uid, frame.frame)
        if key in seen:
            repeats.append(frame.path)
        else:
            seen[key] = frame
    if repeats:
        names = ", ".join(p.name for p in repeats[:_MAX_LISTED])
        problems.append(f"{len(repeats)} duplicate image(s) (same SOPInstanceUID) ignored: {names}")
    return list(seen.values())


def _common_size(frames: list[_Frame], problems: list[str]) -> list[_Frame]:
    """Keep the frames of the most common Rows x Columns; report the others."""
    sizes = Counter((f.rows, f.columns) for f in frames)
    if len(sizes) == 1:
        return frames
    (rows, columns), _ = sizes.most_common(1)[0]
    kept = [f for f in frames if (f.rows, f.columns) == (rows, columns)]
    others = ", ".join(f"{r}x{c}" for (r, c) in sizes if (r, c) != (rows, columns))
    problems.append(
        f"{len(frames) - len(kept)} slice(s) of another size ({others}) left out; series is {rows}x{columns}"
    )
    return kept


def _check_orientation(series_uid: str, frames: list[_Frame], *, folder: Path) -> None:
    """Raise MixedOrientationError when the frames with an orientation do not share one."""
    groups: list[tuple[tuple[float, ...], int]] = []
    for frame in frames:
        if frame.orientation is None:
            continue
        for k, (reference, count) in enumerate(groups):
            if max(abs(a - b) for a, b in zip(frame.orientation, reference, strict=True)) <= _ORIENTATION_TOLERANCE:
                groups[k] = (reference, count + 1)
                break
        else:
            groups.append((frame.orientation, 1))
    if len(groups) > 1:
        described = "; ".join(f"{count} slice(s) at [{_fmt(ref)}]" for ref, count in groups[:_MAX_LISTED])
        raise MixedOrientationError(
            folder,
            f"mixed orientations in series {series_uid}: {len(groups)} ImageOrientationPatient values ({described})",
        )


def _sort(frames: list[_Frame], problems: list[str]) -> tuple[list[_Frame], list[float | None]]:
    """Sort along the slice normal when every frame has geometry, else by InstanceNumber."""
    normal = _normal(frames[0].orientation) if frames[0].orientation is not None else None
    if normal is not None and all(f.position is not None and f.orientation is not None for f in frames):
        keyed = [(_dot(f.position, normal), f) for f in frames]  # type: ignore[arg-type]
        keyed.sort(key=lambda pf: (pf[0], _none_last(pf[1].instance_number), pf[1].path, pf[1].frame or 0))
        return [f for _, f in keyed], [p for p, _ in keyed]
    missing = sum(1 for f in frames if f.position is None or f.orientation is None)
    reason = f"{missing} of {len(frames)}" if normal is not None else "all"
    problems.append(
        f"ImagePositionPatient/ImageOrientationPatient missing on {reason} slices: ordered by InstanceNumber"
    )
    if any(f.instance_number is None for f in frames):
        problems.append("InstanceNumber missing on some slices: they are ordered by file name, after the others")
    ordered = sorted(frames, key=lambda f: (_none_last(f.instance_number), f.path, f.frame or 0))
    positions: list[float | None] = []
    for f in ordered:
        own = _normal(f.orientation) if f.orientation is not None else None
        positions.append(_dot(f.position, own) if f.position is not None and own is not None else None)
    return ordered, positions


def _spacing_problems(positions: list[float | None], problems: list[str]) -> None:
    """Report repeated positions and gaps wider than 1.5x the median spacing."""
    known = [p for p in positions if p is not None]
    if len(known) < 2 or len(known) != len(positions):
        return
    steps = np.diff(np.asarray(known, dtype=np.float64))
    repeated = int(np.count_nonzero(np.abs(steps) <= _DUPLICATE_POSITION_MM))
    if repeated:
        problems.append(f"{repeated} slice(s) share a position with the previous slice (duplicate positions)")
    moving = np.abs(steps[np.abs(steps) > _DUPLICATE_POSITION_MM])
    if moving.size == 0:
        return
    median = float(np.median(moving))
    gaps = [(i, float(s)) for i, s in enumerate(steps) if abs(s) > _GAP_FACTOR * median]
    if gaps:
        listed = ", ".join(f"{s:.2f} mm after slice {i}" for i, s in gaps[:_MAX_LISTED])
        more = f" and {len(gaps) - _MAX_LISTED} more" if len(gaps) > _MAX_LISTED else ""
        problems.append(
            f"{len(gaps)} gap(s) wider than {_GAP_FACTOR}x the median spacing {median:.2f} mm: {listed}{more}"
        )


def _series_metadata(
    path: Path, problems: list[str]
) -> tuple[SeriesMetadata, float | None, tuple[float, float] | None]:
    """Series metadata, slice thickness and pixel spacing from one file's full header."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as error:  # the file parsed before; keep the series, note the problem
        problems.append(f"series metadata unreadable from {path.name}: {type(error).__name__}")
        return _EMPTY_METADATA, None, None
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    first = _first_item(ds, "PerFrameFunctionalGroupsSequence")
    thickness = _ds_float(ds, "SliceThickness")
    if thickness is None:
        thickness = _group_float(first, shared, "PixelMeasuresSequence", "SliceThickness")
    spacing = _ds_numbers(ds, "PixelSpacing", 2) or _group_numbers(
        first, shared, "PixelMeasuresSequence", "PixelSpacing", 2
    )
    kvp = _ds_float(ds, "KVP")
    if kvp is None:
        kvp = _group_float(first, shared, "CTXRayDetailsSequence", "KVP")
    kernel = _ds_text(ds, "ConvolutionKernel") or _group_text(
        first, shared, "CTReconstructionSequence", "ConvolutionKernel"
    )
    metadata = SeriesMetadata(
        series_description=_ds_text(ds, "SeriesDescription"),
        series_number=_ds_int(ds, "SeriesNumber"),
        body_part_examined=_ds_text(ds, "BodyPartExamined"),
        contrast_bolus_agent=_ds_text(ds, "ContrastBolusAgent"),
        contrast_bolus_route=_ds_text(ds, "ContrastBolusRoute"),
        contrast_bolus_volume_ml=_ds_float(ds, "ContrastBolusVolume"),
        contrast_bolus_start_time=_ds_text(ds, "ContrastBolusStartTime"),
        acquisition_time=_ds_text(ds, "AcquisitionTime") or _ds_text(ds, "AcquisitionDateTime")[8:],
        series_time=_ds_text(ds, "SeriesTime"),
        study_date=_ds_text(ds, "StudyDate"),
        manufacturer=_ds_text(ds, "Manufacturer"),
        convolution_kernel=kernel,
        kvp=kvp,
    )
    pixel_spacing = (spacing[0], spacing[1]) if spacing is not None else None
    return metadata, thickness, pixel_spacing


_EMPTY_METADATA: Final = SeriesMetadata()


def _replace_acquisition(metadata: SeriesMetadata, acquisition_time: str) -> SeriesMetadata:
    from dataclasses import replace

    return replace(metadata, acquisition_time=acquisition_time)


def _common_folder(headers: list[_FileHeader]) -> Path:
    paths = [str(h.path.parent) for h in headers]
    try:
        return Path(os.path.commonpath(paths))
    except ValueError:
        return headers[0].path.parent


# ---------------------------------------------------------------------------------------------- decoding


def _decode_file(
    path: Path, targets: list[tuple[int, int | None]], *, out: npt.NDArray[np.float32], rows: int, columns: int
) -> None:
    """Decode the frames of one file named in ``targets`` [(row of ``out``, frame)] into ``out`` as HU."""
    frames = sorted({frame for _, frame in targets if frame is not None})
    try:
        header, arrays = _decode_streaming(path, frames)
    except Exception as error:  # any failure: retry the plain way, then report the first error
        try:
            header, arrays = _decode_whole(path, frames)
        except Exception:  # the retry failed too: the first error says more
            raise _decode_error(path, error) from None
    padding = _padding(header)
    for row, frame in targets:
        stored = arrays[frame]
        if stored.shape != (rows, columns):
            raise CorruptDicomError(path, f"decoded image is {stored.shape}, the series is ({rows}, {columns})")
        _to_hu(stored, header, frame=frame, padding=padding, out=out[row])


def _decode_streaming(path: Path, frames: list[int]) -> tuple[Any, dict[int | None, Any]]:
    """pydicom's file-based decoding: reads the header and only the needed frames' bytes."""
    from pydicom.dataset import Dataset
    from pydicom.pixels.utils import iter_pixels, pixel_array

    header = Dataset()
    if not frames:
        return header, {None: pixel_array(path, ds_out=header)}
    tags = [_SHARED_GROUPS, _PER_FRAME_GROUPS]
    decoded = iter_pixels(path, ds_out=header, specific_tags=tags, indices=frames)
    return header, dict(zip(frames, decoded, strict=True))


def _decode_whole(path: Path, frames: list[int]) -> tuple[Any, dict[int | None, Any]]:
    """Read the whole dataset and decode it (deflated files and anything the streaming path refuses)."""
    ds = pydicom.dcmread(path, force=True)
    pixels = ds.pixel_array
    if not frames:
        return ds, {None: pixels}
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    return ds, {frame: pixels[frame] for frame in frames}


def _decode_error(path: Path, error: Exception) -> DicomReadError:
    """The typed error for a decoding failure."""
    if isinstance(error, OSError):
        return DicomReadError(path, f"cannot read: {error.strerror or error}")
    if isinstance(error, NotImplementedError) or (
        isinstance(error, RuntimeError) and "missing dependencies" in str(error)
    ):
        return UnsupportedTransferSyntaxError(path, f"cannot decode pixel data: {error}")
    if isinstance(error, AttributeError) and "Pixel Data" in str(error):
        return MissingPixelDataError(path, "no Pixel Data (7FE0,0010) element")
    # decoders raise RuntimeError (every plugin failed), ValueError, EOFError, struct.error, ... on bad data
    return CorruptDicomError(path, f"cannot decode pixel data ({type(error).__name__}: {error})")


def _to_hu(
    stored: npt.NDArray[Any],
    header: Any,
    *,
    frame: int | None,
    padding: tuple[int, int] | None,
    out: npt.NDArray[np.float32],
) -> None:
    """Modality transform of stored values [y, x] into ``out`` (float32 [y, x], HU); padding -> air."""
    rescale = _rescale(header, frame)
    if rescale is None and "ModalityLUTSequence" in header:
        from pydicom.pixels.processing import apply_modality_lut

        out[...] = apply_modality_lut(stored, header)
    else:
        slope, intercept = rescale or (1.0, 0.0)
        if slope == 1.0:
            out[...] = stored
        else:
            np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
        if intercept != 0.0:
            out += np.float32(intercept)
    if padding is not None:
        low, high = padding
        mask = stored == low if low == high else (stored >= low) & (stored <= high)
        out[mask] = AIR_HU


def _rescale(header: Any, frame: int | None) -> tuple[float, float] | None:
    """(slope, intercept): per-frame, then shared functional groups, then the top-level attributes."""
    if frame is not None:
        per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
        item = per_frame[frame] if frame < len(per_frame) else None
        shared = _first_item(header, "SharedFunctionalGroupsSequence")
        for source in (item, shared):
            transform = _first_item(source, "PixelValueTransformationSequence") if source is not None else None
            if transform is not None and "RescaleSlope" in transform:
                return _ds_float(transform, "RescaleSlope") or 1.0, _ds_float(transform, "RescaleIntercept") or 0.0
    if "RescaleSlope" in header or "RescaleIntercept" in header:
        slope = _ds_float(header, "RescaleSlope")
        return 1.0 if slope is None else slope, _ds_float(header, "RescaleIntercept") or 0.0
    return None


def _padding(header: Any) -> tuple[int, int] | None:
    """Stored-value range marked as padding: (PixelPaddingValue, PixelPaddingRangeLimit or the same value)."""
    value = _ds_int(header, "PixelPaddingValue")
    if value is None:
        return None
    limit = _ds_int(header, "PixelPaddingRangeLimit")
    signed = _ds_int(header, "PixelRepresentation") == 1
    allocated = _ds_int(header, "BitsAllocated") or 16
    low = _as_stored(value, signed=signed, bits_allocated=allocated)
    high = low if limit is None else _as_stored(limit, signed=signed, bits_allocated=allocated)
    return (low, high) if low <= high else (high, low)


def _as_stored(value: int, *, signed: bool, bits_allocated: int) -> int:
    """Interpret a padding value written unsigned (VR US) as the signed stored value it encodes."""
    if signed and value >= 1 << (bits_allocated - 1):
        return value - (1 << bits_allocated)
    return value


def _check_indices(indices: Sequence[int], n_slices: int) -> list[int]:
    result: list[int] = []
    for raw in indices:
        i = int(raw)
        if not 0 <= i < n_slices:
            raise IndexError(f"slice index {i} out of range for a series of {n_slices} slices")
        result.append(i)
    return result


# ----------------------------------------------------------------------------------------- value helpers


def _text(raw: bytes | None) -> str:
    if not raw:
        return ""
    return raw.decode("ascii", "replace").strip(" \x00")


def _us(raw: bytes | None) -> int | None:
    if raw is None or len(raw) < 2:
        return None
    return int(_U16.unpack_from(raw)[0])


def _int_string(raw: bytes | None) -> int | None:
    text = _text(raw).split("\\")[0].strip()
    try:
        return int(text) if text else None
    except ValueError:
        try:
            return int(float(text))
        except ValueError:
            return None


def _numbers(raw: bytes | None, count: int) -> tuple[float, ...] | None:
    text = _text(raw)
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        return None
    return values


@lru_cache(maxsize=256)
def _orientation(raw: bytes | None) -> tuple[float, ...] | None:
    """ImageOrientationPatient from raw bytes; cached, since every slice of a series repeats the same bytes."""
    return _numbers(raw, 6)


def _ds_syntax(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        return str(syntax)
    implicit, little = ds.original_encoding
    if little is False:
        return "1.2.840.10008.1.2.2"
    return _IMPLICIT_LE if implicit else _EXPLICIT_LE


def _ds_text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword) if ds is not None else None
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _ds_int(ds: Any, keyword: str) -> int | None:
    value = ds.get(keyword) if ds is not None else None
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        return int(_U16.unpack_from(value)[0]) if len(value) == 2 else None
    try:
        return int(value[0] if type(value).__name__ == "MultiValue" else value)
    except (TypeError, ValueError, IndexError):
        return None


def _ds_float(ds: Any, keyword: str) -> float | None:
    value = ds.get(keyword) if ds is not None else None
    if value is None or value == "":
        return None
    try:
        number = float(value[0] if type(value).__name__ == "MultiValue" else value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def _ds_numbers(ds: Any, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword) if ds is not None else None
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        return None
    return values


def _first_item(ds: Any, keyword: str) -> Any:
    sequence = ds.get(keyword) if ds is not None else None
    return sequence[0] if sequence else None


def _group_item(item: Any, shared: Any, keyword: str) -> Any:
    """The functional group macro ``keyword``: from the per-frame item first, then the shared item."""
    for source in (item, shared):
        found = _first_item(source, keyword)
        if found is not None:
            return found
    return None


def _group_numbers(item: Any, shared: Any, group: str, keyword: str, count: int) -> tuple[float, ...] | None:
    return _ds_numbers(_group_item(item, shared, group), keyword, count)


def _group_float(item: Any, shared: Any, group: str, keyword: str) -> float | None:
    return _ds_float(_group_item(item, shared, group), keyword)


def _group_text(item: Any, shared: Any, group: str, keyword: str) -> str:
    return _ds_text(_group_item(item, shared, group), keyword)


def _normal(orientation: tuple[float, ...] | None) -> tuple[float, float, float] | None:
    """Unit slice normal (row x column cosines), sign chosen so its largest component is positive."""
    if orientation is None:
        return None
    rx, ry, rz, cx, cy, cz = orientation
    nx, ny, nz = ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx
    norm = math.sqrt(nx * nx + ny * ny + nz * nz)
    if norm < 1e-6:
        return None
    largest = max((nx, ny, nz), key=abs)
    sign = 1.0 if largest > 0 else -1.0
    return nx * sign / norm, ny * sign / norm, nz * sign / norm


def _dot(position: tuple[float, ...], normal: tuple[float, float, float]) -> float:
    return position[0] * normal[0] + position[1] * normal[1] + position[2] * normal[2]


def _none_last(value: int | None) -> tuple[int, int]:
    return (1, 0) if value is None else (0, value)


def _fmt(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:g}" for v in values)
