"""`ReviewView`: the "Review" mode — a keyboard-driven queue of MS-CXR phrase boxes with the model's map.

A thin skin over :class:`elvis_core.review.ReviewSession`: every key press becomes one session call, which persists
the decision (SQLite, synchronous) **before** the queue advances. Slow work (reading the image and report, grounding
the phrase) runs on the thread pool; a result that arrives after the annotator moved on is dropped.

Keys: J / K next / previous, U next unreviewed, A accept the phrase's boxes (and advance), R reject with a reason
(and advance), S select the next box, N add a box, Del delete the selected box, Ctrl+Z undo, Ctrl+Shift+Z (or
Ctrl+Y) redo, H toggle the map, arrows move the selected box (Shift: 10 px), Ctrl+arrows resize it. Boxes are
also edited by dragging their corners/edges (or the box itself).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Dict, Optional

from PySide6 import QtCore, QtGui, QtWidgets

from elvis_core.errors import ElvisError
from elvis_core.review import ReviewSession, export_all, find_report, item_figures
from elvis_viewer.image_view import ImageView
from elvis_viewer.report_view import ReportView
from elvis_viewer.review.box_layer import STATUS_COLORS, BoxLayer
from elvis_viewer.review.decisions import DecisionsMixin
from elvis_viewer.review.filters import FiltersMixin
from elvis_viewer.review.pane import ReviewPaneMixin
from elvis_viewer.review.tasks import _ground, _load_item_data, _preload
from elvis_viewer.review.dialogs import (SETTINGS_KEY, ask_open_read_only, ask_recover, ask_reject_reason,
                                         ask_rescale, ask_reviewer_name, open_review_session, settings_or_default)
from elvis_viewer.workers import Generation, run_task, while_alive

STATUS_MARK = {"unreviewed": "·", "accepted": "✓", "edited": "✎", "rejected": "✗"}


class ReviewView(DecisionsMixin, ReviewPaneMixin, FiltersMixin, QtWidgets.QWidget):
    #: key of the item now shown
    itemChanged = QtCore.Signal(str)
    #: a one-line status message for the main window's status bar
    message = QtCore.Signal(str)

    def __init__(self, engine_provider: Callable[[], object], parent: Optional[QtWidgets.QWidget] = None, *,
                 settings: Optional[QtCore.QSettings] = None,
                 reason_provider: Optional[Callable[[QtWidgets.QWidget], Optional[str]]] = None):
        super().__init__(parent)
        self.engine_provider = engine_provider
        if settings is None and isinstance(getattr(parent, "settings", None), QtCore.QSettings):
            settings = parent.settings  # the main window's settings
        self.settings = settings_or_default(settings)
        self.reason_provider = reason_provider or ask_reject_reason
        self.session: Optional[ReviewSession] = None
        self.annotations_path: Optional[Path] = None
        self.loaded_key: Optional[str] = None  # item whose image is on screen
        self.map_key: Optional[str] = None  # item whose map is on screen
        self.gmap = None
        self._map_values = None
        self._gen = Generation()
        self._rad = None  # the image on screen (for a map requested when the model arrives)
        self._ahead: Dict[str, tuple] = {}  # key -> ((key, rad, report), (gmap, values) | None, engine)
        self.last_error: str = ""
        self._build()
        self._shortcuts()

    # ------------------------------------------------------------------------------------------------- layout
    def _build(self) -> None:
        left = QtWidgets.QWidget()
        ll = QtWidgets.QVBoxLayout(left)
        ll.setContentsMargins(4, 4, 4, 4)
        self.category_combo = QtWidgets.QComboBox()
        self.split_combo = QtWidgets.QComboBox()
        self.status_combo = QtWidgets.QComboBox()
        for c in (self.category_combo, self.split_combo, self.status_combo):
            c.setFocusPolicy(QtCore.Qt.FocusPolicy.ClickFocus)
            c.currentIndexChanged.connect(self._on_filter)
            ll.addWidget(c)
        self.counts_label = QtWidgets.QLabel("")
        ll.addWidget(self.counts_label)
        self.queue = QtWidgets.QListWidget()
        self.queue.setFocusPolicy(QtCore.Qt.FocusPolicy.ClickFocus)
        self.queue.currentItemChanged.connect(self._on_queue_click)
        ll.addWidget(self.queue, 3)
        self.problems_label = QtWidgets.QLabel("Import problems (0)")
        ll.addWidget(self.problems_label)
        self.problems = QtWidgets.QListWidget()
        self.problems.setFocusPolicy(QtCore.Qt.FocusPolicy.ClickFocus)
        self.problems.setWordWrap(True)
        ll.addWidget(self.problems, 1)
        self.problems.setVisible(False)  # shown when an import has problems
        self.export_button = QtWidgets.QPushButton("Export CSV / COCO / summary…")
        self.export_button.setFocusPolicy(QtCore.Qt.FocusPolicy.ClickFocus)
        self.export_button.clicked.connect(self._export_dialog)
        ll.addWidget(self.export_button)

        self.image_view = ImageView()
        self.boxes = BoxLayer(self.image_view.view_box, self)
        self.boxes.boxEdited.connect(self._on_box_edited)
        self.boxes.boxMoving.connect(self._on_box_moving)
        self.boxes.boxSelected.connect(lambda bid: self._update_box_list())

        right = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(right)
        rl.setContentsMargins(4, 4, 4, 4)
        self.header = QtWidgets.QLabel("")
        self.header.setWordWrap(True)
        self.header.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self._set_header("No annotations loaded")
        rl.addWidget(self.header)
        self.report_view = ReportView()
        self.report_view.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        rl.addWidget(self.report_view, 2)
        self.figures_label = QtWidgets.QLabel("")
        self.figures_label.setWordWrap(True)
        self.figures_label.setMinimumHeight(3 * self.figures_label.fontMetrics().lineSpacing() + 6)
        self.figures_label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Preferred,
                                         QtWidgets.QSizePolicy.Policy.Minimum)
        rl.addWidget(self.figures_label)
        self.box_list = QtWidgets.QListWidget()
        self.box_list.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        rl.addWidget(self.box_list, 1)
        keys = QtWidgets.QLabel("J/K next/prev · U next unreviewed · A accept · R reject · S select box · N add · "
                                "Del delete · Ctrl+Z / Ctrl+Shift+Z undo/redo · H map · drag corners/edges, or arrows "
                                "(Shift ×10, Ctrl resize) to edit")
        keys.setWordWrap(True)
        keys.setStyleSheet("color: #9aa4b2;")
        rl.addWidget(keys)

        split = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.image_view)
        split.addWidget(right)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 3)
        split.setStretchFactor(2, 1)
        split.setSizes([240, 660, 380])  # the report column fits a MIMIC line (79 columns wrap)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self._build_hint(split))  # the hint says how to start a review while none is open
        self.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)

    def _shortcuts(self) -> None:
        """Review keys, taken before any other shortcut while focus is inside this view.

        An application event filter (not QShortcut): the main window has window-wide actions on the same letters
        (R = ruler, H = overlay), and identical QShortcuts would be ambiguous and fire neither. Here a review key
        pressed anywhere inside the view (queue, image, report) is ours; dialogs (other windows) are not affected.
        """
        self._keymap = {
            "J": self.next_item, "K": self.previous_item, "U": self.next_unreviewed, "A": self.accept,
            "R": self.reject, "S": self.boxes.select_next, "N": self.add_box, "Del": self.delete_box,
            "Backspace": self.delete_box, "Ctrl+Z": self.undo, "Ctrl+Shift+Z": self.redo, "Ctrl+Y": self.redo,
            "H": self.image_view.toggle_overlay,
        }
        # arrows move the selected box by 1 px (Shift: 10 px); Ctrl+arrows resize it (right / bottom edge)
        self._nudges = {}
        for name, (dx, dy) in {"Left": (-1, 0), "Right": (1, 0), "Up": (0, -1), "Down": (0, 1)}.items():
            self._nudges[name] = (dx, dy, 0, 0)
            self._nudges["Shift+" + name] = (10 * dx, 10 * dy, 0, 0)
            self._nudges["Ctrl+" + name] = (0, 0, dx, dy)
            self._nudges["Ctrl+Shift+" + name] = (0, 0, 10 * dx, 10 * dy)
        QtWidgets.QApplication.instance().installEventFilter(self)

    @staticmethod
    def key_name(ev: QtGui.QKeyEvent) -> str:
        mods = ev.modifiers() & ~QtCore.Qt.KeyboardModifier.KeypadModifier
        return QtGui.QKeySequence(QtCore.QKeyCombination(mods, QtCore.Qt.Key(ev.key()))).toString()

    def eventFilter(self, obj, ev) -> bool:
        t = ev.type()
        if t not in (QtCore.QEvent.Type.ShortcutOverride, QtCore.QEvent.Type.KeyPress):
            return False
        if not isinstance(obj, QtWidgets.QWidget) or not (obj is self or self.isAncestorOf(obj)):
            return False
        if not self.isVisible():
            return False
        name = self.key_name(ev)
        fn = self._keymap.get(name)
        if fn is None and name in self._nudges and self.boxes.selected is not None:
            fn = lambda d=self._nudges[name]: self.nudge_box(*d)  # noqa: E731
        if fn is None:
            return False
        if t == QtCore.QEvent.Type.ShortcutOverride:
            ev.accept()  # "this key is for a widget": no shortcut fires, a KeyPress follows
            return True
        fn()
        return True

    # --------------------------------------------------------------------------------------------------- load
    def load(self, annotations_path: os.PathLike | str, images_root: os.PathLike | str,
             rescale: Optional[bool] = None) -> bool:
        """Open an MS-CXR CSV / COCO JSON with its images root and resume the review beside it.

        Asks for the reviewer name once (kept in settings) and, when the annotations' image size differs from the
        images' and no choice is stored yet, whether to rescale the boxes. Returns False when cancelled or failed
        (the reason is in :attr:`last_error` and the status message).
        """
        unattended = getattr(self, "unattended", False)  # --screenshot: nobody to answer a dialog
        if unattended:
            reviewer = str(self.settings.value(SETTINGS_KEY, "") or "").strip() or "unattended"
        else:
            reviewer = ask_reviewer_name(self, self.settings)
        if not reviewer:
            return self._fail("a reviewer name is needed to record decisions")
        if self.session is not None:
            self.session.close()
            self.session = None
        try:  # the module's dialog functions are passed in (tests replace them here)
            session = open_review_session(self, annotations_path, images_root, rescale, reviewer,
                                          (lambda *_: True) if unattended else ask_open_read_only,
                                          (lambda *_: False) if unattended else ask_rescale,
                                          (lambda *_: False) if unattended else ask_recover)
        except ElvisError as err:
            return self._fail(str(err))
        self.session = session
        self.annotations_path = Path(annotations_path)
        self._fill_problems()  # file names masked while identifiers are hidden
        self._show_hint(False)
        self._fill_filters()
        self._show_current()
        n = len(session.items)
        where = (f"READ-ONLY, decisions are not saved: {session.read_only_reason}" if session.read_only_reason
                 else f"decisions saved to {session.store.path.name}")
        rec = getattr(session, "recovered", None)  # a damaged review file rebuilt on the user's word
        self._say((f"recovered {rec.items} decision(s), {rec.lost_rows} unreadable row(s) lost; " if rec else "")
                  + f"{n} phrases loaded from {Path(annotations_path).name}; {len(session.problems)} problem(s) "
                  f"listed; {where}")
        return True

    def _fail(self, msg: str) -> bool:
        self.last_error = msg
        self._say(msg)
        self._set_header(f"<b>Cannot load:</b> {msg}")
        self.hint_error.setText(self.shown(f"Cannot load: {msg}"))
        self.hint_error.setVisible(True)
        self._show_hint(self.session is None)  # no review open: the hint, with why this one did not open
        return False

    # -------------------------------------------------------------------------------------------------- queue
    def _queue_text(self, it) -> str:
        return f"{STATUS_MARK.get(it.status, '?')} {it.label_text}  — {it.category}"

    def _refresh_queue(self) -> None:
        """Rebuild the list only when the filter changed its rows; else update changed rows (fast on 1000s)."""
        s = self.session
        vis = s.visible()
        keys = [s.items[i].key for i in vis]
        self.queue.blockSignals(True)
        if keys != getattr(self, "_queue_keys", None):
            self.queue.clear()
            self._queue_status = {}
            for i in vis:
                it = s.items[i]
                li = QtWidgets.QListWidgetItem(self._queue_text(it))
                li.setData(QtCore.Qt.ItemDataRole.UserRole, it.key)
                li.setForeground(QtGui.QColor(STATUS_COLORS.get(it.status, "#ffffff")))
                self.queue.addItem(li)
                self._queue_status[it.key] = it.status
            self._queue_keys = keys
        else:
            for row, i in enumerate(vis):
                it = s.items[i]
                st = it.status
                if self._queue_status.get(it.key) != st:
                    li = self.queue.item(row)
                    li.setText(self._queue_text(it))
                    li.setForeground(QtGui.QColor(STATUS_COLORS.get(st, "#ffffff")))
                    self._queue_status[it.key] = st
        if s.current in vis:
            row = vis.index(s.current)
            if self.queue.currentRow() != row:
                self.queue.setCurrentRow(row)
            self.queue.scrollToItem(self.queue.item(row))
        self.queue.blockSignals(False)
        self._counts = s.counts()
        c = self._counts["total"]
        self.counts_label.setText(f"{c['reviewed']} / {c['items']} reviewed · {c['visible']} shown")

    def _on_queue_click(self, cur, _prev) -> None:
        if cur is None or self.session is None:
            return
        self.session.go_to(cur.data(QtCore.Qt.ItemDataRole.UserRole))
        self._show_current()

    def _show_current(self) -> None:
        s = self.session
        self._refresh_queue()
        self._fill_filters(self._counts)
        it = s.item if s is not None else None
        if it is None or s.current not in s.visible():
            self._set_header("No phrase matches the filters" if s and s.items else "No phrases to review")
            self.boxes.clear()
            self.image_view.clear()
            self.report_view.set_report(None)
            self.figures_label.setText("")
            self.box_list.clear()
            return
        pos = s.visible().index(s.current) + 1
        color = STATUS_COLORS.get(it.status, "#ffffff")
        warn = "".join(f"<br><i>{w}</i>" for w in it.warnings)
        self._set_header(
            f"<b>{pos} / {len(s.visible())}</b> · {it.category} · {it.split or 'no split'} · "
            f"<span style='color:{color}'>{it.status}</span><br><b>“{it.label_text}”</b>{warn}")
        if self.loaded_key != it.key:
            self._start_loading(it)
        else:
            self._refresh_boxes()
        self.itemChanged.emit(it.key)

    def _start_loading(self, it) -> None:
        n = self._gen.next()
        self.gmap, self._map_values, self.map_key = None, None, None
        self.boxes.clear()
        self.box_list.clear()
        self.image_view.set_overlay(None)  # the previous item's map never sits under this item's header
        ahead = self._ahead.pop(it.key, None)
        if ahead is not None:  # preloaded: shown now, map included when the same model made it
            data, mapped, engine = ahead
            self._on_loaded(n, data, ground=not (mapped is not None and engine is self._engine()))
            if mapped is not None and engine is self._engine():
                self._on_map(n, (it.key,) + tuple(mapped))
            return
        self._set_loading(True)  # the previous item's film, dimmed, until this one is read
        report = find_report(it)
        run_task(_load_item_data, it.key, it.image_path, None if report is None else str(report),
                 on_result=while_alive(self, lambda r, n=n: self._on_loaded(n, r)),
                 on_error=while_alive(self, lambda e, n=n: self._on_load_error(n, e)))

    def _engine(self):
        return self.engine_provider() if self.engine_provider else None

    def engine_ready(self) -> None:
        """The model finished loading: map the item on screen now (not only after the next key), preload on."""
        self._ahead.clear()
        it = self.session.item if self.session is not None else None
        if it is not None and self._rad is not None and self.loaded_key == it.key and self.map_key != it.key:
            self._request_map(self._gen.current, it, self._rad)
        self._preload_next()

    def _request_map(self, n: int, it, rad) -> None:
        engine = self._engine()
        if engine is not None:
            run_task(_ground, it.key, engine, rad, it.label_text,
                     on_result=while_alive(self, lambda r, n=n: self._on_map(n, r)),
                     on_error=while_alive(self, lambda e: self._say(f"no map: {e}")))

    def _preload_next(self) -> None:
        """Read (and map) the next visible item in the background, so J shows it at once."""
        s = self.session
        if s is None or s.current is None:
            return
        vis = s.visible()
        if s.current not in vis or vis.index(s.current) + 1 >= len(vis):
            return
        nxt = s.items[vis[vis.index(s.current) + 1]]
        if nxt.key in self._ahead:
            return
        self._ahead = {k: v for k, v in self._ahead.items() if k == nxt.key}
        report = find_report(nxt)

        def keep(r):
            key, data, mapped, engine = r
            self._ahead[key] = (data, mapped, engine)
        run_task(_preload, nxt.key, nxt.image_path, None if report is None else str(report), self._engine(),
                 nxt.label_text, on_result=while_alive(self, keep), on_error=lambda e: None)

    def _on_loaded(self, n: int, result, ground: bool = True) -> None:
        if not self._gen.is_current(n) or self.session is None:
            return
        key, rad, report = result
        it = self.session.item
        if it is None or it.key != key:
            return
        self._rad = rad  # only the film of the item on screen (a map requested when the model arrives uses it)
        self._set_loading(False)
        self.image_view.set_radiograph(rad)
        self.image_view.set_caption(it.label_text)
        self.report_view.set_report(report)
        if report is not None:
            span = report.find(it.label_text)
            if span is None:
                low = report.text.lower().find(it.label_text.lower())
                span = None if low < 0 else (low, low + len(it.label_text))
            if span is not None:
                self.report_view.select_span(span[0], span[1], emit=False)
        self.loaded_key = key
        self._refresh_boxes()
        if ground:
            self._request_map(n, it, rad)
        # the next item is read and mapped once this one is on screen: started at once, the preloading worker
        # competed for the GIL with the drawing of this item (measured: 190-250 ms stalls on the loaded 2 cores)
        QtCore.QTimer.singleShot(150, self._preload_next)

    def _on_load_error(self, n: int, err: BaseException) -> None:
        if not self._gen.is_current(n):
            return
        self.loaded_key = None
        self._set_loading(False)
        self.image_view.clear()
        self._say(f"cannot show this image: {err}")
        self._set_header(self._header_raw + f"<br><span style='color:#ff4d4d'>cannot show the image: {err}</span>")

    def _on_map(self, n: int, result) -> None:
        if not self._gen.is_current(n):
            return
        key, gmap, values = result
        self.gmap, self._map_values, self.map_key = gmap, values, key
        self.image_view.set_overlay(gmap)
        self._update_figures()

    # -------------------------------------------------------------------------------------------------- boxes
    def _refresh_boxes(self) -> None:
        it = self.session.item if self.session else None
        if it is None:
            return
        self.boxes.set_boxes(it.boxes, (it.image_width, it.image_height))
        self._update_box_list()
        self._update_figures()

    def _update_box_list(self) -> None:
        it = self.session.item if self.session else None
        self.box_list.clear()
        if it is None:
            return
        for b in it.boxes:
            sel = "▶ " if b.box_id == self.boxes.selected else "  "
            extra = f" — {b.reason}" if b.reason else ""
            who = f" · {b.reviewer} {b.timestamp}" if b.reviewer else ""
            li = QtWidgets.QListWidgetItem(f"{sel}{b.box_id}: {b.status}{extra} ({b.x:.0f}, {b.y:.0f}, {b.w:.0f}, "
                                           f"{b.h:.0f}){who}")
            li.setForeground(QtGui.QColor(STATUS_COLORS.get(b.status, "#ffffff")))
            self.box_list.addItem(li)

    def figures(self, moving: Optional[tuple] = None):
        """The item's live figures (core computation), optionally with one box at a dragged geometry."""
        it = self.session.item
        boxes = it.boxes
        if moving is not None:
            bid, x, y, w, h = moving
            boxes = [dataclasses.replace(b, x=x, y=y, w=w, h=h) if b.box_id == bid else b for b in boxes]
        values = self._map_values if self.map_key == it.key else None
        return item_figures(boxes, map_values=values)

    def _update_figures(self, moving: Optional[tuple] = None) -> None:
        if self.session is None or self.session.item is None:
            return
        fig = self.figures(moving)
        per = ", ".join(f"{k} {v:.2f}" for k, v in fig.iou_original.items())
        self.figures_label.setText(fig.as_text() + (f"\nper box IoU orig→edit: {per}" if per else "")
                                   + ("" if self.map_key else "\n(no model map)"))

    def _on_box_moving(self, bid: str, x: float, y: float, w: float, h: float) -> None:
        self._update_figures((bid, x, y, w, h))

    def _on_box_edited(self, bid: str, x: float, y: float, w: float, h: float) -> None:
        # MS-CXR boxes are whole pixels: a drag ends on the nearest one (exports never get fractional pixels)
        x0, y0, x1, y1 = round(x), round(y), round(x + w), round(y + h)
        self._decide(lambda s, k: s.edit_box(bid, (x0, y0, max(1, x1 - x0), max(1, y1 - y0)), expected_key=k))
        QtCore.QTimer.singleShot(0, self._show_current)  # not from inside the ROI's own event handler

    # ----------------------------------------------------------------------------------------------- actions
    def _set_loading(self, on: bool) -> None:
        """While the item named in the header is being read, the previous item's film, map and report are NOT
        shown under it (blank, "loading …"); decisions wait for the item to be on screen."""
        if on:
            self.loaded_key = None
            self.image_view.clear()
            self.report_view.set_report(None)
            self.figures_label.setText("")  # the previous item's figures too
        self.image_view.set_caption("loading …" if on else "")

    # ------------------------------------------------------------------------------------------------- export
    def export(self, out_dir: os.PathLike | str, stem: Optional[str] = None) -> Dict[str, Path]:
        """Write the reviewed CSV, COCO JSON and summary into ``out_dir`` (atomic writes)."""
        if self.session is None:
            raise ElvisError("nothing loaded to export")
        stem = stem or (self.annotations_path.stem + ".reviewed" if self.annotations_path else "review")
        paths = export_all(self.session.items, out_dir, stem)
        self.session.store.checkpoint()  # the review .sqlite alone holds every exported decision
        self._say("exported " + ", ".join(p.name for p in paths.values()))
        return paths

    def _export_dialog(self) -> None:
        if self.session is None:
            return
        d = QtWidgets.QFileDialog.getExistingDirectory(self, "Export review to folder",
                                                       str(self.annotations_path.parent))
        if d:
            try:
                self.export(d)
            except ElvisError as err:
                QtWidgets.QMessageBox.warning(self, "Export failed", self.shown(str(err)))

    def close_session(self) -> None:
        """Checkpoint and close the review file (quit, switching annotations): the .sqlite alone holds it all."""
        if self.session is not None:
            self.session.close()  # idempotent; the object stays for callbacks still queued (they read memory only)

    def closeEvent(self, ev) -> None:
        self.close_session()
        super().closeEvent(ev)
