"""`elvis phantom`: write synthetic chest X-ray studies (DICOM + reports + MS-CXR-style CSV)."""

from __future__ import annotations

import argparse
import sys

from elvis_core.errors import ElvisError

EPILOG = """example:
  elvis phantom --out /tmp/phantom --studies 200 --seed 7 --size 1024 --contact-sheet /tmp/phantom/sheet.png

writes files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.dcm, the report files/pXX/pXXXXXXXX/sYYYYYYYY.txt and
ms_cxr.csv (MS-CXR v1.1.0 columns; split by patient). The same seed and options give identical bytes.
--twins also writes each image's finding-free twin at OUT/twins/<same relative path> (for `elvis eval --twins`).
"""


def _size(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be an integer, got {text!r}") from None
    if not 256 <= v <= 2500:
        raise argparse.ArgumentTypeError(f"--size must be 256..2500 (realistic: 1024..2500), got {v}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write synthetic chest X-ray studies with reports and phrase boxes",
                       description="Write procedurally drawn PA/AP chest radiographs (DICOM CR/DX, MONOCHROME1/2, "
                                   "some RLE / JPEG 2000), MIMIC-CXR-like reports and an MS-CXR-style box CSV.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--studies", type=int, required=True, help="number of studies (1 image each)")
    p.add_argument("--seed", type=int, required=True, help="random seed (same seed -> identical files)")
    p.add_argument("--size", type=_size, default=1024, help="image height in pixels, 256..2500 (default 1024)")
    p.add_argument("--splits", default="70/15/15", help="train/val/test shares by patient (default 70/15/15)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1; output does not depend on it)")
    p.add_argument("--generator-version", type=int, choices=(1, 2), default=2,
                   help="phantom generator: 2 (default: nodules/masses, support devices, two findings of a kind, "
                        "unlocated phrases, heart-silhouette cardiomegaly boxes) or 1 (the original, same bytes by seed)")
    p.add_argument("--twins", action="store_true",
                   help="also write each image's finding-free twin (same patient, exposure, noise) at "
                        "OUT/twins/<same relative path>")
    p.add_argument("--contact-sheet", metavar="PNG", help="also draw 16 studies with their boxes to this PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from elvis_core.phantom import generate, make_contact_sheet, parse_splits

    if args.studies < 1:
        raise ElvisError(f"--studies must be >= 1, got {args.studies}")
    splits = parse_splits(args.splits)
    bar = None
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.studies, unit="study", desc="phantom", file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

    try:
        summary = generate(args.out, args.studies, args.seed, size=args.size, splits=splits, progress=progress,
                           workers=args.workers, version=args.generator_version, twins=args.twins)
    finally:
        if bar is not None:
            bar.close()
    for line in summary.lines():
        print(line)
    if args.contact_sheet:
        png = make_contact_sheet(args.out, args.contact_sheet)
        print(f"contact sheet: {png}")
    return 0
