"""Which map feature separates "finding on the film" from "its finding-free twin" best? (presence, issue 21)

Grounds every phrase of a split on its film and on the film's twin with the SAME pairing as ``elvis eval --twins``
(``trust_eval.TrustCollector``; the engine is wrapped only to keep the twin maps it returns), keeps the raw cosine
grids and the cells the model saw, and prints, per category and pooled, the AUC (film vs twin) of candidate features
computed from those grids. Pooled AUC is what ``elvis eval`` reports as "presence AUC"; macro is the mean over
categories.

    PYTHONPATH=. python benchmarks/presence_features.py --checkpoint resources/demo_model \\
        --annotations data/v2_val/ms_cxr.csv --images data/v2_val --twins data/v2_val/twins \\
        [--cache /tmp/val_maps.npz] [--reference data/v2_train/ms_cxr.csv --reference-twins data/v2_train/twins]

``--cache`` keeps the grids (re-running only recomputes features). ``--reference``: per-phrase baseline = the
phrase's mean raw peak over a fixed set of finding-free training twins (first ``--n-reference`` files).
Use on validation only; score the test split once, with ``elvis eval``, after the choice.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


class _Recorder:
    """Engine proxy: passes every call through and keeps the maps ``ground_many`` returns (the twins' maps)."""

    def __init__(self, engine):
        self._e = engine
        self.last: List = []

    def ground_many(self, phrases, *a, **k):
        self.last = self._e.ground_many(phrases, *a, **k)
        return self.last

    def __getattr__(self, name):
        return getattr(self._e, name)


def collect(checkpoint: str, annotations: str, images: str, twins: str, split=None) -> Dict[str, np.ndarray]:
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.grounding.evaluate import evaluate
    from elvis_core.grounding.trust_eval import TrustCollector
    from elvis_core.io.annotations import read_ms_cxr_csv

    engine = GroundingEngine(checkpoint)
    rec = _Recorder(engine)
    col = TrustCollector(rec, calibration=None, prior=None, twins_root=twins, word_following=False)
    film, twin, seen_f, seen_t, cats, texts, paths = [], [], [], [], [], [], []

    def on_image(rel, rad, scored):
        rec.last = []
        col(rel, rad, scored)
        if len(rec.last) != len(scored):
            return  # twin missing: TrustCollector recorded why
        for (ph, _b, gm, _row), tm in zip(scored, rec.last):
            film.append(np.asarray(gm.raw_similarity, np.float32))
            twin.append(np.asarray(tm.raw_similarity, np.float32))
            seen_f.append(gm.seen_cells())
            seen_t.append(tm.seen_cells())
            cats.append(ph.category)
            texts.append(ph.label_text)
            paths.append(rel)

    evaluate(engine, read_ms_cxr_csv(annotations), images, split=split, on_image=on_image)
    return {"film": np.stack(film), "twin": np.stack(twin), "seen_f": np.stack(seen_f), "seen_t": np.stack(seen_t),
            "category": np.array(cats), "text": np.array(texts), "path": np.array(paths)}


def reference_peaks(checkpoint: str, texts, ref_csv: str, ref_twins: str, n_ref: int) -> Dict[str, float]:
    """phrase -> mean raw peak over the first ``n_ref`` twins (finding-free films) of the reference set."""
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.grounding.evaluate import read_any_image
    from elvis_core.grounding.presence import map_peak
    from elvis_core.io.annotations import read_ms_cxr_csv

    engine = GroundingEngine(checkpoint)
    rels = sorted({ph.path for ph in read_ms_cxr_csv(ref_csv).phrases})[:n_ref]
    uniq = sorted(set(texts))
    acc = np.zeros(len(uniq))
    for rel in rels:
        engine.set_image(read_any_image(os.path.join(ref_twins, rel)))
        maps = engine.ground_many(uniq)
        acc += [map_peak(m.raw_similarity, m.seen_cells()) for m in maps]
    return dict(zip(uniq, acc / len(rels)))


def features(grid: np.ndarray, seen: np.ndarray) -> Dict[str, float]:
    from elvis_core.grounding.mapbuild import smooth_grid

    v = grid[seen] if seen.any() else grid.ravel()
    s = np.sort(v)[::-1]
    out = {"peak": float(s[0]), "peak-mean": float(s[0] - v.mean()), "peak-median": float(s[0] - np.median(v)),
           "z": float((s[0] - v.mean()) / (v.std() + 1e-6)), "top4": float(s[:4].mean()),
           "top4-mean": float(s[:4].mean() - v.mean()), "top4-median": float(s[:4].mean() - np.median(v)),
           "peak-p90": float(s[0] - np.percentile(v, 90)), "peak-p75": float(s[0] - np.percentile(v, 75))}
    for sig in (0.5, 1.0, 1.5):
        sm = smooth_grid(np.where(seen, grid, np.nan_to_num(np.median(v))), sig)
        w = sm[seen] if seen.any() else sm.ravel()
        out[f"smooth{sig}"] = float(w.max())
        out[f"smooth{sig}-median"] = float(w.max() - np.median(w))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="resources/demo_model")
    ap.add_argument("--annotations", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--twins", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--cache", default=None, help="npz of the grids (written when absent, read when present)")
    ap.add_argument("--reference", default=None, help="CSV of reference films whose twins give per-phrase baselines")
    ap.add_argument("--reference-twins", default=None)
    ap.add_argument("--n-reference", type=int, default=32)
    args = ap.parse_args(argv)
    from elvis_core.grounding.trust_eval import auc

    if args.cache and os.path.isfile(args.cache):
        d = dict(np.load(args.cache))
    else:
        d = collect(args.checkpoint, args.annotations, args.images, args.twins, args.split)
        if args.cache:
            np.savez_compressed(args.cache, **d)
    n = len(d["category"])
    ff = [features(d["film"][i], d["seen_f"][i]) for i in range(n)]
    tf = [features(d["twin"][i], d["seen_t"][i]) for i in range(n)]
    if args.reference:
        base = reference_peaks(args.checkpoint, d["text"], args.reference, args.reference_twins, args.n_reference)
        for i in range(n):
            b = base[str(d["text"][i])]
            ff[i]["peak-ref"] = ff[i]["peak"] - b
            tf[i]["peak-ref"] = tf[i]["peak"] - b
    names = list(ff[0])
    cats = sorted(set(d["category"].tolist()))
    print(f"{n} phrases with film + twin; AUC film vs twin (pooled = what elvis eval reports; macro = mean over "
          f"categories)")
    head = f"{'feature':<18} {'pooled':>7} {'macro':>7} " + " ".join(f"{c[:9]:>9}" for c in cats)
    print(head)
    for f in names:
        pooled = auc([x[f] for x in ff], [x[f] for x in tf])
        per = [auc([ff[i][f] for i in range(n) if d["category"][i] == c],
                   [tf[i][f] for i in range(n) if d["category"][i] == c]) for c in cats]
        print(f"{f:<18} {pooled:7.3f} {np.mean(per):7.3f} " + " ".join(f"{v:9.3f}" for v in per))
    return 0


if __name__ == "__main__":
    sys.exit(main())
