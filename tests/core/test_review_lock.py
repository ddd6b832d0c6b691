"""Review files under contention and on failing storage: a second process, a full disk, a read-only folder.

The disk-full and read-only tests mount a small tmpfs (they need root and permission to mount; otherwise they are
skipped with the reason)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from elvis_core.review import ReviewInUseError, ReviewSession, ReviewStoreError, review_path_for
from elvis_core.review.sample import write_sample_set

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

#: a reviewer in another process: makes N decisions, printing ACK after each returns, then waits for a line on
#: stdin before closing
WRITER = r"""
import json, sys
from elvis_core.review import ReviewSession
s = ReviewSession.open(sys.argv[1], sys.argv[2], reviewer="first")
print("READY", flush=True)
g = 0
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "quit":
        break
    n = int(cmd)
    for _ in range(n):
        it = s.items[g % len(s.items)]
        s.go_to(it.key)
        last = s.store.last_seq
        s.edit_box(it.boxes[0].box_id, (1 + g, 2, 10, 12))
        g += 1
        if s.store.last_seq != last:
            print("ACK", s.store.last_seq, json.dumps(it.key), json.dumps(it.boxes_state()), sep="\t", flush=True)
    print("DONE", flush=True)
s.close()
"""


def _start_writer(ann, root):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ann), str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    line = proc.stdout.readline().strip()
    assert line == "READY", proc.stderr.read()
    return proc


def _decide(proc, n):
    proc.stdin.write(f"{n}\n")
    proc.stdin.flush()
    acks = {}
    while True:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        if line.strip() == "DONE":
            return acks
        _ack, seq, key, state = line.rstrip("\n").split("\t")
        acks[int(seq)] = (json.loads(key), json.loads(state))


def test_second_process_gets_in_use_message_or_read_only_and_no_decision_is_lost(tmp_path):
    ann, root = write_sample_set(tmp_path / "set", n_studies=3, seed=2, size=64)
    proc = _start_writer(ann, root)
    try:
        acked = _decide(proc, 7)
        # a second writer is refused with who holds the file
        with pytest.raises(ReviewInUseError) as exc:
            ReviewSession.open(ann, root, reviewer="second")
        msg = str(exc.value)
        assert "in use by" in msg and f"pid {proc.pid}" in msg and str(review_path_for(ann)) in msg
        # read-only access works and shows what the first process committed
        ro = ReviewSession.open(ann, root, reviewer="second", read_only=True)
        assert ro.read_only_reason
        stored = ro.store.items()
        for _seq, (key, state) in acked.items():
            assert key in stored
        last = {key: state for _s, (key, state) in sorted(acked.items())}
        for key, state in last.items():
            assert stored[key].state == state
        # a decision in the read-only session is refused (nothing is written), navigation works
        it = ro.item
        before = it.boxes_state()
        with pytest.raises(ReviewStoreError, match="decision not saved: opened read-only"):
            ro.edit_box(it.boxes[0].box_id, (30, 30, 5, 5))
        assert it.boxes_state() == before
        assert ro.next() is not None and ro.previous() is not None
        ro.close()
        acked.update(_decide(proc, 9))  # the first process keeps working meanwhile
    finally:
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()
    # after it closed, the file opens for writing again and holds every acknowledged decision
    s = ReviewSession.open(ann, root, reviewer="second")
    con = sqlite3.connect(str(review_path_for(ann)))
    log = {seq: (key, json.loads(st)) for seq, key, st in con.execute("SELECT seq, key, state FROM log")}
    con.close()
    assert len(acked) == 16
    for seq, (key, state) in acked.items():
        assert log[seq] == (key, state)
    s.accept(advance=False)  # and it is writable
    s.close()


def test_review_status_cli_reads_while_the_viewer_holds_the_file(tmp_path):
    ann, root = write_sample_set(tmp_path / "set", n_studies=2, seed=4, size=64)
    s = ReviewSession.open(ann, root, reviewer="AN")
    s.accept(advance=False)
    out = subprocess.run([sys.executable, "-m", "elvis_core", "review", "status", str(ann), "--images", str(root),
                          "--json"], capture_output=True, text=True, env=ENV, timeout=120)
    s.close()
    assert out.returncode == 0, out.stderr
    assert "in use" not in out.stderr


# ------------------------------------------------------------------------------------------------ storage failures


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs mounted at tmp_path/mnt (root only); unmounted afterwards."""
    mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()[:120]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Fill the file system holding ``folder`` (returns the filler file)."""
    filler = folder / "filler.bin"
    fd = os.open(str(filler), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_disk_full_gives_the_true_cause_keeps_navigation_and_loses_nothing(tmp_path, small_tmpfs):
    ann_src, root = write_sample_set(tmp_path / "set", n_studies=3, seed=6, size=64)
    ann = small_tmpfs / "ms_cxr.csv"  # the review file is written beside the annotations: on the tiny disk
    shutil.copy(ann_src, ann)
    s = ReviewSession.open(ann, root, reviewer="AN")
    keys = []
    for _ in range(3):
        it = s.item
        s.accept(advance=True)
        keys.append(it.key)
    filler = _fill(small_tmpfs)
    failed = None
    for i in range(200):  # SQLite may still have room in the WAL's pages: decide until the disk says no
        it = s.item
        before = it.boxes_state()
        try:
            s.edit_box(it.boxes[0].box_id, (3 + i % 20, 4, 20 + i % 7, 20))
        except ReviewStoreError as err:
            failed = str(err)
            assert it.boxes_state() == before  # rolled back in memory: the screen never runs ahead of the disk
            break
    assert failed is not None, "the disk never filled"
    assert "full" in failed and "cannot rollback" not in failed and str(small_tmpfs) in failed
    # J/K navigation keeps working on the full disk
    a = s.next()
    b = s.previous()
    assert a is not None and b is not None
    # space freed: the next decision is saved
    filler.unlink()
    it = s.item
    s.accept(advance=False)
    s.close()
    s2 = ReviewSession.open(ann, root, reviewer="AN")
    stored = s2.store.items()
    for k in keys + [it.key]:
        assert k in stored and stored[k].status != "unreviewed"
    s2.close()


def test_read_only_folder_opens_read_only_with_the_reason(tmp_path, small_tmpfs):
    ann_src, root = write_sample_set(tmp_path / "set", n_studies=3, seed=7, size=64)
    ann = small_tmpfs / "ms_cxr.csv"
    shutil.copy(ann_src, ann)
    s = ReviewSession.open(ann, root, reviewer="AN")
    done = s.item.key
    s.accept(advance=True)
    s.close()
    r = subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()[:120]}")
    # the intact review file reads from the read-only folder
    ro = ReviewSession.open(ann, root, reviewer="AN")
    assert ro.read_only_reason and "read-only" in ro.read_only_reason
    assert ro.store.items()[done].status == "accepted"
    assert ro.next() is not None and ro.previous() is not None  # navigation works
    with pytest.raises(ReviewStoreError, match="read-only"):
        ro.edit_box(ro.item.boxes[0].box_id, (30, 30, 5, 5))
    ro.close()
    # a set that has no review file yet cannot get one there: the message says why
    fresh = small_tmpfs / "ms_cxr.csv"
    assert fresh.exists()
    review_less = tmp_path / "other"
    review_less.mkdir()
    with pytest.raises(ReviewStoreError, match="read-only"):
        ReviewSession.open(ann, root, reviewer="AN", store_path=small_tmpfs / "new.review.sqlite")
