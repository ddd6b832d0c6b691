"""Grounding metrics on hand-made maps; every expected value is worked out by hand in the comments."""

import math

import numpy as np
import pytest

from elvis_core.grounding.metrics import box_iou, box_mask, cnr, contrast, miou, pointing_game
from elvis_core.io.annotations import Box

BOX = [Box(0, 0, 2, 2)]  # top-left 2x2 pixels of a 4x4 map


def _cnr_map():
    # inside (top-left 2x2): 1, 3, 1, 3 -> mean 2, var 1
    # outside (12 px): six 0 and six 2 -> mean 1, var 1
    m = np.zeros((4, 4))
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = 1, 3, 3, 1
    out = [(r, c) for r in range(4) for c in range(4) if not (r < 2 and c < 2)]
    for k, (r, c) in enumerate(out):
        m[r, c] = 2 if k % 2 else 0
    return m, out


def test_box_mask_pixel_centres():
    m = box_mask((3, 4), [Box(0.6, 0, 1.0, 1)])  # [0.6, 1.6) holds the centre 1.5 only
    assert m.sum() == 1 and m[0, 1]
    m = box_mask((3, 4), [Box(0.4, 0.4, 0.2, 0.2)])  # [0.4, 0.6) holds centre 0.5
    assert m.sum() == 1 and m[0, 0]
    m = box_mask((3, 4), [Box(0, 0, 2, 1), Box(3, 2, 5, 5)])  # union, second clipped to the image
    assert m.sum() == 3 and m[0, 0] and m[0, 1] and m[2, 3]
    assert not box_mask((3, 4), [Box(10, 10, 2, 2)]).any()


def test_box_iou():
    assert box_iou(Box(0, 0, 2, 2), Box(1, 1, 2, 2)) == pytest.approx(1 / 7)  # inter 1, union 4+4-1
    assert box_iou((0, 0, 1, 1), (5, 5, 1, 1)) == 0.0
    assert box_iou((0, 0, 3, 3), (0, 0, 3, 3)) == 1.0


def test_cnr_known_value():
    m, _ = _cnr_map()
    assert cnr(m, BOX) == pytest.approx(1 / math.sqrt(2))  # |2-1| / sqrt(1+1)


def test_cnr_clamp_negative_and_nan_ignored():
    m, out = _cnr_map()
    m2 = m.copy()
    for r, c in out:
        if m2[r, c] == 0:
            m2[r, c] = -2  # outside now six -2 and six 2 -> mean 0, var 4
    assert cnr(m2, BOX) == pytest.approx(2 / math.sqrt(1 + 4))
    assert cnr(m2, BOX, clamp_negative=True) == pytest.approx(1 / math.sqrt(2))  # back to the original map
    wide = np.full((4, 6), np.nan)
    wide[:, :4] = m  # extra NaN columns must not change anything
    assert cnr(wide, BOX) == pytest.approx(1 / math.sqrt(2))


def test_cnr_degenerate():
    assert math.isnan(cnr(np.ones((4, 4)), BOX))  # no contrast, no noise
    m = np.zeros((4, 4))
    m[:2, :2] = 1
    assert cnr(m, BOX) == math.inf  # contrast without noise
    assert math.isnan(cnr(np.ones((4, 4)), [Box(0, 0, 4, 4)]))  # nothing outside


def test_miou_known_value():
    m = np.zeros((4, 4))
    m[:2, :2] = 0.35  # the box
    m[3, 2:] = 0.15  # two extra pixels
    # t=0.1: pred 6 px, inter 4 -> 2/3; t=0.2, 0.3: pred == box -> 1; t=0.4, 0.5: empty pred -> 0/4
    assert miou(m, BOX) == pytest.approx((2 / 3 + 1 + 1 + 0 + 0) / 5)
    assert miou(m, BOX, thresholds=(0.3,)) == pytest.approx(1.0)
    m[0, 0] = np.nan  # NaN is never "on": t=0.3 -> 3/4
    assert miou(m, BOX, thresholds=(0.3,)) == pytest.approx(0.75)


def test_pointing_game():
    m = np.zeros((4, 4))
    m[1, 1] = 0.9
    assert pointing_game(m, BOX)
    m[3, 3] = 0.95
    assert not pointing_game(m, BOX)
    m[3, 3] = np.nan  # NaN ignored -> max back inside
    assert pointing_game(m, BOX)
    assert not pointing_game(np.full((4, 4), np.nan), BOX)


def test_rejects_non_2d():
    with pytest.raises(ValueError):
        cnr(np.zeros((2, 2, 2)), BOX)


def test_signed_contrast():
    m, _ = _cnr_map()
    assert contrast(m, BOX) == pytest.approx(1.0)  # 2 - 1
    assert contrast(-m, BOX) == pytest.approx(-1.0)
    assert cnr(-m, BOX) == pytest.approx(cnr(m, BOX))  # CNR cannot tell the two apart
    assert math.isnan(contrast(m, [Box(0, 0, 4, 4)]))
