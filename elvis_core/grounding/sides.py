"""Two checks a radiologist makes on a grounding model, beyond the box metrics:

- **laterality**: for a one-sided phrase (it names exactly one of "left" / "right", patient's side, and not
  "bilateral"), is the map's peak on that side of the image? In a PA or AP film the patient's left is on the image's
  right; the midline is taken as the image's vertical centre line (phantom midlines lie within ~1.2 % of it).
- **negation**: the map of "no <phrase>" must not be the map of "<phrase>": Pearson r between the two similarity
  grids (the model's patch grid, before any resampling), per one-sided finding phrase; we report the median.

Both run on an MS-CXR-style annotation set like :func:`elvis_core.grounding.evaluate.evaluate` (each image read once,
missing images counted and skipped).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from elvis_core.errors import ElvisError
from elvis_core.io.annotations import AnnotationSet

_WORD = re.compile(r"[a-z]+")


def phrase_side(text: str) -> Optional[str]:
    """"left" / "right" when the phrase names exactly one side (and not "bilateral"), else None."""
    words = set(_WORD.findall(text.lower()))
    if "bilateral" in words or "bilaterally" in words or "both" in words:
        return None
    has_l, has_r = "left" in words or "lingula" in words or "lingular" in words, "right" in words
    if has_l == has_r:
        return None
    return "left" if has_l else "right"


_SIDE_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mirrored_phrase(phrase: str) -> str:
    """The phrase as it reads on the mirrored film: "left" and "right" swapped (case kept), e.g. "Right apical
    opacity" -> "Left apical opacity". Used by mirror-consensus grounding (``model.image.mirror_average``)."""
    def swap(m: "re.Match") -> str:
        w = m.group(0)
        out = "right" if w.lower() == "left" else "left"
        if w.isupper():
            return out.upper()
        return out.capitalize() if w[0].isupper() else out

    return _SIDE_WORD.sub(swap, phrase)


def negated(phrase: str) -> str:
    """"no " + the phrase with a lower-case first letter ("Small left effusion" -> "no small left effusion")."""
    p = phrase.strip()
    return "no " + (p[:1].lower() + p[1:])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def side_checks(engine, annotation_set: AnnotationSet, images_root: os.PathLike | str,
                split: Optional[str] = None) -> Dict[str, Any]:
    """Laterality and negation figures over the one-sided phrases of ``annotation_set`` (see module docstring).

    Returns ``{"n_one_sided", "laterality" (share with the peak on the named side), "laterality_per_category",
    "negation_median_r", "negation_r" (list), "rows" (per phrase: path, label_text, category, side, peak_side, r),
    "n_missing"}``.
    """
    from elvis_core.grounding.evaluate import read_any_image, resolve_image

    root = Path(images_root)
    if not root.is_dir():
        raise ElvisError("images folder not found", root)
    aset = annotation_set.filter_split(split)
    by_path: Dict[str, list] = {}
    for ph in aset.phrases:
        side = phrase_side(ph.label_text)
        if side is not None:
            by_path.setdefault(ph.path, []).append((ph, side))
    rows: List[Dict[str, Any]] = []
    n_missing = 0
    for rel, items in by_path.items():
        try:
            p = resolve_image(root, rel)  # raises for a path outside the images folder: counted as missing
            if p is None:
                raise ElvisError("image not found", rel)
            rad = read_any_image(p)
            engine.set_image(rad)
        except ElvisError:
            n_missing += len(items)
            continue
        texts = [ph.label_text for ph, _ in items] + [negated(ph.label_text) for ph, _ in items]
        maps = engine.ground_many(texts)
        k = len(items)
        for i, (ph, side) in enumerate(items):
            m = maps[i].to_image()
            r_, c_ = np.unravel_index(int(np.nanargmax(m)), m.shape)
            peak_side = "left" if c_ + 0.5 > m.shape[1] / 2.0 else "right"  # patient's left = image right
            rows.append({"path": ph.path, "label_text": ph.label_text, "category": ph.category, "side": side, "peak_side": peak_side,
                         "r": pearson(maps[i].similarity, maps[k + i].similarity)})
            if math.isnan(rows[-1]["r"]):
                rows[-1]["r"] = None  # constant map: no correlation defined (JSON has no NaN)
    per: Dict[str, List[bool]] = {}
    for r in rows:
        per.setdefault(r["category"], []).append(r["side"] == r["peak_side"])
    rs = [r["r"] for r in rows if r["r"] is not None]
    return {"n_one_sided": len(rows),
            "laterality": float(np.mean([r["side"] == r["peak_side"] for r in rows])) if rows else float("nan"),
            "laterality_per_category": {c: float(np.mean(v)) for c, v in sorted(per.items())},
            "negation_median_r": float(np.median(rs)) if rs else float("nan"),
            "negation_r": rs, "rows": rows, "n_missing": n_missing}


def side_checks_lines(res: Dict[str, Any]) -> List[str]:
    n = res["n_one_sided"]
    ok = int(round(res["laterality"] * n)) if n else 0
    per = ", ".join(f"{c} {v:.2f}" for c, v in res["laterality_per_category"].items())
    return [f"laterality: peak on the named side for {ok}/{n} one-sided phrases "
            f"({100 * res['laterality']:.1f} %); per category: {per}",
            f"negation: median Pearson r(map('no P'), map(P)) = {res['negation_median_r']:.3f} over "
            f"{len(res['negation_r'])} one-sided phrases"]
