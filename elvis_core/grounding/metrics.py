"""Phrase-grounding metrics on a map in ORIGINAL image pixels (MS-CXR / BioViL conventions).

Choices (documented in docs/grounding.md):

- **Box mask**: pixel (col c, row r) covers [c, c+1) x [r, r+1); it is inside box (x, y, w, h) when its centre
  (c + 0.5, r + 0.5) lies in [x, x + w) x [y, y + h). Several boxes of one phrase form one union mask. Boxes are
  clipped to the image.
- **CNR** (BioViL, Boecking et al. 2022): ``|mean_in - mean_out| / sqrt(var_in + var_out)`` with population variances
  (ddof=0) over the pixels inside / outside the union of the boxes. NaN pixels are ignored (e.g. a region outside the
  field of view the caller chose to mask). ``clamp_negative=True`` replaces negative similarities by 0 first (an
  option some papers use; off by default). Returns NaN when one side is empty or both variances are 0 with equal
  means; when the variances are 0 but the means differ the contrast is infinite (``inf``).
- **mIoU**: for each threshold t (default 0.1 ... 0.5, in similarity units of the [-1, 1] map), IoU of
  ``map >= t`` with the box union; mean over thresholds. A threshold whose prediction and box union are both empty
  counts as IoU 0 (no box would be unusual; it cannot happen for MS-CXR phrases).
- **Contrast** (a diagnostic, not in the papers): signed ``mean_in - mean_out``; the share of phrases with a
  positive contrast ("in>out") says whether the map is higher inside the boxes, which the unsigned CNR cannot.
- **Pointing game**: hit when the location of the map's global maximum (first in row-major order among ties,
  NaN ignored) is inside the box union.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence, Tuple

import numpy as np

from elvis_core.io.annotations import Box

DEFAULT_THRESHOLDS: Tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)


def _as_box(b) -> Box:
    if isinstance(b, Box):
        return b
    x, y, w, h = (float(v) for v in b)
    return Box(x, y, w, h)


def box_mask(shape: Tuple[int, int], boxes: Iterable) -> np.ndarray:
    """Boolean (rows, cols) mask of the union of boxes (pixel centre inside the box; see module docstring)."""
    rows, cols = int(shape[0]), int(shape[1])
    mask = np.zeros((rows, cols), dtype=bool)
    for b in boxes:
        b = _as_box(b)
        if b.w <= 0 or b.h <= 0:
            continue
        c0 = max(0, math.ceil(b.x - 0.5))
        c1 = min(cols, math.ceil(b.x + b.w - 0.5))  # exclusive
        r0 = max(0, math.ceil(b.y - 0.5))
        r1 = min(rows, math.ceil(b.y + b.h - 0.5))
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return mask


def box_iou(a, b) -> float:
    """IoU of two (x, y, w, h) boxes in continuous coordinates."""
    a, b = _as_box(a), _as_box(b)
    ix = max(0.0, min(a.x2, b.x2) - max(a.x, b.x))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y, b.y))
    inter = ix * iy
    union = a.area + b.area - inter
    return float(inter / union) if union > 0 else 0.0


def _check_map(map_img: np.ndarray) -> np.ndarray:
    m = np.asarray(map_img, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {m.shape}")
    return m


def _inside_outside(m: np.ndarray, boxes: Sequence) -> tuple:
    """The map's non-NaN values inside the box union and outside it."""
    inside = box_mask(m.shape, boxes)
    valid = ~np.isnan(m)
    return m[inside & valid], m[~inside & valid]


def cnr(map_img: np.ndarray, boxes: Sequence, clamp_negative: bool = False) -> float:
    """Contrast-to-noise ratio of the map between the box union ("in") and the rest ("out")."""
    m = _check_map(map_img)
    if clamp_negative:
        m = np.where(m < 0, 0.0, m)
    a, b = _inside_outside(m, boxes)
    if a.size == 0 or b.size == 0:
        return float("nan")
    diff = abs(float(a.mean()) - float(b.mean()))
    denom = math.sqrt(float(a.var()) + float(b.var()))
    if denom == 0.0:
        return float("inf") if diff > 0 else float("nan")
    return diff / denom


def contrast(map_img: np.ndarray, boxes: Sequence) -> float:
    """Signed ``mean_in - mean_out`` (NaN ignored): > 0 when the map is higher inside the boxes. CNR is unsigned,
    so a map that is *lower* in the box also gets a high CNR; this tells the two apart."""
    a, b = _inside_outside(_check_map(map_img), boxes)
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(a.mean()) - float(b.mean())


def miou(map_img: np.ndarray, boxes: Sequence, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> float:
    """Mean over thresholds of IoU(map >= t, box union). NaN pixels are never "on"."""
    m = _check_map(map_img)
    if len(thresholds) == 0:
        raise ValueError("thresholds must not be empty")
    gt = box_mask(m.shape, boxes)
    with np.errstate(invalid="ignore"):
        ious = []
        for t in thresholds:
            pred = m >= t  # NaN >= t is False
            union = np.count_nonzero(pred | gt)
            ious.append(np.count_nonzero(pred & gt) / union if union else 0.0)
    return float(np.mean(ious))


def pointing_game(map_img: np.ndarray, boxes: Sequence) -> bool:
    """True when the map's maximum (first among ties, NaN ignored) lies inside the box union."""
    m = _check_map(map_img)
    if np.all(np.isnan(m)):
        return False
    r, c = np.unravel_index(int(np.nanargmax(m)), m.shape)
    return bool(box_mask(m.shape, boxes)[r, c])
