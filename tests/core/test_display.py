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
