"""Bad and absurd DICOM inputs: each gives a typed error naming the file and the problem, never a traceback;
absurd tags are dropped with a warning; no patient identifiers in messages. Also MONOCHROME1 + VOI LUT and
spacing rules on synthetic files built here with pydicom."""

import os
import shutil

import numpy as np
import pydicom
import pydicom.filewriter
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from elvis_core.errors import DicomReadError, UnsupportedDicomError
from elvis_core.io.dicom import read_header, read_radiograph
from elvis_core.io.display import to_uint8
from elvis_core.io.images import read_image
from elvis_core.io.privacy import IDENTIFYING_KEYWORDS, dicom_tag_rows

SECRET_NAME = "Doe^Janeway"
SECRET_ID = "MRN-0042-SECRET"


def make_dicom(path, pixels=None, photometric="MONOCHROME2", sop_class="1.2.840.10008.5.1.4.1.1.1", bits=12,
               ts=ExplicitVRLittleEndian, **tags):
    """A small valid DICOM (CR by default) with patient identifiers set, written to ``path``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = tags.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = tags.pop("SeriesInstanceUID", generate_uid())
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.PatientBirthDate = "19700101"
    ds.Modality = tags.pop("Modality", "CR")
    if pixels is not None:
        pixels = np.asarray(pixels, dtype=np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ramp():
    return (np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 2) % 4096


def _assert_clean(err, path):
    msg = str(err)
    assert str(path) in msg
    assert SECRET_NAME not in msg and SECRET_ID not in msg and "Doe" not in msg
    assert "\n" not in msg


def test_truncated_pixel_data(tmp_path):
    src = get_testdata_file("RG3_UNCI.dcm")
    dst = tmp_path / "trunc.dcm"
    data = open(src, "rb").read()
    dst.write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomReadError) as ei:
        read_radiograph(dst)
    _assert_clean(ei.value, dst)
    assert "truncat" in str(ei.value).lower() or "pixel" in str(ei.value).lower()


def test_truncated_header(tmp_path):
    src = get_testdata_file("CT_small.dcm")
    dst = tmp_path / "head.dcm"
    dst.write_bytes(open(src, "rb").read()[:300])
    with pytest.raises(DicomReadError, match="truncated") as ei:
        read_radiograph(dst)
    _assert_clean(ei.value, dst)
    assert not isinstance(ei.value, UnsupportedDicomError)


def test_truncated_encapsulated_j2k(tmp_path):
    src = get_testdata_file("RG3_J2KR.dcm")
    dst = tmp_path / "trunc_j2k.dcm"
    data = open(src, "rb").read()
    dst.write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomReadError, match="truncated") as ei:
        read_radiograph(dst)
    _assert_clean(ei.value, dst)


def test_text_file_named_dcm_and_empty_and_folder(tmp_path):
    txt = tmp_path / "notes.dcm"
    txt.write_text("FINDINGS: this is not a DICOM file.\n")
    with pytest.raises(DicomReadError, match="not a DICOM file") as ei:
        read_radiograph(txt)
    _assert_clean(ei.value, txt)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(DicomReadError, match="empty file"):
        read_radiograph(empty)
    with pytest.raises(DicomReadError, match="folder"):
        read_radiograph(tmp_path)
    with pytest.raises(DicomReadError, match="no such file"):
        read_radiograph(tmp_path / "missing.dcm")
    with pytest.raises(DicomReadError, match="not a DICOM"):
        read_image(txt)


def test_structured_report_and_presentation_state_have_no_pixels(tmp_path):
    sr = make_dicom(tmp_path / "sr.dcm", sop_class="1.2.840.10008.5.1.4.1.1.88.22", Modality="SR")
    with pytest.raises(UnsupportedDicomError, match="without pixel data.*Structured Report") as ei:
        read_radiograph(sr)
    _assert_clean(ei.value, sr)
    pr = make_dicom(tmp_path / "pr.dcm", sop_class="1.2.840.10008.5.1.4.1.1.11.1", Modality="PR")
    with pytest.raises(UnsupportedDicomError, match="Presentation State"):
        read_radiograph(pr)
    assert read_header(sr)["HasPixelData"] is False
    assert read_header(sr)["ImageKind"] == "Structured Report"


def test_zero_size_image(tmp_path, ramp):
    p = make_dicom(tmp_path / "zero.dcm", ramp)
    ds = pydicom.dcmread(p)
    ds.Rows = 0
    ds.save_as(p)
    with pytest.raises(DicomReadError, match="zero-size") as ei:
        read_radiograph(p)
    _assert_clean(ei.value, p)


def test_unsupported_transfer_syntax(tmp_path, ramp):
    p = make_dicom(tmp_path / "odd.dcm", ramp)
    ds = pydicom.dcmread(p)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder here
    ds.PixelData = encapsulate([b"\x00\x01" * 500])
    ds["PixelData"].VR = "OB"
    ds.save_as(p)
    with pytest.raises(UnsupportedDicomError, match="cannot decode") as ei:
        read_radiograph(p)
    _assert_clean(ei.value, p)


def test_window_width_zero_preset_ignored_others_kept(tmp_path, ramp):
    p = make_dicom(tmp_path / "w0.dcm", ramp, WindowCenter=[100, 2000], WindowWidth=[0, 1000],
                   WindowCenterWidthExplanation=["BROKEN", "SOFT"])
    r = read_radiograph(p)
    assert [(w.center, w.width, w.name) for w in r.windows] == [(2000.0, 1000.0, "SOFT")]
    assert any("width 0" in w for w in r.warnings)
    assert to_uint8(r).dtype == np.uint8


def test_negative_spacing_dropped_imager_spacing_with_magnification(tmp_path, ramp):
    p = make_dicom(tmp_path / "neg.dcm", ramp, PixelSpacing=[-0.1, 0.1])
    r = read_radiograph(p)
    assert r.pixel_spacing is None and r.spacing_source == "none"
    assert any("not positive" in w for w in r.warnings)
    p = make_dicom(tmp_path / "mag.dcm", ramp, ImagerPixelSpacing=[0.2, 0.25],
                   EstimatedRadiographicMagnificationFactor=1.25)
    r = read_radiograph(p)
    assert r.pixel_spacing == pytest.approx((0.16, 0.2))
    assert r.spacing_source == "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    p = make_dicom(tmp_path / "imager.dcm", ramp, ImagerPixelSpacing=[0.2, 0.2])
    assert read_radiograph(p).spacing_source == "ImagerPixelSpacing"
    p = make_dicom(tmp_path / "both.dcm", ramp, ImagerPixelSpacing=[0.2, 0.2], PixelSpacing=[0.15, 0.15])
    r = read_radiograph(p)
    assert r.pixel_spacing == (0.15, 0.15) and r.spacing_source == "PixelSpacing"


def test_monochrome1_rescale_and_window(tmp_path, ramp):
    p = make_dicom(tmp_path / "m1.dcm", ramp, photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100,
                   WindowCenter=1000, WindowWidth=400)
    r = read_radiograph(p)
    lo, hi = -100.0, 4095 * 2 - 100.0
    assert r.invert_pivot == lo + hi
    np.testing.assert_allclose(r.pixels, (lo + hi) - (ramp * 2.0 - 100.0))
    assert r.windows[0].center == (lo + hi) - 1000 and r.windows[0].width == 400
    # display in the bright sense equals the MONOCHROME1 display of the raw values
    modality = ramp * 2.0 - 100.0
    expected = 255 - np.clip((modality - 800) / 400 * 255, 0, 255)
    assert np.abs(to_uint8(r).astype(float) - expected).max() <= 1.0


def test_monochrome1_voi_lut_mirrored(tmp_path, ramp):
    table = (np.linspace(0, 1, 256) ** 2 * 4095).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 1000, 12])  # LUTDescriptor
    item.add_new(0x00283006, "OW", table.astype("<u2").tobytes())  # LUTData
    p = make_dicom(tmp_path / "m1voi.dcm", ramp, photometric="MONOCHROME1")
    ds = pydicom.dcmread(p)
    ds.VOILUTSequence = [item]
    ds.save_as(p)
    r = read_radiograph(p)
    assert r.voi_lut is not None
    raw = ramp.astype(np.int64)
    out = table[np.clip(raw - 1000, 0, 255)] / 4095.0  # VOI LUT output, MONOCHROME1 sense (high = dark)
    expected = (1.0 - out) * 255.0
    assert np.abs(to_uint8(r, use_voi_lut=True).astype(float) - expected).max() <= 0.5 + 1e-6


def test_no_identifiers_in_meta_header_and_tag_rows(tmp_path, ramp):
    p = make_dicom(tmp_path / "id.dcm", ramp, InstitutionName="Secret Hospital", AccessionNumber="ACC999")
    r = read_radiograph(p)
    blob = repr(r.meta) + repr(r.warnings) + repr(read_header(p))
    for secret in (SECRET_NAME, SECRET_ID, "19700101", "Secret Hospital", "ACC999"):
        assert secret not in blob
    rows = dicom_tag_rows(p)
    masked = {kw: v for _t, kw, _vr, v in rows if kw in IDENTIFYING_KEYWORDS}
    assert masked["PatientName"] == "***" and masked["PatientID"] == "***" and masked["InstitutionName"] == "***"
    assert "Secret Hospital" not in repr(rows)
    revealed = {kw: v for _t, kw, _vr, v in dicom_tag_rows(p, reveal_identifiers=True)}
    assert revealed["PatientID"] == SECRET_ID
    assert revealed["Modality"] == "CR"
    assert any(kw == "PixelData" for _t, kw, _vr, _v in rows) is False  # header only


def test_preamble_less_dicom_is_read(tmp_path, ramp):
    p = make_dicom(tmp_path / "full.dcm", ramp)
    ds = pydicom.dcmread(p)
    del ds.file_meta
    ds.preamble = None
    raw = tmp_path / "raw_no_ext"
    ds.save_as(raw, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert open(raw, "rb").read(4) != b"DICM"
    r = read_image(raw)
    np.testing.assert_array_equal(r.pixels, ramp.astype(np.float32))


def test_copy_with_other_extension_detected_by_content(tmp_path):
    dst = tmp_path / "image.bin"
    shutil.copy(get_testdata_file("MR_small.dcm"), dst)
    r = read_image(dst)
    assert r.meta["Decoder"] == "pydicom" and r.shape == (64, 64)
    assert os.path.basename(r.source_path) == "image.bin"


def test_presentation_lut_inverse_on_monochrome2(tmp_path, ramp):
    p = make_dicom(tmp_path / "inv.dcm", ramp, WindowCenter=1000, WindowWidth=400, PresentationLUTShape="INVERSE")
    r = read_radiograph(p)
    np.testing.assert_array_equal(r.pixels, 4095.0 - ramp)
    assert r.windows[0].center == 4095 - 1000 and not r.inverted_from_monochrome1
    assert any("INVERSE" in w for w in r.warnings)
    expected = 255 - np.clip((ramp - 800.0) / 400 * 255, 0, 255)  # the stored window, displayed inverted
    assert np.abs(to_uint8(r).astype(float) - expected).max() <= 1.0
    # IDENTITY (or MONOCHROME1 + INVERSE, the normal pairing) changes nothing
    p = make_dicom(tmp_path / "m1inv.dcm", ramp, photometric="MONOCHROME1", PresentationLUTShape="INVERSE")
    np.testing.assert_array_equal(read_radiograph(p).pixels, 4095.0 - ramp)
    p = make_dicom(tmp_path / "id.dcm", ramp, PresentationLUTShape="IDENTITY")
    np.testing.assert_array_equal(read_radiograph(p).pixels, ramp.astype(np.float32))


def test_voi_lut_ow_data_in_big_endian_file(tmp_path, ramp):
    from pydicom.uid import ExplicitVRBigEndian

    table = (np.linspace(0, 1, 300) ** 0.5 * 4095).astype(np.uint16)
    results = []
    for ts, order in ((ExplicitVRLittleEndian, "<u2"), (ExplicitVRBigEndian, ">u2")):
        p = make_dicom(tmp_path / f"voi_{order[0] == '>'}.dcm", ramp)
        ds = pydicom.dcmread(p)
        item = Dataset()
        item.add_new(0x00283002, "US", [300, 500, 12])
        item.add_new(0x00283006, "OW", table.astype(order).tobytes())  # OW words in the file's byte order
        ds.VOILUTSequence = [item]
        ds.PixelData = ramp.astype(order).tobytes()  # native pixel words in the file's byte order too
        ds.file_meta.TransferSyntaxUID = ts
        pydicom.filewriter.dcmwrite(p, ds, little_endian=order[0] == "<", implicit_vr=False, force_encoding=True)
        r = read_radiograph(p)
        np.testing.assert_array_equal(r.pixels, ramp.astype(np.float32))
        results.append(to_uint8(r, use_voi_lut=True))
    expected = np.rint(table[np.clip(ramp.astype(np.int64) - 500, 0, 299)] / 4095 * 255)
    np.testing.assert_array_equal(results[0], expected)
    np.testing.assert_array_equal(results[1], expected)
