"""The eight MS-CXR finding categories, drawn as additive density layers at a side, zone and size.

Each drawer returns one layer per box (so a bilateral finding has two boxes, as in MS-CXR, where a phrase may have
several boxes); the box is the bounding box of the drawn layer, so it lies on what was drawn by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from elvis_core.errors import ElvisError
from elvis_core.phantom.anatomy import SIDE_SIGN, Geometry, heart_mask, lung_polygon

CATEGORIES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity", "Pleural Effusion",
              "Pneumonia", "Pneumothorax")
SIZES = ("small", "moderate", "large")
ZONES = ("apical", "upper", "middle", "lower", "basal", "retrocardiac", "perihilar")

#: category -> (allowed sides, allowed zones)
ALLOWED: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "Atelectasis": (("right", "left"), ("middle", "lower", "basal", "retrocardiac")),
    "Cardiomegaly": (("none",), ("cardiac",)),
    "Consolidation": (("right", "left"), ("upper", "middle", "lower", "retrocardiac")),
    "Edema": (("bilateral",), ("perihilar",)),
    "Lung Opacity": (("right", "left"), ("apical", "upper", "middle", "lower", "basal", "perihilar")),
    "Pleural Effusion": (("right", "left", "bilateral"), ("basal",)),
    "Pneumonia": (("right", "left"), ("upper", "middle", "lower", "retrocardiac")),
    "Pneumothorax": (("right", "left"), ("apical",)),
}


@dataclass
class Finding:
    """One finding: category, where, how big, and its boxes ``(x, y, w, h)`` in output-image pixels."""

    category: str
    side: str  # "right" | "left" | "bilateral" | "none" (patient's side)
    zone: str  # one of ZONES, or "cardiac"
    size: str  # "small" | "moderate" | "large"
    boxes: List[Tuple[int, int, int, int]] = field(default_factory=list)
    #: the exact phrase of the report that names this finding (MS-CXR ``label_text``); set by the report writer
    label_text: str = ""
    #: the finding's phrase as written in FINDINGS and in IMPRESSION (both verbatim in the report)
    mentions: List[str] = field(default_factory=list)
    #: False: the report names the finding without side or zone ("patchy opacity"; generator v2 only)
    located: bool = True


def shuffled_categories(rng: np.random.Generator, categories: Optional[Sequence[str]], known: Sequence[str]
                        ) -> List[str]:
    """``categories`` (default: all of ``known``), checked against ``known``, in a random order (one
    ``rng.permutation`` draw: generators v1 and v2 both start a study's findings with it)."""
    pool = list(categories) if categories is not None else list(known)
    for c in pool:
        if c not in known:
            raise ElvisError(f"unknown finding category {c!r}; expected one of {', '.join(known)}")
    return [pool[i] for i in rng.permutation(len(pool))]


def sample_finding_spec(rng: np.random.Generator, category: str, exclude: set,
                        allowed: Optional[Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]]] = None
                        ) -> Optional[Tuple[str, str, str]]:
    """Pick (side, zone, size) for ``category``, avoiding (side, zone) pairs in ``exclude``; ``allowed``: the
    category -> (sides, zones) table (default: generator v1's :data:`ALLOWED`)."""
    sides, zones = (ALLOWED if allowed is None else allowed)[category]
    options = [(s, z) for s in sides for z in zones if not (z == "retrocardiac" and s != "left")]
    options = [o for o in options if o not in exclude]
    if not options:
        return None
    side, zone = options[int(rng.integers(len(options)))]
    size = str(rng.choice(SIZES, p=[0.45, 0.35, 0.2]))
    return side, zone, size


# ---------------------------------------------------------------------------------------------------------- helpers
def _zone_rect(g: Geometry, side: str, zone: str) -> Tuple[float, float, float, float]:
    x0, y0, x1, y1 = g.lung_boxes[side]
    hgt = y1 - y0
    wid = x1 - x0
    fr = {"apical": (0.02, 0.18), "upper": (0.14, 0.40), "middle": (0.40, 0.62), "lower": (0.62, 0.84),
          "basal": (0.80, 0.95), "perihilar": (0.36, 0.62), "retrocardiac": (0.70, 0.90)}[zone]
    ya, yb = y0 + fr[0] * hgt, y0 + fr[1] * hgt
    medial_is_low_x = side == "left"
    if zone == "perihilar":
        xa, xb = (x0, x0 + 0.45 * wid) if medial_is_low_x else (x1 - 0.45 * wid, x1)
    elif zone == "retrocardiac":
        xa, xb = x0, x0 + 0.35 * wid
    else:
        xa, xb = x0 + 0.15 * wid, x1 - 0.15 * wid
    return xa, ya, xb, yb


def _pick_center(rng, g: Geometry, side: str, zone: str) -> Tuple[float, float]:
    xa, ya, xb, yb = _zone_rect(g, side, zone)
    m = g.lungs[side]
    best = ((xa + xb) / 2, (ya + yb) / 2)
    for _ in range(30):
        x, y = rng.uniform(xa, xb), rng.uniform(ya, yb)
        iy, ix = min(int(y), m.shape[0] - 1), min(int(x), m.shape[1] - 1)
        if m[iy, ix] > 0.9:
            return float(x), float(y)
    return best


def _blobs(shape, centers, sigmas, weights=None) -> np.ndarray:
    """Sum of anisotropic Gaussians, evaluated only in their window."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    for i, ((cx, cy), (sx, sy)) in enumerate(zip(centers, sigmas)):
        wgt = 1.0 if weights is None else weights[i]
        x0, x1 = max(0, int(cx - 3 * sx)), min(w, int(cx + 3 * sx) + 1)
        y0, y1 = max(0, int(cy - 3 * sy)), min(h, int(cy + 3 * sy) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / sx
        ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / sy
        out[y0:y1, x0:x1] += wgt * np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))
    return out


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _texture(rng, shape, cell: int) -> np.ndarray:
    h, w = shape
    g = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_LINEAR)


_RADIUS = {"small": 0.035, "moderate": 0.055, "large": 0.08}  # fraction of the canvas height


# ---------------------------------------------------------------------------------------------------------- drawers
def _opacity(rng, g: Geometry, f: Finding, kind: str) -> List[np.ndarray]:
    h, w = g.shape
    r = _RADIUS[f.size] * h * rng.uniform(0.85, 1.2)
    cx, cy = _pick_center(rng, g, f.side, f.zone)
    lung = g.lungs[f.side]
    if kind == "atelectasis":  # plate-like / subsegmental band, or a wedge
        n = 3
        ang = rng.uniform(-0.35, 0.35)
        offs = np.linspace(-1, 1, n)
        centers = [(cx + o * 1.3 * r * np.cos(ang), cy + o * 1.3 * r * np.sin(ang)) for o in offs]
        sig = [(r * 0.9, r * rng.uniform(0.22, 0.35))] * n
        m = _smoothstep(0.3, 0.8, _blobs((h, w), centers, sig))
        dens = 0.6
    elif kind == "pneumonia":  # patchy, ill-defined, several foci
        n = int(rng.integers(7, 13))
        centers = [(cx + rng.normal(0, r * 0.6), cy + rng.normal(0, r * 0.6)) for _ in range(n)]
        sig = [(r * rng.uniform(0.25, 0.45),) * 2 for _ in range(n)]
        m = _smoothstep(0.2, 0.9, _blobs((h, w), centers, sig)) * (0.6 + 0.4 * _texture(rng, (h, w), 3))
        dens = 0.65
    else:
        n = int(rng.integers(3, 6))
        centers = [(cx + rng.normal(0, r * 0.35), cy + rng.normal(0, r * 0.35)) for _ in range(n)]
        sig = [(r * rng.uniform(0.45, 0.7), r * rng.uniform(0.45, 0.7)) for _ in range(n)]
        b = _blobs((h, w), centers, sig)
        if kind == "consolidation":  # dense, lobulated, with air bronchograms
            extra = int(rng.integers(3, 7))
            centers += [(cx + rng.normal(0, r * 0.7), cy + rng.normal(0, r * 0.7)) for _ in range(extra)]
            sig += [(r * rng.uniform(0.25, 0.45),) * 2 for _ in range(extra)]
            b = _blobs((h, w), centers, sig)
            m = _smoothstep(0.18, 0.8, b) * (0.75 + 0.25 * _texture(rng, (h, w), 3))
            br = np.zeros((h, w), np.float32)
            hx, hy = g.hila[f.side]
            for _ in range(int(rng.integers(2, 5))):
                p0 = np.array([cx + rng.normal(0, r * 0.3), cy + rng.normal(0, r * 0.3)], np.float32)
                d = p0 - np.array([hx, hy], np.float32)
                d = d / max(float(np.hypot(*d)), 1e-3)
                pts = np.stack([p0 - d * r * 0.9, p0, p0 + d * r * 0.8 + rng.normal(0, r * 0.15, 2)]).astype(np.float32)
                cv2.polylines(br, [np.round(pts * 16).astype(np.int32)], False, 1.0, max(1, int(r * 0.12)),
                              cv2.LINE_AA, 4)
            m = m * (1.0 - 0.45 * cv2.GaussianBlur(br, (0, 0), 0.7))
            dens = 0.8
        else:  # lung opacity: hazier
            m = _smoothstep(0.12, 0.9, b)
            dens = 0.5
    return [dens * m * lung * g.air_visible]


def _edema(rng, g: Geometry, f: Finding) -> List[np.ndarray]:
    h, w = g.shape
    xx, yy = g.grids
    dens = {"small": 0.38, "moderate": 0.5, "large": 0.65}[f.size]
    tex = 0.55 + 0.45 * _texture(rng, (h, w), 2)
    layers = []
    for side in ("right", "left"):
        hx, hy = g.hila[side]
        s = SIDE_SIGN[side]
        x0, y0, x1, y1 = g.lung_boxes[side]
        sx = (x1 - x0) * rng.uniform(0.28, 0.38) * (1 + 0.25 * SIZES.index(f.size))
        sy = (y1 - y0) * rng.uniform(0.18, 0.24) * (1 + 0.2 * SIZES.index(f.size))
        cx = hx + s * sx * 0.4
        gm = np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - hy) / sy) ** 2))
        m = _smoothstep(0.15, 0.75, gm) * tex * g.lungs[side]
        layers.append(dens * m * g.air_visible)
    return layers


def _effusion(rng, g: Geometry, f: Finding) -> List[np.ndarray]:
    h, w = g.shape
    xx, yy = g.grids
    frac = {"small": (0.08, 0.14), "moderate": (0.2, 0.3), "large": (0.38, 0.5)}[f.size]
    sides = ("right", "left") if f.side == "bilateral" else (f.side,)
    layers = []
    for side in sides:
        x0, y0, x1, y1 = g.lung_boxes[side]
        hgt, wid = y1 - y0, x1 - x0
        level = y1 - rng.uniform(*frac) * hgt
        s = SIDE_SIGN[side]
        lateral_x = x0 if s < 0 else x1
        # meniscus: the fluid climbs the lateral chest wall
        rel = np.clip(1.0 - np.abs(xx - lateral_x) / wid, 0, 1)
        top = level - 0.12 * hgt * rel ** 2
        m = _smoothstep(-0.012 * hgt, 0.03 * hgt, yy - top)
        grad = 0.85 + 0.15 * np.clip((yy - top) / (0.2 * hgt), 0, 1)
        lung = g.lungs[side]
        layers.append(0.95 * m * grad * g.air_visible * lung)
    return layers


def _pneumothorax(rng, g: Geometry, f: Finding) -> List[np.ndarray]:
    h, w = g.shape
    xx, yy = g.grids
    side = f.side
    factor = {"small": rng.uniform(0.86, 0.9), "moderate": rng.uniform(0.76, 0.82), "large": rng.uniform(0.6, 0.68)}
    hx, hy = g.hila[side]
    pts = lung_polygon(g.anatomy, side, h, w, scale_to=(hx, hy + 0.25 * h), factor=factor[f.size])
    shrunk = np.zeros((h, w), np.uint8)
    cv2.fillPoly(shrunk, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    lung = g.lungs[side]
    x0, y0, x1, y1 = g.lung_boxes[side]
    cut = y0 + {"small": 0.4, "moderate": 0.55, "large": 0.8}[f.size] * (y1 - y0)
    region = lung * (1.0 - shrunk.astype(np.float32)) * _smoothstep(cut, cut - 0.08 * (y1 - y0), yy)
    edge = cv2.morphologyEx(shrunk, cv2.MORPH_GRADIENT, np.ones((2, 2), np.uint8)).astype(np.float32)
    edge = cv2.GaussianBlur(edge, (0, 0), 0.6) * (region > 0.02) * (yy < cut)
    # no lung markings and more air in the pleural space; a thin bright visceral pleural line
    layer = -region * (g.vessels[side] + 0.07) + 0.09 * edge
    return [layer.astype(np.float32)]


def _cardiomegaly(rng, g: Geometry, f: Finding) -> List[np.ndarray]:
    h, w = g.shape
    ctr = {"small": rng.uniform(0.54, 0.58), "moderate": rng.uniform(0.58, 0.63), "large": rng.uniform(0.63, 0.7)}
    big = heart_mask(g.anatomy, h, w, ctr=ctr[f.size], blur=1.5 * h / 512)
    big = np.maximum(big, g.heart)
    return [g.heart_term(big) - g.heart_term(g.heart)]


DRAWERS: Dict[str, Callable] = {
    "Atelectasis": lambda rng, g, f: _opacity(rng, g, f, "atelectasis"),
    "Consolidation": lambda rng, g, f: _opacity(rng, g, f, "consolidation"),
    "Lung Opacity": lambda rng, g, f: _opacity(rng, g, f, "opacity"),
    "Pneumonia": lambda rng, g, f: _opacity(rng, g, f, "pneumonia"),
    "Edema": _edema,
    "Pleural Effusion": _effusion,
    "Pneumothorax": _pneumothorax,
    "Cardiomegaly": _cardiomegaly,
}


def layer_box(layer: np.ndarray, height: int, width: int, rel: float = 0.25
              ) -> Optional[Tuple[int, int, int, int]]:
    """Bounding box (x, y, w, h) in output pixels of where ``|layer|`` exceeds ``rel`` of its maximum."""
    a = np.abs(layer)
    mx = float(a.max())
    if mx <= 0:
        return None
    ys, xs = np.nonzero(a > rel * mx)
    if len(xs) == 0:
        return None
    hh, ww = layer.shape
    sx, sy = width / ww, height / hh
    x0, x1 = int(np.floor(xs.min() * sx)), int(np.ceil((xs.max() + 1) * sx))
    y0, y1 = int(np.floor(ys.min() * sy)), int(np.ceil((ys.max() + 1) * sy))
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(width, x1), min(height, y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1 - x0, y1 - y0


def draw_finding(rng: np.random.Generator, g: Geometry, f: Finding, height: int, width: int) -> np.ndarray:
    """Draw ``f`` on the working canvas; fills ``f.boxes`` (output pixels); returns the summed layer."""
    layers = DRAWERS[f.category](rng, g, f)
    if f.category not in ("Pneumothorax",) and g.rib_lung is not None:
        air = np.maximum(g.air_visible, 1e-3)
        layers = [ly - 0.6 * np.clip(ly / air, 0, 1) * g.rib_lung for ly in layers]
    f.boxes = []
    total = np.zeros(g.shape, np.float32)
    for layer in layers:
        box = layer_box(layer, height, width)
        if box is not None:
            f.boxes.append(box)
        total += layer
    return total
