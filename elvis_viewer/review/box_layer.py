"""Editable boxes on top of an `ImageView`: one pyqtgraph ROI per box with handles on the 4 corners and 4 edges.

Display only: a drag reports the new (x, y, w, h) in original-image pixels; `ReviewView` turns it into a decision.
Colours and pen styles show each box's review status.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import pyqtgraph as pg
from PySide6 import QtCore, QtGui

STATUS_COLORS = {
    "unreviewed": "#ffd24d",
    "accepted": "#4cd964",
    "edited": "#3fc8ff",
    "rejected": "#ff4d4d",
    "added": "#e066ff",
}

#: (handle position, scale centre) in ROI-relative coordinates: 4 corners then 4 edges
_HANDLES = [((0, 0), (1, 1)), ((1, 0), (0, 1)), ((0, 1), (1, 0)), ((1, 1), (0, 0)),
            ((0.5, 0), (0.5, 1)), ((0.5, 1), (0.5, 0)), ((0, 0.5), (1, 0.5)), ((1, 0.5), (0, 0.5))]


class BoxLayer(QtCore.QObject):
    #: box_id, x, y, w, h — emitted once when a drag ends
    boxEdited = QtCore.Signal(str, float, float, float, float)
    #: box_id, x, y, w, h — emitted continuously while dragging (for live figures)
    boxMoving = QtCore.Signal(str, float, float, float, float)
    boxSelected = QtCore.Signal(str)

    def __init__(self, view_box: pg.ViewBox, parent: Optional[QtCore.QObject] = None):
        super().__init__(parent)
        self.view_box = view_box
        self.rois: Dict[str, pg.ROI] = {}
        self.labels: Dict[str, pg.TextItem] = {}
        self.selected: Optional[str] = None
        self._order: List[str] = []
        self._bounds: Optional[QtCore.QRectF] = None

    def clear(self) -> None:
        for roi in self.rois.values():
            self.view_box.removeItem(roi)
        for t in self.labels.values():
            self.view_box.removeItem(t)
        self.rois, self.labels, self._order = {}, {}, []

    def set_boxes(self, boxes: Sequence, image_size: Optional[tuple] = None) -> None:
        """Show `ReviewBox` objects; ``image_size`` = (width, height) bounds the drags."""
        keep = self.selected
        self.clear()
        self._bounds = None if image_size is None else QtCore.QRectF(0, 0, float(image_size[0]),
                                                                     float(image_size[1]))
        for b in boxes:
            roi = pg.ROI((b.x, b.y), (b.w, b.h), movable=True, rotatable=False, resizable=False, removable=False,
                         maxBounds=self._bounds, invertible=False)
            for pos, center in _HANDLES:
                roi.addScaleHandle(pos, center)
            roi.setZValue(30)
            roi.setAcceptedMouseButtons(QtCore.Qt.MouseButton.LeftButton)
            bid = b.box_id
            roi.sigClicked.connect(lambda _r, _ev, bid=bid: self.select(bid))
            roi.sigRegionChangeStarted.connect(lambda _r, bid=bid: self.select(bid))
            roi.sigRegionChanged.connect(lambda r, bid=bid: self.boxMoving.emit(bid, *self._xywh(r)))
            roi.sigRegionChangeFinished.connect(lambda r, bid=bid: self.boxEdited.emit(bid, *self._xywh(r)))
            self.view_box.addItem(roi)
            self.rois[bid] = roi
            self._order.append(bid)
            txt = pg.TextItem(f"{bid} · {b.status}" + (f" ({b.reason})" if b.reason else ""), anchor=(0, 1),
                              color=STATUS_COLORS.get(b.status, "#ffffff"), fill=pg.mkBrush(0, 0, 0, 150))
            txt.setPos(b.x, b.y)
            txt.setZValue(31)
            self.view_box.addItem(txt)
            self.labels[bid] = txt
            roi._elvis_status = b.status
        self.selected = keep if keep in self.rois else None
        self._restyle()

    @staticmethod
    def _xywh(roi: pg.ROI):
        p, s = roi.pos(), roi.size()
        return float(p.x()), float(p.y()), float(s.x()), float(s.y())

    def _restyle(self) -> None:
        for bid, roi in self.rois.items():
            status = getattr(roi, "_elvis_status", "unreviewed")
            pen = QtGui.QPen(QtGui.QColor(STATUS_COLORS.get(status, "#ffffff")))
            pen.setCosmetic(True)
            pen.setWidthF(3.5 if bid == self.selected else 2.0)
            if status == "rejected":
                pen.setStyle(QtCore.Qt.PenStyle.DashLine)
            roi.setPen(pen)
            hover = QtGui.QPen(pen)
            hover.setWidthF(pen.widthF() + 1.5)
            roi.hoverPen = hover
            roi.currentPen = pen
            roi.update()

    def select(self, box_id: Optional[str]) -> None:
        self.selected = box_id if box_id in self.rois else None
        self._restyle()
        if self.selected is not None:
            self.boxSelected.emit(self.selected)

    def select_next(self) -> Optional[str]:
        """Cycle the selection through the boxes (keyboard: S)."""
        if not self._order:
            return None
        i = self._order.index(self.selected) + 1 if self.selected in self._order else 0
        self.select(self._order[i % len(self._order)])
        return self.selected

    def set_box_geometry(self, box_id: str, x: float, y: float, w: float, h: float, finish: bool = True) -> None:
        """Move/resize a box as a drag would (used by tests and keyboard nudges)."""
        roi = self.rois[box_id]
        roi.setPos((x, y), update=False, finish=False)
        roi.setSize((w, h), update=True, finish=finish)
