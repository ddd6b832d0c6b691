"""`elvis-viewer` entry point: --screenshot after loading, --demo without resources, report span mapping."""

import shutil

import pytest
from PySide6 import QtCore, QtGui
from pydicom.data import get_testdata_file

from elvis_viewer import app as app_mod
from elvis_viewer.report_view import ReportView, SpanMap


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("ELVIS_VIEWER_SETTINGS", str(tmp_path / "settings.ini"))


def test_screenshot_renders_loaded_study_and_exits(qtbot, tmp_path):
    d = tmp_path / "study"
    d.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), d / "ct.dcm")
    out = tmp_path / "shot.png"
    rc = app_mod.main([str(d), "--screenshot", str(out)])
    assert rc == 0
    img = QtGui.QImage(str(out))
    assert not img.isNull() and img.width() >= 600 and img.height() >= 400
    # the image was drawn: the centre region of the picture is not uniformly one colour
    colours = {img.pixelColor(x, y).name() for x in range(img.width() // 3, 2 * img.width() // 3, 17)
               for y in range(img.height() // 3, 2 * img.height() // 3, 17)}
    assert len(colours) > 10


def test_demo_without_resources_shows_message(qtbot, tmp_path, monkeypatch):
    from elvis_viewer.main_window import MainWindow

    monkeypatch.setattr(app_mod, "DEMO_STUDIES", tmp_path / "nope")
    monkeypatch.setattr(app_mod, "DEMO_MODEL", tmp_path / "nope_model")
    win = MainWindow(settings=QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.show()
    args = app_mod.build_parser().parse_args(["--demo"])
    app_mod.open_from_args(win, args)
    assert not win.message_label.isHidden()
    assert "nope" in win.message_label.text() and "Demo resources" in win.message_label.text()
    assert "Demo resources" in win.statusBar().currentMessage()


def test_bad_checkpoint_is_reported(qtbot, tmp_path):
    from elvis_viewer.main_window import MainWindow

    win = MainWindow(settings=QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    (tmp_path / "ckpt").mkdir()
    win.load_checkpoint(str(tmp_path / "ckpt"), 0)
    qtbot.waitUntil(lambda: not win.busy(), timeout=30000)
    assert win.slots[0].engine is None and "ckpt" in win.slots[0].error
    assert "failed" in win.ckpt_label.text()
    assert "Traceback" not in win.message_label.text()


def test_span_map_crlf_and_non_bmp(qtbot):
    text = "FINDINGS:\r\nOpacity 😀 left.\r\nIMPRESSION:\rNone."
    sm = SpanMap(text)
    doc = QtGui.QTextDocument()
    doc.setPlainText(text)
    plain = doc.toPlainText()
    for word in ("Opacity", "left.", "None.", "IMPRESSION:"):
        i = text.index(word)
        q0, q1 = sm.to_qt(i), sm.to_qt(i + len(word))
        cur = QtGui.QTextCursor(doc)
        cur.setPosition(q0)
        cur.setPosition(q1, QtGui.QTextCursor.MoveMode.KeepAnchor)
        assert cur.selectedText() == word
        assert sm.to_py(q0) == i and sm.to_py(q1) == i + len(word)


def test_report_view_click_and_keys(qtbot):
    from elvis_core.io.report import parse_report

    rep = parse_report("FINDINGS:\nA small opacity. Heart normal.\n\nIMPRESSION:\nNo change.\n")
    rv = ReportView()
    qtbot.addWidget(rv)
    rv.show()
    rv.set_report(rep)
    got = []
    rv.phraseSelected.connect(lambda s, e, t: got.append(t))
    rv.setFocus()
    qtbot.keyClick(rv, QtCore.Qt.Key.Key_Down)
    qtbot.keyClick(rv, QtCore.Qt.Key.Key_Down)
    qtbot.keyClick(rv, QtCore.Qt.Key.Key_Down)
    qtbot.keyClick(rv, QtCore.Qt.Key.Key_Up)
    assert got == [rep.sentence_text(s) for s in (rep.sentences[0], rep.sentences[1], rep.sentences[2],
                                                 rep.sentences[1])]
    # headers are styled bold
    cur = QtGui.QTextCursor(rv.document())
    cur.setPosition(rv.spans.to_qt(rep.text.index("FINDINGS")) + 1)
    assert cur.charFormat().fontWeight() == QtGui.QFont.Weight.Bold


def test_next_report_does_not_inherit_the_previous_marks(qtbot):
    """Opening another report after a phrase inside a negated / uncertain scope was selected: the new text must not
    take that scope's underline (the text cursor's format used to spill over the whole next report)."""
    from elvis_core.io.report import parse_report

    first = parse_report("FINDINGS:\nModerate perihilar edema is likely present. No pneumothorax.\n")
    second = parse_report("FINDINGS:\nHeart size is normal.\n\nIMPRESSION:\nStable chest.\n")
    rv = ReportView()
    qtbot.addWidget(rv)
    rv.show()
    for phrase in ("Moderate perihilar edema", "pneumothorax"):
        rv.set_report(first)
        start = first.text.index(phrase)
        rv.select_span(start, start + len(phrase), emit=False)
        rv.set_report(second)
        for word in ("FINDINGS", "Heart size", "normal", "Stable chest"):
            cur = QtGui.QTextCursor(rv.document())
            cur.setPosition(rv.spans.to_qt(second.text.index(word)) + 1)
            fmt = cur.charFormat()
            assert fmt.underlineStyle() == QtGui.QTextCharFormat.UnderlineStyle.NoUnderline, (phrase, word)
            assert fmt.foreground().color().name() != QtGui.QColor(ReportView.NEGATED_COLOR).name()
