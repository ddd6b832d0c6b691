"""--demo end to end on a phantom study folder and a saved checkpoint: the first annotated phrase is selected, its
map is drawn where the core says (peak cell), its boxes where the CSV says; --review opens the Review tab."""

import shutil

import numpy as np
import pytest
from PySide6 import QtCore

from elvis_viewer import app as app_mod
from elvis_viewer import workers
from elvis_viewer.main_window import MainWindow


@pytest.fixture(scope="module")
def demo_resources(tmp_path_factory):
    import torch

    from elvis_core.model import build_model
    from elvis_core.model.checkpoint import save_checkpoint
    from elvis_core.model.config import preset
    from elvis_core.phantom import generate

    root = tmp_path_factory.mktemp("demo")
    summary = generate(root / "demo", 3, seed=5, size=256)
    torch.manual_seed(0)
    save_checkpoint(build_model(preset("demo")), root / "demo_model")
    return root / "demo", root / "demo_model", summary


def test_demo_selects_first_annotated_phrase_and_draws_map_and_boxes(qtbot, tmp_path, monkeypatch, demo_resources):
    from elvis_core.io.annotations import read_ms_cxr_csv

    studies, model_dir, summary = demo_resources
    monkeypatch.setattr(app_mod, "DEMO_STUDIES", studies)
    monkeypatch.setattr(app_mod, "DEMO_MODEL", model_dir)
    monkeypatch.setattr(app_mod, "DEMO_ANNOTATIONS", studies / "ms_cxr.csv")
    win = MainWindow(settings=QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.show()
    with qtbot.waitSignal(win.overlayUpdated, timeout=60000):
        app_mod.open_from_args(win, app_mod.build_parser().parse_args(["--demo"]))
    qtbot.waitUntil(lambda: not win.busy(), timeout=60000)
    aset = read_ms_cxr_csv(studies / "ms_cxr.csv")
    phrases = aset.for_path(win.rad_path.replace("\\", "/"))
    assert phrases, "the demo went to an image with annotations"
    assert win.phrase == " ".join(phrases[0].label_text.split())
    assert win.slots[0].name == model_dir.name and win.slots[0].hash
    # boxes where the CSV says (phantom CSV sizes equal the DICOM's, so no rescale)
    want = sorted((b.x, b.y, b.w, b.h) for b in phrases[0].boxes)
    got = sorted((r.rect().x(), r.rect().y(), r.rect().width(), r.rect().height())
                 for r in win.image_view.box_items())
    assert len(got) == len(want)
    np.testing.assert_allclose(np.array(got, float), np.array(want, float), atol=1e-6)
    # the drawn overlay: its hottest cell lands where the core's GroundingMap says, and it covers the image
    iv = win.image_view
    g = iv.gmap
    # the overlay range is auto, symmetric about 0 (white = similarity 0), with the fade on: stretched to ±max for
    # a confident map, the fixed [-1, 1] for a map below its presence threshold or from an uncalibrated model
    assert win.overlay_panel.settings().range == "auto" and win.overlay_panel.settings().fade
    lo, hi = iv.overlay_levels()
    assert g.peak is not None
    assert lo == -hi and hi == pytest.approx(float(np.abs(g.similarity).max()) if g.confident else 1.0)
    assert g.trust_line(words=False) in iv.corner_text("tl")
    i, j = g.peak_cell()
    # the drawn (smooth) overlay is at its top level where the core's map peaks (a bilateral phrase has two
    # near-equal peaks, so the drawn argmax may be the other one: compare values, not places)
    shown = iv.overlay_item.image
    q = iv.overlay_item.mapFromParent(QtCore.QPointF(*g.peak_xy()))
    at_peak = float(shown[min(int(q.y()), shown.shape[0] - 1), min(int(q.x()), shown.shape[1] - 1)])
    assert at_peak >= float(shown.max()) - 0.05 * float(shown.max() - shown.min())
    assert float(shown.max()) <= float(g.similarity.max()) + 1e-6
    br = iv.overlay_item.mapRectToParent(iv.overlay_item.boundingRect())
    rows, cols = win.rad.shape
    assert rows != cols  # phantom films are not square: the grid also covers the padding
    assert br.left() <= 0.01 and br.top() <= 0.01 and br.right() >= cols - 0.01 and br.bottom() >= rows - 0.01
    # ... but nothing is drawn outside the image: the overlay's parent clips it to the image rectangle
    clip = iv.overlay_clip
    assert iv.overlay_item.parentItem() is clip and clip.flags() & clip.GraphicsItemFlag.ItemClipsChildrenToShape
    assert (clip.rect().width(), clip.rect().height()) == (cols, rows)
    # the core's bilinear map and the drawn grid agree at the peak pixel
    full = g.to_image()
    x, y = g.peak_xy()
    assert full[int(y), int(x)] == pytest.approx(g.similarity[i, j], abs=0.05)
    workers.wait_all()


def test_review_flag_opens_review_tab(qtbot, tmp_path, demo_resources):
    studies, _model, _ = demo_resources
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    settings.setValue("review/reviewer", "T. Ester")  # the review mode asks for a name once; not in a test
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    if win.review_view is None:
        pytest.skip("elvis_viewer.review is not importable in this build")
    args = app_mod.build_parser().parse_args(["--review", "--annotations", str(studies / "ms_cxr.csv"),
                                              "--images", str(studies)])
    app_mod.open_from_args(win, args)
    assert win.tabs.currentWidget() is win.review_view
    assert "Review" not in win.message_label.text()
    workers.wait_all()



def test_demo_review_opens_the_demo_queue(qtbot, tmp_path, monkeypatch, demo_resources):
    """`elvis-viewer --demo --review`: the review of the demo's own annotations over the demo images (it used to
    stay on the Viewer tab with "--review needs --annotations CSV and --images ROOT")."""
    studies, model_dir, _ = demo_resources
    demo = tmp_path / "demo"  # a copy: the review store is written beside the CSV
    shutil.copytree(studies, demo)
    monkeypatch.setattr(app_mod, "DEMO_STUDIES", demo)
    monkeypatch.setattr(app_mod, "DEMO_MODEL", model_dir)
    monkeypatch.setattr(app_mod, "DEMO_ANNOTATIONS", demo / "ms_cxr.csv")
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    settings.setValue("review/reviewer", "T. Ester")
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    if win.review_view is None:
        pytest.skip("elvis_viewer.review is not importable in this build")
    app_mod.open_from_args(win, app_mod.build_parser().parse_args(["--demo", "--review"]))
    rv = win.review_view
    assert win.tabs.currentWidget() is rv
    assert rv.session is not None and len(rv.session.items) > 0 and not rv.session.problems, rv.last_error
    assert "--review needs" not in win.message_label.text()
    qtbot.waitUntil(lambda: win.slots[0].engine is not None, timeout=60000)
    rv.close()
    workers.wait_all()

def test_review_with_checkpoint_maps_the_first_item_once_the_model_loads(qtbot, tmp_path, demo_resources):
    """`--review --checkpoint`: the model loads after the first item is shown; its map must follow on its own."""
    studies, model_dir, _ = demo_resources
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    settings.setValue("review/reviewer", "T. Ester")
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    if win.review_view is None:
        pytest.skip("elvis_viewer.review is not importable in this build")
    csv = tmp_path / "ms_cxr.csv"  # its own review store (another test's store may still be open and locked)
    csv.write_bytes((studies / "ms_cxr.csv").read_bytes())
    args = app_mod.build_parser().parse_args(["--review", "--annotations", str(csv),
                                              "--images", str(studies), "--checkpoint", str(model_dir)])
    app_mod.open_from_args(win, args)
    rv = win.review_view
    assert rv.session is not None, rv.last_error
    qtbot.waitUntil(lambda: win.slots[0].engine is not None, timeout=60000)
    qtbot.waitUntil(lambda: rv.session.item is not None and rv.map_key == rv.session.item.key, timeout=30000)
    assert rv.gmap.phrase == rv.session.item.label_text
    assert not win.study_dock.isVisible() and not win.toolbar.isVisible()  # Review has the whole window
    rv.close()
    workers.wait_all()


@pytest.mark.skipif(not (app_mod.DEMO_STUDIES.is_dir() and app_mod.DEMO_MODEL.is_dir()),
                    reason="resources/demo or resources/demo_model not built yet")
def test_shipped_demo_opens_and_grounds(qtbot, tmp_path):
    """The real `elvis-viewer --demo` resources: first annotated phrase selected, map drawn over the whole image."""
    win = MainWindow(settings=QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.show()
    with qtbot.waitSignal(win.overlayUpdated, timeout=60000):
        app_mod.open_from_args(win, app_mod.build_parser().parse_args(["--demo"]))
    qtbot.waitUntil(lambda: not win.busy(), timeout=60000)
    assert not win.problems, win.problems
    labels = [" ".join(p.label_text.split()) for p in win.session.annotated_phrases()]
    assert win.phrase in labels and win.image_view.box_items()
    br = win.image_view.overlay_item.mapRectToParent(win.image_view.overlay_item.boundingRect())
    rows, cols = win.rad.shape
    assert br.left() <= 0.01 and br.top() <= 0.01 and br.right() >= cols - 0.01 and br.bottom() >= rows - 0.01
    workers.wait_all()
