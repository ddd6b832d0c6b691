"""Phantom generator version 2: a film on which the image, not the words, decides where a phrase is.

Changes from version 1 (which stays reproducible by seed: ``render_study(..., version=1)``):
- nodules and masses (two new categories, well-defined round opacities);
- support devices (ET tube, central line, pacemaker) as distractors: drawn on the film and its twin, named in the
  report with side words, never boxed (:mod:`elvis_core.phantom.devices`);
- two findings of the same category at two places on one film ("right upper lobe opacity" and "left lower lobe
  opacity": only the words tell which is meant);
- findings whose phrase names no location ("patchy opacity", "a nodule"; only when the film has one finding of
  that category, so the phrase still means one place);
- cardiomegaly boxed on the enlarged heart silhouette (as MS-CXR does), not on everything the bigger heart changed;
- retrocardiac opacities drawn *through* the heart (v1 drew them only where lung air was visible, i.e. almost
  nothing behind the heart), so the box lies on a visible retrocardiac density.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from elvis_core.phantom.anatomy import Anatomy, Geometry, heart_mask, render_anatomy
from elvis_core.phantom.anatomy_boxes import anatomy_boxes
from elvis_core.phantom.devices import draw_devices
from elvis_core.phantom.findings import (ALLOWED, CATEGORIES, Finding, _blobs, _pick_center, _RADIUS, _smoothstep,
                                         draw_finding, layer_box, sample_finding_spec, shuffled_categories)
from elvis_core.phantom.reports import write_report

#: categories of generator v2 (v1's eight MS-CXR categories + nodules and masses)
CATEGORIES_V2 = CATEGORIES + ("Nodule", "Mass")
ALLOWED_V2 = dict(ALLOWED)
ALLOWED_V2["Nodule"] = (("right", "left"), ("apical", "upper", "middle", "lower"))
ALLOWED_V2["Mass"] = (("right", "left"), ("upper", "middle", "lower", "perihilar"))
#: categories that may appear twice on one film (two places) and may be named without a location
FOCAL = ("Atelectasis", "Consolidation", "Lung Opacity", "Nodule", "Mass")
P_SECOND_SAME = 0.3
P_UNLOCATED = 0.15
N_FINDINGS_P = (0.2, 0.35, 0.3, 0.15)


def _mark_used(used: set, side: str, zone: str) -> None:
    for s in (("right", "left") if side in ("bilateral", "none") else (side,)):
        used.add((s, zone))
        if zone in ("basal", "lower"):
            used.update({(s, "basal"), (s, "lower")})
        if zone in ("apical", "upper"):
            used.update({(s, "apical"), (s, "upper")})
        if zone in ("middle", "perihilar"):
            used.update({(s, "middle"), (s, "perihilar")})
        if zone == "retrocardiac" or (s == "left" and zone in ("lower", "basal")):
            used.update({("left", "retrocardiac"), ("left", "lower"), ("left", "basal")})


def choose_findings(rng: np.random.Generator, n: int, categories: Optional[Sequence[str]]) -> List[Finding]:
    order = shuffled_categories(rng, categories, CATEGORIES_V2)
    chosen: List[Finding] = []
    used: set = set()
    for cat in order:
        if len(chosen) >= n:
            break
        if {cat, "Pneumonia", "Consolidation"} == {"Pneumonia", "Consolidation"} and \
                any(f.category in ("Pneumonia", "Consolidation") for f in chosen):
            continue
        copies = 2 if (cat in FOCAL and n - len(chosen) >= 2 and rng.random() < P_SECOND_SAME) else 1
        for _ in range(copies):
            spec = sample_finding_spec(rng, cat, used, ALLOWED_V2)
            if spec is None:
                break
            chosen.append(Finding(cat, *spec))
            _mark_used(used, spec[0], spec[1])
    for f in chosen:
        alone = sum(g.category == f.category for g in chosen) == 1
        if f.category in FOCAL and alone and rng.random() < P_UNLOCATED:
            f.located = False
    return chosen


def _round_lesion(rng, g: Geometry, f: Finding) -> List[np.ndarray]:
    """A well-defined round density (nodule: 0.8-2.5 % of the canvas height in radius; mass: 3.5-6 %)."""
    h, w = g.shape
    r = h * (rng.uniform(0.008, 0.025) if f.category == "Nodule" else rng.uniform(0.035, 0.06))
    r *= {"small": 0.8, "moderate": 1.0, "large": 1.25}[f.size]
    cx, cy = _pick_center(rng, g, f.side, f.zone)
    xx, yy = g.grids
    d = np.sqrt(((xx - cx) / (r * rng.uniform(0.85, 1.15))) ** 2 + ((yy - cy) / r) ** 2)
    m = _smoothstep(1.0, 0.75, d) * (0.85 + 0.15 * np.clip(1 - d, 0, 1))
    air = np.maximum(g.air, 0.6 * float(g.air.max()) * g.lungs[f.side])  # visible through ribs and heart alike
    return [(0.55 if f.category == "Nodule" else 0.7) * m * air]


def _retrocardiac(rng, g: Geometry, f: Finding) -> List[np.ndarray]:
    """An opacity behind the heart: adds density on the heart's shadow (v1 drew it only on visible lung air)."""
    h, w = g.shape
    r = _RADIUS[f.size] * h * rng.uniform(0.85, 1.2)
    cx, cy = _pick_center(rng, g, "left", "retrocardiac")
    n = int(rng.integers(3, 6))
    centers = [(cx + rng.normal(0, r * 0.35), cy + rng.normal(0, r * 0.35)) for _ in range(n)]
    sig = [(r * rng.uniform(0.45, 0.7), r * rng.uniform(0.45, 0.7)) for _ in range(n)]
    m = _smoothstep(0.12, 0.9, _blobs((h, w), centers, sig))
    dens = {"Atelectasis": 0.6, "Consolidation": 0.8, "Pneumonia": 0.7}.get(f.category, 0.6)
    return [dens * m * g.lungs["left"] * g.air]


def heart_box(a: Anatomy, h: int, w: int, ctr: Optional[float] = None) -> Tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in canvas px of the heart ellipse of :func:`heart_mask` (no great vessels)."""
    hw = a.heart_width(ctr) * w
    cxp = a.cx * w - 0.36 * hw + hw / 2.0
    bottom = (a.dome_y_left + 0.025) * h
    ehh = a.heart_height * h * (1.0 + 0.5 * (a.heart_width(ctr) / a.heart_width() - 1.0))
    cyp = bottom - ehh / 2.0
    t = np.deg2rad(a.heart_tilt)
    ra, rb = hw / 2.0, ehh / 2.0
    ex = float(np.hypot(ra * np.cos(t), rb * np.sin(t)))
    ey = float(np.hypot(ra * np.sin(t), rb * np.cos(t)))
    return cxp - ex, cyp - ey, cxp + ex, cyp + ey


def _cardiomegaly(rng, g: Geometry, f: Finding, height: int, width: int) -> np.ndarray:
    """The v1 drawing; the box is the enlarged heart's silhouette (MS-CXR boxes the heart, not the change)."""
    h, w = g.shape
    ctr = {"small": rng.uniform(0.54, 0.58), "moderate": rng.uniform(0.58, 0.63), "large": rng.uniform(0.63, 0.7)}
    c = ctr[f.size]
    big = np.maximum(heart_mask(g.anatomy, h, w, ctr=c, blur=1.5 * h / 512), g.heart)
    layer = g.heart_term(big) - g.heart_term(g.heart)
    x0, y0, x1, y1 = heart_box(g.anatomy, h, w, ctr=c)
    sx, sy = width / w, height / h
    a, b = max(0, int(np.floor(x0 * sx))), max(0, int(np.floor(y0 * sy)))
    cc, d = min(width, int(np.ceil(x1 * sx))), min(height, int(np.ceil(y1 * sy)))
    f.boxes = [(a, b, cc - a, d - b)]
    return layer


def draw_finding_v2(rng, g: Geometry, f: Finding, height: int, width: int) -> np.ndarray:
    if f.category == "Cardiomegaly":
        return _cardiomegaly(rng, g, f, height, width)
    if f.category in ("Nodule", "Mass") or f.zone == "retrocardiac":
        layers = _round_lesion(rng, g, f) if f.category in ("Nodule", "Mass") else _retrocardiac(rng, g, f)
        f.boxes = [b for b in (layer_box(ly, height, width) for ly in layers) if b is not None]
        return np.sum(layers, axis=0).astype(np.float32)
    return draw_finding(rng, g, f, height, width)


def render_study_v2(rng: np.random.Generator, size: int, anatomy: Optional[Anatomy], n_findings: Optional[int],
                    categories: Optional[Sequence[str]], view: Optional[str], with_clean: bool):
    """See :func:`elvis_core.phantom.generate.render_study` (``version=2``)."""
    from elvis_core.phantom.generate import PhantomStudy, draw_and_expose, shuffle_boxes, study_frame

    a, height, width, view, n_findings = study_frame(rng, size, anatomy, view, n_findings, N_FINDINGS_P)
    g = render_anatomy(a, height, width)
    devices, device_sentences = draw_devices(rng, g)
    g.base = g.base + devices  # part of the patient's film: on the twin too
    findings = choose_findings(rng, n_findings, categories)
    kept, layers, image, clean = draw_and_expose(rng, g, a, findings, draw_finding_v2, height, width, with_clean)
    report = write_report(rng, kept, view=view, sex=a.sex, extra=device_sentences, version=2)
    shuffle_boxes(rng, kept)
    return PhantomStudy(image=image, clean=clean, findings=kept, report=report, view=view, anatomy=a, layers=layers,
                        anatomy_boxes=anatomy_boxes(g, height, width), devices=device_sentences, version=2)
