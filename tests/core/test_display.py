"""to_uint8: the one display function (window / VOI LUT / invert), checked against hand-computed values."""

import numpy as np
import pytest

from elvis_core.io.display import to_uint8, voi_lut_to_uint8, window_to_uint8
from elvis_core.io.radiograph import Radiograph, VoiLut, Window


def _rg(pixels, **kw):
    return Radiograph(pixels=np.asarray(pixels, dtype=np.float32), **kw)


def test_window_endpoints_midpoint_and_clipping():
    r = _rg([[-1000, 0, 100, 200, 5000]])
    out = to_uint8(r, Window(center=100, width=200))
    assert out.dtype == np.uint8 and out.shape == (1, 5)
    assert out.tolist() == [[0, 0, 128, 255, 255]]  # 127.5 rounds to nearest (128)


def test_window_matches_formula_on_random_image():
    rng = np.random.default_rng(0)
    px = rng.normal(500, 300, size=(64, 80)).astype(np.float32)
    w = Window(center=450, width=700)
    expected = np.clip(np.floor((px.astype(np.float64) - w.low) / w.width * 255 + 0.5), 0, 255)
    got = to_uint8(_rg(px), w).astype(np.float64)
    assert np.abs(got - expected).max() <= 1  # float32 vs float64 rounding at .5 boundaries only
    assert (got == expected).mean() > 0.999


def test_default_window_preset_then_auto():
    px = np.arange(100, dtype=np.float32).reshape(10, 10)
    with_preset = _rg(px, windows=[Window(10, 20, "narrow"), Window(50, 100, "wide")])
    np.testing.assert_array_equal(to_uint8(with_preset), to_uint8(with_preset, Window(10, 20)))
    auto = _rg(px)
    w = auto.default_window()
    assert w.name == "auto" and w.low == pytest.approx(np.percentile(px, 0.5))
    out = to_uint8(auto)
    assert out.min() == 0 and out.max() == 255


def test_constant_image_does_not_fail():
    out = to_uint8(_rg(np.full((4, 4), 7.0)))
    assert out.shape == (4, 4) and out.dtype == np.uint8


def test_invert_flips_display_only():
    r = _rg([[0, 50, 100]])
    a = to_uint8(r, Window(50, 100))
    b = to_uint8(r, Window(50, 100), invert=True)
    np.testing.assert_array_equal(b, 255 - a)
    np.testing.assert_array_equal(r.pixels, [[0, 50, 100]])  # input untouched


def test_voi_lut_used_only_when_asked_and_present():
    table = np.array([0.0, 0.25, 0.5, 1.0], dtype=np.float32)
    r = _rg([[8, 10, 11, 12, 13, 99]], voi_lut=VoiLut(first_mapped=10, table=table), windows=[Window(50, 100)])
    np.testing.assert_array_equal(to_uint8(r, use_voi_lut=True), [[0, 0, 64, 128, 255, 255]])
    np.testing.assert_array_equal(to_uint8(r), to_uint8(r, Window(50, 100)))
    no_lut = _rg([[0, 100]], windows=[Window(50, 100)])
    np.testing.assert_array_equal(to_uint8(no_lut, use_voi_lut=True), to_uint8(no_lut))


def test_bad_window_width_raises():
    with pytest.raises(ValueError):
        window_to_uint8(np.zeros((2, 2)), Window(0, 0))


def test_voi_lut_rounds_non_integer_inputs():
    lut = VoiLut(first_mapped=0, table=np.linspace(0, 1, 11, dtype=np.float32))
    out = voi_lut_to_uint8(np.array([[0.4, 0.6, 9.6, 10.4]], dtype=np.float32), lut)
    assert out.tolist() == [[0, 26, 255, 255]]


# ---------------------------------------------------------------------------------------- presets from the image
def _rg1():
    from pydicom.data import get_testdata_file

    from elvis_core.io.images import read_image

    return read_image(get_testdata_file("RG1_UNCR.dcm"))


def test_chest_presets_look_right_on_the_real_rg1_cr():
    """Lung / mediastinum / bone windows on a real PA chest CR (looked at: docs/screenshots/presets_rg1.png)."""
    from elvis_core.io.display import chest_presets, to_uint8

    rad = _rg1()
    w = {p.name: p for p in chest_presets(rad)}
    assert set(w) == {"Lung", "Mediastinum", "Bone", "Full"}
    r, c = rad.shape
    lung = (slice(int(0.3 * r), int(0.5 * r)), slice(int(0.2 * c), int(0.3 * c)))  # patient's right lung
    medi = (slice(int(0.3 * r), int(0.6 * r)), slice(int(0.47 * c), int(0.53 * c)))  # mediastinum / spine

    def mean(win, region):
        return float(to_uint8(rad, window=win)[region].mean())

    # lung window: lung fields mid-dark grey (vessels visible), mediastinum clearly brighter but not all white
    assert 30 < mean(w["Lung"], lung) < 150 and mean(w["Lung"], medi) > mean(w["Lung"], lung) + 60
    # mediastinum window: the mediastinum is NOT blown to white (the old fixed-fraction preset gave 255)
    assert 60 < mean(w["Mediastinum"], medi) < 235
    assert mean(w["Mediastinum"], lung) < 40  # the lungs go dark
    # bone: wide window over the bright range
    assert w["Bone"].width > w["Mediastinum"].width and w["Bone"].high >= w["Mediastinum"].high - 1


def test_body_region_drops_collimation_bands():
    from elvis_core.io.display import body_region, chest_presets
    from elvis_core.io.radiograph import Radiograph

    rng = np.random.default_rng(0)
    px = rng.normal(1000, 200, (400, 300)).astype(np.float32)
    px[:40] = 4000.0  # flat, bright collimation bands (unexposed)
    px[:, -25:] = 4000.0
    rs, cs = body_region(px)
    assert 38 <= rs.start <= 44 and rs.stop == 400 and cs.start == 0 and 272 <= cs.stop <= 277
    full = [p for p in chest_presets(Radiograph(pixels=px)) if p.name == "Full"][0]
    assert full.high < 2500  # the bands do not stretch the window


def test_window_presets_order_and_voi_lut():
    from elvis_core.io.display import window_presets
    from elvis_core.io.radiograph import Radiograph, VoiLut, Window

    rad = Radiograph(pixels=np.arange(100, dtype=np.float32).reshape(10, 10), windows=[Window(50, 20, "")],
                     voi_lut=VoiLut(0.0, np.linspace(0, 1, 100, dtype=np.float32)))
    names = [p.name for p in window_presets(rad)]
    assert names == ["DICOM 1", "DICOM VOI LUT", "Lung", "Mediastinum", "Bone", "Full"]


def test_voi_lut_rounding_is_shared():
    from elvis_core.io.display import voi_lut_table_uint8, voi_lut_to_uint8
    from elvis_core.io.radiograph import VoiLut

    lut = VoiLut(0.0, np.array([0.0, 0.5, 0.999, 1.0], dtype=np.float32))
    t = voi_lut_table_uint8(lut)
    assert t.tolist() == [0, 128, 255, 255]  # rounded to nearest (0.5 * 255 = 127.5 -> 128), never truncated
    assert voi_lut_to_uint8(np.array([0, 1, 2, 3], np.float32), lut).tolist() == t.tolist()


def test_measurements():
    import math

    from elvis_core.io import measure as M

    assert M.distance((0, 0), (100, 0), (0.2, 0.25)) == (pytest.approx(25.0), "mm")
    assert M.distance((0, 0), (3, 4)) == (pytest.approx(5.0), "px")
    assert M.angle_deg((1, 0), (0, 0), (0, 1)) == pytest.approx(90.0)
    # anisotropic pixels: 1 px right = 0.5 mm, 1 px down = 1 mm -> the 45° pixel diagonal is not 45° in mm
    assert M.angle_deg((1, 0), (0, 0), (1, 1), (1.0, 0.5)) == pytest.approx(math.degrees(math.atan2(1, 0.5)))
    assert math.isnan(M.angle_deg((0, 0), (0, 0), (1, 1)))
    assert M.cardiothoracic_ratio([(40, 10), (90, 12)], [(10, 20), (110, 20)]) == pytest.approx(0.5)
    assert M.horizontal_width((10, 0), (60, 5), (0.1, 0.2)) == (pytest.approx(10.0), "mm")
