"""The viewer with a real Orthanc (issue 14, pytest-qt offscreen): File → Open from PACS, search by patient ID,
fetch and open the study (its report comes from the SR in the study), ground a phrase, export the map as SEG and
the reviewed boxes as SR, STOW both back, and QIDO finds them. Credentials never reach the settings file."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from elvis_viewer import pacs_dialog
from tests.pacs.orthanc import PASSWORD, USER
from tests.pacs.dicom_checks import assert_dciodvfy_clean, needs_dciodvfy
from tests.pacs.sr_fixtures import report_sr
from tests.viewer.helpers import ini_settings, shown_window

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "resources" / "demo_model"
RG1 = get_testdata_file("RG1_UNCI.dcm")
RG1_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"


@pytest.fixture
def win(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("ELVIS_PACS_CACHE", str(tmp_path / "cache"))
    settings = ini_settings(tmp_path / "settings.ini", {"review/reviewer": "dr-test"})
    with shown_window(qtbot, settings, (1280, 720)) as w:
        yield w


@pytest.mark.slow
@needs_dciodvfy
@pytest.mark.skipif(not (DEMO_MODEL / "model.safetensors").is_file(), reason="demo model not built")
def test_open_from_pacs_export_and_stow(orthanc, win, qtbot, tmp_path, capsys):
    orthanc.upload(RG1)
    orthanc.upload(report_sr(RG1, {"FINDINGS": "There is a small right pleural effusion. The heart is normal.",
                                   "IMPRESSION": "Small right pleural effusion."}, tmp_path / "rep.dcm"))
    win.actions_by_id["file.open_pacs"].trigger()
    dlg = win.pacs_dialog
    assert dlg.isVisible()
    dlg.url_edit.setText(orthanc.dicomweb)
    dlg.auth_combo.setCurrentIndex(1)
    dlg.user_edit.setText(USER)
    dlg.secret_edit.setText(PASSWORD)
    dlg.pid_edit.setText("9RG1")
    dlg.from_edit.setText("2004-08-01")
    with qtbot.waitSignal(dlg.searched, timeout=30000) as sig:
        dlg.search_button.click()
    assert sig.args == [1] and dlg.table.rowCount() == 1, dlg.last_error
    assert dlg.table.item(0, 1).text() == "•••"  # identifiers hidden unless the privacy toggle is on
    assert dlg.table.item(0, 2).text() == "•••" and dlg.table.item(0, 4).text() == "•••"  # accession, description
    settings_text = Path(win.settings.fileName()).read_text()
    assert orthanc.dicomweb in settings_text and PASSWORD not in settings_text
    with qtbot.waitSignal(dlg.fetched, timeout=60000):
        dlg.fetch_button.click()
    qtbot.waitUntil(lambda: win.session.rad is not None and win.session.report is not None, timeout=60000)
    assert Path(win.session.rad_path).is_relative_to(Path(dlg.last_folder))
    assert win.session.report.section("IMPRESSION") is not None  # from the Enhanced SR in the study

    # ground a phrase with the demo model, export the map as SEG and store it back
    win.load_checkpoint(str(DEMO_MODEL), 0)
    qtbot.waitUntil(lambda: win.session.slots[0].engine is not None, timeout=120000)
    win.ground_phrase("small right pleural effusion")
    qtbot.waitUntil(lambda: win.session.slots[0].gmap is not None, timeout=60000)
    seg_done = []
    (tmp_path / "out").mkdir()
    pacs_dialog.export_map_seg(win, out_dir=str(tmp_path / "out"), stow=True,
                               on_done=lambda dest, n: seg_done.append((dest, n)))
    qtbot.waitUntil(lambda: bool(seg_done), timeout=60000)
    seg_path, stored = seg_done[0]
    assert stored == 2  # the FRACTIONAL SEG and the RGB Secondary Capture heat map
    assert_dciodvfy_clean(Path(seg_path), capsys)
    sc_path = Path(str(seg_path).replace(".seg.dcm", ".sc.dcm"))
    assert_dciodvfy_clean(sc_path, capsys)
    assert "small right pleural effusion" in pydicom.dcmread(str(sc_path), stop_before_pixels=True).ImageComments

    # review the fetched image's boxes and export them as SR, stored back too
    cr = Path(win.session.rad_path)
    csv = tmp_path / "ann.csv"
    csv.write_text("dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
                   f"{cr.stem},Pleural Effusion,small right pleural effusion,{cr.name},150,1200,500,400,1841,1955\n")
    assert win.review_view.load(csv, cr.parent)
    win.review_view.session.accept()
    sr_done = []
    pacs_dialog.export_review_sr(win, out_dir=str(tmp_path / "out"), stow=True,
                                 on_done=lambda res, n: sr_done.append((res, n)))
    qtbot.waitUntil(lambda: bool(sr_done), timeout=60000)
    res, n = sr_done[0]
    assert n == 1 and len(res.written) == 1
    assert_dciodvfy_clean(res.written[0], capsys)

    # QIDO finds both in the study on the server
    uids = {pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID for p in (seg_path, res.written[0])}
    inst = win.pacs_client._client.search_for_instances(study_instance_uid=RG1_STUDY)
    assert uids <= {i["00080018"]["Value"][0] for i in inst}


def test_review_resumes_from_the_pacs_sr(orthanc, win, qtbot, tmp_path):
    """A study whose review SR is on the PACS: fetched, opened, File → Resume review from the study's DICOM SR gives
    the Review tab with every decision restored (the reading tab shows the study's narrative SR report)."""
    from elvis_core.dicom_results import SrBox, read_source, review_sr, write_dataset
    from elvis_core.pacs import PacsClient

    src = read_source(RG1)
    boxes = [SrBox(200, 300, 400, 350, "Pneumothorax", "right apical pneumothorax", "accepted", "alice"),
             SrBox(900, 1200, 300, 300, "Pleural Effusion", "small effusion", "rejected", "alice", reason="artefact")]
    orthanc.upload(RG1)
    orthanc.upload(report_sr(RG1, {"FINDINGS": "Right apical pneumothorax.", "IMPRESSION": "Pneumothorax."},
                             tmp_path / "rep.dcm"))
    orthanc.upload(write_dataset(review_sr(src, boxes), tmp_path / "rev.sr.dcm"))
    client = PacsClient(orthanc.dicomweb, username=USER, password=PASSWORD, cache_dir=tmp_path / "cache")
    folder = client.fetch_study(RG1_STUDY).folder
    assert pacs_dialog._has_review_sr(sorted(folder.rglob("*.dcm")))  # the dialog's hint after a fetch
    assert not pacs_dialog._has_review_sr([p for p in folder.rglob("*.dcm")
                                           if pydicom.dcmread(p, stop_before_pixels=True).Modality != "SR"])
    win.open_folder(str(folder))
    qtbot.waitUntil(lambda: win.session.rad is not None and win.session.report is not None, timeout=60000)
    # a narrative SR of the study is the report (this module's server holds two), never our review SR
    assert "FINDINGS" in win.session.report.text and any("Enhanced SR" in w for w in win.session.report.warnings)
    got = []
    pacs_dialog.review_from_pacs_sr(win, on_done=got.append)
    qtbot.waitUntil(lambda: bool(got), timeout=60000)
    assert got[0] is not None and got[0].n_decisions == 2
    rs = win.review_view.session
    status = {it.label_text: [(b.status, b.reason, b.reviewer) for b in it.boxes] for it in rs.items}
    assert status == {"right apical pneumothorax": [("accepted", "", "alice")],
                      "small effusion": [("rejected", "artefact", "alice")]}
    assert win.tabs.currentWidget() is win.review_view
