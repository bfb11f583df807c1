"""Tiny synthetic labelled series for training tests: fake SeriesInfo records and a stand-in slice loader.

The loader draws a dark disc (the body) with a bright blob whose position and brightness depend on the phase, plus
seeded noise, so a tiny network separates the phases within an epoch or two. It replaces
``backend.ml.dataset.load_slices`` (monkeypatched), so these tests exercise the training code without DICOM files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from backend.ml.dicom import SeriesInfo, SeriesMetadata, SliceRef
from backend.ml.phases import PHASES
from backend.ml.train import LabeledSeries

METADATA = SeriesMetadata(body_part_examined="ABDOMEN")


def fake_series(uid: str, study: str, *, n_slices: int = 20) -> SeriesInfo:
    """A SeriesInfo whose slice paths do not exist (the fake loader never opens them)."""
    slices = tuple(
        SliceRef(path=Path(f"/nonexistent/{uid}/{i}.dcm"), frame=None, position_mm=float(i), instance_number=i + 1)
        for i in range(n_slices)
    )
    return SeriesInfo(
        series_instance_uid=uid,
        study_instance_uid=study,
        modality="CT",
        slices=slices,
        rows=64,
        columns=64,
        slice_thickness_mm=5.0,
        pixel_spacing_mm=(0.7, 0.7),
        metadata=METADATA,
        problems=(),
    )


def make_examples(n_studies: int = 8, *, n_slices: int = 20) -> list[LabeledSeries]:
    """``n_studies`` studies, each with one series of every phase (4 * n_studies series)."""
    return [
        LabeledSeries(series=fake_series(f"1.2.{s}.{p}", f"1.2.{s}", n_slices=n_slices), phase=phase)
        for s in range(n_studies)
        for p, phase in enumerate(PHASES)
    ]


BLOB_CENTRES = ((0.28, 0.5), (0.42, 0.5), (0.58, 0.5), (0.72, 0.5))
"""(y, x) of the bright blob per phase index, as fractions of the image side (x fixed: training flips x)."""


def label_of(uid: str) -> int:
    """Phase index encoded in a synthetic series uid (its last component)."""
    return int(uid.rsplit(".", 1)[1])


def fake_load_slices(
    series: SeriesInfo,
    indices: Sequence[int],
    *,
    windows: Sequence[tuple[float, float]],
    image_size: int,
    crop_body: bool = False,
    resize_first: bool = False,
) -> np.ndarray:
    """float32 [n, c, S, S] in [0, 1]: a disc (the body) and a bright blob whose place and level give the phase."""
    label = label_of(series.series_instance_uid)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    body = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16).astype(np.float32) * 0.4
    cy, cx = BLOB_CENTRES[label]
    blob = (((yy - cy) ** 2 + (xx - cx) ** 2) < 0.005).astype(np.float32)
    out = np.empty((len(indices), len(windows), image_size, image_size), dtype=np.float32)
    for k, index in enumerate(indices):
        seed = int.from_bytes(hashlib.sha256(f"{series.series_instance_uid}/{index}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        image = body + blob * (0.5 + 0.1 * label) + rng.normal(0.0, 0.05, body.shape)
        out[k] = np.clip(image, 0.0, 1.0)[None]
    return out


def logits_to_probs(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """Element-wise sigmoid."""
    return 1.0 / (1.0 + np.exp(-logits))


def transitional_world(n_per_phase: int, *, seed: int) -> tuple[list[NDArray[np.float64]], NDArray[np.int64]]:
    """Series of 6-12 slices whose phase a slice vote cannot see: "others" slices lean venous, only less so.

    Per phase, the slice logits are a phase centre plus noise; an "others" series' slices have their highest logit on
    venous (so every slice votes venous) but a lower venous and a higher others logit than a venous series.
    """
    centres = np.array(
        [
            [2.0, -3.0, -3.0, -2.0],  # non_contrast
            [-3.0, 2.0, -2.0, -2.0],  # arterial
            [-3.0, -2.0, 2.5, -2.5],  # venous
            [-3.0, -1.0, 1.0, 0.0],  # others (transitional): venous arg-max, higher others
        ]
    )
    rng = np.random.default_rng(seed)
    series, labels = [], []
    for phase in range(len(PHASES)):
        for _ in range(n_per_phase):
            k = int(rng.integers(6, 13))
            offset = rng.normal(0.0, 0.25, size=4)  # a patient's own shift
            series.append(logits_to_probs(centres[phase] + offset + rng.normal(0.0, 0.3, size=(k, 4))))
            labels.append(phase)
    return series, np.asarray(labels)
