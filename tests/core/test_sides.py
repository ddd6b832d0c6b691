"""Laterality and negation checks (elvis_core.grounding.sides) with a stand-in engine whose maps are known."""

import numpy as np
import pytest

from elvis_core.grounding.sides import negated, pearson, phrase_side, side_checks
from elvis_core.grounding.types import GroundingMap
from elvis_core.io.annotations import read_ms_cxr_csv


def test_phrase_side_and_negation_text():
    assert phrase_side("Small left apical pneumothorax") == "left"
    assert phrase_side("opacity in the right base") == "right"
    assert phrase_side("Opacity in the lingula") == "left"
    assert phrase_side("bilateral pleural effusions") is None
    assert phrase_side("left and right effusions") is None
    assert phrase_side("moderate cardiomegaly") is None
    assert negated("Small left effusion") == "no small left effusion"
    assert pearson(np.arange(4.0), np.arange(4.0) * 2) == pytest.approx(1.0)
    assert np.isnan(pearson(np.ones(4), np.arange(4.0)))


class _Engine:
    """Map of a phrase: a bump on the image's right half for left-sided phrases (correct: the patient's left is on
    the image's right; ``flip`` = the wrong way round), and the mirrored bump for 'no ...' phrases."""

    def __init__(self, flip=False):
        self.flip = flip

    def set_image(self, rad):
        self.shape = rad.shape

    def ground_many(self, phrases):
        out = []
        for p in phrases:
            g = np.zeros((4, 4), np.float32)
            right_half = (phrase_side(p) == "left") ^ p.startswith("no ") ^ self.flip
            g[1, 3 if right_half else 0] = 1.0
            h, w = self.shape
            a = np.array([[w / 4, 0, 0], [0, h / 4, 0], [0, 0, 1.0]])
            out.append(GroundingMap(similarity=g, grid_to_image=a, image_shape=(h, w), phrase=p))
        return out


def test_side_checks_on_a_phantom(tmp_path):
    from elvis_core.phantom import generate

    generate(tmp_path / "ph", 12, seed=4, size=128)
    aset = read_ms_cxr_csv(tmp_path / "ph" / "ms_cxr.csv")
    res = side_checks(_Engine(), aset, tmp_path / "ph")
    assert res["n_one_sided"] > 0 and res["n_missing"] == 0
    assert {r["side"] for r in res["rows"]} <= {"left", "right"}
    assert res["laterality"] == 1.0
    assert res["negation_median_r"] < 0  # the mirrored bump anti-correlates
    assert side_checks(_Engine(flip=True), aset, tmp_path / "ph")["laterality"] == 0.0
