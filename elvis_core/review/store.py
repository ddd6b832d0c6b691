"""Crash-safe persistence of review decisions: SQLite in WAL mode with ``synchronous=FULL``.

The review file sits beside the annotations (``<annotations>.review.sqlite``). Every decision is one transaction
that (1) appends the decision to ``log`` (the audit trail, never rewritten), (2) replaces the item's current box
state in ``items`` and (3) records the queue position. :meth:`ReviewStore.save` returns only after the commit has
been fsync'ed (WAL + synchronous=FULL), so a caller that acknowledges a decision after ``save`` returns never loses
it; a kill at any instant leaves either the previous or the new state, never a mix (SQLite's atomic commit).

One writer per review file: opening for writing takes an exclusive ``flock`` on ``<review file>.lock`` (released by
the kernel when the process ends, even on SIGKILL, so a crash never leaves a stale lock) and writes who holds it
there. A second process gets :class:`ReviewInUseError` ("in use by reviewer@host, pid N, since ...") or, when it asks
for ``read_only=True``, a read-only snapshot. A review file in a folder that cannot be written (read-only mount,
no permission) opens read-only by itself with the reason in :attr:`ReviewStore.read_only_reason`; a decision then
fails with that reason, and navigation keeps working. Write failures name their true cause (disk full, read-only,
locked) instead of SQLite's follow-up errors.

Damaged files are never re-created or read past: opening runs ``PRAGMA integrity_check`` and checks the schema (the
three tables with their columns) **before** anything is created, and every stored value is checked when read (types,
JSON nesting, box fields). A damaged file raises :class:`ReviewDamagedError` — one line naming the file, the copy
kept beside it (``<file>.damaged-<time>``) and the command that recovers what can be read
(``elvis review recover``, :mod:`elvis_core.review.recover`). Only a file that does not exist yet (or is empty)
gets a schema.

The ``.sqlite`` alone holds every decision once the store is closed: :meth:`ReviewStore.checkpoint` copies the WAL
into the file (``PRAGMA wal_checkpoint(TRUNCATE)``); it runs on :meth:`close` (quit, switching annotations,
losing the lock), on export, after every decision (a passive checkpoint) and at interpreter exit for any store
still open.

This module imports only the standard library (and elvis_core.errors / io.safe_json / io.paths, which are
standard-library only) so a reviewing process starts fast (see the SIGKILL test).
"""

from __future__ import annotations

import atexit
import errno
import getpass
import json
import os
import shutil
import socket
import sqlite3
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from elvis_core.errors import ElvisError
from elvis_core.review.store_checks import _COLUMNS, _ITEM_STATUSES, _true_cause, parse_state

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
    """The review file is unreadable, corrupt or from an unknown version, or a decision could not be saved."""


class ReviewInUseError(ReviewStoreError):
    """Another process has the review file open for writing."""


class ReviewDamagedError(ReviewStoreError):
    """The review file is damaged (integrity check, schema or stored values): never re-created, never read past.
    ``copy`` is the copy kept beside it (None when none could be written)."""

    def __init__(self, problem: str, path, copy: Optional[Path] = None):
        self.copy = copy
        super().__init__(problem, path)


_OPEN_STORES: "weakref.WeakSet[ReviewStore]" = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:  # a quit path that forgot close(): the .sqlite still gets every decision
    for store in list(_OPEN_STORES):
        try:
            store.close()
        except Exception:  # noqa: BLE001 - never fail at exit
            pass


def lock_path_for(review_file: str | os.PathLike) -> Path:
    p = Path(review_file)
    return p.with_name(p.name + ".lock")


def _holder_text(lock: Path) -> str:
    try:
        text = lock.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text[:200] or "another process"


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

    def __init__(self, path: str | os.PathLike, read_only: bool = False):
        """Open (create) a review file for writing, or ``read_only`` (a consistent snapshot of what is committed).

        Raises :class:`ReviewInUseError` when another process has it open for writing (unless ``read_only``),
        :class:`ReviewStoreError` when it is not a readable review file or cannot be created."""
        self.path = Path(path)
        #: sequence number of the last decision this object committed (0 = none yet)
        self.last_seq = 0
        #: why this store is read-only (None when writable): shown to the user, and the message of a refused save
        self.read_only_reason: Optional[str] = None
        self._lock_fd: Optional[int] = None
        self._db: Optional[sqlite3.Connection] = None
        memory = str(path) == ":memory:"
        fresh = memory
        if not memory and os.path.lexists(self.path):
            from elvis_core.io.paths import require_regular_file

            st = require_regular_file(self.path, ReviewStoreError, "review file")  # never a FIFO or a device
            fresh = st.st_size == 0 and not self.path.with_name(self.path.name + "-wal").exists()
        elif not memory:
            fresh = True
        if not memory and not read_only:
            self.read_only_reason = self._acquire_lock()
        elif read_only:
            self.read_only_reason = "opened read-only"
        try:
            if self.read_only_reason is not None and not memory:
                self._db = self._snapshot()
            else:
                if not memory:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
                if not fresh:  # checked before anything writes (switching to WAL rewrites the file's header)
                    self._check_file()
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            if not fresh and self.read_only_reason is not None:  # an existing file is checked, never re-created
                self._check_file()
            if self.read_only_reason is None:
                if fresh:
                    self._db.executescript(_SCHEMA)
                row = self._db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
                if row is None:
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            else:
                row = self._db.execute("SELECT v FROM meta WHERE k='schema'").fetchone() if not fresh else None
            if row is not None and (not str(row[0]).isdigit() or len(str(row[0])) > 6):
                raise self._damaged(f"schema version {str(row[0])[:20]!r} is not a number")
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise ReviewStoreError(f"review file schema {row[0]} is newer than this program ({SCHEMA_VERSION})",
                                       self.path)
        except ReviewStoreError:
            self._close_db()
            self._release_lock()
            raise
        except sqlite3.DatabaseError as err:
            self._close_db()
            self._release_lock()
            if self.read_only_reason is None and ("full" in str(err).lower() or "readonly" in str(err).lower()):
                raise ReviewStoreError(f"cannot open review file: {_true_cause(err, self.path.parent)}",
                                       self.path) from None
            if not fresh:
                raise self._damaged(f"SQLite: {err}") from None
            raise ReviewStoreError(f"not a readable review file ({err})", self.path) from None
        except OSError as err:
            self._close_db()
            self._release_lock()
            raise ReviewStoreError(f"cannot open review file ({_true_cause(err, self.path.parent)})",
                                   self.path) from None
        if not memory:
            _OPEN_STORES.add(self)

    @property
    def read_only(self) -> bool:
        return self.read_only_reason is not None

    # -- damage ----------------------------------------------------------------------------------------------------
    def _check_file(self) -> None:
        """``integrity_check`` (b-trees, indexes, page accounting) and the schema; raises ReviewDamagedError."""
        rows = self._db.execute("PRAGMA integrity_check(5)").fetchall()
        if not rows or rows[0][0] != "ok":
            raise self._damaged("integrity check failed: " + "; ".join(str(r[0]) for r in rows)[:200])
        for table, cols in _COLUMNS.items():
            have = [r[1] for r in self._db.execute(f"PRAGMA table_info({table})").fetchall()]
            if not have:
                raise self._damaged(f"the {table} table is missing")
            if any(c not in have for c in cols):
                raise self._damaged(f"the {table} table lacks column(s) {', '.join(c for c in cols if c not in have)}")
        self.items()  # every stored value checked before anything is written (or shown)
        self.log()
        for k in ("schema", "position", "rescale"):
            v = self.get_meta(k)
            if k == "schema" and v is not None and (not v.isdigit() or len(v) > 6):
                raise self._damaged(f"schema version {v[:20]!r} is not a number")

    def _keep_copy(self) -> Optional[Path]:
        """A copy of the damaged file (and its WAL) beside it, or in the temp folder when that is read-only."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        for folder in (self.path.parent, Path(tempfile.gettempdir())):
            dest = folder / f"{self.path.name}.damaged-{stamp}"
            try:
                shutil.copyfile(self.path, dest)
                wal = self.path.with_name(self.path.name + "-wal")
                if wal.is_file():
                    shutil.copyfile(wal, dest.with_name(dest.name + "-wal"))
                return dest
            except OSError:
                continue
        return None

    def _damaged(self, reason: str) -> ReviewDamagedError:
        copy = self._keep_copy() if str(self.path) != ":memory:" else None
        kept = f"a copy was kept as {copy}" if copy else "no copy could be written"
        return ReviewDamagedError(f"review file is damaged ({reason}); nothing was changed, {kept}; recover the "
                                  f"decisions that can be read with: elvis review recover {self.path}",
                                  self.path, copy)

    def checkpoint(self) -> None:
        """Copy every committed decision from the WAL into the ``.sqlite`` file and empty the WAL (the file alone
        then holds everything). A no-op for a read-only store; a failure leaves the WAL, which still holds it."""
        if self._db is None or self.read_only_reason is not None or str(self.path) == ":memory:":
            return
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    # -- locking and read-only snapshots ---------------------------------------------------------------------------
    def _acquire_lock(self) -> Optional[str]:
        """Take the writer's lock; None when taken, else why this store must be read-only (folder not writable).
        Raises ReviewInUseError when another process holds it."""
        import fcntl

        lock = lock_path_for(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(str(lock), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                if self.path.is_file():
                    return f"the folder {self.path.parent} is read-only: review file opened read-only"
                raise ReviewStoreError(f"cannot create a review file: the folder {self.path.parent} is read-only",
                                       self.path) from None
            raise ReviewStoreError(f"cannot create the review lock file ({_true_cause(err, self.path.parent)})",
                                   self.path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ReviewInUseError(f"in use by {_holder_text(lock)}; close it there, or open this review read-only",
                                   self.path) from None
        self._lock_fd = fd
        try:
            who = (f"{getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()}, since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})")
        except Exception:  # noqa: BLE001 - no user name in a container
            who = f"pid {os.getpid()}"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, who.encode("utf-8"), 0)
        except OSError:
            pass  # a full disk: the lock itself still holds
        if not os.access(self.path.parent, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            self._release_lock()
            if self.path.is_file():
                return f"the review file or its folder {self.path.parent} is read-only: opened read-only"
            raise ReviewStoreError(f"cannot create a review file: the folder {self.path.parent} is read-only",
                                   self.path)
        return None

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)  # closing releases the flock
            except OSError:
                pass
            self._lock_fd = None

    def _snapshot(self) -> sqlite3.Connection:
        """An in-memory copy of everything committed in the review file (WAL included), read without writing
        anything beside it: directly when the folder allows SQLite's shared-memory file, else through a private
        temporary copy of the file and its WAL."""
        if not self.path.is_file():
            raise ReviewStoreError("no review file", self.path)
        mem = sqlite3.connect(":memory:", isolation_level=None)
        try:
            src = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10.0)
            try:
                src.backup(mem)
                return mem
            finally:
                src.close()
        except sqlite3.Error:
            pass
        tmp = Path(tempfile.mkdtemp(prefix="elvis-review-"))
        try:
            copy = tmp / self.path.name
            shutil.copyfile(self.path, copy)
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.is_file():
                shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            src = sqlite3.connect(str(copy), timeout=10.0)
            try:
                src.backup(mem)
            finally:
                src.close()
            return mem
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

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
        if self.read_only_reason is not None:
            raise ReviewStoreError(f"decision not saved: {self.read_only_reason}", self.path)
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
                try:  # the .sqlite itself gets the decision now (the WAL already holds it durably)
                    cur.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass
            except BaseException:
                # SQLite may already have rolled back (SQLITE_FULL ends the transaction): roll back only what is
                # open, so the real cause is reported, not "cannot rollback - no transaction is active"
                if self._db.in_transaction:
                    try:
                        cur.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        except sqlite3.DatabaseError as err:
            raise ReviewStoreError(f"decision not saved: {_true_cause(err, self.path.parent)}", self.path) from None
        except OSError as err:
            raise ReviewStoreError(f"decision not saved: {_true_cause(err, self.path.parent)}", self.path) from None
        self.last_seq = seq
        return seq

    def set_position(self, key: str) -> None:
        """Record the queue position on navigation. Atomic but not fsync'ed (synchronous=NORMAL for this write):
        after a power cut the position may be one step behind; decisions are always fsync'ed."""
        if self.read_only_reason is not None:
            return  # the position lives in memory only
        try:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('position', ?)", (key,))
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as err:
            raise ReviewStoreError(f"queue position not saved: {_true_cause(err, self.path.parent)}",
                                   self.path) from None

    def set_meta(self, k: str, v: str) -> None:
        if self.read_only_reason is not None:
            raise ReviewStoreError(f"setting not saved: {self.read_only_reason}", self.path)
        try:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
        except sqlite3.DatabaseError as err:
            raise ReviewStoreError(f"setting not saved: {_true_cause(err, self.path.parent)}", self.path) from None

    # -- reading -------------------------------------------------------------------------------------------------
    def get_meta(self, k: str, default: Optional[str] = None) -> Optional[str]:
        try:
            row = self._db.execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
        except sqlite3.DatabaseError as err:
            raise self._damaged(f"SQLite: {err}") from None
        if row is not None and (not isinstance(row[0], (str, int)) or len(str(row[0])) > 4096):
            raise self._damaged(f"setting {k!r} is not short text")
        return default if row is None else str(row[0])

    @property
    def position(self) -> Optional[str]:
        return self.get_meta("position")

    def items(self) -> Dict[str, StoredItem]:
        """Every item's stored state, each value checked (a wrong type, a huge or deep state, an unknown status is
        :class:`ReviewDamagedError`: the file is never half-read)."""
        out = {}
        try:
            for key, state, status, seq, updated in self._db.execute(
                "SELECT key, state, status, seq, updated FROM items"
            ):
                if not isinstance(key, str) or len(key) > 4096:
                    raise self._damaged(f"an item key is a {type(key).__name__}")
                parsed, why = parse_state(state)
                if why is None and status not in _ITEM_STATUSES:
                    why = f"unknown status {str(status)[:20]!r}"
                if why is None and (isinstance(seq, bool) or not isinstance(seq, int)):
                    why = "sequence number is not an integer"
                if why is None and not isinstance(updated, str):
                    why = "time stamp is not text"
                if why is not None:
                    raise self._damaged(f"item {key[:80]!r}: {why}")
                out[key] = StoredItem(key, parsed, status, int(seq), updated)
        except sqlite3.DatabaseError as err:
            raise self._damaged(f"SQLite: {err}") from None
        return out

    def log(self) -> List[Dict[str, Any]]:
        try:
            rows = self._db.execute("SELECT seq, key, action, reviewer, ts FROM log ORDER BY seq").fetchall()
        except sqlite3.DatabaseError as err:
            raise self._damaged(f"SQLite: {err}") from None
        return [dict(seq=r[0], key=r[1], action=r[2], reviewer=r[3], ts=r[4]) for r in rows]

    def close(self) -> None:
        """Checkpoint (the ``.sqlite`` alone then holds every decision), close, release the lock. Idempotent."""
        self.checkpoint()
        self._close_db()
        self._release_lock()
        _OPEN_STORES.discard(self)

    def __enter__(self) -> "ReviewStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
