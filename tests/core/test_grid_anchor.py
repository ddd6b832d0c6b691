"""Where a patch-grid cell is drawn on the image (``model.image.grid_anchor``).

A ResNet's output j is centred on input pixel stride * j (centred kernels with padding k // 2), not at the middle of
the j-th stride-wide cell: drawing the grid edge to edge put every map (stride - 1) / 2 pixels right of and below what
the features looked at (measured on the demo model and held-out phantom studies: pointing 0.45 -> 0.59 once fixed).
"""

import numpy as np
import pytest
import torch

from elvis_core.errors import ConfigError
from elvis_core.grounding.types import GroundingMap
from elvis_core.model import build_model, preset, validate_model_config
from elvis_core.model.transforms import CenterCropTransform, ModelInputTransform, grid_cell_offset
from elvis_core.training.anatomy import grid_masks


def _receptive_field_centre(model, size: int, i: int, j: int):
    """Centre (x, y) in continuous input coordinates of the support of d feature[i, j] / d input: the exact
    receptive field of that output (random weights: every input pixel in it has a non-zero gradient)."""
    support = np.zeros((size, size), bool)
    for seed in range(3):
        x = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
        feats = model._backbone(x)  # [1, gh, gw, C]
        feats[0, i, j].sum().backward()
        support |= x.grad[0, 0].abs().numpy() > 0
    ys, xs = np.nonzero(support)
    return (xs.min() + xs.max() + 1) / 2.0, (ys.min() + ys.max() + 1) / 2.0, feats.shape[1:3]


def test_offset_values():
    assert grid_cell_offset(256, (16, 16), "receptive_field") == (-7.5, -7.5)
    assert grid_cell_offset(480, (15, 15), "receptive_field") == (-15.5, -15.5)
    assert grid_cell_offset(256, (16, 16), "cell") == (0.0, 0.0)
    with pytest.raises(ValueError, match="grid anchor"):
        grid_cell_offset(256, (16, 16), "middle")


def test_receptive_field_anchor_is_where_the_resnet_looks():
    torch.manual_seed(0)
    model = build_model(preset("demo")).eval()
    assert model.grid_anchor == "receptive_field"
    size = 256
    t = ModelInputTransform(size=size)
    shape = (size, size)  # square image: model input == image pixels
    rf = t.grid_to_image(shape, (16, 16), anchor="receptive_field")
    cell = t.grid_to_image(shape, (16, 16), anchor="cell")
    # interior cells only: at the border zero padding truncates the receptive field
    for i, j in [(8, 8), (6, 10), (10, 5)]:
        cx, cy, grid = _receptive_field_centre(model, size, i, j)
        assert tuple(grid) == (16, 16)
        x_rf, y_rf, _ = rf @ np.array([j + 0.5, i + 0.5, 1.0])
        x_cell, y_cell, _ = cell @ np.array([j + 0.5, i + 0.5, 1.0])
        assert abs(x_rf - cx) <= 0.5 and abs(y_rf - cy) <= 0.5, (i, j, cx, cy, x_rf, y_rf)
        assert abs(x_cell - cx) >= 7.0 and abs(y_cell - cy) >= 7.0  # the old placement was off by 7.5 px


def test_config_default_and_validation():
    cfg = preset("demo")
    assert cfg["image"]["grid_anchor"] == "receptive_field"
    old = dict(cfg)
    old["image"] = {k: v for k, v in cfg["image"].items() if k != "grid_anchor"}  # a checkpoint from before
    assert validate_model_config(old)["image"]["grid_anchor"] == "receptive_field"
    bad = dict(cfg)
    bad["image"] = {**cfg["image"], "grid_anchor": "centre"}
    with pytest.raises(ConfigError, match="grid_anchor"):
        validate_model_config(bad)


def test_shifted_grid_still_covers_the_whole_padded_image():
    """The shifted grid's own extent stops 7.5 px short of the bottom edge; what the model saw is the model input,
    so no pixel of a pad-to-square input becomes 'not seen' (NaN)."""
    shape = (256, 200)
    t = ModelInputTransform(size=256)
    g2i = t.grid_to_image(shape, (16, 16), anchor="receptive_field")
    grid = np.zeros((16, 16), np.float32)
    grid[15, 8] = 1.0
    gm = GroundingMap(similarity=grid, grid_to_image=g2i, image_shape=shape,
                      seen_region=t.geometry(shape).seen_box())
    m = gm.to_image()
    assert not np.isnan(m).any() and gm.fully_seen
    assert gm.seen_box() == (0.0, 0.0, 200.0, 256.0)
    # peak of the bottom row's cell 8: model x = 16 * 8 + 0.5, y = 16 * 15 + 0.5 (pad_x = 28)
    px, py = gm.peak_xy()
    assert abs(px - (128.5 - 28)) < 1e-6 and abs(py - 240.5) < 1e-6
    # without seen_region (a map built by hand) the grid extent is used, as before
    gm2 = GroundingMap(similarity=grid, grid_to_image=g2i, image_shape=shape)
    assert np.isnan(gm2.to_image()).any()


def test_centre_crop_still_marks_the_cropped_border():
    t = CenterCropTransform(resize=512, crop=480)
    shape = (600, 500)
    geo = t.geometry(shape)
    g2i = t.grid_to_image(shape, (15, 15), anchor="receptive_field")
    gm = GroundingMap(similarity=np.zeros((15, 15), np.float32), grid_to_image=g2i, image_shape=shape,
                      seen_region=geo.seen_box())
    m = gm.to_image()
    assert np.isnan(m[0]).all() and np.isnan(m[-1]).all()  # top and bottom rows cropped away
    x0, y0, x1, y1 = geo.seen_box()
    assert gm.seen_box() == pytest.approx((x0, y0, x1, y1))
    assert np.isfinite(m[int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1]).all()
    assert np.isnan(m[:, 0]).all() and np.isnan(m[:, -1]).all()  # and the short side's outer border


def test_anatomy_masks_follow_the_anchor():
    box = np.array([[16.0, 16.0, 32.0, 32.0]])  # exactly cell (1, 1) of an edge-to-edge 16 px grid
    plain = grid_masks(box, 64, (4, 4))
    assert plain[0, 1, 1] == pytest.approx(1.0) and plain[0].sum() == pytest.approx(1.0)
    shifted = grid_masks(box, 64, (4, 4), offset=grid_cell_offset(64, (4, 4), "receptive_field"))
    # cells now start at 16 j - 7.5: the box covers 7.5/16 of column 1 and 8.5/16 of column 2 (same for rows)
    assert shifted[0, 1, 1] == pytest.approx((8.5 / 16) ** 2)
    assert shifted[0, 2, 2] == pytest.approx((7.5 / 16) ** 2)
    assert shifted[0].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("n", [1, 2])
def test_dilated_stages_give_a_finer_grid_with_the_same_weights(n):
    import copy

    from elvis_core.model.elvis import dilate_last_stages

    torch.manual_seed(1)
    model = build_model(preset("demo")).eval()
    cfg = copy.deepcopy(model.config)
    cfg["image"]["dilate_stages"] = n
    fine = build_model(cfg, tokenizer=model.tokenizer).eval()
    fine.load_state_dict(model.state_dict())  # same parameter names and shapes
    assert fine.output_stride == model.output_stride // 2 ** n
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        a, b = model._backbone(x), fine._backbone(x)
    assert b.shape[1] == a.shape[1] * 2 ** n and fine.grid_shape(128) == tuple(b.shape[1:3])
    step = 2 ** n
    assert torch.allclose(b[:, ::step, ::step], a, atol=1e-5)  # every 2**n-th output is the original network's
    # and the receptive-field anchor still holds on the finer grid
    size, gh = 128, int(b.shape[1])
    t = ModelInputTransform(size=size)
    rf = t.grid_to_image((size, size), (gh, gh), anchor="receptive_field")
    i = j = gh // 2
    cx, cy, _ = _receptive_field_centre(fine, size, i, j)
    x_rf, y_rf, _ = rf @ np.array([j + 0.5, i + 0.5, 1.0])
    assert abs(x_rf - cx) <= 0.5 and abs(y_rf - cy) <= 0.5
    with pytest.raises(ValueError, match="dilate_stages"):
        dilate_last_stages(copy.deepcopy(model.image_encoder), 3)  # the demo ResNet has 2 downsampling stages


def test_display_grid_covers_what_the_model_saw_and_matches_to_image():
    """The viewer draws display_grid(8): with a shifted (receptive-field) grid it must still cover the whole seen
    image (no bare strip at the right/bottom edge) and show the values to_image() gives there."""
    shape = (256, 234)
    t = ModelInputTransform(size=256)
    rng = np.random.default_rng(0)
    grid = rng.random((32, 32)).astype(np.float32)
    gm = GroundingMap(similarity=grid, grid_to_image=t.grid_to_image(shape, (32, 32), anchor="receptive_field"),
                      image_shape=shape, seen_region=t.geometry(shape).seen_box())
    up, a = gm.display_grid(8)
    assert up.shape == (256, 256)
    x0, y0, _ = a @ np.array([0.0, 0.0, 1.0])
    x1, y1, _ = a @ np.array([256.0, 256.0, 1.0])
    assert (x0, y0) == pytest.approx((0.0, 0.0)) and (x1, y1) == pytest.approx((234.0, 256.0))
    full = gm.to_image()
    for r, c in [(3, 5), (128, 200), (255, 255), (250, 10)]:  # display pixel centre -> image point
        x, y, _ = a @ np.array([c + 0.5, r + 0.5, 1.0])
        xi, yi = min(int(x), shape[1] - 1), min(int(y), shape[0] - 1)
        assert up[r, c] == pytest.approx(full[yi, xi], abs=0.08)
