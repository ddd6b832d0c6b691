"""Reports are paired with studies by rule (MIMIC layout, report SR of the same StudyInstanceUID, same file stem,
explicit), never by being the only .txt in a folder: a loose note in a folder of two studies used to become the
report of BOTH ("this is not a dicom file" was shown as RG1's report)."""

import os
import shutil

import numpy as np
from pydicom.data import get_testdata_file

from elvis_core.io import report_pairing as rp
from elvis_core.io.studies import scan_folder
from tests.core.test_dicom_bad import make_dicom

PIX = (np.arange(16 * 20).reshape(16, 20) % 4096).astype(np.uint16)


def test_two_studies_and_one_loose_txt_give_no_report_to_either(tmp_path):
    shutil.copy(get_testdata_file("RG1_UNCI.dcm"), tmp_path / "rg1.dcm")
    make_dicom(tmp_path / "normal.dcm", PIX)  # another StudyInstanceUID
    (tmp_path / "notes.txt").write_text("Large left pneumothorax.\n")
    res = scan_folder(tmp_path)
    assert len(res.studies) == 2
    assert [st.report_path for st in res.studies] == [None, None]
    assert [st.report_pairing for st in res.studies] == ["", ""]
    (path, msg), = res.unpaired
    assert path == str(tmp_path / "notes.txt") and "unpaired" in msg and "notes.txt" in msg


def test_one_study_and_a_loose_txt_is_still_unpaired(tmp_path):
    """Being the only .txt beside the only study is no rule: the note may be anything ("not a dicom file")."""
    make_dicom(tmp_path / "a.dcm", PIX)
    (tmp_path / "readme.txt").write_text("this is not a dicom file\n")
    res = scan_folder(tmp_path)
    assert res.studies[0].report_path is None and [os.path.basename(p) for p, _ in res.unpaired] == ["readme.txt"]


def test_each_rule_says_how_it_paired(tmp_path):
    mimic = tmp_path / "files" / "p10" / "p10000032" / "s50414267"
    mimic.mkdir(parents=True)
    make_dicom(mimic / "a.dcm", PIX)
    (mimic.parent / "s50414267.txt").write_text("FINDINGS: Clear.\n")
    stem = tmp_path / "stem"
    stem.mkdir()
    make_dicom(stem / "img.dcm", PIX)
    (stem / "img.txt").write_text("IMPRESSION: stem matched.\n")
    res = scan_folder(tmp_path)
    got = {st.key: (os.path.basename(st.report_path), st.report_pairing) for st in res.studies}
    assert got["s50414267"] == ("s50414267.txt", rp.MIMIC)
    (other,) = [v for k, v in got.items() if k != "s50414267"]
    assert other == ("img.txt", rp.SAME_STEM)
    assert res.unpaired == []
    assert rp.Pairing("x", rp.MIMIC).header == "paired: MIMIC layout"


def test_explicit_pairing_needs_one_study(tmp_path):
    a = make_dicom(tmp_path / "a.dcm", PIX, StudyInstanceUID="1.2.3.4")
    b = make_dicom(tmp_path / "b.dcm", PIX, StudyInstanceUID="1.2.3.4")
    c = make_dicom(tmp_path / "c.dcm", PIX, StudyInstanceUID="1.2.3.5")
    rep = str(tmp_path / "r.txt")
    got, err = rp.explicit_pairing([str(a)], rep)
    assert err is None and got[str(a)] == rp.Pairing(rep, rp.EXPLICIT)
    got, err = rp.explicit_pairing([str(a), str(b)], rep)  # two views of one study
    assert err is None and set(got) == {str(a), str(b)}
    got, err = rp.explicit_pairing([str(a), str(c)], rep)
    assert got == {} and "unpaired" in err and "r.txt" in err
    got, err = rp.explicit_pairing([], rep)
    assert got == {} and "unpaired" in err


def test_a_single_file_pairs_by_layout_or_stem_only(tmp_path):
    img = make_dicom(tmp_path / "x.dcm", PIX)
    (tmp_path / "other.txt").write_text("loose")
    assert rp.pair_single_file(str(img)) is None
    (tmp_path / "x.txt").write_text("mine")
    assert rp.pair_single_file(str(img)) == rp.Pairing(str(tmp_path / "x.txt"), rp.SAME_STEM)


def test_inspect_lists_unpaired_reports_and_says_how_reports_paired(tmp_path, capsys):
    from elvis_core.cli import main

    mimic = tmp_path / "files" / "p10" / "p10000032" / "s50414267"
    mimic.mkdir(parents=True)
    make_dicom(mimic / "a.dcm", PIX)
    (mimic.parent / "s50414267.txt").write_text("FINDINGS: Clear.\n")
    (tmp_path / "loose.txt").write_text("Large left pneumothorax.\n")
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(paired: MIMIC layout)" in out
    assert "unpaired: " in out and "loose.txt" in out
