"""`ReviewSession`: the review queue, its filters, decisions and undo/redo — all headless, the viewer is a skin.

Every decision method changes the current item, **persists it** (`ReviewStore.save`, durable on return) and only
then, when asked (``advance=True``), moves the queue. If the save fails the in-memory change is rolled back and the
error is raised, so what the annotator sees never runs ahead of what is on disk.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from elvis_core.errors import ElvisError
from elvis_core.review.importer import ImportProblem, ImportResult, import_annotations
from elvis_core.review.model import (
    ACCEPTED,
    ADDED,
    EDITED,
    ITEM_UNREVIEWED,
    REJECTED,
    UNREVIEWED,
    ReviewBox,
    ReviewItem,
    utc_now_iso,
)
from elvis_core.review.store import ReviewStore, ReviewStoreError, review_path_for

#: reasons offered by the reject dialog (free text is allowed too)
REJECT_REASONS = (
    "wrong location",
    "box too large",
    "box too small",
    "finding not visible",
    "phrase does not match image",
    "duplicate box",
)


@dataclass
class _Change:
    key: str
    action: str
    before: List[Dict[str, Any]]
    after: List[Dict[str, Any]]


class ReviewSession:
    def __init__(self, items: Sequence[ReviewItem], store: ReviewStore, reviewer: str = "",
                 problems: Sequence[ImportProblem] = (), import_result: Optional[ImportResult] = None):
        self.items: List[ReviewItem] = list(items)
        self.store = store
        self.reviewer = reviewer
        self.problems: List[ImportProblem] = list(problems)
        self.import_result = import_result
        self._index: Dict[str, int] = {it.key: i for i, it in enumerate(self.items)}
        self._undo: List[_Change] = []
        self._redo: List[_Change] = []
        self.filters: Dict[str, Optional[str]] = {"category": None, "split": None, "status": None}
        #: keys present in the review file but not in the annotations (kept in the file, listed here)
        self.orphan_keys: List[str] = []
        #: why the last queue position could not be written (None when it was)
        self.position_warning: Optional[str] = None
        stored = store.items()
        for key, st in stored.items():
            i = self._index.get(key)
            if i is None:
                self.orphan_keys.append(key)
            else:
                self.items[i].set_boxes_state(st.state)
        pos = store.position
        self.current: Optional[int] = self._index.get(pos) if pos else None
        if self.current is None and self.items:
            self.current = 0

    # -- opening -------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, annotations: str | os.PathLike, images_root: str | os.PathLike, rescale: Optional[bool] = None,
             reviewer: str = "", store_path: Optional[str | os.PathLike] = None, read_only: bool = False,
             allow_outside: bool = False) -> "ReviewSession":
        """Import the annotations and resume from the review file beside them (created when absent).

        ``rescale=None`` uses the choice stored in the review file (default: no rescaling); an explicit value is
        stored for the next time. Raises :class:`~elvis_core.review.store.ReviewInUseError` when another process has
        the review file open, unless ``read_only`` (then ``session.read_only_reason`` says so and decisions are
        refused). A review file in a read-only folder opens read-only by itself.
        """
        store = ReviewStore(store_path or review_path_for(annotations), read_only=read_only)
        try:
            if rescale is None:
                rescale = store.get_meta("rescale", "0") == "1"
            elif not store.read_only:
                store.set_meta("rescale", "1" if rescale else "0")
            result = import_annotations(annotations, images_root, rescale=rescale, allow_outside=allow_outside)
        except ElvisError:
            store.close()
            raise
        return cls(result.items, store, reviewer=reviewer, problems=result.problems, import_result=result)

    @property
    def read_only_reason(self) -> Optional[str]:
        """Why decisions cannot be saved (read-only folder, opened read-only), else None."""
        return self.store.read_only_reason

    def close(self) -> None:
        self.store.close()

    # -- queue ---------------------------------------------------------------------------------------------------
    def set_filter(self, category: Optional[str] = None, split: Optional[str] = None,
                   status: Optional[str] = None) -> None:
        """Filter the queue (None = any). The current item stays current when it still matches, else the first
        visible item becomes current."""
        self.filters = {"category": category or None, "split": split or None, "status": status or None}
        vis = self.visible()
        if self.current not in vis:
            self.current = vis[0] if vis else None

    def _matches(self, it: ReviewItem) -> bool:
        f = self.filters
        return ((f["category"] is None or it.category == f["category"])
                and (f["split"] is None or it.split == f["split"])
                and (f["status"] is None or (it.status == f["status"])
                     or (f["status"] == "reviewed" and it.status != ITEM_UNREVIEWED)))

    def visible(self) -> List[int]:
        return [i for i, it in enumerate(self.items) if self._matches(it)]

    def counts(self) -> Dict[str, Dict[str, int]]:
        """Counts over ALL items by category, split and status (for the filter combo boxes)."""
        statuses = Counter(it.status for it in self.items)
        return {
            "category": dict(Counter(it.category for it in self.items)),
            "split": dict(Counter(it.split for it in self.items)),
            "status": dict(statuses),
            "total": {"items": len(self.items), "visible": len(self.visible()),
                      "reviewed": len(self.items) - statuses.get(ITEM_UNREVIEWED, 0)},
        }

    @property
    def item(self) -> Optional[ReviewItem]:
        return None if self.current is None else self.items[self.current]

    def _move_to(self, i: Optional[int]) -> Optional[ReviewItem]:
        if i is not None:
            self.current = i
            try:
                self.store.set_position(self.items[i].key)
                self.position_warning = None
            except ReviewStoreError as err:
                # navigation never fails because the position could not be written (disk full): it is kept in
                # memory, and the next decision (which stores the position too) says what is wrong
                self.position_warning = str(err)
        return self.item

    def go_to(self, key_or_index) -> Optional[ReviewItem]:
        i = self._index.get(key_or_index) if isinstance(key_or_index, str) else int(key_or_index)
        if i is None or not (0 <= i < len(self.items)):
            raise KeyError(key_or_index)
        return self._move_to(i)

    def next(self) -> Optional[ReviewItem]:
        """J: the next visible item (stays on the last one)."""
        vis = self.visible()
        later = [i for i in vis if self.current is None or i > self.current]
        return self._move_to(later[0] if later else None)

    def previous(self) -> Optional[ReviewItem]:
        """K: the previous visible item (stays on the first one)."""
        vis = self.visible()
        earlier = [i for i in vis if self.current is not None and i < self.current]
        return self._move_to(earlier[-1] if earlier else None)

    def next_unreviewed(self) -> Optional[ReviewItem]:
        """U: the next visible unreviewed item after the current one, wrapping around; None when all are done."""
        vis = self.visible()
        cur = -1 if self.current is None else self.current
        order = [i for i in vis if i > cur] + [i for i in vis if i <= cur]
        for i in order:
            if self.items[i].status == ITEM_UNREVIEWED and i != self.current:
                return self._move_to(i)
        return None

    # -- decisions -----------------------------------------------------------------------------------------------
    def _require(self, expected_key: Optional[str]) -> ReviewItem:
        """The current item, when a decision made on ``expected_key`` (the item the annotator saw; None = not
        checked) may land on it. A key that differs is refused: a decision never lands on an item the user did not
        see (a key pressed while the screen still showed the previous item)."""
        it = self.item
        if it is None:
            raise ElvisError("no item selected in the review queue")
        if expected_key is not None and expected_key != it.key:
            raise ElvisError(f"decision refused: it was made on item {expected_key!r} but the current item is "
                             f"{it.key!r} (the screen had not caught up); nothing was saved")
        return it

    def _commit(self, action: str, mutate, advance: bool = False, record: bool = True,
                expected_key: Optional[str] = None) -> ReviewItem:
        it = self._require(expected_key)
        before = copy.deepcopy(it.boxes_state())
        mutate(it)
        after = it.boxes_state()
        if after == before:
            if advance:
                self.next_unreviewed() or self.next()
            return it
        self._save(it, action, before)
        if record:
            self._undo.append(_Change(it.key, action, before, copy.deepcopy(after)))
            self._redo.clear()
        if advance:
            self.next_unreviewed() or self.next()
        return it

    def _save(self, it: ReviewItem, action: str, rollback_state: List[Dict[str, Any]]) -> None:
        try:
            self.store.save(it.key, action, it.boxes_state(), it.status, self.reviewer, utc_now_iso(),
                            position=it.key)
        except BaseException:
            it.set_boxes_state(rollback_state)
            raise

    def _stamp(self, b: ReviewBox) -> None:
        b.reviewer = self.reviewer
        b.timestamp = utc_now_iso()

    def _targets(self, it: ReviewItem, box_id: Optional[str]) -> List[ReviewBox]:
        if box_id is None:
            return list(it.boxes)
        b = it.box(box_id)
        if b is None:
            raise ElvisError(f"no box {box_id!r} in item {it.key!r}")
        return [b]

    def accept(self, box_id: Optional[str] = None, advance: bool = False,
               expected_key: Optional[str] = None) -> ReviewItem:
        """A: accept one box, or every unreviewed box of the item (edited/added/rejected boxes keep their status).
        Every decision takes ``expected_key``: the key of the item on screen (see :meth:`_require`)."""
        def mutate(it: ReviewItem) -> None:
            for b in self._targets(it, box_id):
                if b.status == UNREVIEWED or (box_id is not None and b.status == REJECTED):
                    if b.original is None:
                        b.status = ADDED
                    else:
                        b.status = ACCEPTED if tuple(b.original) == b.xywh else EDITED
                    b.reason = ""
                    self._stamp(b)
        return self._commit("accept", mutate, advance, expected_key=expected_key)

    def reject(self, reason: str, box_id: Optional[str] = None, advance: bool = False,
               expected_key: Optional[str] = None) -> ReviewItem:
        """R: reject one box, or every box of the item, with a reason."""
        reason = (reason or "").strip()
        if not reason:
            raise ElvisError("a rejection needs a reason")

        def mutate(it: ReviewItem) -> None:
            for b in self._targets(it, box_id):
                b.status = REJECTED
                b.reason = reason
                self._stamp(b)
        return self._commit("reject", mutate, advance, expected_key=expected_key)

    def _clip(self, it: ReviewItem, xywh) -> Tuple[float, float, float, float]:
        x, y, w, h = (float(v) for v in xywh)
        if w < 0:
            x, w = x + w, -w
        if h < 0:
            y, h = y + h, -h
        x0, y0 = min(max(x, 0.0), it.image_width - 1.0), min(max(y, 0.0), it.image_height - 1.0)
        x1, y1 = min(max(x + w, x0 + 1.0), float(it.image_width)), min(max(y + h, y0 + 1.0), float(it.image_height))
        return (x0, y0, x1 - x0, y1 - y0)

    def edit_box(self, box_id: str, xywh, expected_key: Optional[str] = None) -> ReviewItem:
        """Drag result: move/resize a box (clipped to the image, at least 1 px). Original boxes become 'edited'."""
        def mutate(it: ReviewItem) -> None:
            b = self._targets(it, box_id)[0]
            new = self._clip(it, xywh)
            if tuple(round(v, 3) for v in new) == tuple(round(v, 3) for v in b.xywh):
                return
            b.x, b.y, b.w, b.h = new
            if b.original is None:
                b.status = ADDED
            elif tuple(b.original) == b.xywh:
                b.status = ACCEPTED
            else:
                b.status = EDITED
            b.reason = ""
            self._stamp(b)
        return self._commit("edit", mutate, expected_key=expected_key)

    def add_box(self, xywh=None, expected_key: Optional[str] = None) -> ReviewBox:
        """N: add a box (default: a quarter-size box in the image centre); returns it."""
        it = self._require(expected_key)
        if xywh is None:
            w, h = it.image_width / 4.0, it.image_height / 4.0
            xywh = ((it.image_width - w) / 2.0, (it.image_height - h) / 2.0, w, h)
        n = 0
        while it.box(f"a{n}") is not None:
            n += 1
        new_id = f"a{n}"

        def mutate(item: ReviewItem) -> None:
            x, y, w, h = self._clip(item, xywh)
            b = ReviewBox(box_id=new_id, x=x, y=y, w=w, h=h, original=None, status=ADDED)
            self._stamp(b)
            item.boxes.append(b)
        self._commit("add", mutate, expected_key=expected_key)
        return it.box(new_id)

    def delete_box(self, box_id: str, expected_key: Optional[str] = None) -> ReviewItem:
        """Del: an added box disappears; an original box is rejected with reason 'deleted' (kept for the export)."""
        def mutate(it: ReviewItem) -> None:
            b = self._targets(it, box_id)[0]
            if b.original is None:
                it.boxes.remove(b)
            else:
                b.status = REJECTED
                b.reason = "deleted"
                self._stamp(b)
        return self._commit("delete", mutate, expected_key=expected_key)

    # -- undo / redo ---------------------------------------------------------------------------------------------
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def _apply(self, change: _Change, state: List[Dict[str, Any]], action: str) -> ReviewItem:
        self._move_to(self._index[change.key])
        it = self.item
        before = copy.deepcopy(it.boxes_state())
        it.set_boxes_state(copy.deepcopy(state))
        self._save(it, action, before)
        return it

    def undo(self) -> Optional[ReviewItem]:
        """Ctrl+Z: restore the state before the last decision (persisted as a new decision); goes to its item."""
        if not self._undo:
            return None
        ch = self._undo.pop()
        try:
            it = self._apply(ch, ch.before, f"undo {ch.action}")
        except BaseException:
            self._undo.append(ch)
            raise
        self._redo.append(ch)
        return it

    def redo(self) -> Optional[ReviewItem]:
        """Ctrl+Shift+Z: re-apply the last undone decision."""
        if not self._redo:
            return None
        ch = self._redo.pop()
        try:
            it = self._apply(ch, ch.after, f"redo {ch.action}")
        except BaseException:
            self._redo.append(ch)
            raise
        self._undo.append(ch)
        return it


def open_session(annotations: str | os.PathLike, images_root: str | os.PathLike, **kw) -> ReviewSession:
    return ReviewSession.open(annotations, images_root, **kw)


def find_report(item: ReviewItem, images_root: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """The study report of an item: in the MIMIC-CXR layout ``.../sYYYYYYYY/x.dcm`` → ``.../sYYYYYYYY.txt``; for a
    study fetched from a PACS (``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``) the text SR of the same study."""
    study_dir = Path(item.image_path).parent
    cand = study_dir.with_name(study_dir.name + ".txt")
    if cand.is_file():
        return cand
    from elvis_core.io.sr_report import find_study_sr_report

    sr = find_study_sr_report(item.image_path)
    return Path(sr) if sr else None
