"""Files cut short in their pixel data are found at scan time (elvis_core/io/truncation.py), with no false alarm on
the complete files of pydicom's test data (native, encapsulated, deflated, big endian)."""

import glob
import os

import pydicom
import pytest
from pydicom.data import get_testdata_file

from elvis_core.io.truncation import pixel_data_problem


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "emri_small_RLE.dcm", "SC_rgb_rle.dcm",
                                  "JPEG2000.dcm", "OBXXXX1A.dcm"])
def test_cut_files_are_found(tmp_path, name):
    raw = open(get_testdata_file(name), "rb").read()
    assert pixel_data_problem(get_testdata_file(name)) is None
    for keep in (len(raw) - 300, len(raw) * 3 // 4):
        p = tmp_path / f"cut_{keep}.dcm"
        p.write_bytes(raw[:keep])
        msg = pixel_data_problem(str(p))
        assert msg is not None and msg.startswith("truncated DICOM"), (name, keep)


def test_no_false_alarm_on_complete_images():
    d = os.path.dirname(get_testdata_file("CT_small.dcm"))
    flagged = []
    for f in sorted(glob.glob(os.path.join(d, "*.dcm"))):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not what this test is about
            continue
        if "Rows" in ds and pixel_data_problem(f):
            flagged.append(os.path.basename(f))
    assert flagged == ["MR_truncated.dcm"]  # the one file of the set that really is cut short
