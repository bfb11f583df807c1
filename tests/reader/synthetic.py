"""Small synthetic CT files with controlled geometry and encoding, built with pydicom's Dataset API."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def data_file(name: str) -> Path:
    """Path of a file shipped with pydicom or pydicom-data (fails the test clearly when it is missing)."""
    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(f"pydicom test file {name!r} not found (is pydicom-data installed?)")
    return Path(str(found))


def copy_testdata(name: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_file(name), dest)
    return dest


def write_ct(
    path: Path,
    *,
    stored: np.ndarray,
    series_uid: str,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    position: Sequence[float] | None = (0.0, 0.0, 0.0),
    orientation: Sequence[float] | None = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    instance: int | None = 1,
    slope: float = 1.0,
    intercept: float = -1024.0,
    bits_stored: int = 16,
    signed: bool = True,
    padding: int | None = None,
    padding_limit: int | None = None,
    modality: str = "CT",
    sop_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write one CT slice whose stored pixel words are exactly ``stored`` (uint16 or int16 [rows, cols])."""
    sop = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = "synthetic"
    ds.SeriesNumber = 3
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = list(position)
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
    ds.SliceThickness = 2.0
    ds.PixelSpacing = [0.8, 0.8]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if padding is not None:
        ds.PixelPaddingValue = padding
    if padding_limit is not None:
        ds.PixelPaddingRangeLimit = padding_limit
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2" if not signed else "<i2", copy=False).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    *,
    n: int,
    spacing: float = 2.0,
    size: int = 32,
    series_uid: str | None = None,
    names: Sequence[str] | None = None,
    **kwargs: Any,
) -> tuple[str, list[Path]]:
    """Write ``n`` axial slices at z = i * spacing whose pixels all equal 1000 + i (stored); returns (uid, paths)."""
    uid = series_uid or generate_uid()
    paths = []
    for i in range(n):
        name = names[i] if names is not None else f"slice{i:03d}.dcm"
        stored = np.full((size, size), 1000 + i, dtype=np.int16)
        paths.append(
            write_ct(
                folder / name, stored=stored, series_uid=uid, position=(0.0, 0.0, i * spacing), instance=i + 1, **kwargs
            )
        )
    return uid, paths


def edited_copy(source: Path, dest: Path, **changes: Any) -> Path:
    """Copy a DICOM file, setting (or deleting, when the value is None) the given attributes."""
    ds = pydicom.dcmread(source)
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


def pixel_data_offset(path: Path) -> int:
    """Byte offset of the Pixel Data value in a native explicit-VR little-endian file (found by pydicom)."""
    with path.open("rb") as handle:
        pydicom.dcmread(handle, stop_before_pixels=True)
        start = handle.tell()
        tag = handle.read(4)
    if tag != b"\xe0\x7f\x10\x00":
        raise ValueError(f"{path}: no Pixel Data after the header")
    return start + 12  # tag (4) + VR (2) + reserved (2) + length (4)
