"""`GroundingMap`: what grounding returns and what the viewer, exports and metrics consume (DESIGN.md, step 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from elvis_core.model.transforms import grid_coverage, warp_grid_to_image


@dataclass
class GroundingMap:
    #: float32 (gh, gw) cosine similarities in [-1, 1] (after the optional Gaussian smoothing on the grid)
    similarity: np.ndarray
    #: 3x3 affine placing the grid on the ORIGINAL image pixels: [x, y, 1] = A @ [gx, gy, 1];
    #: grid cell (i, j) covers [j, j+1) x [i, i+1); with our own transform it covers the whole image (padding lies
    #: outside it); with an imported model's centre crop it covers only the crop: the rest is *not seen by the model*
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
    #: the unsmoothed cosine grid (gh, gw) when smoothing was applied or known (None: same as ``similarity``)
    raw_similarity: Optional[np.ndarray] = None
    #: (x0, y0, x1, y1) original pixels the model input covered (the engine sets it from the transform). None: the
    #: grid's own extent. Needed because a receptive-field-anchored grid (``model.image.grid_anchor``) is shifted
    #: by -(stride - 1) / 2 from the model input, so its extent is not what the model saw.
    seen_region: Optional[Tuple[float, float, float, float]] = None
    # -- how far to believe the map (filled by elvis_core.grounding.presence.attach_trust) --
    #: raw (unsmoothed) maximum cosine over the cells the model saw
    peak: Optional[float] = None
    #: calibrated probability that the phrase's finding is on the film (None = the model is uncalibrated)
    presence: Optional[float] = None
    #: presence from which the map counts as confident (None = uncalibrated)
    presence_threshold: Optional[float] = None
    #: the phrase's words the model's text encoder was not trained on
    unknown_words: List[str] = field(default_factory=list)
    #: the data the presence calibration was fitted on (None = uncalibrated)
    calibrated_on: Optional[str] = None

    @property
    def confident(self) -> Optional[bool]:
        """True when presence reaches its threshold, False below it, None when uncalibrated."""
        if self.presence is None:
            return None
        t = 0.5 if self.presence_threshold is None else float(self.presence_threshold)
        return bool(self.presence >= t)

    def seen_fraction(self) -> float:
        """Share (0..1) of the original image's area the model saw."""
        x0, y0, x1, y1 = self.seen_box()
        rows, cols = self.image_shape
        return max(0.0, x1 - x0) * max(0.0, y1 - y0) / max(1.0, float(rows) * float(cols))

    def trust_line(self, words: bool = True) -> str:
        """ONE human line saying how far to believe the map, used by every surface (viewer, ``elvis ground``, PNG
        and DICOM exports): presence (or "uncalibrated" with the raw peak), what the model saw, unknown words
        (``words=False`` leaves them out, for a surface that names them in a sentence of their own)."""
        if self.presence is not None:
            parts = [f"presence {self.presence:.2f} — "
                     + ("confident region" if self.confident else "no confident region")]
        elif self.peak is not None:
            parts = [f"uncalibrated (peak {self.peak:.2f})"]
        else:
            parts = ["uncalibrated"]
        parts.append("whole image seen" if self.fully_seen
                     else f"model saw {100 * self.seen_fraction():.0f} % of the image")
        if self.unknown_words and words:
            parts.append("unknown to this model: " + ", ".join(self.unknown_words))
        return " · ".join(parts)

    def seen_cells(self) -> np.ndarray:
        """Bool (gh, gw): grid cells whose centre lies in what the model saw (:meth:`seen_box`)."""
        gh, gw = self.similarity.shape
        jj = np.arange(gw, dtype=np.float64)[None, :] + 0.5
        ii = np.arange(gh, dtype=np.float64)[:, None] + 0.5
        a = np.asarray(self.grid_to_image, dtype=np.float64)
        x = a[0, 0] * jj + a[0, 1] * ii + a[0, 2]
        y = a[1, 0] * jj + a[1, 1] * ii + a[1, 2]
        x0, y0, x1, y1 = self.seen_box()
        return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)

    def _affine_for(self, shape: Optional[Tuple[int, int]]):
        a = np.asarray(self.grid_to_image, dtype=np.float64)
        if shape is not None and tuple(shape) != tuple(self.image_shape):
            sy = shape[0] / self.image_shape[0]
            sx = shape[1] / self.image_shape[1]
            return np.diag([sx, sy, 1.0]) @ a, tuple(shape)
        return a, tuple(self.image_shape)

    def to_image(self, shape: Optional[Tuple[int, int]] = None, interpolation: str = "bilinear") -> np.ndarray:
        """The map resampled to the original image (or to ``shape``, scaling the affine), float32.

        Pixels the model did not see (the border a centre crop dropped) are NaN: no data, never 0. Metrics
        (:mod:`elvis_core.grounding.metrics`) and figures ignore NaN."""
        a, shape = self._affine_for(shape)
        out = warp_grid_to_image(self.similarity, a, shape, interpolation)
        seen = self.seen_mask(shape)
        if not seen.all():
            out[~seen] = np.nan
        return out

    def seen_mask(self, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """Bool (rows, cols) of the original image (or ``shape``): True where the model saw the pixel (its centre
        lies in :meth:`seen_box`, scaled to ``shape``)."""
        a, shape = self._affine_for(shape)
        if self.seen_region is None:
            return grid_coverage(a, self.similarity.shape, shape)
        rows, cols = int(shape[0]), int(shape[1])
        sy, sx = rows / self.image_shape[0], cols / self.image_shape[1]
        x0, y0, x1, y1 = self.seen_box()
        eps = 1e-6
        xc = (np.arange(cols) + 0.5) / sx
        yc = (np.arange(rows) + 0.5) / sy
        return ((yc >= y0 - eps) & (yc < y1 + eps))[:, None] & ((xc >= x0 - eps) & (xc < x1 + eps))[None, :]

    def seen_box(self) -> Tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in original pixels of the part of the image the model saw (the model input, or else the
        grid, clipped to the image)."""
        if self.seen_region is not None:
            x0, y0, x1, y1 = (float(v) for v in self.seen_region)
            rows, cols = self.image_shape
            return max(0.0, x0), max(0.0, y0), min(float(cols), x1), min(float(rows), y1)
        gh, gw = self.similarity.shape
        a = np.asarray(self.grid_to_image, dtype=np.float64)
        xs = [a[0, 0] * gx + a[0, 1] * gy + a[0, 2] for gx in (0, gw) for gy in (0, gh)]
        ys = [a[1, 0] * gx + a[1, 1] * gy + a[1, 2] for gx in (0, gw) for gy in (0, gh)]
        rows, cols = self.image_shape
        return (max(0.0, min(xs)), max(0.0, min(ys)), min(float(cols), max(xs)), min(float(rows), max(ys)))

    @property
    def fully_seen(self) -> bool:
        """True when the model saw the whole image (our own transforms); False when a border was cropped away."""
        x0, y0, x1, y1 = self.seen_box()
        rows, cols = self.image_shape
        return x0 <= 1e-6 and y0 <= 1e-6 and x1 >= cols - 1e-6 and y1 >= rows - 1e-6

    def cells_in_image(self) -> np.ndarray:
        """Bool (gh, gw): cells whose centre lies on the image (the others cover only model-input padding)."""
        gh, gw = self.similarity.shape
        jj, ii = np.meshgrid(np.arange(gw) + 0.5, np.arange(gh) + 0.5)
        a = np.asarray(self.grid_to_image, dtype=np.float64)
        x = a[0, 0] * jj + a[0, 1] * ii + a[0, 2]
        y = a[1, 0] * jj + a[1, 1] * ii + a[1, 2]
        rows, cols = self.image_shape
        return (x >= 0) & (x < cols) & (y >= 0) & (y < rows)

    def peak_cell(self) -> Tuple[int, int]:
        """(row, col) of the highest-similarity grid cell among the cells on the image (padding cells excluded)."""
        sim = np.where(self.cells_in_image(), self.similarity, -np.inf)
        if not np.isfinite(sim).any():  # degenerate: no cell centre on the image
            sim = self.similarity
        i, j = np.unravel_index(int(np.nanargmax(sim)), sim.shape)
        return int(i), int(j)

    def peak_xy(self) -> Tuple[float, float]:
        """Original-image (x, y) of the centre of the highest-similarity grid cell on the image."""
        i, j = self.peak_cell()
        x, y, _ = np.asarray(self.grid_to_image) @ np.array([j + 0.5, i + 0.5, 1.0])
        return float(x), float(y)

    def display_grid(self, factor: int = 8) -> Tuple[np.ndarray, np.ndarray]:
        """A smooth version of the grid for display: bilinear upsampling by ``factor`` (edges replicated), and its
        affine onto original pixels. With :attr:`seen_region` (maps from the engine) the (gh*f, gw*f) lattice spans
        exactly what the model saw; otherwise the grid's own extent (cell centres kept). Small (e.g. 128 x 128 for a
        16 x 16 grid): the viewer never resamples a full-resolution image in Python."""
        factor = max(1, int(factor))
        sim = np.asarray(self.similarity, dtype=np.float32)
        if factor == 1:
            return sim, np.asarray(self.grid_to_image, dtype=np.float64)
        import cv2

        gh, gw = sim.shape
        if self.seen_region is not None:
            # a receptive-field-anchored grid is shifted off the model input (grid_cell_offset), so its own extent
            # leaves a strip of the image uncovered: sample the same bilinear map on a (gh*f, gw*f) lattice laid
            # over exactly what the model saw instead (the values to_image() gives there)
            x0, y0, x1, y1 = self.seen_box()
            h, w = gh * factor, gw * factor
            sx, sy = (x1 - x0) / w, (y1 - y0) / h
            disp_to_image = np.array([[sx, 0.0, x0], [0.0, sy, y0], [0.0, 0.0, 1.0]])
            g2d = np.linalg.inv(disp_to_image) @ np.asarray(self.grid_to_image, dtype=np.float64)
            return warp_grid_to_image(sim, g2d, (h, w), "bilinear"), disp_to_image
        up = cv2.resize(sim, (gw * factor, gh * factor), interpolation=cv2.INTER_LINEAR)
        return up, np.asarray(self.grid_to_image, dtype=np.float64) @ np.diag([1.0 / factor, 1.0 / factor, 1.0])
