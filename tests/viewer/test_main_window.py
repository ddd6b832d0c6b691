"""The main window driven like a user (pytest-qt, offscreen): open a study folder with a corrupt file, see the error
while the rest opens, click a report sentence, wait for the overlay and check where it is drawn, compare mode,
tag inspector privacy, export, settings, and event-loop gaps while a model loads and an image is embedded."""

import os
import time

import numpy as np
import pytest
from PySide6 import QtCore, QtGui, QtWidgets
from pydicom.data import get_testdata_file

from elvis_viewer.main_window import MainWindow

from .helpers import open_folder, write_mimic_study

REPORT = ("FINDINGS:\nThere is a small left basal opacity. The heart size is normal.\n\n"
          "IMPRESSION:\nLeft basal opacity,\npossibly atelectasis.\n")


@pytest.fixture
def study_root(tmp_path):
    """MIMIC-like layout: files/p10/p10000001/s50000001/{ct.dcm, mr.dcm, broken.dcm} + s50000001.txt beside it."""
    sdir = write_mimic_study(tmp_path, REPORT, {"a_ct.dcm": "CT_small.dcm", "b_mr.dcm": "MR_small.dcm"})
    raw = open(get_testdata_file("CT_small.dcm"), "rb").read()
    (sdir / "c_broken.dcm").write_bytes(raw[:300])  # truncated inside the header
    return tmp_path


@pytest.fixture
def win(make_window):
    return make_window(ini="settings.ini")


def _demo_model():
    from elvis_core.model import build_model
    from elvis_core.model.config import preset

    import torch

    torch.manual_seed(0)
    return build_model(preset("demo"))


def _wait_idle(qtbot, win, timeout=30000):
    qtbot.waitUntil(lambda: not win.busy(), timeout=timeout)


def test_open_folder_lists_images_and_the_corrupt_file(qtbot, win, study_root):
    open_folder(qtbot, win, study_root)
    assert win.rad is not None and win.rad_path.endswith("a_ct.dcm")
    # the broken file is listed with its name and a reason, the two good ones are in the browser
    assert any("c_broken.dcm" in msg for _, msg in win.problems)
    assert win.study_browser.problem_list.count() >= 1
    assert sorted(os.path.basename(e.path) for e in win.session.entries) == ["a_ct.dcm", "b_mr.dcm"]
    # the report beside the study folder was found and parsed, sections styled
    assert win.report is not None and "left basal opacity" in win.report_view.toPlainText()
    # thumbnails arrived
    qtbot.waitUntil(lambda: sum(not it.icon().isNull() for it in win.study_browser.list.rows.values()) == 2,
                    timeout=10000)
    assert sum(not it.icon().isNull() for it in win.thumb_strip.rows.values()) == 2
    # no patient name anywhere in the window's visible texts
    texts = " ".join(w.text() for w in win.findChildren(QtWidgets.QLabel))
    texts += win.report_view.toPlainText() + " ".join(v for _, v in win.problems)
    texts += " ".join(win.image_view.corner_text(k) for k in ("tl", "tr", "bl", "br"))
    assert "CompressedSamples" not in texts


def test_open_single_corrupt_file_shows_error_not_crash(qtbot, win, study_root, tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"this is not dicom at all")
    win.open_paths([str(bad)])
    qtbot.waitUntil(lambda: len(win.problems) >= 1, timeout=10000)
    assert "bad.dcm" in win.problems[0][1]
    assert win.message_label.isVisible() and "bad.dcm" in win.message_label.text()
    # and the rest still works
    with qtbot.waitSignal(win.imageShown, timeout=30000):
        win.open_paths([str(study_root / "files/p10/p10000001/s50000001/b_mr.dcm")])
    assert win.rad.shape == (64, 64)



def test_single_opened_files_get_thumbnails_too(qtbot, win, study_root):
    """A file opened on its own (command line, File → Open, drop) has a thumbnail in the list and the strip, as the
    images of a scanned folder do (the strip used to show just a text label), and opening another one keeps the
    thumbnails already there (each rebuild of the lists used to drop them)."""
    sdir = study_root / "files/p10/p10000001/s50000001"
    for name in ("a_ct.dcm", "b_mr.dcm"):
        with qtbot.waitSignal(win.imageShown, timeout=30000):
            win.open_paths([str(sdir / name)])
    qtbot.waitUntil(lambda: sum(not it.icon().isNull() for it in win.thumb_strip.rows.values()) == 2, timeout=10000)
    assert sum(not it.icon().isNull() for it in win.study_browser.list.rows.values()) == 2
    icon = win.thumb_strip.rows[str(sdir / "b_mr.dcm")].icon().pixmap(72, 72).toImage()
    colours = {icon.pixelColor(x, y).name() for x in range(0, icon.width(), 5) for y in range(0, icon.height(), 5)}
    assert len(colours) > 5  # a picture of the image, not a blank square

def test_click_sentence_grounds_and_overlay_covers_image(qtbot, win, study_root):
    open_folder(qtbot, win, study_root)
    win.load_checkpoint(None, 0, factory=_demo_model, name="demo-test")
    qtbot.waitUntil(lambda: win.slots[0].engine is not None, timeout=60000)
    rv = win.report_view
    # click inside the first sentence of FINDINGS
    off = win.report.text.index("small left")
    cur = QtGui.QTextCursor(rv.document())
    cur.setPosition(rv.spans.to_qt(off))
    pos = rv.cursorRect(cur).center()
    with qtbot.waitSignal(win.overlayUpdated, timeout=30000):
        qtbot.mouseClick(rv.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=pos)
    sent = win.report.sentence_at(off)
    assert win.phrase == " ".join(win.report.text[sent.start:sent.end].split())
    iv = win.image_view
    assert iv.overlay_item.isVisible()
    g = iv.gmap
    f = iv.overlay_factor()  # smooth display: the grid upsampled x8 (small), never the full image
    assert iv.overlay_item.image.shape == (g.similarity.shape[0] * f, g.similarity.shape[1] * f)
    assert iv.overlay_item.image.size <= 256 * 256
    assert g.similarity.min() >= -1 and g.similarity.max() <= 1
    # the overlay's mapped bounds cover the whole image (128x128 CT, square: exactly)
    br = iv.overlay_item.mapRectToParent(iv.overlay_item.boundingRect())
    rows, cols = win.rad.shape
    assert br.left() <= 0.01 and br.top() <= 0.01
    assert br.right() >= cols - 0.01 and br.bottom() >= rows - 0.01
    assert br.width() == pytest.approx(cols, rel=0.02)
    assert "ms" in win.latency_label.text() and win.last_latency_s is not None
    assert "demo-test" in win.ckpt_label.text()
    # H hides, H shows
    win.overlay_act.trigger()
    assert not iv.overlay_item.isVisible()
    win.overlay_act.trigger()
    assert iv.overlay_item.isVisible()
    # up/down moves sentence by sentence and grounds the next sentence
    rv.setFocus()
    with qtbot.waitSignal(win.overlayUpdated, timeout=30000):
        qtbot.keyClick(rv, QtCore.Qt.Key.Key_Down)
    assert win.phrase.startswith("The heart size")
    # per-token maps on request
    with qtbot.waitSignal(win.overlayUpdated, timeout=30000):
        win.overlay_panel.tokens.setChecked(True)
    assert win.overlay_panel.token_combo.count() > 1
    win.overlay_panel.token_combo.setCurrentIndex(1)
    assert "token" in iv.gmap.phrase
    # a token map is its own, uncalibrated map: its own peak, on the fixed scale
    g = win.session.slots[0].gmap
    assert iv.gmap.peak == pytest.approx(float(np.max(g.token_maps[0])), abs=1e-6) and iv.gmap.presence is None
    assert iv.overlay_levels() == (-1.0, 1.0) and f"uncalibrated (peak {iv.gmap.peak:.2f})" in iv.corner_text("tl")


def test_new_selection_supersedes_old(qtbot, win, study_root):
    open_folder(qtbot, win, study_root)
    win.load_checkpoint(None, 0, model=_demo_model(), name="m")
    qtbot.waitUntil(lambda: win.slots[0].engine is not None, timeout=60000)
    seen = []
    win.overlayUpdated.connect(lambda k: seen.append(win.image_view.gmap.phrase))
    win.ground_phrase("first phrase")
    win.ground_phrase("second phrase")
    _wait_idle(qtbot, win)
    qtbot.wait(50)
    assert seen and seen[-1] == "second phrase" and "first phrase" not in seen


def test_selecting_text_with_mouse_grounds_exact_span(qtbot, win, study_root):
    open_folder(qtbot, win, study_root)
    rv = win.report_view
    got = []
    rv.phraseSelected.connect(lambda s, e, t: got.append((s, e, t)))
    start = win.report.text.index("Left basal")
    end = win.report.text.index("atelectasis") + len("atelectasis")
    c = QtGui.QTextCursor(rv.document())
    c.setPosition(rv.spans.to_qt(start))
    c.setPosition(rv.spans.to_qt(end), QtGui.QTextCursor.MoveMode.KeepAnchor)
    rv.setTextCursor(c)
    qtbot.mouseRelease(rv.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=QtCore.QPoint(5, 5))
    assert got[-1] == (start, end, win.report.text[start:end])
    assert "\n" in got[-1][2]  # wrapped across a line: exact original text
    assert win.phrase == "Left basal opacity, possibly atelectasis"


def test_annotated_phrases_underlined_and_boxes_drawn(qtbot, win, study_root, tmp_path):
    csv = tmp_path / "ms_cxr.csv"
    rel = "files/p10/p10000001/s50000001/a_ct.dcm"
    csv.write_text("dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
                   f"a_ct,Atelectasis,small left basal opacity,{rel},70,80,30,20,128,128\n"
                   f"a_ct,Atelectasis,small left basal opacity,{rel},10,80,20,20,128,128\n")
    win.load_annotations(str(csv))
    open_folder(qtbot, win, study_root)
    assert win.annot_combo.count() == 2
    off = win.report.text.index("small left basal")
    assert win.report_view.is_underlined(off)
    assert not win.report_view.is_underlined(win.report.text.index("heart"))
    win.annot_combo.setCurrentIndex(1)
    win.annot_combo.activated.emit(1)
    rects = win.image_view.box_items()
    assert sorted((r.rect().x(), r.rect().y()) for r in rects) == [(10, 80), (70, 80)]


def test_preset_combo_sets_window(qtbot, win, study_root):
    open_folder(qtbot, win, study_root)
    names = [win.preset_combo.itemText(i) for i in range(win.preset_combo.count())]
    assert {"Lung", "Mediastinum", "Bone", "Full"} <= set(names)
    i = names.index("Bone")
    win.preset_combo.setCurrentIndex(i)
    win.preset_combo.activated.emit(i)
    bone = [w for w in win.image_view.presets() if w.name == "Bone"][0]
    assert win.image_view.window() == pytest.approx((bone.center, bone.width))
    assert win.compare_view.window() != pytest.approx((bone.center, bone.width))  # not linked outside compare mode


def test_wl_drag_in_window_changes_levels(qtbot, win, study_root):
    open_folder(qtbot, win, study_root)
    iv = win.image_view
    before = tuple(iv.image_item.getLevels())
    win.actions_by_id["view.wl_mode"].setChecked(True)  # W/L mode: left drag
    vp = iv.glw.viewport()
    c = vp.rect().center()
    qtbot.mousePress(vp, QtCore.Qt.MouseButton.LeftButton, pos=c)
    for k in range(1, 6):
        p = c + QtCore.QPoint(12 * k, 8 * k)
        ev = QtGui.QMouseEvent(QtCore.QEvent.Type.MouseMove, QtCore.QPointF(p), QtCore.QPointF(vp.mapToGlobal(p)),
                               QtCore.Qt.MouseButton.NoButton, QtCore.Qt.MouseButton.LeftButton,
                               QtCore.Qt.KeyboardModifier.NoModifier)
        QtCore.QCoreApplication.sendEvent(vp, ev)
    qtbot.mouseRelease(vp, QtCore.Qt.MouseButton.LeftButton, pos=c + QtCore.QPoint(60, 40))
    after = tuple(iv.image_item.getLevels())
    assert after != pytest.approx(before)


def test_compare_mode_two_maps_synchronised(qtbot, win, study_root):
    open_folder(qtbot, win, study_root)
    import torch

    from elvis_core.model import build_model
    from elvis_core.model.config import preset

    torch.manual_seed(1)
    m2 = build_model(preset("demo"))
    win.load_checkpoint(None, 0, model=_demo_model(), name="baseline")
    win.load_checkpoint(None, 1, model=m2, name="elvis")
    win.set_compare_mode(True)
    qtbot.waitUntil(lambda: all(s.engine is not None for s in win.slots), timeout=60000)
    win.ground_phrase("left basal opacity")
    qtbot.waitUntil(lambda: win.image_view.gmap is not None and win.compare_view.gmap is not None, timeout=30000)
    a, b = win.image_view, win.compare_view
    assert b.isVisible()
    assert not np.allclose(a.gmap.similarity, b.gmap.similarity)  # different weights, different maps
    a.set_window(10.0, 99.0)
    assert b.window() == pytest.approx((10.0, 99.0))
    a.view_box.setRange(QtCore.QRectF(20, 20, 40, 40), padding=0)
    assert b.view_box.viewRect().center().x() == pytest.approx(a.view_box.viewRect().center().x(), abs=1e-3)
    assert "baseline" in a.corner_text("tl") and "elvis" in b.corner_text("tl")
    # in-memory models are uncalibrated: "auto" keeps both maps on the fixed [-1, 1] scale (never stretched)
    assert a.gmap.presence is None and a.overlay_levels() == b.overlay_levels() == (-1.0, 1.0)
    assert "uncalibrated (peak" in a.corner_text("tl") and "uncalibrated (peak" in b.corner_text("tl")
    # stretched on request: one shared scale (±max over both maps) by default; split on request
    win.overlay_panel.change(range="stretch")
    assert a.overlay_levels() == b.overlay_levels() == win.session.shared_levels() != (-1.0, 1.0)
    win.overlay_panel.change(shared_scale=False)
    assert a.overlay_levels() != b.overlay_levels()


def test_tag_inspector_masks_identifiers_unless_toggled(qtbot, win, study_root):
    open_folder(qtbot, win, study_root)

    def values(dlg):
        t = dlg.table
        return [t.item(i, 3).text() for i in range(t.rowCount())]

    def corners():
        return " ".join(win.image_view.corner_text(k) for k in ("tl", "tr", "bl", "br"))

    dlg = win.show_tag_inspector()
    qtbot.addWidget(dlg)
    assert not any("CompressedSamples" in v for v in values(dlg))
    assert "CompressedSamples" not in corners()
    win.privacy_act.setChecked(True)
    dlg2 = win.show_tag_inspector()
    qtbot.addWidget(dlg2)
    assert any("CompressedSamples" in v for v in values(dlg2))
    assert "CompressedSamples^CT1" in corners()  # shown in the corner only with the toggle on
    win.privacy_act.setChecked(False)
    assert "CompressedSamples" not in corners()
    assert win.settings.value("reveal_identifiers") is None  # never persisted


def test_export_is_what_the_screen_shows(qtbot, win, study_root, tmp_path):
    """Export = the visible views (both in compare mode) with a header and footer; Unicode text; default name from
    the study and the phrase."""
    import cv2

    from elvis_viewer.export import default_name

    open_folder(qtbot, win, study_root)
    win.load_checkpoint(None, 0, model=_demo_model(), name="m")
    qtbot.waitUntil(lambda: win.slots[0].engine is not None, timeout=60000)
    with qtbot.waitSignal(win.overlayUpdated, timeout=30000):
        win.ground_phrase("no pneumothorax — épanchement")
    one = cv2.imread(str(win.export_png(str(tmp_path / "one.png"))))
    vw = win.image_view.grab_view()
    assert one.shape[1] == vw.width() and one.shape[0] > vw.height()  # the view as drawn + header/footer bands
    # the typed phrase is negated: the header carries the red "NEGATED" line (#ff6e6e; BGR in OpenCV)
    head = one[:one.shape[0] - vw.height()].astype(int)
    red = (head[..., 2] > 200) & (head[..., 1] < 150) & (head[..., 0] < 150)
    assert red.sum() > 50
    # and the image part is the view pixel for pixel (what the screen shows), between the header and the footer
    import numpy as np

    rgb = vw.convertToFormat(vw.Format.Format_RGB888)
    view = np.ndarray((rgb.height(), rgb.bytesPerLine()), np.uint8, rgb.constBits())[:, :3 * rgb.width()]
    view = view.reshape(rgb.height(), rgb.width(), 3)[..., ::-1]  # RGB -> BGR as cv2 reads it
    h = vw.height()
    assert any(np.array_equal(one[r:r + h], view) for r in range(1, one.shape[0] - h))
    # compare mode: both views side by side in one picture
    win.load_checkpoint(None, 1, model=_demo_model(), name="m2")
    win.set_compare_mode(True)
    qtbot.waitUntil(lambda: win.compare_view.gmap is not None, timeout=60000)
    two = cv2.imread(str(win.export_png(str(tmp_path / "two.png"))))
    widths = sum(v.grab_view().width() for v in win.views())
    assert two.shape[1] == widths + 4
    assert default_name("s50000001", "Left basal opacity, possibly") == "s50000001_Left-basal-opacity-possibly.png"
    assert default_name("s5", "épanchement pleural") == "s5_épanchement-pleural.png"


def test_settings_recent_and_geometry_restored(qtbot, study_root, tmp_path):
    ini = str(tmp_path / "s.ini")
    s1 = QtCore.QSettings(ini, QtCore.QSettings.Format.IniFormat)
    w1 = MainWindow(settings=s1)
    qtbot.addWidget(w1)
    w1.resize(761, 611)  # above the panels minimum size, within the ~800 px offscreen screen
    w1.show()
    w1.open_paths([str(study_root / "files/p10/p10000001/s50000001/b_mr.dcm")])
    _wait_idle(qtbot, w1)
    saved = w1.size()
    assert saved.height() == 611
    w1.close()
    s2 = QtCore.QSettings(ini, QtCore.QSettings.Format.IniFormat)
    w2 = MainWindow(settings=s2)
    qtbot.addWidget(w2)
    assert w2.recent()[0].endswith("b_mr.dcm")
    # not the 1500x950 default (the offscreen screen is ~800 px wide, so allow the clamp of a few px)
    assert w2.height() == saved.height() and abs(w2.width() - saved.width()) <= 10



def test_closing_on_the_review_tab_keeps_the_viewer_panels(qtbot, tmp_path):
    """The Review tab hides the Viewer's panels and toolbar; closing the window there must not save that as the
    Viewer's layout (the next start showed no studies, no report and no toolbar)."""
    ini = str(tmp_path / "s.ini")
    w1 = MainWindow(settings=QtCore.QSettings(ini, QtCore.QSettings.Format.IniFormat))
    qtbot.addWidget(w1)
    w1.show()
    qtbot.waitExposed(w1)
    if w1.review_view is None:
        pytest.skip("elvis_viewer.review is not importable in this build")
    w1.overlay_dock.hide()  # a panel the user closed on purpose stays closed
    w1.tabs.setCurrentWidget(w1.review_view)
    assert not w1.study_dock.isVisible() and not w1.toolbar.isVisible()
    w1.close()
    w2 = MainWindow(settings=QtCore.QSettings(ini, QtCore.QSettings.Format.IniFormat))
    qtbot.addWidget(w2)
    w2.show()
    qtbot.waitExposed(w2)
    assert w2.tabs.currentWidget() is w2.viewer_page
    assert w2.study_dock.isVisible() and w2.report_dock.isVisible() and w2.toolbar.isVisible()
    assert not w2.overlay_dock.isVisible()

def test_shortcut_sheet(qtbot, win):
    dlg = win.show_shortcuts()
    qtbot.addWidget(dlg)
    lab = dlg.findChild(QtWidgets.QLabel)
    # built from the actions table: every action with a shortcut is listed with it
    assert "Show overlay" in lab.text() and "Next study" in lab.text() and "Cardiothoracic ratio" in lab.text()


def test_no_gui_stall_while_model_loads_and_image_embeds(qtbot, win, study_root, tmp_path):
    """Measure event-loop gaps with a 5 ms QTimer while a checkpoint directory loads (safetensors + tokenizer) and
    an image is embedded and grounded, all in workers."""
    open_folder(qtbot, win, study_root)
    import torch

    from elvis_core.model import build_model
    from elvis_core.model.checkpoint import save_checkpoint
    from elvis_core.model.config import preset

    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(preset("demo")), tmp_path / "ckpt")

    import gc

    gc.collect()  # collect the garbage of earlier tests now, so a full collection cannot land inside the measurement
    stamps = []
    timer = QtCore.QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start()
    t0 = time.perf_counter()
    win.load_checkpoint(str(ckpt), 0)
    qtbot.waitUntil(lambda: win.slots[0].engine is not None, timeout=60000)
    with qtbot.waitSignal(win.overlayUpdated, timeout=30000):
        win.ground_phrase("left basal opacity")  # embeds the image (cache miss) then grounds
    _wait_idle(qtbot, win)
    timer.stop()
    assert win.slots[0].engine.image_encode_count >= 1
    gaps = np.diff([t0] + stamps)
    assert len(stamps) > 5
    assert gaps.max() < 0.100, f"GUI thread stalled {gaps.max() * 1000:.0f} ms"


def test_scan_progress_and_cancel(qtbot, win, monkeypatch):
    """A long scan shows progress and stops when the user clicks Cancel (what it found so far stays)."""
    import elvis_viewer.session as mw

    def slow_scan(root, progress=None, cancel=None):
        for k in range(10000):
            if cancel():
                return [], [("x.dcm", "x.dcm: not DICOM")], True
            progress(k, 10000)
            time.sleep(0.005)
        return [], [], False

    monkeypatch.setattr(mw, "scan_folder", slow_scan)
    with qtbot.waitSignal(win.scanFinished, timeout=20000):
        win.open_folder("/some/folder")
        assert win.progress.isVisible() and win.cancel_button.isVisible()
        qtbot.waitUntil(lambda: win.progress.value() > 3, timeout=10000)
        qtbot.mouseClick(win.cancel_button, QtCore.Qt.MouseButton.LeftButton)
    assert not win.progress.isVisible()
    assert "cancelled" in win.statusBar().currentMessage()
    assert win.problems == [("x.dcm", "x.dcm: not DICOM")]


def test_drop_files_opens_them(qtbot, win, study_root):
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(study_root / "files/p10/p10000001/s50000001/b_mr.dcm"))])
    pos = QtCore.QPointF(win.rect().center())
    with qtbot.waitSignal(win.imageShown, timeout=30000):
        ev = QtGui.QDropEvent(pos, QtCore.Qt.DropAction.CopyAction, mime, QtCore.Qt.MouseButton.LeftButton,
                              QtCore.Qt.KeyboardModifier.NoModifier)
        win.dropEvent(ev)
    assert win.rad_path.endswith("b_mr.dcm") and win.rad.shape == (64, 64)
