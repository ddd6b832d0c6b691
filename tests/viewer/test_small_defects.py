"""The smaller defects of issue 20 (item 8), each driven as a user would: shortcuts while typing a phrase, a typed
negated phrase, a click on an underlined phrase, report Up/Down, the CTR tool, measurement labels, "fade near 0",
the preset box after a W/L drag, orientation markers, the status bar after a read, truncated files at scan time,
and ``--review --screenshot`` without any dialog."""

import shutil

import numpy as np
import pytest
from PySide6 import QtCore, QtGui, QtWidgets
from pydicom.data import get_testdata_file

from .helpers import open_folder, shown_image_view, write_mimic_study

REPORT = ("FINDINGS:\nThere is a small left basal opacity. ___. The heart size is normal.\n\n"
          "IMPRESSION:\nLeft basal opacity,\npossibly atelectasis.\n")


@pytest.fixture
def study(tmp_path):
    """MIMIC layout: files/p10/p10000001/s50000001/a_ct.dcm + the report + an annotation CSV for one phrase."""
    write_mimic_study(tmp_path, REPORT, {"a_ct.dcm": "CT_small.dcm"})
    csv = tmp_path / "ms_cxr.csv"
    csv.write_text("dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
                   "a_ct,Consolidation,small left basal opacity,files/p10/p10000001/s50000001/a_ct.dcm,"
                   "70,60,30,40,128,128\n")
    return tmp_path


@pytest.fixture
def win(make_window):
    return make_window()


def test_window_shortcuts_work_while_typing_a_phrase(qtbot, win, study):
    open_folder(qtbot, win, study)
    called = []
    win.export_dialog = lambda: called.append("export")
    win.show_tag_inspector = lambda: called.append("tags")
    win.activateWindow()
    win.phrase_edit.setFocus()
    qtbot.waitUntil(lambda: win.phrase_edit.hasFocus(), timeout=5000)
    qtbot.keyClicks(win.phrase_edit, "r1")  # plain keys are the field's: no ruler, no 1:1
    assert win.phrase_edit.text() == "r1" and not win.image_view.measure.tools
    qtbot.keyClick(win.phrase_edit, QtCore.Qt.Key.Key_E, QtCore.Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(win.phrase_edit, QtCore.Qt.Key.Key_T, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert called == ["export", "tags"]


class _EmacsLineEdit(QtWidgets.QLineEdit):
    """A line edit as Qt's X11 keyboard scheme makes it: Ctrl+E / Ctrl+K are end-of-line / kill-line, claimed by
    accepting the ShortcutOverride (offscreen Qt uses another scheme, so the real field does not show it here)."""

    def event(self, ev):
        if ev.type() == QtCore.QEvent.Type.ShortcutOverride and \
                ev.modifiers() == QtCore.Qt.KeyboardModifier.ControlModifier and \
                ev.key() in (QtCore.Qt.Key.Key_E, QtCore.Qt.Key.Key_K):
            ev.accept()
            return True
        return super().event(ev)


@pytest.mark.parametrize("passed", [False, True])
def test_a_field_that_claims_ctrl_e_lets_the_window_shortcut_through(qtbot, passed):
    from elvis_viewer.actions import pass_window_shortcuts

    w = QtWidgets.QMainWindow()
    qtbot.addWidget(w)
    field = _EmacsLineEdit()
    w.setCentralWidget(field)
    fired = []
    act = QtGui.QAction("Export", w)
    act.setShortcut(QtGui.QKeySequence("Ctrl+E"))
    act.triggered.connect(lambda: fired.append(1))
    w.addAction(act)
    if passed:
        pass_window_shortcuts(field, [act])
    w.show()
    qtbot.waitExposed(w)
    w.activateWindow()
    field.setFocus()
    qtbot.waitUntil(field.hasFocus, timeout=5000)
    qtbot.keyClick(field, QtCore.Qt.Key.Key_E, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert fired == ([1] if passed else [])  # without the pass-through the field swallows Ctrl+E


def test_typed_negated_phrase_says_typed(qtbot, win, study):
    open_folder(qtbot, win, study)
    win.phrase_edit.setText("no pleural effusion")  # not in the report
    win.phrase_edit.returnPressed.emit()
    label = win.assertion_label.text()
    assert "NEGATED (typed" in label and "in the report" not in label
    win.report_view.select_span(*win.report.find("left basal opacity"))  # in the report: it says so
    assert "typed" not in win.assertion_label.text()


def _click_at(qtbot, rv, offset):
    rect = rv.cursorRect(_cursor_at(rv, offset))
    qtbot.mouseClick(rv.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=rect.center() + QtCore.QPoint(2, 0))


def _cursor_at(rv, offset):
    c = QtGui.QTextCursor(rv.document())
    c.setPosition(rv.spans.to_qt(offset))
    return c


def test_click_on_an_underlined_phrase_shows_its_boxes(qtbot, win, study):
    win.load_annotations(str(study / "ms_cxr.csv"), images_root=str(study))
    open_folder(qtbot, win, study)
    qtbot.waitUntil(lambda: bool(win.report_view.annotated), timeout=10000)
    a, b, phrase = win.report_view.annotated[0]
    assert win.report_view.is_underlined(a + 3)
    _click_at(qtbot, win.report_view, a + 3)
    assert win.session.phrase.text == "small left basal opacity"
    assert len(win.current_boxes) == 1  # its MS-CXR box is drawn


def test_report_up_down_steps_from_the_current_phrase_and_skips_placeholders(qtbot):
    from elvis_core.io.report import parse_report
    from elvis_viewer.report_view import ReportView

    rep = parse_report(REPORT)
    rv = ReportView()
    qtbot.addWidget(rv)
    rv.show()
    rv.set_report(rep)
    got = []
    rv.phraseSelected.connect(lambda s, e, t: got.append(" ".join(t.split())))
    rv.setFocus()
    rv.select_span(*rep.find("left basal opacity"))  # a phrase inside the first sentence
    qtbot.keyClick(rv, QtCore.Qt.Key.Key_Down)  # the next sentence, not the placeholder "___."
    qtbot.keyClick(rv, QtCore.Qt.Key.Key_Up)
    qtbot.keyClick(rv, QtCore.Qt.Key.Key_Down)
    qtbot.keyClick(rv, QtCore.Qt.Key.Key_Down)
    assert got[1:] == ["The heart size is normal.", "There is a small left basal opacity.",
                       "The heart size is normal.", "Left basal opacity, possibly atelectasis."]
    assert not any("___" in g for g in got)


def test_ctr_shows_no_number_until_both_lines_are_placed(qtbot, win, study):
    open_folder(qtbot, win, study)
    tool = win.add_measurement("ctr")
    txt = tool.label.textItem.toPlainText()
    assert "CTR" in txt and not any(ch.isdigit() for ch in txt) and tool.value()[0] is None
    tool.rois[0].sigRegionChangeFinished.emit(tool.rois[0])  # the user dropped the heart line
    assert tool.value()[0] is None and not any(ch.isdigit() for ch in tool.label.textItem.toPlainText())
    tool.rois[1].sigRegionChangeFinished.emit(tool.rois[1])  # and the thorax line
    assert tool.value()[0] is not None and "CTR 0." in tool.label.textItem.toPlainText()


def test_measurement_labels_never_overlap(qtbot, win, study):
    open_folder(qtbot, win, study)
    tools = [win.add_measurement("ruler") for _ in range(3)] + [win.add_measurement("angle")]
    for t in tools[:3]:
        t.set_points([(30, 64), (90, 64)])  # three rulers on the same line: same label place
    tools[3].set_points([(40, 60), (60, 64), (80, 60)])
    qtbot.wait(50)
    rects = [t.label.sceneBoundingRect() for t in tools]
    for i in range(len(rects)):
        for j in range(i + 1, len(rects)):
            assert not rects[i].intersects(rects[j]), (i, j, rects[i], rects[j])
    win.image_view.zoom(0.5)  # after a zoom too
    qtbot.wait(50)
    rects = [t.label.sceneBoundingRect() for t in tools]
    assert not any(rects[i].intersects(rects[j]) for i in range(4) for j in range(i + 1, 4))


def _grab(view):
    img = view.grab_view().convertToFormat(QtGui.QImage.Format.Format_RGB888)
    a = np.ndarray((img.height(), img.bytesPerLine()), np.uint8, img.constBits())[:, :3 * img.width()]
    return a.reshape(img.height(), img.width(), 3).astype(int)


def test_fade_leaves_the_film_untouched_where_the_map_is_not_positive(qtbot):
    from elvis_core.grounding.types import GroundingMap
    from elvis_core.io.radiograph import Radiograph, Window

    v = shown_image_view(qtbot, (400, 400))
    yy, xx = np.mgrid[0:200, 0:200]
    v.set_radiograph(Radiograph(pixels=(xx + yy).astype(np.float32), windows=[Window(200.0, 400.0, "file")],
                                meta={"ViewPosition": "PA"}))
    sim = np.full((4, 4), -0.4, np.float32)
    sim[:, 2:] = 0.6  # right half positive, left half negative
    grid_to_image = np.array([[50.0, 0, 0], [0, 50.0, 0], [0, 0, 1]])
    v.set_overlay_smooth(False)
    v.set_overlay_fade(True)
    v.set_overlay_opacity(1.0)
    v.set_overlay(GroundingMap(similarity=sim, grid_to_image=grid_to_image, image_shape=(200, 200)))
    v.fit()
    qtbot.wait(300)
    v.fit()
    qtbot.wait(100)
    on = _grab(v)
    v.set_overlay_opacity(0.0)  # the same view (colour bar included) with the overlay transparent
    qtbot.wait(50)
    off = _grab(v)
    # image columns 10..90 (map < 0) and 110..190 (map > 0), in view pixels
    to_px = lambda x, y: v.view_box.mapViewToScene(QtCore.QPointF(x, y))  # noqa: E731
    (l0, l1), (r0, r1) = [(int(to_px(a, 100).x()), int(to_px(b, 100).x())) for a, b in ((10, 90), (110, 190))]
    top, bot = int(to_px(0, 20).y()), int(to_px(0, 180).y())
    assert np.abs(on[top:bot, l0:l1] - off[top:bot, l0:l1]).max() <= 2  # no veil where the map is <= 0
    assert np.abs(on[top:bot, r0:r1] - off[top:bot, r0:r1]).mean() > 30  # the positive half is coloured


def test_preset_box_says_custom_after_a_wl_drag(qtbot, win, study):
    open_folder(qtbot, win, study)
    box = win.preset_combo
    names = [box.itemText(i) for i in range(box.count())]
    assert names and box.currentText() in names
    win.image_view.view_box.sigWindowDrag.emit(40.0, -20.0)
    assert box.currentText() == "Custom"
    win.apply_preset(names[-1])
    assert box.currentText() == names[-1]


def test_orientation_markers_sit_at_the_image_edge(qtbot):
    from elvis_core.io.radiograph import Radiograph, Window

    v = shown_image_view(qtbot, (700, 400))
    v.set_radiograph(Radiograph(pixels=np.zeros((300, 100), np.float32), windows=[Window(0.0, 1.0, "f")],
                                meta={"ViewPosition": "PA"}))
    v.fit()
    qtbot.wait(50)
    img = v.view_box.childGroup.mapRectToParent(QtCore.QRectF(0, 0, 100, 300))
    assert img.left() > 150  # a tall image in a wide view: grey on both sides
    left, right = v._markers["left"], v._markers["right"]
    assert left.text() and img.left() <= left.pos().x() <= img.left() + 20
    assert img.right() - 20 - right.boundingRect().width() <= right.pos().x() <= img.right()


def test_status_bar_clears_when_a_read_ends(qtbot, win, study):
    open_folder(qtbot, win, study)
    win.statusBar().clearMessage()
    shutil.copy(get_testdata_file("MR_small.dcm"), study / "mr.dcm")
    with qtbot.waitSignal(win.imageShown, timeout=30000):
        win.open_file(str(study / "mr.dcm"))
    assert not win.statusBar().currentMessage().startswith("Reading")


def test_truncated_files_are_listed_in_problems_at_scan(qtbot, win, tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), d / "good.dcm")
    raw = open(get_testdata_file("MR_small.dcm"), "rb").read()
    (d / "cut.dcm").write_bytes(raw[:-2000])  # header intact, pixel data cut short
    open_folder(qtbot, win, d)
    assert [e.path for e in win.session.entries] == [str(d / "good.dcm")]
    assert any("cut.dcm" in m and "truncated" in m for _p, m in win.problems)


def test_review_screenshot_never_waits_on_a_dialog(qtbot, tmp_path, monkeypatch):
    from elvis_viewer import app as app_mod
    from elvis_viewer.review import view as review_view

    shutil.copytree(app_mod.DEMO_STUDIES, tmp_path / "demo")
    csv = tmp_path / "demo" / "ms_cxr.csv"
    lines = csv.read_text().splitlines()  # boxes drawn for another image size: the rescale question
    hdr = lines[0].split(",")
    iw, ih = hdr.index("image_width"), hdr.index("image_height")
    rows = [ln.split(",") for ln in lines[1:]]
    for r in rows:
        r[iw], r[ih] = str(int(r[iw]) * 2), str(int(r[ih]) * 2)
    csv.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    monkeypatch.setenv("ELVIS_VIEWER_SETTINGS", str(tmp_path / "empty.ini"))  # no reviewer name stored
    for name in ("ask_reviewer_name", "ask_rescale", "ask_open_read_only"):
        monkeypatch.setattr(review_view, name, lambda *a, _n=name, **k: pytest.fail(f"{_n}: a dialog waited"))
    monkeypatch.setattr(QtWidgets.QInputDialog, "getText", lambda *a, **k: pytest.fail("input dialog"))
    out = tmp_path / "review.png"
    rc = app_mod.main(["--review", "--annotations", str(csv), "--images", str(tmp_path / "demo"),
                       "--screenshot", str(out), "--timeout", "60"])
    assert rc == 0 and out.exists()


def test_checkable_menu_items_show_their_state(qtbot):
    """An unchecked checkable entry draws an empty box (Fusion alone draws nothing: it looked like a command)."""
    from elvis_viewer.app import menu_check_style

    style = menu_check_style()
    m = QtWidgets.QMenu()
    m.setStyle(style)
    qtbot.addWidget(m)
    acts = []
    for text, checked in (("Isolines", False), ("Plain command", None), ("Show overlay", True)):
        a = m.addAction(text)
        if checked is not None:
            a.setCheckable(True)
            a.setChecked(checked)
        acts.append(a)
    m.popup(QtCore.QPoint(0, 0))
    qtbot.waitExposed(m)
    img = m.grab().toImage()

    def ink(a):  # pixels of the check column of an entry that differ from the menu's background
        r = m.actionGeometry(a)
        bg = QtGui.QColor(img.pixel(r.right() - 2, r.center().y())).lightness()
        return sum(abs(QtGui.QColor(img.pixel(x, y)).lightness() - bg) > 40
                   for x in range(r.left() + 4, r.left() + 22) for y in range(r.top(), r.bottom()))
    off, plain, on = (ink(a) for a in acts)
    assert plain == 0 and off > 20 and on > off  # a box when off, a box with its check when on
