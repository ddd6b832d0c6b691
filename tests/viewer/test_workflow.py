"""The reshaped viewer as a user meets it: panels per tab, keyboard browsing, report marks, the provenance banner,
measurements, the empty-window hint."""

import os

import pytest
from PySide6 import QtCore, QtWidgets

from .helpers import fake_save_dialog, open_folder
from .test_session import _model, two_studies  # noqa: F401  (fixture)


@pytest.fixture
def win(make_window):
    return make_window(size=(1280, 720))


def test_empty_window_tells_how_to_open(win):
    assert win.view_stack.currentWidget() is win.empty_hint
    assert "Open file" in win.empty_hint.text() and "drop" in win.empty_hint.text()


def test_each_tab_has_its_own_panel_layout(qtbot, win, two_studies):
    if win.review_view is None:
        pytest.skip("review tab not available")
    open_folder(qtbot, win, two_studies)
    assert win.study_dock.isVisible() and win.report_dock.isVisible() and win.overlay_dock.isVisible()
    win.overlay_dock.toggleViewAction().trigger()  # View → Panels → Overlay off
    assert not win.overlay_dock.isVisible()
    win.tabs.setCurrentWidget(win.review_view)
    assert not any(d.isVisible() for d in (win.study_dock, win.report_dock, win.overlay_dock))
    qtbot.waitUntil(lambda: win.review_view.width() > 0.9 * win.width(), timeout=3000)  # the whole window
    win.tabs.setCurrentWidget(win.viewer_page)
    assert win.study_dock.isVisible() and win.report_dock.isVisible() and not win.overlay_dock.isVisible()
    # every panel is in View → Panels
    names = [a.text() for a in win.menus["View"].findChildren(QtWidgets.QMenu)[0].actions()]
    assert {"Studies", "Report", "Overlay", "Thumbnail strip"} <= set(names)


def test_keyboard_browsing(qtbot, win, two_studies):
    open_folder(qtbot, win, two_studies)
    entries = win.session.entries
    lst = win.study_browser.list
    lst.setFocus()
    with qtbot.waitSignal(win.imageShown, timeout=10000):
        qtbot.keyClick(lst, QtCore.Qt.Key.Key_Down)  # Down in the study list opens the next image
    assert win.rad_path == entries[1].path
    assert win.thumb_strip.currentItem().data(QtCore.Qt.ItemDataRole.UserRole) == entries[1].path
    with qtbot.waitSignal(win.imageShown, timeout=10000):
        win.actions_by_id["go.prev_image"].trigger()
    assert win.rad_path == entries[0].path
    with qtbot.waitSignal(win.imageShown, timeout=10000):
        win.actions_by_id["go.next_study"].trigger()  # PageDown
    assert win.session.entry(win.rad_path).study_key != entries[0].study_key
    # the strip lists every image once, and the study list has one header row per study
    assert win.thumb_strip.count() == len(entries) == 3
    assert lst.count() == len(entries) + 2


def test_negation_marks_in_report_caption_and_view(qtbot, win, two_studies):
    open_folder(qtbot, win, two_studies)
    rv = win.report_view
    kinds = {(m.kind, m.cue) for m in rv.marks}
    assert ("negated", "No") in kinds and ("uncertain", "possibly") in kinds
    win.load_checkpoint(None, 0, model=_model(), name="m")
    qtbot.waitUntil(lambda: win.slots[0].engine is not None, timeout=60000)
    span = win.report.find("No pneumothorax.")
    with qtbot.waitSignal(win.overlayUpdated, timeout=30000):
        rv.select_span(*span)
    assert "NEGATED" in win.assertion_label.text()
    assert "NEGATED" in win.image_view.corner_text("tl")
    with qtbot.waitSignal(win.overlayUpdated, timeout=30000):
        win.phrase_edit.setText("left basal opacity")
        win.phrase_edit.returnPressed.emit()
    assert win.assertion_label.text() == "" and "NEGATED" not in win.image_view.corner_text("tl")
    assert rv.current is None  # the typed phrase replaced the old highlight


def test_provenance_banner(qtbot, win, two_studies):
    open_folder(qtbot, win, two_studies)
    win.load_checkpoint(None, 0, model=_model({"demo_build": {"phantom": {"seed": 7}}}), name="demo_model")
    qtbot.waitUntil(lambda: win.slots[0].engine is not None, timeout=60000)
    assert win.provenance_label.isVisible() and "phantom" in win.provenance_label.text()


def test_measurement_tools(qtbot, win, two_studies):
    open_folder(qtbot, win, two_studies)
    win.actions_by_id["tools.ruler"].trigger()
    win.actions_by_id["tools.ruler"].trigger()
    win.actions_by_id["tools.angle"].trigger()
    win.actions_by_id["tools.ctr"].trigger()
    tools = win.image_view.measure.tools
    assert [t.kind for t in tools] == ["ruler", "ruler", "angle", "ctr"]
    tools[0].set_points([(0, 0), (30, 40)])
    v, unit = tools[0].value()
    sp = win.rad.pixel_spacing
    assert unit == ("mm" if sp else "px") and v > 0
    tools[2].set_points([(10, 0), (0, 0), (0, 10)])
    assert tools[2].value()[0] == pytest.approx(90.0, abs=0.5 if sp and sp[0] != sp[1] else 1e-6)
    tools[3].set_points([(40, 60), (80, 60), (10, 70), (110, 70)])
    assert tools[3].value()[0] == pytest.approx(0.4) and "CTR 0.40" in tools[3].label.textItem.toPlainText()
    win.actions_by_id["tools.clear"].trigger()
    assert not win.image_view.measure.tools


def test_export_dialog_default_name(qtbot, win, two_studies, monkeypatch):
    open_folder(qtbot, win, two_studies)
    win.session.ground_phrase("Left basal opacity")
    seen = fake_save_dialog(monkeypatch)
    win.export_dialog()
    study = os.path.basename(win.session.entry(win.rad_path).study_key)
    assert seen["name"] == f"{study}_Left-basal-opacity.png"
