"""What a review file must hold: the columns of its tables and the shape of a stored box state (checked on every
read, so a damaged or hand-edited file is reported, never half-read). Standard library only."""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path
from typing import Any, Optional

#: columns of each table (a file missing one is damaged, not re-created)
_COLUMNS = {"meta": ["k", "v"], "items": ["key", "state", "status", "seq", "updated"],
            "log": ["seq", "key", "action", "state", "reviewer", "ts"]}
_BOX_STATUSES = ("unreviewed", "accepted", "edited", "rejected", "added")
_ITEM_STATUSES = ("unreviewed", "accepted", "edited", "rejected")
_MAX_STATE_BYTES = 4 << 20
_MAX_STATE_DEPTH = 8


def state_problem(state: Any) -> Optional[str]:
    """Why a stored box state is not one we wrote (None when it is): a list of box objects with a text box_id, four
    finite numbers in xywh, ``original`` null or four numbers, a known status, text reviewer/timestamp/reason."""
    if not isinstance(state, list):
        return f"box state is a {type(state).__name__}, not a list"
    if len(state) > 10000:
        return f"{len(state)} boxes"
    for k, b in enumerate(state):
        if not isinstance(b, dict):
            return f"box {k + 1} is a {type(b).__name__}"
        if not isinstance(b.get("box_id"), str) or len(b["box_id"]) > 200:
            return f"box {k + 1} has no valid box_id"
        for name in ("xywh", "original"):
            v = b.get(name)
            if v is None and name == "original":
                continue
            if not isinstance(v, list) or len(v) != 4 or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
                return f"box {k + 1} has an invalid {name}"
        if b.get("status", "unreviewed") not in _BOX_STATUSES:
            return f"box {k + 1} has an unknown status"
        for name in ("reviewer", "timestamp", "reason"):
            if not isinstance(b.get(name, ""), str):
                return f"box {k + 1} has a {name} that is not text"
    return None


def parse_state(blob: Any) -> tuple:
    """(state, None) for a valid stored state text, else (None, why)."""
    from elvis_core.io.safe_json import json_depth

    if not isinstance(blob, str):
        return None, f"box state stored as {type(blob).__name__}, not text"
    if len(blob) > _MAX_STATE_BYTES:
        return None, f"box state of {len(blob)} characters"
    if json_depth(blob, _MAX_STATE_DEPTH) > _MAX_STATE_DEPTH:
        return None, "box state nested too deeply"
    try:
        state = json.loads(blob)
    except (ValueError, RecursionError) as err:
        return None, f"box state is not valid JSON ({type(err).__name__})"
    why = state_problem(state)
    return (None, why) if why else (state, None)


def _true_cause(err: BaseException, folder: Path) -> str:
    """What a SQLite / OS write error means for the user: disk full, read-only, locked, ..."""
    text = str(err)
    low = text.lower()
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if "full" in low or getattr(err, "errno", None) == errno.ENOSPC or (free is not None and free < (256 << 10)):
        return f"the disk holding {folder} is full ({free or 0} bytes free): free some space and try again"
    if "readonly" in low or "read-only" in low or getattr(err, "errno", None) in (errno.EROFS, errno.EACCES,
                                                                                    errno.EPERM):
        return f"the review file or its folder {folder} is read-only"
    if "locked" in low or "busy" in low:
        return "the review file is locked by another process"
    if "i/o" in low:
        return f"disk I/O error on {folder} (disk removed or failing?)"
    return text
