"""read_image: JPG/PNG (MIMIC-CXR-JPG) as grey Radiographs, DICOM by content, and bad image files."""

import shutil

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from elvis_core.errors import DicomReadError
from elvis_core.io.display import to_uint8
from elvis_core.io.images import read_image, sniff_kind


def test_png_grey_and_16bit(tmp_path):
    img = (np.arange(30 * 40) % 256).astype(np.uint8).reshape(30, 40)
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), img)
    r = read_image(p)
    assert r.meta["Decoder"] == "image" and r.shape == (30, 40) and r.warnings == []
    np.testing.assert_array_equal(r.pixels, img.astype(np.float32))
    np.testing.assert_array_equal(to_uint8(r), img)  # 8-bit images display as stored
    img16 = (np.arange(30 * 40) * 50).astype(np.uint16).reshape(30, 40)
    p16 = tmp_path / "b.png"
    cv2.imwrite(str(p16), img16)
    r16 = read_image(p16)
    np.testing.assert_array_equal(r16.pixels, img16.astype(np.float32))
    assert r16.windows == []  # 16-bit: percentile auto window


def test_colour_jpg_to_grey_with_warning(tmp_path):
    bgr = np.zeros((20, 20, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    p = tmp_path / "red.jpg"
    cv2.imwrite(str(p), bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    r = read_image(p)
    assert any("grey" in w for w in r.warnings)
    assert abs(float(r.pixels.mean()) - 0.299 * 200) < 3


def test_grey_jpg_saved_as_three_channels_has_no_warning(tmp_path):
    g = np.tile(np.arange(64, dtype=np.uint8) * 4, (16, 1))
    p = tmp_path / "g.png"
    cv2.imwrite(str(p), np.dstack([g, g, g]))
    r = read_image(p)
    assert r.warnings == []
    np.testing.assert_allclose(r.pixels, g.astype(np.float32), atol=0.01)


def test_dicom_by_content_and_bad_images(tmp_path):
    dst = tmp_path / "looks_like.jpg"
    shutil.copy(get_testdata_file("CT_small.dcm"), dst)
    assert sniff_kind(dst) == "dicom"
    assert read_image(dst).meta["Decoder"] == "pydicom"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    with pytest.raises(DicomReadError, match="not a readable JPG/PNG") as ei:
        read_image(bad)
    assert str(bad) in str(ei.value)
    with pytest.raises(DicomReadError, match="frame 1 out of range"):
        cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((4, 4), np.uint8))
        read_image(tmp_path / "ok.png", frame=1)
    with pytest.raises(DicomReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
