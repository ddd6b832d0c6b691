"""benchmarks/presence_features.py: the candidate presence features are computed over the cells the model saw."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "presence_features.py"


@pytest.fixture(scope="module")
def pf():
    spec = importlib.util.spec_from_file_location("presence_features", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_features_on_a_constructed_grid_ignore_unseen_cells(pf):
    g = np.zeros((8, 8), np.float32)
    g[2, 3] = 0.8
    g[2, 4] = 0.6
    g[0, 0] = 0.99  # outside what the model saw: must not count
    seen = np.ones((8, 8), bool)
    seen[0, :] = False
    f = pf.features(g, seen)
    assert f["peak"] == pytest.approx(0.8)
    assert f["peak-median"] == pytest.approx(0.8)  # median of the seen cells is 0
    assert f["peak-mean"] == pytest.approx(0.8 - 1.4 / 56, rel=1e-5)
    assert f["top4"] == pytest.approx((0.8 + 0.6) / 4, rel=1e-5)
    assert f["smooth1.0"] < f["peak"]  # smoothing spreads the peak


def test_features_agree_with_presence_map_peak(pf):
    from elvis_core.grounding.presence import map_peak

    rng = np.random.default_rng(0)
    g = rng.normal(0, 0.2, (16, 16)).astype(np.float32)
    seen = np.zeros((16, 16), bool)
    seen[2:14, 1:15] = True
    assert pf.features(g, seen)["peak"] == pytest.approx(map_peak(g, seen))


def test_recorder_keeps_the_twin_maps_and_passes_everything_else_through(pf):
    class Eng:
        smoothing_sigma = 0.0

        def ground_many(self, phrases):
            return [p.upper() for p in phrases]

    rec = pf._Recorder(Eng())
    assert rec.ground_many(["a", "b"]) == ["A", "B"] and rec.last == ["A", "B"]
    assert rec.smoothing_sigma == 0.0
