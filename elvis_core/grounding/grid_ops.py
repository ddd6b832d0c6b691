"""Small grid operations of the grounding engine: hi-ml's Gaussian smoothing of a similarity grid and the mirrored
model input of mirror consensus (re-exported by :mod:`elvis_core.grounding.engine`)."""

from __future__ import annotations

import numpy as np
import torch


def smooth_grid(grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a small grid (sigma in grid cells), exactly as hi-ml's ``scipy.ndimage.gaussian_filter``
    (kernel radius ``int(4 sigma + 0.5)``, mirrored borders ``d c b a | a b c d``), so ``sigma=1.5`` reproduces
    BioViL's smoothed maps. A convex combination of the cells: values stay within the grid's [min, max]."""
    if sigma <= 0:
        return grid.astype(np.float32, copy=True)
    radius = max(1, int(4.0 * float(sigma) + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * x * x / (float(sigma) ** 2))
    k /= k.sum()
    g = np.asarray(grid, dtype=np.float64)
    for axis in (0, 1):
        n = g.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        p = np.pad(g, pad, mode="symmetric")
        g = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(2 * radius + 1))
    return g.astype(np.float32)


def mirror_model_input(x: torch.Tensor, stride: int, transform) -> torch.Tensor:
    """The model input [B, 1, S, S] mirrored left-right and moved ``stride - 1`` pixels left, so that the mirrored
    input's grid column j' lies exactly on the original's column G - 1 - j' (a ResNet's output j looks at input pixel
    stride * j: :func:`~elvis_core.model.transforms.grid_cell_offset`). The ``stride - 1`` columns that leave the
    input are the original's rightmost ones; those that enter are the transform's padding value (black)."""
    s = int(x.shape[-1])
    k = max(0, min(int(stride) - 1, s - 1))
    pad = (0.0 - float(getattr(transform, "mean", 0.0))) / float(getattr(transform, "std", 1.0) or 1.0)
    out = torch.full_like(x, pad)
    out[..., : s - k] = x.flip(-1)[..., k:]
    return out
