"""Damaged review files are never re-created or misread: one line naming the file, a copy kept, recovery offered
(``elvis review recover``); bad values in the items table are clean errors; the ``.sqlite`` alone holds every
decision after close (checkpointed), including through the real viewer code path."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from elvis_core.review import ReviewSession
from elvis_core.review.store import ReviewDamagedError, ReviewStore, ReviewStoreError, review_path_for
from elvis_core.review.sample import write_sample_set


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("review_damage")
    return write_sample_set(root, n_studies=3, seed=2, size=96)


def _decided(tmp_path, sample, n=3):
    csv_path, root = sample
    own = tmp_path / "ann.csv"
    own.write_bytes(Path(csv_path).read_bytes())
    s = ReviewSession.open(own, root, reviewer="tester")
    keys = []
    for _ in range(n):
        keys.append(s.item.key)
        s.accept(advance=True)
    return s, own, root, keys


def test_close_leaves_every_decision_in_the_sqlite_alone(tmp_path, sample):
    s, own, root, keys = _decided(tmp_path, sample)
    s.close()
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(review_path_for(own), alone / "copy.sqlite")  # no -wal beside it
    st = ReviewStore(alone / "copy.sqlite", read_only=True)
    items = st.items()
    assert set(keys) <= set(items) and all(items[k].status == "accepted" for k in keys)
    st.close()


def test_a_decision_reaches_the_sqlite_before_close(tmp_path, sample):
    s, own, root, keys = _decided(tmp_path, sample, n=2)
    try:  # the viewer still running: copy only the .sqlite (a crash of the machine that keeps the file)
        alone = tmp_path / "alone.sqlite"
        shutil.copyfile(review_path_for(own), alone)
        items = ReviewStore(alone, read_only=True).items()
        assert set(keys) <= set(items)
    finally:
        s.close()


def _damage(path: Path, sql: str) -> None:
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA journal_mode=DELETE")
    db.executescript(sql)
    db.commit()
    db.close()


@pytest.mark.parametrize("sql,expect", [
    ("DROP TABLE items", "the items table is missing"),
    ("DROP TABLE log", "the log table is missing"),
    ("UPDATE items SET state='{\"a\": 1}' WHERE rowid=1", "box state is a dict"),
    ("UPDATE items SET state=X'00FF' WHERE rowid=1", "box state stored as bytes"),
    ("UPDATE items SET state='" + "[" * 100000 + "]" * 100000 + "' WHERE rowid=1", "nested too deeply"),
    ("UPDATE items SET state='[{\"box_id\": \"b\", \"xywh\": [1, 2, \"x\", 4]}]' WHERE rowid=1", "invalid xywh"),
    ("UPDATE items SET status='exploded' WHERE rowid=1", "unknown status"),
    ("UPDATE items SET seq='abc' WHERE rowid=1", "not an integer"),
    ("UPDATE items SET state='[1e999]' WHERE rowid=1", "box 1 is a float"),
    ("UPDATE meta SET v='banana' WHERE k='schema'", "schema version"),
])
def test_bad_values_are_one_clean_line_with_a_copy_and_recovery(tmp_path, sample, sql, expect):
    s, own, root, keys = _decided(tmp_path, sample)
    s.close()
    rf = review_path_for(own)
    _damage(rf, sql)
    before = rf.read_bytes()
    with pytest.raises(ReviewDamagedError) as e:
        ReviewSession.open(own, root, reviewer="tester")
    msg = str(e.value)
    assert msg.startswith(str(rf)) and expect in msg and "\n" not in msg, msg
    assert "elvis review recover" in msg and e.value.copy is not None and e.value.copy.read_bytes() == before
    assert rf.read_bytes() == before  # nothing re-created, nothing written
    with pytest.raises(ReviewDamagedError):
        ReviewSession.open(own, root, reviewer="tester", read_only=True)


def test_recover_rebuilds_lost_items_from_the_audit_trail(tmp_path, sample, capsys):
    from elvis_core.cli import main

    s, own, root, keys = _decided(tmp_path, sample)
    s.close()
    rf = review_path_for(own)
    _damage(rf, "DROP TABLE items")
    with pytest.raises(ReviewDamagedError):
        ReviewSession.open(own, root)
    assert main(["review", "recover", str(own)]) == 0
    out = capsys.readouterr().out
    assert "recovered 3 phrase decision(s) (3 rebuilt from the audit trail)" in out, out
    assert list(tmp_path.glob("ann.csv.review.sqlite.damaged-*"))
    s2 = ReviewSession.open(own, root, reviewer="tester")
    try:
        got = {it.key: it.status for it in s2.items}
        assert all(got[k] == "accepted" for k in keys)
    finally:
        s2.close()


def test_integrity_failure_is_reported_not_read_silently(tmp_path, sample):
    """An index that disagrees with its table (quick_check does not see it; integrity_check does)."""
    s, own, root, keys = _decided(tmp_path, sample)
    s.close()
    rf = review_path_for(own)
    db = sqlite3.connect(str(rf))
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA writable_schema=ON")
    # point the items table's implicit primary-key index at nothing: rewrite a row's key behind the index's back
    root_page = db.execute("SELECT rootpage FROM sqlite_master WHERE name='sqlite_autoindex_items_1'").fetchone()[0]
    db.commit()
    db.close()
    data = bytearray(rf.read_bytes())
    page = 4096 if len(data) % 4096 == 0 else 1024
    off = (root_page - 1) * page
    data[off + page - 40: off + page - 20] = b"\x00" * 20  # damage the index page's cells
    rf.write_bytes(bytes(data))
    with pytest.raises(ReviewStoreError) as e:
        ReviewSession.open(own, root)
    assert "damaged" in str(e.value) and "\n" not in str(e.value)
