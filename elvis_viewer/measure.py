"""Measurement tools on an ImageView: several rulers, angles and a cardiothoracic-ratio tool.

Each tool is a pyqtgraph ROI in image pixels with a label; the numbers come from :mod:`elvis_core.io.measure`
(mm when the pixel spacing is known, else px with "spacing unknown"). Tools are added in the middle of the view
and dragged by their handles; Delete/Backspace on the view (or Tools → Clear measurements) removes them.
"""

from __future__ import annotations

from typing import List, Optional

import pyqtgraph as pg
from PySide6 import QtCore

from elvis_core.io import measure as M

COLOR = "#00e5ff"
CTR_COLORS = ("#ff80ab", "#80d8ff")


def _pts(roi) -> list:
    return [(p.x(), p.y()) for p in (roi.mapToParent(h.pos()) for h in roi.getHandles())]


class _Tool:
    kind = ""

    def __init__(self, layer: "MeasureLayer", rois: list):
        self.layer, self.rois = layer, rois
        self.label = pg.TextItem("", color=COLOR, anchor=(0.5, 1.2), fill=pg.mkBrush(0, 0, 0, 170))
        self.label.setZValue(31)
        vb = layer.view.view_box
        for r in rois:
            r.setZValue(30)
            vb.addItem(r)
            r.sigRegionChanged.connect(self.changed)
        vb.addItem(self.label)
        self.update()

    def changed(self, *_):
        self.update()
        self.layer.declutter()

    def remove(self) -> None:
        vb = self.layer.view.view_box
        for r in self.rois:
            vb.removeItem(r)
        vb.removeItem(self.label)

    def points(self) -> list:
        return [p for r in self.rois for p in _pts(r)]

    def set_points(self, pts) -> None:
        k = 0
        for r in self.rois:
            for h in r.getHandles():
                r.movePoint(h, QtCore.QPointF(float(pts[k][0]), float(pts[k][1])), coords="parent")
                k += 1
        self.update()

    def spacing(self):
        rad = self.layer.view.rad
        return rad.pixel_spacing if rad is not None else None


class Ruler(_Tool):
    kind = "ruler"

    def value(self):
        p0, p1 = self.points()
        return M.distance(p0, p1, self.spacing())

    def text(self) -> str:
        v, unit = self.value()
        return f"{v:.1f} mm" if unit == "mm" else f"{v:.1f} px (spacing unknown)"

    def update(self, *_):
        (x0, y0), (x1, y1) = self.points()
        self.label.setText(self.text())
        self.label.setPos((x0 + x1) / 2.0, (y0 + y1) / 2.0)


class Angle(_Tool):
    kind = "angle"

    def value(self):
        a, v, b = self.points()
        return M.angle_deg(a, v, b, self.spacing()), "deg"

    def text(self) -> str:
        return f"{self.value()[0]:.1f}°"

    def update(self, *_):
        _a, v, _b = self.points()
        self.label.setText(self.text())
        self.label.setPos(*v)


class CTR(_Tool):
    """Two horizontal widths: the heart (pink) and the inner thorax (blue); the ratio is shown on the heart only
    once the user has placed BOTH lines (dragged each, or :meth:`set_points`): the lines start at a generic place,
    not measured from this image, and a number there would look like a measurement."""

    kind = "ctr"
    PROMPT = "CTR: drag the heart (pink) and thorax (blue) lines onto the film"

    def __init__(self, layer, rois):
        self.placed = [False] * len(rois)
        super().__init__(layer, rois)
        for i, r in enumerate(rois):
            r.sigRegionChangeFinished.connect(lambda *_, i=i: self._placed_by_user(i))

    def _placed_by_user(self, i: int) -> None:
        self.placed[i] = True
        self.update()

    def set_points(self, pts) -> None:
        self.placed = [True] * len(self.rois)
        super().set_points(pts)

    def value(self):
        if not all(self.placed):
            return None, "ratio"
        h, t = _pts(self.rois[0]), _pts(self.rois[1])
        return M.cardiothoracic_ratio(h, t), "ratio"

    def text(self) -> str:
        if not all(self.placed):
            return self.PROMPT
        h, t = _pts(self.rois[0]), _pts(self.rois[1])
        hw, unit = M.horizontal_width(*h, self.spacing())
        tw, _ = M.horizontal_width(*t, self.spacing())
        return f"CTR {self.value()[0]:.2f}  (heart {hw:.0f} / thorax {tw:.0f} {unit})"

    def update(self, *_):
        h = _pts(self.rois[0])
        self.label.setText(self.text())
        self.label.setPos((h[0][0] + h[1][0]) / 2.0, min(h[0][1], h[1][1]))


class MeasureLayer:
    """The measurement tools of one ImageView."""

    def __init__(self, view):
        self.view = view
        self.tools: List[_Tool] = []

    def add(self, kind: str) -> Optional[_Tool]:
        rad = self.view.rad
        if rad is None:
            return None
        r, c = rad.shape
        n = len(self.tools)
        dy = (n % 5) * 0.06 * r
        if kind == "ruler":
            roi = pg.LineSegmentROI([[c * 0.3, r * 0.45 + dy], [c * 0.7, r * 0.45 + dy]], pen=pg.mkPen(COLOR, width=2))
            tool = Ruler(self, [roi])
        elif kind == "angle":
            roi = pg.PolyLineROI([[c * 0.35, r * 0.35 + dy], [c * 0.5, r * 0.55 + dy], [c * 0.65, r * 0.35 + dy]],
                                 closed=False, pen=pg.mkPen(COLOR, width=2))
            tool = Angle(self, [roi])
        elif kind == "ctr":
            heart = pg.LineSegmentROI([[c * 0.38, r * 0.62], [c * 0.66, r * 0.62]], pen=pg.mkPen(CTR_COLORS[0], width=2))
            thorax = pg.LineSegmentROI([[c * 0.12, r * 0.7], [c * 0.88, r * 0.7]], pen=pg.mkPen(CTR_COLORS[1], width=2))
            tool = CTR(self, [heart, thorax])
        else:
            raise ValueError(f"unknown measurement {kind!r} (ruler, angle, ctr)")
        self.tools.append(tool)
        if not getattr(self, "_follows_zoom", False):
            self._follows_zoom = True
            self.view.view_box.sigRangeChanged.connect(lambda *_: self.declutter())
        self.declutter()
        return tool

    def declutter(self) -> None:
        """Labels never overlap: each label that would cover an earlier one moves up, one label height at a time
        (screen pixels: the labels keep their size whatever the zoom)."""
        placed = []
        for t in self.tools:
            lab = t.label
            if not lab.isVisible() or not lab.scene():
                continue
            lab.updateTransform(force=True)
            k = 0
            lab.setAnchor((0.5, 1.2))
            r = lab.sceneBoundingRect()
            while k < 30 and any(r.intersects(p) for p in placed):
                k += 1
                lab.setAnchor((0.5, 1.2 + 1.15 * k))
                r = lab.sceneBoundingRect()
            placed.append(r)

    def last(self, kind: str, create: bool = False) -> Optional[_Tool]:
        for t in reversed(self.tools):
            if t.kind == kind:
                return t
        return self.add(kind) if create else None

    def remove_last(self) -> None:
        if self.tools:
            self.tools.pop().remove()

    def clear(self) -> None:
        while self.tools:
            self.tools.pop().remove()

    def summary(self) -> List[str]:
        return [t.text() for t in self.tools]
