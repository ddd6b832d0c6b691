"""Crash-safe persistence of review decisions: SQLite in WAL mode with ``synchronous=FULL``.

The review file sits beside the annotations (``<annotations>.review.sqlite``). Every decision is one transaction
that (1) appends the decision to ``log`` (the audit trail, never rewritten), (2) replaces the item's current box
state in ``items`` and (3) records the queue position. :meth:`ReviewStore.save` returns only after the commit has
been fsync'ed (WAL + synchronous=FULL), so a caller that acknowledges a decision after ``save`` returns never loses
it; a kill at any instant leaves either the previous or the new state, never a mix (SQLite's atomic commit).

This module imports only the standard library so a reviewing process starts fast (see the SIGKILL test).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from elvis_core.errors import ElvisError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    seq INTEGER NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    ts TEXT NOT NULL
);
"""


class ReviewStoreError(ElvisError):
    """The review file is unreadable, corrupt or from an unknown version."""


def review_path_for(annotations: str | os.PathLike) -> Path:
    """The review file beside an annotation file: ``cxr.csv`` → ``cxr.csv.review.sqlite``."""
    p = Path(annotations)
    return p.with_name(p.name + ".review.sqlite")


@dataclass
class StoredItem:
    key: str
    state: List[Dict[str, Any]]
    status: str
    seq: int
    updated: str


class ReviewStore:
    """One open review file. Not thread-safe: use it from one thread (the viewer saves on the GUI thread; a save is
    a few milliseconds)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        #: sequence number of the last decision this object committed (0 = none yet)
        self.last_seq = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            ok = self._db.execute("PRAGMA quick_check").fetchone()
            if not ok or ok[0] != "ok":
                raise ReviewStoreError(f"review file failed its integrity check ({ok[0] if ok else 'no answer'})",
                                       self.path)
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise ReviewStoreError(f"review file schema {row[0]} is newer than this program ({SCHEMA_VERSION})",
                                       self.path)
        except sqlite3.DatabaseError as err:
            raise ReviewStoreError(f"not a readable review file ({err})", self.path) from None
        except OSError as err:
            raise ReviewStoreError(f"cannot open review file ({err.strerror or err})", self.path) from None

    # -- writing -------------------------------------------------------------------------------------------------
    def save(
        self,
        key: str,
        action: str,
        state: List[Dict[str, Any]],
        status: str,
        reviewer: str,
        ts: str,
        position: Optional[str] = None,
    ) -> int:
        """Persist one decision durably; returns its sequence number once committed."""
        blob = json.dumps(state, separators=(",", ":"))
        try:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute("INSERT INTO log (key, action, state, reviewer, ts) VALUES (?, ?, ?, ?, ?)",
                            (key, action, blob, reviewer, ts))
                seq = int(cur.lastrowid)
                cur.execute(
                    "INSERT INTO items (key, state, status, seq, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET state=excluded.state, status=excluded.status, "
                    "seq=excluded.seq, updated=excluded.updated",
                    (key, blob, status, seq, ts),
                )
                if position is not None:
                    cur.execute("INSERT OR REPLACE INTO meta VALUES ('position', ?)", (position,))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as err:
            raise ReviewStoreError(f"cannot save decision ({err})", self.path) from None
        self.last_seq = seq
        return seq

    def set_position(self, key: str) -> None:
        """Record the queue position on navigation. Atomic but not fsync'ed (synchronous=NORMAL for this write):
        after a power cut the position may be one step behind; decisions are always fsync'ed."""
        try:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('position', ?)", (key,))
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as err:
            raise ReviewStoreError(f"cannot write ({err})", self.path) from None

    def set_meta(self, k: str, v: str) -> None:
        try:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
        except sqlite3.DatabaseError as err:
            raise ReviewStoreError(f"cannot write ({err})", self.path) from None

    # -- reading -------------------------------------------------------------------------------------------------
    def get_meta(self, k: str, default: Optional[str] = None) -> Optional[str]:
        row = self._db.execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
        return default if row is None else str(row[0])

    @property
    def position(self) -> Optional[str]:
        return self.get_meta("position")

    def items(self) -> Dict[str, StoredItem]:
        out = {}
        try:
            for key, state, status, seq, updated in self._db.execute(
                "SELECT key, state, status, seq, updated FROM items"
            ):
                out[key] = StoredItem(key, json.loads(state), status, int(seq), updated)
        except (sqlite3.DatabaseError, json.JSONDecodeError) as err:
            raise ReviewStoreError(f"review file unreadable ({err})", self.path) from None
        return out

    def log(self) -> List[Dict[str, Any]]:
        rows = self._db.execute("SELECT seq, key, action, reviewer, ts FROM log ORDER BY seq").fetchall()
        return [dict(seq=r[0], key=r[1], action=r[2], reviewer=r[3], ts=r[4]) for r in rows]

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass

    def __enter__(self) -> "ReviewStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
