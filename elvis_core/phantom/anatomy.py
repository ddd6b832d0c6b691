"""Procedural PA chest radiograph anatomy, drawn as an additive *density* map (higher = brighter).

Everything is drawn at a reduced working resolution (long side <= ``WORK_MAX`` px) with vectorised numpy / cv2 calls,
then post-processed (blur, resize to the output size, contrast curve, quantum noise) by :func:`postprocess`.

Coordinates: normalised ``(u, v)`` with ``u`` = x / width (right) and ``v`` = y / height (down). The patient's right
lung is on the image's LEFT (``u < cx``), the patient's left lung (and the heart's apex) on the image's right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

import cv2
import numpy as np

#: longest side of the working canvas (anatomy and findings are drawn here, then resized)
WORK_MAX = 512
#: side name -> sign of the image x offset from the midline (patient's right = image left)
SIDE_SIGN = {"right": -1.0, "left": 1.0}

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


@dataclass
class Anatomy:
    """Per-patient shape parameters (normalised units). Sampled by :func:`sample_anatomy`."""

    aspect: float  # width / height of the image
    cx: float  # midline
    thorax_hw: float  # half width of the rib cage (fraction of width)
    apex_y: float  # lung apices
    dome_y_right: float  # right hemidiaphragm dome (image left)
    dome_y_left: float  # left hemidiaphragm dome (image right), usually lower
    cp_drop: float  # costophrenic angle below the dome
    med_hw: float  # mediastinum half width
    ctr: float  # cardiothoracic ratio (normal 0.38-0.48)
    heart_height: float
    heart_tilt: float  # degrees
    spine_hw: float
    vert_h: float  # vertebral body height
    rib_count: int
    rib_slope: float
    rib_thick: float
    body_density: float
    lung_density: float
    sex: str
    gastric_bubble: bool
    humeral_heads: bool
    arms: bool
    gamma: float
    noise: float
    seed: int  # for the vessel tree and textures

    def heart_width(self, ctr: float | None = None) -> float:
        """Heart width as a fraction of the image width."""
        return (self.ctr if ctr is None else ctr) * 2.0 * self.thorax_hw


def sample_anatomy(rng: np.random.Generator, aspect: float | None = None) -> Anatomy:
    """Draw one patient's anatomy. ``aspect`` (width/height) defaults to a random 0.82-1.0."""
    apex = rng.uniform(0.10, 0.17)
    dome_r = rng.uniform(0.60, 0.69)
    return Anatomy(
        aspect=float(rng.uniform(0.82, 1.0) if aspect is None else aspect),
        cx=float(0.5 + rng.normal(0, 0.012)),
        thorax_hw=float(rng.uniform(0.36, 0.43)),
        apex_y=float(apex),
        dome_y_right=float(dome_r),
        dome_y_left=float(dome_r + rng.uniform(0.005, 0.04)),
        cp_drop=float(rng.uniform(0.035, 0.075)),
        med_hw=float(rng.uniform(0.05, 0.07)),
        ctr=float(rng.uniform(0.38, 0.47)),
        heart_height=float(rng.uniform(0.16, 0.2)),
        heart_tilt=float(rng.uniform(18, 30)),
        spine_hw=float(rng.uniform(0.03, 0.042)),
        vert_h=float(rng.uniform(0.032, 0.042)),
        rib_count=int(rng.integers(9, 12)),
        rib_slope=float(rng.uniform(0.05, 0.10)),
        rib_thick=float(rng.uniform(0.014, 0.02)),
        body_density=float(rng.uniform(0.68, 0.80)),
        lung_density=float(rng.uniform(0.36, 0.46)),
        sex=str(rng.choice(["F", "M"])),
        gastric_bubble=bool(rng.random() < 0.6),
        humeral_heads=bool(rng.random() < 0.7),
        arms=bool(rng.random() < 0.6),
        gamma=float(rng.uniform(0.85, 1.25)),
        noise=float(rng.uniform(0.008, 0.02)),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def work_shape(height: int, width: int) -> Tuple[int, int]:
    """Working canvas (rows, cols) for an output image of ``height`` x ``width``."""
    s = min(1.0, WORK_MAX / max(height, width))
    return max(16, int(round(height * s))), max(16, int(round(width * s)))


@dataclass
class Geometry:
    """The drawn anatomy at working resolution: soft masks in [0, 1] and the density terms.

    ``density = base + heart_term(heart)``; findings add their own layers on top.
    """

    shape: Tuple[int, int]
    anatomy: Anatomy
    body: np.ndarray
    lungs: Dict[str, np.ndarray]  # side -> soft mask
    lung_polys: Dict[str, np.ndarray]  # side -> (N, 2) float polygon in work px
    lung_boxes: Dict[str, Tuple[float, float, float, float]]  # side -> (x0, y0, x1, y1) in work px
    hila: Dict[str, Tuple[float, float]]  # side -> (x, y) work px
    vessels: Dict[str, np.ndarray]  # side -> vessel layer (already masked by the lung)
    air: np.ndarray  # lung air thickness (positive; subtracted from the density)
    heart: np.ndarray
    base: np.ndarray  # everything except the heart term
    grids: Tuple[np.ndarray, np.ndarray] = field(repr=False, default=None)  # (xx, yy) work px, broadcastable
    rib_lung: np.ndarray = field(repr=False, default=None)  # rib contrast that shows only against lung air

    @property
    def air_visible(self) -> np.ndarray:
        """Lung air not already hidden by the heart (what an opacity can replace)."""
        return self.air * (1.0 - 0.8 * self.heart)

    def heart_term(self, heart_mask: np.ndarray) -> np.ndarray:
        """Density the heart adds: it hides the lung air it overlaps (retro-cardiac lung still shows a little)."""
        return heart_mask * (0.8 * self.air)

    @property
    def density(self) -> np.ndarray:
        return self.base + self.heart_term(self.heart)

    def px(self, u: float, v: float) -> Tuple[float, float]:
        h, w = self.shape
        return u * w, v * h


def _poly_mask(shape: Tuple[int, int], pts: np.ndarray, blur: float) -> np.ndarray:
    m = np.zeros(shape, np.float32)
    cv2.fillPoly(m, [np.round(pts * _ONE).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=_SHIFT)
    if blur > 0:
        m = cv2.GaussianBlur(m, (0, 0), blur)
    return m


def _polyline(layer: np.ndarray, pts: np.ndarray, thickness: float, value: float = 1.0) -> None:
    cv2.polylines(layer, [np.round(pts * _ONE).astype(np.int32)], False, value,
                  thickness=max(1, int(round(thickness))), lineType=cv2.LINE_AA, shift=_SHIFT)


def lung_polygon(a: Anatomy, side: str, h: int, w: int, scale_to: Tuple[float, float] | None = None,
                 factor: float = 1.0) -> np.ndarray:
    """Outline of one lung in work pixels (apex, lateral wall, costophrenic angle, dome, medial border).

    With ``scale_to=(x, y)`` and ``factor < 1`` the outline is shrunk towards that point (a collapsed lung).
    """
    s = SIDE_SIGN[side]
    dome = a.dome_y_right if side == "right" else a.dome_y_left
    cp_y = dome + a.cp_drop
    lat_max = a.thorax_hw * 0.93
    med = a.med_hw
    apex_off = med + 0.38 * (lat_max - med)
    # lateral wall: apex -> costophrenic angle
    t = np.linspace(0.0, 1.0, 40)
    lat = apex_off + (lat_max - apex_off) * (0.55 * np.sin(np.pi / 2 * np.minimum(t / 0.25, 1.0)) ** 0.5
                                             + 0.45 * (1 - (1 - np.minimum(t / 0.55, 1.0)) ** 2))
    lat *= 1 - 0.05 * np.clip((t - 0.65) / 0.35, 0, 1)
    v_lat = a.apex_y + t * (cp_y - a.apex_y)
    # diaphragm: costophrenic angle -> dome -> cardiophrenic angle
    cp_off = lat[-1]
    dome_off = med + 0.45 * (cp_off - med)
    uo = np.linspace(cp_off, med, 40)
    lateral_part = uo >= dome_off
    v_d = np.where(lateral_part,
                   dome + (cp_y - dome) * ((uo - dome_off) / (cp_off - dome_off)) ** 2,
                   dome + 0.03 * ((dome_off - uo) / (dome_off - med)) ** 2)
    # medial border: cardiophrenic angle up to below the apex, then round over to the apex
    v_m = np.linspace(dome + 0.03, a.apex_y + 0.09, 12)
    u_m = np.full_like(v_m, med)
    th = np.linspace(0, np.pi / 2, 14)
    u_ap = med + (apex_off - med) * np.sin(th)
    v_ap = a.apex_y + 0.09 - 0.09 * np.sin(th) ** 0.6
    uo_all = np.concatenate([lat, uo, u_m, u_ap])
    v_all = np.concatenate([v_lat, v_d, v_m, v_ap])
    pts = np.stack([(a.cx + s * uo_all) * w, v_all * h], axis=1).astype(np.float32)
    if scale_to is not None and factor != 1.0:
        c = np.asarray(scale_to, np.float32)
        pts = c + factor * (pts - c)
    return pts


def heart_mask(a: Anatomy, h: int, w: int, ctr: float | None = None, blur: float = 1.5) -> np.ndarray:
    """The cardiac silhouette (a tilted ellipse sitting on the left hemidiaphragm, bulging to the image right)."""
    hw = a.heart_width(ctr) * w
    left_edge = a.cx * w - 0.36 * hw
    cxp = left_edge + hw / 2.0
    bottom = (a.dome_y_left + 0.025) * h
    hh = a.heart_height * h * (1.0 + 0.5 * (a.heart_width(ctr) / a.heart_width() - 1.0))
    cyp = bottom - hh / 2.0
    m = np.zeros((h, w), np.float32)
    ax = (int(round(hw / 2 * _ONE)), int(round(hh / 2 * _ONE)))
    cv2.ellipse(m, (int(round(cxp * _ONE)), int(round(cyp * _ONE))), ax, a.heart_tilt, 0, 360, 1.0,
                -1, cv2.LINE_AA, _SHIFT)
    # great vessels / upper mediastinum above the heart
    top = np.array([[a.cx * w - a.med_hw * w * 1.05, a.apex_y * h], [a.cx * w + a.med_hw * w * 1.1, a.apex_y * h],
                    [cxp + 0.15 * hw, cyp], [cxp - 0.3 * hw, cyp]], np.float32)
    cv2.fillPoly(m, [np.round(top * _ONE).astype(np.int32)], 1.0, cv2.LINE_AA, _SHIFT)
    # aortic knob
    cv2.circle(m, (int(round((a.cx + a.med_hw + 0.012) * w * _ONE)), int(round((a.apex_y + 0.11) * h * _ONE))),
               int(round(0.032 * w * _ONE)), 1.0, -1, cv2.LINE_AA, _SHIFT)
    return cv2.GaussianBlur(m, (0, 0), blur) if blur > 0 else m


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], cell: int) -> np.ndarray:
    h, w = shape
    g = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def _vessel_tree(rng: np.random.Generator, shape, hilum, side: str, n: int, step: float) -> np.ndarray:
    """Random branching vessels radiating from the hilum (segments batched per generation for speed)."""
    layer = np.zeros(shape, np.float32)
    s = SIDE_SIGN[side]
    base_angle = 0.0 if s > 0 else np.pi
    by_level: Dict[Tuple[int, int], list] = {}
    for _ in range(n):
        ang = base_angle + s * rng.uniform(-1.35, 1.35)
        p = np.array(hilum, np.float32) + rng.normal(0, step * 0.3, 2).astype(np.float32)
        segs = int(rng.integers(4, 8))
        width = rng.uniform(2.2, 3.4) * step / 14.0
        for k in range(segs):
            ang += rng.normal(0, 0.25)
            q = p + step * rng.uniform(0.7, 1.3) * np.array([np.cos(ang), np.sin(ang) * 1.1], np.float32)
            th = max(1, int(round(width * (1 - k / (segs + 1)))))
            by_level.setdefault((k, th), []).append(np.stack([p, q]))
            if rng.random() < 0.35 and k < segs - 1:  # side branch
                b_ang = ang + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9)
                r = q + step * 0.8 * np.array([np.cos(b_ang), np.sin(b_ang)], np.float32)
                by_level.setdefault((k + 2, max(1, int(round(width * 0.6)))), []).append(np.stack([q, r]))
            p = q
    for (k, th), segs_ in sorted(by_level.items()):
        pts = [np.round(sg * _ONE).astype(np.int32) for sg in segs_]
        cv2.polylines(layer, pts, False, max(0.2, 1.0 - 0.11 * k), thickness=th, lineType=cv2.LINE_AA,
                      shift=_SHIFT)
    return layer


def render_anatomy(a: Anatomy, height: int, width: int) -> Geometry:
    """Draw the anatomy for an output image of ``height`` x ``width`` on the working canvas."""
    h, w = work_shape(height, width)
    rng = np.random.default_rng(a.seed)
    yy = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    xx = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
    u = xx / w
    v = yy / h
    sc = h / 512.0  # blur radii scale with the canvas

    # body outline: neck -> shoulders -> chest wall -> flank
    body_hw = np.where(v < a.apex_y - 0.02,
                       0.10 + (a.thorax_hw + 0.07 - 0.10) * np.clip((v / (a.apex_y - 0.02)) ** 1.5, 0, 1),
                       a.thorax_hw + 0.07 + 0.03 * np.clip((v - 0.7) / 0.3, 0, 1))
    dist = np.abs(u - a.cx) / body_hw
    body = np.clip((1.0 - dist) * 25.0, 0, 1).astype(np.float32)
    thickness = np.sqrt(np.clip(1.0 - dist ** 2, 0, 1)).astype(np.float32)
    dens = body * (0.18 + a.body_density * (0.25 + 0.42 * thickness))
    if a.arms:  # upper arms beside the chest wall, separated by a darker axillary gap
        edge = a.thorax_hw + 0.07
        ad = np.abs(u - a.cx) - edge
        arm = np.clip((ad - 0.012) * 60, 0, 1) * np.clip((0.13 - ad) * 40, 0, 1)
        arm = arm * np.clip((0.62 - v) * 8, 0, 1) * np.clip((v - (a.apex_y - 0.12)) * 20, 0, 1)
        dens = dens + (arm * (0.25 + 0.25 * np.sqrt(np.clip(1 - ((ad - 0.07) / 0.06) ** 2, 0, 1)))).astype(np.float32)

    # lungs
    lungs, polys, boxes, hila, vessels = {}, {}, {}, {}, {}
    air = np.zeros((h, w), np.float32)
    for side in ("right", "left"):
        pts = lung_polygon(a, side, h, w)
        m = _poly_mask((h, w), pts, 1.6 * sc)
        lungs[side] = m
        polys[side] = pts
        boxes[side] = (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()),
                       float(pts[:, 1].max()))
        s = SIDE_SIGN[side]
        dome = a.dome_y_right if side == "right" else a.dome_y_left
        hil = ((a.cx + s * (a.med_hw + 0.045)) * w, (a.apex_y + 0.45 * (dome - a.apex_y)) * h)
        hila[side] = hil
        vt = _vessel_tree(rng, (h, w), hil, side, n=int(rng.integers(22, 32)), step=0.045 * h)
        vt = cv2.GaussianBlur(vt, (0, 0), 1.0 * sc) * m
        # vessels fade towards the periphery
        d = np.sqrt((xx - hil[0]) ** 2 + (yy - hil[1]) ** 2) / (0.35 * h)
        vessels[side] = vt * np.clip(1.2 - d, 0.25, 1.0) * 0.085
        air += m
    q = cv2.resize(air, (max(4, w // 4), max(4, h // 4)), interpolation=cv2.INTER_AREA)
    big = cv2.resize(cv2.GaussianBlur(q, (0, 0), 4.5 * sc), (w, h), interpolation=cv2.INTER_LINEAR)
    air = a.lung_density * (0.55 * air + 0.45 * np.clip(big / max(float(big.max()), 1e-6), 0, 1) * air)
    air *= (1.0 - 0.25 * np.clip((v - 0.45) / 0.3, 0, 1))  # soft tissue overlap at the bases
    if a.sex == "F":  # breast shadows over the lower zones
        for side in ("right", "left"):
            s = SIDE_SIGN[side]
            cxb, cyb = (a.cx + s * a.thorax_hw * 0.62) * w, (a.dome_y_right - 0.02) * h
            g = np.exp(-(((xx - cxb) / (0.17 * w)) ** 2 + ((yy - cyb) / (0.09 * h)) ** 2) ** 2)
            dens = dens + 0.08 * g * np.clip((yy - cyb + 0.08 * h) / (0.06 * h), 0, 1)
    texture = _smooth_noise(rng, (h, w), max(2, int(6 * sc))) * 0.012
    dens = dens - air + (vessels["right"] + vessels["left"]) + texture * (lungs["right"] + lungs["left"])
    for side in ("right", "left"):  # hilar shadows
        hx, hy = hila[side]
        dens = dens + 0.07 * np.exp(-(((xx - hx) / (0.035 * w)) ** 2 + ((yy - hy) / (0.06 * h)) ** 2))

    # bones: spine with vertebral bodies, posterior + anterior ribs, clavicles, humeral heads
    spine = np.clip((a.spine_hw - np.abs(u - a.cx)) / a.spine_hw * 6, 0, 1)
    phase = rng.uniform(0, 1)
    vert = 0.8 + 0.2 * np.clip(np.cos(2 * np.pi * (v / a.vert_h + phase)) * 2, -1, 1)
    spine = cv2.GaussianBlur((spine * vert).astype(np.float32), (0, 0), 1.2 * sc)
    bones = (spine * 0.06).astype(np.float32)
    ribs = np.zeros((h, w), np.float32)
    ribs_in = np.zeros((h, w), np.float32)
    ant = np.zeros((h, w), np.float32)
    gaps = np.linspace(1.0, 1.35, a.rib_count) * rng.uniform(0.93, 1.07, a.rib_count)
    gaps = (a.dome_y_right + 0.12 - a.apex_y) * np.concatenate([[0.0], np.cumsum(gaps[:-1])]) / gaps[:-1].sum()
    tt = np.linspace(0, 1, 30)
    for k in range(a.rib_count):
        y0 = a.apex_y - 0.02 + gaps[k]
        for side in ("right", "left"):
            s = SIDE_SIGN[side]
            hump = 0.03 * rng.uniform(0.8, 1.2)
            slope = a.rib_slope * (1 + 0.05 * k) * rng.uniform(0.92, 1.08)
            uu = a.cx + s * (a.spine_hw * 0.8 + tt * (a.thorax_hw * 1.0 - a.spine_hw * 0.8))
            vv = y0 + rng.normal(0, 0.003) - hump * np.sin(np.pi * tt * 0.85) + slope * tt ** 2
            pts = np.stack([uu * w, vv * h], 1).astype(np.float32)
            thick = a.rib_thick * h * rng.uniform(0.9, 1.1)
            _polyline(ribs, pts[:12], thick * 0.85)  # posterior ribs widen laterally
            _polyline(ribs, pts[11:], thick * 1.1)
            _polyline(ribs_in, pts, thick * 0.45)
            # anterior rib: from the lateral end, sloping down towards the midline (costal cartilage not seen)
            ua = a.cx + s * (a.thorax_hw * (1.0 - tt * 0.68))
            va = vv[-1] + 0.015 + 0.11 * tt + 0.04 * np.sin(np.pi * tt)
            _polyline(ant, np.stack([ua * w, va * h], 1).astype(np.float32), thick * 0.8)
    ribs = cv2.GaussianBlur(ribs - 0.45 * ribs_in, (0, 0), 0.8 * sc)
    ant = cv2.GaussianBlur(ant, (0, 0), 1.2 * sc)
    lung_any = np.clip(lungs["right"] + lungs["left"], 0, 1)
    rib_sum = (0.12 * ribs + 0.05 * ant) * body
    rib_lung = (0.85 * lung_any * rib_sum).astype(np.float32)
    bones += 0.15 * rib_sum + rib_lung
    clav = np.zeros((h, w), np.float32)
    for side in ("right", "left"):
        s = SIDE_SIGN[side]
        cu = a.cx + s * np.array([0.03, a.thorax_hw * 0.35, a.thorax_hw * 0.7, a.thorax_hw * 1.05])
        cv_ = a.apex_y + np.array([0.045, 0.03, 0.005, -0.035])
        _polyline(clav, np.stack([cu * w, cv_ * h], 1).astype(np.float32), 0.026 * h)
        _polyline(clav, np.stack([cu * w, cv_ * h], 1).astype(np.float32), 0.012 * h, 0.55)
        if a.humeral_heads:
            c = (int(round((a.cx + s * (a.thorax_hw + 0.075)) * w * _ONE)), int(round((a.apex_y - 0.01) * h * _ONE)))
            cv2.circle(clav, c, int(round(0.06 * h * _ONE)), 0.6, -1, cv2.LINE_AA, _SHIFT)
    bones += cv2.GaussianBlur(clav, (0, 0), 1.0 * sc) * 0.16
    dens = dens + bones

    if a.gastric_bubble:  # air in the stomach under the left hemidiaphragm
        gx, gy = (a.cx + a.thorax_hw * 0.45) * w, (a.dome_y_left + 0.07) * h
        g = np.exp(-(((xx - gx) / (0.06 * w)) ** 2 + ((yy - gy) / (0.03 * h)) ** 2) ** 2)
        dens = dens - 0.2 * g * (yy > gy - 0.02 * h)

    # trachea and main bronchi: an air column in the midline down to the carina
    tr = np.zeros((h, w), np.float32)
    carina = (a.cx * w + 0.004 * w, (a.apex_y + 0.2) * h)
    _polyline(tr, np.array([[a.cx * w, 0], [a.cx * w + 0.004 * w, carina[1]]], np.float32), 0.02 * w)
    for side in ("right", "left"):
        hx, hy = hila[side]
        _polyline(tr, np.array([carina, ((carina[0] + hx) / 2, (carina[1] + hy) / 2)], np.float32), 0.013 * w, 0.8)
    dens = dens - 0.12 * cv2.GaussianBlur(tr, (0, 0), 1.5 * sc)

    heart = heart_mask(a, h, w, blur=1.5 * sc)
    return Geometry(shape=(h, w), anatomy=a, body=body, lungs=lungs, lung_polys=polys, lung_boxes=boxes, hila=hila,
                    vessels=vessels, air=air.astype(np.float32), heart=heart, base=dens.astype(np.float32),
                    grids=(xx, yy), rib_lung=rib_lung)


def postprocess(density: np.ndarray, height: int, width: int, a: Anatomy, noise: np.ndarray | None) -> np.ndarray:
    """Density (work canvas) -> float32 image ``height`` x ``width`` in [0, 1], higher = brighter.

    Mild blur (detector MTF), resize, the patient's contrast curve (gamma), then additive quantum noise scaled with
    the square root of the signal. ``noise`` is a standard-normal field of the output shape (shared between the
    rendering with and without findings so they differ only where a finding was drawn).
    """
    sc = density.shape[0] / 512.0
    d = cv2.GaussianBlur(density, (0, 0), 0.6 * sc)
    img = np.clip((d + 0.02) / 1.15, 0.0, 1.0) ** a.gamma  # contrast curve on the small canvas (cheap)
    if noise is None:
        if img.shape != (height, width):
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)
        return np.clip(img, 0.0, 1.0).astype(np.float32)
    sigma = a.noise * np.sqrt(img + 0.02)
    both = np.dstack([img, sigma]).astype(np.float32)
    if both.shape[:2] != (height, width):
        both = cv2.resize(both, (width, height), interpolation=cv2.INTER_CUBIC)
    out = both[:, :, 1] * noise
    out += both[:, :, 0]
    np.clip(out, 0.0, 1.0, out=out)
    return out
