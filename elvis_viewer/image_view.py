"""`ImageView`: a radiograph display widget on pyqtgraph with window/level, overlay, boxes and a ruler.

Everything here is display only:
- window/level goes through ``ImageItem.setLevels`` (or a lookup table for a DICOM VOI LUT and for invert), so
  dragging never re-reads or re-scales the pixel array in Python;
- the grounding map is drawn as a SMALL ImageItem placed on the image with a ``QTransform`` built from
  ``GroundingMap.grid_to_image``: by default the core's ``GroundingMap.display_grid(8)`` (bilinear, e.g. 128 x 128
  for a 16 x 16 grid), or the raw cells with ``set_overlay_smooth(False)``; no full-resolution map is ever made in
  Python; isolines are drawn on that same small grid;
- boxes are in original-image pixels (x right, y down), exactly like the annotation files.

The overlay methods are in :class:`elvis_viewer.image_overlay.ImageOverlayMixin` (a mixin of ImageView); the
graphics items and display helpers in :mod:`elvis_viewer.view_items`.

Public API (stable, reused by the review mode):
``set_radiograph(rad)``, ``clear()``, ``set_window(center, width)``, ``window() -> (center, width)``,
``presets() -> list[Window]``, ``apply_preset(name)``, ``set_inverted(bool)``, ``fit()``, ``one_to_one()``,
``set_overlay(gmap | None)``, ``set_overlay_visible(bool)``, ``toggle_overlay()``, ``set_overlay_opacity(float)``,
``set_overlay_colormap(name)``, ``set_overlay_range("fixed" | "auto" | "stretch")``, ``set_isolines(bool)``,
``set_boxes([(Box, label, QColor)])``, ``set_ruler(bool)``, ``ruler_length() -> (value, unit)``,
``set_wl_mode(bool)``, ``link_to(other)`` (zoom/pan/W/L synchronised), ``set_caption(text)``,
``view_box`` / ``image_item`` / ``overlay_item`` attributes, signals ``windowChanged(float, float)`` and
``viewChanged()``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from elvis_core.io.display import orientation_markers, voi_lut_table_uint8, window_presets
from elvis_core.io.radiograph import Radiograph, Window
from elvis_viewer.measure import MeasureLayer

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)

from elvis_viewer.image_overlay import ImageOverlayMixin  # noqa: E402  (the overlay methods of ImageView)
from elvis_viewer.view_items import (  # noqa: E402  (re-exported: public names of this module)
    _SPACING_SHORT, OVERLAY_COLORMAPS, OVERLAY_SMOOTH_FACTOR, _CachedDownsampleImageItem, _num, _overlay_colormap,
    _shadow, _WLViewBox, affine_to_qtransform, inversion_short, inversion_text, layout_corner_texts,
    needs_fixed_scale, opacity_factor, prepared, trust_texts, unseen_items)


class ImageView(ImageOverlayMixin, QtWidgets.QWidget):
    windowChanged = QtCore.Signal(float, float)  # center, width
    viewChanged = QtCore.Signal()

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None):
        super().__init__(parent)
        self.rad: Optional[Radiograph] = None
        self.gmap = None
        self._center = 0.5
        self._width = 1.0
        self._inverted = False
        self._use_voi_lut = False
        self._robust: Tuple[float, float] = (0.0, 1.0)
        self._overlay_visible = True
        self._overlay_range = "auto"
        self._shared_levels: Optional[Tuple[float, float]] = None
        self._overlay_cmap = next(iter(OVERLAY_COLORMAPS))
        self._isolines_on = False
        self._overlay_fade = True
        self._overlay_smooth = True  # draw GroundingMap.display_grid (bilinear x8 of the grid) instead of blocky cells
        self._linked: List["ImageView"] = []
        self._syncing = False
        self._caption = ""
        self._identity = ""
        self._opacity = 0.5
        self._inversion = ""  # "film looks inverted ..." (elvis_core.io.inversion), shown in the top-left corner

        self.glw = pg.GraphicsLayoutWidget()
        self.glw.setBackground("#101214")
        self.view_box = _WLViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.view_box.setBackgroundColor("#000000")
        self.glw.addItem(self.view_box, row=0, col=0)

        self.image_item = _CachedDownsampleImageItem(autoDownsample=True)
        self.view_box.addItem(self.image_item)

        # the overlay (and its isolines) are children of a rectangle the size of the image that clips them: the
        # model input's padding, which the map also covers, is never drawn outside the image
        self.overlay_clip = QtWidgets.QGraphicsRectItem(0, 0, 1, 1)
        self.overlay_clip.setPen(QtGui.QPen(QtCore.Qt.PenStyle.NoPen))
        self.overlay_clip.setFlag(QtWidgets.QGraphicsItem.GraphicsItemFlag.ItemClipsChildrenToShape, True)
        self.overlay_clip.setZValue(10)
        self.view_box.addItem(self.overlay_clip)
        self.overlay_item = pg.ImageItem()
        self.overlay_item.setParentItem(self.overlay_clip)
        self.overlay_item.setOpacity(0.5)
        self.overlay_item.setVisible(False)
        self._isolines: List[pg.IsocurveItem] = []

        self.colorbar = pg.ColorBarItem(values=(-1, 1), colorMap=_overlay_colormap(self._overlay_cmap),
                                        interactive=False, width=14, label="cosine similarity")
        self.colorbar.setImageItem(self.overlay_item)
        self.glw.addItem(self.colorbar, row=0, col=1)
        self.colorbar.setVisible(False)

        # the part of the image an imported model's centre crop never saw: hatched, framed and labelled
        self._unseen_items: List[QtWidgets.QGraphicsItem] = []
        self._box_items: List[QtWidgets.QGraphicsItem] = []
        self._note = ""
        self.measure = MeasureLayer(self)

        # corner texts + orientation markers, children of the ViewBox itself (not of its transformed child group)
        font = QtGui.QFont()
        font.setPointSize(9)
        self._corners = {}
        for key in ("tl", "tr", "bl", "br"):
            it = QtWidgets.QGraphicsSimpleTextItem(parent=self.view_box)
            it.setBrush(QtGui.QColor("#e8e8a0"))
            it.setFont(font)
            it.setZValue(100)
            it.setGraphicsEffect(_shadow())  # readable over bright image regions
            self._corners[key] = it
        mfont = QtGui.QFont()
        mfont.setPointSize(13)
        mfont.setBold(True)
        self._markers = {}
        for key in ("left", "right", "top", "bottom"):
            it = QtWidgets.QGraphicsSimpleTextItem(parent=self.view_box)
            it.setBrush(QtGui.QColor("#ffd24d"))
            it.setFont(mfont)
            it.setZValue(100)
            it.setGraphicsEffect(_shadow())
            self._markers[key] = it

        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.glw)
        self.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)

        self.view_box.sigWindowDrag.connect(self._on_wl_drag)
        self.view_box.sigResized.connect(self._layout_texts)
        self.view_box.sigRangeChanged.connect(self._on_range_changed)
        self._apply_lut()

    # ------------------------------------------------------------------------------------------------------ image
    def set_radiograph(self, rad: Optional[Radiograph]) -> None:
        """Show a radiograph with its default window (its VOI LUT when it has one and no window)."""
        self.rad = rad
        self.set_overlay(None)
        self.set_boxes([])
        if rad is None:
            self.image_item.clear()
            self._update_texts()
            return
        pix = rad.pixels
        self._inversion = inversion_text(rad)
        robust = prepared(rad, "_display_robust")  # computed in the reading worker (session_tasks)
        if robust is None:
            step = max(1, int(max(pix.shape) // 512))
            sub = pix[::step, ::step]
            lo, hi = (float(v) for v in np.percentile(sub, [0.5, 99.5]))
            if hi <= lo:
                lo, hi = float(sub.min()), float(sub.max()) + 1.0
            robust = (lo, hi)
        self._robust = robust
        self.overlay_clip.setRect(0, 0, float(pix.shape[1]), float(pix.shape[0]))
        pyr = getattr(rad, "_display_pyramid", None)
        self.image_item.pyramid = pyr[1] if pyr is not None and pyr[0] is pix else {}
        self.image_item.setImage(pix, autoLevels=False)
        self._use_voi_lut = rad.voi_lut is not None and not rad.windows
        w = prepared(rad, "_display_window") or rad.default_window()
        self._center, self._width = float(w.center), max(float(w.width), 1e-6)
        self._apply_levels()
        self._apply_lut()
        self.fit()
        self._update_texts()
        self.measure.clear()

    def clear(self) -> None:
        self.set_radiograph(None)

    # ---------------------------------------------------------------------------------------------- window/level
    def window(self) -> Tuple[float, float]:
        return self._center, self._width

    def set_window(self, center: float, width: float, _from_link: bool = False) -> None:
        was_voi = self._use_voi_lut
        self._use_voi_lut = False
        self._center, self._width = float(center), max(float(width), 1e-6)
        if was_voi:  # only switching away from the VOI LUT changes the lookup table; a drag only changes levels
            self._apply_lut()
        self._apply_levels()
        self._update_texts()
        self.windowChanged.emit(self._center, self._width)
        if not _from_link:
            for other in self._linked:
                if other.window() != (self._center, self._width):
                    other.set_window(self._center, self._width, _from_link=True)

    def _apply_levels(self) -> None:
        if self.rad is None:
            return
        if self._use_voi_lut and self.rad.voi_lut is not None:
            lut = self.rad.voi_lut
            n = len(lut.table)
            self.image_item.setLevels([lut.first_mapped, lut.first_mapped + max(n - 1, 1)])
        else:
            self.image_item.setLevels([self._center - self._width / 2.0, self._center + self._width / 2.0])

    def _apply_lut(self) -> None:
        if self._use_voi_lut and self.rad is not None and self.rad.voi_lut is not None:
            grey = voi_lut_table_uint8(self.rad.voi_lut)  # the same rounding as exports (elvis_core.io.display)
        else:
            grey = np.arange(256, dtype=np.uint8)
        if self._inverted:
            grey = grey[::-1].copy()
        self.image_item.setLookupTable(np.stack([grey, grey, grey], axis=1))

    def _on_wl_drag(self, dx: float, dy: float) -> None:
        if self.rad is None:
            return
        span = max(self._robust[1] - self._robust[0], 1e-6)
        k = span / 400.0  # one screen pixel moves the window by 1/400 of the image's robust range
        self.set_window(self._center + dy * k, max(self._width + dx * k, span * 1e-3))

    def presets(self) -> List[Window]:
        """The file's windows (+ its VOI LUT) and the chest presets computed from the image
        (:func:`elvis_core.io.display.window_presets`: body region without collimation borders)."""
        if self.rad is None:
            return []
        if getattr(self, "_presets_for", None) is not self.rad:
            pre = prepared(self.rad, "_display_presets")
            self._presets_cache, self._presets_for = (pre if pre is not None else window_presets(self.rad)), self.rad
        return list(self._presets_cache)

    def apply_preset(self, name: str) -> None:
        for w in self.presets():
            if w.name == name:
                if name == "DICOM VOI LUT":
                    self._use_voi_lut = True
                    self._apply_lut()
                    self._apply_levels()
                    self._update_texts()
                else:
                    self.set_window(w.center, w.width)
                return
        raise KeyError(name)

    def set_inverted(self, on: bool) -> None:
        self._inverted = bool(on)
        self._apply_lut()
        self._update_texts()

    def inverted(self) -> bool:
        return self._inverted

    def set_wl_mode(self, on: bool) -> None:
        self.view_box.wl_mode = bool(on)

    # ------------------------------------------------------------------------------------------------ zoom / pan
    def fit(self) -> None:
        if self.rad is None:
            return
        r, c = self.rad.shape
        self.view_box.setRange(QtCore.QRectF(0, 0, c, r), padding=0.02)

    def one_to_one(self) -> None:
        """One image pixel per screen pixel, centred on the current view centre."""
        if self.rad is None:
            return
        rect = self.view_box.viewRect()
        size = self.view_box.size()
        ratio = self.devicePixelRatioF() or 1.0
        w, h = size.width() / ratio, size.height() / ratio
        cx, cy = rect.center().x(), rect.center().y()
        self.view_box.setRange(QtCore.QRectF(cx - w / 2, cy - h / 2, w, h), padding=0)

    def zoom(self, factor: float) -> None:
        self.view_box.scaleBy((1.0 / factor, 1.0 / factor))

    def pixels_per_screen_pixel(self) -> float:
        rect = self.view_box.viewRect()
        w = max(self.view_box.size().width(), 1.0)
        return rect.width() / w

    def _on_range_changed(self, *_):
        self._update_texts()
        self.viewChanged.emit()
        if self._syncing:
            return
        rect = self.view_box.viewRect()
        for other in self._linked:
            other._syncing = True
            try:
                other.view_box.setRange(rect, padding=0)
            finally:
                other._syncing = False

    def link_to(self, other: "ImageView") -> None:
        """Synchronise zoom/pan and window/level with another ImageView (both directions)."""
        if other not in self._linked:
            self._linked.append(other)
        if self not in other._linked:
            other._linked.append(self)

    def unlink(self, other: "ImageView") -> None:
        if other in self._linked:
            self._linked.remove(other)
        if self in other._linked:
            other._linked.remove(self)

    # ----------------------------------------------------------------------------------------------------- boxes
    def set_boxes(self, boxes: Sequence[Tuple[object, str, QtGui.QColor]]) -> None:
        """Draw boxes ``(Box(x, y, w, h), label, QColor)`` in original-image pixels with their labels."""
        for it in self._box_items:
            self.view_box.removeItem(it)
        self._box_items = []
        for box, label, color in boxes:
            color = QtGui.QColor(color)
            rect = QtWidgets.QGraphicsRectItem(float(box.x), float(box.y), float(box.w), float(box.h))
            pen = QtGui.QPen(color)
            pen.setWidthF(2.0)
            pen.setCosmetic(True)
            rect.setPen(pen)
            rect.setZValue(20)
            self.view_box.addItem(rect)
            self._box_items.append(rect)
            if label:
                txt = pg.TextItem(label, color=color, anchor=(0, 1), fill=pg.mkBrush(0, 0, 0, 150))
                txt.setPos(float(box.x), float(box.y))
                txt.setZValue(21)
                self.view_box.addItem(txt)
                self._box_items.append(txt)

    def box_items(self) -> List[QtWidgets.QGraphicsRectItem]:
        return [it for it in self._box_items if isinstance(it, QtWidgets.QGraphicsRectItem)]

    # ------------------------------------------------------------------------------------- measurements (ruler)
    def set_ruler(self, on: bool) -> None:
        """Add a ruler (on) or remove all of them (off); see :class:`elvis_viewer.measure.MeasureLayer`."""
        self.measure.add("ruler") if on else self.measure.clear()

    def set_ruler_endpoints(self, p0, p1) -> None:
        self.measure.last("ruler", create=True).set_points([p0, p1])

    def ruler_endpoints(self):
        r = self.measure.last("ruler")
        return None if r is None else tuple(r.points())

    def ruler_length(self) -> Optional[Tuple[float, str]]:
        r = self.measure.last("ruler")
        return None if r is None else r.value()

    # ------------------------------------------------------------------------------------------- texts / layout
    def set_identity_text(self, text: str) -> None:
        """Patient identifiers for the bottom-left corner; the main window sets this ONLY when the user turned the
        privacy toggle on (off by default), and clears it when turned off."""
        self._identity = text
        self._update_texts()

    def set_note(self, text: str) -> None:
        """A warning line under the phrase (e.g. "NEGATED in the report"), drawn in red."""
        self._note = text
        self._update_texts()

    def set_caption(self, text: str) -> None:
        """An extra line at the top-left (e.g. the checkpoint name in compare mode)."""
        self._caption = text
        self._update_texts()

    def corner_text(self, key: str) -> str:
        return self._corners[key].text()

    def marker_text(self, key: str) -> str:
        return self._markers[key].text()

    def _update_texts(self) -> None:
        rad = self.rad
        if rad is None:
            for it in list(self._corners.values()) + list(self._markers.values()):
                it.setText("")
            self._corners["tl"].setText(self._caption)
            self._layout_texts()
            return
        m = rad.meta
        view = m.get("ViewPosition") or "view ?"
        modality = m.get("Modality") or ""
        tl = [x for x in (self._caption, f"{modality} {view}".strip()) if x]
        if self._inversion:
            tl.append(inversion_short(self._inversion))
        if self.gmap is not None and getattr(self.gmap, "phrase", "") and self.gmap.phrase != self._caption:
            phrase = self.gmap.phrase
            tl.append("“" + (phrase if len(phrase) < 60 else phrase[:57] + "…") + "”")
        tl += trust_texts(self.gmap)
        if self._note and self.gmap is not None:
            tl.append("⚠ " + self._note)
        self._corners["tl"].setText("\n".join(tl))
        r, c = rad.shape
        if rad.pixel_spacing:
            src = _SPACING_SHORT.get(rad.spacing_source, rad.spacing_source)
            sp = f"{rad.pixel_spacing[0]:.3g} x {rad.pixel_spacing[1]:.3g} mm ({src})"
        else:
            sp = "spacing unknown (px)"
        self._corners["tr"].setText(f"{c} x {r}\n{sp}")
        if self._use_voi_lut:
            wl = "W/L: VOI LUT"
        else:
            wl = f"W {_num(self._width)}  L {_num(self._center)}"
        if self._inverted:
            wl += "  (inverted)"
        self._corners["bl"].setText(f"{self._identity}\n{wl}" if self._identity else wl)
        zoom = 1.0 / max(self.pixels_per_screen_pixel(), 1e-9)
        self._corners["br"].setText(f"zoom {zoom * 100:.0f}%")
        markers, _src = orientation_markers(m)
        if markers is None:
            for it in self._markers.values():
                it.setText("")
        else:
            for key, txt in zip(("left", "right", "top", "bottom"), markers):
                self._markers[key].setText(txt)
        self._layout_texts()

    def _layout_texts(self, *_):
        img = None
        if self.rad is not None:  # the image in the view box's own coordinates: the markers sit at its edges
            r, c = self.rad.shape
            vr, size = self.view_box.viewRect(), self.view_box.size()  # the range as just set (y down)
            if vr.width() > 0 and vr.height() > 0:
                sx, sy = size.width() / vr.width(), size.height() / vr.height()
                img = QtCore.QRectF(-vr.left() * sx, -vr.top() * sy, c * sx, r * sy)
        layout_corner_texts(self.view_box.size(), self._corners, self._markers, narrow_ok=self.rad is not None,
                            image_rect=img)

    # ------------------------------------------------------------------------------------------------- keyboard
    def keyPressEvent(self, ev: QtGui.QKeyEvent) -> None:
        key = ev.key()
        if key == QtCore.Qt.Key.Key_H:
            self.toggle_overlay()
        elif key == QtCore.Qt.Key.Key_F:
            self.fit()
        elif key == QtCore.Qt.Key.Key_1:
            self.one_to_one()
        elif key == QtCore.Qt.Key.Key_I:
            self.set_inverted(not self._inverted)
        elif key in (QtCore.Qt.Key.Key_Plus, QtCore.Qt.Key.Key_Equal):
            self.zoom(1.25)
        elif key == QtCore.Qt.Key.Key_Minus:
            self.zoom(0.8)
        else:
            super().keyPressEvent(ev)

    # -------------------------------------------------------------------------------------------------- export
    def grab_view(self) -> QtGui.QImage:
        return self.glw.grab().toImage()
