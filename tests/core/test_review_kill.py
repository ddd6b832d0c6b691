"""SIGKILL a reviewing process many times during a stream of saves: the review file must always open, and it must
hold every decision the process acknowledged (it prints ACK only after ReviewSession's decision method returned,
i.e. after the durable commit)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elvis_core.review import ReviewSession, review_path_for
from elvis_core.review.sample import write_sample_set

WORKER = r"""
import json, sys
from elvis_core.review import ReviewSession
s = ReviewSession.open(sys.argv[1], sys.argv[2], reviewer="killer")
i = int(sys.argv[3])
print("READY", flush=True)
while True:
    if s.item is None:
        s.go_to(0)
    it = s.item
    b = it.boxes[0]
    last = s.store.last_seq
    if i % 4 == 3:
        s.accept(advance=True)       # decide, persist, then advance
    else:
        s.edit_box(b.box_id, (1 + i % 37, 2 + i % 29, 10 + i % 7, 12))
    if s.store.last_seq != last:
        print("ACK", s.store.last_seq, json.dumps(it.key), json.dumps(it.boxes_state()), sep="\t", flush=True)
    if i % 40 == 39:
        s.go_to(0)
    i += 1
"""

N_KILLS = 100


@pytest.mark.slow
def test_sigkill_during_saves_never_loses_an_acknowledged_decision(tmp_path):
    ann, root = write_sample_set(tmp_path / "set", n_studies=4, seed=3, size=96)
    rng = random.Random(0)
    acked = {}  # seq -> (key, state)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    i0 = 0
    for k in range(N_KILLS):
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(ann), str(root), str(i0)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.15))  # saves stream meanwhile; kill at an arbitrary instant
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
        n_before = len(acked)
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 4 and parts[0] == "ACK" and line.endswith("]"):  # complete lines only
                acked[int(parts[1])] = (json.loads(parts[2]), json.loads(parts[3]))
        i0 += 1000 + (len(acked) - n_before)
        # the review file is loadable and consistent after every kill
        con = sqlite3.connect(str(review_path_for(ann)))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        log = {seq: (key, json.loads(st)) for seq, key, st in con.execute("SELECT seq, key, state FROM log")}
        items = {key: (seq, json.loads(st)) for key, seq, st in con.execute("SELECT key, seq, state FROM items")}
        con.close()
        missing = [seq for seq in acked if seq not in log]
        assert not missing, f"kill {k}: acknowledged decisions lost: {missing[:5]}"
        for seq, (key, state) in acked.items():
            assert log[seq] == (key, state)
        for key, (seq, state) in items.items():  # current state = the newest logged decision of that item
            newest = max(s for s, (kk, _) in log.items() if kk == key)
            assert seq == newest and state == log[newest][1]
    assert len(acked) > 3 * N_KILLS  # the kills really happened during a stream of saves
    s = ReviewSession.open(ann, root)  # the session resumes from the file
    last_key, last_state = acked[max(acked)]
    assert s.items[[it.key for it in s.items].index(last_key)].boxes_state() == last_state or \
        max(acked) < s.store.items()[last_key].seq
    s.close()
