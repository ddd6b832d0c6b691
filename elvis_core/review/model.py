"""Review data model: phrase items with boxes, each box carrying a review status.

Coordinates are original-image pixels, x right, y down, (x, y, w, h) as in MS-CXR (DESIGN.md, step 5).
Everything here is plain data that round-trips through JSON (``to_dict`` / ``from_dict``), which is what the
review store persists.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

#: box statuses, in the order the UI lists them
UNREVIEWED = "unreviewed"
ACCEPTED = "accepted"
EDITED = "edited"
REJECTED = "rejected"
ADDED = "added"
BOX_STATUSES = (UNREVIEWED, ACCEPTED, EDITED, REJECTED, ADDED)

#: item (phrase) statuses used by the queue filter
ITEM_UNREVIEWED = "unreviewed"
ITEM_ACCEPTED = "accepted"
ITEM_EDITED = "edited"
ITEM_REJECTED = "rejected"
ITEM_STATUSES = (ITEM_UNREVIEWED, ITEM_ACCEPTED, ITEM_EDITED, ITEM_REJECTED)

BoxTuple = Tuple[float, float, float, float]


def utc_now_iso() -> str:
    """UTC timestamp, ISO 8601 with seconds and a 'Z'-free '+00:00' offset."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class ReviewBox:
    """One box of a phrase. ``original`` is the box as imported (None for boxes the reviewer added)."""

    box_id: str
    x: float
    y: float
    w: float
    h: float
    original: Optional[BoxTuple] = None
    status: str = UNREVIEWED
    reviewer: str = ""
    timestamp: str = ""
    reason: str = ""

    @property
    def xywh(self) -> BoxTuple:
        return (float(self.x), float(self.y), float(self.w), float(self.h))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "box_id": self.box_id,
            "xywh": list(self.xywh),
            "original": None if self.original is None else [float(v) for v in self.original],
            "status": self.status,
            "reviewer": self.reviewer,
            "timestamp": self.timestamp,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ReviewBox":
        x, y, w, h = (float(v) for v in d["xywh"])
        orig = d.get("original")
        return cls(
            box_id=str(d["box_id"]),
            x=x,
            y=y,
            w=w,
            h=h,
            original=None if orig is None else tuple(float(v) for v in orig),
            status=str(d.get("status", UNREVIEWED)),
            reviewer=str(d.get("reviewer", "")),
            timestamp=str(d.get("timestamp", "")),
            reason=str(d.get("reason", "")),
        )


@dataclass
class ReviewItem:
    """A phrase: the rows of an annotation file sharing (path, label_text), with its boxes."""

    key: str
    dicom_id: str
    category: str
    label_text: str
    path: str  # as written in the annotation file (relative to the images root)
    image_path: str  # resolved absolute path of the image
    image_width: int  # width/height of the IMAGE (boxes are in these pixels)
    image_height: int
    split: str = ""
    boxes: List[ReviewBox] = field(default_factory=list)
    #: the annotation file's image size when it differed from the image's (boxes were rescaled from it)
    file_size: Optional[Tuple[int, int]] = None
    rescaled: bool = False
    #: original annotation rows (dicts of strings) for export with review columns
    rows: List[Dict[str, str]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def box(self, box_id: str) -> Optional[ReviewBox]:
        for b in self.boxes:
            if b.box_id == box_id:
                return b
        return None

    @property
    def status(self) -> str:
        return item_status(self.boxes)

    def boxes_state(self) -> List[Dict[str, Any]]:
        return [b.to_dict() for b in self.boxes]

    def set_boxes_state(self, state: List[Dict[str, Any]]) -> None:
        self.boxes = [ReviewBox.from_dict(d) for d in state]

    def kept_boxes(self) -> List[ReviewBox]:
        """Boxes that survive review (everything but rejected)."""
        return [b for b in self.boxes if b.status != REJECTED]


def item_status(boxes: List[ReviewBox]) -> str:
    """unreviewed if any box is unreviewed (or there is none); rejected if every box is rejected; edited if any box
    was edited or added; else accepted."""
    if not boxes or any(b.status == UNREVIEWED for b in boxes):
        return ITEM_UNREVIEWED
    if all(b.status == REJECTED for b in boxes):
        return ITEM_REJECTED
    if any(b.status in (EDITED, ADDED) for b in boxes) or any(b.status == REJECTED for b in boxes):
        return ITEM_EDITED
    return ITEM_ACCEPTED
