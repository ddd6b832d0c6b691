"""`elvis calibrate`: fit a checkpoint's presence calibration on validation films and their finding-free twins."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from elvis_core.errors import ElvisError

EXAMPLE = """example:
  elvis phantom --out ph_val --studies 300 --seed 31 --size 256 --splits 0/100/0 --twins
  elvis calibrate --checkpoint runs/words/step_00400 --annotations ph_val/ms_cxr.csv --images ph_val \\
                  --twins ph_val/twins --split val

Every phrase is grounded on its film (present) and on the film's twin (absent: same patient, exposure and noise,
no finding); a logistic regression of presence on the map's raw peak is written into the checkpoint's config.json
under "presence_calibration" (atomically), with what it was calibrated on. Calibrate on validation data only; report
ECE on held-out data with `elvis eval --twins`. The probability holds for data like the calibration data (phantom
films); on other films it is a ranking, not a probability."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit the presence calibration of a checkpoint on films + finding-free twins",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory; its config.json is updated")
    p.add_argument("--annotations", required=True, help="MS-CXR-style CSV of the calibration (validation) films")
    p.add_argument("--images", required=True, help="root folder the CSV's paths are relative to")
    p.add_argument("--twins", required=True, help="root of the finding-free twins (same relative paths)")
    p.add_argument("--split", default=None, help="use only this split of the CSV (e.g. val)")
    p.add_argument("--threshold", type=float, default=0.5, help="presence from which a map is confident (0.5)")
    p.add_argument("--label", default=None, help="what the data is, for calibrated_on (default: from the arguments)")
    p.add_argument("--dry-run", action="store_true", help="print the calibration, do not write it")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from elvis_core.atomic import atomic_write_text
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.grounding.evaluate import evaluate
    from elvis_core.grounding.presence import CALIBRATION_KEY, fit_presence_calibration
    from elvis_core.grounding.trust_eval import TrustCollector
    from elvis_core.io.annotations import read_ms_cxr_csv

    ck = Path(args.checkpoint)
    cfg_path = ck / "config.json"
    if not cfg_path.is_file():
        raise ElvisError("no config.json: not a checkpoint folder", ck)
    if not Path(args.twins).is_dir():
        raise ElvisError("twins folder not found", args.twins)
    if not 0 < args.threshold < 1:
        raise ElvisError(f"--threshold must lie in (0, 1), got {args.threshold}")
    aset = read_ms_cxr_csv(args.annotations)
    if not aset.filter_split(args.split).phrases:
        raise ElvisError("no phrases to calibrate on" + (f" in split {args.split!r}" if args.split else ""),
                         args.annotations)
    engine = GroundingEngine(str(ck), device=args.device)
    col = TrustCollector(engine, calibration=None, prior=None, twins_root=args.twins, word_following=False)
    res = evaluate(engine, aset, args.images, split=args.split, on_image=col)
    rows = [r for r in res.rows if r.get("twin_peak") is not None and r.get("peak") is not None]
    for rel, msg in col.twins_missing[:10]:
        print(f"{rel}: twin not used: {msg}", file=sys.stderr)
    if len(rows) < 10:
        raise ElvisError(f"only {len(rows)} phrases with both a film and a twin; need at least 10", args.annotations)
    label = args.label or (f"{Path(args.annotations).name}" + (f" split {args.split}" if args.split else "")
                           + f": {len(rows)} phrases present + the same {len(rows)} on finding-free twins")
    cal = fit_presence_calibration([r["peak"] for r in rows], [r["twin_peak"] for r in rows], calibrated_on=label,
                                   threshold=args.threshold)
    print(f"presence = sigmoid({cal['a']:.3f} * peak + {cal['b']:.3f}); threshold {cal['threshold']:.2f}; "
          f"in-sample ECE {cal['ece']:.3f} ({cal['n_present']} present, {cal['n_absent']} absent)")
    print(f"calibrated on: {label}")
    if args.dry_run:
        return 0
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ElvisError(f"cannot read config.json ({err})", cfg_path) from None
    doc[CALIBRATION_KEY] = cal
    atomic_write_text(cfg_path, json.dumps(doc, indent=2))
    print(f"wrote presence_calibration into {cfg_path}")
    return 0
