"""Live figures of a review item: how much the boxes moved, and how the model's map agrees with them.

- ``iou_original``: per edited box, IoU(original box, current box); 1.0 = unchanged.
- ``cnr``: contrast-to-noise ratio of the map for the union of the kept (non-rejected) boxes
  (:func:`elvis_core.grounding.metrics.cnr`, BioViL definition).
- ``map_iou``: IoU of the map's thresholded region ``map >= t`` with the union of the kept boxes, averaged over the
  thresholds t = 0.1 ... 0.5 in similarity units (:func:`elvis_core.grounding.metrics.miou`, the MS-CXR mIoU), so
  the live figure is the same number the evaluation reports.

Maps are evaluated on a grid whose long side is at most ``max_side`` pixels (the boxes are scaled to it), so the
figures update while a box is dragged. All coordinates are original-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from elvis_core.grounding.metrics import DEFAULT_THRESHOLDS, box_iou, box_mask, cnr, miou

Box = Tuple[float, float, float, float]


def boxes_mask(boxes: Iterable[Box], shape: Tuple[int, int], scale: Tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Union mask of boxes given in image pixels on a grid scaled by ``scale`` = (sx, sy) (metrics.box_mask rule)."""
    sx, sy = scale
    return box_mask(shape, [(x * sx, y * sy, w * sx, h * sy) for x, y, w, h in boxes])


@dataclass
class ItemFigures:
    #: box_id -> IoU(original, current) for boxes that have an original and were moved/resized
    iou_original: Dict[str, float] = field(default_factory=dict)
    cnr: Optional[float] = None
    map_iou: Optional[float] = None
    thresholds: Tuple[float, ...] = DEFAULT_THRESHOLDS

    @property
    def mean_iou_original(self) -> Optional[float]:
        return float(np.mean(list(self.iou_original.values()))) if self.iou_original else None

    def as_text(self) -> str:
        parts = []
        m = self.mean_iou_original
        parts.append("IoU orig→edit: " + ("—" if m is None else f"{m:.3f}"))
        parts.append("map CNR: " + ("—" if self.cnr is None else f"{self.cnr:.2f}"))
        parts.append("map mIoU: " + ("—" if self.map_iou is None else f"{self.map_iou:.3f}"))
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
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    max_side: int = 512,
    map_values: Optional[Tuple[np.ndarray, Tuple[float, float]]] = None,
) -> ItemFigures:
    """Figures for a list of `ReviewBox` (rejected boxes are left out of the map figures).

    ``map_values`` lets a caller pass a cached :func:`map_on_grid` result while boxes are dragged.
    """
    from elvis_core.review.model import REJECTED

    fig = ItemFigures(thresholds=tuple(thresholds))
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
    sx, sy = scale
    scaled = [(x * sx, y * sy, w * sx, h * sy) for x, y, w, h in kept]
    c = cnr(values, scaled)
    fig.cnr = None if np.isnan(c) else float(c)
    fig.map_iou = float(miou(values, scaled, thresholds))
    return fig
