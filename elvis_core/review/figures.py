"""Live figures of a review item: how much the boxes moved, and how the model's map agrees with them.

- ``iou_original``: per edited box, IoU(original box, current box); 1.0 = unchanged.
- ``cnr``: contrast-to-noise ratio of the map for the boxes (BioViL / MS-CXR definition):
  ``|mean_in - mean_out| / sqrt(var_in + var_out)``, in = pixels inside the union of the kept boxes.
- ``map_iou``: IoU of the map's thresholded region with the union of the kept boxes. The region is
  ``map >= min + threshold * (max - min)`` (threshold 0.5 by default, i.e. the upper half of the map's range).

Maps are evaluated on a grid whose long side is at most ``max_side`` pixels (the boxes are scaled to it), so the
figures update while a box is dragged. All coordinates are original-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

Box = Tuple[float, float, float, float]


def box_iou(a: Box, b: Box) -> float:
    """IoU of two (x, y, w, h) boxes in continuous coordinates; 0 when both are empty."""
    ax0, ay0, aw, ah = (float(v) for v in a)
    bx0, by0, bw, bh = (float(v) for v in b)
    ix = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    union = max(aw, 0.0) * max(ah, 0.0) + max(bw, 0.0) * max(bh, 0.0) - inter
    return inter / union if union > 0 else 0.0


def boxes_mask(boxes: Iterable[Box], shape: Tuple[int, int], scale: Tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Boolean (rows, cols) mask of the union of boxes; a pixel is inside when its centre is. ``scale`` = (sx, sy)
    maps box coordinates to mask pixels."""
    rows, cols = shape
    mask = np.zeros((rows, cols), dtype=bool)
    sx, sy = scale
    for x, y, w, h in boxes:
        c0 = int(np.ceil(x * sx - 0.5))
        c1 = int(np.ceil((x + w) * sx - 0.5))
        r0 = int(np.ceil(y * sy - 0.5))
        r1 = int(np.ceil((y + h) * sy - 0.5))
        c0, c1 = max(c0, 0), min(c1, cols)
        r0, r1 = max(r0, 0), min(r1, rows)
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return mask


def cnr(values: np.ndarray, mask: np.ndarray) -> Optional[float]:
    """Contrast-to-noise ratio of ``values`` inside vs outside ``mask``; None when either side is empty."""
    inside = values[mask]
    outside = values[~mask]
    if inside.size == 0 or outside.size == 0:
        return None
    denom = float(np.sqrt(inside.var() + outside.var()))
    diff = abs(float(inside.mean()) - float(outside.mean()))
    if denom == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / denom


def threshold_region(values: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if hi <= lo:
        return np.zeros(values.shape, dtype=bool)
    return values >= lo + threshold * (hi - lo)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else 0.0


@dataclass
class ItemFigures:
    #: box_id -> IoU(original, current) for boxes that have an original and were moved/resized
    iou_original: Dict[str, float] = field(default_factory=dict)
    cnr: Optional[float] = None
    map_iou: Optional[float] = None
    threshold: float = 0.5

    @property
    def mean_iou_original(self) -> Optional[float]:
        return float(np.mean(list(self.iou_original.values()))) if self.iou_original else None

    def as_text(self) -> str:
        parts = []
        m = self.mean_iou_original
        parts.append("IoU orig→edit: " + ("—" if m is None else f"{m:.3f}"))
        parts.append("map CNR: " + ("—" if self.cnr is None else f"{self.cnr:.2f}"))
        parts.append(f"map IoU@{self.threshold:g}: " + ("—" if self.map_iou is None else f"{self.map_iou:.3f}"))
        return "   ".join(parts)


def map_on_grid(gmap, image_shape: Tuple[int, int], max_side: int = 512) -> Tuple[np.ndarray, Tuple[float, float]]:
    """The map resampled to a grid with long side <= max_side; returns (values, (sx, sy) image→grid scale)."""
    rows, cols = image_shape
    f = min(1.0, max_side / float(max(rows, cols)))
    shape = (max(1, int(round(rows * f))), max(1, int(round(cols * f))))
    values = gmap.to_image(shape) if shape != tuple(image_shape) else gmap.to_image()
    return np.asarray(values, dtype=np.float32), (shape[1] / cols, shape[0] / rows)


def item_figures(
    boxes: Sequence,
    gmap=None,
    image_shape: Optional[Tuple[int, int]] = None,
    threshold: float = 0.5,
    max_side: int = 512,
    map_values: Optional[Tuple[np.ndarray, Tuple[float, float]]] = None,
) -> ItemFigures:
    """Figures for a list of `ReviewBox` (rejected boxes are left out of the map figures).

    ``map_values`` lets a caller pass a cached :func:`map_on_grid` result while boxes are dragged.
    """
    from elvis_core.review.model import REJECTED

    fig = ItemFigures(threshold=threshold)
    for b in boxes:
        if b.original is not None and tuple(b.original) != tuple(b.xywh) and b.status != REJECTED:
            fig.iou_original[b.box_id] = box_iou(b.original, b.xywh)
    kept = [b.xywh for b in boxes if b.status != REJECTED]
    if (gmap is None and map_values is None) or not kept:
        return fig
    if map_values is None:
        if image_shape is None:
            image_shape = tuple(gmap.image_shape)
        map_values = map_on_grid(gmap, image_shape, max_side)
    values, scale = map_values
    mask = boxes_mask(kept, values.shape, scale)
    fig.cnr = cnr(values, mask)
    fig.map_iou = mask_iou(threshold_region(values, threshold), mask)
    return fig
