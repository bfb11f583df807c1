"""Contrast physiology of the synthetic abdomen: attenuation of every tissue per contrast sub-phase.

Hounsfield units are drawn PER SERIES from published ranges (portal-venous liver 100-130 HU, late-arterial aorta
250-400 HU, ...). One latent "bolus strength" per series keeps the compartments of a series consistent (a strong
bolus brightens aorta, cortex and pancreas together), with per-tissue jitter. Sub-phases and their labels:

=================  ==============  ===========================================================
sub-phase          label           what identifies it
=================  ==============  ===========================================================
native             non_contrast    blood 35-50 HU, liver 50-65, kidneys 30-40, urine ~5
early_arterial     others          aorta 150-250, right heart dense, portal vein barely enhanced
late_arterial      arterial        aorta 250-400, portal vein 100-150, arciform spleen,
                                   pancreas brightest, renal cortex 150-200 vs medulla 60-90
transitional       others          a mix of late arterial and portal venous
portal_venous      venous          portal/hepatic veins 160-200, liver 100-130, homogeneous nephrogram
delayed            others          blood 90-130, liver 70-90, excreted contrast 300-1200 HU in the
                                   renal pelvis, ureters and a dependent bladder layer
=================  ==============  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from backend.ml.phantom_shapes import N_TISSUES, Tissue
from backend.ml.phases import Phase

SUBPHASES: Final[tuple[str, ...]] = (
    "native",
    "early_arterial",
    "late_arterial",
    "transitional",
    "portal_venous",
    "delayed",
)
SUBPHASE_PHASE: Final[dict[str, Phase]] = {
    "native": "non_contrast",
    "early_arterial": "others",
    "late_arterial": "arterial",
    "transitional": "others",
    "portal_venous": "venous",
    "delayed": "others",
}
OTHERS_SUBPHASES: Final[tuple[str, ...]] = ("delayed", "early_arterial", "transitional")
"""Sub-phases labelled ``others``; :data:`OTHERS_WEIGHTS` gives how often each is drawn."""
OTHERS_WEIGHTS: Final[tuple[float, ...]] = (0.5, 0.25, 0.25)

# Seconds from the start of the injection to the acquisition, per sub-phase (bolus-tracked protocols).
SCAN_DELAY_S: Final[dict[str, tuple[float, float]]] = {
    "early_arterial": (15.0, 25.0),
    "late_arterial": (32.0, 45.0),
    "transitional": (45.0, 60.0),
    "portal_venous": (60.0, 90.0),
    "delayed": (180.0, 600.0),
}

_T = Tissue
# Enhancing compartments: (low, high) HU per base sub-phase ("transitional" mixes late arterial and portal venous).
ENHANCEMENT_HU: Final[dict[str, dict[Tissue, tuple[float, float]]]] = {
    "native": {
        _T.LIVER: (50, 65), _T.SPLEEN: (40, 50), _T.PANCREAS: (35, 50), _T.KIDNEY_CORTEX: (30, 40),
        _T.KIDNEY_MEDULLA: (30, 40), _T.COLLECTING_SYSTEM: (0, 15), _T.BLADDER_URINE: (0, 12),
        _T.BLADDER_DEPENDENT: (0, 12), _T.MYOCARDIUM: (40, 50), _T.MUSCLE: (40, 55), _T.HOLLOW_WALL: (30, 45),
        _T.PELVIC_ORGAN: (35, 50), _T.SKIN: (25, 45),
    },
    "early_arterial": {
        _T.AORTA: (150, 250), _T.LEFT_HEART_BLOOD: (150, 250), _T.RIGHT_HEART_BLOOD: (250, 450),
        _T.IVC_SUPRARENAL: (40, 70), _T.IVC_INFRARENAL: (35, 50), _T.RENAL_VEIN: (60, 110), _T.PORTAL_VEIN: (45, 80),
        _T.HEPATIC_VEIN: (35, 50), _T.LIVER: (55, 70), _T.SPLEEN: (80, 130), _T.PANCREAS: (80, 120),
        _T.KIDNEY_CORTEX: (120, 170), _T.KIDNEY_MEDULLA: (40, 65), _T.COLLECTING_SYSTEM: (0, 15),
        _T.BLADDER_URINE: (0, 12), _T.BLADDER_DEPENDENT: (0, 12), _T.MYOCARDIUM: (80, 120), _T.MUSCLE: (42, 58),
        _T.HOLLOW_WALL: (55, 85), _T.PELVIC_ORGAN: (50, 80), _T.SKIN: (30, 50),
    },
    "late_arterial": {
        _T.AORTA: (250, 400), _T.LEFT_HEART_BLOOD: (250, 400), _T.RIGHT_HEART_BLOOD: (150, 280),
        _T.IVC_SUPRARENAL: (80, 140), _T.IVC_INFRARENAL: (35, 60), _T.RENAL_VEIN: (150, 220),
        _T.PORTAL_VEIN: (100, 150), _T.HEPATIC_VEIN: (45, 80), _T.LIVER: (65, 85), _T.SPLEEN: (110, 160),
        _T.PANCREAS: (120, 170), _T.KIDNEY_CORTEX: (150, 200), _T.KIDNEY_MEDULLA: (60, 90),
        _T.COLLECTING_SYSTEM: (0, 15), _T.BLADDER_URINE: (0, 12), _T.BLADDER_DEPENDENT: (0, 12),
        _T.MYOCARDIUM: (100, 150), _T.MUSCLE: (45, 62), _T.HOLLOW_WALL: (80, 120), _T.PELVIC_ORGAN: (60, 100),
        _T.SKIN: (30, 55),
    },
    "portal_venous": {
        _T.AORTA: (140, 200), _T.LEFT_HEART_BLOOD: (140, 200), _T.RIGHT_HEART_BLOOD: (140, 190),
        _T.IVC_SUPRARENAL: (130, 170), _T.IVC_INFRARENAL: (100, 150), _T.RENAL_VEIN: (150, 190),
        _T.PORTAL_VEIN: (160, 200), _T.HEPATIC_VEIN: (155, 195), _T.LIVER: (100, 130), _T.SPLEEN: (110, 140),
        _T.PANCREAS: (90, 120), _T.KIDNEY_CORTEX: (150, 180), _T.KIDNEY_MEDULLA: (150, 180),
        _T.COLLECTING_SYSTEM: (5, 25), _T.BLADDER_URINE: (0, 20), _T.BLADDER_DEPENDENT: (0, 20),
        _T.MYOCARDIUM: (90, 120), _T.MUSCLE: (55, 70), _T.HOLLOW_WALL: (85, 115), _T.PELVIC_ORGAN: (80, 120),
        _T.SKIN: (35, 60),
    },
    "delayed": {
        _T.AORTA: (90, 130), _T.LEFT_HEART_BLOOD: (90, 130), _T.RIGHT_HEART_BLOOD: (90, 130),
        _T.IVC_SUPRARENAL: (90, 125), _T.IVC_INFRARENAL: (90, 125), _T.RENAL_VEIN: (90, 130),
        _T.PORTAL_VEIN: (90, 130), _T.HEPATIC_VEIN: (90, 125), _T.LIVER: (70, 90), _T.SPLEEN: (80, 100),
        _T.PANCREAS: (70, 90), _T.KIDNEY_CORTEX: (110, 150), _T.KIDNEY_MEDULLA: (115, 160),
        _T.COLLECTING_SYSTEM: (300, 1200), _T.BLADDER_URINE: (10, 60), _T.BLADDER_DEPENDENT: (300, 1000),
        _T.MYOCARDIUM: (70, 90), _T.MUSCLE: (55, 70), _T.HOLLOW_WALL: (70, 90), _T.PELVIC_ORGAN: (70, 100),
        _T.SKIN: (35, 55),
    },
}  # fmt: skip
_BLOOD: Final[tuple[Tissue, ...]] = (
    _T.AORTA,
    _T.LEFT_HEART_BLOOD,
    _T.RIGHT_HEART_BLOOD,
    _T.IVC_SUPRARENAL,
    _T.IVC_INFRARENAL,
    _T.RENAL_VEIN,
    _T.PORTAL_VEIN,
    _T.HEPATIC_VEIN,
)
# Arciform (zebra) splenic enhancement amplitude, HU, per base sub-phase.
_SPLEEN_ARCIFORM: Final[dict[str, tuple[float, float]]] = {
    "native": (0, 0),
    "early_arterial": (35, 60),
    "late_arterial": (25, 45),
    "portal_venous": (0, 4),
    "delayed": (0, 0),
}
# Smooth texture amplitude per tissue (coarse ~25 mm, fine ~6 mm lattice), HU.
_TEXTURE: Final[dict[Tissue, tuple[float, float]]] = {
    _T.TABLE_FOAM: (15, 10), _T.SKIN: (3, 4), _T.SUBCUTANEOUS_FAT: (5, 6), _T.MUSCLE: (4, 5),
    _T.VISCERAL_FAT: (7, 8), _T.LUNG: (18, 25), _T.MYOCARDIUM: (3, 3), _T.LIVER: (4, 3), _T.SPLEEN: (3, 3),
    _T.PANCREAS: (5, 12), _T.KIDNEY_CORTEX: (3, 4), _T.KIDNEY_MEDULLA: (3, 4), _T.HOLLOW_WALL: (4, 4),
    _T.GI_FLUID: (3, 3), _T.STOOL: (35, 55), _T.PELVIC_ORGAN: (6, 6), _T.CORTICAL_BONE: (60, 50),
    _T.CANCELLOUS_BONE: (25, 45), _T.MARROW_FAT: (15, 15), _T.DISC: (5, 5), _T.BLADDER_DEPENDENT: (20, 10),
    _T.COLLECTING_SYSTEM: (0, 0), _T.CARTILAGE: (10, 15), _T.GALLBLADDER: (2, 2),
}  # fmt: skip


@dataclass(frozen=True)
class PatientPhysiology:
    """Per-patient attenuation that does not depend on the contrast phase.

    Attributes:
        blood_native_hu: unenhanced blood (hematocrit), HU.
        steatosis_hu: offset of liver attenuation in every phase (0, or -35..-10 for a fatty liver).
        static_hu: HU of the non-enhancing tissues (fat, air, lung, bone, bowel content, ...).
        oral_contrast: True when bowel fluid holds positive oral contrast (the same in every series of a study).
    """

    blood_native_hu: float
    steatosis_hu: float
    static_hu: dict[Tissue, float]
    oral_contrast: bool


def draw_patient_physiology(seed: int, *, age: int) -> PatientPhysiology:
    """Draw the phase-independent attenuation of one patient (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 0xF15])
    bone = float(np.clip(1.25 - age / 100.0 + rng.normal(0.0, 0.08), 0.45, 1.0))
    oral = bool(rng.random() < 0.2)
    static = {
        _T.AIR: float(rng.uniform(-1002, -995)),
        _T.TABLE_SHELL: float(rng.uniform(120, 320)),
        _T.TABLE_FOAM: float(rng.uniform(-960, -880)),
        _T.SUBCUTANEOUS_FAT: float(rng.uniform(-115, -92)),
        _T.VISCERAL_FAT: float(rng.uniform(-110, -85)),
        _T.LUNG: float(rng.uniform(-880, -820)),
        _T.AIRWAY: float(rng.uniform(-1000, -985)),
        _T.GALLBLADDER: float(rng.uniform(0, 22)),
        _T.GI_FLUID: float(rng.uniform(150, 450) if oral else rng.uniform(0, 20)),
        _T.GI_AIR: float(rng.uniform(-1000, -985)),
        _T.STOOL: float(rng.uniform(-40, 30)),
        _T.CORTICAL_BONE: float(650 + 550 * bone + rng.uniform(-40, 40)),
        _T.CANCELLOUS_BONE: float(90 + 220 * bone + rng.uniform(-20, 20)),
        _T.MARROW_FAT: float(rng.uniform(-80, -20)),
        _T.DISC: float(rng.uniform(70, 100)),
        _T.SPINAL_CANAL: float(rng.uniform(5, 20)),
        _T.CARTILAGE: float(rng.uniform(90, 140) + 2.0 * max(age - 50, 0)),
    }
    return PatientPhysiology(
        blood_native_hu=float(rng.uniform(35, 50)),
        steatosis_hu=float(rng.uniform(-35, -10)) if rng.random() < 0.12 else 0.0,
        static_hu=static,
        oral_contrast=oral,
    )


@dataclass(frozen=True)
class SeriesAttenuation:
    """Attenuation of one series.

    Attributes:
        subphase: one of :data:`SUBPHASES`.
        mean_hu: float32 [N_TISSUES] mean HU per :class:`Tissue` label.
        coarse_hu: float32 [N_TISSUES] amplitude of the coarse smooth texture per label, HU.
        fine_hu: float32 [N_TISSUES] amplitude of the fine smooth texture per label, HU.
        spleen_arciform_hu: amplitude of the arciform splenic pattern, HU.
    """

    subphase: str
    mean_hu: npt.NDArray[np.float32]
    coarse_hu: npt.NDArray[np.float32]
    fine_hu: npt.NDArray[np.float32]
    spleen_arciform_hu: float

    def hu(self, tissue: Tissue) -> float:
        """Mean HU of one tissue in this series."""
        return float(self.mean_hu[tissue])


def _draw_base(
    subphase: str, physiology: PatientPhysiology, u: float, jitter: dict[Tissue, float]
) -> dict[Tissue, float]:
    """HU of the enhancing tissues for a base sub-phase given the latent bolus strength ``u`` in [0, 1]."""
    ranges = ENHANCEMENT_HU[subphase]
    values: dict[Tissue, float] = {}
    for tissue, (lo, hi) in ranges.items():
        position = float(np.clip(u + jitter[tissue], 0.0, 1.0))
        values[tissue] = lo + (hi - lo) * position
    if subphase == "native":
        for tissue in _BLOOD:
            values[tissue] = physiology.blood_native_hu
    if subphase == "portal_venous":  # homogeneous nephrogram: medulla within ~12 HU of the cortex
        cortex = values[_T.KIDNEY_CORTEX]
        values[_T.KIDNEY_MEDULLA] = cortex - 12.0 * (0.5 + jitter[_T.KIDNEY_MEDULLA])
    native_blood = physiology.blood_native_hu
    values[_T.ARTERY] = native_blood + (values[_T.AORTA] - native_blood) * (0.85 + 0.5 * jitter[_T.ARTERY])
    return values


def draw_series_attenuation(
    subphase: str, physiology: PatientPhysiology, rng: np.random.Generator
) -> SeriesAttenuation:
    """Draw the HU of every tissue for one series of ``subphase``.

    Args:
        subphase: one of :data:`SUBPHASES`.
        physiology: the patient's phase-independent values.
        rng: the series' generator.

    Raises:
        ValueError: unknown sub-phase.
    """
    if subphase not in SUBPHASES:
        raise ValueError(f"unknown sub-phase {subphase!r}; expected one of {', '.join(SUBPHASES)}")
    u = float(rng.uniform(0.0, 1.0))
    jitter = {tissue: float(np.clip(rng.normal(0.0, 0.15), -0.3, 0.3)) for tissue in Tissue}
    if subphase == "transitional":
        weight = float(rng.uniform(0.35, 0.65))
        arterial = _draw_base("late_arterial", physiology, u, jitter)
        venous = _draw_base("portal_venous", physiology, u, jitter)
        values = {tissue: (1.0 - weight) * arterial[tissue] + weight * venous[tissue] for tissue in arterial}
        lo, hi = _SPLEEN_ARCIFORM["late_arterial"]
        arciform = (1.0 - weight) * (lo + (hi - lo) * u)
    else:
        values = _draw_base(subphase, physiology, u, jitter)
        lo, hi = _SPLEEN_ARCIFORM[subphase]
        arciform = lo + (hi - lo) * float(rng.uniform(0.0, 1.0))
    values[_T.LIVER] += physiology.steatosis_hu
    mean = np.zeros(N_TISSUES, dtype=np.float32)
    for tissue, value in physiology.static_hu.items():
        mean[tissue] = value
    for tissue, value in values.items():
        mean[tissue] = value
    coarse = np.full(N_TISSUES, 1.5, dtype=np.float32)
    fine = np.full(N_TISSUES, 1.5, dtype=np.float32)
    for tissue, (c, f) in _TEXTURE.items():
        coarse[tissue], fine[tissue] = c, f
    coarse[_T.AIR] = fine[_T.AIR] = 0.0
    if subphase != "native":  # inflow mixing of opacified and unopacified blood in the IVC
        coarse[_T.IVC_SUPRARENAL] = coarse[_T.IVC_INFRARENAL] = float(rng.uniform(4.0, 18.0))
    if subphase == "delayed":
        coarse[_T.COLLECTING_SYSTEM] = 0.08 * mean[_T.COLLECTING_SYSTEM]
    return SeriesAttenuation(
        subphase=subphase, mean_hu=mean, coarse_hu=coarse, fine_hu=fine, spleen_arciform_hu=float(arciform)
    )


_BSPLINE_STD_3D: Final[float] = (151.0 / 315.0) ** 1.5  # std of cubic-B-spline-interpolated unit white noise in 3-D


def _bspline_taps(t: npt.NDArray[np.float64], size: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Cubic B-spline taps for lattice coordinates ``t``: indices int64 [n, 4] and weights float32 [n, 4]."""
    base = np.floor(t).astype(np.int64)
    frac = (t - base)[:, None]
    weights = np.concatenate(
        [
            (1.0 - frac) ** 3 / 6.0,
            (3.0 * frac**3 - 6.0 * frac**2 + 4.0) / 6.0,
            (-3.0 * frac**3 + 3.0 * frac**2 + 3.0 * frac + 1.0) / 6.0,
            frac**3 / 6.0,
        ],
        axis=1,
    )
    indices = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, size - 1)
    return indices, weights.astype(np.float32)


class TextureField:
    """Smooth, unit-variance 3-D noise on a lattice fixed to the patient's body (the same in every series).

    Cubic B-spline interpolation of white noise on a lattice; sampling a slice gathers 4 x 4 x 4 taps.

    Args:
        seed: patient texture seed.
        spacing_mm: lattice spacing (the texture's correlation length is about this size).
        half_extent_mm: the lattice covers ``[-half_extent_mm, half_extent_mm]`` in x and y.
    """

    def __init__(self, seed: int, *, spacing_mm: float, half_extent_mm: float = 340.0) -> None:
        self.seed = seed
        self.spacing = spacing_mm
        self.half = half_extent_mm
        self.size = int(np.ceil(2.0 * half_extent_mm / spacing_mm)) + 4
        self._planes: dict[int, npt.NDArray[np.float32]] = {}
        self._taps: tuple[
            npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32]
        ]
        self._grid_key: tuple[int, int, float, float] | None = None

    def _plane(self, index: int) -> npt.NDArray[np.float32]:
        plane = self._planes.get(index)
        if plane is None:
            rng = np.random.default_rng([self.seed, int(self.spacing * 10), index + 100_000])
            plane = rng.standard_normal((self.size, self.size)).astype(np.float32)
            self._planes[index] = plane
        return plane

    def sample(self, s: float, x_mm: npt.NDArray[np.float32], y_mm: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Texture on the pixel grid of one slice.

        Args:
            s: slice height, mm.
            x_mm: float32 [nx] column centres, mm.
            y_mm: float32 [ny] row centres, mm.

        Returns:
            float32 [ny, nx], zero mean and about unit standard deviation.
        """
        key = (x_mm.size, y_mm.size, float(x_mm[0]), float(y_mm[0]))
        if self._grid_key != key:
            offset = self.half / self.spacing + 1.0
            ix, wx = _bspline_taps(x_mm.astype(np.float64) / self.spacing + offset, self.size)
            iy, wy = _bspline_taps(y_mm.astype(np.float64) / self.spacing + offset, self.size)
            self._taps, self._grid_key = (ix, wx, iy, wy), key
        ix, wx, iy, wy = self._taps
        t = s / self.spacing
        base = int(np.floor(t))
        _, wz = _bspline_taps(np.array([t - base + 1.0]), 4)
        plane = np.zeros((self.size, self.size), dtype=np.float32)
        for offset in range(4):
            plane += wz[0, offset] * self._plane(base - 1 + offset)
        columns = np.zeros((self.size, x_mm.size), dtype=np.float32)
        for k in range(4):
            columns += plane[:, ix[:, k]] * wx[None, :, k]
        out = np.zeros((y_mm.size, x_mm.size), dtype=np.float32)
        for k in range(4):
            out += columns[iy[:, k], :] * wy[:, k, None]
        out *= np.float32(1.0 / _BSPLINE_STD_3D)
        return out


def tissue_hu(
    labels: npt.NDArray[np.uint8],
    attenuation: SeriesAttenuation,
    *,
    coarse: npt.NDArray[np.float32],
    fine: npt.NDArray[np.float32],
    x_mm: npt.NDArray[np.float32],
    y_mm: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """Noise-free attenuation of one slice: tissue means, smooth textures and enhancement patterns.

    Args:
        labels: uint8 [ny, nx] tissue labels.
        attenuation: the series' HU per tissue.
        coarse: float32 [ny, nx] coarse texture (unit variance).
        fine: float32 [ny, nx] fine texture (unit variance).
        x_mm: float32 [nx] column centres, body mm.
        y_mm: float32 [ny] row centres, body mm.

    Returns:
        float32 [ny, nx], HU.
    """
    hu: npt.NDArray[np.float32] = (
        attenuation.mean_hu[labels] + attenuation.coarse_hu[labels] * coarse + attenuation.fine_hu[labels] * fine
    )
    spleen = labels == Tissue.SPLEEN
    if attenuation.spleen_arciform_hu > 0.0 and spleen.any():
        rows, cols = np.nonzero(spleen)
        phase = (0.6 * x_mm[cols] + 0.8 * y_mm[rows]) * np.float32(2.0 * np.pi / 17.0) + 2.5 * coarse[rows, cols]
        hu[rows, cols] += (
            np.float32(attenuation.spleen_arciform_hu) * np.sin(phase)
            + 0.3 * np.float32(attenuation.spleen_arciform_hu) * fine[rows, cols]
        )
    stool = labels == Tissue.STOOL
    if stool.any():
        bubbles = stool & (fine > 1.1)
        hu[bubbles] = attenuation.mean_hu[Tissue.GI_AIR] * np.float32(0.85)
    return hu
