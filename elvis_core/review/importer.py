"""Import phrase–box annotations for review: MS-CXR CSV (v1.0.0 / v1.1.0) and MS-CXR / COCO JSON.

A phrase (review item) is the set of rows sharing (path, label_text). Boxes are original-image pixels (x, y, w, h).

Bad input never stops the import of the rest: each bad row or phrase is listed as an `ImportProblem` with its line
number and the reason (non-numeric / negative / zero-size box, box outside the image, missing image file, ...).
A file that cannot be used at all (missing, not CSV/JSON, required columns missing) raises `AnnotationError`.

Image size: the annotation's image_width/height are compared with the image's header. When they differ the boxes are
rescaled to the image only if ``rescale=True`` (the user agreed); otherwise they are kept and the item carries a
warning (`ImportResult.size_mismatch_keys` lists them so a UI can ask and re-import).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from elvis_core.errors import AnnotationError, ElvisError
from elvis_core.review.imaging import image_size
from elvis_core.review.model import ReviewBox, ReviewItem

CSV_REQUIRED = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")
CSV_OPTIONAL = ("split",)


@dataclass
class ImportProblem:
    file: str
    #: 1-based line of the CSV (header = line 1) or annotation index in JSON; None for phrase-level problems
    line: Optional[int]
    reason: str
    #: "skipped" (the row / phrase is not in the queue) or "warning" (kept, with a caveat)
    severity: str = "skipped"
    key: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.severity}: {self.reason}"


@dataclass
class ImportResult:
    items: List[ReviewItem] = field(default_factory=list)
    problems: List[ImportProblem] = field(default_factory=list)
    #: keys of items whose annotation image size differs from the image's
    size_mismatch_keys: List[str] = field(default_factory=list)
    source: str = ""
    format: str = ""  # "ms-cxr-csv" | "coco-json"
    columns: List[str] = field(default_factory=list)


def item_key(path: str, label_text: str) -> str:
    """Stable identity of a phrase: its image path and text."""
    return f"{path}::{label_text}"


from elvis_core.io.paths import resolve_image  # noqa: E402,F401  (the one resolver; re-exported here)


def _parse_box(raw: Dict[str, str]) -> Tuple[Tuple[float, float, float, float], Optional[str]]:
    vals = []
    for k in ("x", "y", "w", "h"):
        s = (raw.get(k) or "").strip()
        try:
            v = float(s)
        except ValueError:
            return (0, 0, 0, 0), f"box {k}={s[:30]!r} is not a number"
        if not math.isfinite(v) or abs(v) > 1e7:
            return (0, 0, 0, 0), f"box {k}={s[:30]!r} is not finite or beyond +-1e7 pixels"
        vals.append(v)
    x, y, w, h = vals
    if x < 0 or y < 0:
        return (0, 0, 0, 0), f"box has a negative corner (x={x:g}, y={y:g})"
    if w <= 0 or h <= 0:
        return (0, 0, 0, 0), f"box has a non-positive size (w={w:g}, h={h:g})"
    return (x, y, w, h), None


def _parse_size(raw: Dict[str, str]) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
    try:
        w = float(raw.get("image_width", ""))
        h = float(raw.get("image_height", ""))
    except (TypeError, ValueError):
        return None, f"image_width/image_height ({raw.get('image_width')!r}, {raw.get('image_height')!r}) not numbers"
    if not (math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        return None, f"image_width/image_height must be positive, got ({w:g}, {h:g})"
    if not (1 <= round(w) <= 65535 and 1 <= round(h) <= 65535):
        return None, f"image_width/image_height must be 1..65535 pixels, got ({w:g}, {h:g})"
    return (int(round(w)), int(round(h))), None


@dataclass
class _Row:
    line: int
    raw: Dict[str, str]
    box: Tuple[float, float, float, float]
    size: Tuple[int, int]


def _build_items(
    groups: Dict[str, List[_Row]],
    meta: Dict[str, Dict[str, str]],
    images_root: Path,
    rescale: bool,
    src: str,
    result: ImportResult,
    allow_outside: bool = False,
) -> None:
    size_cache: Dict[str, Tuple[int, int]] = {}
    for key, rows in groups.items():
        m = meta[key]
        lines = ", ".join(str(r.line) for r in rows)
        try:
            img = resolve_image(images_root, m["path"], allow_outside)
        except AnnotationError as err:
            result.problems.append(ImportProblem(src, rows[0].line, f"{err.problem} (lines {lines})", key=key))
            continue
        if img is None:
            result.problems.append(
                ImportProblem(src, rows[0].line, f"image not found under {images_root}: {m['path']} (lines {lines})",
                              key=key)
            )
            continue
        try:
            if str(img) not in size_cache:
                size_cache[str(img)] = image_size(img)
            iw, ih = size_cache[str(img)]
        except ElvisError as err:
            result.problems.append(ImportProblem(src, rows[0].line, f"image unreadable: {err.problem} (lines {lines})",
                                                 key=key))
            continue
        fw, fh = rows[0].size
        item = ReviewItem(
            key=key,
            dicom_id=m["dicom_id"],
            category=m["category"],
            label_text=m["label_text"],
            path=m["path"],
            image_path=str(img),
            image_width=iw,
            image_height=ih,
            split=m.get("split", ""),
        )
        sx = sy = 1.0
        if (fw, fh) != (iw, ih):
            item.file_size = (fw, fh)
            result.size_mismatch_keys.append(key)
            if rescale:
                sx, sy = iw / max(fw, 1), ih / max(fh, 1)
                item.rescaled = True
                item.warnings.append(f"boxes rescaled from {fw}x{fh} (annotation) to {iw}x{ih} (image)")
            else:
                msg = f"image is {iw}x{ih} but the annotation says {fw}x{fh}; boxes NOT rescaled (rescale not agreed)"
                item.warnings.append(msg)
                result.problems.append(ImportProblem(src, rows[0].line, msg, severity="warning", key=key))
        # bounds are checked in the annotation's own frame (file size), so both choices agree on what is "outside"
        bw, bh = (fw, fh)
        for r in rows:
            x, y, w, h = r.box
            if x < 0 or y < 0:
                result.problems.append(ImportProblem(src, r.line, f"box has a negative corner (x={x:g}, y={y:g})",
                                                     key=key))
                continue
            x0, y0, x1, y1 = x, y, x + w, y + h
            if x0 >= bw or y0 >= bh:
                result.problems.append(
                    ImportProblem(src, r.line, f"box ({x:g}, {y:g}, {w:g}, {h:g}) lies outside the {bw}x{bh} image",
                                  key=key)
                )
                continue
            if x1 > bw + 0.5 or y1 > bh + 0.5:
                x1, y1 = min(x1, bw), min(y1, bh)
                result.problems.append(
                    ImportProblem(src, r.line, f"box ({x:g}, {y:g}, {w:g}, {h:g}) extends past the {bw}x{bh} image; "
                                  "clipped", severity="warning", key=key)
                )
            box = (x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy)
            item.boxes.append(ReviewBox(box_id=f"b{len(item.boxes)}", x=box[0], y=box[1], w=box[2], h=box[3],
                                        original=box))
            item.rows.append(dict(r.raw))
        if not item.boxes:  # every row was listed above with its reason
            continue
        result.items.append(item)


def read_csv_for_review(path: str | Path, images_root: str | Path, rescale: bool = False,
                        allow_outside: bool = False) -> ImportResult:
    """MS-CXR CSV via :func:`elvis_core.io.annotations.read_ms_cxr_csv` (column checks, per-row errors), then the
    review's own checks against the images (negative corner, outside the image, missing/unreadable image)."""
    from elvis_core.io.annotations import read_ms_cxr_csv

    aset = read_ms_cxr_csv(path)
    src = str(path)
    result = ImportResult(source=src, format=f"ms-cxr-csv {aset.version}",
                          columns=list(CSV_REQUIRED) + (["split"] if aset.version == "v1.1.0" else []))
    result.problems.extend(ImportProblem(src, line, msg) for line, msg in aset.errors)
    groups: Dict[str, List[_Row]] = {}
    meta: Dict[str, Dict[str, str]] = {}
    for ph in aset.phrases:
        key = item_key(ph.path, ph.label_text)
        rows = groups.setdefault(key, [])
        for b, line in zip(ph.boxes, ph.rows):
            rows.append(_Row(line, {}, (b.x, b.y, b.w, b.h), (ph.image_width, ph.image_height)))
        meta[key] = {"dicom_id": ph.dicom_id, "category": ph.category, "label_text": ph.label_text,
                     "path": ph.path, "split": ph.split or ""}
    _build_items(groups, meta, Path(images_root), rescale, src, result, allow_outside)
    return result


def read_json_for_review(path: str | Path, images_root: str | Path, rescale: bool = False,
                         allow_outside: bool = False) -> ImportResult:
    """MS-CXR / COCO JSON: ``images`` (id, file_name|path, width, height[, dicom_id, split]), ``annotations``
    (image_id, bbox [x, y, w, h], category_id, label_text|caption|phrase[, split]), ``categories`` (id, name)."""
    from elvis_core.io.annotations import check_annotation_size

    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise AnnotationError("annotation file not found" if not path.exists() else "is not a file", path)
    check_annotation_size(path)
    from elvis_core.io.limits import limits
    from elvis_core.io.safe_json import read_json_file

    # depth checked before parsing; a 100 000-digit number, bad UTF-8, bad JSON: one clean line
    data = read_json_file(path, AnnotationError, max_bytes=limits().max_annotation_bytes)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise AnnotationError("not COCO-style JSON: needs 'images' and 'annotations' lists", path)
    result = ImportResult(source=src, format="coco-json", columns=list(CSV_REQUIRED) + ["split"])
    cats: Dict = {}
    raw_cats = data.get("categories", [])
    for i, c in enumerate(raw_cats if isinstance(raw_cats, list) else []):
        if isinstance(c, dict) and _hashable_id(c.get("id")):
            cats[c.get("id")] = _text(c.get("name", ""))
        else:
            result.problems.append(ImportProblem(src, None, f"categories[{i}]: not an object with a number or text "
                                                 "'id': ignored", severity="warning"))
    images = {}
    for i, im in enumerate(data["images"]):
        if isinstance(im, dict) and _hashable_id(im.get("id")):
            images[im["id"]] = im
        else:
            result.problems.append(ImportProblem(src, None, f"images[{i}]: not an object with a number or text "
                                                 "'id': ignored", severity="warning"))
    groups: Dict[str, List[_Row]] = {}
    meta: Dict[str, Dict[str, str]] = {}
    for i, ann in enumerate(data["annotations"]):
        line = i  # index in the annotations list
        if not isinstance(ann, dict):
            result.problems.append(ImportProblem(src, line, "annotation is not an object"))
            continue
        image_id = ann.get("image_id")
        im = images.get(image_id) if _hashable_id(image_id) else None
        if im is None:
            result.problems.append(ImportProblem(src, line, f"image_id {_text(image_id)[:40]} not in 'images'"))
            continue
        rel = _text(im.get("path") or im.get("file_name") or "").strip()
        text = _text(ann.get("label_text") or ann.get("caption") or ann.get("phrase") or "").strip()
        if not rel or not text:
            result.problems.append(ImportProblem(src, line, "annotation without image path or label_text"))
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            result.problems.append(ImportProblem(src, line, f"bbox must be [x, y, w, h], got {_text(bbox)[:60]}"))
            continue
        cid = ann.get("category_id")
        raw = {
            "dicom_id": _text(im.get("dicom_id") or Path(rel).stem),
            "category_name": cats.get(cid, _text(cid if cid is not None else "")) if _hashable_id(cid)
            else _text(cid)[:40],
            "label_text": text,
            "path": rel,
            "x": _num_text(bbox[0]) or _text(bbox[0])[:30],
            "y": _num_text(bbox[1]) or _text(bbox[1])[:30],
            "w": _num_text(bbox[2]) or _text(bbox[2])[:30],
            "h": _num_text(bbox[3]) or _text(bbox[3])[:30],
            "image_width": _num_text(im.get("width", "")),
            "image_height": _num_text(im.get("height", "")),
            "split": _text(ann.get("split") or im.get("split") or ""),
        }
        key = item_key(rel, text)
        box, err = _parse_box(raw)
        if err:
            result.problems.append(ImportProblem(src, line, err, key=key))
            continue
        size, err = _parse_size(raw)
        if err:
            result.problems.append(ImportProblem(src, line, err, key=key))
            continue
        groups.setdefault(key, []).append(_Row(line, raw, box, size))
        meta.setdefault(key, {"dicom_id": raw["dicom_id"], "category": raw["category_name"], "label_text": text,
                              "path": rel, "split": raw["split"]})
    _build_items(groups, meta, Path(images_root), rescale, src, result, allow_outside)
    return result


def _hashable_id(v) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool) or (isinstance(v, float) and math.isfinite(v))


def _text(v) -> str:
    """A JSON value as short text (a list or object where text belongs is shown, not trusted)."""
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    try:
        return json.dumps(v)[:200]
    except (TypeError, ValueError, RecursionError):
        return type(v).__name__


def _num_text(v) -> str:
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (v if isinstance(v, str) else "")


def import_annotations(path: str | Path, images_root: str | Path, rescale: bool = False,
                       allow_outside: bool = False) -> ImportResult:
    """Read an MS-CXR CSV or MS-CXR/COCO JSON for review (by suffix; ``.json`` → JSON, anything else → CSV).
    Annotation paths must stay under ``images_root`` unless ``allow_outside`` (each one that does not is listed)."""
    path = Path(path)
    if not Path(images_root).is_dir():
        raise AnnotationError("images root is not a folder", images_root)
    if path.suffix.lower() == ".json":
        return read_json_for_review(path, images_root, rescale, allow_outside)
    return read_csv_for_review(path, images_root, rescale, allow_outside)
