"""The model-input transform: a documented, invertible mapping from a `Radiograph` to the model's square input.

Steps (all recorded in the checkpoint's ``config.json`` under ``"preprocessing"`` so training and inference agree):

1. intensity: map ``pixels`` to [0, 1] with the image's default display window (``"window"``) or with its
   ``percentiles`` (``"percentile"``), clip;
2. geometry: resize so the **long side** equals ``size`` (aspect kept, area interpolation when shrinking), then pad
   to ``size x size`` with 0 (black), image centred. Nothing is cropped, so no border of the image is ever dropped;
3. standardise: ``(v - mean) / std``.

:meth:`ModelInputTransform.geometry` gives the affine that maps model-input pixel coordinates back to original
image pixels, and :meth:`grid_to_image` the affine of a G_h x G_w feature grid laid over the model input.
Coordinates are continuous: pixel (col c, row r) covers [c, c+1) x [r, r+1) (see ``io/radiograph.py``).

A second kind, :class:`CenterCropTransform` (``"resize_short_side_center_crop"``), reproduces hi-ml's BioViL /
BioViL-T preprocessing for imported models; it crops, and the cropped-away border is *not seen by the model*.
:func:`transform_from_config` builds either from a config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from elvis_core.errors import ConfigError
from elvis_core.io.radiograph import robust_range


@dataclass(frozen=True)
class Geometry:
    """Where the original image sits inside the square model input."""

    scale: float  # model pixels per original pixel
    pad_x: float  # model-input x of the original image's left edge
    pad_y: float
    image_shape: Tuple[int, int]  # original (rows, cols)
    size: int  # model input side
    #: vertical scale when it differs from ``scale`` (a resize that rounds each side separately); None = ``scale``
    scale_y: Optional[float] = None

    def model_to_image(self) -> np.ndarray:
        """3x3 affine: [x_img, y_img, 1] = A @ [x_model, y_model, 1]. A negative pad is a crop offset."""
        sx = 1.0 / self.scale
        sy = 1.0 / (self.scale_y if self.scale_y else self.scale)
        return np.array([[sx, 0.0, -self.pad_x * sx], [0.0, sy, -self.pad_y * sy], [0.0, 0.0, 1.0]])

    def seen_box(self) -> Tuple[float, float, float, float]:
        """(x0, y0, x1, y1): the part of the original image inside the model input (all of it unless cropped)."""
        a = self.model_to_image()
        x0, y0 = a[0, 2], a[1, 2]
        x1, y1 = a[0, 0] * self.size + x0, a[1, 1] * self.size + y0
        rows, cols = self.image_shape
        return max(0.0, x0), max(0.0, y0), min(float(cols), x1), min(float(rows), y1)


#: where a feature-grid cell sits on the model input (``model.image.grid_anchor``)
GRID_ANCHORS = ("receptive_field", "cell")


def grid_cell_offset(size: int, grid_shape: Tuple[int, int], anchor: str) -> Tuple[float, float]:
    """(dx, dy) model pixels by which the grid is shifted from the edge-to-edge ``"cell"`` layout.

    ``"receptive_field"``: a ResNet (ours, hi-ml's BioViL, transformers' ``ResNetModel``) reaches its output stride
    s through stride-2 layers whose kernels are centred (k x k with padding k // 2, 1 x 1 shortcuts), so output j
    is centred on input pixel s * j, i.e. at x = s * j + 0.5 in continuous coordinates, not at s * (j + 0.5): the
    grid is shifted by -(s - 1) / 2 (-7.5 px at stride 16). Placing the cell at its edge-to-edge position draws
    every map (s - 1) / 2 pixels right of and below what the feature looked at. ``"cell"``: no shift (hi-ml's
    convention when it upsamples BioViL's 15 x 15 grid; kept for comparisons with published numbers)."""
    if anchor == "cell":
        return 0.0, 0.0
    if anchor != "receptive_field":
        raise ValueError(f"grid anchor must be one of {GRID_ANCHORS}, got {anchor!r}")
    gh, gw = int(grid_shape[0]), int(grid_shape[1])
    return -(size / gw - 1.0) / 2.0, -(size / gh - 1.0) / 2.0


#: intensity mappings to [0, 1]: the default display window, robust percentiles, or the image's min..max
#: (hi-ml's ``remap_to_uint8``: what BioViL / BioViL-T were trained with)
NORMALIZATIONS = ("window", "percentile", "minmax")


def _intensity_range(norm: str, percentiles, pixels: np.ndarray, window) -> Tuple[float, float]:
    if norm == "window" and window is not None and window[1] > 0:
        c, w = float(window[0]), float(window[1])
        return c - w / 2.0, c + w / 2.0
    if norm == "minmax":
        lo, hi = float(np.min(pixels)), float(np.max(pixels))
    else:
        lo, hi = robust_range(pixels, *percentiles)
        if hi <= lo:
            lo, hi = float(np.min(pixels)), float(np.max(pixels))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


class _GridAndIntensity:
    """What both transform kinds share: the grid -> image affine (through their own ``geometry``) and the intensity
    range (``normalization`` / ``percentiles``)."""

    def grid_to_image(self, image_shape: Tuple[int, int], grid_shape: Tuple[int, int],
                      anchor: str = "cell") -> np.ndarray:
        """3x3 affine: [x_img, y_img, 1] = A @ [gx, gy, 1], where grid cell (row i, col j) covers [j, j+1) x [i, i+1)
        of continuous grid coordinates. ``anchor`` (:func:`grid_cell_offset`): ``"cell"`` lays the grid over the
        model input edge to edge (cell j's centre at stride * (j + 0.5)); ``"receptive_field"`` puts each cell's
        centre on the centre of its feature's receptive field (stride * j + 0.5 for a ResNet)."""
        gh, gw = grid_shape
        ox, oy = grid_cell_offset(self.size, grid_shape, anchor)
        g2m = np.array([[self.size / gw, 0.0, ox], [0.0, self.size / gh, oy], [0.0, 0.0, 1.0]])
        return self.geometry(image_shape).model_to_image() @ g2m

    def intensity_range(self, pixels: np.ndarray, window: Optional[Tuple[float, float]]) -> Tuple[float, float]:
        return _intensity_range(self.normalization, self.percentiles, pixels, window)


@dataclass(frozen=True)
class ModelInputTransform(_GridAndIntensity):
    size: int = 512
    #: "window" (the image's default DICOM window, else percentiles) or "percentile"
    normalization: str = "window"
    percentiles: Tuple[float, float] = (0.5, 99.5)
    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self):
        if int(self.size) < 32:
            raise ConfigError(f"preprocessing.size must be >= 32, got {self.size}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"preprocessing.normalization must be one of {', '.join(NORMALIZATIONS)}, got "
                              f"{self.normalization!r}")
        if not (0 <= self.percentiles[0] < self.percentiles[1] <= 100):
            raise ConfigError(f"preprocessing.percentiles must be 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.std <= 0:
            raise ConfigError(f"preprocessing.std must be > 0, got {self.std}")

    # -- config ---------------------------------------------------------------------------------------------------
    KIND = "resize_long_side_pad_square"

    def to_config(self) -> Dict[str, Any]:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        d["kind"] = self.KIND
        return d

    @property
    def crops(self) -> bool:
        """True when part of an image can fall outside the model input (never for this transform)."""
        return False

    @classmethod
    def from_config(cls, d: Dict[str, Any]) -> "ModelInputTransform":
        """The transform a config describes; ``kind`` picks the class (see :func:`transform_from_config`)."""
        d = dict(d)
        kind = d.pop("kind", None)
        if kind == CenterCropTransform.KIND and cls is ModelInputTransform:
            return CenterCropTransform.from_config(d)
        if kind not in (None, cls.KIND):
            raise ConfigError(f"unknown preprocessing kind {kind!r} (known: {', '.join(TRANSFORM_KINDS)})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown preprocessing keys: {', '.join(unknown)}")
        if "percentiles" in d:
            d["percentiles"] = tuple(float(v) for v in d["percentiles"])
        return cls(**d)

    # -- geometry -------------------------------------------------------------------------------------------------
    def geometry(self, image_shape: Tuple[int, int]) -> Geometry:
        rows, cols = int(image_shape[0]), int(image_shape[1])
        if rows <= 0 or cols <= 0:
            raise ValueError(f"image shape must be positive, got {image_shape}")
        scale = self.size / max(rows, cols)
        new_w, new_h = self._resized(rows, cols)
        pad_x = (self.size - new_w) // 2
        pad_y = (self.size - new_h) // 2
        # exact scale per axis may differ by rounding; use the ratio actually applied
        return Geometry(scale=scale, pad_x=float(pad_x), pad_y=float(pad_y), image_shape=(rows, cols), size=self.size)

    def _resized(self, rows: int, cols: int) -> Tuple[int, int]:
        scale = self.size / max(rows, cols)
        return max(1, int(round(cols * scale))), max(1, int(round(rows * scale)))

    # -- pixels ---------------------------------------------------------------------------------------------------

    def __call__(self, pixels: np.ndarray, window: Optional[Tuple[float, float]] = None) -> np.ndarray:
        """Map a (rows, cols) float image to the float32 (size, size) model input."""
        if pixels.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
        lo, hi = self.intensity_range(pixels, window)
        img = np.clip((pixels.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
        rows, cols = img.shape
        new_w, new_h = self._resized(rows, cols)
        interp = cv2.INTER_AREA if new_w < cols else cv2.INTER_LINEAR
        img = cv2.resize(img, (new_w, new_h), interpolation=interp)
        geo = self.geometry((rows, cols))
        out = np.zeros((self.size, self.size), dtype=np.float32)
        py, px = int(geo.pad_y), int(geo.pad_x)
        out[py:py + new_h, px:px + new_w] = img
        return (out - self.mean) / self.std

    def apply(self, radiograph) -> np.ndarray:
        """Model input of a `Radiograph`, using its default window for ``"window"`` normalisation."""
        win = radiograph.default_window() if self.normalization == "window" else None
        return self(radiograph.pixels, None if win is None else (win.center, win.width))


@dataclass(frozen=True)
class CenterCropTransform(_GridAndIntensity):
    """hi-ml's BioViL / BioViL-T inference transform, reproduced (``kind: "resize_short_side_center_crop"``).

    1. intensity: map ``pixels`` to [0, 1] (``"minmax"``: the image's min..max, as hi-ml's ``remap_to_uint8``;
       or the display window / percentiles), then quantise to 8 bits the way hi-ml does (``floor(v * 255)``);
    2. geometry: resize so the **short side** equals ``resize`` (the long side ``int(resize * long / short)``),
       bilinear on the 8-bit image with Pillow (torchvision's ``Resize`` on a PIL image; an image already of that
       size is left untouched), then crop the centred ``crop x crop`` square (torchvision's ``CenterCrop``
       offsets: ``int(round((side - crop) / 2))``);
    3. values ``uint8 / 255`` in [0, 1], then ``(v - mean) / std`` (BioViL: mean 0, std 1, i.e. none).

    **The crop drops a border**: on a portrait or landscape film the ends of the long side, and on every image the
    outer ``(resize - crop) / 2`` resized pixels of the short side, are never seen by the model.
    :meth:`geometry` places the crop on the original image, so a :class:`~elvis_core.grounding.types.GroundingMap`
    covers only the seen part and marks the rest as not seen (NaN, never 0).
    """

    resize: int = 512
    crop: int = 480
    normalization: str = "minmax"
    percentiles: Tuple[float, float] = (0.5, 99.5)
    mean: float = 0.0
    std: float = 1.0

    KIND = "resize_short_side_center_crop"

    def __post_init__(self):
        if int(self.crop) < 32:
            raise ConfigError(f"preprocessing.crop must be >= 32, got {self.crop}")
        if int(self.resize) < int(self.crop):
            raise ConfigError(f"preprocessing.resize ({self.resize}) must be >= preprocessing.crop ({self.crop})")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"preprocessing.normalization must be one of {', '.join(NORMALIZATIONS)}, got "
                              f"{self.normalization!r}")
        if not (0 <= self.percentiles[0] < self.percentiles[1] <= 100):
            raise ConfigError(f"preprocessing.percentiles must be 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.std <= 0:
            raise ConfigError(f"preprocessing.std must be > 0, got {self.std}")

    @property
    def size(self) -> int:
        """The model input side (the crop)."""
        return int(self.crop)

    @property
    def crops(self) -> bool:
        return True

    def to_config(self) -> Dict[str, Any]:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        d["kind"] = self.KIND
        return d

    @classmethod
    def from_config(cls, d: Dict[str, Any]) -> "CenterCropTransform":
        d = dict(d)
        kind = d.pop("kind", cls.KIND)
        if kind != cls.KIND:
            raise ConfigError(f"preprocessing kind {kind!r} is not {cls.KIND!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown preprocessing keys: {', '.join(unknown)}")
        if "percentiles" in d:
            d["percentiles"] = tuple(float(v) for v in d["percentiles"])
        return cls(**d)

    # -- geometry -------------------------------------------------------------------------------------------------
    def _resized(self, rows: int, cols: int) -> Tuple[int, int]:
        """(new_w, new_h) as torchvision computes them for ``Resize(int)``."""
        short, long = min(rows, cols), max(rows, cols)
        new_short, new_long = int(self.resize), int(int(self.resize) * long / short)
        return (new_short, new_long) if cols <= rows else (new_long, new_short)

    def _offsets(self, new_w: int, new_h: int) -> Tuple[int, int]:
        c = int(self.crop)
        return int(round((new_w - c) / 2.0)), int(round((new_h - c) / 2.0))

    def geometry(self, image_shape: Tuple[int, int]) -> Geometry:
        rows, cols = int(image_shape[0]), int(image_shape[1])
        if rows <= 0 or cols <= 0:
            raise ValueError(f"image shape must be positive, got {image_shape}")
        new_w, new_h = self._resized(rows, cols)
        left, top = self._offsets(new_w, new_h)
        return Geometry(scale=new_w / cols, scale_y=new_h / rows, pad_x=-float(left), pad_y=-float(top),
                        image_shape=(rows, cols), size=self.size)

    # -- pixels ---------------------------------------------------------------------------------------------------

    def to_uint8(self, pixels: np.ndarray, window: Optional[Tuple[float, float]] = None) -> np.ndarray:
        """Step 1: the 8-bit image hi-ml's pipeline starts from (float64 arithmetic, truncation, as hi-ml)."""
        lo, hi = self.intensity_range(pixels, window)
        v = (np.asarray(pixels, dtype=np.float64) - lo) / (hi - lo)
        return (np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)

    def __call__(self, pixels: np.ndarray, window: Optional[Tuple[float, float]] = None) -> np.ndarray:
        """Map a (rows, cols) float image to the float32 (crop, crop) model input."""
        from PIL import Image

        if pixels.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
        u8 = self.to_uint8(pixels, window)
        rows, cols = u8.shape
        new_w, new_h = self._resized(rows, cols)
        if (new_w, new_h) != (cols, rows):
            u8 = np.asarray(Image.fromarray(u8).resize((new_w, new_h), Image.BILINEAR))
        left, top = self._offsets(new_w, new_h)
        c = int(self.crop)
        out = u8[top:top + c, left:left + c].astype(np.float32) / 255.0
        return (out - self.mean) / self.std

    def apply(self, radiograph) -> np.ndarray:
        win = radiograph.default_window() if self.normalization == "window" else None
        return self(radiograph.pixels, None if win is None else (win.center, win.width))


TRANSFORM_KINDS = (ModelInputTransform.KIND, CenterCropTransform.KIND)


def transform_from_config(d: Dict[str, Any]):
    """A :class:`ModelInputTransform` or :class:`CenterCropTransform`, chosen by ``d["kind"]``."""
    return ModelInputTransform.from_config(d)


def warp_grid_to_image(grid: np.ndarray, grid_to_image: np.ndarray, image_shape: Tuple[int, int],
                       interpolation: str = "bilinear") -> np.ndarray:
    """Resample a small (gh, gw) grid onto a (rows, cols) image through a grid->image affine (3x3).

    Pixel centres are used on both sides (cell j's centre is gx = j + 0.5; image pixel c's is x = c + 0.5);
    outside the grid the nearest edge value is used, so every image pixel gets a value.
    """
    rows, cols = int(image_shape[0]), int(image_shape[1])
    inv = np.linalg.inv(grid_to_image)
    # index space: j = gx - 0.5 ; x = c + 0.5  => j = inv(x) - 0.5
    shift_in = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    shift_out = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]])
    m = (shift_out @ inv @ shift_in)[:2]
    flags = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
    if interpolation not in flags:
        raise ValueError(f"interpolation must be one of {sorted(flags)}, got {interpolation!r}")
    return cv2.warpAffine(grid.astype(np.float32), m, (cols, rows), flags=flags[interpolation] | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def grid_coverage(grid_to_image: np.ndarray, grid_shape: Tuple[int, int], image_shape: Tuple[int, int]) -> np.ndarray:
    """Bool (rows, cols): image pixels whose centre lies on the grid, i.e. that the model saw.

    All True for the pad-to-square transform (its grid covers the image and the padding); False on the border a
    centre crop dropped."""
    rows, cols = int(image_shape[0]), int(image_shape[1])
    gh, gw = int(grid_shape[0]), int(grid_shape[1])
    inv = np.linalg.inv(np.asarray(grid_to_image, dtype=np.float64))
    if abs(inv[0, 1]) < 1e-12 and abs(inv[1, 0]) < 1e-12:  # axis-aligned (every transform of this package)
        gx = inv[0, 0] * (np.arange(cols) + 0.5) + inv[0, 2]
        gy = inv[1, 1] * (np.arange(rows) + 0.5) + inv[1, 2]
        eps = 1e-9
        return ((gy >= -eps) & (gy < gh + eps))[:, None] & ((gx >= -eps) & (gx < gw + eps))[None, :]
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64) + 0.5
    gx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    gy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    return (gx >= 0) & (gx < gw) & (gy >= 0) & (gy < gh)
