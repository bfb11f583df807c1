"""Synthetic multi-phase abdominal CT: plan, render and write DICOM series with known contrast phase.

The phantom encodes contrast PHYSIOLOGY (see :mod:`backend.ml.phantom_physiology`) on per-patient anatomy (see
:mod:`backend.ml.phantom_anatomy`). Everything else a real archive varies is drawn independently of the phase:
coverage, slice thickness and spacing, matrix, field of view, habitus, noise, reconstruction kernel, rescale
convention, bits stored, transfer syntax, file names, folder nesting, InstanceNumber order and description quality.
The only phase-related metadata are the physiologically real ones: acquisition order and times within a study,
ContrastBolusAgent/StartTime (sometimes missing) and a SeriesDescription that is wrong or empty in ~15% of series.

Public API::

    generate_dataset(out_dir, n_per_class=..., seed=...) -> list[PhantomRecord]   # DICOM + out_dir/labels.csv
    write_phantom_series(out_dir, phase=..., seed=..., n_slices=300, transfer_syntax="jpegls") -> PhantomRecord
    read_labels(path) -> list[PhantomRecord]
    plan_dataset(...) / plan_series(...) -> SeriesPlan      # every draw, no pixels (fast)
    render_hu(plan) -> RenderedSeries(hu, labels, geometry)  # in-memory volume, exactly the HU that is written
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from backend.ml.phantom_anatomy import body_extent, build_shapes, draw_patient, landmark
from backend.ml.phantom_physiology import (
    OTHERS_SUBPHASES,
    OTHERS_WEIGHTS,
    SCAN_DELAY_S,
    SUBPHASE_PHASE,
    SUBPHASES,
    SeriesAttenuation,
    TextureField,
    draw_patient_physiology,
    draw_series_attenuation,
    tissue_hu,
)
from backend.ml.phantom_shapes import Grid, paint_labels
from backend.ml.phases import PHASES, Phase, as_phase

logger = logging.getLogger(__name__)

LABEL_COLUMNS: Final[tuple[str, ...]] = (
    "series_instance_uid",
    "study_instance_uid",
    "phase",
    "subphase",
    "n_slices",
    "slice_thickness_mm",
    "coverage",
    "transfer_syntax",
    "series_description",
    "description_is_wrong",
    "relative_dir",
)
TRANSFER_SYNTAXES: Final[dict[str, str]] = {
    "explicit_little": "1.2.840.10008.1.2.1",
    "implicit_little": "1.2.840.10008.1.2",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "jpegls": "1.2.840.10008.1.2.4.80",
    "jpeg_lossless": "1.2.840.10008.1.2.4.70",
    "rle": "1.2.840.10008.1.2.5",
}
CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2"
UID_ROOT: Final[str] = "1.2.826.0.1.3680043.8.498."  # pydicom's root for generated UIDs
DEFAULT_MAX_SLICES: Final[int] = 64
DEFAULT_MATRIX_SIZES: Final[tuple[tuple[int, float], ...]] = ((512, 0.5), (384, 0.2), (256, 0.3))

# Every distribution below is used identically for every phase.
_COVERAGES: Final[tuple[tuple[str, float], ...]] = (
    ("abdomen", 0.25),
    ("upper_abdomen", 0.1),
    ("abdomen_pelvis", 0.4),
    ("chest_abdomen_pelvis", 0.15),
    ("abdomen_pelvis_thighs", 0.1),
)
_THICKNESSES: Final[tuple[tuple[float, float], ...]] = (
    (0.625, 0.05),
    (1.0, 0.1),
    (1.25, 0.1),
    (1.5, 0.05),
    (2.0, 0.1),
    (2.5, 0.1),
    (3.0, 0.2),
    (5.0, 0.3),
)
_MIXED_SYNTAXES: Final[tuple[tuple[str, float], ...]] = (
    ("explicit_little", 0.3),
    ("implicit_little", 0.1),
    ("jpeg_lossless", 0.2),
    ("jpeg2000", 0.12),
    ("jpegls", 0.16),
    ("rle", 0.12),
)
# (pixel representation, bits stored, intercept, slope, padding stored value or None)
_RESCALES: Final[dict[str, tuple[int, int, float, float, int | None]]] = {
    "u12": (0, 12, -1024.0, 1.0, None),
    "u16": (0, 16, -1024.0, 1.0, None),
    "s16": (1, 16, 0.0, 1.0, -2000),
    "s16_m1024": (1, 16, -1024.0, 1.0, -2000),
    "s12": (1, 12, 0.0, 1.0, -2048),
    "u16_half": (0, 16, -1024.0, 0.5, None),
}
_RESCALE_WEIGHTS: Final[tuple[tuple[str, float], ...]] = (
    ("u12", 0.3),
    ("u16", 0.15),
    ("s16", 0.25),
    ("s16_m1024", 0.15),
    ("s12", 0.1),
    ("u16_half", 0.05),
)
_SCANNERS: Final[tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...]] = (
    ("SIEMENS", "SOMATOM Definition AS+", ("B30f", "B31f", "I30f", "Br36", "B26f"), ("B60f", "B70f", "Br64", "I70f")),
    ("GE MEDICAL SYSTEMS", "Revolution CT", ("STANDARD", "SOFT", "DETAIL"), ("BONE", "LUNG", "BONEPLUS")),
    ("Philips", "iCT 256", ("B", "A", "C"), ("D", "YC", "L")),
    ("TOSHIBA", "Aquilion ONE", ("FC08", "FC18", "FC03"), ("FC30", "FC52", "FC86")),
)
_PROTOCOLS: Final[tuple[tuple[tuple[str, ...], float], ...]] = (
    (("native", "late_arterial", "portal_venous"), 0.2),
    (("native", "late_arterial", "portal_venous", "delayed"), 0.14),
    (("native", "portal_venous", "delayed"), 0.14),
    (("late_arterial", "portal_venous"), 0.12),
    (("portal_venous",), 0.1),
    (("native",), 0.07),
    (("early_arterial", "portal_venous"), 0.07),
    (("native", "transitional", "portal_venous"), 0.06),
    (("native", "early_arterial", "late_arterial", "portal_venous"), 0.04),
    (("native", "delayed"), 0.03),
    (("transitional", "delayed"), 0.03),
)
_DESCRIPTIONS: Final[dict[str, tuple[str, ...]]] = {
    "native": ("ABD NATIVE", "Non-contrast", "NC ABDOMEN", "PLAIN", "ABDOMEN W/O", "Unenhanced", "Nativ", "NON CON"),
    "late_arterial": ("ARTERIAL", "ABD ART", "Late arterial", "AP Arterial", "LIVER ARTERIAL", "Arterielle Phase"),
    "portal_venous": ("PORTAL VENOUS", "ABD PV", "Venous 70s", "Portal", "Portalvenoes", "ABD/PELVIS PV", "VENOUS"),
    "delayed": ("DELAYED", "Delay 5 min", "EXCRETORY", "Urographic", "Late 10min", "Spaetphase"),
    "early_arterial": ("EARLY ART", "CTA Abdomen", "Angio", "Bolus tracking arterial", "Early arterial"),
    "transitional": ("Late arterial/PV", "Pancreatic phase", "Enterography 50s", "ART-PV", "Transitional"),
}
_GENERIC_DESCRIPTIONS: Final[tuple[str, ...]] = ("Abdomen", "AX ABD", "Body", "Recon 2", "ABD/PEL", "Axial")
_AGENTS: Final[tuple[str, ...]] = ("IOPAMIDOL 370", "Omnipaque 350", "Ultravist 370", "Visipaque 320", "CONTRAST")
_FILE_NAMINGS: Final[tuple[str, ...]] = ("im_number", "dcm_number", "sop_uid", "random_hex", "ct_prefix")
_INSTANCE_NUMBERINGS: Final[tuple[tuple[str, float], ...]] = (
    ("head_first", 0.5),
    ("feet_first", 0.25),
    ("offset", 0.1),
    ("shuffled", 0.1),
    ("constant", 0.05),
)


class PhantomError(ValueError):
    """The phantom cannot be written as asked (bad option, non-empty output folder, ...)."""


@dataclass(frozen=True)
class PhantomRecord:
    """One written series and its ground truth (one row of labels.csv).

    Attributes:
        relative_dir: the series folder relative to the dataset root ("." for a lone series).
    """

    series_instance_uid: str
    study_instance_uid: str
    phase: Phase
    subphase: str
    n_slices: int
    slice_thickness_mm: float
    coverage: str
    transfer_syntax: str
    series_description: str
    description_is_wrong: bool
    relative_dir: str


@dataclass(frozen=True)
class SeriesPlan:
    """Every random draw of one series (no pixels): enough to render and write it deterministically.

    Heights ``s`` are body millimetres (0 at the right diaphragm dome); patient z is ``s + table_z_mm``.
    """

    seed: int
    uid_key: str
    patient_seed: int
    patient_number: int
    study_number: int
    phase: Phase
    subphase: str
    series_number: int
    study_date: str
    study_time_s: float
    acquisition_time_s: float
    bolus_start_time_s: float | None
    coverage: str
    s_bottom_mm: float
    n_slices: int
    slice_thickness_mm: float
    spacing_mm: float
    matrix: int
    fov_mm: float
    fov_centre_mm: tuple[float, float]
    patient_offset_mm: tuple[float, float, float]
    breath_shift_mm: float
    manufacturer: str
    model: str
    kernel: str
    kernel_sharp: bool
    blur_mm: float
    sharpen: float
    noise_hu: float
    kvp: float
    circular_fov: bool
    rescale: str
    transfer_syntax: str
    series_description: str
    description_is_wrong: bool
    contrast_agent: str
    instance_numbering: str
    file_naming: str
    relative_dir: str
    window: tuple[float, float]

    @property
    def pixel_spacing_mm(self) -> float:
        """In-plane pixel size, mm."""
        return self.fov_mm / self.matrix

    @property
    def s_positions_mm(self) -> npt.NDArray[np.float64]:
        """float64 [n_slices] slice heights, ascending (feet to head), body mm."""
        return self.s_bottom_mm + self.spacing_mm * np.arange(self.n_slices, dtype=np.float64)


def _choice(rng: np.random.Generator, options: Sequence[tuple[Any, float]]) -> Any:
    weights = np.asarray([w for _, w in options], dtype=np.float64)
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]


def _coverage_range(coverage: str, patient_seed: int, rng: np.random.Generator) -> tuple[float, float]:
    """(bottom, top) body heights of a coverage for this patient, mm."""
    patient = draw_patient(patient_seed)
    top_name, bottom_name = {
        "abdomen": ("above_dome", "iliac_crest"),
        "upper_abdomen": ("above_dome", "iliac_crest"),
        "abdomen_pelvis": ("above_dome", "below_symphysis"),
        "chest_abdomen_pelvis": ("chest_top", "below_symphysis"),
        "abdomen_pelvis_thighs": ("above_dome", "mid_thigh"),
    }[coverage]
    top = landmark(patient, top_name) + float(rng.uniform(-20.0, 25.0))
    bottom = landmark(patient, bottom_name) + float(rng.uniform(-25.0, 20.0))
    if coverage == "upper_abdomen":
        bottom = 0.5 * (top + bottom) - float(rng.uniform(0.0, 40.0))
    return bottom, top


@dataclass(frozen=True)
class _StudySettings:
    """Per-study draws (one scanner, one patient, one session)."""

    patient_seed: int
    patient_number: int
    study_number: int
    study_date: str
    study_time_s: float
    injection_s: float
    manufacturer_index: int
    kvp: float
    rescale: str
    transfer_syntax: str
    coverage: str
    matrix: int
    fov_mm: float
    fov_centre_mm: tuple[float, float]
    patient_offset_mm: tuple[float, float, float]
    circular_fov: bool
    file_naming: str
    series_number_start: int
    series_number_step: int
    study_dir: str


def _hex(rng: np.random.Generator, n: int = 8) -> str:
    return "".join(f"{int(v):x}" for v in rng.integers(0, 16, n))


def _draw_study(
    rng: np.random.Generator,
    *,
    seed: int,
    study_number: int,
    compression: str,
    matrix_sizes: Sequence[tuple[int, float]],
) -> _StudySettings:
    patient_seed = int(np.random.SeedSequence([seed, study_number, 0x5EED]).generate_state(1)[0])
    patient = draw_patient(patient_seed)
    half_width, back, front = body_extent(patient)
    if rng.random() < 0.1:  # field of view narrower than the patient (truncated body wall)
        fov = 2.0 * half_width * float(rng.uniform(0.85, 0.97))
    else:
        fov = 2.0 * half_width + float(rng.uniform(10.0, 90.0))
    fov = float(np.clip(round(fov), 300.0, 500.0))
    syntax = _choice(rng, _MIXED_SYNTAXES) if compression == "mixed" else "explicit_little"
    study_day = date(2014, 1, 1) + timedelta(days=int(rng.integers(0, 3650)))
    study_time = float(rng.uniform(7 * 3600, 19 * 3600))
    return _StudySettings(
        patient_seed=patient_seed,
        patient_number=study_number + 1,
        study_number=study_number,
        study_date=study_day.strftime("%Y%m%d"),
        study_time_s=study_time,
        injection_s=study_time + float(rng.uniform(60.0, 240.0)),
        manufacturer_index=int(rng.integers(0, len(_SCANNERS))),
        kvp=float(_choice(rng, ((120.0, 0.7), (100.0, 0.22), (80.0, 0.03), (140.0, 0.05)))),
        rescale=str(_choice(rng, _RESCALE_WEIGHTS)),
        transfer_syntax=str(syntax),
        coverage=str(_choice(rng, _COVERAGES)),
        matrix=int(_choice(rng, matrix_sizes)),
        fov_mm=fov,
        fov_centre_mm=(float(rng.uniform(-15.0, 15.0)), float(0.5 * (back + front) + rng.uniform(-20.0, 20.0))),
        patient_offset_mm=(
            float(rng.uniform(-20.0, 20.0)),
            float(rng.uniform(-180.0, -60.0)),
            float(rng.uniform(-900.0, 100.0)),
        ),
        circular_fov=bool(rng.random() < 0.8),
        file_naming=str(_FILE_NAMINGS[int(rng.integers(0, len(_FILE_NAMINGS)))]),
        series_number_start=int(_choice(rng, ((2, 0.5), (3, 0.2), (201, 0.15), (1001, 0.15)))),
        series_number_step=int(_choice(rng, ((1, 0.7), (2, 0.1), (100, 0.2)))),
        study_dir=f"{_hex(rng)}/{_hex(rng)}",
    )


def _draw_description(rng: np.random.Generator, subphase: str, thickness: float, kernel: str) -> tuple[str, bool]:
    """SeriesDescription and whether it is wrong (empty or naming another phase): ~15% wrong, ~10% generic."""
    roll = rng.random()
    if roll < 0.075:
        return "", True
    if roll < 0.15:
        phase = SUBPHASE_PHASE[subphase]
        wrong = [sub for sub in _DESCRIPTIONS if SUBPHASE_PHASE[sub] != phase]
        pool = _DESCRIPTIONS[wrong[int(rng.integers(0, len(wrong)))]]
        return pool[int(rng.integers(0, len(pool)))], True
    if roll < 0.25:
        text = _GENERIC_DESCRIPTIONS[int(rng.integers(0, len(_GENERIC_DESCRIPTIONS)))]
    else:
        pool = _DESCRIPTIONS[subphase]
        text = pool[int(rng.integers(0, len(pool)))]
    if rng.random() < 0.4:
        text = f"{text} {thickness:g}mm {kernel}"
    return text, False


def _draw_series(
    rng: np.random.Generator,
    *,
    seed: int,
    study: _StudySettings,
    subphase: str,
    index_in_study: int,
    acquisition_s: float,
    has_contrast_study: bool,
    max_slices: int | None,
    matrix_sizes: Sequence[tuple[int, float]],
    compression: str,
    uid_prefix: str,
) -> SeriesPlan:
    manufacturer, model, smooth, sharp = _SCANNERS[study.manufacturer_index]
    coverage = study.coverage if rng.random() < 0.6 else str(_choice(rng, _COVERAGES))
    bottom, top = _coverage_range(coverage, study.patient_seed, rng)
    thickness = float(_choice(rng, _THICKNESSES))
    spacing = thickness * float(_choice(rng, ((1.0, 0.85), (0.8, 0.1), (1.5, 0.05))))
    n_slices = int((top - bottom) // spacing) + 1
    if max_slices is not None and n_slices > max_slices:
        n_slices = max_slices
        spacing = (top - bottom) / (max_slices - 1)
    kernel_sharp = bool(rng.random() < 0.2)
    kernels = sharp if kernel_sharp else smooth
    kernel = kernels[int(rng.integers(0, len(kernels)))]
    base_noise = float(rng.uniform(6.0, 16.0)) * (float(rng.uniform(2.0, 3.0)) if kernel_sharp else 1.0)
    noise = float(np.clip(base_noise * math.sqrt(3.0 / thickness), 4.0, 90.0))
    matrix = study.matrix if rng.random() < 0.8 else int(_choice(rng, matrix_sizes))
    syntax = study.transfer_syntax
    if compression == "mixed" and rng.random() < 0.3:
        syntax = str(_choice(rng, _MIXED_SYNTAXES))
    breath_shift = float(rng.uniform(-10.0, 10.0))
    blur = float(rng.uniform(0.45, 0.8) if kernel_sharp else rng.uniform(0.6, 1.1))
    sharpen = float(rng.uniform(0.6, 1.4)) if kernel_sharp else 0.0
    numbering = str(_choice(rng, _INSTANCE_NUMBERINGS))
    window = (
        float(_choice(rng, ((40.0, 0.5), (50.0, 0.3), (60.0, 0.2)))),
        float(_choice(rng, ((400.0, 0.6), (350.0, 0.4)))),
    )
    series_dir = _hex(rng)
    if rng.random() < 0.15:
        series_dir = f"{series_dir}/DICOM"
    # Phase-dependent metadata last: every draw above is the same for every phase of a given generator state.
    description, wrong = _draw_description(rng, subphase, thickness, kernel)
    contrast = subphase != "native"
    agent_roll, agent_index = float(rng.random()), int(rng.integers(0, len(_AGENTS)))
    if contrast:
        agent = _AGENTS[agent_index] if agent_roll < 0.85 else ""
    else:
        agent = _AGENTS[agent_index] if has_contrast_study and agent_roll < 0.1 else ""
    bolus_start = study.injection_s if contrast and agent and rng.random() < 0.75 else None
    uid_key = f"{uid_prefix}/{study.study_number}/{index_in_study}"
    return SeriesPlan(
        seed=int(np.random.SeedSequence([seed, study.study_number, index_in_study, 0x5E41]).generate_state(1)[0]),
        uid_key=uid_key,
        patient_seed=study.patient_seed,
        patient_number=study.patient_number,
        study_number=study.study_number,
        phase=SUBPHASE_PHASE[subphase],
        subphase=subphase,
        series_number=study.series_number_start + index_in_study * study.series_number_step,
        study_date=study.study_date,
        study_time_s=study.study_time_s,
        acquisition_time_s=acquisition_s,
        bolus_start_time_s=bolus_start,
        coverage=coverage,
        s_bottom_mm=float(bottom),
        n_slices=n_slices,
        slice_thickness_mm=thickness,
        spacing_mm=float(spacing),
        matrix=matrix,
        fov_mm=study.fov_mm,
        fov_centre_mm=study.fov_centre_mm,
        patient_offset_mm=study.patient_offset_mm,
        breath_shift_mm=breath_shift,
        manufacturer=manufacturer,
        model=model,
        kernel=kernel,
        kernel_sharp=kernel_sharp,
        blur_mm=blur,
        sharpen=sharpen,
        noise_hu=noise,
        kvp=study.kvp,
        circular_fov=study.circular_fov,
        rescale=study.rescale,
        transfer_syntax=syntax,
        series_description=description,
        description_is_wrong=wrong,
        contrast_agent=agent,
        instance_numbering=numbering,
        file_naming=study.file_naming,
        relative_dir=f"{study.study_dir}/{series_dir}",
        window=window,
    )


def _validate_options(
    n_per_class: int, compression: str, matrix_sizes: Sequence[int] | None, max_slices: int | None
) -> None:
    if n_per_class < 1:
        raise PhantomError(f"n_per_class must be >= 1, got {n_per_class}")
    if compression not in ("mixed", "none"):
        raise PhantomError(f"compression must be 'mixed' or 'none', got {compression!r}")
    if matrix_sizes is not None and (not matrix_sizes or any(not 32 <= m <= 1024 for m in matrix_sizes)):
        raise PhantomError(f"matrix sizes must be in [32, 1024], got {list(matrix_sizes)}")
    if max_slices is not None and max_slices < 2:
        raise PhantomError(f"max_slices must be >= 2, got {max_slices}")


def plan_dataset(
    *,
    n_per_class: int,
    seed: int,
    compression: str = "mixed",
    matrix_sizes: Sequence[int] | None = None,
    max_slices: int | None = DEFAULT_MAX_SLICES,
) -> list[SeriesPlan]:
    """Draw every study and series of a dataset (no pixels): exactly ``n_per_class`` series per phase.

    Studies follow real protocols (triphasic liver, urographic, biphasic pancreas, routine portal venous, ...), the
    series of a study in acquisition order. Nuisance variables are drawn from the same distributions for every phase.

    Args:
        n_per_class: series per phase.
        seed: dataset seed.
        compression: "mixed" (uncompressed and lossless JPEG 2000, JPEG-LS, JPEG Lossless SV1, RLE) or "none".
        matrix_sizes: image sizes to draw uniformly from; None for the default 512/384/256 mix.
        max_slices: cap on slices per series (longer coverages get a wider spacing); None for no cap.

    Raises:
        PhantomError: invalid options.
    """
    _validate_options(n_per_class, compression, matrix_sizes, max_slices)
    sizes = DEFAULT_MATRIX_SIZES if matrix_sizes is None else tuple((int(m), 1.0) for m in matrix_sizes)
    rng = np.random.default_rng([seed, 0xDA7A])
    remaining = dict.fromkeys(PHASES, n_per_class)
    plans: list[SeriesPlan] = []
    study_number = 0
    while any(remaining.values()):
        protocol: tuple[str, ...] = _choice(rng, _PROTOCOLS)
        wanted = [sub for sub in protocol if remaining[SUBPHASE_PHASE[sub]] > 0]
        seen: set[Phase] = set()
        chosen = []
        for sub in wanted:
            phase = SUBPHASE_PHASE[sub]
            if phase in seen and remaining[phase] < 2:
                continue
            seen.add(phase)
            remaining[phase] -= 1
            chosen.append(sub)
        if not chosen:
            continue
        study = _draw_study(rng, seed=seed, study_number=study_number, compression=compression, matrix_sizes=sizes)
        native_time = study.study_time_s + float(rng.uniform(0.0, 40.0))
        has_contrast = any(sub != "native" for sub in chosen)
        for index, sub in enumerate(chosen):
            if sub == "native":
                acquisition = native_time
            else:
                lo, hi = SCAN_DELAY_S[sub]
                acquisition = study.injection_s + float(rng.uniform(lo, hi))
            plans.append(
                _draw_series(
                    rng,
                    seed=seed,
                    study=study,
                    subphase=sub,
                    index_in_study=index,
                    acquisition_s=acquisition,
                    has_contrast_study=has_contrast,
                    max_slices=max_slices,
                    matrix_sizes=sizes,
                    compression=compression,
                    uid_prefix=f"dataset/{seed}",
                )
            )
        study_number += 1
    return plans


def plan_series(
    *,
    phase: Phase | str,
    seed: int,
    subphase: str | None = None,
    n_slices: int | None = None,
    matrix: int = 512,
    transfer_syntax: str = "explicit_little",
    coverage: str | None = None,
    noise_hu: float | None = None,
) -> SeriesPlan:
    """Plan one series of a single-series study (benchmarks, tests).

    For a given seed every phase gets the same patient and the same nuisance draws (coverage, thickness, noise,
    kernel, ...): only the physiology and the phase-related metadata differ, a paired design for tests.

    Args:
        phase: the label; its sub-phase is drawn (``others``: delayed, early arterial or transitional) unless given.
        seed: the seed (patient, anatomy, every draw).
        subphase: force a sub-phase of :data:`~backend.ml.phantom_physiology.SUBPHASES` (must match ``phase``).
        n_slices: exactly this many slices over the coverage (spacing adapts); None for the drawn thickness.
        matrix: rows = columns.
        transfer_syntax: one of :data:`TRANSFER_SYNTAXES`.
        coverage: force a coverage ("abdomen", "upper_abdomen", "abdomen_pelvis", ...); None draws it.
        noise_hu: force the image noise standard deviation, HU.

    Raises:
        PhantomError: inconsistent phase/sub-phase, unknown transfer syntax or coverage, bad sizes.
    """
    label = as_phase(phase)
    rng = np.random.default_rng([seed, 0x51C])
    if subphase is None:
        others = tuple(zip(OTHERS_SUBPHASES, OTHERS_WEIGHTS, strict=True))
        subphase = {"non_contrast": "native", "arterial": "late_arterial", "venous": "portal_venous"}.get(label) or str(
            _choice(np.random.default_rng([seed, 0x5B]), others)
        )
    if subphase not in SUBPHASES or SUBPHASE_PHASE[subphase] != label:
        raise PhantomError(f"sub-phase {subphase!r} is not a sub-phase of {label!r}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise PhantomError(
            f"unknown transfer syntax {transfer_syntax!r}; expected one of {', '.join(TRANSFER_SYNTAXES)}"
        )
    if coverage is not None and coverage not in dict(_COVERAGES):
        raise PhantomError(f"unknown coverage {coverage!r}; expected one of {', '.join(c for c, _ in _COVERAGES)}")
    if not 32 <= matrix <= 1024:
        raise PhantomError(f"matrix must be in [32, 1024], got {matrix}")
    if n_slices is not None and n_slices < 2:
        raise PhantomError(f"n_slices must be >= 2, got {n_slices}")
    study = replace(
        _draw_study(rng, seed=seed, study_number=0, compression="none", matrix_sizes=((matrix, 1.0),)),
        transfer_syntax=transfer_syntax,
        matrix=matrix,
        study_dir=".",
    )
    if coverage is not None:
        study = replace(study, coverage=coverage)
    position = float(rng.uniform(0.0, 1.0))  # drawn for every phase so that the draws below do not depend on it
    if subphase == "native":
        acquisition = study.study_time_s
    else:
        lo, hi = SCAN_DELAY_S[subphase]
        acquisition = study.injection_s + lo + (hi - lo) * position
    plan = _draw_series(
        rng,
        seed=seed,
        study=study,
        subphase=subphase,
        index_in_study=0,
        acquisition_s=acquisition,
        has_contrast_study=subphase != "native",
        max_slices=None,
        matrix_sizes=((matrix, 1.0),),
        compression="none",
        uid_prefix=f"series/{seed}",
    )
    changes: dict[str, Any] = {"matrix": matrix, "transfer_syntax": transfer_syntax, "relative_dir": "."}
    if coverage is not None:
        bottom, top = _coverage_range(coverage, study.patient_seed, rng)
        changes.update(coverage=coverage, s_bottom_mm=bottom, n_slices=int((top - bottom) // plan.spacing_mm) + 1)
    if n_slices is not None:
        length = plan.spacing_mm * (changes.get("n_slices", plan.n_slices) - 1)
        bottom = changes.get("s_bottom_mm", plan.s_bottom_mm)
        spacing = length / (n_slices - 1)
        changes.update(n_slices=n_slices, spacing_mm=spacing, s_bottom_mm=bottom)
        changes["slice_thickness_mm"] = float(min(plan.slice_thickness_mm, round(max(spacing, 0.5), 3)))
    if noise_hu is not None:
        changes["noise_hu"] = float(noise_hu)
    return replace(plan, **changes)


class SeriesGeometry(NamedTuple):
    """Where the rendered voxels are.

    Attributes:
        s_mm: float64 [z] slice heights in body mm (ascending, feet to head).
        z_mm: float64 [z] patient z of each slice (ImagePositionPatient[2]).
        origin_mm: (x, y) patient position of the centre of pixel (0, 0).
        pixel_spacing_mm: in-plane pixel size.
        attenuation: the series' mean HU per tissue (noise-free).
    """

    s_mm: npt.NDArray[np.float64]
    z_mm: npt.NDArray[np.float64]
    origin_mm: tuple[float, float]
    pixel_spacing_mm: float
    attenuation: SeriesAttenuation


class RenderedSeries(NamedTuple):
    """An in-memory series: ``hu`` float32 [z, y, x] (exactly the HU stored in the DICOM files), ``labels`` uint8
    [z, y, x] (:class:`~backend.ml.phantom_shapes.Tissue`), and the geometry."""

    hu: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]
    geometry: SeriesGeometry


def _gaussian_kernel(sigma_px: float) -> npt.NDArray[np.float32]:
    radius = max(1, math.ceil(3.0 * sigma_px))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / max(sigma_px, 1e-3)) ** 2)
    normalised: npt.NDArray[np.float32] = (kernel / kernel.sum()).astype(np.float32)
    return normalised


def _separable(image: npt.NDArray[np.float32], kernel: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Filter both axes with a symmetric 1-D kernel (edge padding). float32 [y, x] -> float32 [y, x]."""
    radius = kernel.size // 2
    padded = np.pad(image, radius, mode="edge")
    ny, nx = image.shape
    rows = np.zeros((ny, nx + 2 * radius), dtype=np.float32)
    for k in range(kernel.size):
        rows += kernel[k] * padded[k : k + ny, :]
    out = np.zeros((ny, nx), dtype=np.float32)
    for k in range(kernel.size):
        out += kernel[k] * rows[:, k : k + nx]
    return out


class _Renderer:
    """Renders the slices of one planned series: anatomy -> attenuation -> blur, noise, kernel -> stored values."""

    def __init__(self, plan: SeriesPlan) -> None:
        self.plan = plan
        patient = draw_patient(plan.patient_seed)
        self.shapes = build_shapes(patient)
        physiology = draw_patient_physiology(plan.patient_seed, age=patient.age)
        rng = np.random.default_rng([plan.seed, 0xA77])
        self.attenuation = draw_series_attenuation(plan.subphase, physiology, rng)
        ps = plan.pixel_spacing_mm
        centred = (np.arange(plan.matrix, dtype=np.float64) - (plan.matrix - 1) / 2.0) * ps
        self.grid = Grid(
            (centred + plan.fov_centre_mm[0]).astype(np.float32), (centred + plan.fov_centre_mm[1]).astype(np.float32)
        )
        self.coarse = TextureField(plan.patient_seed, spacing_mm=24.0)
        self.fine = TextureField(plan.patient_seed + 1, spacing_mm=7.0)
        self.blur = _gaussian_kernel(max(0.5, plan.blur_mm / ps))
        self.edge = _gaussian_kernel(max(0.7, 1.0 / ps))
        impulse = np.zeros((41, 41), dtype=np.float32)
        impulse[20, 20] = 1.0
        response = self._kernel_filter(impulse)
        self.noise_gain = float(np.sqrt(np.sum(response.astype(np.float64) ** 2)))
        yy = self.grid.y_mm[:, None] - np.float32(plan.fov_centre_mm[1])
        xx = self.grid.x_mm[None, :] - np.float32(plan.fov_centre_mm[0])
        self.outside = (xx * xx + yy * yy) > np.float32((plan.fov_mm / 2.0) ** 2) if plan.circular_fov else None
        self.representation, self.bits, self.intercept, self.slope, self.padding = _RESCALES[plan.rescale]
        # Partial volume along z: thick slices average the anatomy over their thickness (centre first).
        third = plan.slice_thickness_mm / 3.0
        self.partial_volume_offsets = (0.0, -third, third) if plan.slice_thickness_mm >= 2.0 else (0.0,)

    def _kernel_filter(self, image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """System blur (smooth kernels) or blur + unsharp masking (sharp kernels). float32 [y, x] -> [y, x]."""
        filtered = _separable(image, self.blur)
        if self.plan.kernel_sharp:
            filtered = filtered + np.float32(self.plan.sharpen) * (filtered - _separable(filtered, self.edge))
        return filtered

    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest storable value of the rescale convention."""
        if self.representation:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    def render(self, index: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], npt.NDArray[np.uint8]]:
        """Slice ``index`` (0 = lowest): (HU float32 [y, x], stored int32 [y, x], labels uint8 [y, x])."""
        plan = self.plan
        s = float(plan.s_positions_mm[index])
        coarse = self.coarse.sample(s, self.grid.x_mm, self.grid.y_mm)
        fine = self.fine.sample(s, self.grid.x_mm, self.grid.y_mm)
        labels: npt.NDArray[np.uint8] = np.empty((0, 0), dtype=np.uint8)
        clean = np.zeros(coarse.shape, dtype=np.float32)
        for offset in self.partial_volume_offsets:
            sub_labels = paint_labels(
                self.shapes, s=s + offset, grid=self.grid, breath_shift_mm=plan.breath_shift_mm, warp=coarse
            )
            clean += tissue_hu(
                sub_labels, self.attenuation, coarse=coarse, fine=fine, x_mm=self.grid.x_mm, y_mm=self.grid.y_mm
            )
            if offset == 0.0:
                labels = sub_labels
        clean *= np.float32(1.0 / len(self.partial_volume_offsets))
        rng = np.random.default_rng([plan.seed, 0x1015E, index])
        white = rng.standard_normal(clean.shape, dtype=np.float32)
        white *= np.float32(plan.noise_hu / self.noise_gain)
        image = self._kernel_filter(clean + white)
        lo, hi = self.stored_range()
        stored = np.clip(np.rint((image - self.intercept) / self.slope), lo, hi).astype(np.int32)
        if self.outside is not None:
            stored[self.outside] = self.padding if self.padding is not None else lo
        hu = (stored * self.slope + self.intercept).astype(np.float32)
        return hu, stored, labels


def _geometry(plan: SeriesPlan, renderer: _Renderer) -> SeriesGeometry:
    ox, oy, oz = plan.patient_offset_mm
    return SeriesGeometry(
        s_mm=plan.s_positions_mm,
        z_mm=plan.s_positions_mm + oz,
        origin_mm=(float(renderer.grid.x_mm[0]) + ox, float(renderer.grid.y_mm[0]) + oy),
        pixel_spacing_mm=plan.pixel_spacing_mm,
        attenuation=renderer.attenuation,
    )


def render_hu(plan: SeriesPlan, *, indices: Sequence[int] | None = None) -> RenderedSeries:
    """Render a planned series in memory (the same values :func:`write_series` stores).

    Args:
        plan: from :func:`plan_series` or :func:`plan_dataset`.
        indices: slices to render (0 = lowest/feet); None for all.

    Returns:
        ``RenderedSeries(hu float32 [z, y, x] HU, labels uint8 [z, y, x], geometry)`` with z ascending (feet to head).
    """
    renderer = _Renderer(plan)
    chosen = list(range(plan.n_slices)) if indices is None else list(indices)
    hu = np.empty((len(chosen), plan.matrix, plan.matrix), dtype=np.float32)
    labels = np.empty((len(chosen), plan.matrix, plan.matrix), dtype=np.uint8)
    for out, index in enumerate(chosen):
        hu[out], _, labels[out] = renderer.render(index)
    geometry = _geometry(plan, renderer)
    if indices is not None:
        geometry = geometry._replace(s_mm=geometry.s_mm[chosen], z_mm=geometry.z_mm[chosen])
    return RenderedSeries(hu, labels, geometry)


def _uid(*parts: str) -> str:
    """Deterministic UID under :data:`UID_ROOT` from the given entropy parts."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=["ctphase-phantom", *parts]))


def _tm(seconds: float) -> str:
    """DICOM TM (HHMMSS.ffffff) of seconds after midnight."""
    seconds = seconds % 86400.0
    hours, rest = divmod(seconds, 3600.0)
    minutes, secs = divmod(rest, 60.0)
    return f"{int(hours):02d}{int(minutes):02d}{secs:09.6f}"


def series_uids(plan: SeriesPlan) -> tuple[str, str, str]:
    """(StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID) of a planned series (deterministic)."""
    study_key = plan.uid_key.rsplit("/", 1)[0]
    return _uid(study_key, "study"), _uid(plan.uid_key, "series"), _uid(study_key, "frame")


def _template(plan: SeriesPlan, renderer: _Renderer, *, study_uid: str, series_uid: str, frame_uid: str) -> Any:
    """The header shared by every slice of the series (a pydicom Dataset)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    ds.file_meta.TransferSyntaxUID = UID(TRANSFER_SYNTAXES[plan.transfer_syntax])
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = plan.study_date
    ds.StudyTime = _tm(plan.study_time_s)
    ds.SeriesTime = _tm(plan.acquisition_time_s - 2.0)
    ds.AcquisitionTime = _tm(plan.acquisition_time_s)
    ds.AccessionNumber = f"PH{plan.patient_number:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = plan.manufacturer
    ds.ManufacturerModelName = plan.model
    ds.InstitutionName = "Phantom General Hospital"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT ABDOMEN"
    ds.SeriesDescription = plan.series_description
    ds.PatientName = f"PHANTOM^{plan.patient_number:04d}"
    ds.PatientID = f"PHANTOM{plan.patient_number:04d}"
    patient = draw_patient(plan.patient_seed)
    ds.PatientBirthDate = f"{int(plan.study_date[:4]) - patient.age}0101"
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age:03d}Y"
    ds.BodyPartExamined = "ABDOMEN" if plan.coverage != "chest_abdomen_pelvis" else "CHEST_TO_PELVIS"
    if plan.contrast_agent:
        ds.ContrastBolusAgent = plan.contrast_agent
        ds.ContrastBolusRoute = "IV"
        if plan.bolus_start_time_s is not None:
            ds.ContrastBolusStartTime = _tm(plan.bolus_start_time_s)
    ds.SliceThickness = f"{plan.slice_thickness_mm:g}"
    ds.SpacingBetweenSlices = f"{plan.spacing_mm:.4g}"
    ds.KVP = f"{plan.kvp:g}"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = f"{plan.fov_mm:g}"
    ds.GantryDetectorTilt = "0"
    ds.ConvolutionKernel = plan.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{plan.study_number + 1}"
    ds.SeriesNumber = plan.series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = plan.matrix
    spacing = f"{plan.pixel_spacing_mm:.6g}"
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = renderer.bits
    ds.HighBit = renderer.bits - 1
    ds.PixelRepresentation = renderer.representation
    if plan.circular_fov and renderer.padding is not None:
        ds.add_new(0x00280120, "SS" if renderer.representation else "US", renderer.padding)
    ds.WindowCenter = f"{plan.window[0]:g}"
    ds.WindowWidth = f"{plan.window[1]:g}"
    ds.RescaleIntercept = f"{renderer.intercept:g}"
    ds.RescaleSlope = f"{renderer.slope:g}"
    ds.RescaleType = "HU"
    return ds


def _encode(stored: npt.NDArray[np.int32], plan: SeriesPlan, renderer: _Renderer) -> tuple[bytes, bool]:
    """Pixel Data bytes for one slice and whether they are encapsulated (compressed)."""
    array = stored.astype(np.int16 if renderer.representation else np.uint16)
    syntax = plan.transfer_syntax
    if syntax in ("explicit_little", "implicit_little"):
        return array.tobytes(), False
    from pydicom.encaps import encapsulate

    if syntax == "jpeg_lossless":
        from backend.ml.phantom_codec import encode_jpeg_lossless_sv1

        frame = encode_jpeg_lossless_sv1(array, precision=renderer.bits)
    else:
        from pydicom.pixels.encoders.base import (
            JPEG2000LosslessEncoder,
            JPEGLSLosslessEncoder,
            RLELosslessEncoder,
        )

        encoder, plugin = {
            "jpeg2000": (JPEG2000LosslessEncoder, "pylibjpeg"),
            "jpegls": (JPEGLSLosslessEncoder, "pyjpegls"),
            "rle": (RLELosslessEncoder, "pylibjpeg"),
        }[syntax]
        frame = bytes(
            encoder.encode(
                array,
                encoding_plugin=plugin,
                rows=plan.matrix,
                columns=plan.matrix,
                samples_per_pixel=1,
                bits_allocated=16,
                bits_stored=renderer.bits,
                pixel_representation=renderer.representation,
                photometric_interpretation="MONOCHROME2",
                number_of_frames=1,
            )
        )
    return bytes(encapsulate([frame])), True


def _file_names(plan: SeriesPlan, sop_uids: Sequence[str], rng: np.random.Generator) -> list[str]:
    """File name of each slice (index 0 = lowest) under the plan's naming scheme, in a shuffled numbering."""
    n = plan.n_slices
    roll = rng.random()
    order = np.arange(n) if roll < 0.4 else (np.arange(n)[::-1] if roll < 0.6 else rng.permutation(n))
    names = []
    for index in range(n):
        k = int(order[index]) + 1
        names.append(
            {
                "im_number": f"IM{k:05d}",
                "dcm_number": f"{k:04d}.dcm",
                "sop_uid": f"{sop_uids[index]}.dcm",
                "random_hex": _hex(rng, 16),
                "ct_prefix": f"CT.{sop_uids[index]}",
            }[plan.file_naming]
        )
    return names


def _instance_numbers(plan: SeriesPlan, rng: np.random.Generator) -> list[int]:
    """InstanceNumber of each slice (index 0 = lowest), sometimes misleading."""
    n = plan.n_slices
    head_first = [n - i for i in range(n)]
    return {
        "head_first": head_first,
        "feet_first": [i + 1 for i in range(n)],
        "offset": [value + 1000 for value in head_first],
        "shuffled": [int(v) + 1 for v in rng.permutation(n)],
        "constant": [1] * n,
    }[plan.instance_numbering]


def _record(plan: SeriesPlan, *, study_uid: str, series_uid: str) -> PhantomRecord:
    return PhantomRecord(
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        phase=plan.phase,
        subphase=plan.subphase,
        n_slices=plan.n_slices,
        slice_thickness_mm=plan.slice_thickness_mm,
        coverage=plan.coverage,
        transfer_syntax=plan.transfer_syntax,
        series_description=plan.series_description,
        description_is_wrong=plan.description_is_wrong,
        relative_dir=plan.relative_dir,
    )


def write_series(plan: SeriesPlan, series_dir: Path) -> PhantomRecord:
    """Render and write one planned series as DICOM CT Image Storage files under ``series_dir``.

    Args:
        plan: from :func:`plan_series` or :func:`plan_dataset`.
        series_dir: the folder receiving the files (created).

    Returns:
        The series' :class:`PhantomRecord` (``relative_dir`` as planned).
    """
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import UID

    renderer = _Renderer(plan)
    study_uid, series_uid, frame_uid = series_uids(plan)
    ds = _template(plan, renderer, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid)
    rng = np.random.default_rng([plan.seed, 0xF11E])
    sop_uids = [_uid(plan.uid_key, "instance", str(index)) for index in range(plan.n_slices)]
    names = _file_names(plan, sop_uids, rng)
    numbers = _instance_numbers(plan, rng)
    geometry = _geometry(plan, renderer)
    series_dir.mkdir(parents=True, exist_ok=True)
    for index in range(plan.n_slices):
        _, stored, _ = renderer.render(index)
        pixel_data, encapsulated = _encode(stored, plan, renderer)
        z = float(geometry.z_mm[index])
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uids[index])
        ds.SOPInstanceUID = UID(sop_uids[index])
        ds.InstanceNumber = numbers[index]
        ds.ContentTime = _tm(plan.acquisition_time_s + 0.05 * (plan.n_slices - 1 - index))
        ds.ImagePositionPatient = [f"{geometry.origin_mm[0]:.4f}", f"{geometry.origin_mm[1]:.4f}", f"{z:.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        ds.PixelData = pixel_data
        ds["PixelData"].VR = "OB" if encapsulated else "OW"
        ds["PixelData"].is_undefined_length = encapsulated
        dcmwrite(series_dir / names[index], ds, enforce_file_format=True)
    logger.debug("wrote series %s (%d slices, %s)", series_uid, plan.n_slices, plan.transfer_syntax)
    return _record(plan, study_uid=study_uid, series_uid=series_uid)


def _check_empty(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PhantomError(f"{out_dir}: output folder exists and is not empty; choose a new or empty folder")


def write_phantom_series(
    out_dir: Path,
    *,
    phase: Phase | str,
    seed: int,
    n_slices: int | None = None,
    transfer_syntax: str = "explicit_little",
    matrix: int = 512,
    subphase: str | None = None,
    coverage: str | None = None,
) -> PhantomRecord:
    """Write one series of ``phase`` directly into ``out_dir`` (benchmarks, tests).

    Args:
        out_dir: the series folder (created; must be empty or absent). The record's ``relative_dir`` is ".".
        phase: the label.
        seed: every random draw (patient, sub-phase, noise, ...).
        n_slices: exactly this many slices (spacing adapts to the coverage); None for the drawn thickness.
        transfer_syntax: one of :data:`TRANSFER_SYNTAXES`.
        matrix: rows = columns (512 like clinical CT).
        subphase: force a sub-phase (e.g. "delayed" for ``others``).
        coverage: force a coverage (e.g. "abdomen").

    Raises:
        PhantomError: invalid options or a non-empty ``out_dir``.
    """
    out_dir = Path(out_dir)
    _check_empty(out_dir)
    plan = plan_series(
        phase=phase,
        seed=seed,
        subphase=subphase,
        n_slices=n_slices,
        matrix=matrix,
        transfer_syntax=transfer_syntax,
        coverage=coverage,
    )
    return write_series(plan, out_dir)


def _write_planned(job: tuple[SeriesPlan, str]) -> PhantomRecord:
    plan, root = job
    return write_series(plan, Path(root) / plan.relative_dir)


def generate_dataset(
    out_dir: Path,
    *,
    n_per_class: int,
    seed: int,
    compression: str = "mixed",
    matrix_sizes: Sequence[int] | None = None,
    max_slices: int | None = DEFAULT_MAX_SLICES,
    workers: int = 2,
) -> list[PhantomRecord]:
    """Write a labelled synthetic dataset: DICOM series under ``out_dir`` and ``out_dir/labels.csv``.

    Args:
        out_dir: dataset root (created; must be empty or absent).
        n_per_class: series per phase (4 * n_per_class series in all).
        seed: the same seed gives the same labels.csv and pixel data.
        compression: "mixed" or "none" (see :func:`plan_dataset`).
        matrix_sizes: image sizes to draw from; None for the default 512/384/256 mix.
        max_slices: cap on slices per series; None for no cap (many more slices and bytes).
        workers: processes rendering series in parallel (1 = in this process).

    Returns:
        One record per series, sorted by SeriesInstanceUID (the row order of labels.csv).

    Cost with the defaults: ``n_per_class=40`` writes 160 series, ~10,000 slices, ~2.2 GB, in ~270 CPU seconds
    (about 2.5 minutes on 2 free cores with ``workers=2``).

    Raises:
        PhantomError: invalid options or a non-empty ``out_dir``.
    """
    out_dir = Path(out_dir)
    _check_empty(out_dir)
    plans = plan_dataset(
        n_per_class=n_per_class, seed=seed, compression=compression, matrix_sizes=matrix_sizes, max_slices=max_slices
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = sorted(((plan, str(out_dir)) for plan in plans), key=lambda job: -job[0].n_slices * job[0].matrix ** 2)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            records = list(pool.map(_write_planned, jobs))
    else:
        records = [_write_planned(job) for job in jobs]
    records.sort(key=lambda record: record.series_instance_uid)
    write_labels(out_dir / "labels.csv", records)
    logger.info("phantom dataset: %d series under %s", len(records), out_dir)
    return records


def write_labels(path: Path, records: Sequence[PhantomRecord]) -> None:
    """Write labels.csv atomically (columns :data:`LABEL_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LABEL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = asdict(record)
        row["description_is_wrong"] = "true" if record.description_is_wrong else "false"
        row["slice_thickness_mm"] = f"{record.slice_thickness_mm:g}"
        writer.writerow(row)
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".labels-", suffix=".csv")
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
        stream.write(buffer.getvalue())
    Path(temporary).replace(path)


_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def read_labels(path: Path) -> list[PhantomRecord]:
    """Parse a labels.csv written by :func:`generate_dataset`.

    Raises:
        PhantomError: missing file or columns, an unknown phase, or a malformed value (with its line number).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PhantomError(f"{path}: cannot read labels ({error.strerror})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in LABEL_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise PhantomError(f"{path}: missing column(s) {', '.join(missing)}")
    records = []
    for line, row in enumerate(reader, start=2):
        try:
            wrong = row["description_is_wrong"].strip().lower()
            if wrong not in _TRUE:
                raise ValueError(f"description_is_wrong must be true or false, got {wrong!r}")
            records.append(
                PhantomRecord(
                    series_instance_uid=row["series_instance_uid"],
                    study_instance_uid=row["study_instance_uid"],
                    phase=as_phase(row["phase"]),
                    subphase=row["subphase"],
                    n_slices=int(row["n_slices"]),
                    slice_thickness_mm=float(row["slice_thickness_mm"]),
                    coverage=row["coverage"],
                    transfer_syntax=row["transfer_syntax"],
                    series_description=row["series_description"],
                    description_is_wrong=_TRUE[wrong],
                    relative_dir=row["relative_dir"],
                )
            )
        except ValueError as error:
            raise PhantomError(f"{path}, line {line}: {error}") from None
    return records


__all__ = [
    "LABEL_COLUMNS",
    "TRANSFER_SYNTAXES",
    "PhantomError",
    "PhantomRecord",
    "RenderedSeries",
    "SeriesGeometry",
    "SeriesPlan",
    "generate_dataset",
    "plan_dataset",
    "plan_series",
    "read_labels",
    "render_hu",
    "series_uids",
    "write_labels",
    "write_phantom_series",
    "write_series",
]
