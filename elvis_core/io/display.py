"""Radiograph → uint8 display image (DESIGN.md, "The pixel path", step 2).

:func:`to_uint8` is THE display function: the viewer's exports, ``elvis render`` and the grounding overlays use it.
A window maps ``low = center - width/2`` to 0 and ``high = center + width/2`` to 255 linearly (the contract of
:class:`~elvis_core.io.radiograph.Window`); a VOI LUT maps ``first_mapped + i`` to ``table[i]`` (clamped).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

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
    lut8 = voi_lut_table_uint8(lut)
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


# ------------------------------------------------------------------------------------------------ display rules
def voi_lut_table_uint8(lut: VoiLut) -> np.ndarray:
    """The VOI LUT's table as uint8 grey levels, rounded to nearest: THE rounding for the screen and exports."""
    table = np.asarray(lut.table, dtype=np.float64)
    return np.clip(np.rint(table * 255.0), 0, 255).astype(np.uint8)


def orientation_markers(meta: dict) -> Tuple[Optional[Tuple[str, str, str, str]], str]:
    """(left, right, top, bottom) side labels of the displayed image in the patient's frame, and their source.

    From PatientOrientation (row direction, column direction) when present; else from ViewPosition for frontal
    chest views (PA and AP are displayed with the patient's right on the image's left); else unknown (None).
    """
    opposite = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}

    def opp(s: str) -> str:
        return "".join(opposite.get(c, c) for c in s)

    po = meta.get("PatientOrientation")
    if po:
        parts = list(po) if not isinstance(po, str) else po.replace("\\", " ").split()
        if len(parts) == 2 and all(parts):
            row_dir, col_dir = str(parts[0]).upper(), str(parts[1]).upper()
            return (opp(row_dir), row_dir, opp(col_dir), col_dir), "PatientOrientation"
    view = str(meta.get("ViewPosition") or "").upper()
    if view in ("PA", "AP"):
        return ("R", "L", "H", "F"), f"assumed from ViewPosition {view}"
    return None, "unknown"


def _edge_band(profile: np.ndarray, spread: np.ndarray, tol_level: float, tol_spread: float) -> int:
    """How many leading entries of a row/column profile look like a collimation band (flat and unlike the
    centre), capped at a quarter of the length."""
    n = len(profile)
    centre = float(np.median(profile[n // 3: max(n // 3 + 1, 2 * n // 3)]))
    k = 0
    while k < n // 4 and spread[k] < tol_spread and abs(profile[k] - centre) > tol_level:
        k += 1
    return k


def body_region(pixels: np.ndarray, max_side: int = 512) -> Tuple[slice, slice]:
    """Rows/columns of the image without its collimation borders (flat bands along the edges), on a sub-sampled
    grid of at most ``max_side`` per side; the slices are in full-resolution pixels."""
    step = max(1, int(np.ceil(max(pixels.shape) / max_side)))
    sub = np.asarray(pixels[::step, ::step], dtype=np.float32)
    lo, hi = np.percentile(sub, [1, 99])
    span = max(float(hi - lo), 1e-6)
    rows_m, rows_s = sub.mean(1), sub.std(1)
    cols_m, cols_s = sub.mean(0), sub.std(0)
    tl, ts = 0.15 * span, 0.04 * span
    top = _edge_band(rows_m, rows_s, tl, ts)
    bottom = _edge_band(rows_m[::-1], rows_s[::-1], tl, ts)
    left = _edge_band(cols_m, cols_s, tl, ts)
    right = _edge_band(cols_m[::-1], cols_s[::-1], tl, ts)
    r, c = pixels.shape
    return (slice(top * step, r - bottom * step), slice(left * step, c - right * step))


#: chest presets as percentiles of the body region's intensities (higher = brighter): the lung window spans the
#: darkest lung to the soft-tissue shoulder; the mediastinum window sits on the bright half (heart, mediastinum,
#: spine behind them); the bone window is wide over the bright range (cortex and ribs against soft tissue)
CHEST_PRESET_PERCENTILES = {
    "Lung": (8.0, 95.0),
    "Mediastinum": (40.0, 99.8),
    "Bone": (25.0, 99.95),
}


def chest_presets(radiograph: Radiograph) -> List[Window]:
    """Windows computed from the image: the body region (collimation borders left out) and the percentiles of
    :data:`CHEST_PRESET_PERCENTILES`, plus "Full" (0.5-99.5 % of the body region). Radiograph values are not
    Hounsfield units, so fixed HU windows would be meaningless on CR/DX."""
    pix = radiograph.pixels
    rs, cs = body_region(pix)
    region = pix[rs, cs]
    if region.size < 16:
        region = pix
    step = max(1, int(np.ceil(np.sqrt(region.size / 262_144))))
    sample = np.asarray(region[::step, ::step], dtype=np.float64).ravel()
    qs = sorted({q for pair in CHEST_PRESET_PERCENTILES.values() for q in pair} | {0.5, 99.5})
    vals = dict(zip(qs, np.percentile(sample, qs)))
    out = []
    for name, (a, b) in list(CHEST_PRESET_PERCENTILES.items()) + [("Full", (0.5, 99.5))]:
        lo, hi = float(vals[a]), float(vals[b])
        if hi <= lo:
            hi = lo + 1.0
        out.append(Window((lo + hi) / 2.0, hi - lo, name))
    return out


def window_presets(radiograph: Radiograph) -> List[Window]:
    """Every window the viewer offers, in menu order: the file's own windows (named from the file or
    "DICOM n"), its VOI LUT (a Window with NaN centre/width named "DICOM VOI LUT"), then :func:`chest_presets`."""
    out: List[Window] = []
    for i, w in enumerate(radiograph.windows):
        out.append(Window(w.center, w.width, w.name or f"DICOM {i + 1}"))
    if radiograph.voi_lut is not None:
        out.append(Window(float("nan"), float("nan"), "DICOM VOI LUT"))
    return out + chest_presets(radiograph)
