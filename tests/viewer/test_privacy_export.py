"""Exports never carry identifiers, whatever the privacy toggle says; UIDs are masked with the other identifiers
(PS3.15) in the tag inspector, the study list, the thumbnails and the window title while identifiers are hidden."""

import shutil

import numpy as np
import pydicom
import pytest
from PySide6 import QtGui
from pydicom.data import get_testdata_file

from .helpers import fake_save_dialog, open_folder


@pytest.fixture
def win(make_window):
    return make_window()


@pytest.fixture
def pacs_cache(tmp_path):
    """A PACS cache layout: <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm."""
    src = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    d = tmp_path / "cache" / ds.StudyInstanceUID / ds.SeriesInstanceUID
    d.mkdir(parents=True)
    shutil.copy(src, d / f"{ds.SOPInstanceUID}.dcm")
    return tmp_path / "cache", ds


def _texts(win):
    """Every text of the study list, thumbnails (labels + tooltips), problems and the window/report titles."""
    out = [win.windowTitle(), win.report_title.text()]
    for lst in (win.study_browser.list, win.thumb_strip, win.study_browser.problem_list):
        for i in range(lst.count()):
            out += [lst.item(i).text(), lst.item(i).toolTip()]
    return "\n".join(out)


def _uids(ds):
    return [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]


def test_uids_masked_in_lists_and_titles_until_the_toggle(qtbot, win, pacs_cache):
    root, ds = pacs_cache
    open_folder(qtbot, win, root)
    text = _texts(win)
    assert win.study_browser.list.count() >= 2  # a study header and its image
    for uid in _uids(ds):
        assert uid not in text
    assert "uid~" in win.windowTitle()
    win.privacy_act.setChecked(True)
    text = _texts(win)
    assert ds.SOPInstanceUID in win.windowTitle() and ds.StudyInstanceUID in text
    win.privacy_act.setChecked(False)
    assert not any(uid in _texts(win) for uid in _uids(ds))


def test_tag_inspector_shows_uid_pseudonyms(qtbot, win, pacs_cache):
    root, ds = pacs_cache
    open_folder(qtbot, win, root)
    dlg = win.show_tag_inspector()
    qtbot.addWidget(dlg)
    t = dlg.table
    rows = {t.item(i, 1).text(): t.item(i, 3).text() for i in range(t.rowCount())}
    every = "\n".join(rows.values())
    for uid in _uids(ds) + [ds.FrameOfReferenceUID]:
        assert uid not in every
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert rows[kw].startswith("2.25.") and rows[kw].endswith("(pseudonym)"), (kw, rows[kw])
    assert "(pseudonym)" not in rows["SOPClassUID"]  # a class UID identifies nobody: shown as it is


def _png_pixels(path):
    img = QtGui.QImage(str(path)).convertToFormat(QtGui.QImage.Format.Format_RGB888)
    a = np.ndarray((img.height(), img.bytesPerLine()), np.uint8, img.constBits())[:, :3 * img.width()]
    return a.copy()


def test_export_has_no_identifiers_with_the_toggle_on(qtbot, win, pacs_cache, tmp_path, monkeypatch):
    root, ds = pacs_cache
    open_folder(qtbot, win, root)
    off = win.export_png(str(tmp_path / "off.png"))
    win.privacy_act.setChecked(True)
    name = str(ds.PatientName)
    assert name in win.image_view.corner_text("bl")  # the screen shows the name now ...
    seen = []
    real = type(win.image_view).grab_view
    monkeypatch.setattr(type(win.image_view), "grab_view",
                        lambda iv: (seen.append(iv.corner_text("bl")), real(iv))[1])
    on = win.export_png(str(tmp_path / "on.png"))
    assert seen and not any(name in s or str(ds.PatientID) in s for s in seen)  # ... the export does not
    assert np.array_equal(_png_pixels(off), _png_pixels(on))  # the same picture as with identifiers hidden
    assert name in win.image_view.corner_text("bl")  # and the screen got its corner text back


def test_export_default_name_never_a_uid(qtbot, win, pacs_cache, monkeypatch):
    root, ds = pacs_cache
    open_folder(qtbot, win, root)
    win.privacy_act.setChecked(True)  # whatever the toggle says
    seen = fake_save_dialog(monkeypatch)
    win.export_dialog()
    slug = ds.StudyInstanceUID.replace(".", "-")
    assert seen["name"].endswith(".png") and slug[:16] not in seen["name"] and slug[-12:] not in seen["name"]


def test_safe_stem_and_masking_in_text():
    from elvis_core.io.uid_mask import mask_uids_in_text
    from elvis_viewer.export import safe_stem

    assert safe_stem("/x/s50000001") == "s50000001"  # a MIMIC study folder stays readable
    s = safe_stem("/cache/1.2.840.113619.2.55.3.604688119/1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322.dcm")
    assert "113619" not in s and "5962" not in s and s.startswith("2.25.")
    m = mask_uids_in_text("cannot display /c/1.2.840.1.2/9.dcm and 1.3.6.1.4.1.5962.1.1.1.dcm: truncated")
    assert "1.2.840.1.2" not in m and "5962" not in m and m.startswith("cannot display /c/uid~")
    assert m.endswith(".dcm: truncated") and "/9.dcm" in m
    assert mask_uids_in_text("0.139 x 0.139 mm, W 400 L 40, s50000001") == "0.139 x 0.139 mm, W 400 L 40, s50000001"
