"""The display invariant, property-based (Hypothesis stateful; issue 20, DESIGN.md "One study on screen at a time").

A headless :class:`ViewerSession` is driven by random programs: folder and file opens (good, truncated, slow,
failing), image and study navigation, report-phrase clicks, typed phrases (pinned or not), model loads (fast and
slow, into either slot), compare mode, and pauses that let the workers' results arrive in any order. At EVERY signal
the session emits, :func:`elvis_viewer.display_record.violations` must be empty: every displayed part (image,
report, phrase, maps with their checkpoint, boxes) has the current key, or is empty.

The Review tab runs its own random program (J / K / U / A / R / N with slow item reads): at every signal it emits
and after every key, the item named in the header is the one whose film, map and report are on screen (or nothing
is), and every saved decision landed on the item that was on screen when its key was pressed.

Bounded and deterministic: ``derandomize=True``, no example database, ``max_examples`` 30 / 20.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from pydicom.data import get_testdata_file
from PySide6 import QtCore, QtWidgets

import elvis_viewer.session as session_mod
from elvis_core.errors import DicomReadError
from elvis_core.grounding.types import GroundingMap
from elvis_viewer import workers
from elvis_viewer.display_record import FAILED, SHOWN, violations
from elvis_viewer.session import ViewerSession

REPORTS = {
    "s50000001": "FINDINGS:\nMild bilateral perihilar edema. Small left effusion.\n\nIMPRESSION:\nEdema.\n",
    "s50000002": "FINDINGS:\nNo evidence of pulmonary edema. No pneumothorax.\n\nIMPRESSION:\nNormal chest.\n",
    "s50000003": "FINDINGS:\nRight upper lobe opacity, possibly pneumonia.\n",
}
TYPED = ["edema", "left effusion", "no pneumothorax", "right upper lobe opacity", "cardiomegaly"]
SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck))


class FakeEngine:
    """Stands in for GroundingEngine (the invariant is about the session's bookkeeping, not the model): maps peaked
    at a phrase-dependent place, some answered from the 'cache' at once, the others after a delay in a worker."""

    def __init__(self, name: str, delay: float):
        self.checkpoint_hash = hashlib.sha256(name.encode()).hexdigest()
        self.provenance, self.device_name, self.delay = {}, "cpu (fake)", delay

    def _map(self, rad, phrase):
        rows, cols = rad.shape
        g = 6
        yy, xx = np.mgrid[0:g, 0:g]
        c = int(hashlib.md5(phrase.encode()).hexdigest(), 16) % g
        sim = np.exp(-((xx - c) ** 2 + (yy - (g - 1 - c)) ** 2) / 3.0).astype(np.float32)
        a = np.array([[cols / g, 0, 0], [0, rows / g, 0], [0, 0, 1.0]])
        return GroundingMap(similarity=sim, grid_to_image=a, image_shape=(rows, cols), phrase=phrase)

    def try_ground_cached(self, rad, phrase):
        return self._map(rad, phrase) if len(phrase) % 2 == 0 else None

    def ground_image(self, rad, phrase, tokens=False):
        time.sleep(self.delay)
        return self._map(rad, phrase)

    def embed(self, rad):
        time.sleep(self.delay / 2)

    def encode_phrases(self, phrases):
        return len(phrases)

    def has_phrase(self, text):
        return False


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory):
    """Three MIMIC studies with reports (two images in the first), a truncated DICOM, a loose note, and a file
    opened on its own with its report by explicit pairing."""
    root = tmp_path_factory.mktemp("identity")
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for k, (sid, text) in enumerate(REPORTS.items()):
        d = root / "files" / "p10" / "p10000001" / sid
        d.mkdir(parents=True)
        src.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[sid])
        for view in (["pa", "lat"] if k == 0 else ["pa"]):
            src.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[sid, view])
            src.save_as(d / f"{view}.dcm")
        (d.parent / f"{sid}.txt").write_text(text)
    raw = open(get_testdata_file("RG1_UNCI.dcm"), "rb").read()
    (root / "files" / "trunc.dcm").write_bytes(raw[:len(raw) // 3])  # header fine, pixel data cut
    (root / "files" / "loose.txt").write_text("Large left pneumothorax.\n")
    alone = root / "alone"
    alone.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), alone / "mr.dcm")
    (alone / "note.txt").write_text("FINDINGS:\nSmall right effusion.\n")
    return root


@pytest.fixture
def injected(monkeypatch):
    """Reads that are slow or fail on demand (by file name), model loads that are slow, fake engines."""
    faults = {"slow": set(), "fail": set()}
    real = session_mod.image_and_report

    def read(path, report_path):
        name = os.path.basename(path)
        if name in faults["slow"]:
            time.sleep(0.08)
        if name in faults["fail"]:
            raise DicomReadError("injected read failure", path)
        return real(path, report_path)
    monkeypatch.setattr(session_mod, "image_and_report", read)
    monkeypatch.setattr(session_mod, "load_engine", lambda path, model, factory: factory())
    return faults


def _pump(qtbot, ms: int) -> None:
    if ms:
        qtbot.wait(ms)
    else:
        QtWidgets.QApplication.processEvents()


def test_viewer_session_never_shows_parts_of_another_item(qtbot, study_folder, injected):
    stats = {"signals": 0, "maps": 0, "failed": 0, "carried": 0, "shown": 0, "phrases": 0}

    class Viewer(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.s = ViewerSession()
            self.bad = []
            for name in dir(ViewerSession):
                if isinstance(getattr(ViewerSession, name, None), QtCore.Signal):
                    getattr(self.s, name).connect(lambda *a, n=name: self._check(n))
            injected["slow"].clear()
            injected["fail"].clear()
            self.s.open_folder(str(study_folder))
            qtbot.waitUntil(lambda: not self.s.busy(), timeout=30000)

        def _check(self, signal: str) -> None:
            stats["signals"] += 1
            stats["maps"] += signal == "mapReady"
            d = self.s.display
            stats["failed"] += d.state == FAILED
            stats["shown"] += d.state == SHOWN
            stats["carried"] += bool(self.s.phrase.carried)
            v = violations(self.s)
            if v:
                self.bad.append((signal, v))

        def teardown(self):
            workers.wait_all(30000)
            QtWidgets.QApplication.processEvents()
            self.s.deleteLater()

        @initialize(delay=st.sampled_from([0.0, 0.05]))
        def start_with_a_model(self, delay):
            self.load_model(0, delay, "a")

        @invariant()
        def no_violation(self):
            assert self.bad == [], self.bad[:3]
            assert violations(self.s) == []

        @rule(i=st.integers(0, 20))
        def select(self, i):
            e = self.s.entries
            if e:
                self.s.select_image(e[i % len(e)].path)

        @rule(delta=st.sampled_from([-1, 1]), by_study=st.booleans())
        def step(self, delta, by_study):
            (self.s.step_study if by_study else self.s.step_image)(delta)

        @rule(which=st.sampled_from(["trunc", "alone", "alone+report", "missing"]))
        def open_file(self, which):
            f = study_folder / "files"
            if which == "trunc":
                self.s.open_paths([str(f / "trunc.dcm")])
            elif which == "alone":
                self.s.open_paths([str(study_folder / "alone" / "mr.dcm")])
            elif which == "alone+report":
                self.s.open_paths([str(study_folder / "alone" / "mr.dcm"), str(study_folder / "alone" / "note.txt")])
            else:
                self.s.open_paths([str(f / "nope.dcm")])

        @rule(name=st.sampled_from(["pa.dcm", "lat.dcm", "mr.dcm", "trunc.dcm"]),
              kind=st.sampled_from(["slow", "fail", "ok"]))
        def inject(self, name, kind):
            for k in ("slow", "fail"):
                injected[k].discard(name)
            if kind != "ok":
                injected[kind].add(name)
            self.s._cache.clear()  # so that the next read of it goes through the injected reader

        @rule(k=st.integers(0, 5))
        def click_report_phrase(self, k):
            rep = self.s.report
            if rep is not None and rep.sentences:
                sent = rep.sentences[k % len(rep.sentences)]
                start, end = sent.start, sent.end
                stats["phrases"] += 1
                self.s.ground_phrase(rep.text[start:end], (start, end))

        @rule(text=st.sampled_from(TYPED), pinned=st.booleans())
        def type_phrase(self, text, pinned):
            stats["phrases"] += 1
            self.s.set_phrase_pinned(pinned)
            self.s.ground_phrase(text, None)

        @rule(on=st.booleans())
        def pin(self, on):
            self.s.set_phrase_pinned(on)

        @rule(slot=st.sampled_from([0, 1]), delay=st.sampled_from([0.0, 0.05]), name=st.sampled_from(["a", "b"]))
        def load_model(self, slot, delay, name):
            self.s.load_checkpoint(None, slot, name=name, factory=lambda: (time.sleep(delay), FakeEngine(name, delay))[1])

        @rule(on=st.booleans())
        def compare(self, on):
            self.s.set_compare(on)

        @rule(ms=st.sampled_from([0, 0, 5, 30, 120]))
        def wait(self, ms):
            _pump(qtbot, ms)

        @rule()
        def settle(self):
            qtbot.waitUntil(lambda: not self.s.busy(), timeout=30000)

    Viewer.TestCase.settings = settings(max_examples=40, stateful_step_count=30, **SETTINGS)
    run_state_machine_as_test(Viewer, settings=Viewer.TestCase.settings)
    # the programs reached the situations the invariant is about (it is not vacuous)
    assert stats["signals"] > 500 and stats["maps"] > 30 and stats["failed"] > 5 and stats["shown"] > 50, stats
    assert stats["carried"] > 0 and stats["phrases"] > 30, stats


def test_review_decisions_land_on_the_item_on_screen(qtbot, monkeypatch, tmp_path_factory):
    from tests.viewer.test_review_view import CentreEngine

    import elvis_viewer.review.view as view_mod
    from elvis_core.phantom.generate import generate
    from elvis_viewer.review import ReviewView
    from elvis_viewer.review.dialogs import SETTINGS_KEY

    root = tmp_path_factory.mktemp("review_identity")
    summary = generate(root, n_studies=6, seed=3, size=96)
    real = view_mod._load_item_data
    slow = {"on": False}

    def load(key, image_path, report_path):
        if slow["on"]:
            time.sleep(0.06)
        return real(key, image_path, report_path)
    monkeypatch.setattr(view_mod, "_load_item_data", load)
    counter = {"n": 0}
    stats = {"decided": 0, "refused": 0, "signals": 0}

    class Review(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            counter["n"] += 1
            own = root / f"ann{counter['n']}.csv"
            shutil.copy(summary.csv_path, own)
            ini = QtCore.QSettings(str(root / f"s{counter['n']}.ini"), QtCore.QSettings.Format.IniFormat)
            ini.setValue(SETTINGS_KEY, "Dr Property")
            self.v = ReviewView(lambda: CentreEngine(), settings=ini, reason_provider=lambda parent: "wrong location")
            self.bad = []
            self.v.itemChanged.connect(lambda _k: self._check("itemChanged"))
            self.v.message.connect(lambda _m: self._check("message"))
            slow["on"] = False
            assert self.v.load(own, summary.out_dir)
            self.saved = {}  # key -> status, as the annotator saw it decided

        def _check(self, where):
            stats["signals"] += 1
            v, s = self.v, self.v.session
            it = s.item if s is not None else None
            if it is None:
                return
            if v.loaded_key not in (None, it.key):
                self.bad.append((where, f"header names {it.key}, screen shows {v.loaded_key}"))
            if v.loaded_key is None and (v.image_view.rad is not None or v.image_view.gmap is not None
                                         or v.report_view.report is not None or v.figures_label.text()):
                self.bad.append((where, "the previous item's film, map or report shown while loading"))
            if v.image_view.gmap is not None and v.image_view.gmap.phrase != it.label_text:
                self.bad.append((where, f"map of {v.image_view.gmap.phrase!r} under {it.label_text!r}"))

        def teardown(self):
            workers.wait_all(30000)
            self.v.session.close()
            self.v.deleteLater()

        @invariant()
        def consistent(self):
            self._check("invariant")
            assert self.bad == [], self.bad[:3]

        @rule(key=st.sampled_from(["J", "K", "U"]))
        def navigate(self, key):
            {"J": self.v.next_item, "K": self.v.previous_item, "U": self.v.next_unreviewed}[key]()

        @rule(kind=st.sampled_from(["A", "R", "N"]))
        def decide(self, kind):
            it = self.v.session.item
            on_screen = self.v.loaded_key == it.key
            before = it.boxes_state()
            undo_before = len(self.v.session._undo)
            {"A": self.v.accept, "R": self.v.reject, "N": self.v.add_box}[kind]()
            changed = it.boxes_state() != before
            if not on_screen:  # a key pressed before the item was on screen: nothing decided, nothing saved
                stats["refused"] += 1
                assert not changed and len(self.v.session._undo) == undo_before
            elif changed:
                stats["decided"] += 1

        @rule(on=st.booleans())
        def slow_reads(self, on):
            slow["on"] = on
            self.v._ahead.clear()

        @rule(ms=st.sampled_from([0, 10, 80]))
        def wait(self, ms):
            _pump(qtbot, ms)

        @rule()
        def settle(self):
            it = self.v.session.item
            qtbot.waitUntil(lambda: self.v.loaded_key == it.key, timeout=10000)

    run_state_machine_as_test(Review, settings=settings(max_examples=20, stateful_step_count=20, **SETTINGS))
    print("review", stats)
    assert stats["decided"] > 10 and stats["refused"] > 3 and stats["signals"] > 100, stats
