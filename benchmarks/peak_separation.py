"""How well a checkpoint's raw map peak (the feature the presence calibration uses) separates a finding that is on
the film from one that is not, per category and pooled (one threshold for every phrase).

    python benchmarks/peak_separation.py [--checkpoint resources/demo_model] [--studies 60] [--seed 4243]

Held-out phantom studies (``--seed``, a temporary folder, 256 px); on each image one canonical phrase per MS-CXR
category is grounded; "present" = the category has a box on that image, "absent" = it has none (other findings may be
there: this is not the finding-free twin of ``elvis eval``). Prints per category the counts, the AUC of the peak and
the mean peaks, then the pooled AUC.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PHRASES = {"Pleural Effusion": "pleural effusion", "Pneumothorax": "pneumothorax", "Cardiomegaly": "cardiomegaly",
           "Edema": "pulmonary edema", "Consolidation": "consolidation", "Atelectasis": "atelectasis",
           "Pneumonia": "pneumonia", "Lung Opacity": "opacity"}


def auc(pos, neg) -> float:
    p, n = np.asarray(pos, float), np.asarray(neg, float)
    if not p.size or not n.size:
        return float("nan")
    return float((p[:, None] > n[None, :]).mean() + 0.5 * (p[:, None] == n[None, :]).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(REPO / "resources" / "demo_model"))
    ap.add_argument("--studies", type=int, default=60)
    ap.add_argument("--seed", type=int, default=4243)
    a = ap.parse_args(argv)
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.io.annotations import read_ms_cxr_csv
    from elvis_core.io.images import read_image
    from elvis_core.phantom.generate import generate

    root = Path(tempfile.mkdtemp(prefix="peaks_")) / "ph"
    generate(root, a.studies, seed=a.seed, size=256)
    present = defaultdict(set)
    for p in read_ms_cxr_csv(root / "ms_cxr.csv").phrases:
        present[p.path].add(p.category)
    eng = GroundingEngine(a.checkpoint, device="cpu")
    peaks = defaultdict(lambda: ([], []))
    for path, cats in sorted(present.items()):
        eng.set_image(read_image(os.path.join(root, path)))
        for (cat, _), gm in zip(PHRASES.items(), eng.ground_many(list(PHRASES.values()))):
            peaks[cat][0 if cat in cats else 1].append(gm.peak)
    print(f"{eng.checkpoint_name}: {len(present)} images with findings, phantom seed {a.seed}")
    print(f"{'category':<17} {'phrase':<17} {'present':>7} {'absent':>6} {'AUC':>6} {'peak present':>12} {'absent':>7}")
    allp, alln = [], []
    for cat, phrase in PHRASES.items():
        p, n = peaks[cat]
        allp += p
        alln += n
        print(f"{cat:<17} {phrase:<17} {len(p):>7} {len(n):>6} {auc(p, n):>6.3f} "
              f"{np.mean(p) if p else float('nan'):>12.3f} {np.mean(n) if n else float('nan'):>7.3f}")
    print(f"{'pooled':<17} {'(one threshold)':<17} {len(allp):>7} {len(alln):>6} {auc(allp, alln):>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
