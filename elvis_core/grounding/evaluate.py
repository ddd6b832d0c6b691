"""MS-CXR-style evaluation: every phrase of an annotation set grounded on its image, scored with CNR, mIoU and the
pointing game, aggregated per category and macro-averaged over categories.

Images are loaded once each (all phrases of an image go through one ``ground_many`` call). A phrase whose image is
missing or unreadable is reported and counted, and the rest is evaluated.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from elvis_core.errors import ElvisError
from elvis_core.grounding.metrics import DEFAULT_THRESHOLDS, cnr, contrast, miou, pointing_game
from elvis_core.io.annotations import AnnotationSet, Phrase, rescale_boxes

#: image suffixes tried when the annotated path is not found (MS-CXR lists MIMIC-CXR-JPG paths)

ProgressFn = Callable[[int, int], None]


def read_any_image(path: os.PathLike | str):
    """A `Radiograph` from a DICOM (by content) or JPG/PNG file, via ``elvis_core.io.images.read_image``."""
    from elvis_core.io.images import read_image

    return read_image(path)


from elvis_core.io.paths import resolve_image  # noqa: E402,F401  (the one resolver; re-exported here)


def boxes_in_image(boxes, shape) -> Tuple[list, List[str]]:
    """Boxes clipped to an image of ``shape`` = (rows, cols); a box with no area inside is dropped. Returns
    (kept boxes, notes about dropped / clipped boxes)."""
    from elvis_core.io.annotations import Box

    rows, cols = int(shape[0]), int(shape[1])
    kept, notes = [], []
    for b in boxes:
        x0, y0 = max(0.0, b.x), max(0.0, b.y)
        x1, y1 = min(float(cols), b.x + b.w), min(float(rows), b.y + b.h)
        if x1 <= x0 or y1 <= y0:
            notes.append(f"box ({b.x:g}, {b.y:g}, {b.w:g}, {b.h:g}) lies outside the {cols}x{rows} image: not scored")
            continue
        if (x0, y0, x1, y1) != (b.x, b.y, b.x + b.w, b.y + b.h):
            notes.append(f"box ({b.x:g}, {b.y:g}, {b.w:g}, {b.h:g}) clipped to the {cols}x{rows} image")
        kept.append(Box(x0, y0, x1 - x0, y1 - y0))
    return kept, notes


@dataclass
class EvalResult:
    #: one dict per evaluated phrase: path, dicom_id, category, label_text, n_boxes, cnr, miou, pointing, contrast
    #: (signed mean_in - mean_out), rows,
    #: warnings (e.g. rescaled boxes, truncated phrase)
    rows: List[Dict[str, Any]]
    #: category -> {"n", "cnr", "miou", "pointing", "in_gt_out" (share of phrases with contrast > 0)}
    per_category: Dict[str, Dict[str, float]]
    #: unweighted mean over categories of the per-category means
    macro: Dict[str, float]
    #: mean over all phrases
    overall: Dict[str, float]
    #: (image path as annotated, message) for each image that was missing or unreadable
    missing: List[Tuple[str, str]]
    n_missing_phrases: int
    #: (CSV line, message) of rows skipped while reading the annotations
    csv_errors: List[Tuple[int, str]]
    settings: Dict[str, Any] = field(default_factory=dict)
    #: (image path as annotated, label_text, reason) of each phrase whose image was read but that could not be
    #: scored (every box outside the image, grounding failed)
    unscored: List[Tuple[str, str, str]] = field(default_factory=list)

    @property
    def n_not_scored(self) -> int:
        """Phrases not scored for any reason: missing/unreadable image + unscored."""
        return self.n_missing_phrases + len(self.unscored)

    @property
    def n_evaluated(self) -> int:
        return len(self.rows)

    def table(self) -> str:
        """Per-category and macro table (plain text)."""
        head = f"{'category':<28} {'n':>5} {'CNR':>7} {'mIoU':>7} {'pointing':>9} {'in>out':>7}"
        lines = [head, "-" * len(head)]

        def fmt(name: str, d: Dict[str, float]) -> str:
            return (f"{name[:28]:<28} {int(d['n']):>5} {_f(d['cnr']):>7} {_f(d['miou']):>7} "
                    f"{_f(d['pointing']):>9} {_f(d.get('in_gt_out', float('nan'))):>7}")

        for cat in sorted(self.per_category):
            lines.append(fmt(cat, self.per_category[cat]))
        lines.append("-" * len(head))
        lines.append(fmt("macro (mean of categories)", self.macro))
        lines.append(fmt("all phrases", self.overall))
        if self.n_missing_phrases:
            lines.append(f"missing/unreadable images: {len(self.missing)} ({self.n_missing_phrases} phrases not "
                         f"evaluated)")
        if self.unscored:
            reasons: Dict[str, int] = {}
            for _p, _t, why in self.unscored:
                key = why.split(":")[0]
                reasons[key] = reasons.get(key, 0) + 1
            lines.append(f"phrases not scored: {len(self.unscored)} (" + "; ".join(
                f"{n} {k}" for k, n in sorted(reasons.items())) + ")")
        if self.csv_errors:
            lines.append(f"CSV rows skipped: {len(self.csv_errors)}")
        return "\n".join(lines)

    def to_json(self) -> Dict[str, Any]:
        """JSON-safe dict (NaN -> null, inf -> "inf")."""
        return _clean({"settings": self.settings, "per_category": self.per_category, "macro": self.macro,
                "overall": self.overall, "n_evaluated": self.n_evaluated, "n_missing_phrases": self.n_missing_phrases,
                "missing_images": [{"path": p, "problem": m} for p, m in self.missing],
                "n_not_scored": self.n_not_scored,
                "unscored": [{"path": p, "label_text": t, "problem": m} for p, t, m in self.unscored],
                "csv_errors": [{"line": ln, "problem": m} for ln, m in self.csv_errors],
                "phrases": list(self.rows)})


def _f(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _json_num(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float):
        return _json_num(obj)
    return obj


def _summary(rows: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    if not rows:
        return {"n": 0, "cnr": float("nan"), "miou": float("nan"), "pointing": float("nan"),
                "in_gt_out": float("nan")}
    c = np.array([r["cnr"] for r in rows], dtype=np.float64)
    c = c[np.isfinite(c)]
    return {"n": len(rows), "cnr": float(c.mean()) if c.size else float("nan"),
            "miou": float(np.mean([r["miou"] for r in rows])),
            "pointing": float(np.mean([1.0 if r["pointing"] else 0.0 for r in rows])),
            "in_gt_out": float(np.mean([1.0 if r.get("contrast", float("nan")) > 0 else 0.0 for r in rows]))}


def aggregate(rows: Sequence[Dict[str, Any]]) -> Tuple[Dict[str, Dict[str, float]], Dict[str, float],
                                                         Dict[str, float]]:
    """(per_category, macro, overall) from phrase rows. Non-finite CNRs are left out of CNR means."""
    cats: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        cats.setdefault(r["category"], []).append(r)
    per = {k: _summary(v) for k, v in cats.items()}
    if per:
        macro = {"n": len(rows)}
        for m in ("cnr", "miou", "pointing", "in_gt_out"):
            vals = [d[m] for d in per.values() if not math.isnan(d[m])]
            macro[m] = float(np.mean(vals)) if vals else float("nan")
    else:
        macro = _summary([])
    return per, macro, _summary(rows)


def evaluate(engine, annotation_set: AnnotationSet, images_root: os.PathLike | str, split: Optional[str] = None,
             progress: Optional[ProgressFn] = None, clamp_negative: bool = False,
             thresholds: Sequence[float] = DEFAULT_THRESHOLDS, allow_outside: bool = False,
             on_image: Optional[Callable[[str, Any, List[Tuple[Phrase, list, Any, Dict[str, Any]]]], None]] = None
             ) -> EvalResult:
    """Ground and score every phrase of ``annotation_set`` (optionally one split) on images under ``images_root``.

    A bad item never stops the batch: an image that is missing, outside ``images_root`` (unless ``allow_outside``),
    unreadable or that the engine rejects goes to ``missing``; a phrase whose boxes all lie outside its image (or
    whose grounding fails) goes to ``unscored`` with the reason; boxes partly outside are clipped, with a warning.
    ``progress(done_phrases, total_phrases)`` is called after each image. ``on_image(path, radiograph, scored)``
    is called after an image's phrases are scored, while that image is still the engine's current one, with
    ``scored`` = [(phrase, boxes, map, row)]; it may add keys to the rows (``trust_eval.TrustCollector`` does:
    presence, twins, text prior, word following).
    """
    from elvis_core.io.dicom_header import is_fatal

    root = Path(images_root)
    if not root.is_dir():
        raise ElvisError("images folder not found", root)
    aset = annotation_set.filter_split(split)
    by_path: Dict[str, List[Phrase]] = {}
    for ph in aset.phrases:
        by_path.setdefault(ph.path, []).append(ph)
    total = len(aset.phrases)
    rows: List[Dict[str, Any]] = []
    missing: List[Tuple[str, str]] = []
    unscored: List[Tuple[str, str, str]] = []
    n_missing = 0
    done = 0
    for rel, phrases in by_path.items():
        rad = None
        try:
            img_path = resolve_image(root, rel, allow_outside)
        except ElvisError as err:
            img_path = None
            missing.append((rel, err.problem))
        else:
            if img_path is None:
                missing.append((rel, "image not found under the images folder"))
        if img_path is not None:
            try:
                rad = read_any_image(img_path)
                engine.set_image(rad)
            except ElvisError as err:
                missing.append((rel, f"unreadable: {err.problem}"))
                rad = None
            except BaseException as err:  # noqa: BLE001 - one image never stops the evaluation
                if is_fatal(err):
                    raise
                missing.append((rel, f"cannot be embedded ({type(err).__name__})"))
                rad = None
        if rad is None:
            n_missing += len(phrases)
        else:
            scorable = []
            for ph in phrases:
                boxes, note = rescale_boxes(ph, rad.shape)
                kept, box_notes = boxes_in_image(boxes, rad.shape)
                if not kept:
                    unscored.append((ph.path, ph.label_text, "boxes outside the image: " + "; ".join(box_notes)))
                else:
                    scorable.append((ph, kept, ([note] if note else []) + box_notes))
            try:
                maps = engine.ground_many([ph.label_text for ph, _b, _n in scorable]) if scorable else []
            except ElvisError as err:
                unscored.extend((ph.path, ph.label_text, f"grounding failed: {err.problem}")
                                for ph, _b, _n in scorable)
                maps = []
                scorable = []
            scored = []
            for (ph, boxes, notes), gm in zip(scorable, maps):
                m = gm.to_image()
                warnings = list(gm.warnings) + notes
                rows.append({"path": ph.path, "dicom_id": ph.dicom_id, "category": ph.category,
                             "label_text": ph.label_text, "split": ph.split, "n_boxes": len(boxes),
                             "cnr": cnr(m, boxes, clamp_negative=clamp_negative),
                             "miou": miou(m, boxes, thresholds), "pointing": pointing_game(m, boxes),
                             "contrast": contrast(m, boxes),
                             "rows": list(ph.rows), "warnings": "; ".join(warnings)})
                scored.append((ph, boxes, gm, rows[-1]))
            if on_image is not None and scored:
                on_image(rel, rad, scored)
        done += len(phrases)
        if progress is not None:
            progress(done, total)
    per, macro, overall = aggregate(rows)
    settings = {"split": split, "clamp_negative": clamp_negative, "thresholds": list(thresholds),
                "annotations": aset.source_path, "annotation_version": aset.version,
                "images_root": str(root)}
    if hasattr(engine, "settings"):
        settings.update(engine.settings())
    if hasattr(engine, "checkpoint_hash"):
        settings["checkpoint_hash"] = engine.checkpoint_hash
        settings["checkpoint"] = getattr(engine, "checkpoint_path", None) or getattr(engine, "checkpoint_name", "")
    return EvalResult(rows=rows, per_category=per, macro=macro, overall=overall, missing=missing,
                      n_missing_phrases=n_missing, csv_errors=list(aset.errors), settings=settings,
                      unscored=unscored)
