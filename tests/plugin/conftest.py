"""Builders for the plugin unit tests: SeriesInfo records without DICOM files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from backend.ml.dicom import SeriesInfo, SeriesMetadata, SliceRef

SeriesFactory = Callable[..., SeriesInfo]


def _metadata(**overrides: object) -> SeriesMetadata:
    base = SeriesMetadata(body_part_examined="ABDOMEN", study_date="20240101")
    return replace(base, **overrides)


@pytest.fixture
def make_series(tmp_path: Path) -> SeriesFactory:
    """Build a SeriesInfo whose slices live in ``tmp_path/<folder>`` (files are not created)."""

    def build(
        uid: str,
        *,
        study: str = "1.2.3",
        folder: str | None = None,
        n_slices: int = 10,
        thickness: float | None = 2.5,
        **metadata: object,
    ) -> SeriesInfo:
        directory = tmp_path / "dicom" / (folder if folder is not None else uid)
        slices = tuple(
            SliceRef(path=directory / f"{i:04d}.dcm", frame=None, position_mm=i * 2.5, instance_number=i + 1)
            for i in range(n_slices)
        )
        return SeriesInfo(
            series_instance_uid=uid,
            study_instance_uid=study,
            modality="CT",
            slices=slices,
            rows=64,
            columns=64,
            slice_thickness_mm=thickness,
            pixel_spacing_mm=(0.8, 0.8),
            metadata=_metadata(**metadata),
            problems=(),
        )

    return build
