"""The grounding-map overlay of :class:`~elvis_viewer.image_view.ImageView`, as a mixin of that widget.

The map is drawn as a SMALL ``ImageItem`` (``overlay_item``, clipped to the image by ``overlay_clip``) placed on the
image with the ``QTransform`` of ``GroundingMap.grid_to_image``: by default ``GroundingMap.display_grid(8)``
(bilinear), or the raw cells with ``set_overlay_smooth(False)``. Here: showing and removing a map
(:meth:`~ImageOverlayMixin.set_overlay`), the part an imported model's centre crop never saw, the colour range
("fixed" / "auto" / "stretch", or levels shared by the compare view), colormap and fade, opacity (fainter for a map
that is not confident), visibility and isolines.

The mixin holds no state of its own: ``ImageView.__init__`` creates the items and attributes it uses
(``overlay_item``, ``colorbar``, ``gmap``, ``_opacity``, ``_isolines``, ...).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pyqtgraph as pg
from PySide6 import QtGui

from elvis_viewer.view_items import (OVERLAY_COLORMAPS, OVERLAY_SMOOTH_FACTOR, _overlay_colormap,
                                     affine_to_qtransform, needs_fixed_scale, opacity_factor, unseen_items)


class ImageOverlayMixin:
    """The overlay methods of :class:`~elvis_viewer.image_view.ImageView` (public API listed in that module)."""

    def set_overlay(self, gmap) -> None:
        """Show a `GroundingMap` (or remove it with None): its small grid, placed by ``gmap.grid_to_image``."""
        self.gmap = gmap
        for iso in self._isolines:
            iso.setParentItem(None)
            if iso.scene() is not None:
                iso.scene().removeItem(iso)
        self._isolines = []
        self._set_unseen(gmap)
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
        self.set_overlay_opacity(self._opacity)  # faint when the map is not confident
        self.overlay_item.setVisible(self._overlay_visible)
        self.colorbar.setVisible(self._overlay_visible)
        self._update_texts()

    def _set_unseen(self, gmap) -> None:
        """Hatch the border the model did not see (an imported model's centre crop; never for our own transforms),
        frame the seen part with a dashed line and label it (:func:`elvis_viewer.view_items.unseen_items`)."""
        for it in self._unseen_items:
            self.view_box.removeItem(it)
        self._unseen_items = []
        if gmap is None or self.rad is None or getattr(gmap, "fully_seen", True):
            return
        for it in unseen_items(gmap, self.rad.shape):
            it.setVisible(self._overlay_visible)
            self.view_box.addItem(it)
            self._unseen_items.append(it)

    def unseen_label(self) -> str:
        """The text shown on the unseen border ('' when the model saw the whole image)."""
        return next((it.textItem.toPlainText() for it in self._unseen_items if isinstance(it, pg.TextItem)), "")

    def set_shared_levels(self, levels: Optional[Tuple[float, float]]) -> None:
        """Levels imposed from outside (compare mode on one shared scale); None = this view's own range."""
        self._shared_levels = None if levels is None else (float(levels[0]), float(levels[1]))
        if self.gmap is not None:
            self._apply_overlay_levels()

    def overlay_levels(self) -> Tuple[float, float]:
        """[-1, 1] for "fixed", and for "auto" when the map is not confident or uncalibrated; else ±max ("stretch"
        always)."""
        if self.gmap is None or self._overlay_range == "fixed" or (
                self._overlay_range == "auto" and needs_fixed_scale(self.gmap)):
            return -1.0, 1.0
        if self._shared_levels is not None:
            return self._shared_levels
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
            # alpha grows with the similarity above the middle of the range (0: every range is symmetric about 0);
            # where the map is <= 0 the film is left untouched (no veil), strong positive cells cover it
            a = np.linspace(-1.0, 1.0, 256)
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
        if mode not in ("fixed", "auto", "stretch"):
            raise ValueError(f"overlay range must be 'fixed', 'auto' or 'stretch', got {mode!r}")
        self._overlay_range = mode
        if self.gmap is not None:
            self._apply_overlay_levels()

    def set_overlay_colormap(self, name: str) -> None:
        if name not in OVERLAY_COLORMAPS and name not in pg.colormap.listMaps():
            raise KeyError(name)
        self._overlay_cmap = name
        self._apply_overlay_cmap()

    def set_overlay_opacity(self, opacity: float) -> None:
        self._opacity = float(np.clip(opacity, 0.0, 1.0))
        self.overlay_item.setOpacity(self._opacity * opacity_factor(self.gmap))

    def overlay_opacity(self) -> float:
        return self._opacity

    def set_overlay_visible(self, on: bool) -> None:
        self._overlay_visible = bool(on)
        has = self.gmap is not None
        self.overlay_item.setVisible(has and self._overlay_visible)
        self.colorbar.setVisible(has and self._overlay_visible)
        for it in self._unseen_items:
            it.setVisible(self._overlay_visible)

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
        hi = float(np.nanmax(sim))
        if not hi > 0:
            return  # isolines trace positive similarity only: a map without any has none
        for frac in (0.5, 0.75, 0.9):
            level = frac * hi
            # IsocurveItem works in data-index space where index (i, j) is a cell's corner; shift half a cell so the
            # curves pass through cell centres, then the parent (overlay ImageItem) applies grid_to_image.
            iso = pg.IsocurveItem(data=sim, level=level, pen=pg.mkPen("#ffffff", width=1.5), axisOrder="row-major")
            iso.setParentItem(self.overlay_item)
            iso.setTransform(QtGui.QTransform.fromTranslate(0.5, 0.5))
            self._isolines.append(iso)
