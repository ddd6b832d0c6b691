"""Export of a review: MS-CXR CSV with review columns, COCO JSON, and a per-category summary. Atomic writes.

CSV: the MS-CXR columns (``dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height, split``)
with the **current** box in image pixels (image_width/height = the image's size, so rescaled boxes are consistent),
plus ``review_status, reviewer, reviewed_at, reject_reason, orig_x, orig_y, orig_w, orig_h, iou_original``
(orig_* empty for added boxes). One row per box, rejected boxes included (status ``rejected``).

COCO JSON: ``images`` / ``categories`` / ``annotations`` (bbox [x, y, w, h], area, label_text, review fields);
rejected boxes are left out unless ``include_rejected=True``.

Summary (JSON): per category and overall: phrases, reviewed, accepted, edited, rejected (phrase statuses), boxes by
status, ``mean_iou_original`` (mean IoU between original and current box over edited boxes) and
``mean_iou_change`` (= 1 - that; 0 when no box moved).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence

from elvis_core.atomic import atomic_write_bytes as _atomic_write_bytes
from elvis_core.errors import ElvisError
from elvis_core.review.figures import box_iou
from elvis_core.review.model import (
    BOX_STATUSES,
    EDITED,
    ITEM_ACCEPTED,
    ITEM_EDITED,
    ITEM_REJECTED,
    ITEM_UNREVIEWED,
    REJECTED,
    ReviewItem,
)

MSCXR_COLUMNS = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width",
                 "image_height", "split"]
REVIEW_COLUMNS = ["review_status", "reviewer", "reviewed_at", "reject_reason", "orig_x", "orig_y", "orig_w",
                  "orig_h", "iou_original"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically (see :mod:`elvis_core.atomic`), creating the folder; errors name the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _atomic_write_bytes(path, data)
    except OSError as err:
        raise ElvisError(f"cannot write export ({err.strerror or err})", path) from None


def _fmt(v: float) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def export_rows(items: Iterable[ReviewItem]) -> List[Dict[str, str]]:
    rows = []
    for it in items:
        for b in it.boxes:
            x, y, w, h = b.xywh
            r = {
                "dicom_id": it.dicom_id,
                "category_name": it.category,
                "label_text": it.label_text,
                "path": it.path,
                "x": _fmt(x),
                "y": _fmt(y),
                "w": _fmt(w),
                "h": _fmt(h),
                "image_width": str(it.image_width),
                "image_height": str(it.image_height),
                "split": it.split,
                "review_status": b.status,
                "reviewer": b.reviewer,
                "reviewed_at": b.timestamp,
                "reject_reason": b.reason,
            }
            if b.original is not None:
                ox, oy, ow, oh = b.original
                r.update(orig_x=_fmt(ox), orig_y=_fmt(oy), orig_w=_fmt(ow), orig_h=_fmt(oh),
                         iou_original=f"{box_iou(b.original, b.xywh):.4f}")
            else:
                r.update(orig_x="", orig_y="", orig_w="", orig_h="", iou_original="")
            rows.append(r)
    return rows


def export_csv(items: Sequence[ReviewItem], path: str | os.PathLike) -> Path:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=MSCXR_COLUMNS + REVIEW_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(export_rows(items))
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def coco_dict(items: Sequence[ReviewItem], include_rejected: bool = False) -> Dict[str, Any]:
    images: Dict[str, Dict[str, Any]] = {}
    cats: Dict[str, int] = {}
    anns: List[Dict[str, Any]] = []
    for it in items:
        if it.path not in images:
            images[it.path] = {"id": len(images) + 1, "file_name": it.path, "dicom_id": it.dicom_id,
                               "width": it.image_width, "height": it.image_height, "split": it.split}
        if it.category not in cats:
            cats[it.category] = len(cats) + 1
        for b in it.boxes:
            if b.status == REJECTED and not include_rejected:
                continue
            x, y, w, h = b.xywh
            anns.append({
                "id": len(anns) + 1,
                "image_id": images[it.path]["id"],
                "category_id": cats[it.category],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "label_text": it.label_text,
                "split": it.split,
                "review_status": b.status,
                "reviewer": b.reviewer,
                "reviewed_at": b.timestamp,
                "reject_reason": b.reason,
                "original_bbox": None if b.original is None else [float(v) for v in b.original],
            })
    return {
        "info": {"description": "ELVIS Viewer box review export"},
        "images": list(images.values()),
        "categories": [{"id": i, "name": n, "supercategory": "finding"} for n, i in cats.items()],
        "annotations": anns,
    }


def export_coco(items: Sequence[ReviewItem], path: str | os.PathLike, include_rejected: bool = False) -> Path:
    data = json.dumps(coco_dict(items, include_rejected), indent=1).encode("utf-8")
    return atomic_write_bytes(path, data)


def _summarize_group(items: Sequence[ReviewItem]) -> Dict[str, Any]:
    st = [it.status for it in items]
    ious = [box_iou(b.original, b.xywh) for it in items for b in it.boxes
            if b.status == EDITED and b.original is not None]
    mean_iou = sum(ious) / len(ious) if ious else None
    return {
        "phrases": len(items),
        "reviewed": sum(1 for s in st if s != ITEM_UNREVIEWED),
        "accepted": st.count(ITEM_ACCEPTED),
        "edited": st.count(ITEM_EDITED),
        "rejected": st.count(ITEM_REJECTED),
        "unreviewed": st.count(ITEM_UNREVIEWED),
        "boxes": {s: sum(1 for it in items for b in it.boxes if b.status == s) for s in BOX_STATUSES},
        "edited_boxes": len(ious),
        "mean_iou_original": mean_iou,
        "mean_iou_change": None if mean_iou is None else 1.0 - mean_iou,
    }


def summarize(items: Sequence[ReviewItem]) -> Dict[str, Any]:
    by_cat: Dict[str, List[ReviewItem]] = {}
    for it in items:
        by_cat.setdefault(it.category, []).append(it)
    return {"overall": _summarize_group(items),
            "categories": {c: _summarize_group(v) for c, v in sorted(by_cat.items())}}


def summary_table(summary: Dict[str, Any]) -> str:
    """Plain-text table of a summary (for the CLI / the viewer's status)."""
    head = f"{'category':<24}{'phrases':>8}{'reviewed':>9}{'accepted':>9}{'edited':>8}{'rejected':>9}{'ΔIoU':>8}"
    lines = [head]
    rows = list(summary["categories"].items()) + [("ALL", summary["overall"])]
    for name, g in rows:
        d = g["mean_iou_change"]
        lines.append(f"{name[:23]:<24}{g['phrases']:>8}{g['reviewed']:>9}{g['accepted']:>9}{g['edited']:>8}"
                     f"{g['rejected']:>9}{'—' if d is None else f'{d:.3f}':>8}")
    return "\n".join(lines)


def export_summary(items: Sequence[ReviewItem], path: str | os.PathLike) -> Path:
    return atomic_write_bytes(path, json.dumps(summarize(items), indent=1).encode("utf-8"))


def export_all(items: Sequence[ReviewItem], out_dir: str | os.PathLike, stem: str = "review") -> Dict[str, Path]:
    """Write ``<stem>.csv``, ``<stem>.coco.json`` and ``<stem>.summary.json`` into ``out_dir``."""
    out = Path(out_dir)
    return {
        "csv": export_csv(items, out / f"{stem}.csv"),
        "coco": export_coco(items, out / f"{stem}.coco.json"),
        "summary": export_summary(items, out / f"{stem}.summary.json"),
    }
