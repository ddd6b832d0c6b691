"""Does the map follow the words? Side- and zone-swapped phrases on the same image.

For a one-sided finding phrase ("small left pleural effusion" on a film with a left effusion) we ground, on the
same image, the phrase with its side word swapped ("small right pleural effusion") and, separately, with its zone
word swapped ("left upper lobe opacity" -> "left lower lobe opacity"). Nothing the swapped phrase names is on the
film at the named place, so a model that follows the words must either

- move the map's peak to the named place (the other side of the midline; the named zone's third of the lung), or
- say that nothing is there: the presence score (:mod:`elvis_core.grounding.presence`) below its threshold.

A peak that stays on the finding while the presence says "present" is a failure: the map follows the lesion, not
the words. :func:`word_following` returns per-phrase records and the share that followed, per kind of swap.

The swaps are pure functions of the text (:func:`swap_side`, :func:`swap_zone`), shared with the training objective
that uses them as hard negatives (:mod:`elvis_core.training.objectives.words`).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from elvis_core.grounding.sides import mirrored_phrase, phrase_side

#: zone word -> (vertical band of the lung: "upper" / "middle" / "lower", its swap)
_ZONE_SWAPS: Tuple[Tuple[str, str, str], ...] = (
    ("upper", "upper", "lower"), ("lower", "lower", "upper"),
    ("apical", "upper", "basilar"), ("apex", "upper", "base"), ("apices", "upper", "bases"),
    ("basilar", "lower", "apical"), ("basal", "lower", "apical"), ("base", "lower", "apex"),
    ("bases", "lower", "apices"), ("mid", "middle", "upper"), ("middle", "middle", "upper"),
    ("lingula", "middle", "left upper lobe"), ("lingular", "middle", "left apical"),
    ("perihilar", "middle", "apical"), ("hilar", "middle", "apical"),
    ("retrocardiac", "lower", "left apical"),
)
_ZONE_RE = re.compile(r"\b(" + "|".join(w for w, _b, _s in _ZONE_SWAPS) + r")\b", re.IGNORECASE)
_BAND = {w: b for w, b, _s in _ZONE_SWAPS}
_SWAP = {w: s for w, _b, s in _ZONE_SWAPS}
#: the band a swapped zone word names
BANDS = ("upper", "middle", "lower")


def swap_side(phrase: str) -> Optional[str]:
    """The phrase with "left" and "right" swapped, or None when it names no single side (or is retrocardiac /
    lingular, which only exist on the left)."""
    if phrase_side(phrase) is None or re.search(r"retrocardiac|lingul|behind the heart", phrase, re.IGNORECASE):
        return None
    out = mirrored_phrase(phrase)
    return out if out != phrase else None


def phrase_band(phrase: str) -> Optional[str]:
    """The lung band ("upper" / "middle" / "lower") the phrase's first zone word names, or None."""
    m = _ZONE_RE.search(phrase)
    return _BAND[m.group(1).lower()] if m else None


def swap_zone(phrase: str) -> Optional[Tuple[str, str]]:
    """(phrase with its first zone word replaced by a distant zone, the band that zone is in), or None when the
    phrase names no zone. "right upper lobe opacity" -> ("right lower lobe opacity", "lower")."""
    m = _ZONE_RE.search(phrase)
    if not m:
        return None
    word = m.group(1)
    new = _SWAP[word.lower()]
    if word[0].isupper():
        new = new[0].upper() + new[1:]
    out = phrase[:m.start()] + new + phrase[m.end():]
    if "left upper" in new or "left apical" in new:  # the side is part of the new words: drop a repeated one
        out = re.sub(r"\b(left|right)\s+(?=left (upper|apical))", "", out, flags=re.IGNORECASE)
    band = phrase_band(new) or "upper"
    return out, band


def _in_boxes(x: float, y: float, boxes: Sequence[Sequence[float]]) -> bool:
    return any(bx <= x < bx + bw and by <= y < by + bh for bx, by, bw, bh in boxes)


def band_of(y: float, lung_top: float, lung_bottom: float) -> str:
    """Which third of the lung height ``y`` (image pixels) is in (above the lung: upper; below: lower)."""
    t = (y - lung_top) / max(lung_bottom - lung_top, 1e-6)
    return "upper" if t < 1 / 3 else ("middle" if t < 2 / 3 else "lower")


def followed(peak_xy: Tuple[float, float], presence: Optional[float], threshold: Optional[float], kind: str,
             named: str, true_boxes: Sequence[Sequence[float]], midline_x: float,
             lung_span: Tuple[float, float]) -> bool:
    """One swapped phrase's verdict: the presence is below its threshold, or the peak left the finding's boxes and
    lies at the named place (``kind`` "side": ``named`` is "left"/"right", patient's left = image right; "zone":
    ``named`` is a band)."""
    if presence is not None and threshold is not None and presence < threshold:
        return True
    x, y = peak_xy
    if _in_boxes(x, y, true_boxes):
        return False
    if kind == "side":
        return (x > midline_x) if named == "left" else (x < midline_x)
    return band_of(y, *lung_span) == named


def word_following(ground: Callable[[str], Any], phrase: str, true_boxes: Sequence[Sequence[float]],
                   midline_x: float, lung_span: Tuple[float, float],
                   presence_of: Optional[Callable[[Any], Tuple[Optional[float], Optional[float]]]] = None
                   ) -> List[Dict[str, Any]]:
    """Swap the side word and, separately, the zone word of ``phrase`` and ground each on the SAME image.

    ``ground(text)`` returns a :class:`~elvis_core.grounding.types.GroundingMap` (e.g. ``engine.ground``, with the
    image already set); ``presence_of(map)`` returns (presence, threshold) (None, None when uncalibrated: then only
    the peak decides). ``midline_x`` (image px) and ``lung_span`` (top, bottom of the lungs, image px) place the
    sides and bands. Returns one record per swap: ``kind``, ``phrase``, ``swapped``, ``named``, ``peak_xy``,
    ``peak`` (the swapped phrase's raw peak), ``presence``, ``followed``.
    """
    out: List[Dict[str, Any]] = []
    swaps: List[Tuple[str, str, str]] = []
    s = swap_side(phrase)
    if s is not None:
        swaps.append(("side", s, "left" if phrase_side(phrase) == "right" else "right"))
    z = swap_zone(phrase)
    if z is not None and phrase_side(phrase) is not None:
        swaps.append(("zone", z[0], z[1]))
    for kind, text, named in swaps:
        gm = ground(text)
        peak_xy = map_peak_xy(gm)
        peak = getattr(gm, "peak", None)
        if peak is None:
            raw = np.asarray(gm.raw_similarity if getattr(gm, "raw_similarity", None) is not None
                             else gm.similarity, np.float64)
            peak = float(np.nanmax(raw))
        presence, threshold = presence_of(gm) if presence_of is not None else (None, None)
        out.append({"kind": kind, "phrase": phrase, "swapped": text, "named": named, "peak_xy": peak_xy,
                    "peak": peak, "presence": presence,
                    "followed": followed(peak_xy, presence, threshold, kind, named, true_boxes, midline_x,
                                         lung_span)})
    return out


def map_peak_xy(gm) -> Tuple[float, float]:
    """(x, y) image pixels of the centre of the map's highest raw cell among the cells the model saw."""
    raw = np.asarray(gm.raw_similarity if getattr(gm, "raw_similarity", None) is not None else gm.similarity,
                     np.float64)
    g2i = np.asarray(gm.grid_to_image, np.float64)
    gh, gw = raw.shape
    jj, ii = np.meshgrid(np.arange(gw) + 0.5, np.arange(gh) + 0.5)
    xs = g2i[0, 0] * jj + g2i[0, 1] * ii + g2i[0, 2]
    ys = g2i[1, 0] * jj + g2i[1, 1] * ii + g2i[1, 2]
    rows, cols = gm.image_shape[:2]
    seen = (xs >= 0) & (xs < cols) & (ys >= 0) & (ys < rows)
    if not seen.any():
        seen[:] = True
    r = np.where(seen, raw, -np.inf)
    i, j = np.unravel_index(int(np.argmax(r)), r.shape)
    return float(xs[i, j]), float(ys[i, j])


def summarize(records: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    """Share followed per kind ("side", "zone") and overall; NaN where there is nothing of that kind."""
    res: Dict[str, float] = {}
    for kind in ("side", "zone"):
        v = [bool(r["followed"]) for r in records if r["kind"] == kind]
        res[kind] = float(np.mean(v)) if v else float("nan")
        res[f"n_{kind}"] = float(len(v))
    v = [bool(r["followed"]) for r in records]
    res["all"] = float(np.mean(v)) if v else float("nan")
    return res
