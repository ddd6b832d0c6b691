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

    def model_to_image(self) -> np.ndarray:
        """3x3 affine: [x_img, y_img, 1] = A @ [x_model, y_model, 1]."""
        s = 1.0 / self.scale
        return np.array([[s, 0.0, -self.pad_x * s], [0.0, s, -self.pad_y * s], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class ModelInputTransform:
    size: int = 512
    #: "window" (the image's default DICOM window, else percentiles) or "percentile"
    normalization: str = "window"
    percentiles: Tuple[float, float] = (0.5, 99.5)
    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self):
        if int(self.size) < 32:
            raise ConfigError(f"preprocessing.size must be >= 32, got {self.size}")
        if self.normalization not in ("window", "percentile"):
            raise ConfigError(f"preprocessing.normalization must be 'window' or 'percentile', got {self.normalization!r}")
        if not (0 <= self.percentiles[0] < self.percentiles[1] <= 100):
            raise ConfigError(f"preprocessing.percentiles must be 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.std <= 0:
            raise ConfigError(f"preprocessing.std must be > 0, got {self.std}")

    # -- config ---------------------------------------------------------------------------------------------------
    def to_config(self) -> Dict[str, Any]:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        d["kind"] = "resize_long_side_pad_square"
        return d

    @classmethod
    def from_config(cls, d: Dict[str, Any]) -> "ModelInputTransform":
        d = dict(d)
        d.pop("kind", None)
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

    def grid_to_image(self, image_shape: Tuple[int, int], grid_shape: Tuple[int, int]) -> np.ndarray:
        """3x3 affine: [x_img, y_img, 1] = A @ [gx, gy, 1], where grid cell (row i, col j) covers [j, j+1) x [i, i+1)
        of continuous grid coordinates and the grid spans the whole model input."""
        gh, gw = grid_shape
        g2m = np.array([[self.size / gw, 0.0, 0.0], [0.0, self.size / gh, 0.0], [0.0, 0.0, 1.0]])
        return self.geometry(image_shape).model_to_image() @ g2m

    # -- pixels ---------------------------------------------------------------------------------------------------
    def intensity_range(self, pixels: np.ndarray, window: Optional[Tuple[float, float]]) -> Tuple[float, float]:
        if self.normalization == "window" and window is not None and window[1] > 0:
            c, w = float(window[0]), float(window[1])
            return c - w / 2.0, c + w / 2.0
        lo, hi = robust_range(pixels, *self.percentiles)
        if hi <= lo:
            lo, hi = float(np.min(pixels)), float(np.max(pixels))
        if hi <= lo:
            hi = lo + 1.0
        return lo, hi

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
