"""scan_folder / read_dicomdir on a temporary tree: MIMIC layout, stem-matched and unpaired reports, junk, bad files,
progress, cancel; DICOMDIR compared with the directory records read independently with pydicom."""

import os

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from elvis_core.errors import StudyScanError
from elvis_core.io.studies import read_dicomdir, scan, scan_folder
from tests.core.test_dicom_bad import make_dicom

PIX = (np.arange(16 * 20).reshape(16, 20) % 4096).astype(np.uint16)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    study_uid, series_pa, series_lat = generate_uid(), generate_uid(), generate_uid()
    mimic = root / "files" / "p10" / "p10000032" / "s50414267"
    mimic.mkdir(parents=True)
    make_dicom(mimic / "a.dcm", PIX, StudyInstanceUID=study_uid, SeriesInstanceUID=series_pa, ViewPosition="PA",
               InstanceNumber=2)
    make_dicom(mimic / "b.dcm", PIX, StudyInstanceUID=study_uid, SeriesInstanceUID=series_pa, ViewPosition="PA",
               InstanceNumber=1)
    make_dicom(mimic / "c.dcm", PIX, StudyInstanceUID=study_uid, SeriesInstanceUID=series_lat, ViewPosition="LL")
    (root / "files" / "p10" / "p10000032" / "s50414267.txt").write_text("FINDINGS: Clear.\n")
    jpg_study = root / "files" / "p10" / "p10000032" / "s50000001"
    jpg_study.mkdir()
    cv2.imwrite(str(jpg_study / "0b1c-d2e3.jpg"), np.full((30, 40), 128, np.uint8))
    (root / "files" / "p10" / "p10000032" / "s50000001.txt").write_text("IMPRESSION: None.\n")
    other = root / "other"
    other.mkdir()
    make_dicom(other / "img.dcm", PIX)
    (other / "img.txt").write_text("IMPRESSION: stem matched.\n")
    (other / "zz.txt").write_text("another note\n")
    third = root / "third"
    third.mkdir()
    make_dicom(third / "x.dcm", PIX)
    (third / "notes.txt").write_text("FINDINGS: single txt.\n")
    # junk, bad and non-image files
    (root / "README.md").write_text("hello")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "broken.dcm").write_text("not dicom at all")
    full = open(get_testdata_file("CT_small.dcm"), "rb").read()
    (root / "trunc.dcm").write_bytes(full[:140])
    (root / "emptyfile.dcm").write_bytes(b"")
    make_dicom(root / "sr.dcm", sop_class="1.2.840.10008.5.1.4.1.1.88.22", Modality="SR")
    return root, study_uid, series_pa, series_lat


def test_groups_studies_series_and_matches_reports(tree):
    root, study_uid, series_pa, series_lat = tree
    res = scan_folder(root)
    by_key = {s.key: s for s in res.studies}
    assert len(res.studies) == 4 and res.n_images == 6
    mimic = by_key["s50414267"]
    assert mimic.uid == study_uid
    assert mimic.report_path == str(root / "files" / "p10" / "p10000032" / "s50414267.txt")
    assert [se.uid for se in mimic.series] and {se.uid for se in mimic.series} == {series_pa, series_lat}
    pa = next(se for se in mimic.series if se.uid == series_pa)
    assert [os.path.basename(im.path) for im in pa.images] == ["b.dcm", "a.dcm"]  # InstanceNumber order
    assert all(im.view_position == "PA" and im.rows == 16 and im.cols == 20 for im in pa.images)
    assert mimic.root == str(root / "files" / "p10" / "p10000032" / "s50414267")
    jpg = by_key["s50000001"]
    assert jpg.images[0].sop_instance_uid == "0b1c-d2e3" and (jpg.images[0].rows, jpg.images[0].cols) == (30, 40)
    assert jpg.report_path.endswith("s50000001.txt")
    others = [s for s in res.studies if s.key not in ("s50414267", "s50000001")]
    reports = {os.path.basename(os.path.dirname(s.images[0].path)): s.report_path for s in others}
    assert reports["other"] == str(root / "other" / "img.txt")  # the stem match wins over the other .txt
    assert reports["third"] is None  # a lone .txt is tied to no study by any rule: listed as unpaired
    # and the SR of a StudyInstanceUID with no image here
    assert {os.path.basename(p) for p, _ in res.unpaired} == {"zz.txt", "notes.txt", "sr.dcm"}
    assert mimic.report_pairing == "MIMIC layout" and by_key["s50000001"].report_pairing == "MIMIC layout"
    assert all(s.key == s.uid for s in others)


def test_bad_files_listed_junk_ignored_sr_skipped(tree):
    root = tree[0]
    res = scan_folder(root)
    errs = {os.path.basename(p): m for p, m in res.errors}
    assert set(errs) == {"broken.dcm", "trunc.dcm", "emptyfile.dcm"}
    assert "not a DICOM" in errs["broken.dcm"] and "empty" in errs["emptyfile.dcm"]
    # an SR belongs to its study (a report, a review): never a problem, neither an error nor "skipped (no image)"
    assert res.skipped == [] and "sr.dcm" not in errs
    assert not any("README" in p or "DS_Store" in p for p, _ in res.errors)


def test_progress_and_cancel(tree):
    root = tree[0]
    calls = []
    full = scan_folder(root, progress=lambda d, t: calls.append((d, t)))
    total = calls[-1][1]
    assert [d for d, _ in calls] == list(range(1, total + 1)) and all(t == total for _, t in calls)
    assert full.cancelled is False
    n = {"polls": 0}

    def cancel():
        n["polls"] += 1
        return n["polls"] > 2

    part = scan_folder(root, cancel=cancel)
    assert part.cancelled is True
    assert part.n_images < full.n_images


def test_single_file_root_and_missing_root(tree):
    root = tree[0]
    res = scan_folder(root / "other" / "img.dcm")
    assert len(res.studies) == 1 and res.studies[0].report_path == str(root / "other" / "img.txt")
    res = scan(root / "files" / "p10" / "p10000032" / "s50414267" / "a.dcm")
    assert res.studies[0].key == "s50414267" and res.studies[0].report_path.endswith("s50414267.txt")
    with pytest.raises(StudyScanError, match="no such"):
        scan_folder(root / "nope")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read any folder")
def test_unreadable_subfolder_reported(tmp_path):
    make_dicom(tmp_path / "ok.dcm", PIX)
    locked = tmp_path / "locked"
    locked.mkdir()
    make_dicom(locked / "hidden.dcm", PIX)
    os.chmod(locked, 0)
    try:
        res = scan_folder(tmp_path)
    finally:
        os.chmod(locked, 0o755)
    assert res.n_images == 1 and any("cannot be read" in m for _, m in res.errors)


def test_unlistable_subfolder_reported_and_scan_goes_on(tmp_path, monkeypatch):
    # works as root too: the folder listing itself fails, as it does for an unreadable folder
    make_dicom(tmp_path / "ok.dcm", PIX)
    locked = tmp_path / "locked"
    locked.mkdir()
    make_dicom(locked / "hidden.dcm", PIX)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    res = scan_folder(tmp_path)
    assert res.n_images == 1
    assert [(p, m) for p, m in res.errors] == [(str(locked), "folder cannot be read (Permission denied)")]


def test_dicomdir_matches_directory_records():
    path = get_testdata_file("DICOMDIR")
    ds = pydicom.dcmread(path)
    records = ds.DirectoryRecordSequence
    n_images = sum(1 for r in records if r.DirectoryRecordType == "IMAGE")
    study_uids = {r.StudyInstanceUID for r in records if r.DirectoryRecordType == "STUDY"}
    sops = {r.ReferencedSOPInstanceUIDInFile for r in records if r.DirectoryRecordType == "IMAGE"}
    res = read_dicomdir(path)
    assert res.errors == []
    assert res.n_images == n_images
    assert {s.uid for s in res.studies} == study_uids
    assert {im.sop_instance_uid for s in res.studies for im in s.images} == sops
    assert scan(path).n_images == n_images


def test_dicomdir_bad(tmp_path):
    bad = tmp_path / "DICOMDIR"
    bad.write_text("nope")
    with pytest.raises(StudyScanError, match="DICOMDIR"):
        read_dicomdir(bad)
    with pytest.raises(StudyScanError):
        read_dicomdir(tmp_path / "missing" / "DICOMDIR")


def _pydicom_scan_fields(path):
    from elvis_core.io.studies import _FAST_TAGS, _read_scan_header_pydicom

    ds = _read_scan_header_pydicom(path)
    out = {}
    for name in _FAST_TAGS.values():
        v = ds.get(name, None)
        if v is None or v == "":
            continue
        if name in ("SeriesNumber", "InstanceNumber", "NumberOfFrames", "Rows", "Columns"):
            out[name] = int(v)
        else:
            out[name] = str(v[0]) if isinstance(v, pydicom.multival.MultiValue) else str(v)
    return out


def test_fast_header_parser_agrees_with_pydicom_on_pydicom_data():
    import warnings

    from elvis_core.io.studies import _fast_scan_header

    folders = {os.path.dirname(get_testdata_file(n)) for n in ("CT_small.dcm", "RG3_UNCI.dcm")}
    n_fast = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for folder in sorted(folders):
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if not os.path.isfile(path) or os.path.getsize(path) > 3_000_000:
                    continue
                fast = _fast_scan_header(path)
                if fast is None:
                    continue
                try:
                    ref = _pydicom_scan_fields(path)
                except Exception:  # noqa: BLE001 - files pydicom itself rejects are not comparable
                    continue
                got = {k: v for k, v in fast.items() if not k.startswith("_") and v not in (None, "")}
                assert got == ref, name
                n_fast += 1
    assert n_fast >= 50


def test_fast_header_parser_skips_undefined_length_sequences(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from elvis_core.io.studies import _fast_scan_header

    p = make_dicom(tmp_path / "sq.dcm", PIX, ViewPosition="AP", InstanceNumber=7)
    ds = pydicom.dcmread(p)
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    item.DerivationCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds["ReferencedImageSequence"].is_undefined_length = True
    for it in ds.ReferencedImageSequence:
        it.is_undefined_length_sequence_item = True
    ds.save_as(p)
    fast = _fast_scan_header(str(p))
    assert fast is not None
    assert (fast["Rows"], fast["Columns"], fast["ViewPosition"], fast["InstanceNumber"]) == (16, 20, "AP", 7)
    assert fast["SOPInstanceUID"] == str(ds.SOPInstanceUID)


def test_reports_in_a_separate_mimic_tree(tmp_path):
    jpg_root, rep_root = tmp_path / "mimic-cxr-jpg", tmp_path / "mimic-cxr-reports"
    study = jpg_root / "files" / "p10" / "p10000032" / "s50414267"
    study.mkdir(parents=True)
    cv2.imwrite(str(study / "abc.jpg"), np.zeros((8, 8), np.uint8))
    (rep_root / "files" / "p10" / "p10000032").mkdir(parents=True)
    report = rep_root / "files" / "p10" / "p10000032" / "s50414267.txt"
    report.write_text("FINDINGS: Clear.\n")
    assert scan_folder(jpg_root).studies[0].report_path is None
    assert scan_folder(jpg_root, reports_root=rep_root).studies[0].report_path == str(report)
    assert scan(jpg_root, reports_root=rep_root / "files").studies[0].report_path == str(report)


def test_raster_header_shape_png_jpeg_and_bad_files(tmp_path):
    import cv2
    import numpy as np
    import pytest

    from elvis_core.errors import ElvisError
    from elvis_core.io.images import raster_header_shape

    img = (np.arange(37 * 53) % 256).astype(np.uint8).reshape(37, 53)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    assert raster_header_shape(tmp_path / "a.png") == (37, 53)
    assert raster_header_shape(tmp_path / "a.jpg") == (37, 53)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:4])
    (tmp_path / "x.png").write_bytes(b"hello")
    for bad in ("cut.jpg", "x.png", "missing.png"):
        with pytest.raises(ElvisError, match=bad):
            raster_header_shape(tmp_path / bad)
