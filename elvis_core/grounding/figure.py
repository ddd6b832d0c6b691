"""Grounding figures: the image (display window), the map in a diverging colormap over a FIXED range with a colour
bar, optional boxes, the phrase on top and a provenance footer. Pure numpy + OpenCV (no matplotlib).

:func:`render_overlay` returns an RGB uint8 array; :func:`write_png` writes it (OpenCV wants BGR, handled there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import cv2
import numpy as np

from elvis_core.atomic import atomic_write_bytes
from elvis_core.errors import ElvisError

# ColorBrewer RdBu (11 classes), red (low) -> blue (high); "RdBu_r" reverses it (blue low, red high) as matplotlib.
_RDBU = ["#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de", "#4393c3",
         "#2166ac", "#053061"]
_VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b",
            "#fde725"]


def _hex(c: str) -> Tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def colormap_lut(name: str = "RdBu_r", n: int = 256) -> np.ndarray:
    """(n, 3) uint8 RGB lookup table of a named colormap: RdBu_r, RdBu, viridis, gray."""
    if name in ("RdBu", "RdBu_r"):
        stops = [_hex(c) for c in _RDBU]
        if name == "RdBu_r":
            stops = stops[::-1]
    elif name == "viridis":
        stops = [_hex(c) for c in _VIRIDIS]
    elif name in ("gray", "grey"):
        stops = [(0, 0, 0), (255, 255, 255)]
    else:
        raise ValueError(f"unknown colormap {name!r}; choose RdBu_r, RdBu, viridis or gray")
    stops_arr = np.asarray(stops, dtype=np.float64)
    xs = np.linspace(0.0, 1.0, len(stops_arr))
    t = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t, xs, stops_arr[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)


def colorize(values: np.ndarray, cmap: str = "RdBu_r", vrange: Tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Map float values to RGB through a colormap over the fixed ``vrange`` (values outside are clipped)."""
    lo, hi = float(vrange[0]), float(vrange[1])
    if not hi > lo:
        raise ValueError(f"vrange must be (low, high) with low < high, got {vrange}")
    lut = colormap_lut(cmap)
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=(lo + hi) / 2)
    idx = np.clip((v - lo) / (hi - lo), 0.0, 1.0) * (len(lut) - 1)
    return lut[np.round(idx).astype(np.intp)]


_ASCII_SUBST = {"\u2014": "-", "\u2013": "-", "\u00b7": "|", "\u00b1": "+/-", "\u2019": "'", "\u201c": '"',
                "\u201d": '"'}


def _ascii(s: str) -> str:
    s = "".join(_ASCII_SUBST.get(ch, ch) for ch in s)
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in s)


def _wrap(text: str, font_scale: float, thickness: int, max_w: int) -> List[str]:
    lines: List[str] = []
    for para in _ascii(text).split("\n"):
        cur = ""
        for word in para.split(" "):
            cand = word if not cur else cur + " " + word
            (w, _), _ = cv2.getTextSize(cand, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
            if w <= max_w or not cur:
                cur = cand
            else:
                lines.append(cur)
                cur = word
        lines.append(cur)
    return lines


def _text_band(lines: List[str], width: int, font_scale: float, thickness: int, line_h: int,
               colour: Tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    band = np.zeros((max(1, len(lines)) * line_h + line_h // 3, width, 3), dtype=np.uint8)
    for i, ln in enumerate(lines):
        cv2.putText(band, ln, (line_h // 3, (i + 1) * line_h - line_h // 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    colour, thickness, cv2.LINE_AA)
    return band


def _colour_bar(height: int, cmap: str, vrange: Tuple[float, float], font_scale: float, thickness: int) -> np.ndarray:
    bar_w = max(12, int(round(height * 0.03)))
    (tw, th), _ = cv2.getTextSize("-1.00", cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    pad = th
    out = np.zeros((height, bar_w + tw + 3 * pad // 2 + pad, 3), dtype=np.uint8)
    inner = height - 2 * pad
    vals = np.linspace(vrange[1], vrange[0], max(2, inner))[:, None]  # top = high
    out[pad:pad + inner, pad:pad + bar_w] = colorize(np.repeat(vals, bar_w, axis=1), cmap, vrange)
    for v in (vrange[1], (vrange[0] + vrange[1]) / 2, vrange[0]):
        y = pad + int(round((vrange[1] - v) / (vrange[1] - vrange[0]) * (inner - 1)))
        cv2.line(out, (pad + bar_w, y), (pad + bar_w + pad // 2, y), (255, 255, 255), thickness)
        cv2.putText(out, f"{v:+.2f}" if v else "0", (pad + bar_w + pad, y + th // 2), cv2.FONT_HERSHEY_SIMPLEX,
                    font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def render_overlay(radiograph, gmap, boxes: Optional[Iterable] = None, phrase: str = "", footer: str = "",
                   opacity: float = 0.5, cmap: str = "RdBu_r", vrange: Tuple[float, float] = (-1.0, 1.0),
                   window=None, min_side: int = 512, trust: Optional[str] = None) -> np.ndarray:
    """An RGB uint8 figure: phrase band on top, the trust caption under it, image + map overlay + boxes, colour bar
    on the right, footer below.

    ``trust``: the caption saying how far to believe the map (default: ``gmap.trust_line()``; "" for none); it is
    drawn amber unless the map is calibrated, confident and has no unknown words. A map whose presence is below its
    threshold (``gmap.confident is False``) is drawn at 40 % of ``opacity``: faint, on the same fixed scale.

    The image part has the radiograph's (rows, cols), enlarged (same aspect) so that its long side is at least
    ``min_side`` pixels (0 = never enlarge) so the labels stay legible on small images; the map is resampled onto
    the original pixels through ``gmap.grid_to_image`` (scaled with the image). ``opacity`` 0 shows only the image,
    1 only the map. ``window`` overrides the display window (default: the radiograph's default window).
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    from elvis_core.io.display import to_uint8

    grey = to_uint8(radiograph, window=window)
    rows0, cols0 = grey.shape
    up = max(1.0, float(min_side) / max(rows0, cols0)) if min_side else 1.0
    if up > 1.0:
        grey = cv2.resize(grey, (int(round(cols0 * up)), int(round(rows0 * up))), interpolation=cv2.INTER_LINEAR)
    rows, cols = grey.shape
    sx, sy = cols / cols0, rows / rows0
    base = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    map_img = gmap.to_image((rows, cols))
    colour = colorize(map_img, cmap, vrange).astype(np.float32)
    if getattr(gmap, "confident", None) is False:
        opacity = 0.4 * float(opacity)
    a = np.where(np.isnan(map_img), 0.0, float(opacity))[:, :, None]
    img = np.clip(base * (1.0 - a) + colour * a, 0, 255).round().astype(np.uint8)

    scale = max(rows, cols) / 1000.0
    font_scale = max(0.4, 0.8 * scale)
    thickness = max(1, int(round(2 * scale)))
    (_, th), _ = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    line_h = int(th * 1.9) + 2

    if not getattr(gmap, "fully_seen", True):  # an imported model's centre crop: frame what it saw, label the rest
        x0, y0, x1, y1 = gmap.seen_box()
        p0, p1 = (int(round(x0 * sx)), int(round(y0 * sy))), (int(round(x1 * sx)) - 1, int(round(y1 * sy)) - 1)
        lt = max(1, int(round(2 * scale)))
        for i in range(p0[0], p1[0], 12 * lt):  # dashed frame
            cv2.line(img, (i, p0[1]), (min(i + 6 * lt, p1[0]), p0[1]), (220, 220, 220), lt)
            cv2.line(img, (i, p1[1]), (min(i + 6 * lt, p1[0]), p1[1]), (220, 220, 220), lt)
        for j in range(p0[1], p1[1], 12 * lt):
            cv2.line(img, (p0[0], j), (p0[0], min(j + 6 * lt, p1[1])), (220, 220, 220), lt)
            cv2.line(img, (p1[0], j), (p1[0], min(j + 6 * lt, p1[1])), (220, 220, 220), lt)
        label = "not seen by the model"
        fs = font_scale * 0.8
        (tw, th2), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, fs, thickness)
        bands = [(p0[1], ((cols - tw) // 2, max(th2 + 2, p0[1] // 2 + th2 // 2))),
                 (rows - p1[1], ((cols - tw) // 2, min(rows - 2, (p1[1] + rows) // 2 + th2 // 2))),
                 (p0[0], (2, rows // 2)), (cols - p1[0], (max(2, cols - tw - 2), rows // 2))]
        _, org = max(bands, key=lambda b: b[0])
        cv2.putText(img, label, org, cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(img, label, org, cv2.FONT_HERSHEY_SIMPLEX, fs, (240, 240, 240), thickness, cv2.LINE_AA)

    if boxes is not None:
        bt = max(1, int(round(3 * scale)))
        for b in boxes:
            x, y, w, h = (float(getattr(b, k)) for k in ("x", "y", "w", "h")) if hasattr(b, "x") else map(float, b)
            x, w, y, h = x * sx, w * sx, y * sy, h * sy
            cv2.rectangle(img, (int(round(x)), int(round(y))), (int(round(x + w)) - 1, int(round(y + h)) - 1),
                          (0, 255, 0), bt, cv2.LINE_AA)

    bar = _colour_bar(rows, cmap, vrange, font_scale, thickness)
    body = np.concatenate([img, bar], axis=1)
    width = body.shape[1]
    parts = []
    if phrase:
        parts.append(_text_band(_wrap(phrase, font_scale, thickness, width - line_h), width, font_scale, thickness,
                                line_h))
    if trust is None:
        trust = gmap.trust_line() if hasattr(gmap, "trust_line") else ""
    if trust:
        fs = font_scale * 0.8
        trusted = getattr(gmap, "confident", None) is True and not getattr(gmap, "unknown_words", None)
        parts.append(_text_band(_wrap(trust, fs, thickness, width - line_h), width, fs, thickness,
                                int(line_h * 0.85), (235, 235, 235) if trusted else (255, 192, 77)))
    parts.append(body)
    if footer:
        fs = font_scale * 0.7
        parts.append(_text_band(_wrap(footer, fs, thickness, width - line_h), width, fs, thickness,
                                int(line_h * 0.75)))
    return np.ascontiguousarray(np.concatenate(parts, axis=0))


def write_png(path: os.PathLike | str, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array as PNG (atomically: temp file + rename)."""
    out = Path(path)
    if not out.parent.exists():
        raise ElvisError("output folder does not exist", out.parent)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover
        raise ElvisError("could not encode PNG", out)
    try:
        atomic_write_bytes(out, buf.tobytes())
    except OSError as err:
        raise ElvisError(f"cannot write ({err.strerror or err})", out) from None
    return out
