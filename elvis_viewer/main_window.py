"""The main window: a skin over :class:`elvis_viewer.session.ViewerSession`.

Widgets render the session and forward user input to it; nothing here computes. Panels: Studies (left), Report
and Overlay (right), the thumbnail strip under the image; every panel is toggled from the View menu, and each tab
keeps its own panel layout (the Review tab gets the whole window; :mod:`elvis_viewer.window_layout`). Menus,
toolbar and shortcuts come from the actions table (:mod:`elvis_viewer.actions`); dialogs and the privacy toggle from
:mod:`elvis_viewer.window_dialogs`. Patient identifiers are never shown except in the tag inspector and
the corner text while the privacy toggle is on (off by default, not saved).
"""

from __future__ import annotations

import os
from typing import Optional

from PySide6 import QtCore, QtGui, QtWidgets

from elvis_viewer.actions import build_actions, pass_window_shortcuts
from elvis_viewer.display_binding import DisplayBinding, map_is_current, phrase_note
from elvis_viewer.image_view import ImageView
from elvis_viewer.overlay_panel import OverlayPanel, OverlaySettings, apply_settings
from elvis_viewer.report_view import ReportView
from elvis_viewer.session import ViewerSession
from elvis_viewer.study_browser import StudyBrowser, ThumbnailStrip
from elvis_viewer.window_dialogs import WindowDialogsMixin
from elvis_viewer.window_layout import VIEWER_ONLY_PREFIXES, WindowLayoutMixin  # noqa: F401 (re-exported)
from elvis_viewer.window_api import SessionShortcuts

#: box colours of the viewer (no yellow: in the Review tab yellow means "unreviewed")
BOX_COLORS = ["#00e676", "#40c4ff", "#ff4081", "#b388ff", "#ff9100"]
EMPTY_HINT = ("<h2>ELVIS Viewer</h2><p>Open a chest X-ray: <b>File → Open file</b> (Ctrl+O) or <b>Open folder</b> "
              "(Ctrl+Shift+O), or drop DICOM / JPG / PNG files, a study folder or a report here.</p>"
              "<p>Then <b>File → Open checkpoint</b> (Ctrl+K) and click a report sentence to see where the model "
              "grounds it. <b>F1</b> lists every shortcut.</p>")


class MainWindow(WindowLayoutMixin, WindowDialogsMixin, SessionShortcuts, QtWidgets.QMainWindow):
    overlayUpdated = QtCore.Signal(int)  # slot whose overlay was just drawn
    imageShown = QtCore.Signal(str)
    scanFinished = QtCore.Signal()

    def __init__(self, settings: Optional[QtCore.QSettings] = None, parent=None,
                 session: Optional[ViewerSession] = None):
        super().__init__(parent)
        self.settings = settings or QtCore.QSettings("ELVIS", "elvis-viewer")
        self.session = session or ViewerSession(self)
        self.setWindowTitle("ELVIS Viewer")
        self.setAcceptDrops(True)
        self.reveal_identifiers = False
        self.tag_dialog = self.shortcut_dialog = None
        self._tab_layouts: dict = {}
        self._build_central()
        self._build_docks()
        self._build_status()
        self.actions_by_id = build_actions(self)
        pass_window_shortcuts(self.phrase_edit, self.actions_by_id.values())  # Ctrl+E etc. while typing
        self._build_toolbar_extras()
        self._connect()
        self._init_geometry()
        self.display_binding = DisplayBinding(self)  # loading / failed states, title, report pairing, the pin
        self._restore_state()
        self._apply_overlay_settings(self.overlay_panel.settings())

    # ============================================================================================ construction
    def _build_central(self):
        self.image_view, self.compare_view = ImageView(), ImageView()
        self.compare_view.setVisible(False)
        self.view_splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.view_splitter.addWidget(self.image_view)
        self.view_splitter.addWidget(self.compare_view)
        self.message_label = self._banner("#3a2a10", "#ffd27f")
        self.provenance_label = self._banner("#4a1c1c", "#ffb4a8")
        self.empty_hint = QtWidgets.QLabel(EMPTY_HINT)
        self.empty_hint.setWordWrap(True)
        self.empty_hint.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setStyleSheet("QLabel { color:#c8ccd2; padding:40px; }")
        self.view_stack = QtWidgets.QStackedWidget()
        self.view_stack.addWidget(self.empty_hint)
        self.view_stack.addWidget(self.view_splitter)
        self.thumb_strip = ThumbnailStrip(self.session)
        viewer = QtWidgets.QWidget()
        lay = QtWidgets.QVBoxLayout(viewer)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        for w in (self.provenance_label, self.message_label):
            lay.addWidget(w)
        lay.addWidget(self.view_stack, 1)
        lay.addWidget(self.thumb_strip)
        self.viewer_page = viewer
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(viewer, "Viewer")
        self.review_view = None
        try:
            from elvis_viewer.review import ReviewView

            self.review_view = ReviewView(lambda: self.session.slots[0].engine, parent=self)
            self.tabs.addTab(self.review_view, "Review")
        except Exception as e:  # the viewer works without it
            self.session.problems.append(("review", f"Review tab unavailable: {e}"))
        self.setCentralWidget(self.tabs)

    @staticmethod
    def _banner(bg: str, fg: str) -> QtWidgets.QLabel:
        lab = QtWidgets.QLabel("")
        lab.setWordWrap(True)
        lab.setStyleSheet(f"QLabel {{ background:{bg}; color:{fg}; padding:6px; }}")
        lab.setVisible(False)
        return lab

    def _dock(self, title: str, name: str, widget, area) -> QtWidgets.QDockWidget:
        d = QtWidgets.QDockWidget(title, self)
        d.setObjectName(name)
        d.setWidget(widget)
        self.addDockWidget(area, d)
        return d

    def _build_docks(self):
        L, R = QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, QtCore.Qt.DockWidgetArea.RightDockWidgetArea
        self.study_browser = StudyBrowser(self.session)
        self.study_dock = self._dock("Studies", "dock_studies", self.study_browser, L)
        self.report_view = ReportView()
        self.report_title = QtWidgets.QLabel("Report")
        self.assertion_label = QtWidgets.QLabel("")
        self.assertion_label.setWordWrap(True)
        self.phrase_edit = QtWidgets.QLineEdit()
        self.phrase_edit.setPlaceholderText("Type a phrase and press Enter to ground it")
        self.annot_combo = QtWidgets.QComboBox()
        self.annot_combo.setToolTip("Annotated phrases of this image (MS-CXR)")
        right = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(right)
        rl.setContentsMargins(4, 4, 4, 4)
        for w in (self.report_title, self.report_view, self.assertion_label, self.phrase_edit, self.annot_combo):
            rl.addWidget(w, 1 if w is self.report_view else 0)
        self.report_dock = self._dock("Report", "dock_report", right, R)
        self.overlay_panel = OverlayPanel(OverlaySettings())
        self.overlay_dock = self._dock("Overlay", "dock_overlay", self.overlay_panel, L)  # under the studies
        self.resizeDocks([self.study_dock, self.report_dock], [270, 400], QtCore.Qt.Orientation.Horizontal)
        self.docks = {"viewer": [self.study_dock, self.report_dock, self.overlay_dock]}

    def _build_status(self):
        sb = self.statusBar()
        self.device_label = QtWidgets.QLabel("device: (no model yet)")
        self.ckpt_label = QtWidgets.QLabel("no checkpoint")
        self.latency_label = QtWidgets.QLabel("")
        self.progress = QtWidgets.QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.session.cancel_scan)
        for w in (self.progress, self.cancel_button, self.ckpt_label, self.latency_label, self.device_label):
            sb.addPermanentWidget(w)

    def _build_toolbar_extras(self):
        self.toolbar.addSeparator()
        self.toolbar.addWidget(QtWidgets.QLabel(" Preset "))
        self.preset_combo = QtWidgets.QComboBox()
        self.preset_combo.setMinimumWidth(130)
        self.preset_combo.setToolTip("The file's DICOM windows / VOI LUT, and chest windows computed from the image")
        self.preset_combo.activated.connect(lambda i: self.apply_preset(self.preset_combo.itemText(i)))
        self.toolbar.addWidget(self.preset_combo)
        panels = self.menus["View"].addMenu("Panels")
        for d in self.docks["viewer"]:
            panels.addAction(d.toggleViewAction())
        strip = panels.addAction("Thumbnail strip")
        strip.setCheckable(True)
        strip.setChecked(True)
        strip.toggled.connect(self.thumb_strip.set_wanted)
        panels.addAction(self.toolbar.toggleViewAction())
        self.presets_menu = self.menus["View"].addMenu("Window presets")
        self.presets_menu.aboutToShow.connect(self._fill_presets_menu)
        self.recent_menu = self.menus["File"].addMenu("Open recent")
        self.menus["File"].insertMenu(self.actions_by_id["file.open_checkpoint"], self.recent_menu)
        self._refresh_recent()

    def _connect(self):
        s = self.session
        s.message.connect(self.show_message)
        s.scanProgress.connect(self._on_scan_progress)
        s.scanFinished.connect(self._on_scan_finished)
        s.imageChanged.connect(self._on_image)
        s.reportChanged.connect(self._on_report)
        s.annotationsChanged.connect(self._on_report)
        s.phraseChanged.connect(self._on_phrase)
        s.mapReady.connect(self._on_map)
        s.modelChanged.connect(self._on_model)
        s.provenanceChanged.connect(self._on_provenance)
        s.compareChanged.connect(self._on_compare)
        self.report_view.phraseSelected.connect(lambda a, b, t: s.ground_phrase(t, (a, b)))
        self.phrase_edit.returnPressed.connect(self._on_typed)
        self._typing = QtCore.QTimer(self, singleShot=True, interval=150)  # a pause in typing: encode ahead
        self._typing.timeout.connect(lambda: s.preencode(self.phrase_edit.text()))
        self.phrase_edit.textEdited.connect(lambda _t: self._typing.start())
        self.annot_combo.activated.connect(self._on_annot_combo)
        self.overlay_panel.settingsChanged.connect(self._apply_overlay_settings)
        self.overlay_panel.tokenChosen.connect(self._on_token_choice)
        self.tabs.currentChanged.connect(self._on_tab)
        self.image_view.windowChanged.connect(self._sync_preset_box)
        if self.review_view is not None:  # the Review tab's messages in the status bar, masked like the rest
            self.review_view.message.connect(lambda t: self.show_message(t, banner=False))
        if self.review_view is not None and hasattr(self.review_view, "engine_ready"):
            # Review asks for the current item's map as soon as the model has loaded (not only on the next key)
            s.modelChanged.connect(lambda k: k == 0 and s.slots[0].engine is not None and self.review_view.engine_ready())

    # ============================================================================================ public API
    def views(self):
        return (self.image_view, self.compare_view)

    def open_paths(self, paths, report_path=None) -> None:
        for p in paths:
            self._add_recent(os.fspath(p))
        self.session.open_paths(paths, report_path=report_path)

    def open_file(self, path) -> None:
        self.open_paths([path])

    def open_folder(self, path) -> None:
        self._add_recent(os.fspath(path))
        self.session.open_folder(path)

    def select_image(self, path: str) -> None:
        self.session.select_image(path)

    def load_checkpoint(self, path, slot: int = 0, model=None, name=None, factory=None) -> None:
        self.session.load_checkpoint(path, slot, model=model, name=name, factory=factory)

    def load_annotations(self, path: str, images_root: Optional[str] = None) -> None:
        self.session.load_annotations(path, images_root)

    def ground_phrase(self, text: str) -> None:
        self.session.ground_phrase(text, self.session._span_in_report(" ".join(str(text).split())))

    def set_compare_mode(self, on: bool) -> None:
        self.actions_by_id["view.compare"].setChecked(bool(on))

    def busy(self) -> bool:
        """Work in flight anywhere in the window (the session's, the Review tab's, thumbnails)."""
        from elvis_viewer import workers

        return self.session.busy() or workers.pending() > 0

    def cancel_scan(self) -> None:
        self.session.cancel_scan()

    def export_png(self, path: str):
        from elvis_viewer.export import export_window

        return export_window(self, path)

    def add_measurement(self, kind: str):
        if self.session.rad is None:
            self.show_message("Open an image first", banner=False)
            return None
        return self.image_view.measure.add(kind)

    def apply_preset(self, name: str) -> None:
        if name and name != "Custom" and self.image_view.rad is not None:
            self.image_view.apply_preset(name)  # the compare view follows through the link (compare mode only)

    def select_annotated_phrase(self, phrase) -> None:
        span = self.report.find(phrase.label_text) if self.report is not None else None
        if span is not None:
            self.report_view.select_span(*span)  # emits -> ground
        else:
            self.phrase_edit.setText(phrase.label_text)
            self.session.ground_phrase(phrase.label_text)

    def show_message(self, text: str, banner: bool = True) -> None:
        """Status bar (and the banner over the image): file names masked, shown again when the toggle flips."""
        self.show_status(text, 15000)  # "" e.g. when a read ended without warnings: "Reading FILE …" goes
        if banner:
            self._banner_raw = text or ""
            self.message_label.setText(self.mask_text(text))
            self.message_label.setVisible(bool(text))

    # ============================================================================================ session -> widgets
    def _on_scan_progress(self, done: int, total: int, text: str) -> None:
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.progress.setRange(0, max(total, 0))
        self.progress.setValue(done)
        if text:
            self.show_status(text)  # "Scanning FOLDER …": a PACS cache folder is a UID

    def _on_scan_finished(self) -> None:
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self.scanFinished.emit()

    def _on_image(self, path: str) -> None:
        rad = self.session.rad
        self.message_label.setVisible(False)
        self.view_stack.setCurrentWidget(self.view_splitter)
        self.image_view.set_radiograph(rad)
        if self.session.compare:  # the hidden compare view gets the image when compare mode turns on
            self.compare_view.set_radiograph(rad)
        self.preset_combo.clear()
        self.preset_combo.addItems([w.name for w in self.image_view.presets()])
        self._sync_preset_box(*self.image_view.window())
        self._update_identity()
        self._update_titles()  # the file name, a UID masked while identifiers are hidden
        self.imageShown.emit(path)

    def _sync_preset_box(self, center: float, width: float) -> None:
        """The preset box names the preset the window matches, else "Custom" (after a W/L drag)."""
        box = self.preset_combo
        voi = getattr(self.image_view, "_use_voi_lut", False)
        match = "DICOM VOI LUT" if voi else next((w.name for w in self.image_view.presets()
                      if w.name != "DICOM VOI LUT" and abs(w.center - center) <= 1e-6 * max(1.0, abs(w.center))
                      and abs(w.width - width) <= 1e-6 * max(1.0, abs(w.width))), None)
        k = box.findText(match or "Custom")
        if k < 0:
            box.addItem("Custom")
            k = box.count() - 1
        box.setCurrentIndex(k)

    def _on_report(self) -> None:
        s = self.session
        rep = s.report
        self._update_titles()
        phrases = s.annotated_phrases()
        self.report_view.set_report(rep, [p.label_text for p in phrases])
        self.annot_combo.clear()
        self.annot_combo.addItem(f"{len(phrases)} annotated phrase(s)" if phrases else "no annotations for image")
        for p in phrases:
            self.annot_combo.addItem(f"{p.label_text}  [{p.category}]")

    def _on_phrase(self, text: str) -> None:
        s = self.session
        if s.phrase.span is None:
            self.report_view.clear_current()
        note = phrase_note(s)  # a carried (pinned) phrase says so, and how THIS report asserts it
        self.assertion_label.setText(f"<span style='color:#ff8a80'>⚠ {note}: the map shows where these words "
                                     "point, not that the finding is present</span>" if note else "")
        for iv in self.views():
            iv.set_note(note)
            iv.set_overlay(None)  # the previous phrase's map is not this phrase's (its own arrives next)
        if self.display_binding.pin.isChecked() != s.phrase_pinned:
            self.display_binding.pin.setChecked(s.phrase_pinned)
        boxes, box_note = s.boxes_for_phrase()
        drawn = [(b, label, QtGui.QColor(BOX_COLORS[i % len(BOX_COLORS)])) for i, (b, label) in enumerate(boxes)]
        for iv in self.views():
            iv.set_boxes(drawn)
        self.current_boxes = drawn
        if box_note:
            self.show_status(box_note, 10000)
        if text and s.rad is not None and s.active_slots():
            self.latency_label.setText("grounding…")
        else:  # no phrase, or no film to ground it on: no "grounding…" left standing, no previous phrase's latency
            self.latency_label.setText("")

    def _on_map(self, slot: int) -> None:
        s = self.session
        gmap = s.slots[slot].gmap
        if not map_is_current(s, slot):  # never another item's, phrase's or checkpoint's map
            return
        view = self.image_view if slot == 0 else self.compare_view
        view.set_overlay(gmap)
        self._apply_levels()
        if slot == 0:
            self.overlay_panel.set_tokens(gmap.tokens)
        self.latency_label.setText(f"phrase: {gmap.latency_s * 1000:.1f} ms (wall {s.last_wall_s * 1000:.0f} ms)")
        self.overlayUpdated.emit(slot)

    def _apply_levels(self) -> None:
        st = self.overlay_panel.settings()
        shared = self.session.shared_levels() if (self.session.compare and st.shared_scale) else None
        for iv in self.views():
            iv.set_shared_levels(shared)

    def _apply_overlay_settings(self, st: OverlaySettings) -> None:
        for iv in self.views():
            apply_settings(iv, st)
        self._apply_levels()
        for aid, val in (("overlay.show", st.visible), ("overlay.isolines", st.isolines),
                         ("overlay.shared", st.shared_scale)):
            a = getattr(self, "actions_by_id", {}).get(aid)
            if a is not None and a.isChecked() != val:
                a.setChecked(val)
        if st.tokens != self.session.token_mode:
            self.session.set_token_mode(st.tokens)

    def _on_token_choice(self, i: int) -> None:
        from elvis_viewer.view_items import token_map

        for k, view in ((0, self.image_view), (1, self.compare_view)):
            g = self.session.slots[k].gmap
            if g is None:
                continue
            if i <= 0 or g.token_maps is None or i - 1 >= len(g.token_maps):
                view.set_overlay(g)
            else:
                view.set_overlay(token_map(g, i - 1))
        self._apply_levels()

    def _on_model(self, slot: int) -> None:
        parts = []
        for k, sl in enumerate(self.session.slots):
            if k == 1 and not (sl.engine or sl.loading or sl.error):
                continue
            state = " (loading…)" if sl.loading else (" (failed)" if sl.error else "")
            h = f" [{sl.hash[:8]}]" if sl.engine is not None and sl.hash else ""
            parts.append((sl.name or "no checkpoint") + h + state)
            if sl.engine is not None:
                self.device_label.setText("device: " + sl.engine.device_name)
        self.ckpt_label.setText("checkpoint: " + "  |  ".join(parts))
        self._update_captions()

    def _update_captions(self) -> None:
        on = self.session.compare
        self.image_view.set_caption(self.session.slots[0].name if on else "")
        self.compare_view.set_caption(self.session.slots[1].name if on else "")

    def _on_provenance(self, text: str) -> None:
        self.provenance_label.setText("⚠ " + text if text else "")
        self.provenance_label.setVisible(bool(text))

    def _on_compare(self, on: bool) -> None:
        if self.actions_by_id["view.compare"].isChecked() != on:
            self.actions_by_id["view.compare"].setChecked(on)
        self.compare_view.setVisible(on)
        if on:
            self.image_view.link_to(self.compare_view)
            self.compare_view.set_radiograph(self.session.rad)
            if self.session.rad is not None:
                self.compare_view.set_window(*self.image_view.window())
                self.compare_view.view_box.setRange(self.image_view.view_box.viewRect(), padding=0)
        else:
            self.image_view.unlink(self.compare_view)
        self._update_captions()
        self._on_model(1)
        self._apply_levels()

    # ============================================================================================ widgets -> session
    def _on_typed(self) -> None:
        text = self.phrase_edit.text()
        self.report_view.clear_current()
        self.session.ground_phrase(text, None)

    def _on_annot_combo(self, index: int) -> None:
        phrases = self.session.annotated_phrases()
        if 0 < index <= len(phrases):
            self.select_annotated_phrase(phrases[index - 1])

    def _fill_presets_menu(self) -> None:
        self.presets_menu.clear()
        for w in self.image_view.presets():
            self.presets_menu.addAction(w.name).triggered.connect(lambda *_, n=w.name: self.apply_preset(n))

    def closeEvent(self, ev):
        self.save_state()
        self.session.cancel_scan()
        super().closeEvent(ev)

    def dragEnterEvent(self, ev):
        if ev.mimeData().hasUrls():
            ev.acceptProposedAction()

    def dropEvent(self, ev):
        paths = [u.toLocalFile() for u in ev.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.open_paths(paths)
            ev.acceptProposedAction()
