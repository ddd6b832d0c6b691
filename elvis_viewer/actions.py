"""Every menu entry, toolbar button and shortcut of the main window, declared once as data.

``ACTIONS`` is the table; :func:`build_actions` turns it into ``QAction`` objects, the menus (in ``MENUS`` order,
a ``group`` change inserts a separator), the toolbar and the shortcut sheet (Help → Keyboard shortcuts).

Adding an action is one line in ``ACTIONS`` (or one :func:`register` call from a module imported before the window
is built)::

    Action("file.open_pacs", "Open from PACS…", "File", lambda w: open_pacs_dialog(w), "Ctrl+Shift+P", group="open")

``run`` receives the :class:`~elvis_viewer.main_window.MainWindow` (``w.session`` is the headless
:class:`~elvis_viewer.session.ViewerSession`); checkable actions receive ``(window, checked)``. Import heavy
modules inside the callable, not at the top of your module, so start-up stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from PySide6 import QtCore, QtGui

MENUS = ("File", "View", "Overlay", "Tools", "Help")


@dataclass(frozen=True)
class Action:
    id: str
    text: str
    menu: str  # one of MENUS, or "" for a shortcut without a menu entry
    run: Callable[..., Any]
    shortcut: str = ""
    checkable: bool = False
    checked: bool = False
    toolbar: bool = False
    tip: str = ""
    group: str = ""


def _views(w, fn):
    for iv in w.views():
        if iv.rad is not None:
            fn(iv)


def _pacs():
    from elvis_viewer import pacs_dialog  # PACS dialog + DICOM exports (issue 14), imported on first use

    return pacs_dialog


def _toggle_overlay(w, on: bool):
    w.overlay_panel.change(visible=on)


ACTIONS: List[Action] = [
    # File
    Action("file.open", "Open file…", "File", lambda w: w.open_file_dialog(), "Ctrl+O", group="open"),
    Action("file.open_folder", "Open folder…", "File", lambda w: w.open_folder_dialog(), "Ctrl+Shift+O",
           group="open"),
    Action("file.open_pacs", "Open from PACS…", "File", lambda w: _pacs().open_pacs_dialog(w), "Ctrl+Shift+P",
           tip="Search a DICOMweb server (QIDO-RS), fetch a study into the local cache and open it", group="open"),
    Action("file.open_checkpoint", "Open checkpoint…", "File", lambda w: w.open_checkpoint_dialog(0), "Ctrl+K",
           group="model"),
    Action("file.open_compare", "Open compare checkpoint…", "File", lambda w: w.open_checkpoint_dialog(1),
           group="model"),
    Action("file.open_annotations", "Open annotations (MS-CXR CSV)…", "File", lambda w: w.open_annotations_dialog(),
           group="model"),
    Action("file.export", "Export view as PNG…", "File", lambda w: w.export_dialog(), "Ctrl+E", toolbar=True,
           tip="What the screen shows: both compare views, markers, colours, fade, phrase and its marks",
           group="export"),
    Action("file.export_sr", "Export reviewed boxes as DICOM SR…", "File", lambda w: _pacs().export_review_sr(w),
           tip="One TID 1500 Comprehensive SR per image of the open review (every decision, rejections included)",
           group="export"),
    Action("file.export_seg", "Export map as DICOM SEG…", "File", lambda w: _pacs().export_map_seg(w),
           tip="The current phrase's map: a FRACTIONAL DICOM SEG + an RGB Secondary Capture heat map", group="export"),
    Action("file.review_from_sr", "Resume review from the study's DICOM SR", "File",
           lambda w: _pacs().review_from_pacs_sr(w), group="export",
           tip="The review SRs fetched with the study (from the PACS) reopened with every decision restored"),
    Action("file.quit", "Quit", "File", lambda w: w.close(), "Ctrl+Q", group="quit"),
    # View: image
    Action("view.fit", "Fit", "View", lambda w: _views(w, lambda iv: iv.fit()), "F", toolbar=True),
    Action("view.one", "1:1", "View", lambda w: _views(w, lambda iv: iv.one_to_one()), "1", toolbar=True),
    Action("view.zoom_in", "Zoom in", "View", lambda w: _views(w, lambda iv: iv.zoom(1.25)), "+"),
    Action("view.zoom_out", "Zoom out", "View", lambda w: _views(w, lambda iv: iv.zoom(0.8)), "-"),
    Action("view.invert", "Invert", "View", lambda w, on: _views(w, lambda iv: iv.set_inverted(on)), "I",
           checkable=True, toolbar=True),
    Action("view.wl_mode", "W/L mode (left drag)", "View", lambda w, on: _views(w, lambda iv: iv.set_wl_mode(on)),
           "W", checkable=True, toolbar=True),
    Action("view.compare", "Compare mode", "View", lambda w, on: w.session.set_compare(on), "Ctrl+M",
           checkable=True, toolbar=True, group="mode"),
    Action("view.tags", "DICOM tags…", "View", lambda w: w.show_tag_inspector(), "Ctrl+T", toolbar=True,
           group="mode"),
    Action("view.privacy", "Show patient identifiers", "View", lambda w, on: w.set_reveal_identifiers(on),
           checkable=True, group="mode"),
    # browsing
    Action("go.next_image", "Next image", "View", lambda w: w.session.step_image(+1), "Right", group="go"),
    Action("go.prev_image", "Previous image", "View", lambda w: w.session.step_image(-1), "Left", group="go"),
    Action("go.next_study", "Next study", "View", lambda w: w.session.step_study(+1), "PgDown", group="go"),
    Action("go.prev_study", "Previous study", "View", lambda w: w.session.step_study(-1), "PgUp", group="go"),
    # Overlay
    Action("overlay.show", "Show overlay", "Overlay", _toggle_overlay, "H", checkable=True, checked=True,
           toolbar=True),
    Action("overlay.isolines", "Isolines", "Overlay", lambda w, on: w.overlay_panel.change(isolines=on),
           checkable=True),
    Action("overlay.shared", "One scale for both views (compare)", "Overlay",
           lambda w, on: w.overlay_panel.change(shared_scale=on), checkable=True, checked=True),
    # Tools: measurements
    Action("tools.ruler", "Add ruler", "Tools", lambda w: w.add_measurement("ruler"), "R", toolbar=True,
           tip="Several rulers; in mm when the pixel spacing is known"),
    Action("tools.angle", "Add angle", "Tools", lambda w: w.add_measurement("angle"), "A"),
    Action("tools.ctr", "Cardiothoracic ratio", "Tools", lambda w: w.add_measurement("ctr"), "C",
           tip="Two horizontal widths (heart, inner thorax); the ratio is shown"),
    Action("tools.clear", "Clear measurements", "Tools", lambda w: w.image_view.measure.clear(), "Shift+Del"),
    # Help
    Action("help.shortcuts", "Keyboard shortcuts", "Help", lambda w: w.show_shortcuts(), "F1"),
    Action("help.about", "About", "Help", lambda w: w.show_about()),
]

#: rows of the shortcut sheet that are not actions (mouse gestures, keys handled by a pane)
EXTRA_KEYS: List[Tuple[str, str]] = [
    ("Right drag", "Window (horizontal) / level (vertical)"), ("Left drag / wheel", "Pan / zoom"),
    ("Up / Down (study list)", "Open the previous / next image"),
    ("Up / Down (report)", "Previous / next sentence"),
    ("Review tab", "J / K next / previous, A accept, R reject, N add box, U next unreviewed (see docs/review.md)"),
]


def register(action: Action) -> None:
    """Add an action to the table (or replace the one with the same id); call before the window is built."""
    for i, a in enumerate(ACTIONS):
        if a.id == action.id:
            ACTIONS[i] = action
            return
    ACTIONS.append(action)


def build_actions(window, actions: Optional[List[Action]] = None) -> Dict[str, QtGui.QAction]:
    """QActions for the table, put into the window's menus and toolbar; returns them by id."""
    actions = ACTIONS if actions is None else actions
    out: Dict[str, QtGui.QAction] = {}
    menus: Dict[str, Any] = {}
    last_group: Dict[str, str] = {}
    mb = window.menuBar()
    for name in MENUS:
        menus[name] = mb.addMenu("&" + name)
    tb = window.addToolBar("Tools")
    tb.setObjectName("toolbar_main")
    tb.setMovable(False)
    window.toolbar = tb
    for a in actions:
        qa = QtGui.QAction(a.text, window)
        qa.setObjectName(a.id)
        if a.shortcut:
            qa.setShortcut(QtGui.QKeySequence(a.shortcut))
            qa.setShortcutContext(QtCore.Qt.ShortcutContext.WindowShortcut)
        if a.tip:
            qa.setToolTip(a.tip)
            qa.setStatusTip(a.tip)
        if a.checkable:
            qa.setCheckable(True)
            qa.setChecked(a.checked)
            qa.toggled.connect(lambda on, a=a: a.run(window, on))
        else:
            qa.triggered.connect(lambda *_, a=a: a.run(window))
        window.addAction(qa)  # shortcuts work even when the menu entry is hidden
        if a.menu:
            if a.menu not in menus:
                menus[a.menu] = mb.addMenu("&" + a.menu)
            m = menus[a.menu]
            if a.menu in last_group and last_group[a.menu] != a.group:
                m.addSeparator()
            last_group[a.menu] = a.group
            m.addAction(qa)
        out[a.id] = qa
    # toolbar: the view tools first, file actions (export) at the end
    for a in sorted((a for a in actions if a.toolbar), key=lambda a: a.id.startswith("file.")):
        tb.addAction(out[a.id])
    window.menus = menus
    return out


class _ShortcutPassThrough(QtCore.QObject):
    """On a text field, lets the window's shortcuts with a modifier (Ctrl+E, Ctrl+K, Ctrl+T, F1, …) win over the
    field's own editing keys (QLineEdit takes Ctrl+E / Ctrl+K for end-of-line / kill-line); plain letters and
    digits stay the field's, so typing a phrase never triggers "R" or "1"."""

    def __init__(self, sequences, parent):
        super().__init__(parent)
        self.sequences = set(sequences)

    def eventFilter(self, obj, ev) -> bool:
        if ev.type() == QtCore.QEvent.Type.ShortcutOverride:
            mods = ev.modifiers() & (QtCore.Qt.KeyboardModifier.ControlModifier
                                     | QtCore.Qt.KeyboardModifier.AltModifier
                                     | QtCore.Qt.KeyboardModifier.MetaModifier)
            fkey = QtCore.Qt.Key.Key_F1 <= ev.key() <= QtCore.Qt.Key.Key_F35
            seq = QtGui.QKeySequence(ev.keyCombination()).toString()
            if (mods or fkey) and seq in self.sequences:
                ev.ignore()
                return True  # not overridden: the window's shortcut fires
        return False


def pass_window_shortcuts(field, qactions) -> QtCore.QObject:
    """Install :class:`_ShortcutPassThrough` on ``field`` for the shortcuts of ``qactions``."""
    seqs = [sc.toString() for qa in qactions for sc in qa.shortcuts() if not sc.isEmpty()]
    f = _ShortcutPassThrough(seqs, field)
    field.installEventFilter(f)
    return f


def shortcut_rows(actions: Optional[List[Action]] = None) -> List[Tuple[str, str]]:
    actions = ACTIONS if actions is None else actions
    rows = [(QtGui.QKeySequence(a.shortcut).toString(QtGui.QKeySequence.SequenceFormat.NativeText), a.text)
            for a in actions if a.shortcut]
    return rows + EXTRA_KEYS
