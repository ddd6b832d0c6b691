"""The main window: study browser, image view(s), report pane, overlay controls, status bar, menus.

All slow work goes through :mod:`elvis_viewer.workers` (scan, read, thumbnails, model load, image embedding,
grounding); the GUI thread only wires results into widgets. Patient identifiers are never shown except in the DICOM tag
inspector when the user turns the privacy toggle on (off by default, not persisted).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from elvis_core.errors import ElvisError
from elvis_viewer import workers
from elvis_viewer.image_view import OVERLAY_COLORMAPS, ImageView
from elvis_viewer.report_view import ReportView

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
BOX_COLORS = ["#00e676", "#ffea00", "#ff4081", "#40c4ff", "#ff9100"]

SHORTCUTS = [
    ("Ctrl+O", "Open file"), ("Ctrl+Shift+O", "Open folder"), ("Ctrl+K", "Open checkpoint"),
    ("Ctrl+E", "Export current view as PNG"), ("Ctrl+T", "DICOM tag inspector"), ("Ctrl+M", "Compare mode"),
    ("H", "Show / hide the grounding overlay"), ("F", "Fit image to window"), ("1", "1:1 (one image pixel per screen pixel)"),
    ("+ / -", "Zoom in / out"), ("I", "Invert"), ("W", "W/L mode: left drag changes window/level"),
    ("Right drag", "Window (horizontal) / level (vertical)"), ("Left drag / wheel", "Pan / zoom"),
    ("R", "Ruler"), ("Up / Down (report)", "Previous / next sentence"), ("Ctrl+Q", "Quit"),
]


def _err_text(exc: BaseException) -> str:
    if isinstance(exc, ElvisError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Slot:
    """One checkpoint (slot 0 = main, slot 1 = compare)."""

    engine: Any = None
    name: str = ""
    path: Optional[str] = None
    loading: bool = False
    error: str = ""
    gmap: Any = None
    hash: str = ""


@dataclass
class ImageEntry:
    path: str
    label: str
    study_key: str
    report_path: Optional[str] = None


class MainWindow(QtWidgets.QMainWindow):
    overlayUpdated = QtCore.Signal(int)  # slot whose overlay was just drawn
    imageShown = QtCore.Signal(str)
    scanFinished = QtCore.Signal()

    def __init__(self, settings: Optional[QtCore.QSettings] = None, parent=None):
        super().__init__(parent)
        self.settings = settings or QtCore.QSettings("ELVIS", "elvis-viewer")
        self.setWindowTitle("ELVIS Viewer")
        self.setAcceptDrops(True)
        self.resize(1500, 950)

        self.slots = [Slot(), Slot()]
        self.rad = None
        self.rad_path: Optional[str] = None
        self.report = None
        self.annotations = None
        self.phrase: Optional[str] = None
        self.phrase_span: Optional[Tuple[int, int]] = None
        self.images: Dict[str, ImageEntry] = {}
        self.problems: List[Tuple[str, str]] = []
        self.reveal_identifiers = False
        self.last_latency_s: Optional[float] = None
        self._ground_gen = workers.Generation()
        self._image_gen = workers.Generation()
        self._scan_task: Optional[workers.Task] = None
        self._pending = 0
        self._thumb_task: Optional[workers.Task] = None
        self._thumb_gen = workers.Generation()
        # at least 4 workers even on 2 cores: a long task (thumbnails, a model load) must not queue a grounding
        workers.pool().setMaxThreadCount(max(4, workers.pool().maxThreadCount()))
        self._token_mode = False

        self._build_central()
        self._build_docks()
        self._build_status()
        self._build_menus()
        self._build_toolbar()
        self._restore_state()

    # ============================================================================================= construction
    def _build_central(self):
        self.image_view = ImageView()
        self.compare_view = ImageView()
        self.compare_view.setVisible(False)
        self.view_splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.view_splitter.addWidget(self.image_view)
        self.view_splitter.addWidget(self.compare_view)
        self.message_label = QtWidgets.QLabel("")
        self.message_label.setWordWrap(True)
        self.message_label.setStyleSheet("QLabel { background:#3a2a10; color:#ffd27f; padding:6px; }")
        self.message_label.setVisible(False)
        viewer = QtWidgets.QWidget()
        lay = QtWidgets.QVBoxLayout(viewer)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.message_label)
        lay.addWidget(self.view_splitter, 1)
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(viewer, "Viewer")
        self.review_view = None
        try:
            from elvis_viewer.review import ReviewView  # owned by the review issue

            self.review_view = ReviewView(lambda: self.slots[0].engine, parent=self)
            self.tabs.addTab(self.review_view, "Review")
        except Exception:  # not there yet (or broken): the viewer works without it
            pass
        self.setCentralWidget(self.tabs)

    def _build_docks(self):
        # study browser + problems
        self.study_tree = QtWidgets.QTreeWidget()
        self.study_tree.setHeaderLabels(["Studies"])
        self.study_tree.setHeaderHidden(True)  # the dock is titled "Studies" already
        self.study_tree.setIconSize(QtCore.QSize(48, 48))
        self.study_tree.itemActivated.connect(self._on_tree_item)
        self.study_tree.itemClicked.connect(self._on_tree_item)
        self.problem_list = QtWidgets.QListWidget()
        self.problem_list.setWordWrap(True)
        left = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        left.addWidget(self.study_tree)
        box = QtWidgets.QWidget()
        bl = QtWidgets.QVBoxLayout(box)
        bl.setContentsMargins(0, 0, 0, 0)
        self.problem_title = QtWidgets.QLabel("Problems (0)")
        bl.addWidget(self.problem_title)
        bl.addWidget(self.problem_list)
        left.addWidget(box)
        left.setSizes([600, 150])
        d = QtWidgets.QDockWidget("Studies", self)
        d.setObjectName("dock_studies")
        d.setWidget(left)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, d)
        self.study_dock = d

        # report + phrase + overlay controls
        self.report_view = ReportView()
        self.report_view.phraseSelected.connect(self._on_phrase_selected)
        self.report_title = QtWidgets.QLabel("Report")
        self.phrase_edit = QtWidgets.QLineEdit()
        self.phrase_edit.setPlaceholderText("Type a phrase and press Enter to ground it")
        self.phrase_edit.returnPressed.connect(lambda: self.ground_phrase(self.phrase_edit.text()))
        self.annot_combo = QtWidgets.QComboBox()
        self.annot_combo.setToolTip("Annotated phrases of this image (MS-CXR)")
        self.annot_combo.activated.connect(self._on_annot_combo)

        self.opacity = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(50)
        self.opacity.valueChanged.connect(self._on_opacity)
        self.cmap_combo = QtWidgets.QComboBox()
        self.cmap_combo.addItems(list(OVERLAY_COLORMAPS))
        self.cmap_combo.currentTextChanged.connect(self._on_cmap)
        self.range_combo = QtWidgets.QComboBox()
        self.range_combo.addItems(["fixed [-1, 1]", "auto (±max)"])
        self.range_combo.currentIndexChanged.connect(self._on_range)
        self.iso_check = QtWidgets.QCheckBox("Isolines")
        self.iso_check.toggled.connect(self._on_isolines)
        self.fade_check = QtWidgets.QCheckBox("Fade near 0")
        self.fade_check.setToolTip("Cells near the middle of the range become transparent")
        self.fade_check.toggled.connect(self._on_fade)
        self.smooth_check = QtWidgets.QCheckBox("Smooth")
        self.smooth_check.setToolTip("Bilinear display of the patch grid (off: one square per patch)")
        self.smooth_check.setChecked(True)
        self.smooth_check.toggled.connect(self._on_smooth)
        self.show_check = QtWidgets.QCheckBox("Show overlay (H)")
        self.show_check.setChecked(True)
        self.show_check.toggled.connect(self._on_show_overlay)
        self.token_check = QtWidgets.QCheckBox("Per-token maps")
        self.token_check.toggled.connect(self._on_token_mode)
        self.token_combo = QtWidgets.QComboBox()
        self.token_combo.setEnabled(False)
        self.token_combo.currentIndexChanged.connect(self._on_token_choice)

        form = QtWidgets.QFormLayout()
        form.addRow("Opacity", self.opacity)
        form.addRow("Colormap", self.cmap_combo)
        form.addRow("Range", self.range_combo)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.show_check)
        row.addWidget(self.iso_check)
        row.addWidget(self.smooth_check)
        form.addRow(row)
        row2 = QtWidgets.QHBoxLayout()
        row2.addWidget(self.fade_check)
        row2.addWidget(self.token_check)
        form.addRow(row2)
        form.addRow("Token", self.token_combo)
        controls = QtWidgets.QGroupBox("Overlay")
        controls.setLayout(form)

        right = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(right)
        rl.setContentsMargins(4, 4, 4, 4)
        rl.addWidget(self.report_title)
        rl.addWidget(self.report_view, 1)
        rl.addWidget(self.phrase_edit)
        rl.addWidget(self.annot_combo)
        rl.addWidget(controls)
        d2 = QtWidgets.QDockWidget("Report", self)
        d2.setObjectName("dock_report")
        d2.setWidget(right)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, d2)
        self.report_dock = d2
        self.resizeDocks([d, d2], [300, 420], QtCore.Qt.Orientation.Horizontal)

    def _build_status(self):
        sb = self.statusBar()
        self.device_label = QtWidgets.QLabel(self._device_text())
        self.ckpt_label = QtWidgets.QLabel("no checkpoint")
        self.latency_label = QtWidgets.QLabel("")
        self.progress = QtWidgets.QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel_scan)
        for w in (self.progress, self.cancel_button, self.ckpt_label, self.latency_label, self.device_label):
            sb.addPermanentWidget(w)

    @staticmethod
    def _device_text() -> str:
        try:
            import torch

            if torch.cuda.is_available():
                return "device: " + torch.cuda.get_device_name(0)
        except Exception:
            pass
        return "device: CPU"

    def _build_menus(self):
        mb = self.menuBar()
        m = mb.addMenu("&File")
        self._act(m, "Open file…", "Ctrl+O", self._open_file_dialog)
        self._act(m, "Open folder…", "Ctrl+Shift+O", self._open_folder_dialog)
        self.recent_menu = m.addMenu("Open recent")
        self._refresh_recent()
        m.addSeparator()
        self._act(m, "Open checkpoint…", "Ctrl+K", lambda: self._open_checkpoint_dialog(0))
        self._act(m, "Open compare checkpoint…", None, lambda: self._open_checkpoint_dialog(1))
        self._act(m, "Open annotations (MS-CXR CSV)…", None, self._open_annotations_dialog)
        m.addSeparator()
        self.export_act = self._act(m, "Export view as PNG…", "Ctrl+E", self._export_dialog)
        m.addSeparator()
        self._act(m, "Quit", "Ctrl+Q", self.close)

        v = mb.addMenu("&View")
        self.fit_act = self._act(v, "Fit", "F", self._each_view(lambda iv: iv.fit()))
        self.one_act = self._act(v, "1:1", "1", self._each_view(lambda iv: iv.one_to_one()))
        self._act(v, "Zoom in", "+", self._each_view(lambda iv: iv.zoom(1.25)))
        self._act(v, "Zoom out", "-", self._each_view(lambda iv: iv.zoom(0.8)))
        self.invert_act = self._act(v, "Invert", "I", lambda on: self._each_view(lambda iv: iv.set_inverted(on))(),
                                    checkable=True)
        self.wl_act = self._act(v, "W/L mode (left drag)", "W",
                                lambda on: self._each_view(lambda iv: iv.set_wl_mode(on))(), checkable=True)
        self.ruler_act = self._act(v, "Ruler", "R", lambda on: self.image_view.set_ruler(on), checkable=True)
        self.presets_menu = v.addMenu("Window presets")
        self.presets_menu.aboutToShow.connect(self._fill_presets)
        v.addSeparator()
        self.overlay_act = self._act(v, "Show overlay", "H", self._on_overlay_action, checkable=True)
        self.overlay_act.setChecked(True)
        self.compare_act = self._act(v, "Compare mode", "Ctrl+M", self.set_compare_mode, checkable=True)
        v.addSeparator()
        self.tags_act = self._act(v, "DICOM tags…", "Ctrl+T", self.show_tag_inspector)
        self.privacy_act = self._act(v, "Show patient identifiers", None, self.set_reveal_identifiers,
                                     checkable=True)
        h = mb.addMenu("&Help")
        self._act(h, "Keyboard shortcuts", "F1", self.show_shortcuts)
        self._act(h, "About", None, lambda: QtWidgets.QMessageBox.about(
            self, "ELVIS Viewer", "ELVIS Viewer — chest X-ray studies and phrase grounding (arXiv 2304.05303)."))

    def _build_toolbar(self):
        tb = self.addToolBar("View")
        tb.setObjectName("toolbar_view")
        tb.setMovable(False)
        for a in (self.fit_act, self.one_act, self.invert_act, self.wl_act, self.ruler_act):
            tb.addAction(a)
        tb.addWidget(QtWidgets.QLabel("  Preset "))
        self.preset_combo = QtWidgets.QComboBox()
        self.preset_combo.setMinimumWidth(140)
        self.preset_combo.setToolTip("Window presets: the file's DICOM windows / VOI LUT and chest presets")
        self.preset_combo.activated.connect(
            lambda i: self.preset_combo.itemText(i) and self.image_view.apply_preset(self.preset_combo.itemText(i)))
        tb.addWidget(self.preset_combo)
        tb.addSeparator()
        for a in (self.overlay_act, self.compare_act, self.tags_act, self.export_act):
            tb.addAction(a)

    def _refresh_preset_combo(self):
        self.preset_combo.clear()
        for w in self.image_view.presets():
            self.preset_combo.addItem(w.name)
        self.preset_combo.setCurrentIndex(0)

    def _act(self, menu, text, shortcut, slot, checkable=False) -> QtGui.QAction:
        a = QtGui.QAction(text, self)
        if shortcut:
            a.setShortcut(QtGui.QKeySequence(shortcut))
            a.setShortcutContext(QtCore.Qt.ShortcutContext.WindowShortcut)
        a.setCheckable(checkable)
        if checkable:
            a.toggled.connect(slot)
        else:
            a.triggered.connect(lambda *_: slot())
        menu.addAction(a)
        return a

    def _each_view(self, fn: Callable[[ImageView], None]) -> Callable[[], None]:
        def run():
            for iv in (self.image_view, self.compare_view):
                if iv.rad is not None:
                    fn(iv)
        return run

    def _fill_presets(self):
        self.presets_menu.clear()
        for w in self.image_view.presets():
            a = self.presets_menu.addAction(w.name)
            a.triggered.connect(lambda *_, n=w.name: self.image_view.apply_preset(n))

    # ================================================================================================ messages
    def show_message(self, text: str, banner: bool = True) -> None:
        self.statusBar().showMessage(text, 15000)
        if banner:
            self.message_label.setText(text)
            self.message_label.setVisible(bool(text))

    def add_problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))
        item = QtWidgets.QListWidgetItem(message)
        item.setForeground(QtGui.QColor("#ff8a80"))
        item.setToolTip(message)
        self.problem_list.addItem(item)
        self.problem_title.setText(f"Problems ({len(self.problems)})")

    # ================================================================================================ tasks
    def _run(self, fn, *args, on_result=None, on_error=None, **kw) -> workers.Task:
        self._pending += 1

        def done():
            self._pending -= 1
        return workers.run_task(fn, *args, on_result=on_result, on_error=on_error, on_finished=done, **kw)

    def busy(self) -> bool:
        return self._pending > 0

    # ================================================================================================ opening
    def open_paths(self, paths: Sequence[str]) -> None:
        for p in paths:
            p = os.fspath(p)
            if os.path.isdir(p):
                self.open_folder(p)
            elif os.path.exists(p):
                self.open_file(p)
            else:
                self.add_problem(p, f"{p}: no such file or folder")
                self.show_message(f"{p}: no such file or folder")

    def open_file(self, path: str) -> None:
        path = os.fspath(path)
        self._add_recent(path)
        if path.lower().endswith(".csv"):
            self.load_annotations(path)
            return
        if path.lower().endswith(".txt"):
            self._load_report(path)
            return
        entry = ImageEntry(path=path, label=os.path.basename(path), study_key=path,
                           report_path=self._report_beside(path))
        self.images[path] = entry
        item = QtWidgets.QTreeWidgetItem([os.path.basename(path)])
        item.setData(0, QtCore.Qt.ItemDataRole.UserRole, path)
        self.study_tree.addTopLevelItem(item)
        self.select_image(path)

    @staticmethod
    def _report_beside(path: str) -> Optional[str]:
        """MIMIC-CXR layout: ``.../sYYYY/img.dcm`` has its report at ``.../sYYYY.txt``."""
        d = os.path.dirname(os.path.abspath(path))
        cand = d.rstrip(os.sep) + ".txt"
        return cand if os.path.isfile(cand) else None

    def open_folder(self, root: str) -> None:
        root = os.fspath(root)
        self._add_recent(root)
        self.cancel_scan()
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.cancel_button.setVisible(True)
        self.show_message(f"Scanning {root} …", banner=False)
        self._scan_task = self._run(_scan, root, on_result=self._on_scan_result,
                                    on_error=lambda e: self._on_scan_error(root, e), wants_progress=True)
        self._scan_task.signals.progress.connect(self._on_scan_progress, QtCore.Qt.ConnectionType.QueuedConnection)

    def cancel_scan(self) -> None:
        if self._scan_task is not None and not self._scan_task.done.is_set():
            self._scan_task.cancel()
            self.show_message("Scan cancelled", banner=False)

    def _on_scan_progress(self, done: int, total: int, text: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
        self.statusBar().showMessage(text or f"Scanning… {done}/{total}")

    def _on_scan_error(self, root, exc):
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self.add_problem(root, _err_text(exc))
        self.show_message(_err_text(exc))
        self.scanFinished.emit()

    def _on_scan_result(self, result) -> None:
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        studies, errors, cancelled = result
        for path, msg in errors:
            self.add_problem(path, msg)
        first = None
        for st in studies:
            sitem = QtWidgets.QTreeWidgetItem([st["label"]])
            sitem.setData(0, QtCore.Qt.ItemDataRole.UserRole, None)
            if st.get("report"):
                sitem.setToolTip(0, "report: " + os.path.basename(st["report"]))
                sitem.setText(0, st["label"] + "  (report)")
            self.study_tree.addTopLevelItem(sitem)
            for se in st["series"]:
                seitem = QtWidgets.QTreeWidgetItem([se["label"]])
                sitem.addChild(seitem)
                for im in se["images"]:
                    entry = ImageEntry(path=im["path"], label=im["label"], study_key=st["key"],
                                       report_path=st.get("report"))
                    self.images[im["path"]] = entry
                    iitem = QtWidgets.QTreeWidgetItem([im["label"]])
                    iitem.setData(0, QtCore.Qt.ItemDataRole.UserRole, im["path"])
                    iitem.setToolTip(0, im["path"])
                    seitem.addChild(iitem)
                    if first is None:
                        first = im["path"]
            sitem.setExpanded(True)
            for k in range(sitem.childCount()):
                sitem.child(k).setExpanded(True)
        n = sum(len(se["images"]) for st in studies for se in st["series"])
        msg = f"{len(studies)} studies, {n} images" + (f", {len(errors)} problem files" if errors else "")
        if cancelled:
            msg += " (scan cancelled)"
        self.statusBar().showMessage(msg, 15000)
        self._start_thumbnails()
        if first is not None and self.rad is None:
            self.select_image(first)
        self.scanFinished.emit()

    def _start_thumbnails(self) -> None:
        """Thumbnails in chunks of 16 images (one worker task each, chained) so icons appear progressively and a
        new scan stops the old chain."""
        gen = self._thumb_gen.next()
        paths = [p for p in self.images][:300]
        items = {}
        it = QtWidgets.QTreeWidgetItemIterator(self.study_tree)
        while it.value():
            p = it.value().data(0, QtCore.Qt.ItemDataRole.UserRole)
            if p:
                items[p] = it.value()
            it += 1

        chunks = [paths[i:i + 16] for i in range(0, len(paths), 16)]

        def deliver(result, k):
            if not self._thumb_gen.is_current(gen):
                return
            for path, thumb in result:
                item = items.get(path)
                if item is not None and thumb is not None:
                    h, w = thumb.shape
                    qimg = QtGui.QImage(thumb.data, w, h, w, QtGui.QImage.Format.Format_Grayscale8).copy()
                    item.setIcon(0, QtGui.QIcon(QtGui.QPixmap.fromImage(qimg)))
            start(k + 1)

        def start(k):
            if k < len(chunks) and self._thumb_gen.is_current(gen):
                self._thumb_task = self._run(_thumbnails, chunks[k], on_result=lambda r: deliver(r, k))
        start(0)

    def _on_tree_item(self, item, _col=0):
        path = item.data(0, QtCore.Qt.ItemDataRole.UserRole)
        if path and path != self.rad_path:
            self.select_image(path)

    # ================================================================================================ image
    def select_image(self, path: str) -> None:
        gen = self._image_gen.next()
        self.show_message("", banner=True)
        self.statusBar().showMessage(f"Reading {os.path.basename(path)} …")
        entry = self.images.get(path)
        report_path = entry.report_path if entry else None
        self._run(_read_image_and_report, path, report_path,
                  on_result=lambda r: self._on_image_read(gen, path, r),
                  on_error=lambda e: self._on_image_error(gen, path, e))

    def _on_image_error(self, gen, path, exc):
        if not self._image_gen.is_current(gen):
            return
        msg = _err_text(exc)
        self.add_problem(path, msg)
        self.show_message(msg)

    def _on_image_read(self, gen, path, result):
        if not self._image_gen.is_current(gen):
            return
        rad, report, report_err = result
        self.rad, self.rad_path = rad, path
        self.statusBar().showMessage(f"{os.path.basename(path)}: {rad.cols} x {rad.rows}", 5000)
        for iv in (self.image_view, self.compare_view):
            iv.set_radiograph(rad)
        self._refresh_preset_combo()
        for s in self.slots:
            s.gmap = None
        if rad.warnings:
            self.statusBar().showMessage("; ".join(rad.warnings), 15000)
        if report_err:
            self.add_problem(path, report_err)
        self.report = report
        self.report_title.setText("Report — " + (os.path.basename(report.source_path) if report is not None and
                                                 report.source_path else "none found"))
        phrases = self._annotated_phrases()
        self.report_view.set_report(report, [p.label_text for p in phrases])
        self.annot_combo.clear()
        self.annot_combo.addItem(f"{len(phrases)} annotated phrase(s)" if phrases else "no annotations for image")
        for p in phrases:
            self.annot_combo.addItem(f"{p.label_text}  [{p.category}]")
        self._update_identity()
        self.imageShown.emit(path)
        # embed the image now (in a worker) so the first phrase is fast; re-ground the current phrase if any
        for k, s in enumerate(self.slots):
            if s.engine is not None:
                self._embed(k)
        if self.phrase:
            self.ground_phrase(self.phrase)

    def _annotated_phrases(self):
        if self.annotations is None or self.rad_path is None:
            return []
        try:
            return self.annotations.for_path(self._annotation_key(self.rad_path))
        except Exception:
            return []

    def _annotation_key(self, path: str) -> str:
        """Annotation paths are relative (``files/p10/...``); match on the path relative to the images root."""
        return str(path).replace(os.sep, "/")

    def _load_report(self, path):
        def got(r):
            self.report = r
            self.report_view.set_report(r, [p.label_text for p in self._annotated_phrases()])
            self.report_title.setText("Report — " + os.path.basename(path))
        self._run(_read_report, path, on_result=got, on_error=lambda e: (self.add_problem(path, _err_text(e)),
                                                                            self.show_message(_err_text(e))))

    # ================================================================================================ model
    def load_checkpoint(self, path: Optional[str], slot: int = 0, model=None, name: Optional[str] = None,
                        factory: Optional[Callable[[], Any]] = None) -> None:
        """Load a checkpoint directory into slot 0 (main) or 1 (compare) in a worker; or wrap an in-memory ``model``,
        or the model returned by ``factory()`` (called in the worker)."""
        s = self.slots[slot]
        s.loading, s.error = True, ""
        s.path = path
        s.name = name or (os.path.basename(os.path.normpath(path)) if path else "in-memory model")
        self._update_ckpt_label()
        self.statusBar().showMessage(f"Loading checkpoint {s.name} …")
        self._run(_load_engine, path, model, factory, on_result=lambda e: self._on_engine(slot, e),
                  on_error=lambda e: self._on_engine_error(slot, e))

    def _on_engine(self, slot, engine):
        s = self.slots[slot]
        s.engine, s.loading = engine, False
        s.hash = getattr(engine, "viewer_hash", "")
        self.device_label.setText("device: " + engine.device_name)
        self._update_ckpt_label()
        self.statusBar().showMessage(f"Checkpoint {s.name} ready ({s.hash[:12]})", 8000)
        if self.rad is not None:
            self._embed(slot)
            if self.phrase:
                self.ground_phrase(self.phrase)

    def _on_engine_error(self, slot, exc):
        s = self.slots[slot]
        s.loading, s.error = False, _err_text(exc)
        self._update_ckpt_label()
        self.add_problem(s.path or "checkpoint", s.error)
        self.show_message(s.error)

    def _update_ckpt_label(self):
        parts = []
        for k, s in enumerate(self.slots):
            if k == 1 and not (s.engine or s.loading or s.error):
                continue
            state = " (loading…)" if s.loading else (" (failed)" if s.error else "")
            h = f" [{s.hash[:8]}]" if s.engine is not None and s.hash else ""
            parts.append((s.name or "no checkpoint") + h + state)
        self.ckpt_label.setText("checkpoint: " + "  |  ".join(parts))
        self.image_view.set_caption(self.slots[0].name if self.compare_act.isChecked() else "")
        self.compare_view.set_caption(self.slots[1].name if self.compare_act.isChecked() else "")

    def _embed(self, slot):
        eng, rad = self.slots[slot].engine, self.rad
        if eng is None or rad is None:
            return
        self._run(eng.set_image, rad, on_error=lambda e: self.show_message(_err_text(e)))

    # ================================================================================================ grounding
    def _on_phrase_selected(self, start, end, text):
        self.phrase_span = (start, end)
        self.ground_phrase(text)

    def ground_phrase(self, phrase: str) -> None:
        """Ground ``phrase`` on the current image with every loaded checkpoint (newest request wins)."""
        phrase = " ".join(str(phrase).split())
        if not phrase:
            return
        self.phrase = phrase
        self._draw_boxes()
        if self.rad is None:
            self.show_message("Open an image first", banner=False)
            return
        active = [k for k in (0, 1) if self.slots[k].engine is not None and (k == 0 or self.compare_act.isChecked())]
        if not active:
            if not any(s.loading for s in self.slots):
                self.show_message("No checkpoint loaded: File → Open checkpoint (or --checkpoint DIR) to see maps",
                                  banner=False)
            return
        gen = self._ground_gen.next()
        rad, tokens = self.rad, self._token_mode
        self.latency_label.setText("grounding…")
        for k in active:
            eng = self.slots[k].engine
            t0 = time.perf_counter()
            self._run(_ground, eng, rad, phrase, tokens,
                      on_result=lambda g, k=k, t0=t0: self._on_map(gen, k, g, t0),
                      on_error=lambda e, gen=gen: self._ground_gen.is_current(gen) and self.show_message(_err_text(e)))

    def _on_map(self, gen, slot, gmap, t0):
        if not self._ground_gen.is_current(gen):
            return  # superseded by a newer selection
        s = self.slots[slot]
        s.gmap = gmap
        view = self.image_view if slot == 0 else self.compare_view
        self._show_map(view, gmap)
        self.last_latency_s = float(gmap.latency_s)
        wall = time.perf_counter() - t0
        self.latency_label.setText(f"phrase: {gmap.latency_s * 1000:.1f} ms (wall {wall * 1000:.0f} ms)")
        if gmap.warnings:
            self.statusBar().showMessage("; ".join(gmap.warnings), 10000)
        if slot == 0:
            self.token_combo.blockSignals(True)
            self.token_combo.clear()
            self.token_combo.addItem("whole phrase")
            for t in (gmap.tokens or []):
                self.token_combo.addItem(t)
            self.token_combo.setEnabled(bool(gmap.tokens))
            self.token_combo.blockSignals(False)
        self.overlayUpdated.emit(slot)

    def _show_map(self, view: ImageView, gmap):
        view.set_overlay_smooth(self.smooth_check.isChecked())
        view.set_overlay(gmap)
        view.set_overlay_opacity(self.opacity.value() / 100.0)
        view.set_overlay_colormap(self.cmap_combo.currentText())
        view.set_overlay_range("fixed" if self.range_combo.currentIndex() == 0 else "auto")
        view.set_isolines(self.iso_check.isChecked())
        view.set_overlay_fade(self.fade_check.isChecked())
        view.set_overlay_visible(self.show_check.isChecked())

    def _draw_boxes(self):
        boxes = []
        if self.phrase and self.rad is not None:
            want = " ".join(self.phrase.lower().split())
            from elvis_core.io.annotations import rescale_boxes

            for p in self._annotated_phrases():
                if " ".join(p.label_text.lower().split()) == want:
                    bxs, note = rescale_boxes(p, self.rad.shape)
                    if note:
                        self.statusBar().showMessage(note, 10000)
                    for i, b in enumerate(bxs):
                        boxes.append((b, p.category or p.label_text, QtGui.QColor(BOX_COLORS[i % len(BOX_COLORS)])))
        for iv in (self.image_view, self.compare_view):
            iv.set_boxes(boxes)
        self.current_boxes = boxes

    def _on_annot_combo(self, index):
        phrases = self._annotated_phrases()
        if index <= 0 or index > len(phrases):
            return
        self.select_annotated_phrase(phrases[index - 1])

    def select_annotated_phrase(self, phrase) -> None:
        span = self.report.find(phrase.label_text) if self.report is not None else None
        if span is not None:
            self.report_view.select_span(*span)  # emits -> ground
        else:
            self.phrase_edit.setText(phrase.label_text)
            self.ground_phrase(phrase.label_text)

    # ================================================================================================ controls
    def _views(self):
        return (self.image_view, self.compare_view)

    def _on_opacity(self, v):
        for iv in self._views():
            iv.set_overlay_opacity(v / 100.0)

    def _on_cmap(self, name):
        for iv in self._views():
            iv.set_overlay_colormap(name)

    def _on_range(self, i):
        for iv in self._views():
            iv.set_overlay_range("fixed" if i == 0 else "auto")

    def _on_isolines(self, on):
        for iv in self._views():
            iv.set_isolines(on)

    def _on_smooth(self, on):
        for iv in self._views():
            iv.set_overlay_smooth(on)

    def _on_fade(self, on):
        for iv in self._views():
            iv.set_overlay_fade(on)

    def _on_show_overlay(self, on):
        for iv in self._views():
            iv.set_overlay_visible(on)
        if self.overlay_act.isChecked() != on:
            self.overlay_act.setChecked(on)

    def _on_overlay_action(self, on):
        if self.show_check.isChecked() != on:
            self.show_check.setChecked(on)

    def _on_token_mode(self, on):
        self._token_mode = bool(on)
        if self.phrase:
            self.ground_phrase(self.phrase)

    def _on_token_choice(self, i):
        from dataclasses import replace

        for k, view in ((0, self.image_view), (1, self.compare_view)):
            g = self.slots[k].gmap
            if g is None:
                continue
            if i <= 0 or g.token_maps is None or i - 1 >= len(g.token_maps):
                self._show_map(view, g)
            else:
                tok = replace(g, similarity=np.asarray(g.token_maps[i - 1]),
                              phrase=f"{g.phrase} | token '{g.tokens[i - 1]}'")  # ASCII: the export font is ASCII
                self._show_map(view, tok)

    def set_compare_mode(self, on: bool) -> None:
        on = bool(on)
        if self.compare_act.isChecked() != on:
            self.compare_act.setChecked(on)
            return
        self.compare_view.setVisible(on)
        if on:
            self.image_view.link_to(self.compare_view)
            self.compare_view.set_radiograph(self.rad)
            self.compare_view.set_window(*self.image_view.window())
            self.compare_view.view_box.setRange(self.image_view.view_box.viewRect(), padding=0)
            if self.slots[1].engine is None and not self.slots[1].loading:
                self.show_message("Compare mode: open a second checkpoint (File → Open compare checkpoint, or "
                                  "--compare DIR)", banner=False)
        else:
            self.image_view.unlink(self.compare_view)
        self._update_ckpt_label()
        if on and self.phrase:
            self.ground_phrase(self.phrase)

    def set_reveal_identifiers(self, on: bool) -> None:
        """The privacy toggle (off by default, never saved): identifiers in the tag inspector and the corner text."""
        self.reveal_identifiers = bool(on)
        if self.privacy_act.isChecked() != self.reveal_identifiers:
            self.privacy_act.setChecked(self.reveal_identifiers)
        self._update_identity()

    IDENTITY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate")

    def _update_identity(self) -> None:
        text = ""
        if self.reveal_identifiers and self.rad_path:
            try:
                from elvis_core.io.privacy import dicom_tag_rows

                vals = {kw: v for _tag, kw, _vr, v in dicom_tag_rows(self.rad_path, reveal_identifiers=True)
                        if kw in self.IDENTITY_KEYWORDS and v}
                text = "  ".join(vals[k] for k in self.IDENTITY_KEYWORDS if k in vals)
            except ElvisError:
                text = ""  # not DICOM (JPG/PNG): nothing to show
        for iv in self._views():
            iv.set_identity_text(text)

    # ================================================================================================ dialogs
    def show_tag_inspector(self) -> Optional[QtWidgets.QDialog]:
        if not self.rad_path:
            self.show_message("Open a DICOM image first", banner=False)
            return None
        from elvis_core.io.privacy import dicom_tag_rows

        try:
            rows = dicom_tag_rows(self.rad_path, reveal_identifiers=self.reveal_identifiers)
        except ElvisError as e:
            self.show_message(str(e))
            return None
        dlg = QtWidgets.QDialog(self)
        dlg.setWindowTitle("DICOM tags — " + ("identifiers SHOWN" if self.reveal_identifiers
                                               else "identifiers masked"))
        table = QtWidgets.QTableWidget(len(rows), 4)
        table.setHorizontalHeaderLabels(["Tag", "Keyword", "VR", "Value"])
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                table.setItem(i, j, QtWidgets.QTableWidgetItem(str(v)))
        table.horizontalHeader().setStretchLastSection(True)
        table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        lay = QtWidgets.QVBoxLayout(dlg)
        lay.addWidget(QtWidgets.QLabel("Patient identifiers are masked (View → Show patient identifiers)."
                                       if not self.reveal_identifiers else "Patient identifiers are SHOWN."))
        lay.addWidget(table)
        dlg.resize(800, 600)
        dlg.table = table
        dlg.show()
        self.tag_dialog = dlg
        return dlg

    def show_shortcuts(self) -> QtWidgets.QDialog:
        dlg = QtWidgets.QDialog(self)
        dlg.setWindowTitle("Keyboard shortcuts")
        html = "<table cellpadding='4'>" + "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>"
                                                  for k, v in SHORTCUTS) + "</table>"
        lab = QtWidgets.QLabel(html)
        lay = QtWidgets.QVBoxLayout(dlg)
        lay.addWidget(lab)
        dlg.show()
        self.shortcut_dialog = dlg
        return dlg

    def _open_file_dialog(self):
        p, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open DICOM, image, report or annotation file")
        if p:
            self.open_paths([p])

    def _open_folder_dialog(self):
        p = QtWidgets.QFileDialog.getExistingDirectory(self, "Open study folder")
        if p:
            self.open_folder(p)

    def _open_checkpoint_dialog(self, slot):
        p = QtWidgets.QFileDialog.getExistingDirectory(self, "Open checkpoint directory")
        if p:
            self.load_checkpoint(p, slot)
            if slot == 1:
                self.set_compare_mode(True)

    def _open_annotations_dialog(self):
        p, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open MS-CXR annotations", filter="CSV (*.csv)")
        if p:
            self.load_annotations(p)

    def _export_dialog(self):
        p, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export view", "elvis_view.png", "PNG (*.png)")
        if p:
            self.export_png(p)

    # ================================================================================================ annotations
    def load_annotations(self, path: str, images_root: Optional[str] = None) -> None:
        from elvis_core.io.annotations import read_ms_cxr_csv

        self.annotations_root = images_root
        try:
            aset = read_ms_cxr_csv(path)
        except ElvisError as e:
            self.add_problem(path, str(e))
            self.show_message(str(e))
            return
        self.annotations = aset
        for line, msg in aset.errors:
            self.add_problem(path, f"{path}:{line}: {msg}")
        self.statusBar().showMessage(f"{len(aset)} annotated phrases from {os.path.basename(path)}", 8000)
        if self.report is not None:
            self.report_view.set_annotated_phrases([p.label_text for p in self._annotated_phrases()])

    # ================================================================================================ export
    def export_png(self, path: str) -> Optional[Path]:
        """The current view at full image resolution: image, map, boxes, phrase, checkpoint hash and settings."""
        if self.rad is None:
            self.show_message("Nothing to export: open an image first")
            return None
        from elvis_core.grounding.figure import render_overlay, write_png
        from elvis_core.io.radiograph import Window

        s = self.slots[0]
        c, w = self.image_view.window()
        footer = []
        if s.engine is not None:
            footer.append(f"checkpoint {s.name} {s.hash[:12]}")
            footer.append(f"sigma {s.engine.smoothing_sigma:g}")
        footer.append(f"W {w:.4g} L {c:.4g}")
        footer.append(f"opacity {self.opacity.value() / 100:.2f}")
        footer.append("range " + ("[-1,1]" if self.range_combo.currentIndex() == 0 else "auto"))
        gm = self.image_view.gmap
        try:
            if gm is None:
                from elvis_core.io.display import to_uint8

                grey = to_uint8(self.rad, window=Window(c, w), invert=self.image_view.inverted())
                rgb = np.repeat(grey[:, :, None], 3, axis=2)
            else:
                vr = self.image_view.overlay_levels()
                rgb = render_overlay(self.rad, gm, boxes=[b for b, _, _ in getattr(self, "current_boxes", [])],
                                     phrase=gm.phrase, footer=" | ".join(footer),
                                     opacity=self.opacity.value() / 100.0 if self.image_view.overlay_visible() else 0.0,
                                     vrange=vr, window=Window(c, w), cmap=self._figure_cmap())
            out = write_png(path, rgb)
        except (ElvisError, OSError, ValueError) as e:
            self.show_message(f"{path}: export failed: {e}")
            return None
        self.statusBar().showMessage(f"Exported {out}", 8000)
        return Path(out)

    def _figure_cmap(self) -> str:
        """The export figure's colormap closest to the view's (the core figure knows RdBu_r, viridis, gray)."""
        name = self.cmap_combo.currentText().lower()
        return "viridis" if "viridis" in name else "RdBu_r"

    # ================================================================================================ settings
    def _add_recent(self, path: str) -> None:
        rec = [p for p in (self.settings.value("recent", []) or []) if p != path]
        if isinstance(rec, str):
            rec = [rec]
        rec.insert(0, os.path.abspath(path))
        self.settings.setValue("recent", rec[:10])
        self._refresh_recent()

    def recent(self) -> List[str]:
        rec = self.settings.value("recent", []) or []
        return [rec] if isinstance(rec, str) else list(rec)

    def _refresh_recent(self):
        self.recent_menu.clear()
        for p in self.recent():
            a = self.recent_menu.addAction(p)
            a.triggered.connect(lambda *_, p=p: self.open_paths([p]))
        if not self.recent():
            self.recent_menu.addAction("(none)").setEnabled(False)

    def _restore_state(self):
        g = self.settings.value("geometry")
        if g is not None:
            self.restoreGeometry(g)
        st = self.settings.value("state")
        if st is not None:
            self.restoreState(st)

    def save_state(self):
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("state", self.saveState())
        self.settings.sync()

    def closeEvent(self, ev):
        self.save_state()
        self.cancel_scan()
        super().closeEvent(ev)

    # ================================================================================================ drag & drop
    def dragEnterEvent(self, ev):
        if ev.mimeData().hasUrls():
            ev.acceptProposedAction()

    def dropEvent(self, ev):
        paths = [u.toLocalFile() for u in ev.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.open_paths(paths)
            ev.acceptProposedAction()


# ==================================================================================================== worker fns
# These run on the thread pool: no Qt widgets here.

def _read_any(path: str):
    from elvis_core.io.images import read_image

    return read_image(path)


def _read_report(path: str):
    from elvis_core.io.report import read_report

    return read_report(path)


def _read_image_and_report(path: str, report_path: Optional[str]):
    rad = _read_any(path)
    report, err = None, None
    if report_path:
        try:
            report = _read_report(report_path)
        except ElvisError as e:
            err = str(e)
    return rad, report, err


def _thumbnails(paths: List[str], size: int = 96):
    from elvis_core.io.display import to_uint8

    out = []
    for p in paths:
        try:
            rad = _read_any(p)
            step = max(1, int(max(rad.shape) // size))
            from elvis_core.io.radiograph import Radiograph

            small = Radiograph(pixels=np.ascontiguousarray(rad.pixels[::step, ::step]), windows=rad.windows,
                               voi_lut=rad.voi_lut)
            out.append((p, np.ascontiguousarray(to_uint8(small, use_voi_lut=not rad.windows))))
        except Exception:
            out.append((p, None))
    return out


_LOAD_LOCK = threading.Lock()


def _load_engine(path: Optional[str], model=None, factory=None):
    # one load at a time: transformers' lazy imports are not thread-safe (two checkpoints loading at once in compare
    # mode failed with "cannot import name PreTrainedTokenizerFast")
    with _LOAD_LOCK:
        from elvis_core.grounding.engine import GroundingEngine

        if factory is not None:
            model = factory()
        engine = GroundingEngine(model if model is not None else path)
    _warm_up(engine)
    try:
        engine.viewer_hash = engine.checkpoint_hash  # hashing weights is slow: here, not on the GUI thread
    except Exception as e:  # an in-memory model the engine cannot hash: show that, keep working
        engine.viewer_hash = f"unhashed ({type(e).__name__})"
    return engine


def _warm_up(engine) -> None:
    """One dummy image and text pass in the loading worker: the first real phrase then does not pay torch's
    first-call set-up (measured ~1 s on 2 CPU cores). Failures here are ignored (the real call will report them)."""
    try:
        import torch

        model = engine.model
        size = int(model.transform.size)
        with engine._lock, torch.inference_mode():
            dev = engine.device
            model.encode_image(torch.zeros(1, 1, size, size, device=dev))
            tok = model.tokenize(["warm up"])
            model.encode_text(tok["input_ids"].to(dev), tok["attention_mask"].to(dev))
    except Exception:
        pass


def _ground(engine, rad, phrase: str, tokens: bool):
    with engine._lock:  # set_image + ground atomically (the engine's lock is re-entrant)
        engine.set_image(rad)
        return engine.ground_tokens(phrase) if tokens else engine.ground(phrase)


def _scan(root: str, progress=None, cancel=None):
    """Studies of a folder as plain dicts for the tree: [{key, label, report, series: [{label, images: [...]}]}]."""
    try:
        from elvis_core.io.studies import scan
    except ImportError:  # pragma: no cover - only before the studies module landed
        return _scan_fallback(root, progress, cancel)
    return _studies_to_dicts(scan(root, progress=progress, cancel=cancel))


def _studies_to_dicts(res):
    studies = []
    for i, st in enumerate(res.studies):
        series_out = []
        modalities = set()
        for j, se in enumerate(st.series):
            imgs = []
            for im in se.images:
                modalities.add(im.modality or se.modality)
                view = f"{im.view_position} " if im.view_position else ""
                size = f" {im.cols}x{im.rows}" if im.rows and im.cols else ""
                imgs.append({"path": im.path, "label": f"{view}{os.path.basename(im.path)}{size}"})
            num = f"{se.number}" if se.number is not None else f"{j + 1}"
            slabel = f"Series {num}" + (f" — {se.description}" if se.description else "") + \
                     (f" ({se.modality})" if se.modality else "")
            series_out.append({"label": slabel, "images": imgs})
        mods = ",".join(sorted(m for m in modalities if m))
        label = f"{st.key}" + (f"  [{mods}]" if mods else "")
        studies.append({"key": st.key, "label": label, "report": st.report_path, "series": series_out})
    errors = [(p, m if p in m else f"{p}: {m}") for p, m in res.errors]
    errors += [(p, f"{p}: skipped ({m})") for p, m in getattr(res, "skipped", [])]
    return studies, errors, bool(res.cancelled)


def _scan_fallback(root: str, progress=None, cancel=None):
    """Used only until ``elvis_core.io.studies`` lands: every DICOM/image file, one study per folder."""
    from elvis_core.io.dicom import read_header

    if not os.path.isdir(root):
        raise ElvisError("no such folder", root)
    files = []
    for d, _dirs, names in os.walk(root):
        for n in sorted(names):
            files.append(os.path.join(d, n))
    files.sort()
    by_dir: Dict[str, List[dict]] = {}
    errors = []
    cancelled = False
    for k, p in enumerate(files):
        if cancel is not None and cancel():
            cancelled = True
            break
        if progress is not None:
            progress(k, len(files), f"Scanning {k}/{len(files)}")
        suf = Path(p).suffix.lower()
        if suf in (".txt", ".csv", ".json", ".md"):
            continue
        if suf not in IMAGE_SUFFIXES:
            try:
                read_header(p)
            except ElvisError as e:
                errors.append((p, str(e)))
                continue
            except Exception as e:
                errors.append((p, f"{p}: {type(e).__name__}: {e}"))
                continue
        by_dir.setdefault(os.path.dirname(p), []).append({"path": p, "label": os.path.basename(p)})
    studies = []
    for d, imgs in sorted(by_dir.items()):
        rep = d.rstrip(os.sep) + ".txt"
        studies.append({"key": d, "label": os.path.relpath(d, root) if d != root else os.path.basename(d),
                        "report": rep if os.path.isfile(rep) else None,
                        "series": [{"label": "images", "images": imgs}]})
    return studies, errors, cancelled
