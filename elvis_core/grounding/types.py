"""`GroundingMap`: what grounding returns and what the viewer, exports and metrics consume (DESIGN.md, step 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from elvis_core.model.transforms import warp_grid_to_image


@dataclass
class GroundingMap:
    #: float32 (gh, gw) cosine similarities in [-1, 1] (after the optional Gaussian smoothing on the grid)
    similarity: np.ndarray
    #: 3x3 affine placing the grid on the ORIGINAL image pixels: [x, y, 1] = A @ [gx, gy, 1];
    #: grid cell (i, j) covers [j, j+1) x [i, i+1); it covers the whole image (padding lies outside it)
    grid_to_image: np.ndarray
    #: original image (rows, cols)
    image_shape: Tuple[int, int]
    phrase: str = ""
    #: Gaussian sigma used on the grid (0 = none)
    smoothing_sigma: float = 0.0
    #: per-token maps (n_tokens, gh, gw) and their token strings, when asked for
    token_maps: Optional[np.ndarray] = None
    tokens: Optional[List[str]] = None
    #: seconds spent computing this map (text encoding + similarity), for the viewer's status bar
    latency_s: float = 0.0
    warnings: List[str] = field(default_factory=list)

    def to_image(self, shape: Optional[Tuple[int, int]] = None, interpolation: str = "bilinear") -> np.ndarray:
        """The map resampled to the original image (or to ``shape``, scaling the affine), float32."""
        a = np.asarray(self.grid_to_image, dtype=np.float64)
        if shape is not None and tuple(shape) != tuple(self.image_shape):
            sy = shape[0] / self.image_shape[0]
            sx = shape[1] / self.image_shape[1]
            a = np.diag([sx, sy, 1.0]) @ a
        else:
            shape = self.image_shape
        return warp_grid_to_image(self.similarity, a, shape, interpolation)

    def peak_xy(self) -> Tuple[float, float]:
        """Original-image (x, y) of the centre of the grid cell with the highest similarity."""
        i, j = np.unravel_index(int(np.nanargmax(self.similarity)), self.similarity.shape)
        x, y, _ = np.asarray(self.grid_to_image) @ np.array([j + 0.5, i + 0.5, 1.0])
        return float(x), float(y)
