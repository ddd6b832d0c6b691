"""`elvis inspect PATH [--json]`: summarise a DICOM file, an image, a report, a study folder or a DICOMDIR.

No patient identifiers are printed (only UIDs, modality, sizes, windows, spacing, transfer syntax...); ``--tags``
lists every header element with identifying values masked as ``***``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Dict

from elvis_core.errors import ElvisError

EXAMPLE = """examples:
  elvis inspect image.dcm                 # DICOM summary (no patient identifiers)
  elvis inspect image.dcm --tags          # every header element, identifiers masked as ***
  elvis inspect s50414267.txt --json      # report sections and sentence spans as JSON
  elvis inspect mimic-cxr/files/p10       # the studies found in a folder (recursive, headers only)
  elvis inspect mimic-cxr-jpg --reports mimic-cxr-reports   # reports from a separate tree
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarise a DICOM / image / report / study folder / DICOMDIR (no patient identifiers)",
        description="Summarise a DICOM file, a JPG/PNG, a free-text report, a folder of studies or a DICOMDIR. "
        "Patient identifiers are never printed.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="DICOM file, JPG/PNG, report .txt, folder or DICOMDIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--frame", type=int, default=0, help="frame of a multi-frame DICOM (default 0)")
    p.add_argument("--tags", action="store_true", help="DICOM: list all header elements (identifiers masked)")
    p.add_argument("--reports", metavar="ROOT", help="folder: a separate MIMIC reports tree ([files/]pXX/pXXXXXXXX/"
                   "sYYYYYYYY.txt) to match reports from")
    p.set_defaults(func=run)


def _kind(path: str) -> str:
    from elvis_core.io.images import sniff_kind

    if os.path.isdir(path):
        return "folder"
    if os.path.basename(path).upper() == "DICOMDIR":
        return "dicomdir"
    kind = sniff_kind(path)
    if kind != "unknown":
        return kind
    ext = os.path.splitext(path)[1].lower()
    if ext in (".dcm", ".dicom", ".dic"):
        return "dicom"
    return "report"


def _is_report_sr(path: str) -> bool:
    from elvis_core.io.sr_report import is_text_report_sr

    return bool(is_text_report_sr(path))


def radiograph_summary(path: str, frame: int = 0) -> Dict[str, Any]:
    import numpy as np

    from elvis_core.io.images import read_image
    from elvis_core.io.privacy import mask_meta

    r = read_image(path, frame=frame)
    px = r.pixels
    return {
        "kind": "image" if r.meta.get("Decoder") == "image" else "dicom",
        "path": path,
        "meta": mask_meta(r.meta),
        "shape": [r.rows, r.cols],
        "pixel_range": [float(px.min()), float(px.max())],
        "pixel_mean": float(np.mean(px)),
        "windows": [{"center": w.center, "width": w.width, "name": w.name} for w in r.windows],
        "default_window": {"center": r.default_window().center, "width": r.default_window().width,
                           "name": r.default_window().name},
        "voi_lut": None if r.voi_lut is None else {"entries": int(r.voi_lut.table.size),
                                                   "first_mapped": r.voi_lut.first_mapped,
                                                   "explanation": r.voi_lut.explanation},
        "pixel_spacing": None if r.pixel_spacing is None else list(r.pixel_spacing),
        "spacing_source": r.spacing_source,
        "inverted_from_monochrome1": r.inverted_from_monochrome1,
        "warnings": list(r.warnings) + [w for w in [_inversion(r)] if w],
    }


def _inversion(r):
    from elvis_core.io.inversion import inversion_warning

    return inversion_warning(r)


def report_summary(path: str) -> Dict[str, Any]:
    from elvis_core.io.report import read_report

    rep = read_report(path)
    return {
        "kind": "report",
        "path": path,
        "n_chars": len(rep.text),
        "sections": [
            {"name": s.name, "header": [s.header_start, s.header_end], "body": [s.start, s.end]} for s in rep.sections
        ],
        "sentences": [
            {"section": s.section, "start": s.start, "end": s.end, "text": rep.text[s.start:s.end]}
            for s in rep.sentences
        ],
        "warnings": list(rep.warnings),
    }


def scan_summary(path: str, progress: bool = True, reports_root: str | None = None) -> Dict[str, Any]:
    from elvis_core.io.privacy import MASK, mask_uid_text
    from elvis_core.io.studies import read_dicomdir, scan_folder

    if os.path.basename(path).upper() == "DICOMDIR" and os.path.isfile(path):
        res = read_dicomdir(path)
    else:
        cb = None
        if progress and sys.stderr.isatty():
            def cb(done: int, total: int) -> None:
                if done == total or done % 200 == 0:
                    print(f"\rscanning {done}/{total}", end="" if done < total else "\n", file=sys.stderr)
        res = scan_folder(path, progress=cb, reports_root=reports_root)
    return {
        "kind": "studies",
        "path": path,
        "n_files_seen": res.n_files_seen,
        "n_images": res.n_images,
        "studies": [
            {
                "key": mask_uid_text(st.key),
                "uid": mask_uid_text(st.uid),
                "root": st.root,
                "report": st.report_path,
                "report_pairing": st.report_pairing,
                "series": [
                    {
                        "uid": mask_uid_text(se.uid),
                        "description": MASK if se.description else "",
                        "modality": se.modality,
                        "images": [
                            {"path": im.path, "sop_instance_uid": mask_uid_text(im.sop_instance_uid), "view_position": im.view_position,
                             "rows": im.rows, "cols": im.cols, "frames": im.frames}
                            for im in se.images
                        ],
                    }
                    for se in st.series
                ],
            }
            for st in res.studies
        ],
        "errors": [{"path": p, "message": m} for p, m in res.errors],
        "skipped": [{"path": p, "reason": m} for p, m in res.skipped],
        "unpaired_reports": [{"path": p, "message": m} for p, m in res.unpaired],
    }


def _print_text(info: Dict[str, Any]) -> None:
    kind = info["kind"]
    if kind in ("dicom", "image"):
        m = info["meta"]
        print(f"{info['path']}")
        keys = ["Modality", "ViewPosition", "PhotometricInterpretation", "BitsStored", "TransferSyntaxName", "Decoder",
                "NumberOfFrames", "Frame", "Manufacturer", "BodyPartExamined", "StudyInstanceUID", "SeriesInstanceUID",
                "SOPInstanceUID"]
        print(f"  size            {info['shape'][1]} x {info['shape'][0]} (cols x rows)")
        for k in keys:
            if k in m and m[k] not in (None, ""):
                print(f"  {k:<26} {m[k]}")
        print(f"  pixel range     {info['pixel_range'][0]:g} .. {info['pixel_range'][1]:g} "
              f"(mean {info['pixel_mean']:.1f}; higher = brighter)")
        if info["inverted_from_monochrome1"]:
            print("  MONOCHROME1     inverted once on reading")
        for w in info["windows"]:
            print(f"  window          C={w['center']:g} W={w['width']:g} {w['name']}")
        dw = info["default_window"]
        print(f"  default window  C={dw['center']:g} W={dw['width']:g} {dw['name']}")
        if info["voi_lut"]:
            v = info["voi_lut"]
            print(f"  VOI LUT         {v['entries']} entries from {v['first_mapped']:g} {v['explanation']}")
        sp = info["pixel_spacing"]
        print(f"  pixel spacing   {'%g x %g mm' % tuple(sp) if sp else 'unknown'} ({info['spacing_source']})")
        for w in info["warnings"]:
            print(f"  warning         {w}")
    elif kind == "report":
        print(f"{info['path']}: {info['n_chars']} characters, {len(info['sections'])} sections, "
              f"{len(info['sentences'])} sentences")
        for w in info["warnings"]:
            print(f"  warning: {w}")
        sentences = sorted(info["sentences"], key=lambda x: x["start"])
        k = 0  # one pass over sections and sentences together (both in text order): linear, not sections x sentences
        for s in sorted(info["sections"], key=lambda x: x["body"][0]):
            name = s["name"] or "(no header)"
            while k < len(sentences) and sentences[k]["start"] < s["body"][0]:
                k += 1
            sents = []
            while k < len(sentences) and sentences[k]["end"] <= s["body"][1]:
                sents.append(sentences[k])
                k += 1
            print(f"  [{name}] body {s['body'][0]}-{s['body'][1]}")
            for x in sents:
                text = " ".join(x["text"].split())
                print(f"    {x['start']:>5}-{x['end']:<5} {text}")
    elif kind == "studies":
        print(f"{info['path']}: {len(info['studies'])} studies, {info['n_images']} images "
              f"({info['n_files_seen']} files seen, {len(info['errors'])} errors, {len(info['skipped'])} skipped)")
        for st in info["studies"]:
            n = sum(len(se["images"]) for se in st["series"])
            how = f" (paired: {st['report_pairing']})" if st.get("report_pairing") else ""
            print(f"  study {st['key']}: {len(st['series'])} series, {n} images, report: {st['report'] or '-'}{how}")
            for se in st["series"]:
                views = ",".join(sorted({im["view_position"] or "?" for im in se["images"]}))
                print(f"    series {se['modality'] or '-'} {se['description'] or ''} {len(se['images'])} images ({views})")
        for e in info["errors"]:
            print(f"  error: {e['path']}: {e['message']}")
        for e in info.get("unpaired_reports", []):
            print(f"  unpaired: {e['message']}")
    elif kind == "tags":
        for tag, kw, vr, value in info["rows"]:
            print(f"{tag} {kw:<36} {vr:<3} {value}")


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", False):
        warnings.simplefilter("ignore")  # pydicom's value warnings; problems are reported by our own messages
    path = args.path
    if not os.path.exists(path):
        raise ElvisError("no such file or folder", path)
    if not os.path.isdir(path):
        from elvis_core.io.paths import require_regular_file

        require_regular_file(path)  # a FIFO would block every reader below, /dev/zero read without end
    kind = _kind(path)
    if args.tags:
        if kind != "dicom":
            raise ElvisError("--tags needs a DICOM file", path)
        from elvis_core.io.privacy import dicom_tag_rows

        info: Dict[str, Any] = {"kind": "tags", "path": path, "rows": dicom_tag_rows(path)}
    elif kind in ("folder", "dicomdir"):
        info = scan_summary(path, progress=not args.json, reports_root=args.reports)
    elif kind == "dicom" and _is_report_sr(path):
        info = report_summary(path)  # a report stored as a DICOM SR (as a PACS holds it): summarised like a .txt
    elif kind in ("dicom", "image"):
        info = radiograph_summary(path, args.frame)
    else:
        info = report_summary(path)
    try:
        if args.json:
            print(json.dumps(info, indent=2, default=str))
        else:
            _print_text(info)
        sys.stdout.flush()
    except BrokenPipeError:  # `elvis inspect ... | head`: the reader went away, which is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
