"""`OverlaySettings` (one dataclass for every overlay control) and `OverlayPanel`, the widget that edits it.

The panel emits ``settingsChanged(OverlaySettings)`` for any control; the main window applies the whole settings
object to every view (:func:`apply_settings`), so there is one handler instead of one per control.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from PySide6 import QtCore, QtWidgets

from elvis_viewer.view_items import OVERLAY_COLORMAPS


@dataclass(frozen=True)
class OverlaySettings:
    visible: bool = True
    opacity: float = 0.5
    colormap: str = next(iter(OVERLAY_COLORMAPS))
    #: "auto" (the default: ±max |similarity|, symmetric about 0, for a confident map; the fixed [-1, 1] for a map
    #: below its presence threshold or from an uncalibrated model), "fixed" ([-1, 1] always) or "stretch" (±max
    #: always, to explore a weak model)
    range: str = "auto"
    #: compare mode: both views on one scale (±max over both maps) instead of one each
    shared_scale: bool = True
    fade: bool = True
    isolines: bool = False
    smooth: bool = True
    tokens: bool = False

    def with_(self, **kw) -> "OverlaySettings":
        return replace(self, **kw)


_RANGES = ("auto", "fixed", "stretch")


def apply_settings(view, s: OverlaySettings) -> None:
    """Push every setting to one ImageView (cheap when nothing changed)."""
    view.set_overlay_smooth(s.smooth)
    view.set_overlay_opacity(s.opacity)
    view.set_overlay_colormap(s.colormap)
    view.set_overlay_range(s.range)
    view.set_isolines(s.isolines)
    view.set_overlay_fade(s.fade)
    view.set_overlay_visible(s.visible)


class OverlayPanel(QtWidgets.QWidget):
    settingsChanged = QtCore.Signal(object)
    tokenChosen = QtCore.Signal(int)  # 0 = whole phrase, k = token k-1

    def __init__(self, settings: Optional[OverlaySettings] = None, parent=None):
        super().__init__(parent)
        self._s = settings or OverlaySettings()
        self._updating = False
        f = QtWidgets.QFormLayout(self)
        f.setContentsMargins(4, 4, 4, 4)
        self.opacity = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.cmap = QtWidgets.QComboBox()
        self.cmap.addItems(list(OVERLAY_COLORMAPS))
        self.range = QtWidgets.QComboBox()
        self.range.addItems(["auto (±max if confident)", "fixed [-1, 1]", "stretch (±max always)"])
        self.range.setToolTip("auto: a confident map is stretched to ±max (white stays similarity 0); a map below "
                              "its presence threshold, or from an uncalibrated model, stays on the fixed [-1, 1] "
                              "scale; fixed: always the full cosine range; stretch: always ±max")
        self.shared = QtWidgets.QCheckBox("One scale for both (compare)")
        self.shared.setToolTip("Compare mode: both maps on ±max over both, so a weak model looks weak")
        self.show = QtWidgets.QCheckBox("Show (H)")
        self.iso = QtWidgets.QCheckBox("Isolines")
        self.iso.setToolTip("At 50/75/90 % of the largest positive similarity")
        self.fade = QtWidgets.QCheckBox("Fade near 0")
        self.smooth = QtWidgets.QCheckBox("Smooth")
        self.tokens = QtWidgets.QCheckBox("Per-token maps")
        self.token_combo = QtWidgets.QComboBox()
        self.token_combo.setEnabled(False)
        f.addRow("Opacity", self.opacity)
        f.addRow("Colours", self.cmap)
        f.addRow("Range", self.range)
        f.addRow(self.shared)
        grid = QtWidgets.QGridLayout()
        for i, w in enumerate((self.show, self.fade, self.iso, self.smooth, self.tokens)):
            grid.addWidget(w, i // 2, i % 2)
        f.addRow(grid)
        f.addRow("Token", self.token_combo)
        self.set_settings(self._s)
        for sig in (self.opacity.valueChanged, self.cmap.currentIndexChanged, self.range.currentIndexChanged,
                    self.shared.toggled, self.show.toggled, self.iso.toggled, self.fade.toggled,
                    self.smooth.toggled, self.tokens.toggled):
            sig.connect(self._changed)
        self.token_combo.currentIndexChanged.connect(lambda i: self._updating or self.tokenChosen.emit(max(i, 0)))

    def settings(self) -> OverlaySettings:
        return self._s

    def set_settings(self, s: OverlaySettings) -> None:
        self._updating = True
        try:
            self.opacity.setValue(int(round(s.opacity * 100)))
            self.cmap.setCurrentText(s.colormap)
            self.range.setCurrentIndex(_RANGES.index(s.range) if s.range in _RANGES else 0)
            self.shared.setChecked(s.shared_scale)
            self.show.setChecked(s.visible)
            self.iso.setChecked(s.isolines)
            self.fade.setChecked(s.fade)
            self.smooth.setChecked(s.smooth)
            self.tokens.setChecked(s.tokens)
        finally:
            self._updating = False
        changed = s != self._s
        self._s = s
        if changed:
            self.settingsChanged.emit(s)

    def change(self, **kw) -> None:
        self.set_settings(self._s.with_(**kw))

    def set_tokens(self, tokens) -> None:
        self._updating = True
        self.token_combo.clear()
        self.token_combo.addItem("whole phrase")
        self.token_combo.addItems(list(tokens or []))
        self.token_combo.setEnabled(bool(tokens))
        self._updating = False

    def _changed(self, *_):
        if self._updating:
            return
        s = OverlaySettings(visible=self.show.isChecked(), opacity=self.opacity.value() / 100.0,
                            colormap=self.cmap.currentText(), range=_RANGES[max(0, self.range.currentIndex())],
                            shared_scale=self.shared.isChecked(), fade=self.fade.isChecked(),
                            isolines=self.iso.isChecked(), smooth=self.smooth.isChecked(),
                            tokens=self.tokens.isChecked())
        if s != self._s:
            self._s = s
            self.settingsChanged.emit(s)
