"""Panel layout and persistence of the main window, a mixin of :class:`elvis_viewer.main_window.MainWindow`:
dock sizes, each tab's own panel layout, the saved geometry/state (QSettings) and the recent-files menu.

Geometry rules: the first window (1500×950 where that fits) and every restored geometry or panel layout fit the
screen's available area, so at 1280×720 every panel and the status bar are on screen; side panels never take more
than :data:`MAX_DOCK_SHARE` of the width after a restore; each side panel remembers the size the user gave it, and
when the window grows again (after being shrunk to its minimum, then maximised) the panels get that size back.
"""

from __future__ import annotations

import os
import time

from PySide6 import QtCore, QtGui

DEFAULT_SIZE = (1500, 950)
#: window-manager decorations assumed before the window is shown (title bar, borders), replaced by the real frame
FRAME_GUESS = (8, 40)
#: side panels (left + right) never take more of the window's width than this after a restore
MAX_DOCK_SHARE = 0.5


def fitted_size(want: QtCore.QSize, avail: QtCore.QRect, frame: tuple, minimum: QtCore.QSize) -> QtCore.QSize:
    """``want`` shrunk so that the window plus its frame fits ``avail`` (never below ``minimum``)."""
    w = min(want.width(), avail.width() - frame[0])
    h = min(want.height(), avail.height() - frame[1])
    return QtCore.QSize(max(w, minimum.width()), max(h, minimum.height()))

VIEWER_ONLY_PREFIXES = ("view.", "go.", "overlay.", "tools.")


class WindowLayoutMixin:
    def _init_geometry(self) -> None:
        """Called by the window's constructor once the panels exist, before the saved state is restored."""
        self._dock_wanted: dict = {}  # dock -> (width, height) the user (or the first layout) gave it
        self._last_size = None
        self._settle_until = 0.0
        self._fit_size = None  # the size chosen by :meth:`fit_to_screen` (a caller's resize() overrides it)
        for d in self.docks["viewer"]:
            d.installEventFilter(self)
        self.resize(*DEFAULT_SIZE)
        self.fit_to_screen()

    def available_geometry(self) -> QtCore.QRect:
        scr = (self.screen() if self.isVisible() else None) \
            or QtGui.QGuiApplication.screenAt(self.frameGeometry().center()) or QtGui.QGuiApplication.primaryScreen()
        return scr.availableGeometry()

    def _frame_extra(self) -> tuple:
        fg, g = self.frameGeometry(), self.geometry()
        extra = (fg.width() - g.width(), fg.height() - g.height())
        return extra if self.isVisible() and (extra[0] > 0 or extra[1] > 0) else FRAME_GUESS

    def fit_to_screen(self) -> bool:
        """Shrink and move the window so that it (with its frame) lies inside the screen's available area; True
        when it already fitted. A maximised or full-screen window is left to the window manager."""
        if self.windowState() & (QtCore.Qt.WindowState.WindowMaximized | QtCore.Qt.WindowState.WindowFullScreen):
            return True
        avail, frame = self.available_geometry(), self._frame_extra()
        size = fitted_size(self.size(), avail, frame, self.minimumSizeHint())
        fitted = size == self.size()
        if not fitted:
            self.resize(size)
        fg = self.frameGeometry()
        x = min(max(fg.x(), avail.x()), max(avail.x(), avail.right() + 1 - size.width() - frame[0]))
        y = min(max(fg.y(), avail.y()), max(avail.y(), avail.bottom() + 1 - size.height() - frame[1]))
        if (x, y) != (fg.x(), fg.y()):
            self.move(x, y)
        self._fit_size = QtCore.QSize(self.size())
        return fitted

    def showEvent(self, ev) -> None:
        super().showEvent(ev)
        if not getattr(self, "_shown_once", False):
            self._shown_once = True
            QtCore.QTimer.singleShot(0, self._first_layout)
            if self._fit_size is not None and self.size() == self._fit_size:  # not a size the caller chose
                QtCore.QTimer.singleShot(400, self.fit_to_screen)  # the window manager's frame is known by then

    def _first_layout(self) -> None:
        if self._fit_size is not None and self.size() == self._fit_size:
            self.fit_to_screen()  # again, with the real frame
        self.balance_docks(force=not self.settings.value("state"))
        self._remember_docks()
        self._last_size = QtCore.QSize(self.size())

    def _remember_docks(self) -> None:
        for d in self.docks["viewer"]:
            if d.isVisible():
                self._dock_wanted[d] = (d.width(), d.height())

    def _side_docks(self):
        return [d for d in self.docks["viewer"] if d.isVisible() and not d.isFloating()]

    def balance_docks(self, force: bool = False) -> None:
        """Side panels in proportion to the window (at 1280 px: 240 + 350, the image keeps the rest), when asked
        or when they take more than :data:`MAX_DOCK_SHARE` of the width (a layout saved on a larger screen)."""
        w = self.width()
        left = max((d.width() for d in (self.study_dock, self.overlay_dock) if d in self._side_docks()), default=0)
        right = self.report_dock.width() if self.report_dock in self._side_docks() else 0
        if force or left + right > MAX_DOCK_SHARE * w:
            sizes = [max(200, int(0.19 * w)), max(300, int(0.27 * w))]
            self.resizeDocks([self.study_dock, self.report_dock], sizes, QtCore.Qt.Orientation.Horizontal)
            self.layout().activate()
            self._remember_docks()

    def eventFilter(self, obj, ev) -> bool:
        # a side panel resized while the window keeps its size: the user dragged a separator -> remember the size
        if ev.type() == QtCore.QEvent.Type.Resize and obj in self._dock_wanted and self._last_size == self.size() \
                and obj.isVisible() and time.monotonic() > self._settle_until:
            self._dock_wanted[obj] = (obj.width(), obj.height())
        return super().eventFilter(obj, ev)

    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        self._settle_until = time.monotonic() + 0.5  # panels follow the window for a moment: not the user's sizes
        if self.isVisible() and self._last_size is not None:
            if self.width() > self._last_size.width() or self.height() > self._last_size.height():
                self._restore_dock_sizes()
            self._last_size = QtCore.QSize(self.size())

    def _restore_dock_sizes(self) -> None:
        """The window grew: side panels squeezed below the size they had get it back (within the window)."""
        docks = [d for d in self._side_docks() if d in self._dock_wanted]
        for orient, k in ((QtCore.Qt.Orientation.Horizontal, 0), (QtCore.Qt.Orientation.Vertical, 1)):
            have = [d.width() if k == 0 else d.height() for d in docks]
            if any(h < self._dock_wanted[d][k] - 2 for d, h in zip(docks, have)):
                wanted = dict(self._dock_wanted)
                self.resizeDocks(docks, [wanted[d][k] for d in docks], orient)
                self._dock_wanted = wanted  # not the sizes the squeeze gave
        self._settle_until = time.monotonic() + 0.5

    def _on_tab(self, index: int) -> None:
        """Each tab keeps its own panel layout: the Review tab gets the whole window (no side panels, no toolbar)."""
        name = "viewer" if self.tabs.widget(index) is self.viewer_page else "review"
        if name == "review":
            self._tab_layouts["viewer"] = {d: d.isVisible() for d in self.docks["viewer"] + [self.toolbar]}
            for d in self.docks["viewer"] + [self.toolbar]:
                d.hide()
        else:
            default = {d: True for d in self.docks["viewer"] + [self.toolbar]}
            for d, vis in self._tab_layouts.get("viewer", default).items():
                d.setVisible(vis)
            self.balance_docks()
        for aid, qa in self.actions_by_id.items():
            qa.setEnabled(name == "viewer" or not aid.startswith(VIEWER_ONLY_PREFIXES))


    def _add_recent(self, path: str) -> None:
        rec = [p for p in self.recent() if p != os.path.abspath(path)]
        rec.insert(0, os.path.abspath(path))
        self.settings.setValue("recent", rec[:10])
        self._refresh_recent()

    def recent(self):
        rec = self.settings.value("recent", []) or []
        return [rec] if isinstance(rec, str) else list(rec)

    def _refresh_recent(self):
        if not hasattr(self, "recent_menu"):
            return
        self.recent_menu.clear()
        for p in self.recent():
            self.recent_menu.addAction(self.mask_text(p)).triggered.connect(lambda *_, p=p: self.open_paths([p]))
        if not self.recent():
            self.recent_menu.addAction("(none)").setEnabled(False)

    def _restore_state(self):
        for key, restore in (("geometry", self.restoreGeometry), ("state", self.restoreState)):
            if self.settings.value(key) is not None:
                restore(self.settings.value(key))
        if self.settings.value("geometry") is not None:
            self.fit_to_screen()  # saved on a larger screen (or with another resolution): it still fits

    def save_state(self):  # saves the Viewer's own panel layout, not the Review tab's (which hides them all)
        self.settings.setValue("geometry", self.saveGeometry())
        layout = self._tab_layouts.get("viewer", {}) if self.tabs.currentWidget() is not self.viewer_page else {}
        for d, vis in layout.items():
            d.setVisible(vis)
        self.settings.setValue("state", self.saveState())
        for d in layout:
            d.hide()
        self.settings.sync()
