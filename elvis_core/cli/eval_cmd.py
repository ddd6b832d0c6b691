"""`elvis eval`: MS-CXR-style phrase-grounding evaluation of a checkpoint (CNR, mIoU, pointing game)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from elvis_core.atomic import atomic_write_text
from elvis_core.errors import ElvisError

EXAMPLE = """example:
  elvis eval --checkpoint runs/demo --annotations MS_CXR_Local_Alignment_v1.1.0.csv \\
             --images /data/mimic-cxr-jpg --split test --json eval.json

Phrases = CSV rows sharing (path, label_text); each image is loaded once (DICOM, or JPG/PNG as in MIMIC-CXR-JPG; a
missing .jpg is also looked for as .dcm/.png). Missing or unreadable images are reported and counted, the rest is
evaluated. Exit code 0 when at least one phrase was evaluated, 1 when none could be, 2 on bad input."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate phrase grounding on MS-CXR-style annotations (CNR, mIoU, pointing)",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--annotations", required=True, help="MS-CXR CSV (v1.0.0 or v1.1.0 columns)")
    p.add_argument("--images", required=True, help="root folder the CSV's 'path' column is relative to")
    p.add_argument("--split", default=None, help="evaluate only this split (v1.1.0 CSV), e.g. test")
    p.add_argument("--json", dest="json_out", default=None, help="write every phrase's figures + provenance here")
    p.add_argument("--sigma", type=float, default=0.0, help="Gaussian smoothing of the grid map, in grid cells "
                                                            "(hi-ml uses 1.5; default 0 = none)")
    p.add_argument("--allow-paths-outside-images", action="store_true",
                   help="accept annotation paths that are absolute or climb out of --images with '..'")
    p.add_argument("--clamp-negative", action="store_true", help="clamp negative similarities to 0 before CNR")
    p.add_argument("--mirror", choices=("checkpoint", "on", "off"), default="checkpoint",
                   help="mirror consensus: also ground the side-swapped phrase on the mirrored film and average "
                        "(model.image.mirror_average; default: what the checkpoint says)")
    p.add_argument("--phrase-map", choices=("global", "token-mean"), default="global",
                   help="global: cosine(patch, phrase embedding) (default, BioViL-style); token-mean: mean over the "
                        "phrase's tokens of cosine(patch, token embedding) (GLoRIA-style)")
    p.add_argument("--side-checks", action="store_true",
                   help="also: laterality (peak on the named side of one-sided phrases) and negation (median "
                        "Pearson r between the maps of 'no P' and 'P'); elvis_core.grounding.sides")
    p.add_argument("--prior-annotations", metavar="TRAIN.csv", default=None,
                   help="also score the text prior (mean training box of phrases with the same category + side + zone "
                        "words, from this CSV's --prior-split rows) and every metric's margin over it with a paired "
                        "bootstrap 95 %% CI")
    p.add_argument("--prior-split", default="train", help="rows of --prior-annotations to use (default train; '' = all)")
    p.add_argument("--twins", metavar="ROOT", default=None,
                   help="finding-free twins (`elvis phantom --twins`: IMAGES/twins): pointing on twins, presence AUC "
                        "(present vs twin) and, for a calibrated checkpoint, ECE")
    p.add_argument("--word-following", action="store_true",
                   help="ground each one-sided phrase with its side word swapped and with its zone word swapped on the "
                        "same image: share where the peak moves to the named place or presence drops below threshold")
    p.add_argument("--anatomy", metavar="CSV", default=None,
                   help="anatomy boxes for the midline and lung span of word following (default IMAGES/anatomy.csv "
                        "when present; else the image centre line and 10-75 %% of its height)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def code_version() -> str:
    """Package version plus the git commit of the code when run from a checkout."""
    try:
        from importlib.metadata import version

        v = version("elvis-viewer")
    except Exception:
        v = "unknown"
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            v += f"+git.{rev.stdout.strip()}"
    except Exception:
        pass
    return v


def write_json_atomic(path: os.PathLike | str, obj) -> None:
    out = Path(path)
    if not out.parent.exists():
        raise ElvisError("output folder does not exist", out.parent)
    try:
        atomic_write_text(out, json.dumps(obj, indent=1, allow_nan=False))
    except OSError as err:
        raise ElvisError(f"cannot write ({err.strerror or err})", out) from None


def run(args: argparse.Namespace) -> int:
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.grounding.evaluate import evaluate
    from elvis_core.io.annotations import read_ms_cxr_csv

    if not 0 <= args.sigma <= 64:  # also refuses nan; a grid is at most a few dozen cells across
        raise ElvisError(f"--sigma must be 0..64 grid cells, got {args.sigma}")
    if args.json_out and not Path(args.json_out).resolve().parent.exists():
        raise ElvisError("output folder does not exist", Path(args.json_out).resolve().parent)
    aset = read_ms_cxr_csv(args.annotations)
    for line, msg in aset.errors[:20]:
        print(f"{args.annotations}:{line}: skipped: {msg}", file=sys.stderr)
    if len(aset.errors) > 20:
        print(f"... {len(aset.errors) - 20} more skipped rows", file=sys.stderr)
    sub = aset.filter_split(args.split)
    if not sub.phrases:
        raise ElvisError(f"no phrases to evaluate" + (f" in split {args.split!r}" if args.split else ""),
                         args.annotations)
    engine = GroundingEngine(args.checkpoint, device=args.device, smoothing_sigma=args.sigma,
                             phrase_map=args.phrase_map,
                             mirror_average={"on": True, "off": False}.get(args.mirror))

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sub.phrases), unit="phrase", desc="eval", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)

    collector = _trust_collector(args, engine)
    t0 = time.perf_counter()
    try:
        result = evaluate(engine, aset, args.images, split=args.split, progress=progress,
                          clamp_negative=args.clamp_negative,
                          allow_outside=getattr(args, "allow_paths_outside_images", False),
                          on_image=collector)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    for rel, msg in result.missing[:20]:
        print(f"{rel}: {msg}", file=sys.stderr)
    if len(result.missing) > 20:
        print(f"... {len(result.missing) - 20} more missing/unreadable images", file=sys.stderr)
    for rel, label, msg in result.unscored[:20]:
        print(f"{rel}: phrase {label[:60]!r} not scored: {msg}", file=sys.stderr)
    if len(result.unscored) > 20:
        print(f"... {len(result.unscored) - 20} more phrases not scored", file=sys.stderr)
    print(f"checkpoint {engine.checkpoint_name} (sha256 {engine.checkpoint_hash}) on {engine.device_name}; "
          f"sigma {args.sigma}; phrase map {args.phrase_map}; mirror {'on' if engine.mirror_average else 'off'}; "
          f"split {args.split or 'all'}; "
          f"{result.n_evaluated} phrases in {elapsed:.1f}s")
    print(result.table())
    trust = None
    if collector is not None:
        from elvis_core.grounding.trust_eval import trust_lines, trust_summary

        trust = trust_summary(result.rows, collector.cal)
        for line in trust_lines(trust, result.macro):
            print(line)
        for rel, msg in collector.twins_missing[:10]:
            print(f"{rel}: twin not scored: {msg}", file=sys.stderr)
    sides = None
    if args.side_checks:
        from elvis_core.grounding.sides import side_checks, side_checks_lines

        sides = side_checks(engine, aset, args.images, split=args.split)
        for line in side_checks_lines(sides):
            print(line)
    if args.json_out:
        doc = result.to_json()
        doc["provenance"] = {"checkpoint": str(Path(args.checkpoint).resolve()), "checkpoint_name":
                             engine.checkpoint_name, "checkpoint_hash": engine.checkpoint_hash,
                             "code_version": code_version(), "device": engine.device_name,
                             "elapsed_s": round(elapsed, 3),
                             "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if trust is not None:
            from elvis_core.grounding.evaluate import _clean

            doc["trust"] = _clean(trust)
        if sides is not None:
            doc["side_checks"] = {k: v for k, v in sides.items() if k != "negation_r"}
        write_json_atomic(args.json_out, doc)
        print(f"wrote {args.json_out}")
    return 0 if result.n_evaluated else 1


def _trust_collector(args: argparse.Namespace, engine):
    """The TrustCollector for --prior-annotations / --twins / --word-following (None when none is asked for)."""
    if not (args.prior_annotations or args.twins or args.word_following):
        return None
    from elvis_core.grounding.trust_eval import TrustCollector, read_anatomy
    from elvis_core.model.checkpoint import read_checkpoint_config

    prior = None
    if args.prior_annotations:
        from elvis_core.grounding.text_prior import TextPrior

        prior = TextPrior.from_csv(args.prior_annotations, split=args.prior_split or None)
        print(prior.describe())
    if args.twins and not Path(args.twins).is_dir():
        raise ElvisError("twins folder not found", args.twins)
    cal = read_checkpoint_config(args.checkpoint).get("presence_calibration")
    if cal is not None:
        try:
            from elvis_core.grounding.presence import check_calibration
        except ImportError:  # a tree without the presence module (elvis_core/grounding/presence.py): uncalibrated
            print("presence calibration in the checkpoint, but this build has no presence module: uncalibrated",
                  file=sys.stderr)
            cal = None
        else:
            try:
                cal = check_calibration(cal)
            except ValueError as err:
                raise ElvisError(f"presence calibration: {err}", Path(args.checkpoint) / "config.json") from None
    anatomy_path = args.anatomy or os.path.join(args.images, "anatomy.csv")
    anatomy = {}
    if os.path.isfile(anatomy_path):
        anatomy = read_anatomy(anatomy_path)
    elif args.anatomy:
        raise ElvisError("anatomy CSV not found", args.anatomy)
    return TrustCollector(engine, calibration=cal, prior=prior, twins_root=args.twins,
                          word_following=args.word_following, anatomy=anatomy)
