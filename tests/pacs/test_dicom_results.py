"""Results as DICOM (issue 14): reviewed boxes → TID 1500 Comprehensive SR, grounding map → SEG; each object
passes dciodvfy, reads back with highdicom and pydicom, references its source image, and leaks no identifier to
the command line's output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from elvis_core.dicom_results import (CATEGORY_CODES, DicomExportError, SrBox, default_threshold, export_review_sr,
                                      grounding_seg, read_source, review_sr, write_dataset)
from elvis_core.errors import ElvisError
from elvis_core.review.model import ACCEPTED, ADDED, REJECTED, ReviewBox
from elvis_core.review.session import ReviewSession
from tests.pacs.dicom_checks import assert_dciodvfy_clean, needs_dciodvfy

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "resources" / "demo"
DEMO_MODEL = REPO / "resources" / "demo_model"
RG1 = get_testdata_file("RG1_UNCI.dcm")


def _groups(sr_path):
    sr = hd.sr.srread(str(sr_path))
    groups = sr.content.get_planar_roi_measurement_groups()
    return sr, groups


def _roi_ref(group) -> str:
    """SOP Instance UID of the image the group's SCOORD is SELECTED FROM."""
    (img,) = [it for it in group.roi.ContentSequence if it.ValueType == "IMAGE"]
    return img.ReferencedSOPSequence[0].ReferencedSOPInstanceUID


def _text_items(group, meaning):
    return [it.TextValue for it in group[0].ContentSequence
            if it.ValueType == "TEXT" and it.ConceptNameCodeSequence[0].CodeMeaning == meaning]


@needs_dciodvfy
def test_review_sr_on_real_cr(tmp_path, capsys):
    src = read_source(RG1)
    boxes = [SrBox(100.5, 220, 400, 300.25, "Pneumothorax", "small right apical pneumothorax", "accepted", "alice"),
             SrBox(900, 1000, 350, 260, "Lung Opacity", "patchy opacity at the left base", "edited", "alice"),
             SrBox(1700, 1800, 500, 500, "Pleural Effusion", "left effusion", "added", "bob")]  # clipped to image
    path = write_dataset(review_sr(src, boxes), tmp_path / "rg1.sr.dcm")
    assert_dciodvfy_clean(path, capsys)
    sr, groups = _groups(path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.PatientID == src.PatientID and sr.StudyInstanceUID == src.StudyInstanceUID  # copied, as DICOM wants
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert len(groups) == 3
    g0 = groups[0]
    assert _roi_ref(g0) == src.SOPInstanceUID
    np.testing.assert_allclose(g0.roi.value, [[100.5, 220], [500.5, 220], [500.5, 520.25], [100.5, 520.25],
                                              [100.5, 220]])
    np.testing.assert_allclose(groups[2].roi.value.max(axis=0), [1841, 1955])  # clipped to Columns, Rows
    assert g0.finding_type.value == "36118008" and g0.finding_type.scheme_designator == "SCT"
    assert groups[1].finding_type.value == CATEGORY_CODES["lung opacity"][0]
    assert _text_items(g0, "Qualitative Evaluations") == ["small right apical pneumothorax"]
    decisions = [[e.value.meaning for e in g.get_qualitative_evaluations() if e.name.meaning == "Review decision"]
                 for g in groups]
    assert decisions == [["Accepted"], ["Edited"], ["Added"]]
    # observer: the main reviewer for the report, bob named in his own group
    obs = sr.content.get_observer_contexts()
    assert any("alice" in str(getattr(o, "observer_identifying_attributes", [None])[0].value) for o in obs
               if o.observer_type.meaning == "Person")
    assert [str(it.PersonName) for it in groups[2][0].ContentSequence if it.ValueType == "PNAME"] == ["bob^"]
    # plain pydicom reads it too
    ds = pydicom.dcmread(str(path))
    assert ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_review_sr_refuses_nonsense(tmp_path):
    src = read_source(RG1)
    with pytest.raises(DicomExportError, match="outside the 1841x1955 image"):
        review_sr(src, [SrBox(5000, 5000, 10, 10, "Edema", "x", "accepted")])
    with pytest.raises(DicomExportError, match="no reviewed box"):
        review_sr(src, [])
    with pytest.raises(DicomExportError, match="not a kept decision"):
        review_sr(src, [SrBox(1, 1, 10, 10, "Edema", "x", "rejected")])
    txt = tmp_path / "x.dcm"
    txt.write_text("not dicom")
    with pytest.raises(ElvisError, match="x.dcm: not a readable DICOM"):
        read_source(txt)


@needs_dciodvfy
def test_seg_of_a_map_on_real_cr(tmp_path, capsys):
    src = read_source(RG1)
    yy, xx = np.mgrid[0:src.Rows, 0:src.Columns]
    sim = (0.4 * np.exp(-((xx - 600) ** 2 + (yy - 900) ** 2) / (2 * 200.0 ** 2)) - 0.1).astype(np.float32)
    seg, thr = grounding_seg(src, sim, "right lower lobe opacity", "demo_model", "ab" * 32)
    assert thr == pytest.approx(0.15, abs=1e-6) == default_threshold(sim)
    path = write_dataset(seg, tmp_path / "map.seg.dcm")
    assert_dciodvfy_clean(path, capsys)
    back = hd.seg.segread(str(path))
    arr = pydicom.dcmread(str(path)).pixel_array
    np.testing.assert_array_equal(arr.astype(bool), sim >= thr)
    assert back.SegmentSequence[0].SegmentLabel == "right lower lobe opacity"
    assert "sha256:abababab" in back.ContentDescription and "right lower lobe opacity" in back.ContentDescription
    refs = [r.ReferencedSOPInstanceUID for r in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert refs == [src.SOPInstanceUID]
    assert back.PatientID == src.PatientID
    with pytest.raises(DicomExportError, match="outside the cosine range"):
        grounding_seg(src, sim, "p", "m", "h", threshold=1.5)
    with pytest.raises(DicomExportError, match="map is 10x10"):
        grounding_seg(src, np.zeros((10, 10)), "p", "m", "h")


def _copy_demo(tmp_path) -> Path:
    dst = tmp_path / "demo"
    shutil.copytree(DEMO, dst)
    return dst


@needs_dciodvfy
def test_review_export_dicom_sr_cli(tmp_path, capsys):
    demo = _copy_demo(tmp_path)
    ann = demo / "ms_cxr.csv"
    s = ReviewSession.open(ann, demo, reviewer="carol")
    try:
        first = s.item
        s.accept()  # every box of the first phrase
        s.go_to(1)
        second = s.item
        s.edit_box(second.boxes[0].box_id, (50, 60, 120, 90))
        s.go_to(2)
        s.reject("not visible")
        kept_paths = {first.image_path, second.image_path}
    finally:
        s.close()
    out = tmp_path / "sr"
    r = subprocess.run([sys.executable, "-m", "elvis_core", "review", "export", str(ann), "--images", str(demo),
                        "--format", "dicom-sr", "--out", str(out)], capture_output=True, text=True, cwd=str(REPO),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    written = sorted(out.glob("*.sr.dcm"))
    assert len(written) == len(kept_paths) and r.stdout.count(".sr.dcm") == len(written)
    n_groups = 0
    for p in written:
        assert_dciodvfy_clean(p, capsys)
        sr, groups = _groups(p)
        src = pydicom.dcmread(next(iter(x for x in kept_paths if pydicom.dcmread(x, stop_before_pixels=True)
                                       .SOPInstanceUID == p.name.split(".sr")[0])), stop_before_pixels=True)
        for g in groups:
            assert _roi_ref(g) == src.SOPInstanceUID
        n_groups += len(groups)
        # identifiers are inside the object (correct), never on the command line's output
        for ident in (str(src.PatientID), str(src.PatientName)):
            assert ident and ident not in r.stdout + r.stderr
    assert n_groups == len(first.boxes) + 1  # the edited phrase's other boxes are still unreviewed


def test_review_export_dicom_sr_skips_non_dicom(tmp_path):
    from elvis_core.review.model import ReviewItem

    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    items = [ReviewItem("k", "a", "Edema", "edema", "a.png", str(png), 10, 10,
                        boxes=[ReviewBox("b", 1, 1, 3, 3, status=ACCEPTED)]),
             ReviewItem("k2", "rg1", "Edema", "edema", "rg1.dcm", RG1, 1841, 1955,
                        boxes=[ReviewBox("c", 10, 10, 30, 30, status=REJECTED),
                               ReviewBox("d", 10, 10, 30, 30, status=ADDED)])]
    res = export_review_sr(items, tmp_path / "out")
    assert len(res.written) == 1 and len(res.problems) == 1 and "a.png" in res.problems[0]
    _, groups = _groups(res.written[0])
    assert len(groups) == 1  # the rejected box is not a finding


@pytest.mark.slow
@needs_dciodvfy
@pytest.mark.skipif(not (DEMO_MODEL / "model.safetensors").is_file(), reason="demo model not built")
def test_ground_dicom_out_cli(tmp_path, capsys):
    img = next(DEMO.rglob("*.dcm"))
    out = tmp_path / "maps"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "elvis_core", "ground", "--checkpoint", str(DEMO_MODEL), str(img),
                        "small left pleural effusion", "moderate cardiomegaly", "--out", str(out / "m.png"),
                        "--dicom-out", str(out / "dicom")], capture_output=True, text=True, cwd=str(REPO),
                       timeout=300)
    assert r.returncode == 0, r.stderr
    segs = sorted((out / "dicom").glob("*.seg.dcm"))
    assert len(segs) == 2
    src = pydicom.dcmread(str(img), stop_before_pixels=True)
    for p, phrase in zip(segs, ["small left pleural effusion", "moderate cardiomegaly"]):
        assert_dciodvfy_clean(p, capsys)
        back = hd.seg.segread(str(p))
        assert back.SegmentSequence[0].SegmentLabel == phrase
        assert back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
            src.SOPInstanceUID
        frac = pydicom.dcmread(str(p)).pixel_array.astype(bool).mean()
        assert 0.0 < frac < 0.9  # a region, not nothing or everything
        assert str(src.PatientID) not in r.stdout + r.stderr
    # a non-DICOM image with --dicom-out: one clear line, before the model is loaded
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    r = subprocess.run([sys.executable, "-m", "elvis_core", "ground", "--checkpoint", str(DEMO_MODEL), str(png),
                        "x", "--out", str(out / "n.png"), "--dicom-out", str(out / "d2")], capture_output=True,
                       text=True, cwd=str(REPO), timeout=120)
    assert r.returncode == 2 and "x.png: not a readable DICOM file" in r.stderr and "Traceback" not in r.stderr


def test_building_objects_logs_nothing_at_info(caplog):
    """`elvis` logs at INFO: highdicom's per-module "copy Patient-related attributes from dataset <UID>" lines must
    not flood the command line (nine lines per SEG/SR, with the source's UIDs)."""
    import logging

    caplog.set_level(logging.INFO)
    src = read_source(RG1)
    sim = np.full((src.Rows, src.Columns), -0.1, np.float32)
    sim[800:1000, 500:700] = 0.3
    grounding_seg(src, sim, "right lower lobe opacity", "demo_model", "ab" * 32)
    review_sr(src, [SrBox(x=500, y=800, w=200, h=200, category="Lung Opacity", phrase="opacity",
                          decision="accepted", reviewer="QA")])
    noisy = [r for r in caplog.records if r.name.startswith("highdicom") and r.levelno < logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy[:3]]
