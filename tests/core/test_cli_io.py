"""`elvis inspect` and `elvis render` end to end (in-process through the dispatcher): outputs, --json, errors as one
line with exit code 2, no patient identifiers."""

import json

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from elvis_core.cli import main
from elvis_core.io.dicom import read_radiograph
from elvis_core.io.display import to_uint8
from elvis_core.io.radiograph import Window
from tests.core.test_dicom_bad import SECRET_ID, SECRET_NAME, make_dicom

PIX = (np.arange(16 * 20).reshape(16, 20) * 10 % 4096).astype(np.uint16)


def _one_line_error(capsys, code, *needles):
    out, err = capsys.readouterr()
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    for n in needles:
        assert n in lines[0]
    return lines[0]


def test_render_default_matches_to_uint8(tmp_path, capsys):
    src = get_testdata_file("RG3_UNCI.dcm")
    out = tmp_path / "rg3.png"
    assert main(["render", src, "--out", str(out)]) == 0
    png = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and png.shape == (1760, 1760)
    np.testing.assert_array_equal(png, to_uint8(read_radiograph(src)))


def test_render_window_frame_invert_voi(tmp_path):
    src = get_testdata_file("emri_small.dcm")
    out = tmp_path / "f3.png"
    assert main(["render", src, "--out", str(out), "--frame", "3", "--window", "200,400", "--invert"]) == 0
    expected = 255 - to_uint8(read_radiograph(src, frame=3), Window(200, 400))
    np.testing.assert_array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), expected)
    vl = get_testdata_file("vlut_04.dcm")
    out = tmp_path / "v.png"
    assert main(["render", vl, "--out", str(out), "--voi-lut"]) == 0
    np.testing.assert_array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED),
                                  to_uint8(read_radiograph(vl), use_voi_lut=True))


def test_render_errors_are_one_line(tmp_path, capsys):
    src = get_testdata_file("MR_small.dcm")
    _one_line_error(capsys, main(["render", src, "--out", str(tmp_path / "a.png"), "--window", "10,0"]), "width")
    _one_line_error(capsys, main(["render", src, "--out", str(tmp_path / "a.png"), "--window", "abc"]), "CENTER")
    _one_line_error(capsys, main(["render", src, "--out", str(tmp_path / "no" / "a.png")]), "does not exist")
    _one_line_error(capsys, main(["render", src, "--out", str(tmp_path / "a.png"), "--frame", "5"]), "out of range")
    txt = tmp_path / "fake.dcm"
    txt.write_text("hello")
    _one_line_error(capsys, main(["render", str(txt), "--out", str(tmp_path / "a.png")]), str(txt), "not a DICOM")
    sr = make_dicom(tmp_path / "sr.dcm", sop_class="1.2.840.10008.5.1.4.1.1.88.22", Modality="SR")
    line = _one_line_error(capsys, main(["render", str(sr), "--out", str(tmp_path / "a.png")]), "Structured Report")
    assert SECRET_NAME not in line and SECRET_ID not in line


def test_inspect_dicom_text_and_json_without_identifiers(tmp_path, capsys):
    p = make_dicom(tmp_path / "id.dcm", PIX, photometric="MONOCHROME1", WindowCenter=100, WindowWidth=50,
                   ImagerPixelSpacing=[0.2, 0.2])
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "MONOCHROME1" in out and "C=3995 W=50" in out and "0.2 x 0.2 mm" in out
    assert SECRET_NAME not in out and SECRET_ID not in out and "19700101" not in out
    assert main(["inspect", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "dicom" and info["shape"] == [16, 20] and info["inverted_from_monochrome1"] is True
    assert info["windows"][0]["center"] == 4095 - 100
    assert SECRET_ID not in json.dumps(info)
    assert main(["inspect", str(p), "--tags"]) == 0
    out = capsys.readouterr().out
    assert "PatientName" in out and "***" in out and SECRET_NAME not in out


def test_inspect_report_and_folder(tmp_path, capsys):
    rep = tmp_path / "s1.txt"
    rep.write_text("FINDINGS: Opacity 3.5 cm. Clear otherwise.\nIMPRESSION: Pneumonia.\n")
    assert main(["inspect", str(rep), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    text = rep.read_text()
    assert [s["name"] for s in info["sections"]] == ["FINDINGS", "IMPRESSION"]
    assert [text[s["start"]:s["end"]] for s in info["sentences"]] == ["Opacity 3.5 cm.", "Clear otherwise.",
                                                                       "Pneumonia."]
    make_dicom(tmp_path / "img.dcm", PIX, ViewPosition="PA")
    (tmp_path / "bad.dcm").write_text("x")
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_images"] == 1 and info["errors"][0]["path"].endswith("bad.dcm")
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 studies, 1 images" in out and "bad.dcm" in out


def test_inspect_errors(tmp_path, capsys):
    _one_line_error(capsys, main(["inspect", str(tmp_path / "missing.dcm")]), "no such")
    empty = tmp_path / "e.txt"
    empty.write_text("")
    _one_line_error(capsys, main(["inspect", str(empty)]), "empty")
    trunc = tmp_path / "t.dcm"
    trunc.write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read()[:1000])
    _one_line_error(capsys, main(["inspect", str(trunc)]), str(trunc))


@pytest.mark.parametrize("cmd", ["inspect", "render"])
def test_help_has_example(cmd, capsys):
    with pytest.raises(SystemExit) as ei:
        main([cmd, "--help"])
    assert ei.value.code == 0
    assert "example" in capsys.readouterr().out.lower()


def test_fallback_decoder_prints_no_traceback(tmp_path):
    # pydicom fails on 12-bit JPEG and logs a traceback; SimpleITK then succeeds: the console must stay clean
    import subprocess
    import sys

    out = tmp_path / "lossy.png"
    proc = subprocess.run(
        [sys.executable, "-m", "elvis_core", "render", get_testdata_file("JPEG-lossy.dcm"), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).shape == (1024, 256)
