"""Does a chest film look inverted (photometric tag probably wrong)?

After reading, ``Radiograph.pixels`` means *higher = brighter* (MONOCHROME1 inverted once by the reader). On a
frontal chest film read correctly, the mediastinum and spine (soft tissue + bone) are brighter than the air-filled
lung fields beside them. A file whose Photometric Interpretation is wrong (MONOCHROME2 written for a MONOCHROME1
detector, a missing tag, an export that inverted the pixels but kept the tag) is read the other way round: both lung
fields come out brighter than the mediastinum. The model then sees a film unlike anything it was trained on and its
maps are unreliable (measured on phantom studies: pointing 0.76 -> 0.12), so every surface says so.

The rule: on a regular sub-sample of at most 262 144 pixels, with ``range`` = the 1st..99th percentile spread,

    contrast = (median of the central column band (x 44-56 %, y 25-65 %)
                - median of the BRIGHTER lung band (x 15-35 % or 65-85 %, y 20-60 %)) / range

and a warning when ``contrast < -0.10`` (both lung fields brighter than the mediastinum by a tenth of the range).
Measured (benchmark in docs/grounding.md): RG1_UNCI (a real CR, MONOCHROME1) +0.35, inverted -0.42; 307 phantom
films (MONOCHROME1 and MONOCHROME2) >= +0.16 read correctly and <= -0.20 inverted. Using the brighter lung keeps a
one-sided white-out (large effusion) from raising a false alarm. Non-chest and lateral films, and images too small or
flat to judge, get no claim (``None``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

#: contrast (mediastinum - brighter lung, in units of the 1-99 % range) below which a film looks inverted
THRESHOLD = -0.10
_MAX_SAMPLES = 262_144
_LATERAL = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE LATERAL"}


def inversion_contrast(pixels: np.ndarray) -> Optional[float]:
    """(median mediastinum band - median of the brighter lung band) / (p99 - p1); None when the image is too small
    or flat to judge."""
    p = np.asarray(pixels)
    if p.ndim != 2 or min(p.shape) < 32:
        return None
    step = max(1, int(np.ceil(np.sqrt(p.size / _MAX_SAMPLES))))
    s = p[::step, ::step].astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        if not np.isfinite(s).any():
            return None
        s = np.where(np.isfinite(s), s, np.nanmedian(s))
    h, w = s.shape
    lo, hi = np.percentile(s, [1.0, 99.0])
    if not hi - lo > 0:
        return None
    med = np.median(s[int(0.25 * h):int(0.65 * h), int(0.44 * w):int(0.56 * w)])
    left = np.median(s[int(0.20 * h):int(0.60 * h), int(0.15 * w):int(0.35 * w)])
    right = np.median(s[int(0.20 * h):int(0.60 * h), int(0.65 * w):int(0.85 * w)])
    return float((med - max(left, right)) / (hi - lo))


def inversion_warning(radiograph) -> Optional[str]:
    """One line when ``radiograph`` (a frontal chest film, pixels higher = brighter) looks inverted, else None."""
    meta = getattr(radiograph, "meta", None) or {}
    body = str(meta.get("BodyPartExamined") or "").strip().upper()
    if body and body not in ("CHEST", "THORAX", "LUNG"):
        return None
    if str(meta.get("ViewPosition") or "").strip().upper() in _LATERAL:
        return None
    c = inversion_contrast(getattr(radiograph, "pixels", None) if radiograph is not None else None)
    if c is None or c >= THRESHOLD:
        return None
    tag = str(meta.get("PhotometricInterpretation") or "").strip()
    why = f"photometric tag {tag} probably wrong" if tag else "no photometric tag"
    return (f"film looks inverted: the lung fields are brighter than the mediastinum ({why}); maps on it are "
            "unreliable")
