import numpy as np
import pytest

from elvis_core.errors import ConfigError
from elvis_core.grounding.types import GroundingMap
from elvis_core.model.transforms import ModelInputTransform


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (256, 256), (1000, 37)])
def test_geometry_keeps_every_border(shape):
    t = ModelInputTransform(size=128)
    a = t.geometry(shape).model_to_image()
    inv = np.linalg.inv(a)
    rows, cols = shape
    for x, y in [(0, 0), (cols, 0), (0, rows), (cols, rows)]:
        u, v, _ = inv @ np.array([x, y, 1.0])
        assert -0.5 <= u <= 128.5 and -0.5 <= v <= 128.5


def test_transform_places_bright_square_where_affine_says():
    img = np.zeros((400, 200), np.float32)
    img[300:340, 150:190] = 1000.0  # bright block near bottom right
    t = ModelInputTransform(size=100, normalization="percentile", percentiles=(0, 100), mean=0.0, std=1.0)
    out = t(img)
    assert out.shape == (100, 100)
    ys, xs = np.nonzero(out > 0.5)
    a = t.geometry(img.shape).model_to_image()
    x0, y0, _ = a @ np.array([xs.min(), ys.min(), 1.0])
    x1, y1, _ = a @ np.array([xs.max() + 1, ys.max() + 1, 1.0])
    assert abs(x0 - 150) <= 4 and abs(x1 - 190) <= 4 and abs(y0 - 300) <= 4 and abs(y1 - 340) <= 4
    # padding columns are black (0 before standardisation)
    assert np.all(out[:, :20] == 0.0) and np.all(out[:, -20:] == 0.0)


def test_grounding_map_to_image_lands_on_the_right_pixels():
    shape = (400, 200)
    t = ModelInputTransform(size=160)
    grid = np.full((10, 10), -1.0, np.float32)
    # model input: image 80x160 centred horizontally (pad_x=40). Grid cell 16 model px. Pick cell (row 7, col 4):
    grid[7, 4] = 1.0
    gm = GroundingMap(similarity=grid, grid_to_image=t.grid_to_image(shape, grid.shape), image_shape=shape)
    full = gm.to_image(interpolation="nearest")
    assert full.shape == shape
    ys, xs = np.nonzero(full > 0)
    # cell (7,4) covers model x in [64,80), y in [112,128) -> image x in [(64-40)*2.5, (80-40)*2.5) = [60,100), y [280,320)
    assert xs.min() == 60 and xs.max() == 99 and ys.min() == 280 and ys.max() == 319
    px, py = gm.peak_xy()
    assert abs(px - 80) < 1e-6 and abs(py - 300) < 1e-6
    assert gm.to_image((200, 100)).shape == (200, 100)


def test_config_roundtrip_and_validation():
    t = ModelInputTransform(size=224, normalization="percentile", percentiles=(1, 99))
    assert ModelInputTransform.from_config(t.to_config()) == t
    with pytest.raises(ConfigError, match="unknown preprocessing keys: bogus"):
        ModelInputTransform.from_config({**t.to_config(), "bogus": 1})
    with pytest.raises(ConfigError):
        ModelInputTransform(size=8)


def test_peak_ignores_padding_cells_and_display_grid_keeps_cell_centres():
    shape = (400, 200)  # portrait: the model input pads left and right
    t = ModelInputTransform(size=160)
    grid = np.zeros((10, 10), np.float32)
    grid[5, 0] = 0.9  # a padding cell (model x in [0, 16) is left of the image, which starts at pad_x = 40)
    grid[3, 5] = 0.5
    gm = GroundingMap(similarity=grid, grid_to_image=t.grid_to_image(shape, grid.shape), image_shape=shape)
    assert not gm.cells_in_image()[5, 0] and gm.cells_in_image()[3, 5]
    assert gm.peak_cell() == (3, 5)
    x, y = gm.peak_xy()
    assert 0 <= x < 200 and 0 <= y < 400
    up, a = gm.display_grid(8)
    assert up.shape == (80, 80)
    # the upsampled pixels next to the centre of cell (3, 5) hold (nearly) the cell's value, and the display affine
    # maps the cell centre (continuous upsampled coordinates 8 * (j + 0.5), 8 * (i + 0.5)) to the same image point
    assert up[27:29, 43:45].mean() == pytest.approx(0.5, abs=0.07) and up.max() <= 0.9 + 1e-6
    px, py, _ = a @ np.array([5.5 * 8, 3.5 * 8, 1.0])
    assert (px, py) == pytest.approx((x, y))
