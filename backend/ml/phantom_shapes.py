"""Analytic 3-D shapes of the synthetic abdomen and the painter that turns them into a label map per slice.

Coordinates are body millimetres: ``x`` towards the patient's left, ``y`` posterior, ``s`` the cranio-caudal height
(0 at the right diaphragm dome, positive towards the head). A shape is evaluated only inside the bounding box of its
cross-section at ``s``, so a 512 x 512 slice costs a few milliseconds; shapes are painted in list order (later shapes
win), optionally confined to the body cavity.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


class Tissue(IntEnum):
    """Label-map values: one per tissue compartment with its own attenuation."""

    AIR = 0
    TABLE_SHELL = 1
    TABLE_FOAM = 2
    SKIN = 3
    SUBCUTANEOUS_FAT = 4
    MUSCLE = 5
    VISCERAL_FAT = 6
    LUNG = 7
    AIRWAY = 8
    MYOCARDIUM = 9
    LEFT_HEART_BLOOD = 10
    RIGHT_HEART_BLOOD = 11
    AORTA = 12
    ARTERY = 13
    IVC_SUPRARENAL = 14
    IVC_INFRARENAL = 15
    RENAL_VEIN = 16
    PORTAL_VEIN = 17
    HEPATIC_VEIN = 18
    LIVER = 19
    GALLBLADDER = 20
    SPLEEN = 21
    PANCREAS = 22
    KIDNEY_CORTEX = 23
    KIDNEY_MEDULLA = 24
    COLLECTING_SYSTEM = 25
    BLADDER_URINE = 26
    BLADDER_DEPENDENT = 27
    HOLLOW_WALL = 28
    GI_FLUID = 29
    GI_AIR = 30
    STOOL = 31
    PELVIC_ORGAN = 32
    CORTICAL_BONE = 33
    CANCELLOUS_BONE = 34
    MARROW_FAT = 35
    DISC = 36
    SPINAL_CANAL = 37
    CARTILAGE = 38


N_TISSUES = len(Tissue)


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates of one image in body millimetres.

    Attributes:
        x_mm: float32 [nx], ascending (column centres, patient left positive).
        y_mm: float32 [ny], ascending (row centres, posterior positive).
    """

    x_mm: FloatArray
    y_mm: FloatArray

    def span(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice] | None:
        """Row and column slices of the pixels inside ``[x0, x1] x [y0, y1]``; None when empty."""
        c0 = int(np.searchsorted(self.x_mm, x0, side="left"))
        c1 = int(np.searchsorted(self.x_mm, x1, side="right"))
        r0 = int(np.searchsorted(self.y_mm, y0, side="left"))
        r1 = int(np.searchsorted(self.y_mm, y1, side="right"))
        if c1 <= c0 or r1 <= r0:
            return None
        return slice(r0, r1), slice(c0, c1)


@dataclass(frozen=True)
class Split:
    """Relabel part of a shape's lumen by its vertical position (air-fluid or contrast-urine levels).

    Attributes:
        level: threshold on the normalised vertical offset from the shape's centre or axis (-1 anterior .. 1 posterior).
        tissue: the label given to the selected part.
        anterior: True selects ``offset < level`` (non-dependent: gas); False selects ``offset > level`` (dependent).
    """

    level: float
    tissue: Tissue
    anterior: bool


@dataclass(frozen=True)
class Region:
    """One shape's cross-section on a slice: masks on the sub-grid ``labels[rows, cols]``."""

    rows: slice
    cols: slice
    outer: BoolArray
    inner: BoolArray | None
    rel_y: FloatArray | None


@dataclass(frozen=True, kw_only=True)
class Shape(ABC):
    """Common painting options.

    Attributes:
        tissue: label of the shape (its wall when ``inner`` is set).
        inner: label of the lumen (inside ``wall_mm``), or None for a solid shape.
        wall_mm: wall thickness in mm when ``inner`` is set.
        split: optional relabelling of the lumen (or of the solid shape) by vertical position.
        confined: paint only inside the body cavity (set by the shape with ``defines_cavity``).
        mobile: moves cranio-caudally with the breath-hold shift of the series.
        defines_cavity: this shape's outer mask becomes the cavity used by confined shapes.
        irregularity: boundary perturbation by the smooth warp field, as a fraction of the local size.
    """

    tissue: Tissue
    inner: Tissue | None = None
    wall_mm: float = 0.0
    split: Split | None = None
    confined: bool = False
    mobile: bool = False
    defines_cavity: bool = False
    irregularity: float = 0.0

    @property
    @abstractmethod
    def s_range(self) -> tuple[float, float]:
        """Lowest and highest ``s`` (mm) where the shape exists."""

    @abstractmethod
    def region(self, s: float, grid: Grid, warp: FloatArray | None) -> Region | None:
        """Cross-section at height ``s`` (mm) on ``grid``; None when the shape misses the slice.

        Args:
            s: height, mm.
            grid: pixel centres.
            warp: float32 [ny, nx] smooth unit-variance field perturbing boundaries, or None.
        """

    def _section_region(self, grid: Grid, section: _Section, warp: FloatArray | None) -> Region | None:
        """The superellipse ``section`` on ``grid`` with this shape's wall, split and irregularity."""
        return _ellipse_region(
            grid,
            section,
            wall_mm=self.wall_mm,
            want_inner=self.inner is not None,
            want_rel_y=self.split is not None,
            warp=warp if self.irregularity > 0.0 else None,
            irregularity=self.irregularity,
        )


@dataclass(frozen=True)
class _Section:
    """A rounded-box cross-section: centre, semi-axes (b behind, b_front in front of the centre), rotation, boxiness."""

    cx: float
    cy: float
    a: float
    b: float
    b_front: float
    angle: float
    boxiness: float


def _ellipse_q(u: FloatArray, v: FloatArray, a: float, b: float, b_front: float, boxiness: float) -> FloatArray:
    """Level ``x^2 + y^2 - k x^2 y^2`` with ``x = u/a``, ``y = v/b`` (b_front where v < 0): 1 on the boundary.

    ``k = 0`` is an ellipse, ``k = 1`` the bounding rectangle; in between a rounded box, without a costly power.
    """
    bv = np.where(v < 0, np.float32(b_front), np.float32(b)) if b_front != b else np.float32(b)
    x2: FloatArray = (u / np.float32(a)) ** 2
    y2: FloatArray = (v / bv) ** 2
    level: FloatArray = x2 + y2
    if boxiness != 0.0:
        level -= np.float32(boxiness) * x2 * y2
    return level


def _ellipse_region(
    grid: Grid,
    section: _Section,
    *,
    wall_mm: float,
    want_inner: bool,
    want_rel_y: bool,
    warp: FloatArray | None,
    irregularity: float,
) -> Region | None:
    """Rotated superellipse (with an optional inner wall offset and boundary warp) on the grid."""
    a, b, bf = section.a, section.b, section.b_front
    if a <= 0.0 or b <= 0.0 or bf <= 0.0:
        return None
    cos_t, sin_t = math.cos(section.angle), math.sin(section.angle)
    grow = 1.0 if warp is None else 1.25
    bmax = max(b, bf)
    ex = (abs(a * cos_t) + abs(bmax * sin_t)) * grow
    ey_lo = (abs(a * sin_t) + abs(bf * cos_t)) * grow
    ey_hi = (abs(a * sin_t) + abs(b * cos_t)) * grow
    span = grid.span(section.cx - ex, section.cx + ex, section.cy - ey_lo, section.cy + ey_hi)
    if span is None:
        return None
    rows, cols = span
    dx = grid.x_mm[cols][None, :] - np.float32(section.cx)
    dy = grid.y_mm[rows][:, None] - np.float32(section.cy)
    shape = (dy.shape[0], dx.shape[1])
    if section.angle == 0.0:
        u: FloatArray = np.broadcast_to(dx, shape)
        v: FloatArray = np.broadcast_to(dy, shape)
    else:
        u = dx * np.float32(cos_t) + dy * np.float32(sin_t)
        v = dy * np.float32(cos_t) - dx * np.float32(sin_t)
    limit: FloatArray | np.float32 = np.float32(1.0)
    if warp is not None:
        limit = 1.0 + np.float32(irregularity) * warp[rows, cols]
    outer = _ellipse_q(u, v, a, b, bf, section.boxiness) <= limit
    inner = None
    if want_inner:
        ai, bi, bfi = a - wall_mm, b - wall_mm, bf - wall_mm
        if min(ai, bi, bfi) > 0.0:
            inner = _ellipse_q(u, v, ai, bi, bfi, section.boxiness) <= limit
        else:
            inner = np.zeros_like(outer)
    rel_y = None
    if want_rel_y:
        rel_y = (np.broadcast_to(dy, shape) / np.float32(max(ey_lo, ey_hi) / grow)).astype(np.float32)
    return Region(rows, cols, outer, inner, rel_y)


@dataclass(frozen=True, kw_only=True)
class Ellipsoid(Shape):
    """An ellipsoid, rotated in-plane by ``angle`` and sheared along ``s`` by ``tilt``.

    Attributes:
        centre: (x, y, s) mm.
        semi: semi-axes (a along the rotated x axis, b, c along s) in mm.
        angle: in-plane rotation in radians.
        tilt: (dx/ds, dy/ds) shift of the cross-section centre per mm of height.
    """

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    angle: float = 0.0
    tilt: tuple[float, float] = (0.0, 0.0)

    @property
    def s_range(self) -> tuple[float, float]:
        return (self.centre[2] - self.semi[2], self.centre[2] + self.semi[2])

    def region(self, s: float, grid: Grid, warp: FloatArray | None) -> Region | None:
        t = (s - self.centre[2]) / self.semi[2]
        if abs(t) >= 1.0:
            return None
        k = math.sqrt(1.0 - t * t)
        ds = s - self.centre[2]
        section = _Section(
            cx=self.centre[0] + self.tilt[0] * ds,
            cy=self.centre[1] + self.tilt[1] * ds,
            a=self.semi[0] * k,
            b=self.semi[1] * k,
            b_front=self.semi[1] * k,
            angle=self.angle,
            boxiness=0.0,
        )
        return self._section_region(grid, section, warp)


@dataclass(frozen=True, kw_only=True)
class Loft(Shape):
    """A superellipse cross-section interpolated linearly between keyframes along ``s``.

    Attributes:
        keys: float64 [k, 6] rows of (s, cx, cy, a, b, angle) in mm / radians, ``s`` ascending.
        boxiness: 0 for an ellipse .. 1 for a rectangle (at most 0.6 for irregular shapes).
        front_scale: anterior semi-axis ``b`` multiplier (an asymmetric front/back profile).
    """

    keys: npt.NDArray[np.float64]
    boxiness: float = 0.0
    front_scale: float = 1.0

    @property
    def s_range(self) -> tuple[float, float]:
        return (float(self.keys[0, 0]), float(self.keys[-1, 0]))

    def region(self, s: float, grid: Grid, warp: FloatArray | None) -> Region | None:
        lo, hi = self.s_range
        if not lo <= s <= hi:
            return None
        cx, cy, a, b, angle = (float(np.interp(s, self.keys[:, 0], self.keys[:, i])) for i in range(1, 6))
        section = _Section(cx=cx, cy=cy, a=a, b=b, b_front=b * self.front_scale, angle=angle, boxiness=self.boxiness)
        return self._section_region(grid, section, warp)


@dataclass(frozen=True, kw_only=True)
class Tube(Shape):
    """A polyline tube (capsules with linearly varying radius) through 3-D points.

    Attributes:
        points: float64 [k, 3] (x, y, s) mm, k >= 2.
        radii: float64 [k] radius at each point, mm.
    """

    points: npt.NDArray[np.float64]
    radii: npt.NDArray[np.float64]
    _bounds: tuple[float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.points.ndim != 2 or self.points.shape[1] != 3 or self.points.shape[0] < 2:
            raise ValueError(f"tube points must be [k >= 2, 3], got {self.points.shape}")
        if self.radii.shape != (self.points.shape[0],):
            raise ValueError(f"tube radii must be [{self.points.shape[0]}], got {self.radii.shape}")
        r = float(self.radii.max()) * (1.0 + self.irregularity * 3.0)
        object.__setattr__(self, "_bounds", (float(self.points[:, 2].min()) - r, float(self.points[:, 2].max()) + r))

    @property
    def s_range(self) -> tuple[float, float]:
        return self._bounds

    def _segment_boxes(self, s: float) -> list[tuple[int, float, float, float, float]]:
        """Segments that reach the slice, with the xy box of their part within one radius of ``s``."""
        boxes = []
        grow = 1.0 + self.irregularity * 3.0
        for i in range(self.points.shape[0] - 1):
            p0, p1 = self.points[i], self.points[i + 1]
            r = float(max(self.radii[i], self.radii[i + 1])) * grow
            if not min(p0[2], p1[2]) - r <= s <= max(p0[2], p1[2]) + r:
                continue
            dz = p1[2] - p0[2]
            ta, tb = 0.0, 1.0
            if abs(dz) > 1e-6:
                ta, tb = sorted(((s - r - p0[2]) / dz, (s + r - p0[2]) / dz))
                ta, tb = max(ta, 0.0), min(tb, 1.0)
                if ta > tb:
                    continue
            qa, qb = p0 + ta * (p1 - p0), p0 + tb * (p1 - p0)
            x0, x1 = sorted((float(qa[0]), float(qb[0])))
            y0, y1 = sorted((float(qa[1]), float(qb[1])))
            boxes.append((i, x0 - r, x1 + r, y0 - r, y1 + r))
        return boxes

    def region(self, s: float, grid: Grid, warp: FloatArray | None) -> Region | None:
        boxes = self._segment_boxes(s)
        if not boxes:
            return None
        span = grid.span(
            min(b[1] for b in boxes), max(b[2] for b in boxes), min(b[3] for b in boxes), max(b[4] for b in boxes)
        )
        if span is None:
            return None
        rows, cols = span
        px = grid.x_mm[cols][None, :]
        py = grid.y_mm[rows][:, None]
        shape = (py.shape[0], px.shape[1])
        best: FloatArray = np.full(shape, np.inf, dtype=np.float32)
        axis_y: FloatArray = np.zeros(shape, dtype=np.float32)
        radius: FloatArray = np.ones(shape, dtype=np.float32)
        want_rel_y = self.split is not None
        for i, *_ in boxes:
            p0, p1 = self.points[i], self.points[i + 1]
            d = (p1 - p0).astype(np.float32)
            length2 = float(d @ d)
            rx = px - np.float32(p0[0])
            ry = py - np.float32(p0[1])
            rz = np.float32(s - p0[2])
            if length2 > 1e-9:
                t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / np.float32(length2), 0.0, 1.0)
            else:
                t = np.zeros(shape, dtype=np.float32)
            ex, ey, ez = rx - t * d[0], ry - t * d[1], rz - t * d[2]
            r = np.float32(self.radii[i]) + t * np.float32(self.radii[i + 1] - self.radii[i])
            signed = np.sqrt(ex * ex + ey * ey + ez * ez) - r
            closer = signed < best
            best = np.where(closer, signed, best)
            radius = np.where(closer, r, radius)
            if want_rel_y:
                axis_y = np.where(closer, np.float32(p0[1]) + t * d[1], axis_y)
        if warp is not None and self.irregularity > 0.0:
            best = best - warp[rows, cols] * radius * np.float32(self.irregularity)
        outer = best <= 0.0
        inner = best <= -np.minimum(np.float32(self.wall_mm), radius * 0.8) if self.inner is not None else None
        rel_y = ((py - axis_y) / radius).astype(np.float32) if want_rel_y else None
        return Region(rows, cols, outer, inner, rel_y)


def paint_labels(
    shapes: tuple[Shape, ...],
    *,
    s: float,
    grid: Grid,
    breath_shift_mm: float = 0.0,
    warp: FloatArray | None = None,
) -> npt.NDArray[np.uint8]:
    """Paint the label map of one axial slice.

    Args:
        shapes: painting order (later shapes overwrite earlier ones).
        s: slice height in body mm.
        grid: the pixel-centre coordinates.
        breath_shift_mm: cranio-caudal displacement of ``mobile`` shapes (positive = organs higher).
        warp: float32 [ny, nx] smooth unit-variance field that roughens the boundaries of irregular shapes.

    Returns:
        uint8 [ny, nx] :class:`Tissue` labels.
    """
    labels = np.zeros((grid.y_mm.size, grid.x_mm.size), dtype=np.uint8)
    cavity: BoolArray | None = None
    for shape in shapes:
        s_query = s - breath_shift_mm if shape.mobile else s
        lo, hi = shape.s_range
        if not lo <= s_query <= hi:
            continue
        region = shape.region(s_query, grid, warp)
        if region is None:
            continue
        outer, inner = region.outer, region.inner
        if shape.confined and cavity is not None:
            allowed = cavity[region.rows, region.cols]
            outer = outer & allowed
            inner = inner & allowed if inner is not None else None
        if shape.defines_cavity:
            cavity = np.zeros(labels.shape, dtype=np.bool_)
            cavity[region.rows, region.cols] = outer
        view = labels[region.rows, region.cols]
        view[outer] = shape.tissue
        target = outer
        if inner is not None and shape.inner is not None:
            view[inner] = shape.inner
            target = inner
        if shape.split is not None and region.rel_y is not None:
            chosen = region.rel_y < shape.split.level if shape.split.anterior else region.rel_y > shape.split.level
            view[target & chosen] = shape.split.tissue
    return labels
