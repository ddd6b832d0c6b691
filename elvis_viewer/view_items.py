"""Graphics items and helpers of :class:`elvis_viewer.image_view.ImageView` (display only)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

#: diverging colormaps offered for the overlay (name shown -> pyqtgraph colormap name or builtin)
OVERLAY_COLORMAPS = {
    "Blue-Red (diverging)": "CET-D1",
    "Blue-Yellow-Red (diverging)": "CET-D3",
    "Cyan-Magenta (diverging)": "CET-D10",
    "Viridis (sequential)": "viridis",
    "Inferno (sequential)": "inferno",
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


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks (the remainder rows/columns dropped), as pyqtgraph's downsample does."""
    r, c = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    return a[:r, :c].reshape(r // f, f, c // f, f).mean(axis=(1, 3), dtype=np.float32)


def build_display_pyramid(rad, min_side: int = 1024) -> dict:
    """Block-mean copies of a large image at factors 2, 4, 8 (down to ``min_side``), built in the reading worker and
    kept on the radiograph (``_display_pyramid``): the first paint then downsamples a small array on the GUI thread
    instead of the full one."""
    pyr, a, f = {}, np.asarray(rad.pixels, dtype=np.float32), 1
    while min(a.shape) // 2 >= min_side // 2 and max(a.shape) // 2 >= min_side and f < 8:
        a, f = _block_mean(a, 2), f * 2
        pyr[f] = a
    try:
        rad._display_pyramid = (rad.pixels, pyr)
    except AttributeError:
        pass
    return pyr


def prepare_display(rad) -> None:
    """Everything the first paint needs that costs more than a few ms, computed in the reading worker and kept on
    the radiograph: the display pyramid, the robust range (W/L drag speed), the default window and the window
    presets (body region + percentiles). The GUI thread then only hands arrays to Qt."""
    from elvis_core.io.display import window_presets
    from elvis_core.io.radiograph import robust_range

    build_display_pyramid(rad)
    pix = rad.pixels
    lo, hi = robust_range(pix, 0.5, 99.5)
    if hi <= lo:
        lo, hi = float(pix.min()), float(pix.max()) + 1.0
    from elvis_core.io.inversion import inversion_warning

    try:
        rad._display_inversion = (pix, inversion_warning(rad) or "")
        rad._display_robust = (pix, (lo, hi))
        rad._display_window = (pix, rad.default_window())
        rad._display_presets = (pix, window_presets(rad))
    except AttributeError:
        pass


#: opacity factor of a map whose presence is below its threshold: drawn faint
FAINT = 0.4


def needs_fixed_scale(gmap) -> bool:
    """True for a map that was assessed (its peak is known) and is not confident: presence below its threshold, or
    an uncalibrated model. Such a map is drawn on the fixed [-1, 1] scale, never stretched to its own maximum
    (a stretched map of an absent finding looks as focal as a real one)."""
    return gmap is not None and getattr(gmap, "peak", None) is not None and getattr(gmap, "confident", None) is not True


def opacity_factor(gmap) -> float:
    """:data:`FAINT` for a map below its presence threshold, 1 otherwise."""
    return FAINT if getattr(gmap, "confident", None) is False else 1.0


def trust_texts(gmap) -> list:
    """The lines the view shows under the phrase: the map's trust line and, on a line of its own, the words the
    model does not know ("nodule is unknown to this model"). [] for a map nobody assessed."""
    if gmap is None or getattr(gmap, "peak", None) is None:
        return []
    from elvis_core.model.vocab import unknown_words_sentence

    out = [gmap.trust_line(words=False)]
    if gmap.unknown_words:
        out.append("⚠ " + unknown_words_sentence(gmap.unknown_words))
    return out


def inversion_text(rad) -> str:
    """The inverted-film warning :func:`prepare_display` computed for ``rad`` in the reading worker ("" when none or
    not prepared: the GUI thread never runs the check itself)."""
    return prepared(rad, "_display_inversion") or ""


def inversion_short(message: str) -> str:
    """The view's two-line form of an inverted-film warning ("" for none): what it means, then why."""
    if not message:
        return ""
    import re

    m = re.search(r"\((photometric tag [^)]*|no photometric tag)\)", message)
    return "⚠ film looks inverted: maps unreliable" + (f"\n   ({m.group(1)})" if m else "")


def token_map(gmap, k: int):
    """The map of token ``k`` of a phrase map as a map of its own: its own peak, uncalibrated (presence is calibrated
    for whole phrases only), labelled "<phrase> | token “<token>”"."""
    from dataclasses import replace

    from elvis_core.grounding.presence import attach_trust

    tm = replace(gmap, similarity=gmap.token_maps[k], raw_similarity=None,
                 phrase=f"{gmap.phrase} | token “{gmap.tokens[k]}”")
    return attach_trust(tm, None, None)


def prepared(rad, name: str):
    """A value stored by :func:`prepare_display` when it still belongs to ``rad.pixels``, else None."""
    v = getattr(rad, name, None)
    return v[1] if v is not None and v[0] is rad.pixels else None


class _CachedDownsampleImageItem(pg.ImageItem):
    """ImageItem that keeps its last auto-downsampled array and starts from a precomputed pyramid level.

    pyqtgraph re-downsamples the whole array on every render, and a level change triggers a render. On a fitted
    3000x3000 image that was ~65 ms of every W/L drag step. Here the downsampled array is reused while the image
    and the downsample factors stay the same, so a W/L step only re-applies levels + LUT to the small array; and a
    new downsample starts from the largest pyramid level (``build_display_pyramid``) not coarser than needed.
    """

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._ds_src = None
        self._ds_key = None
        self._ds_img = None
        self.pyramid: dict = {}

    def render(self):
        image = self.image
        if not self.autoDownsample or image is None or image.size == 0 or image.ndim != 2:
            return super().render()
        xds, yds = self._computeDownsampleFactors()
        if xds is None or (xds, yds) == (1, 1):
            return super().render()
        key = (xds, yds, image.shape)
        if self._ds_src is not image or self._ds_key != key:
            src, fx, fy = image, xds, yds
            for f in sorted(self.pyramid, reverse=True):
                if f <= min(xds, yds):  # the largest level not coarser than needed (then at most 2x finer)
                    src, fx, fy = self.pyramid[f], max(1, xds // f), max(1, yds // f)
                    break
            axes = [1, 0] if self.axisOrder == "row-major" else [0, 1]
            ds = pg.functions.downsample(src, fx, axis=axes[0]) if fx > 1 else src
            self._ds_img = pg.functions.downsample(ds, fy, axis=axes[1]) if fy > 1 else ds
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


def unseen_items(gmap, shape) -> list:
    """Graphics items for the border a model did not see (issue 11): a hatch over it, a dashed frame around the
    seen part, and a "not seen by the model" label on the widest band. ``shape`` = the image's (rows, cols)."""
    rows, cols = shape
    x0, y0, x1, y1 = gmap.seen_box()
    path = QtGui.QPainterPath()
    path.setFillRule(QtCore.Qt.FillRule.OddEvenFill)
    path.addRect(QtCore.QRectF(0, 0, cols, rows))
    path.addRect(QtCore.QRectF(x0, y0, x1 - x0, y1 - y0))
    hatch = QtWidgets.QGraphicsPathItem(path)
    hatch.setPen(QtGui.QPen(QtCore.Qt.PenStyle.NoPen))
    brush = QtGui.QBrush(QtGui.QColor(200, 200, 200, 110), QtCore.Qt.BrushStyle.BDiagPattern)
    brush.setTransform(QtGui.QTransform.fromScale(max(cols, rows) / 300.0, max(cols, rows) / 300.0))
    hatch.setBrush(brush)
    hatch.setZValue(15)
    frame = QtWidgets.QGraphicsRectItem(x0, y0, x1 - x0, y1 - y0)
    pen = QtGui.QPen(QtGui.QColor("#d0d0d0"))
    pen.setStyle(QtCore.Qt.PenStyle.DashLine)
    pen.setCosmetic(True)
    pen.setWidthF(1.5)
    frame.setPen(pen)
    frame.setZValue(16)
    bands = [(x0 * rows, (x0 / 2, rows / 2)), ((cols - x1) * rows, ((x1 + cols) / 2, rows / 2)),
             (y0 * cols, (cols / 2, y0 / 2)), ((rows - y1) * cols, (cols / 2, (y1 + rows) / 2))]
    _, (lx, ly) = max(bands)
    label = pg.TextItem("not seen by the model", color="#f0f0f0", anchor=(0.5, 0.5), fill=pg.mkBrush(0, 0, 0, 170))
    label.setPos(lx, ly)
    label.setZValue(17)
    label.setToolTip("The model's preprocessing (a centre crop, as in hi-ml) drops this border: the map has no "
                     "data here. Import with --whole-image to keep the whole image.")
    return [hatch, frame, label]


def layout_corner_texts(size, corners: dict, markers: dict, narrow_ok: bool = True, image_rect=None) -> None:
    """Place the four corner texts and the orientation markers of an ImageView of ``size`` (QSizeF): corners never
    overlap (in a narrow view the top-right text goes under the top-left one and drops the spacing source), and
    the top/bottom markers sit clear of the corner texts. With ``image_rect`` (the image in the same coordinates)
    the markers sit just inside the image's edges, centred on its visible part (at the view's edges when the image
    is larger than the view)."""
    w, h = size.width(), size.height()
    pad = 6
    c = corners
    c["tl"].setPos(pad, pad)
    br = c["tr"].boundingRect()
    if br.width() > w - 2 * pad and narrow_ok and " (" in c["tr"].text():
        c["tr"].setText(c["tr"].text().split(" (")[0])  # narrow (compare) view: spacing without its source
        br = c["tr"].boundingRect()
    tl_b = c["tl"].boundingRect()
    if tl_b.width() + br.width() + 3 * pad > w:  # narrow view: stack the top-right text under the top-left one
        c["tr"].setPos(w - br.width() - pad, 2 * pad + tl_b.height())  # a gap: never read as one block
    else:
        c["tr"].setPos(w - br.width() - pad, pad)
    br = c["bl"].boundingRect()
    c["bl"].setPos(pad, h - br.height() - pad)
    br = c["br"].boundingRect()
    c["br"].setPos(w - br.width() - pad, h - br.height() - pad)
    mk = markers
    if image_rect is not None and image_rect.width() > 0 and image_rect.height() > 0:
        il, ir = max(0.0, image_rect.left()), min(w, image_rect.right())
        it, ib = max(0.0, image_rect.top()), min(h, image_rect.bottom())
    else:
        il, ir, it, ib = 0.0, w, 0.0, h
    b = mk["left"].boundingRect()
    mk["left"].setPos(max(pad, il + pad), (it + ib - b.height()) / 2)
    b = mk["right"].boundingRect()
    mk["right"].setPos(min(w - b.width() - pad, ir - b.width() - pad), (it + ib - b.height()) / 2)
    # top/bottom markers sit below/above the corner texts so they never overlap in narrow (compare) views
    top_h = max(c["tl"].boundingRect().height(), c["tr"].pos().y() - pad + c["tr"].boundingRect().height())
    bot_h = max(c["bl"].boundingRect().height(), c["br"].boundingRect().height())
    b = mk["top"].boundingRect()
    mk["top"].setPos((il + ir - b.width()) / 2, max(pad + top_h, it + pad))
    b = mk["bottom"].boundingRect()
    mk["bottom"].setPos((il + ir - b.width()) / 2, min(h - b.height() - pad - bot_h, ib - b.height() - pad))
