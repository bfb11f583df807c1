"""Per-patient anatomy of the synthetic abdomen: body habitus, organs, vessels and bones as analytic shapes.

A :class:`Patient` is drawn from one seed (habitus, organ sizes and positions, bowel loops); :func:`build_shapes`
turns it into the painting list used by :func:`backend.ml.phantom_shapes.paint_labels`. Heights ``s`` are body
millimetres (0 at the right diaphragm dome, positive towards the head), scaled by the patient's height factor;
``x`` points to the patient's left and ``y`` posterior, with the cavity centre at x = y = 0. Nominal landmarks:
heart +5..+130, lung bases down to -70, liver -3..-172, kidneys about -95..-220, aortic bifurcation -235, iliac
crest -250, femoral heads -405, pubic symphysis -445, thighs below -465.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from backend.ml.phantom_shapes import Ellipsoid, Loft, Shape, Split, Tissue, Tube

Sex = Literal["F", "M"]
Point = tuple[float, float, float]
Key = tuple[float, float, float, float, float, float]

# Nominal body cavity (inside the wall muscle) half-width A and half-depth B by height s, mm.
_CAVITY: Final = np.array(
    [
        [-500.0, 0.0, 0.0],
        [-482.0, 55.0, 40.0],
        [-462.0, 112.0, 70.0],
        [-430.0, 140.0, 84.0],
        [-350.0, 146.0, 88.0],
        [-250.0, 141.0, 91.0],
        [-150.0, 134.0, 95.0],
        [-50.0, 140.0, 100.0],
        [50.0, 141.0, 100.0],
        [200.0, 135.0, 95.0],
        [340.0, 120.0, 84.0],
    ]
)
# Posterior cavity wall to vertebral-body centre (lordosis), and the vertebral body's semi-axes, by height.
_SPINE: Final = np.array(
    [
        [-480.0, 40.0, 22.0, 10.0],
        [-400.0, 34.0, 30.0, 12.0],
        [-330.0, 46.0, 40.0, 15.0],
        [-275.0, 64.0, 26.0, 18.0],
        [-230.0, 73.0, 25.0, 18.0],
        [-150.0, 70.0, 23.0, 17.0],
        [-60.0, 64.0, 20.0, 15.0],
        [100.0, 58.0, 17.0, 14.0],
        [340.0, 54.0, 14.0, 12.0],
    ]
)
SACRUM_TOP_S: Final = -275.0
# Lungs (s, |x|, y, a, b) per side: -1 right, +1 left.
_LUNGS: Final[dict[float, tuple[tuple[float, float, float, float, float], ...]]] = {
    -1.0: (
        (-62, 88, 68, 22, 16),
        (-30, 92, 48, 44, 42),
        (0, 82, 22, 60, 66),
        (60, 78, 10, 62, 78),
        (160, 72, 10, 60, 80),
        (260, 62, 14, 46, 62),
        (340, 48, 20, 30, 42),
    ),
    1.0: (
        (-72, 88, 68, 22, 16),
        (-40, 92, 48, 42, 40),
        (-5, 84, 24, 54, 64),
        (60, 82, 18, 52, 70),
        (160, 74, 10, 56, 78),
        (260, 62, 14, 44, 60),
        (340, 48, 20, 30, 42),
    ),
}
# Liver lobes (s, x, y, a, b): the right lobe and the left lobe crossing the midline anteriorly.
_LIVER_RIGHT: Final = (
    (-3, -48, 2, 26, 30),
    (-15, -58, 4, 68, 72),
    (-40, -62, 6, 78, 86),
    (-80, -68, 12, 72, 80),
    (-120, -80, 18, 56, 60),
    (-150, -90, 24, 36, 40),
    (-172, -96, 30, 12, 15),
)
_LIVER_LEFT: Final = (
    (-14, 2, -42, 46, 30),
    (-40, 16, -46, 64, 38),
    (-70, 14, -50, 54, 32),
    (-100, 4, -56, 34, 22),
    (-116, -2, -58, 12, 9),
)
_COLON: Final = (
    (-92, -10, -335, 30),
    (-106, 8, -265, 26),
    (-106, 8, -185, 24),
    (-88, -22, -148, 24),
    (-40, -68, -165, 23),
    (32, -70, -158, 23),
    (96, -12, -112, 22),
    (112, 16, -180, 20),
    (112, 22, -285, 19),
    (72, -22, -345, 19),
    (12, -30, -372, 18),
    (10, 44, -388, 18),
)
_STOMACH: Final = ((32, 10, -38, 10), (62, 18, -30, 34), (72, -12, -68, 36), (48, -42, -102, 28), (6, -55, -118, 19))


@dataclass(frozen=True)
class Patient:
    """Per-patient habitus and anatomy parameters (all lengths mm).

    Attributes:
        seed: seed of the anatomy draws (bowel loops, organ jitter).
        sex: "F" or "M" (uterus or prostate).
        age: years.
        height_scale: cranio-caudal scale of every landmark height.
        cavity_scale: (x, y) scale of the body cavity (visceral habitus).
        organ_scale: scale of organ sizes.
        muscle_mm: abdominal wall muscle thickness.
        fat_mm: subcutaneous fat thickness at the flank; anterior is thicker, posterior thinner.
        fat_front: anterior / flank fat ratio.
        bladder_fill: bladder size factor.
        bowel_gas: 0 (collapsed, fluid-filled bowel) .. 1 (gas-distended).
        table_gap_mm: gap between the lower back and the patient table top.
    """

    seed: int
    sex: Sex
    age: int
    height_scale: float
    cavity_scale: tuple[float, float]
    organ_scale: float
    muscle_mm: float
    fat_mm: float
    fat_front: float
    bladder_fill: float
    bowel_gas: float
    table_gap_mm: float


def draw_patient(seed: int) -> Patient:
    """Draw a patient's habitus from ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, 0xA7A])
    obesity = float(rng.beta(2.0, 2.5))
    return Patient(
        seed=seed,
        sex="F" if rng.random() < 0.5 else "M",
        age=int(rng.integers(22, 90)),
        height_scale=float(rng.uniform(0.9, 1.1)),
        cavity_scale=(float(rng.uniform(0.88, 1.0) + 0.14 * obesity), float(rng.uniform(0.85, 0.97) + 0.2 * obesity)),
        organ_scale=float(rng.uniform(0.88, 1.12)),
        muscle_mm=float(rng.uniform(7.0, 15.0)),
        fat_mm=float(4.0 + 55.0 * obesity**1.5 + rng.uniform(0.0, 6.0)),
        fat_front=float(rng.uniform(0.9, 1.5)),
        bladder_fill=float(rng.uniform(0.55, 1.3)),
        bowel_gas=float(rng.uniform(0.0, 1.0)),
        table_gap_mm=float(rng.uniform(0.0, 4.0)),
    )


class _Frame:
    """Converts nominal anatomy coordinates into this patient's body coordinates."""

    def __init__(self, patient: Patient, rng: np.random.Generator) -> None:
        self.patient = patient
        self.rng = rng
        self.h = patient.height_scale
        self.sx, self.sy = patient.cavity_scale
        self.g = patient.organ_scale

    def s(self, s_nominal: float) -> float:
        """Patient height of a nominal height."""
        return s_nominal * self.h

    def cavity(self, s: float) -> tuple[float, float]:
        """Cavity half-axes (A, B) at patient height ``s``."""
        s_nom = s / self.h
        return (
            float(np.interp(s_nom, _CAVITY[:, 0], _CAVITY[:, 1])) * self.sx,
            float(np.interp(s_nom, _CAVITY[:, 0], _CAVITY[:, 2])) * self.sy,
        )

    def vertebra(self, s: float) -> tuple[float, float, float]:
        """Vertebral body centre y and semi-axes (a, b) at patient height ``s``."""
        s_nom = s / self.h
        depth = float(np.interp(s_nom, _SPINE[:, 0], _SPINE[:, 1]))
        a = float(np.interp(s_nom, _SPINE[:, 0], _SPINE[:, 2])) * self.g
        b = float(np.interp(s_nom, _SPINE[:, 0], _SPINE[:, 3])) * self.g
        return self.cavity(s)[1] - depth * self.sy, a, b

    def spine_front(self, s: float) -> float:
        """y of the anterior surface of the vertebral body at ``s``."""
        y, _, b = self.vertebra(s)
        return y - b

    def c(self, x: float, y: float, s_nominal: float, jitter: float = 0.0) -> Point:
        """A point given in cavity-normalised nominal coordinates (+ isotropic jitter, mm)."""
        j = self.rng.normal(0.0, jitter, 3) if jitter > 0 else np.zeros(3)
        return (x * self.sx + float(j[0]), y * self.sy + float(j[1]), self.s(s_nominal) + float(j[2]))

    def sp(self, x: float, dy: float, s_nominal: float) -> Point:
        """A point ``dy`` mm anterior(-)/posterior(+) of the vertebral body's front surface, x scaled."""
        s = self.s(s_nominal)
        return (x * self.sx, self.spine_front(s) + dy, s)


def _tube(
    tissue: Tissue,
    points: list[Point],
    radii: list[float] | float,
    *,
    inner: Tissue | None = None,
    wall_mm: float = 0.0,
    split: Split | None = None,
    confined: bool = False,
    mobile: bool = False,
    irregularity: float = 0.0,
) -> Tube:
    radius_list = [float(radii)] * len(points) if isinstance(radii, (int, float)) else [float(r) for r in radii]
    return Tube(
        tissue=tissue,
        points=np.asarray(points, dtype=np.float64),
        radii=np.asarray(radius_list, dtype=np.float64),
        inner=inner,
        wall_mm=wall_mm,
        split=split,
        confined=confined,
        mobile=mobile,
        irregularity=irregularity,
    )


def _loft(
    tissue: Tissue,
    keys: list[Key],
    *,
    inner: Tissue | None = None,
    wall_mm: float = 0.0,
    confined: bool = False,
    mobile: bool = False,
    irregularity: float = 0.0,
    boxiness: float = 0.0,
    front_scale: float = 1.0,
    defines_cavity: bool = False,
) -> Loft:
    return Loft(
        tissue=tissue,
        keys=np.asarray(sorted(keys), dtype=np.float64),
        inner=inner,
        wall_mm=wall_mm,
        confined=confined,
        mobile=mobile,
        irregularity=irregularity,
        boxiness=boxiness,
        front_scale=front_scale,
        defines_cavity=defines_cavity,
    )


def _angle(dx: float, dy: float) -> float:
    return math.atan2(dy, dx)


def _body_wall(f: _Frame) -> list[Shape]:
    """Table, skin, subcutaneous fat, wall muscle and the cavity (visceral fat), trunk and thighs."""
    p = f.patient
    skin: list[Key] = []
    fat: list[Key] = []
    muscle: list[Key] = []
    cavity: list[Key] = []
    for s_nom in (float(v) for v in _CAVITY[1:, 0]):
        s = f.s(s_nom)
        a, b = f.cavity(s)
        fat_front = p.fat_mm * p.fat_front
        fat_back = p.fat_mm * (1.1 if s_nom < -420 else 0.55)
        body_a = a + p.muscle_mm + p.fat_mm + 2.0
        body_b = b + p.muscle_mm + (fat_front + fat_back) / 2.0 + 2.0
        body_cy = (fat_back - fat_front) / 2.0
        skin.append((s, 0.0, body_cy, body_a, body_b, 0.0))
        fat.append((s, 0.0, body_cy, body_a - 2.0, body_b - 2.0, 0.0))
        muscle.append((s, 0.0, 0.0, a + p.muscle_mm, b + p.muscle_mm, 0.0))
        cavity.append((s, 0.0, 0.0, a, b, 0.0))
    _, b_waist = f.cavity(f.s(-150.0))
    table_y = b_waist + p.muscle_mm + p.fat_mm * 0.55 + 2.0 + p.table_gap_mm + 22.0
    table = [(f.s(-900.0), 0.0, table_y, 230.0, 22.0, 0.0), (f.s(380.0), 0.0, table_y, 230.0, 22.0, 0.0)]
    shapes: list[Shape] = [_loft(Tissue.TABLE_SHELL, table, boxiness=1.0, inner=Tissue.TABLE_FOAM, wall_mm=2.5)]
    for side in (-1.0, 1.0):
        keys_skin: list[Key] = []
        keys_fat: list[Key] = []
        keys_muscle: list[Key] = []
        for s_nom, a_nom, b_nom in (
            (-900.0, 60.0, 64.0),
            (-620.0, 68.0, 72.0),
            (-490.0, 76.0, 72.0),
            (-468.0, 62.0, 58.0),
            (-452.0, 30.0, 30.0),
        ):
            s = f.s(s_nom)
            a = a_nom * f.sx + p.fat_mm * 0.8
            b = b_nom * f.sy + p.fat_mm * 0.6
            cx = side * (86.0 * f.sx + p.fat_mm * 0.35)
            keys_skin.append((s, cx, 4.0, a, b, 0.0))
            keys_fat.append((s, cx, 4.0, a - 2.0, b - 2.0, 0.0))
            keys_muscle.append((s, cx, 4.0, a - p.fat_mm * 0.8 - 2.0, b - p.fat_mm * 0.6 - 2.0, 0.0))
        shapes += [
            _loft(Tissue.SKIN, keys_skin, irregularity=0.015),
            _loft(Tissue.SUBCUTANEOUS_FAT, keys_fat),
            _loft(Tissue.MUSCLE, keys_muscle, irregularity=0.05),
        ]
    return [
        *shapes,
        _loft(Tissue.SKIN, skin, boxiness=0.4, irregularity=0.015),
        _loft(Tissue.SUBCUTANEOUS_FAT, fat, boxiness=0.4, irregularity=0.015),
        _loft(Tissue.MUSCLE, muscle, boxiness=0.4, irregularity=0.05),
        _loft(Tissue.VISCERAL_FAT, cavity, boxiness=0.4, defines_cavity=True, irregularity=0.04),
    ]


def _lung_section(side: float, s_nom: float) -> tuple[float, float, float, float]:
    """Nominal (x, y, a, b) of one lung at a nominal height."""
    key = np.asarray(_LUNGS[side], dtype=np.float64)
    x, y, a, b = (float(np.interp(s_nom, key[:, 0], key[:, i])) for i in range(1, 5))
    return side * x, y, a, b


def _lungs(f: _Frame) -> list[Shape]:
    """Both lungs and their vascular tree (pulmonary arteries carry right-heart blood)."""
    shapes: list[Shape] = []
    for side, keys in _LUNGS.items():
        lung = [(f.s(s), side * x * f.sx, y * f.sy, a * f.sx, b * f.sy, 0.0) for s, x, y, a, b in keys]
        shapes.append(_loft(Tissue.LUNG, lung, confined=True, mobile=True, irregularity=0.03))
    for side in (-1.0, 1.0):
        hilum = f.c(side * 42.0, 8.0, 150.0)
        for _ in range(16):
            s_nom = float(f.rng.uniform(-40.0, 330.0))
            x, y, a, b = _lung_section(side, s_nom)
            theta = float(f.rng.uniform(0.0, 2.0 * math.pi))
            end = ((x + 0.75 * a * math.cos(theta)) * f.sx, (y + 0.75 * b * math.sin(theta)) * f.sy, f.s(s_nom))
            middle = np.asarray(hilum) * 0.5 + np.asarray(end) * 0.5 + f.rng.normal(0.0, 8.0, 3)
            mid = (float(middle[0]), float(middle[1]), float(middle[2]))
            radii = [4.5 * f.g, 2.8 * f.g, 1.2]
            shapes.append(_tube(Tissue.RIGHT_HEART_BLOOD, [hilum, mid, end], radii, confined=True, mobile=True))
    return shapes


def _heart(f: _Frame) -> list[Shape]:
    """Pericardial fat, myocardium, ventricles and atria (left chambers carry arterial blood)."""
    g = f.g
    angle = math.radians(35.0)
    cx, cy, cs = f.c(12.0, -30.0, 65.0, jitter=4.0)

    def chamber(dx: float, dy: float, ds: float, semi: Point, tissue: Tissue, inner: Tissue | None = None) -> Shape:
        return Ellipsoid(
            tissue=tissue,
            centre=(cx + dx * g, cy + dy * g, cs + ds),
            semi=(semi[0] * g, semi[1] * g, semi[2] * g),
            angle=angle,
            inner=inner,
            wall_mm=2.0 if inner is not None else 0.0,
            confined=True,
        )

    return [
        chamber(0, 0, 0, (72, 60, 64), Tissue.VISCERAL_FAT),
        chamber(0, 2, -2, (64, 53, 58), Tissue.MYOCARDIUM),
        chamber(20, 16, -4, (27, 21, 36), Tissue.LEFT_HEART_BLOOD),
        chamber(-16, -18, -6, (36, 14, 36), Tissue.RIGHT_HEART_BLOOD),
        chamber(-55, 16, 18, (27, 26, 32), Tissue.MYOCARDIUM, inner=Tissue.RIGHT_HEART_BLOOD),
        chamber(-6, 46, 40, (31, 20, 22), Tissue.MYOCARDIUM, inner=Tissue.LEFT_HEART_BLOOD),
    ]


def _mediastinum(f: _Frame) -> list[Shape]:
    """Thoracic aorta, SVC, pulmonary trunk, trachea, main bronchi and oesophagus."""
    g = f.g
    descending = [(26.0 * f.sx, f.vertebra(f.s(s))[0] - 4.0, f.s(s)) for s in (210.0, 120.0, 40.0)]
    aorta = [f.c(8.0, -22.0, 85.0), f.c(4.0, -30.0, 160.0), f.c(2.0, -24.0, 215.0), f.c(14.0, 8.0, 232.0)]
    aorta += [*descending, f.sp(16.0, -8.0, -20.0), f.sp(10.0, -13.0, -60.0)]
    aorta_radii = [r * g for r in (14.0, 15.0, 14.0, 13.0, 12.5, 12.0, 11.5, 11.0, 10.5)]
    svc = [f.c(-30.0, -22.0, 330.0), f.c(-34.0, -18.0, 200.0), f.c(-42.0, -10.0, 105.0)]
    trunk = [f.c(-4.0, -48.0, 110.0), f.c(12.0, -34.0, 175.0), f.c(-40.0, 4.0, 168.0)]
    trachea = [f.c(0.0, 0.0, 360.0), f.c(0.0, 2.0, 200.0)]
    oesophagus = [f.sp(4.0, -6.0, 360.0), f.sp(6.0, -8.0, 150.0), f.sp(14.0, -22.0, 0.0), f.c(32.0, 10.0, -38.0)]
    return [
        _tube(Tissue.AORTA, aorta, aorta_radii, confined=True),
        _tube(Tissue.RIGHT_HEART_BLOOD, svc, 10.0 * g, confined=True),
        _tube(Tissue.RIGHT_HEART_BLOOD, trunk, [13 * g, 12 * g, 9 * g], confined=True),
        _tube(Tissue.RIGHT_HEART_BLOOD, [trunk[1], f.c(44.0, 4.0, 165.0)], [11 * g, 9 * g], confined=True),
        _tube(Tissue.HOLLOW_WALL, trachea, 10.0 * g, inner=Tissue.AIRWAY, wall_mm=1.8, confined=True),
        _tube(Tissue.HOLLOW_WALL, [trachea[1], f.c(-40.0, 10.0, 165.0)], 7.5 * g, inner=Tissue.AIRWAY, wall_mm=1.5),
        _tube(Tissue.HOLLOW_WALL, [trachea[1], f.c(42.0, 12.0, 160.0)], 7.0 * g, inner=Tissue.AIRWAY, wall_mm=1.5),
        _tube(Tissue.HOLLOW_WALL, oesophagus, 8.0 * g, inner=Tissue.GI_AIR, wall_mm=5.5, confined=True, mobile=True),
    ]


def _small_bowel(f: _Frame) -> list[Shape]:
    """Fluid- and gas-filled small-bowel loops meandering through the mid and lower abdomen."""
    p = f.patient
    shapes: list[Shape] = []
    lo = np.array([-80.0, -75.0, -370.0])
    hi = np.array([85.0, 15.0, -165.0])
    for _ in range(int(f.rng.integers(10, 15))):
        point = f.rng.uniform(lo, hi)
        points = [point]
        direction = f.rng.normal(0.0, 1.0, 3) * np.array([1.0, 1.0, 0.5])
        for _ in range(int(f.rng.integers(5, 9))):
            direction = 0.6 * direction + 0.8 * f.rng.normal(0.0, 1.0, 3) * np.array([1.0, 1.0, 0.4])
            step = direction / (np.linalg.norm(direction) + 1e-9) * f.rng.uniform(25.0, 40.0)
            point = np.clip(point + step, lo, hi)
            points.append(point)
        collapsed = bool(f.rng.random() < 0.3 * (1.0 - p.bowel_gas) + 0.1)
        radius = (f.rng.uniform(6.0, 8.0) if collapsed else f.rng.uniform(10.0, 14.0 + 6.0 * p.bowel_gas)) * f.g
        gas = bool(p.bowel_gas > f.rng.random()) and not collapsed
        scaled = [(float(x) * f.sx, float(y) * f.sy, f.s(float(s))) for x, y, s in points]
        split = Split(level=float(f.rng.uniform(-0.6, 0.1)), tissue=Tissue.GI_AIR, anterior=True) if gas else None
        wall = 3.0 if collapsed else 2.0
        shapes.append(
            _tube(
                Tissue.HOLLOW_WALL,
                scaled,
                float(radius),
                inner=Tissue.GI_FLUID,
                wall_mm=wall,
                split=split,
                confined=True,
                mobile=True,
                irregularity=0.08,
            )
        )
    return shapes


def _colon(f: _Frame) -> list[Shape]:
    """Caecum, ascending, transverse, descending and sigmoid colon and rectum with stool and gas."""
    g = f.g
    points = [f.c(x, y, s, jitter=5.0) for x, y, s, _ in _COLON]
    gas = Split(level=float(f.rng.uniform(-0.7, 0.2)), tissue=Tissue.GI_AIR, anterior=True)
    rectum = [f.c(10.0, 44.0, -388.0), f.sp(0.0, 18.0, -405.0), f.sp(0.0, 14.0, -440.0), f.c(0.0, 40.0, -478.0)]
    rectum = [(x, min(y, f.cavity(s)[1] - 22.0), s) for x, y, s in rectum]
    rectal_gas = Split(level=float(f.rng.uniform(-0.8, 0.0)), tissue=Tissue.GI_AIR, anterior=True)
    return [
        _tube(
            Tissue.HOLLOW_WALL,
            points,
            [r * g for *_, r in _COLON],
            inner=Tissue.STOOL,
            wall_mm=2.0,
            split=gas,
            confined=True,
            mobile=True,
            irregularity=0.1,
        ),
        _tube(
            Tissue.HOLLOW_WALL,
            rectum,
            [18 * g, 19 * g, 16 * g, 9 * g],
            inner=Tissue.STOOL,
            wall_mm=2.5,
            split=rectal_gas,
            confined=True,
            irregularity=0.08,
        ),
    ]


def _stomach(f: _Frame) -> list[Shape]:
    """Stomach (fluid with an air-fluid level) and duodenum."""
    g, rng = f.g, f.rng
    gas_level = float(rng.uniform(-0.8, -0.1 + 0.3 * f.patient.bowel_gas))
    stomach = [f.c(x, y, s) for x, y, s, _ in _STOMACH] + [f.c(-24, -42, -124)]
    stomach_radii = [r * g for *_, r in _STOMACH] + [11 * g]
    duodenum = [f.c(-24, -42, -124), f.c(-42, -30, -132), f.c(-58, 0, -150), f.c(-52, 12, -188)]
    duodenum += [f.sp(-20, -6, -205), f.sp(25, -8, -198), f.c(45, -25, -180)]
    duodenum_radii = [r * g for r in (11, 14, 13, 12, 10, 10, 11)]
    return [
        _tube(
            Tissue.HOLLOW_WALL,
            stomach,
            stomach_radii,
            inner=Tissue.GI_FLUID,
            wall_mm=4.0,
            split=Split(level=gas_level, tissue=Tissue.GI_AIR, anterior=True),
            confined=True,
            mobile=True,
            irregularity=0.05,
        ),
        _tube(
            Tissue.HOLLOW_WALL,
            duodenum,
            duodenum_radii,
            inner=Tissue.GI_FLUID,
            wall_mm=2.5,
            split=Split(level=float(rng.uniform(-0.9, -0.2)), tissue=Tissue.GI_AIR, anterior=True),
            confined=True,
            mobile=True,
            irregularity=0.06,
        ),
    ]


def _solid_upper_organs(f: _Frame) -> list[Shape]:
    """Liver (two lobes), gallbladder, spleen and pancreas."""
    g, rng = f.g, f.rng
    shapes: list[Shape] = []
    shift = rng.normal(0.0, 4.0, 2)
    for lobe in (_LIVER_RIGHT, _LIVER_LEFT):
        keys = [
            (f.s(s), (x + float(shift[0])) * f.sx, (y + float(shift[1])) * f.sy, a * g, b * g, 0.0)
            for s, x, y, a, b in lobe
        ]
        shapes.append(_loft(Tissue.LIVER, keys, confined=True, mobile=True, irregularity=0.06))
    shapes.append(
        Ellipsoid(
            tissue=Tissue.HOLLOW_WALL,
            centre=f.c(-44, -44, -112, jitter=4.0),
            semi=(16 * g, 14 * g, 34 * g),
            tilt=(0.25, 0.3),
            inner=Tissue.GALLBLADDER,
            wall_mm=2.0,
            confined=True,
            mobile=True,
        )
    )
    shapes.append(
        Ellipsoid(
            tissue=Tissue.SPLEEN,
            centre=f.c(92, 38, -72, jitter=5.0),
            semi=(55 * g * float(rng.uniform(0.85, 1.2)), 22 * g, 48 * g),
            angle=_angle(-40.0, 90.0),
            tilt=(0.05, 0.35),
            confined=True,
            mobile=True,
            irregularity=0.06,
        )
    )
    pancreas = [f.sp(-36, -18, -140), f.sp(-8, -38, -124), f.sp(34, -30, -114), f.c(74, 14, -100), f.c(88, 28, -95)]
    radii = [r * g for r in (17, 11, 12, 10, 8)]
    shapes.append(_tube(Tissue.PANCREAS, pancreas, radii, confined=True, mobile=True, irregularity=0.12))
    return shapes


def _kidney(f: _Frame, side: float) -> list[Shape]:
    """Cortex, medullary pyramids, sinus fat, pelvis with calyces and the ureter of one kidney (side -1 = right)."""
    g, rng = f.g, f.rng
    s = f.s(-165.0 if side < 0 else -150.0) + float(rng.normal(0.0, 6.0))
    vert_y, vert_a, _ = f.vertebra(s)
    centre = (side * (vert_a + 50.0 * g) * f.sx, vert_y + 8.0 + float(rng.normal(0.0, 4.0)), s)
    a, b, c = 29.0 * g, 23.0 * g, 54.0 * g * float(rng.uniform(0.9, 1.1))
    hx, hy = -side / math.sqrt(2.0), -1.0 / math.sqrt(2.0)  # hilum direction: anteromedial
    angle = _angle(hx, hy)
    tilt = (-side * 0.18, 0.12)

    def organ(tissue: Tissue, where: Point, semi: Point, direction: float = angle) -> Ellipsoid:
        return Ellipsoid(tissue=tissue, centre=where, semi=semi, angle=direction, tilt=tilt, confined=True, mobile=True)

    shapes: list[Shape] = [organ(Tissue.KIDNEY_CORTEX, centre, (a, b, c))]
    for level in (-0.58, -0.2, 0.2, 0.58):
        ring = math.sqrt(1.0 - level * level)
        dz = level * c
        for phi in (-1.15, -0.35, 0.35, 1.15):
            dx = -hx * math.cos(phi) - hy * math.sin(phi)
            dy = -hy * math.cos(phi) + hx * math.sin(phi)
            where = (
                centre[0] + tilt[0] * dz + 0.46 * a * ring * dx,
                centre[1] + tilt[1] * dz + 0.46 * b * ring * dy,
                centre[2] + dz,
            )
            shapes.append(organ(Tissue.KIDNEY_MEDULLA, where, (8.5 * g, 5.5 * g, 9.5 * g), _angle(dx, dy)))
    sinus = (centre[0] + 0.58 * a * hx, centre[1] + 0.58 * a * hy, centre[2])
    shapes.append(organ(Tissue.VISCERAL_FAT, sinus, (0.34 * a, 0.3 * b, 0.45 * c)))
    pelvis = (centre[0] + 0.8 * a * hx, centre[1] + 0.8 * a * hy, centre[2] - 4.0)
    shapes.append(organ(Tissue.COLLECTING_SYSTEM, pelvis, (11.0 * g, 5.5 * g, 12.0 * g)))
    for level in (-0.5, 0.0, 0.5):
        dz = level * c
        tip = (centre[0] + tilt[0] * dz + 0.1 * a * hx, centre[1] + tilt[1] * dz + 0.1 * a * hy, centre[2] + dz)
        shapes.append(_tube(Tissue.COLLECTING_SYSTEM, [pelvis, tip], [3.5 * g, 2.2 * g], confined=True, mobile=True))
    ureter = [
        (pelvis[0] + hx * 12.0, pelvis[1] + 4.0, pelvis[2] - 16.0),
        f.sp(side * 48.0, 4.0, -235.0),
        f.c(side * 58.0, 24.0, -300.0),
        f.c(side * 50.0, 42.0, -365.0),
        f.c(side * 22.0, 8.0, -412.0),
    ]
    shapes.append(_tube(Tissue.COLLECTING_SYSTEM, ureter, 2.6 * g, confined=True))
    return shapes


def _pelvic_organs(f: _Frame) -> list[Shape]:
    """Bladder (urine with a dependent contrast layer) and uterus or prostate."""
    p, g, rng = f.patient, f.g, f.rng
    fill = p.bladder_fill
    bladder = Ellipsoid(
        tissue=Tissue.HOLLOW_WALL,
        centre=f.c(0.0, -32.0 + 8.0 * (1.2 - fill), -418.0 + 14.0 * (fill - 1.0), jitter=3.0),
        semi=(46.0 * fill * g, 34.0 * fill * g, 32.0 * fill * g),
        inner=Tissue.BLADDER_URINE,
        wall_mm=3.0,
        split=Split(level=float(rng.uniform(-0.1, 0.55)), tissue=Tissue.BLADDER_DEPENDENT, anterior=False),
        confined=True,
        irregularity=0.03,
    )
    if p.sex == "M":
        organ = Ellipsoid(
            tissue=Tissue.PELVIC_ORGAN, centre=f.c(0.0, -6.0, -462.0), semi=(21 * g, 17 * g, 18 * g), confined=True
        )
    else:
        organ = Ellipsoid(
            tissue=Tissue.PELVIC_ORGAN,
            centre=f.c(0.0, 16.0, -378.0),
            semi=(42 * g, 27 * g, 36 * g),
            tilt=(0.0, -0.4),
            confined=True,
            irregularity=0.05,
        )
    return [organ, bladder]


def _arteries(f: _Frame) -> list[Shape]:
    """Abdominal aorta, celiac/hepatic/splenic arteries, SMA, renal, iliac and femoral arteries."""
    g = f.g
    bifurcation = f.sp(6.0, -10.0, -235.0)
    aorta = [f.sp(10.0, -13.0, -60.0), f.sp(9.0, -12.0, -150.0), bifurcation]
    shapes: list[Shape] = [_tube(Tissue.AORTA, aorta, [11 * g, 10 * g, 8.5 * g], confined=True)]
    branches: list[tuple[list[Point], tuple[float, ...]]] = [
        ([f.sp(9, -20, -95), f.sp(9, -38, -93), f.c(-40, -8, -88), f.c(-60, 2, -85)], (4.0, 3.5, 3.0, 2.5)),
        ([f.sp(9, -38, -93), f.c(40, -10, -98), f.c(70, 18, -92), f.c(86, 30, -90)], (3.2, 3.0, 2.8, 2.5)),
        ([f.sp(9, -20, -110), f.sp(8, -38, -125), f.sp(6, -48, -200), f.c(2, -60, -270)], (4.2, 4.0, 3.2, 2.2)),
        ([f.sp(6, -6, -132), f.sp(-24, 2, -138), f.c(-52, 30, -158)], (3.2, 3.0, 2.6)),
        ([f.sp(12, -6, -130), f.c(50, 28, -145)], (3.2, 2.6)),
    ]
    for points, radii in branches:
        shapes.append(_tube(Tissue.ARTERY, points, [r * g for r in radii], confined=True))
    for side in (-1.0, 1.0):
        iliac = [bifurcation, f.sp(side * 42.0, -2.0, -300.0), f.c(side * 74.0, -18.0, -400.0)]
        iliac += [f.c(side * 82.0, -48.0, -470.0), f.c(side * 76.0, -30.0, -640.0)]
        shapes.append(_tube(Tissue.ARTERY, iliac, [r * g for r in (8.0, 6.5, 5.0, 4.5, 3.5)]))
    return shapes


def _veins(f: _Frame) -> list[Shape]:
    """IVC (infrarenal, suprarenal), renal veins, portal system, hepatic veins, iliac and femoral veins."""
    g = f.g
    shapes: list[Shape] = []
    for side in (-1.0, 1.0):
        vein = [f.sp(side * 12.0, -4.0, -255.0), f.sp(side * 38.0, 6.0, -305.0), f.c(side * 66.0, -14.0, -400.0)]
        vein += [f.c(side * 72.0, -44.0, -470.0), f.c(side * 68.0, -26.0, -640.0)]
        shapes.append(_tube(Tissue.IVC_INFRARENAL, vein, [r * g for r in (9.0, 7.5, 6.5, 6.0, 5.0)]))
    infrarenal = [f.sp(0.0, -4.0, -255.0), f.sp(-22.0, -6.0, -200.0), f.sp(-24.0, -8.0, -150.0)]
    suprarenal = [infrarenal[-1], f.sp(-26.0, -6.0, -100.0), f.c(-24.0, 12.0, -30.0), f.c(-34.0, -2.0, 20.0)]
    left_renal = [f.c(48, 26, -147), f.sp(10, -30, -138), f.sp(-22, -8, -142)]
    right_renal = [f.c(-50, 28, -160), f.sp(-24, -8, -150)]
    shapes += [
        _tube(Tissue.IVC_INFRARENAL, infrarenal, [10 * g, 11 * g, 11 * g], confined=True),
        _tube(Tissue.IVC_SUPRARENAL, suprarenal, [11 * g, 12 * g, 13 * g, 13 * g], confined=True),
        _tube(Tissue.RENAL_VEIN, left_renal, [4.5 * g, 4.0 * g, 5.0 * g], confined=True, mobile=True),
        _tube(Tissue.RENAL_VEIN, right_renal, [5.0 * g, 5.5 * g], confined=True, mobile=True),
    ]
    confluence = f.sp(-4.0, -30.0, -122.0)
    porta = f.c(-40.0, 4.0, -86.0)
    right_branch = f.c(-96, 18, -80)
    portal: list[tuple[list[Point], tuple[float, ...]]] = [
        ([confluence, porta], (7.5, 7.0)),
        ([porta, right_branch, f.c(-122, 38, -108)], (5.5, 4.0, 2.8)),
        ([right_branch, f.c(-112, -22, -55)], (3.5, 2.5)),
        ([porta, f.c(-6, -26, -78), f.c(22, -40, -68), f.c(44, -56, -56)], (5.0, 4.0, 3.2, 2.2)),
        ([f.c(-70, 10, -84), f.c(-84, 36, -128)], (3.5, 2.5)),
        ([confluence, f.c(40, 0, -112), f.c(86, 30, -96)], (5.0, 4.5, 4.0)),
        ([confluence, f.sp(-10, -42, -170), f.c(-8, -58, -260)], (6.5, 5.5, 3.5)),
    ]
    for points, radii in portal:
        shapes.append(_tube(Tissue.PORTAL_VEIN, points, [r * g for r in radii], confined=True, mobile=True))
    ivc_top = f.c(-26.0, 8.0, -18.0)
    for start, radii in (((-118, 42, -60), (3.0, 7.0)), ((-50, -40, -64), (3.0, 6.0)), ((28, -40, -48), (2.8, 6.0))):
        points = [f.c(*start), ivc_top]
        shapes.append(_tube(Tissue.HEPATIC_VEIN, points, [r * g for r in radii], confined=True, mobile=True))
    return shapes


def _psoas_and_iliacus(f: _Frame, side: float) -> list[Shape]:
    g = f.g
    points: list[Point] = []
    radii: list[float] = []
    for s_nom, r in ((-95.0, 5.0), (-150.0, 12.0), (-200.0, 17.0), (-250.0, 21.0)):
        s = f.s(s_nom)
        y, a, _ = f.vertebra(s)
        points.append((side * (a + r * g * 0.9), y - 4.0, s))
        radii.append(r * g)
    for x, y, s_nom, r in ((66.0, -8.0, -330.0, 20.0), (76.0, -34.0, -430.0, 17.0), (80.0, -36.0, -500.0, 14.0)):
        points.append(f.c(side * x, y, s_nom))
        radii.append(r * g)
    iliacus = [
        (f.s(-240.0), side * 100 * f.sx, 8 * f.sy, 14 * g, 8 * g, 0.0),
        (f.s(-300.0), side * 92 * f.sx, 6 * f.sy, 24 * g, 14 * g, 0.0),
        (f.s(-370.0), side * 84 * f.sx, -8 * f.sy, 16 * g, 12 * g, 0.0),
    ]
    return [
        _tube(Tissue.MUSCLE, points, radii, confined=True, irregularity=0.04),
        _loft(Tissue.MUSCLE, iliacus, confined=True),
    ]


def _back_muscles(f: _Frame, side: float) -> list[Shape]:
    """Quadratus lumborum, erector spinae (merging with the posterior wall) and gluteal muscles of one side."""
    g = f.g
    quadratus: list[Key] = []
    for s_nom in (-110.0, -180.0, -250.0):
        s = f.s(s_nom)
        y, a, _ = f.vertebra(s)
        quadratus.append((s, side * (a + 45.0 * g), y + 18.0, 15.0 * g, 11.0 * g, 0.0))
    erector: list[Key] = []
    for s_nom in (-400.0, -330.0, -260.0, -150.0, -40.0, 100.0, 250.0, 340.0):
        s = f.s(s_nom)
        _, b_cav = f.cavity(s)
        y_v, _, _ = f.vertebra(s)
        depth = min(max(b_cav - y_v, 20.0), 80.0)
        semi_b = depth * 0.42
        semi_a = (10.0 + 0.24 * depth) * g if s_nom > -380 else 8.0
        erector.append((s, side * (semi_a + 4.0), b_cav - semi_b * 0.8, semi_a, semi_b, 0.0))
    gluteal = [
        (f.s(-270.0), side * 115 * f.sx, 62 * f.sy, 30 * g, 16 * g, 0.0),
        (f.s(-330.0), side * 118 * f.sx, 50 * f.sy, 45 * g, 34 * g, 0.0),
        (f.s(-420.0), side * 110 * f.sx, 42 * f.sy, 50 * g, 40 * g, 0.0),
        (f.s(-490.0), side * 80 * f.sx, 50 * f.sy, 40 * g, 28 * g, 0.0),
    ]
    return [
        _loft(Tissue.MUSCLE, quadratus, confined=True),
        _loft(Tissue.MUSCLE, erector, confined=True, boxiness=0.55, irregularity=0.03),
        _loft(Tissue.MUSCLE, gluteal, confined=True, irregularity=0.04),
    ]


def _vertebra_levels(f: _Frame) -> list[tuple[float, float]]:
    """(bottom, top) heights of the vertebral bodies from L5 upwards (discs in between)."""
    levels: list[tuple[float, float]] = []
    top = f.s(SACRUM_TOP_S)
    for index in range(22):
        lumbar = index < 5
        disc = (10.0 if lumbar else 6.0) * f.h * f.g
        height = (27.0 if lumbar else 25.0 - 0.4 * (index - 5)) * f.h * f.g
        bottom = top + disc
        levels.append((bottom, bottom + height))
        top = bottom + height
        if top > f.s(420.0):
            break
    return levels


def _vertebra(f: _Frame, lo: float, hi: float, below: float, lumbar: bool) -> list[Shape]:
    """Disc below, body (cortex + cancellous), posterior arch, spinous and transverse processes of one vertebra."""
    g = f.g
    body: list[Key] = []
    arch: list[Key] = []
    spinous: list[Key] = []
    disc: list[Key] = []
    for s in (lo, hi):
        y, a, b = f.vertebra(s)
        body.append((s, 0.0, y, a, b, 0.0))
        canal_y = y + b + 9.0 * g
        arch.append((s, 0.0, canal_y + 1.0, 15.0 * g, 13.0 * g, 0.0))
        spinous.append((s - 3.0, 0.0, canal_y + 22.0 * g, 3.5 * g, 14.0 * g, 0.0))
    for s in (below, lo):
        y, a, b = f.vertebra(s)
        disc.append((s, 0.0, y, a + 1.0, b + 1.0, 0.0))
    shapes: list[Shape] = [_loft(Tissue.DISC, disc)]
    length = (16.0 if lumbar else 10.0) * g
    for side in (-1.0, 1.0):
        process: list[Key] = []
        for s in ((lo + hi) / 2.0, hi - 2.0):
            y, a, b = f.vertebra(s)
            process.append((s, side * (a * 0.55 + length), y + b + 7.0 * g, length, 4.5 * g, side * 0.25))
        shapes.append(_loft(Tissue.CORTICAL_BONE, process, inner=Tissue.CANCELLOUS_BONE, wall_mm=1.5))
    shapes += [
        _loft(Tissue.CORTICAL_BONE, body, boxiness=0.3, inner=Tissue.CANCELLOUS_BONE, wall_mm=1.6),
        _loft(Tissue.CORTICAL_BONE, arch, inner=Tissue.CANCELLOUS_BONE, wall_mm=2.5),
        _loft(Tissue.CORTICAL_BONE, spinous, inner=Tissue.CANCELLOUS_BONE, wall_mm=1.5),
    ]
    return shapes


def _vertebral_column(f: _Frame) -> list[Shape]:
    """Vertebrae, sacrum and the spinal canal."""
    g = f.g
    shapes: list[Shape] = []
    canal: list[Point] = []
    levels = _vertebra_levels(f)
    for index, (lo, hi) in enumerate(levels):
        below = levels[index - 1][1] if index > 0 else lo - 10.0
        shapes += _vertebra(f, lo, hi, below, lumbar=index < 5)
        y, _, b = f.vertebra((lo + hi) / 2.0)
        canal.append((0.0, y + b + 9.0 * g, (lo + hi) / 2.0))
    sacrum: list[Key] = []
    for s_nom, a_nom, b_nom in ((-275.0, 48.0, 18.0), (-310.0, 52.0, 16.0), (-350.0, 40.0, 13.0), (-385.0, 24.0, 10.0)):
        s = f.s(s_nom)
        sacrum.append((s, 0.0, f.vertebra(s)[0], a_nom * g, b_nom * g, 0.0))
    shapes.append(_loft(Tissue.CORTICAL_BONE, sacrum, boxiness=0.45, inner=Tissue.CANCELLOUS_BONE, wall_mm=2.0))
    sacral_canal = [(0.0, f.vertebra(f.s(s))[0] + 6.0, f.s(s)) for s in (-340.0, -285.0)]
    shapes.append(_tube(Tissue.SPINAL_CANAL, sacral_canal + canal, 8.5 * g))
    return shapes


def _ribs_and_sternum(f: _Frame) -> list[Shape]:
    """Ribs (cortex, marrow, anterior costal cartilage) curving around the wall, sternum and scapulae."""
    p, g = f.patient, f.g
    shapes: list[Shape] = []
    for k, s_nom in enumerate(float(v) for v in np.arange(-55.0, 330.0, 31.0)):
        floating = k < 2
        sweep = math.radians(110.0 if floating else (160.0 if k < 5 else 178.0))
        drop = (70.0 if floating else 95.0 - 1.5 * k) * f.h
        s0 = f.s(float(s_nom))
        for side in (-1.0, 1.0):
            bone: list[Point] = []
            cartilage: list[Point] = []
            for i, phi in enumerate(np.linspace(math.radians(12.0), sweep, 9)):
                s = s0 - drop * math.sin(min(float(phi) / sweep, 1.0) * math.pi / 2.0)
                a, b = f.cavity(s)
                point = (side * (a + p.muscle_mm * 0.45) * math.sin(phi), (b + p.muscle_mm * 0.45) * math.cos(phi), s)
                (cartilage if not floating and k >= 2 and i >= 7 else bone).append(point)
            shapes.append(_tube(Tissue.CORTICAL_BONE, bone, 4.5 * g, inner=Tissue.CANCELLOUS_BONE, wall_mm=1.4))
            if cartilage:
                shapes.append(_tube(Tissue.CARTILAGE, [bone[-1], *cartilage], 4.5 * g))
    sternum: list[Key] = []
    for s_nom in (25.0, 120.0, 240.0, 330.0):
        s = f.s(s_nom)
        sternum.append((s, 0.0, -(f.cavity(s)[1] + p.muscle_mm * 0.35), 14.0 * g, 6.0 * g, 0.0))
    shapes.append(_loft(Tissue.CORTICAL_BONE, sternum, inner=Tissue.CANCELLOUS_BONE, wall_mm=1.5))
    for side in (-1.0, 1.0):
        scapula: list[Key] = []
        for s_nom, length in ((150.0, 30.0), (230.0, 55.0), (330.0, 60.0)):
            s = f.s(s_nom)
            a, b = f.cavity(s)
            scapula.append((s, side * a * 0.62, b + p.muscle_mm * 0.7, length * g, 4.0, side * -0.35))
        shapes.append(_loft(Tissue.CORTICAL_BONE, scapula, inner=Tissue.CANCELLOUS_BONE, wall_mm=1.2))
    return shapes


# Iliac wing cross-sections (s, |x|, y, half-length, half-thickness, direction dx, dy).
_ILIUM: Final = (
    (-245.0, 122.0, 22.0, 40.0, 4.5, 0.45, -1.0),
    (-270.0, 110.0, 30.0, 58.0, 5.0, 0.6, -1.0),
    (-310.0, 96.0, 36.0, 58.0, 6.5, 0.75, -1.0),
    (-350.0, 90.0, 28.0, 44.0, 11.0, 0.9, -1.0),
    (-385.0, 92.0, 10.0, 32.0, 22.0, 1.2, -1.0),
)


def _hip(f: _Frame, side: float) -> list[Shape]:
    """Iliac wing, acetabulum, femoral head/neck/trochanter/shaft, pubic and ischial rami of one side."""
    g = f.g
    ilium = [
        (f.s(s), side * x * f.sx, y * f.sy, length * g, thick * g, _angle(-side * dx, -dy))
        for s, x, y, length, thick, dx, dy in _ILIUM
    ]
    head = f.c(side * 88.0, -6.0, -405.0)
    neck_end = f.c(side * 118.0, 4.0, -440.0)
    shaft = [f.c(side * 112.0, 2.0, -455.0), f.c(side * 100.0, -6.0, -560.0), f.c(side * 92.0, -10.0, -900.0)]
    pubis = [f.c(side * 72.0, -32.0, -430.0), f.c(side * 30.0, -58.0, -440.0), f.c(side * 6.0, -62.0, -448.0)]
    ischium = [f.c(side * 80.0, 30.0, -420.0), f.c(side * 62.0, 40.0, -478.0), f.c(side * 30.0, -30.0, -462.0)]
    acetabulum = (head[0] - side * 6.0, head[1] + 2.0, head[2] + 6.0)
    bone, marrow = Tissue.CORTICAL_BONE, Tissue.CANCELLOUS_BONE
    return [
        _loft(bone, ilium, inner=marrow, wall_mm=2.0),
        Ellipsoid(tissue=bone, centre=acetabulum, semi=(31.0 * g, 31.0 * g, 30.0 * g), inner=marrow, wall_mm=3.0),
        Ellipsoid(tissue=Tissue.CARTILAGE, centre=head, semi=(25.5 * g, 25.5 * g, 25.5 * g)),
        Ellipsoid(tissue=bone, centre=head, semi=(23.5 * g, 23.5 * g, 23.5 * g), inner=marrow, wall_mm=1.5),
        _tube(bone, [head, neck_end], [15.0 * g, 16.0 * g], inner=marrow, wall_mm=2.0),
        Ellipsoid(
            tissue=bone, centre=f.c(side * 120.0, 8.0, -442.0), semi=(18 * g, 22 * g, 26 * g), inner=marrow, wall_mm=1.5
        ),
        _tube(bone, shaft, [15.0 * g, 13.0 * g, 12.0 * g], inner=Tissue.MARROW_FAT, wall_mm=5.0),
        _tube(bone, pubis, [11.0 * g, 9.0 * g, 10.0 * g], inner=marrow, wall_mm=1.8),
        _tube(bone, ischium, [11.0 * g, 10.0 * g, 7.0 * g], inner=marrow, wall_mm=1.8),
    ]


def build_shapes(patient: Patient) -> tuple[Shape, ...]:
    """Build the painting list of one patient (deterministic in ``patient.seed``).

    Returns:
        Shapes in painting order: body wall and cavity, chest, bowel, organs, vessels, muscles, bones.
    """
    f = _Frame(patient, np.random.default_rng([patient.seed, 0xB0D]))
    shapes: list[Shape] = []
    shapes += _body_wall(f)
    shapes += _lungs(f)
    shapes += _heart(f)
    shapes += _mediastinum(f)
    shapes += _small_bowel(f)
    shapes += _colon(f)
    shapes += _stomach(f)
    shapes += _solid_upper_organs(f)
    shapes += _kidney(f, -1.0)
    shapes += _kidney(f, 1.0)
    shapes += _pelvic_organs(f)
    shapes += _arteries(f)
    shapes += _veins(f)
    for side in (-1.0, 1.0):
        shapes += _psoas_and_iliacus(f, side)
        shapes += _back_muscles(f, side)
    shapes += _vertebral_column(f)
    shapes += _ribs_and_sternum(f)
    for side in (-1.0, 1.0):
        shapes += _hip(f, side)
    return tuple(shapes)


def body_extent(patient: Patient) -> tuple[float, float, float]:
    """Half-width, posterior and anterior body surface ``y`` (mm) at the waist, for framing the field of view."""
    frame = _Frame(patient, np.random.default_rng(0))
    a, b = frame.cavity(frame.s(-150.0))
    half_width = a + patient.muscle_mm + patient.fat_mm + 2.0
    back = b + patient.muscle_mm + patient.fat_mm * 0.55 + 2.0
    front = -(b + patient.muscle_mm + patient.fat_mm * patient.fat_front + 2.0)
    return half_width, back, front


LANDMARKS: Final[dict[str, float]] = {
    "chest_top": 300.0,
    "above_dome": 30.0,
    "iliac_crest": -255.0,
    "below_symphysis": -470.0,
    "mid_thigh": -600.0,
}
"""Nominal landmark heights (mm) used to define coverages."""


def landmark(patient: Patient, name: str) -> float:
    """Patient height (mm) of a named landmark of :data:`LANDMARKS`."""
    return LANDMARKS[name] * patient.height_scale
