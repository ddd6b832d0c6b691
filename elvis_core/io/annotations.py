"""MS-CXR phrase-grounding annotations (CSV, v1.0.0 and v1.1.0 columns).

One CSV row is one box; a *phrase* is the group of rows sharing ``(path, label_text)``, in file order.
Columns (DESIGN.md): ``dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height[, split]``
(``split`` is present in v1.1.0 only). Boxes are original-image pixels in continuous coordinates, x right, y down.

Bad rows (non-numeric or NaN coordinates, negative or zero width/height, empty path or label) are skipped and listed
in :attr:`AnnotationSet.errors` with their line number; missing columns make the whole file unreadable
(:class:`AnnotationError` naming the file and the columns).

Writing goes through :func:`write_ms_cxr_csv`, which writes a temporary file, fsyncs it and renames it over the target
so an interrupted write never leaves a half-written CSV.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from elvis_core.atomic import atomic_write_text
from elvis_core.errors import AnnotationError

#: required columns of every MS-CXR version
REQUIRED_COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width",
                    "image_height")
#: v1.1.0 adds the dataset split
V110_COLUMNS = REQUIRED_COLUMNS + ("split",)

_PATIENT_RE = re.compile(r"(?:^|/)files/p\d{2}/(p\d+)/")
#: largest image side an annotation may claim (DICOM Rows/Columns are 16-bit)
MAX_IMAGE_SIDE = 65535
#: largest box coordinate accepted (far outside any image, small enough for every float computation)
MAX_COORDINATE = 1e7


def check_annotation_size(path: os.PathLike | str) -> None:
    """Refuse an annotation file larger than ``limits().max_annotation_bytes`` before reading it."""
    from elvis_core.io.limits import limits, mib
    from elvis_core.io.paths import require_regular_file

    n = require_regular_file(path, AnnotationError, "annotation file").st_size  # no FIFO, no device
    if n > limits().max_annotation_bytes:
        raise AnnotationError(f"is {mib(n)}, larger than the annotation file limit of "
                              f"{mib(limits().max_annotation_bytes)} (ELVIS_MAX_ANNOTATION_MB)", path)


from elvis_core.io.paths import OutsideImagesError  # noqa: E402,F401  (re-exported)


def resolve_annotation_image(images_root: os.PathLike | str, rel: str, allow_outside: bool = False,
                             suffixes: Sequence[str] = (".dcm", ".jpg", ".jpeg", ".png")) -> Optional[Path]:
    """:func:`elvis_core.io.paths.resolve_image` (the one resolver, with the ``--images`` containment check)."""
    from elvis_core.io.paths import resolve_image

    return resolve_image(images_root, rel, allow_outside=allow_outside, suffixes=tuple(suffixes))


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in original-image pixels (continuous coordinates: x right, y down)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def x2(self) -> float:
        return self.x + self.w

    @property
    def y2(self) -> float:
        return self.y + self.h

    @property
    def area(self) -> float:
        return max(0.0, self.w) * max(0.0, self.h)

    def scaled(self, sx: float, sy: float) -> "Box":
        return Box(self.x * sx, self.y * sy, self.w * sx, self.h * sy)


@dataclass
class Phrase:
    """All boxes of one phrase on one image."""

    key: Tuple[str, str]  # (path, label_text)
    dicom_id: str
    category: str
    label_text: str
    path: str
    boxes: List[Box]
    image_width: int
    image_height: int
    split: Optional[str] = None
    #: 1-based CSV line numbers (header = line 1) of the rows that made this phrase
    rows: List[int] = field(default_factory=list)


@dataclass
class AnnotationSet:
    phrases: List[Phrase]
    #: (line number, message) of every skipped row
    errors: List[Tuple[int, str]]
    source_path: Optional[str]
    version: str  # "v1.0.0" | "v1.1.0"

    def __len__(self) -> int:
        return len(self.phrases)

    def categories(self) -> List[str]:
        seen: Dict[str, None] = {}
        for p in self.phrases:
            seen.setdefault(p.category, None)
        return list(seen)

    def splits(self) -> List[str]:
        seen: Dict[str, None] = {}
        for p in self.phrases:
            if p.split is not None:
                seen.setdefault(p.split, None)
        return list(seen)

    def filter_split(self, split: Optional[str]) -> "AnnotationSet":
        """The phrases of one split (``None`` = all). Filtering a v1.0.0 file (no split column) is an error."""
        if split is None:
            return self
        if self.version != "v1.1.0":
            raise AnnotationError(f"has no 'split' column (MS-CXR {self.version}); cannot select split {split!r}",
                                  self.source_path)
        return AnnotationSet([p for p in self.phrases if p.split == split], list(self.errors), self.source_path,
                             self.version)

    def for_path(self, path: str) -> List[Phrase]:
        """Phrases whose ``path`` equals or ends with ``path`` (normalised to '/')."""
        target = str(path).replace(os.sep, "/")
        return [p for p in self.phrases
                if p.path == target or target.endswith("/" + p.path) or p.path.endswith("/" + target)]


def _parse_float(value: str, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"column {name!r} is not a number: {value[:40]!r}") from None
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"column {name!r} is {value!r}")
    return v


def read_ms_cxr_csv(path: os.PathLike | str) -> AnnotationSet:
    """Read an MS-CXR CSV (v1.0.0 or v1.1.0). See the module docstring for what is checked."""
    p = Path(path)
    if not p.exists():
        raise AnnotationError("annotation file not found", p)
    if p.is_dir():
        raise AnnotationError("is a folder, expected an MS-CXR CSV file", p)
    from elvis_core.io.paths import require_regular_file

    require_regular_file(p, AnnotationError, "annotation file")
    check_annotation_size(p)
    try:
        with open(p, "r", encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise AnnotationError("is not a UTF-8 text CSV", p) from None
    except OSError as err:
        raise AnnotationError(f"cannot be read ({err.strerror})", p) from None
    if "\x00" in text:
        raise AnnotationError("is binary, expected an MS-CXR CSV file", p)
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = next(reader)
    except StopIteration:
        raise AnnotationError("is empty, expected an MS-CXR CSV with a header row", p) from None
    except csv.Error as err:
        raise AnnotationError(f"header row is not valid CSV ({err})", p) from None
    header = [h.strip() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise AnnotationError(f"missing MS-CXR column(s): {', '.join(missing)} (found: {', '.join(header)})", p)
    version = "v1.1.0" if "split" in header else "v1.0.0"
    idx = {name: header.index(name) for name in header}

    phrases: Dict[Tuple[str, str], Phrase] = {}
    errors: List[Tuple[int, str]] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:  # e.g. a field longer than csv.field_size_limit(): that row is skipped
            errors.append((reader.line_num, f"not valid CSV ({err})"))
            continue
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            errors.append((line, f"has {len(row)} fields, expected {len(header)}"))
            continue
        get = {name: row[i].strip() for name, i in idx.items()}
        try:
            x, y, w, h = (_parse_float(get[c], c) for c in ("x", "y", "w", "h"))
            iw, ih = (_parse_float(get[c], c) for c in ("image_width", "image_height"))
            if w <= 0 or h <= 0:
                raise ValueError(f"box width/height must be > 0, got w={get['w']} h={get['h']}")
            if not (1 <= round(iw) <= MAX_IMAGE_SIDE and 1 <= round(ih) <= MAX_IMAGE_SIDE):
                raise ValueError(f"image_width/image_height must be 1..{MAX_IMAGE_SIDE} pixels, got "
                                 f"{get['image_width'][:20]}x{get['image_height'][:20]}")
            for c, v in (("x", x), ("y", y), ("w", w), ("h", h)):
                if abs(v) > MAX_COORDINATE:
                    raise ValueError(f"column {c!r} is {get[c][:20]}: beyond +-{MAX_COORDINATE:g} pixels")
            if not get["path"]:
                raise ValueError("empty 'path'")
            if not get["label_text"]:
                raise ValueError("empty 'label_text'")
        except ValueError as err:
            errors.append((line, str(err)))
            continue
        img_path = get["path"].replace("\\", "/")
        key = (img_path, get["label_text"])
        ph = phrases.get(key)
        if ph is None:
            ph = Phrase(key=key, dicom_id=get["dicom_id"], category=get["category_name"], label_text=get["label_text"],
                        path=img_path, boxes=[], image_width=int(round(iw)), image_height=int(round(ih)),
                        split=(get.get("split") or None) if version == "v1.1.0" else None)
            phrases[key] = ph
        elif (int(round(iw)), int(round(ih))) != (ph.image_width, ph.image_height):
            errors.append((line, f"image size {int(iw)}x{int(ih)} differs from the phrase's first row "
                                 f"(line {ph.rows[0]}: {ph.image_width}x{ph.image_height})"))
            continue
        ph.boxes.append(Box(x, y, w, h))
        ph.rows.append(line)
    return AnnotationSet(list(phrases.values()), errors, str(p), version)


def rescale_boxes(phrase: Phrase, image_shape: Tuple[int, int]) -> Tuple[List[Box], Optional[str]]:
    """The phrase's boxes in the pixels of an image of ``image_shape`` = (rows, cols).

    When the CSV's image_width/image_height differ from the image's Columns/Rows (e.g. a JPG resized from the DICOM)
    the boxes are scaled per axis and a note says so; otherwise the boxes are returned unchanged with ``None``.
    """
    rows, cols = int(image_shape[0]), int(image_shape[1])
    if (cols, rows) == (phrase.image_width, phrase.image_height):
        return list(phrase.boxes), None
    sx = cols / float(phrase.image_width)
    sy = rows / float(phrase.image_height)
    note = (f"annotation image size {phrase.image_width}x{phrase.image_height} differs from the image's "
            f"{cols}x{rows}; boxes rescaled by ({sx:.4g}, {sy:.4g})")
    return [b.scaled(sx, sy) for b in phrase.boxes], note


def patient_id_from_path(path: str) -> Optional[str]:
    """``pXXXXXXXX`` from a MIMIC-CXR path ``files/pXX/pXXXXXXXX/sYYYYYYYY/...``, else None."""
    m = _PATIENT_RE.search("/" + str(path).replace("\\", "/").lstrip("/"))
    return m.group(1) if m else None


def patient_ids(aset: AnnotationSet) -> Set[str]:
    """MIMIC patient folder ids (``pXXXXXXXX``) of all phrases (e.g. to keep them out of a training set)."""
    out: Set[str] = set()
    for ph in aset.phrases:
        pid = patient_id_from_path(ph.path)
        if pid:
            out.add(pid)
    return out


def phrase_rows(phrases: Iterable[Phrase], with_split: bool = True) -> List[Dict[str, Any]]:
    """CSV row dicts (one per box) for :func:`write_ms_cxr_csv`."""
    rows: List[Dict[str, Any]] = []
    for ph in phrases:
        for b in ph.boxes:
            r: Dict[str, Any] = {"dicom_id": ph.dicom_id, "category_name": ph.category, "label_text": ph.label_text,
                                 "path": ph.path, "x": _fmt(b.x), "y": _fmt(b.y), "w": _fmt(b.w), "h": _fmt(b.h),
                                 "image_width": ph.image_width, "image_height": ph.image_height}
            if with_split:
                r["split"] = ph.split or ""
            rows.append(r)
    return rows


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_ms_cxr_csv(path: os.PathLike | str, rows: Sequence[Mapping[str, Any]] | Iterable[Phrase],
                     columns: Optional[Sequence[str]] = None) -> Path:
    """Write rows atomically (temp file in the same folder, fsync, rename).

    ``rows`` are dicts keyed by column name, or :class:`Phrase` objects (expanded to one row per box). Columns default
    to the MS-CXR v1.1.0 order (``split`` is dropped when no row has one), then any extra keys in first-seen order.
    """
    out = Path(path)
    rows = list(rows)
    if rows and isinstance(rows[0], Phrase):
        rows = phrase_rows(rows)  # type: ignore[arg-type]
    if columns is None:
        has_split = any(str(r.get("split", "") or "") for r in rows)
        cols: List[str] = list(V110_COLUMNS if has_split else REQUIRED_COLUMNS)
        for r in rows:
            for k in r:
                if k not in cols and not (k == "split" and not has_split):
                    cols.append(k)
    else:
        cols = list(columns)
    if not out.parent.exists():
        raise AnnotationError("folder does not exist", out.parent)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    try:
        atomic_write_text(out, buf.getvalue())
    except OSError as err:
        raise AnnotationError(f"cannot write ({err.strerror or err})", out) from None
    return out
