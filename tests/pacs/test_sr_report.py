"""Reports from DICOM SR (issue 14): an Enhanced SR in the study reads into a Report with sections and exact
spans, like a .txt; the study scan finds it; our own measurement SRs are not mistaken for reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from elvis_core.dicom_results import SrBox, read_source, review_sr, write_dataset
from elvis_core.errors import ReportReadError
from elvis_core.io.report import read_report
from elvis_core.io.studies import scan_folder
from tests.pacs.sr_fixtures import report_sr

FINDINGS = ("PA and lateral views of the chest. There is a small right pleural effusion\nwith adjacent "
            "atelectasis. The heart size is normal.")
IMPRESSION = "Small right pleural effusion."


def test_enhanced_sr_reads_as_report(tmp_path):
    p = report_sr(get_testdata_file("RG1_UNCI.dcm"), {"FINDINGS": FINDINGS, "IMPRESSION": IMPRESSION},
                  tmp_path / "report.dcm")
    rep = read_report(p)
    assert [s.name for s in rep.sections] == ["FINDINGS", "IMPRESSION"]
    f = rep.section("FINDINGS")
    assert rep.text[f.start:f.end] == FINDINGS  # the exact text of the TEXT item, wrapping kept
    sents = [rep.sentence_text(s) for s in rep.sentences]
    assert sents == ["PA and lateral views of the chest.",
                     "There is a small right pleural effusion\nwith adjacent atelectasis.",
                     "The heart size is normal.", "Small right pleural effusion."]
    assert rep.sentences[-1].section == "IMPRESSION"
    span = rep.find("pleural effusion with adjacent")  # a phrase across the wrap maps back to the text
    assert span and rep.text[span[0]:span[1]] == "pleural effusion\nwith adjacent"
    assert any("Enhanced SR" in w for w in rep.warnings)


def test_measurement_sr_is_not_a_report(tmp_path):
    src = read_source(get_testdata_file("RG1_UNCI.dcm"))
    p = write_dataset(review_sr(src, [SrBox(10, 10, 50, 50, "Edema", "edema", "accepted", "a")]), tmp_path / "m.dcm")
    with pytest.raises(ReportReadError, match="m.dcm: an imaging measurement report"):
        read_report(p)


def test_scan_finds_the_sr_report_of_a_study(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    img = study / "image.dcm"
    shutil.copy(get_testdata_file("RG1_UNCI.dcm"), img)
    src = read_source(img)  # a measurement SR in the same study must not be taken for the report
    write_dataset(review_sr(src, [SrBox(10, 10, 50, 50, "Edema", "edema", "accepted", "a")]), study / "a_meas.dcm")
    report_sr(img, {"FINDINGS": FINDINGS}, study / "b_report.dcm")
    res = scan_folder(tmp_path)
    assert len(res.studies) == 1 and len(res.studies[0].images) == 1
    assert Path(res.studies[0].report_path).name == "b_report.dcm"
    assert read_report(res.studies[0].report_path).section("FINDINGS") is not None


def test_basic_text_sr_and_a_single_text_item_with_its_own_headers(tmp_path):
    import pydicom

    p = report_sr(get_testdata_file("RG1_UNCI.dcm"), {"FINDINGS": FINDINGS}, tmp_path / "r.dcm")
    ds = pydicom.dcmread(str(p))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    # a whole report pasted into one TEXT item (common in RIS exports): its own headers are kept, not doubled
    whole = "FINDINGS: Heart size is normal.\n\nIMPRESSION: No acute process."
    ds.ContentSequence[0].ContentSequence[0].TextValue = whole
    ds.save_as(str(tmp_path / "basic.dcm"), enforce_file_format=True)
    rep = read_report(tmp_path / "basic.dcm")
    assert rep.text == whole + "\n"
    assert [s.name for s in rep.sections] == ["FINDINGS", "IMPRESSION"]
    assert any("Basic Text SR" in w for w in rep.warnings)
    # MIMIC-style: a title line first, the headers further down: no spurious FINDINGS before the real one
    mimic = ("                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
             " FINDINGS:  Heart size is normal.  No effusion.\n\n IMPRESSION:  No acute process.")
    ds.ContentSequence[0].ContentSequence[0].TextValue = mimic
    ds.save_as(str(tmp_path / "mimic.dcm"), enforce_file_format=True)
    rep = read_report(tmp_path / "mimic.dcm")
    assert rep.text.count("FINDINGS") == 1 and rep.text.lstrip().startswith("FINAL REPORT")
    assert [s.name for s in rep.sections].count("FINDINGS") == 1
    assert "IMPRESSION" in [s.name for s in rep.sections]
    ds.ContentSequence = []
    ds.save_as(str(tmp_path / "empty.dcm"), enforce_file_format=True)
    with pytest.raises(ReportReadError, match="empty.dcm: structured report holds no text"):
        read_report(tmp_path / "empty.dcm")


def test_viewer_session_opens_an_sr_report_file(qtbot, tmp_path):
    from elvis_viewer.session import ViewerSession

    s = ViewerSession()
    s.open_paths([get_testdata_file("RG1_UNCI.dcm")])
    qtbot.waitUntil(lambda: s.rad is not None, timeout=30000)
    sr = report_sr(get_testdata_file("RG1_UNCI.dcm"), {"FINDINGS": FINDINGS, "IMPRESSION": IMPRESSION},
                   tmp_path / "report.dcm")
    s.open_paths([str(sr)])  # like dropping the SR on the window: it becomes the report, not a broken image
    qtbot.waitUntil(lambda: s.report is not None and s.report.section("IMPRESSION") is not None, timeout=30000)
    assert s.rad is not None and not s.problems


def test_inspect_summarises_an_sr_report_like_a_text_report(tmp_path, capsys):
    """`elvis inspect report.dcm` (a report SR from a PACS) prints the sections and sentences, as for a .txt; a
    measurement SR stays a one-line error; no identifier of the source is printed."""
    import pydicom

    from elvis_core.cli import main

    rg1 = get_testdata_file("RG1_UNCI.dcm")
    p = report_sr(rg1, {"FINDINGS": FINDINGS, "IMPRESSION": IMPRESSION}, tmp_path / "report.dcm")
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "2 sections, 4 sentences" in out and "[IMPRESSION]" in out and "Small right pleural effusion." in out
    src = pydicom.dcmread(rg1, stop_before_pixels=True)
    assert str(src.PatientName) not in out and str(src.PatientID) not in out
    assert main(["inspect", str(p), "--json"]) == 0
    assert '"kind": "report"' in capsys.readouterr().out
    src = read_source(rg1)
    m = write_dataset(review_sr(src, [SrBox(10, 10, 50, 50, "Edema", "edema", "accepted", "a")]), tmp_path / "m.dcm")
    assert main(["inspect", str(m)]) == 2
    err = capsys.readouterr().err
    assert "m.dcm" in err and len(err.strip().splitlines()) == 1
