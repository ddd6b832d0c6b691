"""File names named by DICOM UIDs (a PACS cache: ``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``) go through the viewer's
one masking rule on every surface: window title, "Loading FILE …", "cannot display FILE: reason", banners, status
bar, study list, thumbnails, Problems, File → Open recent and the Review tab; each is drawn again when View → Show
patient identifiers flips. And the Review tab with nothing loaded says how to start a review."""

import shutil

import pydicom
import pytest
from PySide6 import QtWidgets
from pydicom.data import get_testdata_file

from elvis_viewer.display_record import FAILED, LOADING
from elvis_viewer.review.dialogs import SETTINGS_KEY

FOLDER_UID = "1.2.826.0.1.3680043.8.498.111"
GOOD_UID = "1.2.826.0.1.3680043.8.498.123456789"
BAD_UID = "1.2.826.0.1.3680043.8.498.987654321"


@pytest.fixture
def uid_study(tmp_path):
    """RG1_UNCI as ``<UID>/<UID>.dcm`` and a truncated copy named by another UID, beside it."""
    src = get_testdata_file("RG1_UNCI.dcm")
    d = tmp_path / "cache" / FOLDER_UID
    d.mkdir(parents=True)
    good, bad = d / f"{GOOD_UID}.dcm", d / f"{BAD_UID}.dcm"
    shutil.copy(src, good)
    raw = open(src, "rb").read()
    bad.write_bytes(raw[: len(raw) // 2])
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    uids = [FOLDER_UID, GOOD_UID, BAD_UID, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)]
    return tmp_path / "cache", good, bad, uids


@pytest.fixture
def win(make_window):
    return make_window(values={SETTINGS_KEY: "Dr Privacy"})  # the Review tab asks for no name


def _surfaces(win) -> dict:
    """Every text of the window that can hold a file name."""
    out = {"title": win.windowTitle(), "pane": win.display_binding.label.text(), "report": win.report_title.text(),
           "banner": win.message_label.text() if win.message_label.isVisible() else "",
           "status": win.statusBar().currentMessage(),
           "recent": "\n".join(a.text() for a in win.recent_menu.actions())}
    for name, lst in (("list", win.study_browser.list), ("thumbs", win.thumb_strip),
                      ("problems", win.study_browser.problem_list)):
        out[name] = "\n".join(lst.item(i).text() + "\n" + lst.item(i).toolTip() for i in range(lst.count()))
    return out


def _leaks(win, uids) -> dict:
    return {k: v for k, v in _surfaces(win).items() if any(u in v for u in uids)}


def test_every_surface_masks_uid_file_names_until_the_toggle(qtbot, win, uid_study):
    root, good, bad, uids = uid_study
    with qtbot.waitSignal(win.imageShown, timeout=30000):
        win.open_folder(str(root / FOLDER_UID))  # the study's folder, named by a UID like a PACS cache's
        assert "Scanning" in win.statusBar().currentMessage()  # "Scanning FOLDER …": the folder is a UID
        assert not _leaks(win, uids)
    qtbot.waitUntil(lambda: not win.busy(), timeout=30000)
    assert not _leaks(win, uids), _leaks(win, uids)
    assert "uid~" in win.windowTitle() and "uid~" in _surfaces(win)["list"] and "uid~" in _surfaces(win)["recent"]

    # the next item is being read: "Loading FILE …" on the pane, the title, "Reading FILE …" in the status bar
    win.select_image(str(bad))
    assert win.session.display.state == LOADING
    s = _surfaces(win)
    assert s["pane"].startswith("Loading uid~") and "loading uid~" in s["title"] and "uid~" in s["status"]
    assert not _leaks(win, uids), _leaks(win, uids)
    win.privacy_act.setChecked(True)
    s = _surfaces(win)
    assert f"Loading {BAD_UID}.dcm" in s["pane"] and BAD_UID in s["title"] and BAD_UID in s["status"]
    win.privacy_act.setChecked(False)
    assert not _leaks(win, uids), _leaks(win, uids)

    # the read fails: "cannot display FILE: reason" on the pane, the title, banner, status bar and Problems
    qtbot.waitUntil(lambda: win.session.display.state == FAILED and not win.busy(), timeout=30000)
    s = _surfaces(win)
    assert s["pane"].startswith("cannot display uid~") and "cannot display uid~" in s["title"]
    assert "uid~" in s["banner"] and "uid~" in s["status"] and "uid~" in s["problems"]
    assert not _leaks(win, uids), _leaks(win, uids)

    win.privacy_act.setChecked(True)  # every surface shows the names as they are
    s = _surfaces(win)
    for k in ("pane", "title", "banner", "status", "problems"):
        assert f"{BAD_UID}.dcm" in s[k], k
    assert f"{GOOD_UID}.dcm" in s["list"] and f"{GOOD_UID}.dcm" in s["thumbs"] and FOLDER_UID in s["recent"]
    assert uids[3] in s["list"]  # the study header: its Study Instance UID
    assert "uid~" not in "".join(s.values())

    win.privacy_act.setChecked(False)  # and hidden again
    assert not _leaks(win, uids), _leaks(win, uids)
    assert _surfaces(win)["pane"].startswith("cannot display uid~")


def test_review_tab_masks_uid_file_names(qtbot, win, uid_study, tmp_path):
    root, good, bad, uids = uid_study
    ann = tmp_path / "review.csv"
    rel = f"{FOLDER_UID}/{BAD_UID}.dcm"
    ann.write_text("dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
                   f"{BAD_UID},Pneumothorax,small right pneumothorax,{rel},100,100,200,200,1841,1955\n"
                   f"{GOOD_UID},Edema,mild edema,{FOLDER_UID}/1.2.826.0.1.3680043.8.498.5.dcm,100,100,50,50,"
                   "1841,1955\n")
    rv = win.review_view
    win.tabs.setCurrentWidget(rv)
    assert rv.load(ann, root)
    assert not rv.hint_shown()
    problems = "\n".join(rv.problems.item(i).text() for i in range(rv.problems.count()))
    assert "image not found" in problems and "uid~" in problems and "1.2.826.0" not in problems
    qtbot.waitUntil(lambda: "cannot show the image" in rv.header.text(), timeout=30000)
    assert "uid~" in rv.header.text() and BAD_UID not in rv.header.text()
    assert BAD_UID not in win.statusBar().currentMessage()  # the tab's messages reach the status bar, masked
    win.privacy_act.setChecked(True)
    assert BAD_UID in rv.header.text() and "1.2.826.0.1.3680043.8.498.5.dcm" in rv.problems.item(0).text()
    win.privacy_act.setChecked(False)
    assert BAD_UID not in rv.header.text() and "uid~" in rv.problems.item(0).text()
    rv.close_session()


def test_review_tab_says_how_to_start_a_review(qtbot, win, tmp_path, monkeypatch):
    rv = win.review_view
    win.tabs.setCurrentWidget(rv)
    qtbot.waitUntil(rv.hint.isVisible, timeout=5000)
    assert rv.hint_shown() and rv.open_button.isVisible()
    text = rv.hint.text()
    assert "--annotations CSV --images ROOT --review" in text
    assert "Resume review from" in text and "DICOM SR" in text and "Open annotations CSV" in text

    # a failed load keeps the hint and says why
    assert not rv.load(tmp_path / "missing.csv", tmp_path)
    assert rv.hint_shown() and rv.hint_error.isVisible() and "Cannot load" in rv.hint_error.text()

    # the hint's button: the annotations file, then its images folder, and the review is open
    from elvis_viewer import app as app_mod

    demo = tmp_path / "demo"
    shutil.copytree(app_mod.DEMO_STUDIES, demo)
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName", lambda *a, **k: (str(demo / "ms_cxr.csv"), ""))
    monkeypatch.setattr(QtWidgets.QFileDialog, "getExistingDirectory", lambda *a, **k: str(demo))
    rv.open_button.click()
    assert rv.session is not None and len(rv.session.items) > 0
    assert not rv.hint_shown() and rv.queue.isVisible()
    qtbot.waitUntil(lambda: rv.loaded_key == rv.session.item.key, timeout=30000)
    rv.close_session()
