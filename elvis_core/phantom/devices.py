"""Support devices drawn on a phantom film (generator v2): endotracheal tube, central venous line, pacemaker.

They are *distractors*: bright, sharply drawn objects with side words in their report sentences ("left chest wall
pacemaker") that are not findings, have no box and stay on the finding-free twin (they are part of the patient's
film, not of a finding). A model that grounds "left ..." by looking for anything bright on the left is punished.
"""

from __future__ import annotations

from typing import List, Tuple

import cv2
import numpy as np

from elvis_core.phantom.anatomy import SIDE_SIGN, Geometry

_SHIFT = 4
_ONE = 1 << _SHIFT

#: probability of each device on a v2 film
P_DEVICE = {"ett": 0.15, "line": 0.2, "pacemaker": 0.12}


def _line(layer: np.ndarray, pts: np.ndarray, thick: float, value: float = 1.0) -> None:
    cv2.polylines(layer, [np.round(pts * _ONE).astype(np.int32)], False, value, max(1, int(round(thick))),
                  cv2.LINE_AA, _SHIFT)


def _curve(p0, p1, p2, n: int = 24) -> np.ndarray:
    """Quadratic Bezier from p0 to p2 through control point p1 (work px)."""
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, np.float32) for p in (p0, p1, p2))
    return ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2).astype(np.float32)


def draw_devices(rng: np.random.Generator, g: Geometry) -> Tuple[np.ndarray, List[str]]:
    """Density layer of the devices (work canvas) and one report sentence per device."""
    h, w = g.shape
    a = g.anatomy
    layer = np.zeros((h, w), np.float32)
    sentences: List[str] = []
    carina_y = (a.apex_y + 0.2) * h
    if rng.random() < P_DEVICE["ett"]:
        tip = carina_y - rng.uniform(0.03, 0.07) * h
        x = a.cx * w + 0.002 * w
        stripe = np.zeros_like(layer)
        _line(stripe, np.array([[x - 0.012 * w, 0], [x - 0.012 * w, tip]], np.float32), 0.004 * w)
        _line(stripe, np.array([[x + 0.012 * w, 0], [x + 0.012 * w, tip]], np.float32), 0.004 * w, 0.5)
        layer += 0.22 * cv2.GaussianBlur(stripe, (0, 0), 0.6)
        cm = int(round((carina_y - tip) / h * 60))
        sentences.append(["Endotracheal tube terminates {} cm above the carina.",
                          "ET tube tip is approximately {} cm above the carina."][int(rng.integers(2))].format(max(2, cm)))
    if rng.random() < P_DEVICE["line"]:
        side = ("right", "left")[int(rng.integers(2))]
        s = SIDE_SIGN[side]
        start = ((a.cx + s * rng.uniform(0.16, 0.24)) * w, (a.apex_y - 0.03) * h)
        svc = ((a.cx - 0.035) * w, (a.apex_y + rng.uniform(0.22, 0.3)) * h)
        ctrl = ((a.cx + s * 0.05) * w, (a.apex_y + 0.02) * h)
        wire = np.zeros_like(layer)
        _line(wire, _curve(start, ctrl, svc), 0.005 * w)
        layer += 0.25 * cv2.GaussianBlur(wire, (0, 0), 0.5)
        kind = ["internal jugular", "subclavian"][int(rng.integers(2))]
        sentences.append([f"{side.capitalize()} {kind} central venous catheter terminates in the mid SVC.",
                          f"A {side} {kind} line ends at the cavoatrial junction."][int(rng.integers(2))])
    if rng.random() < P_DEVICE["pacemaker"]:
        side = "left" if rng.random() < 0.8 else "right"
        s = SIDE_SIGN[side]
        gx, gy = (a.cx + s * a.thorax_hw * rng.uniform(0.55, 0.75)) * w, (a.apex_y + rng.uniform(0.04, 0.08)) * h
        box = np.zeros_like(layer)
        cv2.ellipse(box, (int(gx * _ONE), int(gy * _ONE)), (int(0.045 * w * _ONE), int(0.03 * h * _ONE)),
                    float(rng.uniform(-20, 20)), 0, 360, 1.0, -1, cv2.LINE_AA, _SHIFT)
        leads = np.zeros_like(layer)
        ra = ((a.cx - 0.02) * w, (a.dome_y_right - 0.08) * h)
        rv = ((a.cx + 0.06) * w, (a.dome_y_left - 0.03) * h)
        _line(leads, _curve((gx, gy), ((a.cx + s * 0.02) * w, (a.apex_y + 0.12) * h), ra), 0.004 * w)
        _line(leads, _curve((gx, gy), ((a.cx + s * 0.03) * w, (a.apex_y + 0.16) * h), rv), 0.004 * w)
        layer += 0.6 * cv2.GaussianBlur(box, (0, 0), 0.8) + 0.25 * cv2.GaussianBlur(leads, (0, 0), 0.5)
        sentences.append([f"{side.capitalize()} chest wall pacemaker with leads in the right atrium and ventricle.",
                          f"Dual-lead pacemaker, {side} chest wall, unchanged."][int(rng.integers(2))])
    return layer, sentences
