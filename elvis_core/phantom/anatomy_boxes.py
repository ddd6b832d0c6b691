"""Anatomy boxes of a phantom study, named as in Chest ImaGenome's scene graphs (GK-MVLP's anatomy regions).

The phantom knows its anatomy exactly, so each region's box comes from the drawn geometry (no detector): both lungs,
their upper / mid / lower zones (thirds of the lung's height, as ImaGenome divides them), apical zones (top 18 %),
costophrenic angles (the lateral-lower corner), hilar structures (around the hilum), the cardiac silhouette (the
heart mask) and the mediastinum (between the lungs, apex to the heart's top). Boxes are ``(x, y, w, h)`` in output
image pixels, x right, y down, like MS-CXR boxes. The patient's right lung is on the image's left.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

#: region names (Chest ImaGenome ``bbox_name`` spelling) in the order they are written
ANATOMY_REGIONS: Tuple[str, ...] = tuple(
    [f"{s} {r}" for s in ("right", "left") for r in ("lung", "upper lung zone", "mid lung zone", "lower lung zone",
                                                       "apical zone", "costophrenic angle", "hilar structures")]
    + ["cardiac silhouette", "mediastinum"])

Box = Tuple[int, int, int, int]


def _to_out(x0: float, y0: float, x1: float, y1: float, sx: float, sy: float, width: int, height: int) -> Box:
    a = max(0, int(np.floor(x0 * sx)))
    b = max(0, int(np.floor(y0 * sy)))
    c = min(width, int(np.ceil(x1 * sx)))
    d = min(height, int(np.ceil(y1 * sy)))
    return a, b, max(1, c - a), max(1, d - b)


def anatomy_boxes(g, height: int, width: int) -> Dict[str, Box]:
    """``{region name: (x, y, w, h)}`` in output pixels for the geometry ``g`` (``render_anatomy``'s result) of an
    image of ``height`` x ``width``."""
    hh, ww = g.shape
    sx, sy = width / ww, height / hh
    out: Dict[str, Box] = {}
    for side in ("right", "left"):
        x0, y0, x1, y1 = g.lung_boxes[side]
        lh, lw = y1 - y0, x1 - x0
        out[f"{side} lung"] = _to_out(x0, y0, x1, y1, sx, sy, width, height)
        for k, name in enumerate(("upper lung zone", "mid lung zone", "lower lung zone")):
            out[f"{side} {name}"] = _to_out(x0, y0 + k * lh / 3, x1, y0 + (k + 1) * lh / 3, sx, sy, width, height)
        out[f"{side} apical zone"] = _to_out(x0, y0, x1, y0 + 0.18 * lh, sx, sy, width, height)
        lateral_low_x = side == "right"  # the patient's right lung's lateral edge is at small x
        cw = 0.35 * lw
        cx0, cx1 = (x0, x0 + cw) if lateral_low_x else (x1 - cw, x1)
        out[f"{side} costophrenic angle"] = _to_out(cx0, y1 - 0.16 * lh, cx1, y1, sx, sy, width, height)
        hx, hy = g.hila[side]
        out[f"{side} hilar structures"] = _to_out(hx - 0.09 * lw * 1.2, hy - 0.09 * lh, hx + 0.09 * lw * 1.2,
                                                  hy + 0.09 * lh, sx, sy, width, height)
    a = g.anatomy
    hw = a.heart_width() * ww  # the ellipse of anatomy.heart_mask (without the great vessels drawn above it)
    cxp = a.cx * ww - 0.36 * hw + hw / 2.0
    bottom = (a.dome_y_left + 0.025) * hh
    ehh = a.heart_height * hh
    cyp = bottom - ehh / 2.0
    t = np.deg2rad(a.heart_tilt)
    ra, rb = hw / 2.0, ehh / 2.0
    ex = float(np.hypot(ra * np.cos(t), rb * np.sin(t)))
    ey = float(np.hypot(ra * np.sin(t), rb * np.cos(t)))
    out["cardiac silhouette"] = _to_out(cxp - ex, cyp - ey, cxp + ex, cyp + ey, sx, sy, width, height)
    top = a.apex_y * hh
    out["mediastinum"] = _to_out(a.cx * ww - a.med_hw * ww * 1.05, top, a.cx * ww + (a.med_hw + 0.044) * ww,
                                 max(cyp - ey, top + 2), sx, sy, width, height)
    return out
