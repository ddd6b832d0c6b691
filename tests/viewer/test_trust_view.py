"""The viewer says how far to believe a map: trust line next to it, fixed scale + faint when not confident,
unknown words named, an inverted film flagged (view corner text and PNG export header)."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from elvis_core.grounding.presence import attach_trust
from elvis_core.grounding.types import GroundingMap
from elvis_core.io.dicom import read_radiograph
from elvis_core.io.radiograph import Radiograph, Window
from elvis_viewer.export import trust_header
from elvis_viewer.overlay_panel import OverlayPanel, OverlaySettings
from elvis_viewer.view_items import prepare_display

from .helpers import shown_image_view

CAL = {"kind": "logistic", "feature": "peak", "a": 20.0, "b": -10.0, "threshold": 0.5, "calibrated_on": "test"}


def _rad():
    yy, xx = np.mgrid[0:300, 0:200]
    return Radiograph(pixels=(xx + yy).astype(np.float32), windows=[Window(250.0, 400.0, "file")],
                      meta={"ViewPosition": "PA", "Modality": "DX"})


def _map(top, phrase="left effusion"):
    sim = np.linspace(-0.1, top, 16, dtype=np.float32).reshape(4, 4)
    a = np.array([[50.0, 0, 0], [0, 75.0, 0], [0, 0, 1]])
    return GroundingMap(similarity=sim, grid_to_image=a, image_shape=(300, 200), phrase=phrase)


@pytest.fixture
def view(qtbot):
    v = shown_image_view(qtbot)
    v.set_radiograph(_rad())
    v.set_overlay_opacity(0.5)
    v.set_overlay_range("auto")
    return v


def test_confident_map_is_stretched_and_drawn_fully(view):
    gm = attach_trust(_map(0.7), CAL, {"left", "effusion"})
    assert gm.confident is True
    view.set_overlay(gm)
    assert view.overlay_levels() == pytest.approx((-0.7, 0.7))
    assert view.overlay_item.opacity() == pytest.approx(0.5)
    tl = view.corner_text("tl")
    assert f"presence {gm.presence:.2f} — confident region · whole image seen" in tl and "unknown" not in tl


def test_not_confident_map_is_faint_on_the_fixed_scale_and_says_so(view):
    gm = attach_trust(_map(0.3, "nodule left"), CAL, {"left"})
    assert gm.confident is False
    view.set_overlay(gm)
    assert view.overlay_levels() == (-1.0, 1.0)
    assert tuple(view.overlay_item.getLevels()) == pytest.approx((-1.0, 1.0))
    assert view.overlay_item.opacity() == pytest.approx(0.2) and view.overlay_opacity() == pytest.approx(0.5)
    view.set_overlay_opacity(0.8)  # the user's opacity still counts, faint relative to it
    assert view.overlay_item.opacity() == pytest.approx(0.32)
    tl = view.corner_text("tl")
    assert f"presence {gm.presence:.2f} — no confident region" in tl
    assert "⚠ nodule is unknown to this model" in tl
    view.set_overlay_range("stretch")  # explicit request: stretched anyway
    assert view.overlay_levels() == pytest.approx((-0.3, 0.3))
    view.set_overlay_range("fixed")
    assert view.overlay_levels() == (-1.0, 1.0)


def test_uncalibrated_model_draws_on_the_fixed_scale_labelled_uncalibrated(view):
    gm = attach_trust(_map(0.6), None, None)
    view.set_overlay(gm)
    assert view.overlay_levels() == (-1.0, 1.0)
    assert view.overlay_item.opacity() == pytest.approx(0.5)  # not faint: nothing says it is absent
    assert "uncalibrated (peak 0.60) · whole image seen" in view.corner_text("tl")
    view.set_overlay(_map(0.6))  # a map nobody assessed (no peak): the old auto range, no trust text
    assert view.overlay_levels() == pytest.approx((-0.6, 0.6))
    assert "uncalibrated" not in view.corner_text("tl")


def test_inverted_film_is_flagged_in_the_view(view):
    rg1 = read_radiograph(get_testdata_file("RG1_UNCI.dcm"))
    prepare_display(rg1)  # the reading worker's step (session_tasks / review tasks)
    view.set_radiograph(rg1)
    assert "inverted" not in view.corner_text("tl")
    lo, hi = float(rg1.pixels.min()), float(rg1.pixels.max())
    bad = dataclasses.replace(rg1, pixels=(lo + hi - rg1.pixels).astype(np.float32), windows=[], voi_lut=None)
    prepare_display(bad)
    view.set_radiograph(bad)
    assert "⚠ film looks inverted: maps unreliable\n   (photometric tag MONOCHROME1 probably wrong)" in view.corner_text("tl")


def test_export_header_carries_trust_and_inversion(view):
    win = SimpleNamespace(views=lambda: [view], image_view=view)
    view.set_overlay(attach_trust(_map(0.3, "nodule"), CAL, {"left"}))
    head = trust_header(win)
    assert head[0][0].startswith("presence ") and "no confident region" in head[0][0] and head[0][1] == "#ffc04d"
    assert head[1][0] == "⚠ nodule is unknown to this model"
    view.set_overlay(attach_trust(_map(0.7, "left"), CAL, {"left"}))
    (line, colour), = trust_header(win)
    assert "confident region" in line and colour != "#ffc04d"
    rg1 = read_radiograph(get_testdata_file("RG1_UNCI.dcm"))
    lo, hi = float(rg1.pixels.min()), float(rg1.pixels.max())
    bad = dataclasses.replace(rg1, pixels=(lo + hi - rg1.pixels).astype(np.float32), windows=[])
    prepare_display(bad)
    view.set_radiograph(bad)
    assert "film looks inverted" in trust_header(win)[0][0]


def test_overlay_panel_offers_stretch(qtbot):
    p = OverlayPanel()
    qtbot.addWidget(p)
    got = []
    p.settingsChanged.connect(got.append)
    p.range.setCurrentIndex(2)
    assert got[-1].range == "stretch"
    p.set_settings(OverlaySettings(range="fixed"))
    assert p.range.currentIndex() == 1


def test_inversion_is_computed_in_the_reading_worker_and_reused(view, monkeypatch):
    from elvis_viewer import view_items

    rg1 = read_radiograph(get_testdata_file("RG1_UNCI.dcm"))
    lo, hi = float(rg1.pixels.min()), float(rg1.pixels.max())
    bad = dataclasses.replace(rg1, pixels=(lo + hi - rg1.pixels).astype(np.float32), windows=[], voi_lut=None)
    view_items.prepare_display(bad)  # what session_tasks runs off the GUI thread
    assert "film looks inverted" in view_items.prepared(bad, "_display_inversion")
    import elvis_core.io.inversion as inv

    monkeypatch.setattr(inv, "inversion_warning", lambda r: pytest.fail("recomputed on the GUI thread"))
    view.set_radiograph(bad)
    assert "film looks inverted" in view.corner_text("tl")
