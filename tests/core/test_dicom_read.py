"""read_radiograph on the real pydicom-data files, each compared with an independent reading computed here
(SimpleITK, or pydicom's pixel_array + a hand-written LUT / rescale)."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from elvis_core.errors import DicomReadError
from elvis_core.io.dicom import read_header, read_radiograph
from elvis_core.io.display import to_uint8


def _path(name):
    p = get_testdata_file(name)
    if p is None:
        pytest.skip(f"{name} not in pydicom-data")
    return p


def _sitk(name):
    return sitk.GetArrayFromImage(sitk.ReadImage(_path(name))).astype(np.float64)


@pytest.fixture(scope="module")
def rg3():
    return {n: read_radiograph(_path(n)) for n in ("RG3_UNCI.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm")}


def test_monochrome1_inverted_exactly_once_matches_simpleitk(rg3):
    r = rg3["RG3_UNCI.dcm"]
    assert r.meta["Decoder"] == "pydicom"
    assert r.meta["PhotometricInterpretation"] == "MONOCHROME1"
    assert r.inverted_from_monochrome1
    # SimpleITK (GDCM) inverts MONOCHROME1 itself: our pydicom path must agree with it value for value
    ref = _sitk("RG3_UNCI.dcm")[0]
    np.testing.assert_array_equal(r.pixels, ref)
    # and our explicit SimpleITK path must not invert a second time
    s = read_radiograph(_path("RG3_UNCI.dcm"), decoder="SimpleITK")
    assert s.meta["Decoder"] == "SimpleITK"
    np.testing.assert_array_equal(s.pixels, r.pixels)
    assert s.windows == r.windows


def test_monochrome1_window_in_bright_sense(rg3):
    r = rg3["RG3_UNCI.dcm"]
    ds = pydicom.dcmread(_path("RG3_UNCI.dcm"))
    assert r.invert_pivot == 1023.0  # BitsStored 10, unsigned, no rescale
    assert r.windows[0].center == pytest.approx(1023 - float(ds.WindowCenter))
    assert r.windows[0].width == pytest.approx(float(ds.WindowWidth))
    # independent display: pydicom's LINEAR window on the raw stored values, then MONOCHROME1 → white is low
    raw = ds.pixel_array.astype(np.float64)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    ref = 255.0 - np.clip((raw - (c - w / 2)) / w * 255.0, 0, 255)
    ours = to_uint8(r).astype(np.float64)
    assert np.abs(ours - ref).max() <= 1.0
    # bone (low raw values in MONOCHROME1 = white) must be brighter than the background here
    assert ours[raw <= np.percentile(raw, 5)].mean() > ours[raw >= np.percentile(raw, 95)].mean()


def test_rg3_j2k_lossless_equal_and_lossy_close(rg3):
    unc = rg3["RG3_UNCI.dcm"]
    # the "lossless" file is not bit-identical to the uncompressed one in pydicom-data (|diff| <= 9 of 1023),
    # but our decode of it equals SimpleITK's (which inverts MONOCHROME1 itself)
    np.testing.assert_array_equal(rg3["RG3_J2KR.dcm"].pixels, _sitk("RG3_J2KR.dcm")[0])
    d_unc = to_uint8(unc).astype(np.float64)
    for name in ("RG3_J2KR.dcm", "RG3_J2KI.dcm"):
        mad = np.abs(d_unc - to_uint8(rg3[name]).astype(np.float64)).mean()
        assert mad < 1.5, (name, mad)
    assert rg3["RG3_J2KI.dcm"].windows == unc.windows


def test_rg1_lossy_close_and_zero_spacing_dropped():
    a = read_radiograph(_path("RG1_UNCI.dcm"))
    b = read_radiograph(_path("RG1_J2KI.dcm"))
    assert a.shape == (1955, 1841)
    assert np.abs(to_uint8(a).astype(float) - to_uint8(b).astype(float)).mean() < 1.5
    # PixelSpacing is [0, 0] in this file: dropped with a warning, never used
    assert a.pixel_spacing is None and a.spacing_source == "none"
    assert any("PixelSpacing" in w for w in a.warnings)


def test_ct_rescale_matches_simpleitk_and_spacing():
    r = read_radiograph(_path("CT_small.dcm"))
    np.testing.assert_array_equal(r.pixels, _sitk("CT_small.dcm")[0])
    assert r.pixels.dtype == np.float32
    assert r.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert r.spacing_source == "PixelSpacing"
    assert r.windows == []  # no preset in the file → default window from percentiles
    assert r.default_window().name == "auto"


@pytest.mark.parametrize(
    "name",
    ["MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jpeg_ls_lossless.dcm"],
)
def test_mr_transfer_syntaxes_equal_uncompressed(name):
    ref = read_radiograph(_path("MR_small.dcm"))
    r = read_radiograph(_path(name))
    np.testing.assert_array_equal(r.pixels, ref.pixels)
    np.testing.assert_array_equal(r.pixels, _sitk("MR_small.dcm")[0])
    assert r.windows[0].center == 600 and r.windows[0].width == 1600
    assert r.meta["TransferSyntaxUID"] == str(pydicom.dcmread(_path(name), stop_before_pixels=True)
                                              .file_meta.TransferSyntaxUID)


def test_deflate_jpeg_lossless_and_j2k():
    dfl = read_radiograph(_path("image_dfl.dcm"))
    np.testing.assert_array_equal(dfl.pixels, _sitk("image_dfl.dcm")[0])
    assert "Deflate" in dfl.meta["TransferSyntaxName"]
    p14 = read_radiograph(_path("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    np.testing.assert_array_equal(p14.pixels, _sitk("JPGLosslessP14SV1_1s_1f_8b.dcm").reshape(p14.shape))
    j2k = read_radiograph(_path("JPEG2000.dcm"))
    np.testing.assert_array_equal(j2k.pixels, _sitk("JPEG2000.dcm").reshape(j2k.shape))
    assert j2k.pixel_spacing == pytest.approx((2.26, 2.26))


def test_12bit_jpeg_falls_back_to_simpleitk():
    # pydicom's plugins cannot decode 12-bit JPEG Extended; SimpleITK (GDCM) can
    r = read_radiograph(_path("JPEG-lossy.dcm"))
    assert r.meta["Decoder"] == "SimpleITK"
    assert any("SimpleITK" in w for w in r.warnings)
    # the same NM image as JPEG2000.dcm, lossy: strongly correlated
    ref = read_radiograph(_path("JPEG2000.dcm"))
    assert np.corrcoef(r.pixels.ravel(), ref.pixels.ravel())[0, 1] > 0.9


def test_multiframe_explicit_frame():
    ds = pydicom.dcmread(_path("emri_small.dcm"))
    frames = ds.pixel_array
    for f in (0, 3, 9):
        r = read_radiograph(_path("emri_small.dcm"), frame=f)
        np.testing.assert_array_equal(r.pixels, frames[f].astype(np.float32))
        assert r.meta["Frame"] == f and r.meta["NumberOfFrames"] == 10
    with pytest.raises(DicomReadError, match="frame 10 out of range"):
        read_radiograph(_path("emri_small.dcm"), frame=10)
    with pytest.raises(DicomReadError, match="out of range"):
        read_radiograph(_path("MR_small.dcm"), frame=1)


@pytest.mark.parametrize("name", ["SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_uncompressed.dcm",
                                  "US1_UNCR.dcm", "US1_J2KR.dcm"])
def test_colour_to_grey_with_warning(name):
    r = read_radiograph(_path(name))
    assert r.pixels.ndim == 2
    assert any("grey" in w for w in r.warnings)
    rgb = pydicom.dcmread(_path(name)).pixel_array.astype(np.float64)  # pydicom converts YBR → RGB
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    assert np.abs(r.pixels - luma).max() < 1e-3


def test_us_lossless_j2k_equals_uncompressed():
    a = read_radiograph(_path("US1_UNCR.dcm"))
    b = read_radiograph(_path("US1_J2KR.dcm"))
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_modality_lut_sequence_by_hand():
    ds = pydicom.dcmread(_path("mlut_18.dcm"))
    item = ds.ModalityLUTSequence[0]
    n, first, _bits = (int(v) for v in item.LUTDescriptor)
    n = n or 65536
    data = item.LUTData
    table = np.frombuffer(data, dtype="<u2") if isinstance(data, bytes) else np.asarray(data)
    raw = ds.pixel_array.astype(np.int64)
    ref = table[np.clip(raw - first, 0, n - 1)].astype(np.float32)
    r = read_radiograph(_path("mlut_18.dcm"))
    np.testing.assert_array_equal(r.pixels, ref)


def test_voi_lut_display_by_hand():
    ds = pydicom.dcmread(_path("vlut_04.dcm"))
    item = ds.VOILUTSequence[0]
    n, first, bits = (int(v) for v in item.LUTDescriptor)
    data = item.LUTData
    table = np.frombuffer(data, dtype="<u2") if isinstance(data, bytes) else np.asarray(data)
    raw = ds.pixel_array.astype(np.int64)
    ref = table[np.clip(raw - first, 0, n - 1)] / (2**bits - 1) * 255.0
    r = read_radiograph(_path("vlut_04.dcm"))
    assert r.voi_lut is not None and r.voi_lut.table.size == n
    ours = to_uint8(r, use_voi_lut=True).astype(np.float64)
    assert np.abs(ours - ref).max() <= 0.5 + 1e-9


def test_read_header_fast_and_non_identifying():
    h = read_header(_path("RG3_UNCI.dcm"))
    assert h["Modality"] == "CR" and h["Rows"] == 1760 and h["Columns"] == 1760
    assert h["PhotometricInterpretation"] == "MONOCHROME1"
    assert h["HasPixelData"] is True and h["ImageKind"] is None
    assert not any(k.startswith("Patient") for k in h)
    ds = pydicom.dcmread(_path("RG3_UNCI.dcm"), stop_before_pixels=True)
    assert str(ds.PatientName) not in repr(h)
    r = read_radiograph(_path("RG3_UNCI.dcm"))
    assert not any(k.startswith("Patient") for k in r.meta)


def test_palette_colour_through_the_lut_to_grey():
    from pydicom.pixels import apply_color_lut

    name = "OT-PAL-8-face.dcm"
    ds = pydicom.dcmread(_path(name), force=True)  # this file has no DICM preamble; our reader detects it
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    rgb = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    r = read_radiograph(_path(name))
    assert any("PALETTE COLOR" in w for w in r.warnings)
    assert r.meta["Decoder"] == "pydicom" and r.meta["TransferSyntaxUID"] == pydicom.uid.ImplicitVRLittleEndian
    assert np.abs(r.pixels - luma).max() < 1e-2


@pytest.mark.parametrize(
    "name,frame",
    [("RG3_J2KI.dcm", 0), ("RG1_J2KI.dcm", 0), ("US1_J2KR.dcm", 0), ("emri_small.dcm", 3),
     ("SC_rgb_jpeg_dcmtk.dcm", 0), ("CT_small.dcm", 0)],
)
def test_both_decoders_give_the_same_radiograph(name, frame):
    # MONOCHROME1 J2K included: SimpleITK inverts itself, pydicom does not; the Radiograph must be identical
    a = read_radiograph(_path(name), frame=frame, decoder="pydicom")
    b = read_radiograph(_path(name), frame=frame, decoder="SimpleITK")
    assert (a.meta["Decoder"], b.meta["Decoder"]) == ("pydicom", "SimpleITK")
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.windows == b.windows and a.invert_pivot == b.invert_pivot
