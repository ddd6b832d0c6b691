"""A review that resumes from what the PACS holds: our TID 1500 review SRs in a fetched study → an annotation file
+ its review file with the decisions restored (through :class:`ReviewSession`, like a reviewer's keys would).

For every image of the study folder with a review SR (the newest one per image wins), each box of the SR becomes a
row of ``<folder>/elvis_review_from_pacs.csv`` (MS-CXR columns; an edited box's row holds its position *before* the
edit, which the SR keeps), then the decisions are replayed: accepted → accept, edited → the box moved to where the
reviewer put it, rejected → reject with the SR's reason, added → a new box. Each decision is stamped with the SR's
reviewer; the times are those of the restore (the SR keeps the original ones). Reviewing on and exporting as DICOM SR
(``elvis review export --format dicom-sr``, File → Export reviewed boxes as DICOM SR…) writes the result back.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from elvis_core.errors import ElvisError

CSV_NAME = "elvis_review_from_pacs.csv"
_COLUMNS = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height"]


@dataclass
class RestoreResult:
    annotations: Path
    n_srs: int = 0
    n_decisions: int = 0
    notes: List[str] = field(default_factory=list)


def _images_by_sop(folder: Path) -> Dict[str, Tuple[str, int, int]]:
    from elvis_core.io.studies import scan_folder

    out: Dict[str, Tuple[str, int, int]] = {}
    for st in scan_folder(folder).studies:
        for ref in st.images:
            out[ref.sop_instance_uid] = (ref.path, ref.cols, ref.rows)
    return out


def review_from_study(folder: os.PathLike | str, annotations: Optional[os.PathLike | str] = None,
                      reviewer: str = "") -> RestoreResult:
    """Build the annotation file of a fetched study from its review SRs and restore their decisions into its review
    file (created beside it). ElvisError when the folder holds no review SR of its own images."""
    from elvis_core.atomic import atomic_write_bytes
    from elvis_core.dicom_results.sr_read import find_review_srs, latest_per_image
    from elvis_core.review.session import ReviewSession

    folder = Path(folder)
    if not folder.is_dir():
        raise ElvisError("study folder not found", folder)
    srs = find_review_srs(folder)
    if not srs:
        raise ElvisError("no ELVIS review SR in this study (fetch it with `elvis pacs fetch`; export one with "
                         "`elvis review export --format dicom-sr`)", folder)
    images = _images_by_sop(folder)
    rows: List[Dict[str, str]] = []
    plan = []  # (item key parts, SrBox, row index or None)
    res = RestoreResult(annotations=Path(annotations) if annotations else folder / CSV_NAME)
    for sop, sr in (latest_per_image(srs) or {}).items():
        if sop not in images:
            res.notes.append(f"{Path(sr.path).name}: its image ({sop}) is not in this folder; skipped")
            continue
        path, cols, rows_px = images[sop]
        rel = os.path.relpath(path, folder)
        res.n_srs += 1
        phrases_with_rows = set()
        for b in sr.boxes:
            if b.decision == "added":
                continue
            x, y, w, h = b.original if (b.decision == "edited" and b.original) else (b.x, b.y, b.w, b.h)
            rows.append({"dicom_id": Path(path).stem, "category_name": b.category, "label_text": b.phrase,
                         "path": rel, "x": f"{x:g}", "y": f"{y:g}", "w": f"{w:g}", "h": f"{h:g}",
                         "image_width": str(cols), "image_height": str(rows_px)})
            phrases_with_rows.add(b.phrase)
        for b in sr.boxes:
            if b.decision == "added" and b.phrase not in phrases_with_rows:
                # a phrase known only from added boxes: the box becomes the phrase's own (accepted) box
                rows.append({"dicom_id": Path(path).stem, "category_name": b.category, "label_text": b.phrase,
                             "path": rel, "x": f"{b.x:g}", "y": f"{b.y:g}", "w": f"{b.w:g}", "h": f"{b.h:g}",
                             "image_width": str(cols), "image_height": str(rows_px)})
                res.notes.append(f"{rel}: {b.phrase!r} had only added boxes: restored as accepted boxes")
                b = type(b)(**{**b.__dict__, "decision": "accepted"})
                phrases_with_rows.add(b.phrase)
            plan.append((rel, b))
    if not rows:
        raise ElvisError("the review SRs of this study refer to no image in it", folder)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(res.annotations, buf.getvalue().encode("utf-8"))
    s = ReviewSession.open(res.annotations, folder, reviewer=reviewer)
    try:
        res.n_decisions = _replay(s, plan, reviewer)
    finally:
        s.close()
    return res


def _replay(s, plan, reviewer: str) -> int:
    """Apply the SR decisions through the session (each one durable in the review file before the next)."""
    from elvis_core.review.importer import item_key
    from elvis_core.review.model import UNREVIEWED

    n = 0
    used: Dict[str, set] = {}
    for rel, b in plan:
        key = item_key(rel, b.phrase)
        it = s.go_to(key)
        if it is None:
            continue
        s.reviewer = b.reviewer or reviewer
        if b.decision == "added":
            s.add_box((b.x, b.y, b.w, b.h))
            n += 1
            continue
        want = b.original if (b.decision == "edited" and b.original) else (b.x, b.y, b.w, b.h)
        box = next((x for x in it.boxes if x.box_id not in used.setdefault(key, set()) and x.status == UNREVIEWED
                    and all(abs(p - q) < 0.01 for p, q in zip(x.xywh, want))), None)
        if box is None:
            continue
        used[key].add(box.box_id)
        if b.decision == "accepted":
            s.accept(box.box_id)
        elif b.decision == "rejected":
            s.reject(b.reason or "rejected (no reason in the SR)", box.box_id)
        elif b.decision == "edited":
            s.edit_box(box.box_id, (b.x, b.y, b.w, b.h))
        n += 1
    s.reviewer = reviewer
    return n
