"""`ImageView`: a radiograph display widget on pyqtgraph with window/level, overlay, boxes and a ruler.

Everything here is display only:
- window/level goes through ``ImageItem.setLevels`` (or a lookup table for a DICOM VOI LUT and for invert), so
  dragging never re-reads or re-scales the pixel array in Python;
- the grounding map is drawn as a SMALL ImageItem placed on the image with a ``QTransform`` built from
  ``GroundingMap.grid_to_image``: by default the core's ``GroundingMap.display_grid(8)`` (bilinear, e.g. 128 x 128
  for a 16 x 16 grid), or the raw cells with ``set_overlay_smooth(False)``; no full-resolution map is ever made in
  Python; isolines are drawn on that same small grid;
- boxes are in original-image pixels (x right, y down), exactly like the annotation files.

Public API (stable, reused by the review mode):
``set_radiograph(rad)``, ``clear()``, ``set_window(center, width)``, ``window() -> (center, width)``,
``presets() -> list[Window]``, ``apply_preset(name)``, ``set_inverted(bool)``, ``fit()``, ``one_to_one()``,
``set_overlay(gmap | None)``, ``set_overlay_visible(bool)``, ``toggle_overlay()``, ``set_overlay_opacity(float)``,
``set_overlay_colormap(name)``, ``set_overlay_range("fixed" | "auto")``, ``set_isolines(bool)``,
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

from elvis_core.io.radiograph import Radiograph, Window

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)

#: diverging colormaps offered for the overlay (name shown -> pyqtgraph colormap name or builtin)
OVERLAY_COLORMAPS = {
    "Blue-Red (diverging)": "CET-D1",
    "Blue-Yellow-Red (diverging)": "CET-D3",
    "Cyan-Magenta (diverging)": "CET-D10",
    "Viridis (sequential)": "viridis",
    "Inferno (sequential)": "inferno",
}

#: chest presets, as fractions of the image's robust intensity range (p0.5..p99.5). Radiograph modality values are
#: not Hounsfield units, so fixed HU windows would be meaningless on CR/DX; these windows emphasise the dark lung
#: fields, the mid-grey mediastinum and the bright bone respectively.
CHEST_PRESETS = {
    "Lung": (0.30, 0.75),
    "Mediastinum": (0.55, 0.45),
    "Bone": (0.75, 0.40),
}


def _shadow() -> QtWidgets.QGraphicsDropShadowEffect:
    eff = QtWidgets.QGraphicsDropShadowEffect()
    eff.setBlurRadius(4)
    eff.setOffset(1, 1)
    eff.setColor(QtGui.QColor(0, 0, 0, 230))
    return eff


#: short names of spacing sources for the corner text
_SPACING_SHORT = {"ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor": "ImagerPixelSpacing/ERMF"}


def _num(v: float) -> str:
    """W/L numbers as a radiologist reads them: integers for large values, 4 significant digits otherwise."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.4g}"


def _overlay_colormap(name: str) -> pg.ColorMap:
    key = OVERLAY_COLORMAPS.get(name, name)
    return pg.colormap.get(key)


#: overlay item pixels per grid cell in smooth mode (a 16 x 16 grid is drawn as 128 x 128)
OVERLAY_SMOOTH_FACTOR = 8


def affine_to_qtransform(a: np.ndarray) -> QtGui.QTransform:
    """3x3 affine ``[x, y, 1] = A @ [gx, gy, 1]`` -> QTransform (Qt uses row vectors: x' = m11 x + m21 y + dx)."""
    a = np.asarray(a, dtype=float)
    return QtGui.QTransform(a[0, 0], a[1, 0], a[0, 1], a[1, 1], a[0, 2], a[1, 2])


def orientation_markers(meta: dict) -> Tuple[Optional[Tuple[str, str, str, str]], str]:
    """(left, right, top, bottom) side labels of the displayed image in the patient's frame, and their source.

    From PatientOrientation (row direction, column direction) when present; else from ViewPosition for frontal
    chest views (PA and AP are displayed with the patient's right on the image's left); else unknown (None).
    """
    opposite = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}

    def opp(s: str) -> str:
        return "".join(opposite.get(c, c) for c in s)

    po = meta.get("PatientOrientation")
    if po:
        parts = list(po) if not isinstance(po, str) else po.replace("\\", " ").split()
        if len(parts) == 2 and all(parts):
            row_dir, col_dir = str(parts[0]).upper(), str(parts[1]).upper()
            return (opp(row_dir), row_dir, opp(col_dir), col_dir), "PatientOrientation"
    view = str(meta.get("ViewPosition") or "").upper()
    if view in ("PA", "AP"):
        return ("R", "L", "H", "F"), f"assumed from ViewPosition {view}"
    return None, "unknown"


class _CachedDownsampleImageItem(pg.ImageItem):
    """ImageItem that keeps its last auto-downsampled array.

    pyqtgraph re-downsamples the whole array on every render, and a level change triggers a render. On a fitted
    3000x3000 image that was ~65 ms of every W/L drag step. Here the downsampled array is reused while the image
    and the downsample factors stay the same, so a W/L step only re-applies levels + LUT to the small array.
    """

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._ds_src = None
        self._ds_key = None
        self._ds_img = None

    def render(self):
        image = self.image
        if not self.autoDownsample or image is None or image.size == 0 or image.ndim != 2:
            return super().render()
        xds, yds = self._computeDownsampleFactors()
        if xds is None or (xds, yds) == (1, 1):
            return super().render()
        key = (xds, yds, image.shape)
        if self._ds_src is not image or self._ds_key != key:
            axes = [1, 0] if self.axisOrder == "row-major" else [0, 1]
            ds = pg.functions.downsample(image, xds, axis=axes[0])
            self._ds_img = pg.functions.downsample(ds, yds, axis=axes[1])
            self._ds_src, self._ds_key = image, key
        self.image, self.autoDownsample = self._ds_img, False
        try:
            super().render()
        finally:
            self.image, self.autoDownsample = image, True
        self._lastDownsample = (xds, yds)


class _WLViewBox(pg.ViewBox):
    """ViewBox where a right-button drag (or a left drag in W/L mode) changes window/level instead of zooming."""

    sigWindowDrag = QtCore.Signal(float, float)  # dx, dy in screen pixels since last event
    sigDragFinished = QtCore.Signal()

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.wl_mode = False

    def mouseDragEvent(self, ev, axis=None):
        wl = ev.button() == QtCore.Qt.MouseButton.RightButton or (
            self.wl_mode and ev.button() == QtCore.Qt.MouseButton.LeftButton)
        if not wl:
            return super().mouseDragEvent(ev, axis)
        ev.accept()
        d = ev.screenPos() - ev.lastScreenPos()
        self.sigWindowDrag.emit(float(d.x()), float(d.y()))
        if ev.isFinish():
            self.sigDragFinished.emit()

    def raiseContextMenu(self, ev):  # right button is W/L; no context menu
        return


class ImageView(QtWidgets.QWidget):
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
        self._overlay_range = "fixed"
        self._overlay_cmap = next(iter(OVERLAY_COLORMAPS))
        self._isolines_on = False
        self._overlay_fade = False
        self._overlay_smooth = True  # draw GroundingMap.display_grid (bilinear x8 of the grid) instead of blocky cells
        self._linked: List["ImageView"] = []
        self._syncing = False
        self._caption = ""
        self._identity = ""

        self.glw = pg.GraphicsLayoutWidget()
        self.glw.setBackground("#101214")
        self.view_box = _WLViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.view_box.setBackgroundColor("#000000")
        self.glw.addItem(self.view_box, row=0, col=0)

        self.image_item = _CachedDownsampleImageItem(autoDownsample=True)
        self.view_box.addItem(self.image_item)

        self.overlay_item = pg.ImageItem()
        self.overlay_item.setZValue(10)
        self.overlay_item.setOpacity(0.5)
        self.view_box.addItem(self.overlay_item)
        self.overlay_item.setVisible(False)
        self._isolines: List[pg.IsocurveItem] = []

        self.colorbar = pg.ColorBarItem(values=(-1, 1), colorMap=_overlay_colormap(self._overlay_cmap),
                                        interactive=False, width=14, label="cosine similarity")
        self.colorbar.setImageItem(self.overlay_item)
        self.glw.addItem(self.colorbar, row=0, col=1)
        self.colorbar.setVisible(False)

        self._box_items: List[QtWidgets.QGraphicsItem] = []
        self._ruler: Optional[pg.LineSegmentROI] = None
        self._ruler_label: Optional[pg.TextItem] = None

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
        step = max(1, int(max(pix.shape) // 512))
        sub = pix[::step, ::step]
        lo, hi = (float(v) for v in np.percentile(sub, [0.5, 99.5]))
        if hi <= lo:
            lo, hi = float(sub.min()), float(sub.max()) + 1.0
        self._robust = (lo, hi)
        self.image_item.setImage(pix, autoLevels=False)
        self._use_voi_lut = rad.voi_lut is not None and not rad.windows
        w = rad.default_window()
        self._center, self._width = float(w.center), max(float(w.width), 1e-6)
        self._apply_levels()
        self._apply_lut()
        self.fit()
        self._update_texts()
        if self._ruler is not None:
            self.set_ruler(False)

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
            grey = np.clip(np.asarray(self.rad.voi_lut.table, dtype=np.float64) * 255.0, 0, 255).astype(np.uint8)
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
        """DICOM windows of the file (+ its VOI LUT), the chest presets, and "Auto" (robust full range)."""
        out: List[Window] = []
        if self.rad is None:
            return out
        for i, w in enumerate(self.rad.windows):
            out.append(Window(w.center, w.width, w.name or f"DICOM {i + 1}"))
        if self.rad.voi_lut is not None:
            out.append(Window(float("nan"), float("nan"), "DICOM VOI LUT"))
        lo, hi = self._robust
        span = hi - lo
        for name, (c, w) in CHEST_PRESETS.items():
            out.append(Window(lo + c * span, w * span, name))
        out.append(Window((lo + hi) / 2.0, span, "Auto"))
        return out

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

    # --------------------------------------------------------------------------------------------------- overlay
    def set_overlay(self, gmap) -> None:
        """Show a `GroundingMap` (or remove it with None): its small grid, placed by ``gmap.grid_to_image``."""
        self.gmap = gmap
        for iso in self._isolines:
            iso.setParentItem(None)
            if iso.scene() is not None:
                iso.scene().removeItem(iso)
        self._isolines = []
        if gmap is None:
            self.overlay_item.clear()
            self.overlay_item.setVisible(False)
            self.colorbar.setVisible(False)
            self._update_texts()
            return
        sim, affine = gmap.display_grid(self.overlay_factor())
        self.overlay_item.setImage(sim, autoLevels=False)
        self.overlay_item.setTransform(affine_to_qtransform(affine))
        self._apply_overlay_levels()
        self._apply_overlay_cmap()
        self._rebuild_isolines()
        self.overlay_item.setVisible(self._overlay_visible)
        self.colorbar.setVisible(self._overlay_visible)
        self._update_texts()

    def overlay_levels(self) -> Tuple[float, float]:
        if self.gmap is None or self._overlay_range == "fixed":
            return -1.0, 1.0
        # symmetric about 0, so the diverging colormap keeps white = similarity 0 (red = positive, blue = negative)
        m = float(np.nanmax(np.abs(np.asarray(self.gmap.similarity))))
        m = max(m, 1e-6)
        return -m, m

    def _apply_overlay_levels(self) -> None:
        lo, hi = self.overlay_levels()
        self.overlay_item.setLevels([lo, hi])
        self.colorbar.setLevels((lo, hi))

    def _apply_overlay_cmap(self) -> None:
        cmap = _overlay_colormap(self._overlay_cmap)
        lut = cmap.getLookupTable(nPts=256, alpha=False)
        if self._overlay_fade:
            # alpha grows with the distance from the middle of the range (0 on the fixed [-1, 1] scale): neutral
            # cells let the image through, strong positive/negative cells cover it
            a = np.abs(np.linspace(-1.0, 1.0, 256))
            lut = np.concatenate([lut[:, :3], (np.clip(a * 1.5, 0, 1) * 255).astype(np.uint8)[:, None]], axis=1)
        self.colorbar.setColorMap(cmap)  # (the colour bar pushes its own LUT to the item: set ours after it)
        self.overlay_item.setLookupTable(lut)

    def overlay_factor(self) -> int:
        """Overlay item pixels per grid cell: 8 when smooth (bilinear display grid), 1 for plain cells."""
        return OVERLAY_SMOOTH_FACTOR if self._overlay_smooth else 1

    def set_overlay_smooth(self, on: bool) -> None:
        """Smooth (bilinear) or blocky (one square per patch) display of the map; the values are the same."""
        if bool(on) == self._overlay_smooth:
            return
        self._overlay_smooth = bool(on)
        if self.gmap is not None:
            self.set_overlay(self.gmap)

    def set_overlay_fade(self, on: bool) -> None:
        """Fade cells near the middle of the range (near 0 on [-1, 1]) to transparent."""
        self._overlay_fade = bool(on)
        self._apply_overlay_cmap()

    def set_overlay_range(self, mode: str) -> None:
        if mode not in ("fixed", "auto"):
            raise ValueError(f"overlay range must be 'fixed' or 'auto', got {mode!r}")
        self._overlay_range = mode
        if self.gmap is not None:
            self._apply_overlay_levels()

    def set_overlay_colormap(self, name: str) -> None:
        if name not in OVERLAY_COLORMAPS and name not in pg.colormap.listMaps():
            raise KeyError(name)
        self._overlay_cmap = name
        self._apply_overlay_cmap()

    def set_overlay_opacity(self, opacity: float) -> None:
        self.overlay_item.setOpacity(float(np.clip(opacity, 0.0, 1.0)))

    def overlay_opacity(self) -> float:
        return float(self.overlay_item.opacity())

    def set_overlay_visible(self, on: bool) -> None:
        self._overlay_visible = bool(on)
        has = self.gmap is not None
        self.overlay_item.setVisible(has and self._overlay_visible)
        self.colorbar.setVisible(has and self._overlay_visible)

    def overlay_visible(self) -> bool:
        return self._overlay_visible

    def toggle_overlay(self) -> None:
        self.set_overlay_visible(not self._overlay_visible)

    def set_isolines(self, on: bool) -> None:
        self._isolines_on = bool(on)
        self._rebuild_isolines()

    def _rebuild_isolines(self) -> None:
        for iso in self._isolines:
            iso.setParentItem(None)
            if iso.scene() is not None:
                iso.scene().removeItem(iso)
        self._isolines = []
        if not self._isolines_on or self.gmap is None:
            return
        sim, _ = self.gmap.display_grid(self.overlay_factor())
        lo, hi = float(np.nanmin(sim)), float(np.nanmax(sim))
        for frac in (0.5, 0.75, 0.9):
            level = lo + frac * (hi - lo)
            # IsocurveItem works in data-index space where index (i, j) is a cell's corner; shift half a cell so the
            # curves pass through cell centres, then the parent (overlay ImageItem) applies grid_to_image.
            iso = pg.IsocurveItem(data=sim, level=level, pen=pg.mkPen("#ffffff", width=1.5), axisOrder="row-major")
            iso.setParentItem(self.overlay_item)
            iso.setTransform(QtGui.QTransform.fromTranslate(0.5, 0.5))
            self._isolines.append(iso)

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

    # ----------------------------------------------------------------------------------------------------- ruler
    def set_ruler(self, on: bool) -> None:
        if self._ruler is not None:
            self.view_box.removeItem(self._ruler)
            self.view_box.removeItem(self._ruler_label)
            self._ruler = None
            self._ruler_label = None
        if not on or self.rad is None:
            return
        r, c = self.rad.shape
        self._ruler = pg.LineSegmentROI([[c * 0.3, r * 0.5], [c * 0.7, r * 0.5]], pen=pg.mkPen("#00e5ff", width=2))
        self._ruler.setZValue(30)
        self._ruler_label = pg.TextItem("", color="#00e5ff", anchor=(0.5, 1.2), fill=pg.mkBrush(0, 0, 0, 160))
        self._ruler_label.setZValue(31)
        self.view_box.addItem(self._ruler)
        self.view_box.addItem(self._ruler_label)
        self._ruler.sigRegionChanged.connect(self._update_ruler)
        self._update_ruler()

    def ruler_endpoints(self) -> Optional[Tuple[Tuple[float, float], Tuple[float, float]]]:
        if self._ruler is None:
            return None
        p = [self._ruler.mapToParent(q) for q in self._ruler.listPoints()]  # parent = view (image pixel) coords
        return (p[0].x(), p[0].y()), (p[1].x(), p[1].y())

    def set_ruler_endpoints(self, p0: Tuple[float, float], p1: Tuple[float, float]) -> None:
        if self._ruler is None:
            self.set_ruler(True)
        h0, h1 = self._ruler.getHandles()
        self._ruler.movePoint(h0, QtCore.QPointF(*p0), coords="parent")
        self._ruler.movePoint(h1, QtCore.QPointF(*p1), coords="parent")
        self._update_ruler()

    def ruler_length(self) -> Optional[Tuple[float, str]]:
        """Length of the ruler: (mm, "mm") when the pixel spacing is known, else (pixels, "px")."""
        ends = self.ruler_endpoints()
        if ends is None or self.rad is None:
            return None
        (x0, y0), (x1, y1) = ends
        dx, dy = x1 - x0, y1 - y0
        if self.rad.pixel_spacing:
            row_mm, col_mm = self.rad.pixel_spacing
            return float(np.hypot(dx * col_mm, dy * row_mm)), "mm"
        return float(np.hypot(dx, dy)), "px"

    def _update_ruler(self) -> None:
        length = self.ruler_length()
        if length is None:
            return
        (x0, y0), (x1, y1) = self.ruler_endpoints()
        val, unit = length
        text = f"{val:.1f} mm" if unit == "mm" else f"{val:.1f} px (spacing unknown)"
        self._ruler_label.setText(text)
        self._ruler_label.setPos((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    # ------------------------------------------------------------------------------------------- texts / layout
    def set_identity_text(self, text: str) -> None:
        """Patient identifiers for the bottom-left corner; the main window sets this ONLY when the user turned the
        privacy toggle on (off by default), and clears it when turned off."""
        self._identity = text
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
        if self.gmap is not None and getattr(self.gmap, "phrase", ""):
            phrase = self.gmap.phrase
            tl.append("“" + (phrase if len(phrase) < 60 else phrase[:57] + "…") + "”")
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
        size = self.view_box.size()
        w, h = size.width(), size.height()
        pad = 6
        c = self._corners
        c["tl"].setPos(pad, pad)
        br = c["tr"].boundingRect()
        tl_b = c["tl"].boundingRect()
        if tl_b.width() + br.width() + 3 * pad > w:  # narrow view: stack the top-right text under the top-left one
            c["tr"].setPos(w - br.width() - pad, pad + tl_b.height())
        else:
            c["tr"].setPos(w - br.width() - pad, pad)
        br = c["bl"].boundingRect()
        c["bl"].setPos(pad, h - br.height() - pad)
        br = c["br"].boundingRect()
        c["br"].setPos(w - br.width() - pad, h - br.height() - pad)
        mk = self._markers
        b = mk["left"].boundingRect()
        mk["left"].setPos(pad, (h - b.height()) / 2)
        b = mk["right"].boundingRect()
        mk["right"].setPos(w - b.width() - pad, (h - b.height()) / 2)
        # top/bottom markers sit below/above the corner texts so they never overlap in narrow (compare) views
        top_h = max(c["tl"].boundingRect().height(), c["tr"].pos().y() - pad + c["tr"].boundingRect().height())
        bot_h = max(c["bl"].boundingRect().height(), c["br"].boundingRect().height())
        b = mk["top"].boundingRect()
        mk["top"].setPos((w - b.width()) / 2, pad + top_h)
        b = mk["bottom"].boundingRect()
        mk["bottom"].setPos((w - b.width()) / 2, h - b.height() - pad - bot_h)

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
