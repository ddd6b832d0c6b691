"""The text-prior baseline: a map that never looks at the image.

Built from a *training* annotation CSV (MS-CXR columns): for every phrase, its key is (category, side word, zone word)
read from the phrase (``phrase_side`` / :func:`phrase_zone`); the prior stores the mean box (in fractions of the
image width and height) of the training phrases with that key, one mean per box rank (boxes sorted left to right,
so a bilateral phrase gets two). A test phrase gets the boxes of the most specific key seen in training (category +
side + zone, else category + side, else category, else all phrases), drawn as the mean box (1 inside, 0 outside; as sharp as
the box metrics reward) raised by a small Gaussian bump (sigma = a quarter of the box) so that its peak is the mean
box centre.

Any grounding figure a model reaches only as far as this map does measures the report's words, not the image; every
model row therefore reports its margin over the prior (``trust_eval.bootstrap_margin``).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from elvis_core.errors import ElvisError
from elvis_core.grounding.sides import phrase_side

#: zones of a phrase, in the order they are reported
ZONES = ("apical", "upper", "middle", "lower", "basal", "retrocardiac", "perihilar")
_ZONE_WORDS = (("retrocardiac", r"retrocardiac|behind the heart"), ("perihilar", r"perihilar|hilar"),
               ("apical", r"apical|apex|apices"), ("basal", r"basilar|basal|base|bases|costophrenic"),
               ("upper", r"upper"), ("lower", r"lower"), ("middle", r"mid|middle|lingula|lingular"))
_ZONE_RES = [(z, re.compile(r"\b(" + pat + r")\b", re.IGNORECASE)) for z, pat in _ZONE_WORDS]


def phrase_zone(text: str) -> Optional[str]:
    """The zone the phrase's words name (one of :data:`ZONES`), or None when it names none."""
    for zone, rx in _ZONE_RES:
        if rx.search(text):
            return zone
    return None


def phrase_key_side(text: str) -> str:
    low = text.lower()
    if re.search(r"\bbilateral(ly)?\b|\bboth\b", low):
        return "bilateral"
    return phrase_side(text) or "none"


Box = Tuple[float, float, float, float]


class TextPrior:
    """Mean training boxes per (category, side, zone) key; see the module docstring."""

    def __init__(self, table: Dict[Tuple, List[Box]], counts: Dict[Tuple, int], source: str = ""):
        self.table = table
        self.counts = counts
        self.source = source

    @classmethod
    def from_csv(cls, path: str, split: Optional[str] = "train") -> "TextPrior":
        """Read an MS-CXR CSV; only rows of ``split`` (None or "": all rows; a CSV without a split column: all)."""
        groups: Dict[Tuple[str, str], dict] = {}
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rd = csv.DictReader(fh)
                need = {"category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height"}
                if not rd.fieldnames or need - set(rd.fieldnames):
                    raise ElvisError("not an MS-CXR CSV (missing columns: "
                                     + ", ".join(sorted(need - set(rd.fieldnames or []))) + ")", path)
                for r in rd:
                    if split and r.get("split", split) != split:
                        continue
                    try:
                        W, H = float(r["image_width"]), float(r["image_height"])
                        b = (float(r["x"]) / W, float(r["y"]) / H, float(r["w"]) / W, float(r["h"]) / H)
                    except (ValueError, ZeroDivisionError):
                        continue
                    g = groups.setdefault((r["path"], r["label_text"]), {"cat": r["category_name"], "boxes": []})
                    g["boxes"].append(b)
        except OSError as err:
            raise ElvisError(f"cannot read ({err.strerror or err})", path) from None
        if not groups:
            raise ElvisError(f"no training phrases" + (f" in split {split!r}" if split else ""), path)
        by_key: Dict[Tuple, Dict[int, List[List[Box]]]] = {}
        for (_p, text), g in groups.items():
            boxes = sorted(g["boxes"], key=lambda b: b[0] + b[2] / 2)
            side, zone = phrase_key_side(text), phrase_zone(text) or "none"
            for key in ((g["cat"], side, zone), (g["cat"], side), (g["cat"],), ()):
                by_key.setdefault(key, {}).setdefault(len(boxes), []).append(boxes)
        table, counts = {}, {}
        for key, by_n in by_key.items():
            n = max(by_n, key=lambda k: (len(by_n[k]), -k))
            arr = np.asarray(by_n[n], np.float64)  # [phrases, n boxes, 4]
            table[key] = [tuple(float(v) for v in arr[:, i].mean(0)) for i in range(n)]
            counts[key] = sum(len(v) for v in by_n.values())
        return cls(table, counts, source=str(path))

    def boxes_for(self, text: str, category: str) -> Tuple[List[Box], Tuple]:
        """(mean boxes as image fractions, the key used) for a phrase."""
        side, zone = phrase_key_side(text), phrase_zone(text) or "none"
        for key in ((category, side, zone), (category, side), (category,), ()):
            if key in self.table:
                return self.table[key], key
        raise ElvisError("the text prior has no training phrases")

    def map_for(self, text: str, category: str, shape: Sequence[int]) -> np.ndarray:
        """The prior's map (float32, image ``shape`` = rows, cols): each mean box with a bump at its centre."""
        rows, cols = int(shape[0]), int(shape[1])
        boxes, _key = self.boxes_for(text, category)
        # evaluated on a coarse grid then resized: the bumps are smooth, and a full-size exp per box is slow
        step = max(1, max(rows, cols) // 256)
        ys = (np.arange(0, rows, step) + 0.5)[:, None]
        xs = (np.arange(0, cols, step) + 0.5)[None, :]
        m = np.zeros((ys.shape[0], xs.shape[1]), np.float64)
        for fx, fy, fw, fh in boxes:
            cx, cy = (fx + fw / 2) * cols, (fy + fh / 2) * rows
            sx, sy = max(fw * cols / 4, 1.0), max(fh * rows / 4, 1.0)
            inside = (np.abs(xs - cx) <= fw * cols / 2) & (np.abs(ys - cy) <= fh * rows / 2)
            # the mean box, raised by a small bump so that the peak is its centre
            m += inside * (1.0 + 0.1 * np.exp(-0.5 * (((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2)))
        if step > 1:
            import cv2

            m = cv2.resize(m.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
        return m.astype(np.float32)

    def describe(self) -> str:
        n = self.counts.get((), 0)
        keys = sum(1 for k in self.table if len(k) == 3)
        return f"text prior from {n} training phrases ({keys} category/side/zone keys) of {self.source}"


def most_common_keys(prior: TextPrior, k: int = 5) -> List[Tuple[Tuple, int]]:
    return Counter({key: n for key, n in prior.counts.items() if len(key) == 3}).most_common(k)
