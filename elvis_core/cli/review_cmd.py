"""`elvis review`: the box review without the GUI — status, summary and exports of a review file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from elvis_core.cli import add_show_identifiers

EPILOG = """examples:
  elvis review status  ms_cxr.csv --images /data/mimic-cxr-jpg
  elvis review export  ms_cxr.csv --images /data/mimic-cxr-jpg --out reviewed/ [--include-rejected]
  elvis review export  ms_cxr.csv --images /data/mimic-cxr --out reviewed_sr/ --format dicom-sr
  elvis review from-sr study_review.csv --images "$(elvis pacs fetch --url URL STUDY_UID | tail -1)"
  elvis review recover ms_cxr.csv            # a damaged review file: rebuild it from what can be read

The decisions are read from the review file beside the annotations (ms_cxr.csv.review.sqlite), written by the
viewer's Review tab. 'status' prints the per-category summary and the import problems; 'export' writes
<stem>.csv (MS-CXR columns + review columns), <stem>.coco.json and <stem>.summary.json atomically.
--format dicom-sr writes one DICOM Comprehensive SR (TID 1500 measurement report) per DICOM image with reviewed boxes
(accepted / edited / added / rejected with its reason), one series per study: <SOPInstanceUID>.sr.dcm; an image
whose boxes all have a decision gets a COMPLETE, VERIFIED SR (verifying observer = its main reviewer); images that
are not DICOM are listed and skipped. --checkpoint names the model (and its SHA-256) as the device observer.
'from-sr' resumes a review from a PACS: the review SRs of a fetched study (--images = its cache folder) become
ANNOTATIONS (written) and their decisions are restored in its review file; export again and `elvis pacs store` to
write the result back.
A damaged review file is never opened or re-created: the error names it and keeps a copy; 'recover' reads every row
that can still be read (the audit trail rebuilds lost decisions), writes a fresh review file in its place and keeps
the damaged one as <file>.damaged-<time>.
What it prints (file names, problems, errors) shows every DICOM UID as its pseudonym uid~12345678, e.g.
reviewed_sr/uid~40231187.sr.dcm, while the file on disk keeps its UID name (a PACS files it by it);
--show-identifiers prints the names as they are (for scripts that read the output).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="summary and exports of a box review (MS-CXR CSV / COCO JSON)",
                       description="Summarise or export the decisions made in the viewer's Review tab.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("status", "export", "from-sr", "recover"))
    p.add_argument("annotations", help="MS-CXR CSV (v1.0.0 / v1.1.0) or MS-CXR / COCO JSON (recover: or the "
                                       "review file itself)")
    p.add_argument("--images", help="images root the annotation paths are relative to (status, export)")
    p.add_argument("--out", help="export: output folder")
    p.add_argument("--format", choices=("csv", "dicom-sr"), default="csv",
                   help="export: csv = MS-CXR CSV + COCO JSON + summary (default); dicom-sr = one TID 1500 SR per image")
    p.add_argument("--checkpoint", help="dicom-sr: the model whose maps the reviewer saw (named with its SHA-256 as "
                   "the SR's device observer)")
    p.add_argument("--organization", default="ELVIS Viewer review",
                   help="dicom-sr: verifying organization of a fully reviewed image's SR")
    p.add_argument("--stem", help="export: file name stem (default: <annotations stem>.reviewed)")
    p.add_argument("--include-rejected", action="store_true", help="export: keep rejected boxes in the COCO JSON")
    p.add_argument("--json", action="store_true", help="status: print the summary as JSON")
    p.add_argument("--reviewer", help="from-sr: who continues the review (the SR's reviewers keep their decisions)")
    p.add_argument("--allow-paths-outside-images", action="store_true",
                   help="accept annotation paths that are absolute or climb out of --images with '..'")
    p.set_defaults(func=run)
    add_show_identifiers(p, "file and folder names (dicom-sr files are named <SOPInstanceUID>.sr.dcm, a PACS "
                            "study's folder by its Study Instance UID)")


def run(args: argparse.Namespace) -> int:
    from elvis_core.cli import say, shown
    from elvis_core.errors import ElvisError
    from elvis_core.review import ReviewSession, export_coco, export_csv, export_summary, summarize, summary_table
    from elvis_core.review.store import review_path_for

    ann = Path(args.annotations)
    if args.action in ("from-sr", "status", "export") and not args.images:
        raise ElvisError(f"review {args.action} needs --images (the images root)")
    if args.action == "from-sr":
        from elvis_core.review.from_sr import review_from_study

        res = review_from_study(args.images, ann, reviewer=args.reviewer or "")
        for note in res.notes:
            say(args, f"note: {note}", file=sys.stderr)
        hint = f"  elvis-viewer {args.images} --annotations {res.annotations} --review"
        if shown(args, hint) != hint:  # a PACS cache folder is named by its Study Instance UID
            hint += "\n  (each UID printed as its pseudonym uid~…; --show-identifiers prints the paths as they are)"
        say(args, f"restored {res.n_decisions} decision(s) from {res.n_srs} review SR(s); review on with:\n{hint}",
            file=sys.stderr)
        say(args, res.annotations)
        return 0
    if args.action == "recover":
        from elvis_core.review.recover import recover_review

        say(args, recover_review(ann).summary())
        return 0
    if not ann.is_file():
        raise ElvisError("annotation file not found", ann)
    store_path = None
    if not review_path_for(ann).exists():
        say(args, f"note: no review file yet ({review_path_for(ann).name}); every phrase is unreviewed",
            file=sys.stderr)
        store_path = ":memory:"  # do not create a review file just to read it
    # reading never writes: a read-only snapshot, so a review open in the viewer (which holds the writer's lock)
    # can still be summarised or exported
    s = ReviewSession.open(ann, args.images, store_path=store_path, read_only=store_path is None,
                           allow_outside=args.allow_paths_outside_images)
    try:
        for p in s.problems:
            say(args, str(p), file=sys.stderr)
        if args.action == "status":
            summ = summarize(s.items)
            print(json.dumps(summ, indent=1) if args.json else summary_table(summ))  # counts: no file names
            return 0
        if not args.out:
            raise ElvisError("export needs --out FOLDER")
        if args.format == "dicom-sr":
            from elvis_core.dicom_results import ModelInfo, export_review_sr

            model = ModelInfo.from_checkpoint(args.checkpoint) if args.checkpoint else None
            res = export_review_sr(s.items, args.out, model=model, organization=args.organization)
            for problem in res.problems:
                say(args, problem, file=sys.stderr)
            for w in res.written:
                say(args, w)
            if not res.written:
                raise ElvisError("no SR written (no image with accepted / edited / added boxes)"
                                 + (f"; {len(res.problems)} problem(s) above" if res.problems else ""))
            return 1 if res.problems else 0
        stem = args.stem or f"{ann.stem}.reviewed"
        out = Path(args.out)
        written = [export_csv(s.items, out / f"{stem}.csv"),
                   export_coco(s.items, out / f"{stem}.coco.json", include_rejected=args.include_rejected),
                   export_summary(s.items, out / f"{stem}.summary.json")]
        for w in written:
            say(args, w)
        return 0
    finally:
        s.close()
