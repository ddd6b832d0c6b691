"""Presence calibration (elvis_core.grounding.presence): the logistic fit on the raw peak, ECE, map_peak."""

import json

import numpy as np
import pytest

from elvis_core.grounding.presence import (check_calibration, expected_calibration_error, fit_presence_calibration,
                                           map_peak, peak_at_threshold, presence_probability)


def _auc(pos, neg):
    pos, neg = np.asarray(pos), np.asarray(neg)
    return float(((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()))


def test_separable_peaks_give_monotone_probabilities_consistent_with_auc():
    rng = np.random.default_rng(0)
    present = rng.uniform(0.45, 0.70, 200)
    absent = rng.uniform(0.10, 0.40, 200)
    cal = fit_presence_calibration(present, absent, "synthetic separable")
    assert cal["kind"] == "logistic" and cal["feature"] == "peak"
    assert cal["n_present"] == 200 and cal["n_absent"] == 200
    assert cal["calibrated_on"] == "synthetic separable"
    assert np.isfinite(cal["a"]) and cal["a"] > 0  # ridge keeps the slope finite on separable data
    json.dumps(cal)  # stored in config.json
    pp = np.array([presence_probability(v, cal) for v in present])
    pa = np.array([presence_probability(v, cal) for v in absent])
    assert _auc(pp, pa) == pytest.approx(_auc(present, absent)) == 1.0
    assert (pp >= cal["threshold"]).all() and (pa < cal["threshold"]).all()
    grid = np.linspace(0, 1, 101)
    probs = [presence_probability(v, cal) for v in grid]
    assert all(b >= a for a, b in zip(probs, probs[1:]))
    assert 0.40 < peak_at_threshold(cal) < 0.45
    assert cal["ece"] < 0.05


def test_fit_recovers_a_known_logistic_model():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, 20000)
    p = 1 / (1 + np.exp(-(12 * x - 6)))
    y = rng.uniform(size=x.size) < p
    cal = fit_presence_calibration(x[y], x[~y], "synthetic logistic", ridge=1e-6,
                                   heldout_present=x[y][:2000], heldout_absent=x[~y][:2000])
    assert cal["a"] == pytest.approx(12, rel=0.1)
    assert cal["b"] == pytest.approx(-6, rel=0.1)
    assert cal["ece"] < 0.03
    assert cal["ece_data"].startswith("held-out")


def test_ece_of_a_perfectly_calibrated_set_is_about_zero_and_of_an_overconfident_one_is_not():
    rng = np.random.default_rng(2)
    probs = rng.uniform(size=100000)
    labels = rng.uniform(size=probs.size) < probs
    assert expected_calibration_error(probs, labels) < 0.01
    assert expected_calibration_error(np.full(1000, 0.9), np.arange(1000) % 2) == pytest.approx(0.4)
    assert np.isnan(expected_calibration_error([], []))
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, 0.2], [1])


def test_uncalibrated_gives_none():
    assert presence_probability(0.5, None) is None
    assert presence_probability(None, {"a": 1.0, "b": 0.0}) is None
    assert presence_probability(float("nan"), {"a": 1.0, "b": 0.0}) is None
    assert check_calibration(None) is None
    assert peak_at_threshold(None) is None


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="at least 2"):
        fit_presence_calibration([0.5], [0.1, 0.2], "x")
    with pytest.raises(ValueError, match="vary"):
        fit_presence_calibration([0.3, 0.3], [0.3, 0.3], "x")
    with pytest.raises(ValueError, match="lacks"):
        check_calibration({"kind": "logistic"})
    with pytest.raises(ValueError, match="finite"):
        check_calibration({"kind": "logistic", "feature": "peak", "a": "x", "b": 0, "threshold": 0.5})
    with pytest.raises(ValueError, match="not supported"):
        check_calibration({"kind": "isotonic", "feature": "peak", "a": 1, "b": 0, "threshold": 0.5})
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        check_calibration({"kind": "logistic", "feature": "peak", "a": 1, "b": 0, "threshold": 1.5})


def test_map_peak_only_counts_seen_cells():
    raw = np.array([[0.9, 0.1], [0.2, 0.3]], dtype=np.float32)
    assert map_peak(raw) == pytest.approx(0.9)
    seen = np.array([[False, True], [True, True]])
    assert map_peak(raw, seen) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        map_peak(raw, np.ones((3, 3), bool))
    assert map_peak(np.full((2, 2), np.nan)) is None
