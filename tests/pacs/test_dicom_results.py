"""Results as DICOM (issues 14, 23): reviewed boxes → TID 1500 Comprehensive SR (read back), grounding maps → one
FRACTIONAL SEG per image + RGB Secondary Capture heat maps; each object passes dciodvfy, reads back with highdicom
and pydicom, references its source image, carries only the patient / study attributes a PACS files it by, and leaks
no identifier to the command line's output."""

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

from elvis_core.dicom_results import (CATEGORY_CODES, FILING_ATTRIBUTES, DicomExportError, MapLayer, ModelInfo,
                                      SrBox, export_review_sr, heatmap_sc, maps_seg, read_review_sr, read_source,
                                      review_sr, write_dataset)
from elvis_core.errors import ElvisError
from elvis_core.review.model import ACCEPTED, ADDED, REJECTED, UNREVIEWED, ReviewBox
from elvis_core.review.session import ReviewSession
from tests.pacs.dicom_checks import assert_dciodvfy_clean, needs_dciodvfy
from tests.pacs.sr_fixtures import StandInMap

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "resources" / "demo"
DEMO_MODEL = REPO / "resources" / "demo_model"
RG1 = get_testdata_file("RG1_UNCI.dcm")
MODEL = ModelInfo("demo_model", "ab" * 32)
#: what a source may carry and a result must not (issue 24: results carry only what a PACS files them by)
LEAKY = {"PatientComments": "lives at 12 Elm St", "StudyDescription": "CHEST PA private note",
         "InstitutionName": "St Elsewhere", "StationName": "XRAY-ROOM-7", "DeviceSerialNumber": "SN-998877",
         "OtherPatientIDs": "OTHER-42", "PatientAge": "067Y", "PatientWeight": "81"}


def _leaky_source():
    src = read_source(RG1)
    for k, v in LEAKY.items():
        setattr(src, k, v)
    return src


def _assert_only_filing(ds):
    for k in LEAKY:
        assert k not in ds or (k == "DeviceSerialNumber" and ds.DeviceSerialNumber != LEAKY[k]), k
    patient = [e.keyword for e in ds if e.tag.group == 0x0010]
    assert set(patient) <= set(FILING_ATTRIBUTES), patient
    assert ds.PatientID == read_source(RG1).PatientID  # still filed with the right patient and study
    assert ds.StudyInstanceUID == read_source(RG1).StudyInstanceUID


def _groups(sr_path):
    sr = hd.sr.srread(str(sr_path))
    groups = sr.content.get_planar_roi_measurement_groups()
    return sr, groups


def _roi_ref(group) -> str:
    """SOP Instance UID of the image the group's SCOORD is SELECTED FROM."""
    (img,) = [it for it in group.roi.ContentSequence if it.ValueType == "IMAGE"]
    return img.ReferencedSOPSequence[0].ReferencedSOPInstanceUID


def _text_items(group, code):
    return [it.TextValue for it in group[0].ContentSequence
            if it.ValueType == "TEXT" and (it.ConceptNameCodeSequence[0].CodeValue,
                                           it.ConceptNameCodeSequence[0].CodingSchemeDesignator) == code]


BOXES = [SrBox(100.5, 220, 400, 300.25, "Pneumothorax", "small right apical pneumothorax", "accepted", "alice",
               "2026-03-01T10:00:05+00:00"),
         SrBox(900, 1000, 350, 260, "Lung Opacity", "patchy opacity at the left base", "edited", "alice",
               "2026-03-01T10:02:00+00:00"),
         SrBox(1700, 1800, 500, 500, "Pleural Effusion", "left effusion", "added", "bob",
               "2026-03-01T10:03:00+01:00"),  # clipped to the image; another reviewer; an offset
         SrBox(300, 300, 100, 100, "Edema", "mild edema", "rejected", "alice", "2026-03-01T10:04:00+00:00",
               "box on the wrong lung")]


@needs_dciodvfy
def test_review_sr_on_real_cr(tmp_path, capsys):
    src = _leaky_source()
    path = write_dataset(review_sr(src, BOXES, model=MODEL), tmp_path / "rg1.sr.dcm")
    assert_dciodvfy_clean(path, capsys)
    sr, groups = _groups(path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    _assert_only_filing(sr)
    # a human decided every box: complete, final, verified by the main reviewer at the last decision time
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "VERIFIED", "FINAL")
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "alice^"
    assert sr.VerifyingObserverSequence[0].VerificationDateTime == "20260301100400+0000"
    assert len(groups) == 4
    g0 = groups[0]
    assert _roi_ref(g0) == src.SOPInstanceUID
    np.testing.assert_allclose(g0.roi.value, [[100.5, 220], [500.5, 220], [500.5, 520.25], [100.5, 520.25],
                                              [100.5, 220]])
    np.testing.assert_allclose(groups[2].roi.value.max(axis=0), [1841, 1955])  # clipped to Columns, Rows
    assert g0.finding_type.value == "36118008" and g0.finding_type.scheme_designator == "SCT"
    assert groups[1].finding_type.value == CATEGORY_CODES["lung opacity"][0]
    # the phrase under TID 1410's Qualitative Evaluations, (C0034375, UMLS): a CUI is C + 7 digits
    assert _text_items(g0, ("C0034375", "UMLS")) == ["small right apical pneumothorax"]
    decisions = [[e.value.meaning for e in g.get_qualitative_evaluations() if e.name.meaning == "Review decision"]
                 for g in groups]
    assert decisions == [["Accepted"], ["Edited"], ["Added"], ["Rejected"]]
    assert _text_items(groups[3], ("121106", "DCM")) == ["box on the wrong lung"]  # the reason, as a Comment
    assert [g[0].ObservationDateTime for g in groups] == ["20260301100005+0000", "20260301100200+0000",
                                                          "20260301090300+0000", "20260301100400+0000"]
    # observers: alice for the report, bob in his own group, and the model + software as the device observer
    assert [str(it.PersonName) for it in groups[2][0].ContentSequence if it.ValueType == "PNAME"] == ["bob^"]
    dev = {it.ConceptNameCodeSequence[0].CodeMeaning: (it.get("TextValue") or it.get("UID"))
           for o in sr.content.get_observer_contexts() if o.observer_type.meaning == "Device"
           for it in o.observer_identifying_attributes}
    assert dev["Device Observer Model Name"] == "demo_model"
    assert dev["Device Observer Serial Number"] == "ab" * 32
    assert dev["Device Observer Name"].startswith("ELVIS Viewer ") and sr.SoftwareVersions
    # plain pydicom reads it too
    ds = pydicom.dcmread(str(path))
    assert ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == src.SOPInstanceUID
    # and we read our own SR back: every box, decision, reason, reviewer and time
    back = read_review_sr(path)
    assert back.image_sop_uid == src.SOPInstanceUID and back.verified and back.complete
    for a, b in zip(back.boxes, BOXES):
        assert (a.category, a.phrase, a.decision, a.reviewer, a.reason) == \
            (b.category, b.phrase, b.decision, b.reviewer, b.reason)
    assert back.boxes[2].timestamp == "2026-03-01T09:03:00+00:00"
    np.testing.assert_allclose([back.boxes[0].x, back.boxes[0].y, back.boxes[0].w, back.boxes[0].h],
                               [100.5, 220, 400, 300.25])


def test_partial_review_is_not_verified(tmp_path):
    sr = review_sr(read_source(RG1), BOXES[:1], model=MODEL, complete=False)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("PARTIAL", "UNVERIFIED", "PRELIMINARY")
    assert "VerifyingObserverSequence" not in sr
    assert not read_review_sr(write_dataset(sr, tmp_path / "p.dcm")).verified


def test_review_sr_refuses_nonsense(tmp_path):
    src = read_source(RG1)
    with pytest.raises(DicomExportError, match="outside the 1841x1955 image"):
        review_sr(src, [SrBox(5000, 5000, 10, 10, "Edema", "x", "accepted")])
    with pytest.raises(DicomExportError, match="no reviewed box"):
        review_sr(src, [])
    with pytest.raises(DicomExportError, match="is not a decision"):
        review_sr(src, [SrBox(1, 1, 10, 10, "Edema", "x", "unreviewed")])
    txt = tmp_path / "x.dcm"
    txt.write_text("not dicom")
    with pytest.raises(ElvisError, match="x.dcm: not a readable DICOM"):
        read_source(txt)
    with pytest.raises(DicomExportError, match="x.dcm: not a readable DICOM"):
        read_review_sr(txt)
    seg_like = write_dataset(review_sr(src, BOXES[:1]), tmp_path / "ok.dcm")
    ds = pydicom.dcmread(seg_like)
    del ds.CodingSchemeIdentificationSequence  # a TID 1500 SR of someone else
    ds.save_as(tmp_path / "other.dcm")
    with pytest.raises(DicomExportError, match="other.dcm: not an ELVIS review SR"):
        read_review_sr(tmp_path / "other.dcm")


def _map(src, cx, cy, peak=0.4):
    yy, xx = np.mgrid[0:src.Rows, 0:src.Columns]
    return (peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 200.0 ** 2)) - 0.1).astype(np.float32)


@needs_dciodvfy
def test_fractional_seg_keeps_the_map(tmp_path, capsys):
    src = _leaky_source()
    sim1, sim2 = _map(src, 600, 900), _map(src, 1300, 500, 0.25)
    sim2[:100] = np.nan  # not seen by the model
    seg = maps_seg(src, [MapLayer("right lower lobe opacity", sim1, "presence 0.81 \u00b7 whole image seen"),
                         MapLayer("left effusion", sim2, "uncalibrated (peak 0.15) \u00b7 unknown to this model: xyz",
                                  "Pleural Effusion")], MODEL)
    path = write_dataset(seg, tmp_path / "maps.seg.dcm")
    assert_dciodvfy_clean(path, capsys)
    back = hd.seg.segread(str(path))
    assert (back.SegmentationType, back.SegmentationFractionalType) == ("FRACTIONAL", "PROBABILITY")
    assert back.number_of_segments == 2  # one SEG per image, one segment per phrase
    assert [d.SegmentLabel for d in back.SegmentSequence] == ["right lower lobe opacity", "left effusion"]
    assert "presence 0.81" in back.SegmentSequence[0].SegmentDescription
    assert "unknown to this model: xyz" in back.SegmentSequence[1].SegmentDescription
    assert back.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "60046008"
    px = back.get_pixels_by_source_instance([src.SOPInstanceUID], combine_segments=False)[0]
    # continuous values kept (max(cos, 0), to 1/255), not a mask
    np.testing.assert_allclose(px[..., 0], np.clip(sim1, 0, 1), atol=0.5 / 255 + 1e-6)
    assert len(np.unique(px[..., 0])) > 50
    assert float(px[:100, :, 1].max()) == 0.0
    refs = [r.ReferencedSOPInstanceUID for r in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert refs == [src.SOPInstanceUID]
    assert back.SegmentSequence[0].SegmentAlgorithmName.endswith("demo_model")
    _assert_only_filing(back)
    with pytest.raises(DicomExportError, match="is 10x10, the image 1841x1955"):
        maps_seg(src, [MapLayer("p", np.zeros((10, 10)))], MODEL)
    with pytest.raises(DicomExportError, match="no map"):
        maps_seg(src, [], MODEL)


@needs_dciodvfy
def test_heatmap_secondary_capture(tmp_path, capsys):
    from elvis_core.io.images import read_image

    src = _leaky_source()
    rad = read_image(RG1)
    gm = StandInMap(_map(src, 600, 900), "right lower lobe nodule",
                    "presence 0.07 \u2014 no confident region \u00b7 unknown to this model: nodule")
    sc = heatmap_sc(src, rad, gm, MODEL,
                    extra_caption=["negated: the map shows where the words point, not that it is present"])
    path = write_dataset(sc, tmp_path / "map.sc.dcm")
    assert_dciodvfy_clean(path, capsys)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.PhotometricInterpretation == "YBR_FULL_422"
    assert ds.SamplesPerPixel == 3 and ds.BurnedInAnnotation == "YES"
    assert (ds.LossyImageCompression, ds.LossyImageCompressionMethod) == ("01", "ISO_10918_1")  # JPEG, said so
    assert float(ds.LossyImageCompressionRatio) > 5
    px = ds.pixel_array
    assert px.ndim == 3 and px.shape[2] == 3 and px.shape[0] >= 1024
    assert (np.abs(px[..., 0].astype(int) - px[..., 2]) > 40).any()  # colour: a heat map, not grey
    for part in ("right lower lobe nodule", "presence 0.07", "unknown to this model: nodule", "negated",
                 "demo_model sha256:abababababab"):
        assert part in ds.ImageComments
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    _assert_only_filing(ds)


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
        third = s.item
        s.reject("not visible")
        kept_paths = {first.image_path, second.image_path, third.image_path}  # a rejection is a decision too
    finally:
        s.close()
    out = tmp_path / "sr"
    r = subprocess.run([sys.executable, "-m", "elvis_core", "review", "export", str(ann), "--images", str(demo),
                        "--format", "dicom-sr", "--out", str(out), "--checkpoint", str(DEMO_MODEL),
                        "--organization", "St Test Radiology"], capture_output=True, text=True, cwd=str(REPO),
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
        for ident in (str(src.PatientID), str(src.PatientName), str(src.SOPInstanceUID)):
            assert ident and ident not in r.stdout + r.stderr  # the file is named by UID; its printed name is not
    from elvis_core.model.checkpoint import checkpoint_hash

    for p in written:  # the model the reviewer saw, named with its full hash; the organization when verified
        sr = hd.sr.srread(str(p))
        dev = {it.ConceptNameCodeSequence[0].CodeMeaning: (it.get("TextValue") or it.get("UID"))
               for o in sr.content.get_observer_contexts() if o.observer_type.meaning == "Device"
               for it in o.observer_identifying_attributes}
        assert dev["Device Observer Model Name"] == "demo_model"
        assert dev["Device Observer Serial Number"] == checkpoint_hash(DEMO_MODEL, length=64)
        if sr.VerificationFlag == "VERIFIED":
            assert sr.VerifyingObserverSequence[0].VerifyingOrganization == "St Test Radiology"
    assert any(pydicom.dcmread(p).VerificationFlag == "VERIFIED" for p in written)
    # the edited phrase's other boxes are still unreviewed: not in the SR
    assert n_groups == len(first.boxes) + 1 + len(third.boxes)
    reasons = [b.reason for p in written for b in read_review_sr(p).boxes if b.decision == "rejected"]
    assert reasons == ["not visible"] * len(third.boxes)


def test_review_export_dicom_sr_skips_non_dicom(tmp_path):
    from elvis_core.review.model import ReviewItem

    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    items = [ReviewItem("k", "a", "Edema", "edema", "a.png", str(png), 10, 10,
                        boxes=[ReviewBox("b", 1, 1, 3, 3, status=ACCEPTED)]),
             ReviewItem("k2", "rg1", "Edema", "edema", "rg1.dcm", RG1, 1841, 1955,
                        boxes=[ReviewBox("c", 10, 10, 30, 30, status=REJECTED, reason="no edema"),
                               ReviewBox("d", 10, 10, 30, 30, status=ADDED)])]
    res = export_review_sr(items, tmp_path / "out")
    assert len(res.written) == 1 and len(res.problems) == 1 and "a.png" in res.problems[0]
    back = read_review_sr(res.written[0])
    assert [(b.decision, b.reason) for b in back.boxes] == [("rejected", "no edema"), ("added", "")]


def test_review_export_one_series_per_study(tmp_path):
    """Three images of two studies of two patients: the SRs of one study share a series, the other study's SR gets
    its own (a series never spans studies or patients)."""
    from elvis_core.review.model import ReviewItem

    paths = []
    for k, (study, patient) in enumerate([("1.2.3.4.1", "P1"), ("1.2.3.4.1", "P1"), ("1.2.3.4.2", "P2")]):
        ds = pydicom.dcmread(RG1)
        ds.StudyInstanceUID, ds.PatientID = study, patient
        ds.SOPInstanceUID = f"1.2.3.4.9.{k}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(tmp_path / f"i{k}.dcm")
        paths.append(str(tmp_path / f"i{k}.dcm"))
    items = [ReviewItem(f"k{k}", f"i{k}", "Edema", "edema", f"i{k}.dcm", p, 1841, 1955,
                        boxes=[ReviewBox("b", 10, 10, 30, 30, status=ACCEPTED, reviewer="r"),
                               ReviewBox("u", 50, 50, 30, 30, status=UNREVIEWED if k == 1 else ACCEPTED)])
             for k, p in enumerate(paths)]
    res = export_review_sr(items, tmp_path / "out")
    assert not res.problems and len(res.written) == 3
    by_sop = {pydicom.dcmread(p).CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
              .ReferencedSOPSequence[0].ReferencedSOPInstanceUID: pydicom.dcmread(p) for p in res.written}
    a, b, c = (by_sop[f"1.2.3.4.9.{k}"] for k in range(3))
    assert a.SeriesInstanceUID == b.SeriesInstanceUID != c.SeriesInstanceUID
    assert (a.StudyInstanceUID, c.StudyInstanceUID) == ("1.2.3.4.1", "1.2.3.4.2")
    assert sorted([a.InstanceNumber, b.InstanceNumber]) == [1, 2] and c.InstanceNumber == 1
    # the image with an open box is PARTIAL / UNVERIFIED, the others COMPLETE / VERIFIED
    assert (b.CompletionFlag, b.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    assert (a.CompletionFlag, a.VerificationFlag) == ("COMPLETE", "VERIFIED")


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
    scs = sorted((out / "dicom").glob("*.sc.dcm"))
    assert len(segs) == 1 and len(scs) == 2  # one SEG per image (one segment per phrase), one SC per phrase
    src = pydicom.dcmread(str(img), stop_before_pixels=True)
    for p in segs + scs:
        assert_dciodvfy_clean(p, capsys)
    back = hd.seg.segread(str(segs[0]))
    assert [d.SegmentLabel for d in back.SegmentSequence] == ["small left pleural effusion", "moderate cardiomegaly"]
    assert all("peak" in d.SegmentDescription for d in back.SegmentSequence)  # the trust line rides along
    assert back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        src.SOPInstanceUID
    px = back.get_pixels_by_source_instance([src.SOPInstanceUID], combine_segments=False)[0]
    for k in range(2):
        assert len(np.unique(px[..., k])) > 10  # a continuous map, not a mask
    for p, phrase in zip(scs, ["small left pleural effusion", "moderate cardiomegaly"]):
        assert phrase in pydicom.dcmread(str(p), stop_before_pixels=True).ImageComments
    assert str(src.PatientID) not in r.stdout + r.stderr
    assert str(src.SOPInstanceUID) not in r.stdout + r.stderr and r.stdout.count("uid~") == 3  # SEG + 2 SC names
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
    maps_seg(src, [MapLayer("right lower lobe opacity", sim)], MODEL)
    review_sr(src, [SrBox(x=500, y=800, w=200, h=200, category="Lung Opacity", phrase="opacity",
                          decision="accepted", reviewer="QA")])
    noisy = [r for r in caplog.records if r.name.startswith("highdicom") and r.levelno < logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy[:3]]
