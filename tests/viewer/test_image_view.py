"""ImageView: W/L through levels, presets, invert, overlay placement, boxes, ruler, linking, orientation markers."""

import numpy as np
import pytest
from PySide6 import QtCore, QtGui

from elvis_core.grounding.types import GroundingMap
from elvis_core.io.radiograph import Radiograph, Window
from elvis_viewer.image_view import ImageView, affine_to_qtransform, orientation_markers

from .helpers import shown_image_view


def _rad(rows=300, cols=200, spacing=(0.2, 0.25), view="PA", windows=None):
    yy, xx = np.mgrid[0:rows, 0:cols]
    pix = (xx + yy).astype(np.float32)
    return Radiograph(pixels=pix, windows=windows or [Window(250.0, 400.0, "file")], pixel_spacing=spacing,
                      spacing_source="PixelSpacing" if spacing else "none",
                      meta={"ViewPosition": view, "Modality": "DX", "Rows": rows, "Columns": cols})


@pytest.fixture
def view(qtbot):
    return shown_image_view(qtbot)


def test_levels_follow_window_and_drag_without_touching_pixels(view, qtbot):
    rad = _rad()
    view.set_radiograph(rad)
    arr_before = view.image_item.image
    lo, hi = view.image_item.getLevels()
    assert (lo, hi) == pytest.approx((50.0, 450.0))
    view.view_box.sigWindowDrag.emit(40.0, -20.0)  # what a right-button drag emits
    c, w = view.window()
    assert w > 400.0 and c < 250.0
    lo2, hi2 = view.image_item.getLevels()
    assert (lo2, hi2) == pytest.approx((c - w / 2, c + w / 2))
    assert view.image_item.image is arr_before  # the array was neither re-read nor re-scaled
    assert "W " in view.corner_text("bl")


def test_real_right_drag_changes_levels(view, qtbot):
    view.set_radiograph(_rad())
    before = tuple(view.image_item.getLevels())
    vp = view.glw.viewport()
    center = vp.rect().center()
    qtbot.mousePress(vp, QtCore.Qt.MouseButton.RightButton, pos=center)
    for k in range(1, 8):
        ev = QtGui.QMouseEvent(QtCore.QEvent.Type.MouseMove, QtCore.QPointF(center + QtCore.QPoint(10 * k, 6 * k)),
                               QtCore.QPointF(vp.mapToGlobal(center + QtCore.QPoint(10 * k, 6 * k))),
                               QtCore.Qt.MouseButton.NoButton, QtCore.Qt.MouseButton.RightButton,
                               QtCore.Qt.KeyboardModifier.NoModifier)
        QtCore.QCoreApplication.sendEvent(vp, ev)
    qtbot.mouseRelease(vp, QtCore.Qt.MouseButton.RightButton, pos=center + QtCore.QPoint(70, 42))
    after = tuple(view.image_item.getLevels())
    assert after != pytest.approx(before)


def test_presets_invert_and_voi_lut(view):
    rad = _rad()
    view.set_radiograph(rad)
    names = [w.name for w in view.presets()]
    assert names[0] == "file" and {"Lung", "Mediastinum", "Bone", "Full"} <= set(names)
    view.apply_preset("Bone")
    bone = view.window()
    view.apply_preset("Lung")
    assert view.window()[0] < bone[0]
    view.set_inverted(True)
    lut = view.image_item.lut
    assert lut[0, 0] == 255 and lut[-1, 0] == 0
    with pytest.raises(KeyError):
        view.apply_preset("nope")


def test_overlay_covers_the_image_exactly(view):
    rad = _rad(rows=300, cols=200)
    view.set_radiograph(rad)
    # a 4x4 grid over a 512 model input: long side 300 -> scale 512/300, image centred horizontally
    from elvis_core.model.transforms import ModelInputTransform

    t = ModelInputTransform(size=512)
    a = t.grid_to_image((300, 200), (4, 4))
    sim = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    gm = GroundingMap(similarity=sim, grid_to_image=a, image_shape=(300, 200), phrase="left lung")
    view.set_overlay_smooth(False)
    view.set_overlay(gm)
    assert view.overlay_item.isVisible()
    assert view.overlay_item.image.shape == (4, 4)  # the small grid, not an upsampled image
    br = view.overlay_item.mapRectToParent(view.overlay_item.boundingRect())
    # the grid covers the padded square, i.e. the whole image plus padding left/right
    assert br.top() == pytest.approx(0, abs=1e-3) and br.bottom() == pytest.approx(300, abs=0.6)
    assert br.left() <= 0 and br.right() >= 200
    assert br.width() == pytest.approx(300, abs=1.0)
    # grid cell (0, 0) top-left maps where the affine says
    p = view.overlay_item.mapToParent(QtCore.QPointF(1, 2))
    x, y, _ = a @ [1, 2, 1]
    assert (p.x(), p.y()) == pytest.approx((x, y))
    # smooth display (the default): the core's 8x bilinear display grid, still small, same placement and bounds
    view.set_overlay_smooth(True)
    assert view.overlay_item.image.shape == (32, 32)
    p = view.overlay_item.mapToParent(QtCore.QPointF(8 * 1, 8 * 2))
    assert (p.x(), p.y()) == pytest.approx((x, y))
    br2 = view.overlay_item.mapRectToParent(view.overlay_item.boundingRect())
    assert (br2.left(), br2.top(), br2.right(), br2.bottom()) == pytest.approx((br.left(), br.top(), br.right(), br.bottom()))
    view.set_overlay_smooth(False)
    assert tuple(view.overlay_item.getLevels()) == pytest.approx((-1, 1))
    view.set_overlay_range("auto")
    assert tuple(view.overlay_item.getLevels()) == pytest.approx((-1, 1))  # this map spans [-1, 1] already
    gm2 = GroundingMap(similarity=sim * 0.2, grid_to_image=a, image_shape=(300, 200))
    view.set_overlay(gm2)
    assert tuple(view.overlay_item.getLevels()) == pytest.approx((-0.2, 0.2))
    view.set_isolines(True)
    assert len(view._isolines) == 3
    top = float(view.gmap.display_grid(view.overlay_factor())[0].max())
    assert [iso.level for iso in view._isolines] == pytest.approx([0.5 * top, 0.75 * top, 0.9 * top])  # > 0 only
    view.set_overlay(GroundingMap(similarity=-np.abs(sim) * 0.2 - 0.01, grid_to_image=a, image_shape=(300, 200)))
    assert view._isolines == []  # no positive similarity: no isolines tracing noise around 0
    view.set_shared_levels((-0.5, 0.5))  # compare mode's one scale overrides the map's own auto range
    assert view.overlay_levels() == (-0.5, 0.5)
    view.set_shared_levels(None)
    view.set_overlay(gm2)
    view.toggle_overlay()
    assert not view.overlay_item.isVisible()
    view.toggle_overlay()
    assert view.overlay_item.isVisible()
    view.set_overlay_fade(True)
    lut = view.overlay_item.lut
    assert lut.shape == (256, 4) and lut[128, 3] < 5 and lut[255, 3] == 255
    assert not lut[:128, 3].any()  # <= 0: the film untouched
    view.set_overlay_range("fixed")
    view.set_overlay_range("auto")
    assert view.overlay_item.lut.shape == (256, 4)  # a range change keeps the faded LUT
    view.set_overlay_fade(False)
    assert view.overlay_item.lut.shape[1] == 3
    view.set_overlay_opacity(0.3)
    assert view.overlay_opacity() == pytest.approx(0.3)
    view.set_overlay(None)
    assert not view.overlay_item.isVisible()


def test_boxes_and_ruler_in_mm_or_px(view):
    from collections import namedtuple

    Box = namedtuple("Box", "x y w h")
    view.set_radiograph(_rad(spacing=(0.2, 0.25)))
    view.set_boxes([(Box(10, 20, 30, 40), "opacity", QtGui.QColor("red"))])
    rects = view.box_items()
    assert len(rects) == 1 and rects[0].rect() == QtCore.QRectF(10, 20, 30, 40)
    view.set_ruler_endpoints((0, 0), (100, 0))
    val, unit = view.ruler_length()
    assert unit == "mm" and val == pytest.approx(25.0, rel=1e-3)
    view.set_radiograph(_rad(spacing=None))
    view.set_ruler_endpoints((0, 0), (30, 40))
    val, unit = view.ruler_length()
    assert unit == "px" and val == pytest.approx(50.0, rel=1e-3)
    assert "px" in view.measure.last("ruler").label.textItem.toPlainText()


def test_linked_views_share_zoom_and_window(qtbot):
    a, b = ImageView(), ImageView()
    for v in (a, b):
        qtbot.addWidget(v)
        v.resize(400, 400)
        v.show()
        v.set_radiograph(_rad())
    a.link_to(b)
    a.set_window(123.0, 77.0)
    assert b.window() == pytest.approx((123.0, 77.0))
    a.view_box.setRange(QtCore.QRectF(10, 10, 50, 50), padding=0)
    ra, rb = a.view_box.viewRect(), b.view_box.viewRect()
    assert (rb.center().x(), rb.center().y()) == pytest.approx((ra.center().x(), ra.center().y()), abs=1e-3)


def test_orientation_markers():
    assert orientation_markers({"PatientOrientation": ["L", "F"]})[0] == ("R", "L", "H", "F")
    assert orientation_markers({"PatientOrientation": "R\\F"})[0] == ("L", "R", "H", "F")
    m, src = orientation_markers({"ViewPosition": "PA"})
    assert m[0] == "R" and m[1] == "L" and "assumed" in src
    assert orientation_markers({"ViewPosition": "LL"})[0] is None


def test_affine_to_qtransform():
    a = np.array([[2.0, 0.5, 3.0], [0.25, 4.0, -1.0], [0, 0, 1]])
    t = affine_to_qtransform(a)
    p = t.map(QtCore.QPointF(1.5, 2.0))
    x, y, _ = a @ [1.5, 2.0, 1]
    assert (p.x(), p.y()) == pytest.approx((x, y))


def test_large_image_window_drag_is_fast(view):
    import time

    rad = Radiograph(pixels=np.random.default_rng(0).normal(size=(3000, 3000)).astype(np.float32),
                     meta={"ViewPosition": "PA"})
    view.set_radiograph(rad)
    view.grab()
    t0 = time.perf_counter()
    for k in range(5):
        view.view_box.sigWindowDrag.emit(3.0, 2.0)
        view.grab()
    per = (time.perf_counter() - t0) / 5
    assert per < 1.0  # generous: a W/L step + full repaint of 3000x3000 (benchmarks/ has the real numbers)


def test_cached_downsample_renders_like_pyqtgraph(view):
    """The W/L speed-up (downsampled array kept between renders) draws exactly what plain pyqtgraph draws."""
    import pyqtgraph as pg

    rng = np.random.default_rng(3)
    rad = Radiograph(pixels=rng.normal(1000, 200, size=(1500, 1400)).astype(np.float32), meta={})
    view.set_radiograph(rad)
    ref = pg.ImageItem(autoDownsample=True)
    ref.setImage(rad.pixels, autoLevels=False)
    ref.setLookupTable(view.image_item.lut)
    ref.setZValue(-1)
    view.view_box.addItem(ref)

    def rendered(item):
        return pg.functions.ndarray_from_qimage(item.qimage).copy()

    first_ds = None
    shown = view.image_item.image
    for center in (900.0, 1000.0, 1150.0):
        view.set_window(center, 300.0)
        ref.setLevels(view.image_item.getLevels())
        view.grab()
        assert view.image_item._lastDownsample != (1, 1)  # really downsampled at this zoom
        assert np.array_equal(rendered(view.image_item), rendered(ref))
        first_ds = first_ds if first_ds is not None else view.image_item._ds_img
        assert view.image_item._ds_img is first_ds  # W/L steps reuse the downsampled array
    assert view.image_item.image is shown  # the full array stays the item's image
