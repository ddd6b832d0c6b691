"""DICOM results are named by UID on disk (a PACS files them so), but what `elvis review` / `elvis ground` print —
written files, problems, errors — shows every UID as its pseudonym ``uid~12345678`` unless --show-identifiers; an
error of the DICOM results names its source image by pseudonym, never by its UID."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from elvis_core.cli import main, shown
from elvis_core.dicom_results import DicomExportError, read_source, review_sr
from elvis_core.io.uid_mask import short_pseudonym
from elvis_core.review.session import ReviewSession

RG1 = get_testdata_file("RG1_UNCI.dcm")
FOLDER_UID = "1.2.826.0.1.3680043.8.498.111"
IMAGE_UID = "1.2.826.0.1.3680043.8.498.123456789"


def test_shown_masks_only_where_the_command_asks():
    text = f"reviewed/{IMAGE_UID}.sr.dcm, W 400 L 40, 0.139 mm"
    masked = shown(argparse.Namespace(mask_uids=True, show_identifiers=False), text)
    assert masked == f"reviewed/{short_pseudonym(IMAGE_UID)}.sr.dcm, W 400 L 40, 0.139 mm"
    assert shown(argparse.Namespace(mask_uids=True, show_identifiers=True), text) == text
    assert shown(argparse.Namespace(), text) == text  # a command that did not opt in prints as it did


def test_dicom_result_errors_name_the_image_by_pseudonym():
    src = read_source(RG1)
    with pytest.raises(DicomExportError) as e:
        review_sr(src, [])
    assert str(src.SOPInstanceUID) not in str(e.value)
    assert f"image {short_pseudonym(str(src.SOPInstanceUID))}" in str(e.value)


def test_cli_errors_are_masked(tmp_path, capsys):
    ann = tmp_path / FOLDER_UID / f"{IMAGE_UID}.csv"
    assert main(["review", "status", str(ann), "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "annotation file not found" in err and IMAGE_UID not in err and FOLDER_UID not in err and "uid~" in err
    assert main(["review", "status", str(ann), "--images", str(tmp_path), "--show-identifiers"]) == 2
    assert f"{FOLDER_UID}/{IMAGE_UID}.csv" in capsys.readouterr().err


def test_review_export_dicom_sr_prints_no_uid(tmp_path, capsys):
    """A reviewed image from a PACS-like folder (``<UID>/<UID>.dcm``): the SR is written as <SOPInstanceUID>.sr.dcm
    and printed as uid~….sr.dcm; a missing image's problem line is masked too; --show-identifiers prints both."""
    root = tmp_path / "cache"
    (root / FOLDER_UID).mkdir(parents=True)
    shutil.copy(RG1, root / FOLDER_UID / f"{IMAGE_UID}.dcm")
    src = pydicom.dcmread(RG1, stop_before_pixels=True)
    missing = "1.2.826.0.1.3680043.8.498.5"
    ann = tmp_path / "review.csv"
    ann.write_text("dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
                   f"{IMAGE_UID},Pneumothorax,small right pneumothorax,{FOLDER_UID}/{IMAGE_UID}.dcm,100,100,200,200,"
                   f"{src.Columns},{src.Rows}\n"
                   f"{missing},Edema,mild edema,{FOLDER_UID}/{missing}.dcm,10,10,50,50,{src.Columns},{src.Rows}\n")
    s = ReviewSession.open(ann, root, reviewer="carol")
    try:
        s.accept()
    finally:
        s.close()
    uids = [FOLDER_UID, IMAGE_UID, missing, str(src.SOPInstanceUID), str(src.StudyInstanceUID)]
    out = tmp_path / "sr"
    main(["review", "export", str(ann), "--images", str(root), "--format", "dicom-sr", "--out", str(out)])
    cap = capsys.readouterr()
    written = sorted(out.glob("*.sr.dcm"))
    assert [p.name for p in written] == [f"{src.SOPInstanceUID}.sr.dcm"]  # on disk: named by UID, as a PACS files
    assert f"{short_pseudonym(str(src.SOPInstanceUID))}.sr.dcm" in cap.out
    assert "image not found" in cap.err
    assert not [u for u in uids if u in cap.out + cap.err], cap.out + cap.err

    main(["review", "export", str(ann), "--images", str(root), "--format", "dicom-sr", "--out", str(tmp_path / "b"),
          "--show-identifiers"])
    cap = capsys.readouterr()
    assert Path(cap.out.strip().splitlines()[-1]).name == f"{src.SOPInstanceUID}.sr.dcm"
    assert f"{FOLDER_UID}/{missing}.dcm" in cap.err
