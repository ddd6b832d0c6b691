"""An imported (BioViL-layout) checkpoint in the viewer: opened from File → Open compare checkpoint…, shown beside
the demo model in compare mode, with the border its centre crop drops hatched and labelled "not seen by the model"."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.core import biovil_reference as ref

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo_model"


@pytest.fixture
def imported(tmp_path):
    """A small ResNet in BioViL's layout + tiny CXR-BERT, imported with hi-ml's transform scaled down (resize 96,
    crop 64): a 128 x 160 image is resized to 96 x 120 (scale 0.75), cropped at x 28..92, y 16..80, so the model
    sees x 37.3..122.7 of 160 and y 21.3..106.7 of 128."""
    from elvis_core.model.importers import import_biovil

    image_model = ref.randomise(ref.ImageModel(multi=False, joint=16, layers=(1, 1), widths=(4, 8), stem=8,
                                               num_classes=10), seed=3)
    torch.save(image_model.state_dict(), tmp_path / "w.pt")
    ref.make_cxr_bert_folder(tmp_path / "text", projection_size=16)
    return import_biovil("biovil", tmp_path / "w.pt", tmp_path / "text", tmp_path / "biovil", resize=96, crop=64)


@pytest.fixture
def win(make_window):
    return make_window(size=(1280, 720))


def test_compare_demo_and_imported_checkpoint_shows_unseen_border(qtbot, win, imported, tmp_path, monkeypatch):
    import cv2

    png = tmp_path / "cxr.png"
    cv2.imwrite(str(png), ref.sample_image(128, 160, seed=1))
    with qtbot.waitSignal(win.imageShown, timeout=30000):
        win.open_paths([str(png)])
    win.load_checkpoint(str(DEMO), 0)
    # File → Open compare checkpoint… (the dialog answered by the test)
    monkeypatch.setattr(win, "_ask", lambda *a, **k: str(imported))
    win.actions_by_id["file.open_compare"].trigger()
    qtbot.waitUntil(lambda: all(s.engine is not None for s in win.slots), timeout=60000)
    assert win.actions_by_id["view.compare"].isChecked()
    win.ground_phrase("left lower lobe opacity")
    qtbot.waitUntil(lambda: win.image_view.gmap is not None and win.compare_view.gmap is not None, timeout=30000)
    demo_view, biovil_view = win.image_view, win.compare_view
    assert demo_view.gmap.fully_seen and demo_view.unseen_label() == ""
    gm = biovil_view.gmap
    assert gm.similarity.shape == (8, 8) and not gm.fully_seen
    assert gm.seen_box() == pytest.approx((28 / 0.75, 16 / 0.75, 92 / 0.75, 80 / 0.75))
    assert biovil_view.unseen_label() == "not seen by the model"
    full = gm.to_image()
    assert np.isnan(full[:, :37]).all() and np.isnan(full[:, 123:]).all() and np.isnan(full[:21]).all()
    assert np.isfinite(full[22:106, 38:122]).all()
    # hiding the overlay hides the hatching too; a new image without a map removes it
    win.overlay_panel.change(visible=False)
    assert not any(it.isVisible() for it in biovil_view._unseen_items)
    win.overlay_panel.change(visible=True)
    assert all(it.isVisible() for it in biovil_view._unseen_items)
    biovil_view.set_overlay(None)
    assert biovil_view.unseen_label() == ""
