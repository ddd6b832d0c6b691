"""Radiograph → uint8 display image (DESIGN.md, "The pixel path", step 2).

:func:`to_uint8` is THE display function: the viewer's exports, ``elvis render`` and the grounding overlays use it.
A window maps ``low = center - width/2`` to 0 and ``high = center + width/2`` to 255 linearly (the contract of
:class:`~elvis_core.io.radiograph.Window`); a VOI LUT maps ``first_mapped + i`` to ``table[i]`` (clamped).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from elvis_core.io.radiograph import Radiograph, VoiLut, Window


def window_to_uint8(pixels: np.ndarray, window: Window) -> np.ndarray:
    """Linear window on any float/int array: ``low`` → 0, ``high`` → 255, clipped, rounded to nearest."""
    width = float(window.width)
    if not np.isfinite(width) or width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    scale = np.float32(255.0 / width)
    offset = np.float32(-window.low * 255.0 / width + 0.5)
    out = np.asarray(pixels, dtype=np.float32) * scale
    out += offset
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


def voi_lut_to_uint8(pixels: np.ndarray, lut: VoiLut) -> np.ndarray:
    """Apply a VOI LUT (already in the pixels' sense) → uint8. Non-integer inputs are rounded to the nearest entry."""
    table = np.asarray(lut.table, dtype=np.float32)
    lut8 = np.clip(np.rint(table * 255.0), 0, 255).astype(np.uint8)
    idx = np.rint(np.asarray(pixels, dtype=np.float64) - float(lut.first_mapped))
    np.clip(idx, 0, lut8.size - 1, out=idx)
    return lut8[idx.astype(np.intp)]


def to_uint8(
    radiograph: Radiograph,
    window: Optional[Window] = None,
    use_voi_lut: bool = False,
    invert: bool = False,
) -> np.ndarray:
    """The display image: uint8, same shape as ``radiograph.pixels``.

    ``window`` defaults to ``radiograph.default_window()``. With ``use_voi_lut`` and a VOI LUT present, the LUT is used
    (``window`` is then ignored); without a LUT the window is used. ``invert`` flips black and white for display only.
    """
    pixels = radiograph.pixels
    if use_voi_lut and radiograph.voi_lut is not None:
        out = voi_lut_to_uint8(pixels, radiograph.voi_lut)
    else:
        out = window_to_uint8(pixels, window if window is not None else radiograph.default_window())
    if invert:
        np.subtract(np.uint8(255), out, out=out)
    return out
