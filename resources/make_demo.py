"""Rebuild ``resources/demo/`` (the studies ``elvis-viewer --demo`` opens) from the phantom generator.

    python resources/make_demo.py [--out resources/demo] [--work /tmp/elvis_demo_candidates]

Generates ``--studies`` phantom studies with a fixed seed (not the demo model's training seed 0, so no demo patient
was seen in training) at ``--size`` px, then copies the studies listed in :data:`CHOSEN` (MIMIC-CXR layout: the
DICOM folder and the report beside it) and their rows of ``ms_cxr.csv``. The choice (see docs/demo.md) covers
different findings, MONOCHROME1 and MONOCHROME2, RLE and JPEG 2000 compressed files and one normal study. The
phantom generator is deterministic, so the output is byte-identical to the committed files for the same code.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEED = 2026
STUDIES = 40
SIZE = 640
#: study folders (relative to the phantom root) copied into the demo; the viewer opens the first study key first
CHOSEN = [
    "files/p17/p17690468/s51104318",  # MONOCHROME2, explicit VR: edema (first phrase, shown first), cardiomegaly, effusion
    "files/p18/p18398964/s52249594",  # MONOCHROME2, RLE: cardiomegaly, atelectasis, edema
    "files/p10/p10204406/s53225276",  # MONOCHROME1: cardiomegaly, consolidation
    "files/p13/p13036051/s54315102",  # MONOCHROME1, RLE: normal study (no findings)
    "files/p15/p15984072/s56252296",  # MONOCHROME1: pneumothorax
    "files/p16/p16324345/s58532050",  # MONOCHROME2: pneumonia, large pneumothorax
    "files/p15/p15266818/s59956756",  # MONOCHROME1, JPEG 2000: bilateral pleural effusions
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "resources" / "demo"), help="demo folder (must not exist or be empty)")
    p.add_argument("--work", default=None, help="where to generate the candidates (default: a temporary folder)")
    a = p.parse_args(argv)
    from elvis_core.io.annotations import write_ms_cxr_csv
    from elvis_core.phantom import generate

    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out}: not empty; remove it first", file=sys.stderr)
        return 2
    work = Path(a.work or tempfile.mkdtemp(prefix="elvis_demo_"))
    cand = work / "candidates"
    if not (cand / "ms_cxr.csv").is_file():
        generate(cand, STUDIES, seed=SEED, size=SIZE)
    with open(cand / "ms_cxr.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keep = []
    out.mkdir(parents=True, exist_ok=True)
    for rel in CHOSEN:
        src = cand / rel
        if not src.is_dir():
            print(f"{src}: chosen study not generated (phantom code changed?)", file=sys.stderr)
            return 2
        shutil.copytree(src, out / rel)
        shutil.copy2(str(src) + ".txt", str(out / rel) + ".txt")
        keep += [r for r in rows if os.path.dirname(r["path"]) == rel]
    write_ms_cxr_csv(out / "ms_cxr.csv", keep)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {len(CHOSEN)} studies, {len(keep)} CSV rows to {out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
