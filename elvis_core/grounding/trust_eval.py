"""How far to believe the grounding figures: image evidence vs the text prior, twins, presence, word following.

:class:`TrustCollector` plugs into :func:`elvis_core.grounding.evaluate.evaluate` (``on_image``) and adds to every
phrase row, while the phrase's image is the engine's current one:

- ``peak`` (raw maximum cosine over the cells the model saw) and ``presence`` (the checkpoint's calibrated
  probability, :mod:`elvis_core.grounding.presence`; None when uncalibrated);
- ``zone`` (the zone the phrase's words name, :func:`~elvis_core.grounding.text_prior.phrase_zone`);
- ``prior_cnr`` / ``prior_miou`` / ``prior_pointing``: the text prior's map scored the same way;
- ``word_following``: side- and zone-swapped phrases on the same image
  (:func:`~elvis_core.grounding.word_following.word_following`);
- with a twins folder: ``twin_peak``, ``twin_presence``, ``twin_pointing`` (the phrase grounded on the image's
  finding-free twin: its peak in the phrase's boxes *and*, when calibrated, presence at or above the threshold: a
  map that claims the absent finding is there).

:func:`trust_summary` turns the rows into the figures ``elvis eval`` prints: the prior row, each metric's margin over
the prior with a paired (by image) bootstrap 95 % CI, pointing on twins, presence AUC (present vs twin), ECE,
word following and per-zone pointing.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from elvis_core.grounding.metrics import cnr, miou, pointing_game
from elvis_core.grounding.text_prior import ZONES, TextPrior, phrase_zone
from elvis_core.grounding.word_following import summarize, word_following


def map_peak_of(gm) -> Optional[float]:
    """The map's ``peak`` when the engine set one, else the raw maximum over cells whose centre is on the image."""
    peak = getattr(gm, "peak", None)
    if peak is not None:
        return float(peak)
    raw = np.asarray(gm.raw_similarity if gm.raw_similarity is not None else gm.similarity, np.float64)
    g2i = np.asarray(gm.grid_to_image, np.float64)
    gh, gw = raw.shape
    xs = g2i[0, 0] * (np.arange(gw) + 0.5) + g2i[0, 2]
    ys = g2i[1, 1] * (np.arange(gh) + 0.5) + g2i[1, 2]
    rows, cols = gm.image_shape[:2]
    seen = ((ys >= 0) & (ys < rows))[:, None] & ((xs >= 0) & (xs < cols))[None, :]
    vals = raw[seen] if seen.any() else raw.ravel()
    vals = vals[np.isfinite(vals)]
    return float(vals.max()) if vals.size else None


def read_anatomy(path: str) -> Dict[str, Tuple[float, Tuple[float, float]]]:
    """path -> (midline x, (lung top y, lung bottom y)) from a phantom ``anatomy.csv`` (right/left lung boxes)."""
    out: Dict[str, Dict[str, Tuple[float, float, float, float]]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r.get("bbox_name") in ("right lung", "left lung"):
                try:
                    out.setdefault(r["path"], {})[r["bbox_name"]] = tuple(float(r[k]) for k in "xywh")
                except (KeyError, ValueError):
                    continue
    res = {}
    for p, d in out.items():
        if len(d) == 2:
            rl, ll = d["right lung"], d["left lung"]
            mid = (rl[0] + rl[2] + ll[0]) / 2.0  # between the lungs' medial edges (patient right = image left)
            res[p] = (mid, (min(rl[1], ll[1]), max(rl[1] + rl[3], ll[1] + ll[3])))
    return res


class TrustCollector:
    """``on_image`` hook for :func:`~elvis_core.grounding.evaluate.evaluate`; see the module docstring."""

    def __init__(self, engine, calibration: Optional[Dict[str, Any]] = None, prior: Optional[TextPrior] = None,
                 twins_root: Optional[str] = None, word_following: bool = True,
                 anatomy: Optional[Dict[str, Tuple[float, Tuple[float, float]]]] = None):
        self.engine = engine
        self.cal = calibration
        self.prior = prior
        self.twins_root = twins_root
        self.do_words = word_following
        self.anatomy = anatomy or {}
        self.twins_missing: List[Tuple[str, str]] = []

    def presence(self, peak: Optional[float]) -> Optional[float]:
        if self.cal is None:
            return None
        from elvis_core.grounding.presence import presence_probability

        return presence_probability(peak, self.cal)

    def _presence_of(self, gm) -> Tuple[Optional[float], Optional[float]]:
        p = self.presence(map_peak_of(gm))
        return p, (None if p is None else float(self.cal["threshold"]))

    def __call__(self, rel: str, rad, scored) -> None:
        rows_n, cols_n = rad.shape[:2]
        mid, span = self.anatomy.get(rel, (cols_n / 2.0, (0.1 * rows_n, 0.75 * rows_n)))
        for ph, boxes, gm, row in scored:
            peak = map_peak_of(gm)
            row["peak"] = peak
            row["presence"] = self.presence(peak)
            row["zone"] = phrase_zone(ph.label_text) or "unnamed"
            if self.prior is not None:
                pm = self.prior.map_for(ph.label_text, ph.category, rad.shape)
                row["prior_cnr"] = cnr(pm, boxes)
                row["prior_miou"] = miou(pm, boxes)
                row["prior_pointing"] = pointing_game(pm, boxes)
            if self.do_words:
                xywh = [(b.x, b.y, b.w, b.h) for b in boxes]
                recs = word_following(self.engine.ground, ph.label_text, xywh, mid, span, self._presence_of)
                row["word_following"] = [{k: r[k] for k in ("kind", "swapped", "named", "peak", "presence",
                                                            "followed")} for r in recs]
        if self.twins_root is None:
            return
        from elvis_core.errors import ElvisError
        from elvis_core.grounding.evaluate import read_any_image

        twin = os.path.join(self.twins_root, rel)
        try:
            if not os.path.isfile(twin):
                raise ElvisError("no twin image", twin)
            trad = read_any_image(twin)
            if tuple(trad.shape[:2]) != tuple(rad.shape[:2]):
                raise ElvisError(f"twin is {trad.shape[1]}x{trad.shape[0]}, the image {rad.shape[1]}x{rad.shape[0]}",
                                 twin)
            self.engine.set_image(trad)
            maps = self.engine.ground_many([ph.label_text for ph, _b, _g, _r in scored])
        except ElvisError as err:
            self.twins_missing.append((rel, err.problem))
            return
        for (ph, boxes, _gm, row), tm in zip(scored, maps):
            tp = map_peak_of(tm)
            row["twin_peak"] = tp
            row["twin_presence"] = self.presence(tp)
            hit = pointing_game(tm.to_image(), boxes)
            if row["twin_presence"] is not None:
                hit = hit and row["twin_presence"] >= float(self.cal["threshold"])
            row["twin_pointing"] = bool(hit)


# ------------------------------------------------------------------------------------------------------ summaries
def auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN without both classes."""
    p = np.asarray([v for v in pos if v is not None and np.isfinite(v)], np.float64)
    n = np.asarray([v for v in neg if v is not None and np.isfinite(v)], np.float64)
    if not p.size or not n.size:
        return float("nan")
    allv = np.concatenate([p, n])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(allv.size)
    sv = allv[order]
    i = 0
    while i < sv.size:  # average ranks of ties
        j = i
        while j + 1 < sv.size and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[:p.size].sum() - p.size * (p.size + 1) / 2) / (p.size * n.size))


def _macro(rows, key: str) -> float:
    cats: Dict[str, List[float]] = {}
    for r in rows:
        v = r.get(key)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        cats.setdefault(r["category"], []).append(float(v))
    vals = [np.mean(v) for v in cats.values() if v]
    return float(np.mean(vals)) if vals else float("nan")


def bootstrap_margin(rows: Sequence[Dict[str, Any]], key: str, prior_key: str, n_boot: int = 1000,
                     seed: int = 0) -> Dict[str, float]:
    """Macro-over-categories ``key`` minus ``prior_key`` with a paired bootstrap 95 % CI (images resampled with
    replacement; both maps of a phrase always stay together)."""
    use = [r for r in rows if r.get(prior_key) is not None and r.get(key) is not None
           and np.isfinite(float(r[key])) and np.isfinite(float(r[prior_key]))]
    if not use:
        return {"model": float("nan"), "prior": float("nan"), "margin": float("nan"), "lo": float("nan"),
                "hi": float("nan"), "n": 0}
    paths = sorted({r["path"] for r in use})
    cats = sorted({r["category"] for r in use})
    pi = {p: i for i, p in enumerate(paths)}
    ci = {c: i for i, c in enumerate(cats)}
    sm = np.zeros((len(paths), len(cats)))
    sp = np.zeros_like(sm)
    nn = np.zeros_like(sm)
    for r in use:
        i, j = pi[r["path"]], ci[r["category"]]
        sm[i, j] += float(r[key])
        sp[i, j] += float(r[prior_key])
        nn[i, j] += 1

    def macro_diff(w: np.ndarray) -> np.ndarray:
        n = w @ nn
        with np.errstate(invalid="ignore", divide="ignore"):
            d = (w @ sm) / n - (w @ sp) / n
        return np.nanmean(np.where(n > 0, d, np.nan), axis=-1)

    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(paths), np.full(len(paths), 1.0 / len(paths)), size=int(n_boot)).astype(np.float64)
    boots = macro_diff(w)
    one = np.ones((1, len(paths)))
    return {"model": _macro(use, key), "prior": _macro(use, prior_key), "margin": float(macro_diff(one)[0]),
            "lo": float(np.nanpercentile(boots, 2.5)), "hi": float(np.nanpercentile(boots, 97.5)), "n": len(use)}


def trust_summary(rows: Sequence[Dict[str, Any]], calibration: Optional[Dict[str, Any]] = None,
                  n_boot: int = 1000) -> Dict[str, Any]:
    """The figures of ``elvis eval --twins/--prior-annotations`` (macro = mean over categories)."""
    from elvis_core.grounding.evaluate import aggregate

    out: Dict[str, Any] = {"calibrated": calibration is not None}
    if calibration is not None:
        out["calibrated_on"] = calibration.get("calibrated_on")
        out["threshold"] = calibration.get("threshold")
    if any("prior_pointing" in r for r in rows):
        prior_rows = [{"category": r["category"], "cnr": r["prior_cnr"], "miou": r["prior_miou"],
                       "pointing": r["prior_pointing"], "contrast": float("nan")} for r in rows if "prior_pointing" in r]
        per, macro, _ov = aggregate(prior_rows)
        out["prior_per_category"], out["prior_macro"] = per, macro
        out["margin"] = {m: bootstrap_margin(rows, m, f"prior_{m}", n_boot) for m in ("pointing", "cnr", "miou")}
    twin = [r for r in rows if "twin_peak" in r]
    if twin:
        out["twin_pointing"] = _macro(twin, "twin_pointing")
        out["presence_auc"] = auc([r["peak"] for r in twin], [r["twin_peak"] for r in twin])
        out["n_twins"] = len(twin)
        if calibration is not None:
            from elvis_core.grounding.presence import expected_calibration_error

            probs = [r["presence"] for r in twin] + [r["twin_presence"] for r in twin]
            labels = [1] * len(twin) + [0] * len(twin)
            ok = [(p, y) for p, y in zip(probs, labels) if p is not None]
            out["ece"] = expected_calibration_error([p for p, _ in ok], [y for _, y in ok]) if ok else float("nan")
            thr = float(calibration["threshold"])
            out["present_confident"] = float(np.mean([r["presence"] >= thr for r in twin if r["presence"] is not None]))
            out["twin_confident"] = float(np.mean([r["twin_presence"] >= thr for r in twin
                                                   if r["twin_presence"] is not None]))
    recs = [w for r in rows for w in r.get("word_following", [])]
    if recs:
        out["word_following"] = summarize(recs)
    zones = {}
    for z in ZONES + ("unnamed",):
        zr = [r for r in rows if r.get("zone") == z]
        if zr:
            zones[z] = {"n": len(zr), "pointing": float(np.mean([bool(r["pointing"]) for r in zr])),
                        "prior_pointing": (float(np.mean([bool(r["prior_pointing"]) for r in zr]))
                                           if all("prior_pointing" in r for r in zr) else float("nan"))}
    out["per_zone"] = zones
    return out


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def trust_lines(s: Dict[str, Any], model_macro: Dict[str, float]) -> List[str]:
    """Plain-text lines for ``elvis eval``."""
    lines = []
    if "prior_macro" in s:
        pm = s["prior_macro"]
        lines.append(f"{'text prior (no image)':<28} {int(pm['n']):>5} {_f(pm['cnr']):>7} {_f(pm['miou']):>7} "
                     f"{_f(pm['pointing']):>9}")
        for m in ("pointing", "cnr", "miou"):
            d = s["margin"][m]
            lines.append(f"margin over the text prior, {m}: {d['margin']:+.3f} (paired bootstrap 95 % CI "
                         f"{d['lo']:+.3f} .. {d['hi']:+.3f}; model {_f(d['model'])}, prior {_f(d['prior'])})")
    if s.get("calibrated"):
        lines.append(f"presence calibration: threshold {s['threshold']:.2f}, calibrated on {s['calibrated_on']}")
    else:
        lines.append("presence: uncalibrated (no presence_calibration in the checkpoint; `elvis calibrate`)")
    if "n_twins" in s:
        lines.append(f"twins ({s['n_twins']} phrases on finding-free twins): pointing on twins {_f(s['twin_pointing'])}"
                     f" (macro; peak in the box" + (" with presence >= threshold" if s.get("calibrated") else "")
                     + f"), presence AUC present vs twin {_f(s['presence_auc'])}")
        if "ece" in s:
            lines.append(f"ECE (present + twins, 10 bins) {_f(s['ece'])}; confident: {_f(s['present_confident'])} "
                         f"of present, {_f(s['twin_confident'])} of twins")
    if "word_following" in s:
        w = s["word_following"]
        lines.append(f"word following: side swapped {_f(w['side'])} (n {int(w['n_side'])}), zone swapped "
                     f"{_f(w['zone'])} (n {int(w['n_zone'])}), all {_f(w['all'])}")
    if s.get("per_zone"):
        lines.append("per-zone pointing (zone named by the phrase): " + "; ".join(
            f"{z} {_f(d['pointing'])} (prior {_f(d['prior_pointing'])}, n {d['n']})" for z, d in s["per_zone"].items()))
    return lines
