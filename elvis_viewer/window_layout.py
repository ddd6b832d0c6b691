"""Panel layout and persistence of the main window, a mixin of :class:`elvis_viewer.main_window.MainWindow`:
dock sizes, each tab's own panel layout, the saved geometry/state (QSettings) and the recent-files menu."""

from __future__ import annotations

import os

from PySide6 import QtCore

VIEWER_ONLY_PREFIXES = ("view.", "go.", "overlay.", "tools.")


class WindowLayoutMixin:
    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        if not getattr(self, "_docks_sized", False) and self.isVisible():
            # side panels in proportion to the window (at 1280 px: 240 + 350, the image keeps the rest)
            self._docks_sized = True
            w = self.width()
            self.resizeDocks([self.study_dock, self.report_dock], [max(200, int(0.19 * w)), max(300, int(0.27 * w))],
                             QtCore.Qt.Orientation.Horizontal)

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
            self.recent_menu.addAction(p).triggered.connect(lambda *_, p=p: self.open_paths([p]))
        if not self.recent():
            self.recent_menu.addAction("(none)").setEnabled(False)

    def _restore_state(self):
        for key, restore in (("geometry", self.restoreGeometry), ("state", self.restoreState)):
            if self.settings.value(key) is not None:
                restore(self.settings.value(key))

    def save_state(self):  # saves the Viewer's own panel layout, not the Review tab's (which hides them all)
        self.settings.setValue("geometry", self.saveGeometry())
        layout = self._tab_layouts.get("viewer", {}) if self.tabs.currentWidget() is not self.viewer_page else {}
        for d, vis in layout.items():
            d.setVisible(vis)
        self.settings.setValue("state", self.saveState())
        for d in layout:
            d.hide()
        self.settings.sync()
