"""Read phantom series back from disk with plain pydicom (independent of the project's reader)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom


def read_volume(folder: Path) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """HU float32 [z, y, x] sorted by ImagePositionPatient z ascending, and the datasets in that order."""
    datasets = [pydicom.dcmread(path) for path in sorted(folder.rglob("*")) if path.is_file()]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack(
        [ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets]
    )
    return hu, datasets


def eroded(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Erode a boolean [z, y, x] mask in-plane by ``steps`` pixels (4-neighbourhood)."""
    out = mask.copy()
    for _ in range(steps):
        inner = out.copy()
        inner[:, 1:, :] &= out[:, :-1, :]
        inner[:, :-1, :] &= out[:, 1:, :]
        inner[:, :, 1:] &= out[:, :, :-1]
        inner[:, :, :-1] &= out[:, :, 1:]
        out = inner
    return out
