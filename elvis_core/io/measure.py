"""Radiologists' measurements on original-image pixels (x right, y down): distance, angle, cardiothoracic ratio.

Spacing is ``Radiograph.pixel_spacing`` = (row spacing, column spacing) in mm, or None (then pixels).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

Point = Tuple[float, float]


def distance(p0: Point, p1: Point, spacing: Optional[Tuple[float, float]] = None) -> Tuple[float, str]:
    """Length of the segment p0-p1: (mm, "mm") with a pixel spacing, else (pixels, "px")."""
    dx, dy = float(p1[0]) - float(p0[0]), float(p1[1]) - float(p0[1])
    if spacing:
        row_mm, col_mm = float(spacing[0]), float(spacing[1])
        return math.hypot(dx * col_mm, dy * row_mm), "mm"
    return math.hypot(dx, dy), "px"


def angle_deg(a: Point, vertex: Point, b: Point, spacing: Optional[Tuple[float, float]] = None) -> float:
    """The angle a-vertex-b in degrees, 0..180 (anisotropic pixels are scaled to mm first); NaN when degenerate."""
    sx, sy = (float(spacing[1]), float(spacing[0])) if spacing else (1.0, 1.0)
    ux, uy = (a[0] - vertex[0]) * sx, (a[1] - vertex[1]) * sy
    vx, vy = (b[0] - vertex[0]) * sx, (b[1] - vertex[1]) * sy
    nu, nv = math.hypot(ux, uy), math.hypot(vx, vy)
    if nu == 0 or nv == 0:
        return float("nan")
    c = max(-1.0, min(1.0, (ux * vx + uy * vy) / (nu * nv)))
    return math.degrees(math.acos(c))


def horizontal_width(p0: Point, p1: Point, spacing: Optional[Tuple[float, float]] = None) -> Tuple[float, str]:
    """The horizontal extent |x1 - x0| (what the cardiothoracic ratio compares), in mm or px."""
    w = abs(float(p1[0]) - float(p0[0]))
    return (w * float(spacing[1]), "mm") if spacing else (w, "px")


def cardiothoracic_ratio(heart: Sequence[Point], thorax: Sequence[Point]) -> float:
    """Maximal horizontal cardiac width / maximal internal thoracic width (PA film; > 0.5 suggests cardiomegaly).
    Each argument is the two end points of a horizontal measurement; NaN when the thoracic width is 0."""
    hw = abs(float(heart[1][0]) - float(heart[0][0]))
    tw = abs(float(thorax[1][0]) - float(thorax[0][0]))
    return hw / tw if tw > 0 else float("nan")
