"""``elvis review recover``: rebuild a damaged review file from what can still be read.

Opening a damaged review file is refused (:class:`~elvis_core.review.store.ReviewDamagedError`, a copy is kept).
:func:`recover_review` then reads the damaged file row by row — each row of ``items`` and ``log`` on its own, so a
bad page loses only its rows — keeps every row whose values check out (the same checks as reading), takes for each
phrase its ``items`` row or, when that row is lost or damaged, its latest valid decision in the ``log`` (the audit
trail holds every decision's full box state), and writes a fresh review file in its place. The damaged file (and
its WAL) is kept beside it as ``<file>.damaged-<time>``. The writer's lock is held throughout, so a viewer cannot
write to the file meanwhile.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from elvis_core.review.store import ReviewStore, ReviewStoreError, review_path_for
from elvis_core.review.store_checks import _ITEM_STATUSES, parse_state


@dataclass
class RecoverResult:
    path: Path
    damaged_copy: Path
    items: int  # phrases with a decision in the recovered file
    from_log: int  # of which rebuilt from the audit trail
    log_rows: int  # decisions kept in the audit trail
    lost_rows: int  # rows that could not be read or did not check out

    def summary(self) -> str:
        return (f"{self.path}: recovered {self.items} phrase decision(s) ({self.from_log} rebuilt from the audit "
                f"trail) and {self.log_rows} logged decision(s); {self.lost_rows} damaged row(s) left out; the "
                f"damaged file is kept as {self.damaged_copy}")


def _rows(db: sqlite3.Connection, table: str, cols: str) -> Tuple[List[tuple], int]:
    """Every readable row of ``table`` (one SELECT per rowid when a scan fails), and how many could not be read."""
    try:
        return db.execute(f"SELECT {cols} FROM {table}").fetchall(), 0
    except sqlite3.DatabaseError:
        pass
    try:
        top = int(db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0)
    except (sqlite3.DatabaseError, TypeError, ValueError):
        return [], 1
    out, lost = [], 0
    for rowid in range(1, min(top, 10_000_000) + 1):
        try:
            row = db.execute(f"SELECT {cols} FROM {table} WHERE rowid=?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            lost += 1
            continue
        if row is not None:
            out.append(row)
    return out, lost


def _status(state: list) -> str:
    from elvis_core.review.model import ReviewBox, item_status

    return item_status([ReviewBox.from_dict(b) for b in state])


def recover_review(path: os.PathLike | str) -> RecoverResult:
    """Rebuild the review file at ``path`` (a review file, or the annotation file it belongs to) in place."""
    src = Path(path)
    if not src.name.endswith(".sqlite"):
        src = review_path_for(src)
    from elvis_core.io.paths import require_regular_file

    require_regular_file(src, ReviewStoreError, "review file")
    holder = ReviewStore.__new__(ReviewStore)  # only for its writer's lock (never opens the damaged database)
    holder.path = src
    holder._lock_fd = None
    if holder._acquire_lock() is not None:
        raise ReviewStoreError("cannot recover: the folder is read-only (copy the file somewhere writable)", src)
    tmp = Path(tempfile.mkdtemp(prefix="elvis-recover-"))
    try:
        copy = tmp / src.name
        shutil.copyfile(src, copy)
        wal = src.with_name(src.name + "-wal")
        if wal.is_file():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        try:
            db = sqlite3.connect(str(copy), isolation_level=None)
            db.execute("PRAGMA writable_schema=ON")  # read past a damaged schema where SQLite allows it
        except sqlite3.Error as err:
            raise ReviewStoreError(f"nothing can be recovered: not an SQLite file ({err})", src) from None
        lost = 0
        log_rows, n = _rows(db, "log", "seq, key, action, state, reviewer, ts")
        lost += n
        item_rows, n = _rows(db, "items", "key, state, status, seq, updated")
        lost += n
        meta_rows, _ = _rows(db, "meta", "k, v")
        db.close()

        good_log = []
        for row in log_rows:
            seq, key, action, blob, reviewer, ts = row
            state, why = parse_state(blob)
            if why or not isinstance(seq, int) or not all(isinstance(v, str) for v in (key, action, reviewer, ts)):
                lost += 1
                continue
            good_log.append((seq, key, action, blob, reviewer, ts, state))
        items: Dict[str, tuple] = {}
        for key, blob, status, seq, updated in item_rows:
            state, why = parse_state(blob)
            if why or not isinstance(key, str) or status not in _ITEM_STATUSES or not isinstance(seq, int) \
                    or not isinstance(updated, str):
                lost += 1
                continue
            items[key] = (blob, status, seq, updated)
        from_log = 0
        for seq, key, _action, blob, _reviewer, ts, state in sorted(good_log):
            if key not in items or items[key][2] < seq:  # a lost item row, or a newer logged decision
                from_log += key not in items or items[key][2] < seq
                items[key] = (blob, _status(state), seq, ts)
        meta = {k: v for k, v in meta_rows if isinstance(k, str) and isinstance(v, str) and len(v) < 4096}

        out = tmp / "recovered.sqlite"
        fresh = sqlite3.connect(str(out), isolation_level=None)
        from elvis_core.review.store import _SCHEMA, SCHEMA_VERSION

        fresh.executescript(_SCHEMA)
        fresh.execute("BEGIN")
        fresh.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        for k in ("position", "rescale"):
            if k in meta:
                fresh.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, meta[k]))
        fresh.executemany("INSERT INTO log (seq, key, action, state, reviewer, ts) VALUES (?, ?, ?, ?, ?, ?)",
                          [r[:6] for r in sorted(good_log)])
        fresh.executemany("INSERT INTO items (key, state, status, seq, updated) VALUES (?, ?, ?, ?, ?)",
                          [(k, *v) for k, v in items.items()])
        fresh.execute("COMMIT")
        fresh.close()

        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        damaged = src.with_name(f"{src.name}.damaged-{stamp}")
        os.replace(src, damaged)
        for suffix in ("-wal", "-shm"):  # they belong to the damaged database
            side = src.with_name(src.name + suffix)
            if side.exists():
                os.replace(side, damaged.with_name(damaged.name + suffix))
        shutil.copyfile(out, src.with_name(src.name + ".recovering"))
        with open(src.with_name(src.name + ".recovering"), "rb+") as f:
            os.fsync(f.fileno())
        os.replace(src.with_name(src.name + ".recovering"), src)
        return RecoverResult(src, damaged, len(items), from_log, len(good_log), lost)
    finally:
        holder._release_lock()
        shutil.rmtree(tmp, ignore_errors=True)
