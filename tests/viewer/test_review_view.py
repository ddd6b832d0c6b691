"""Review mode driven like an annotator: keyboard only on a phantom annotation set, then the exported files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PySide6 import QtCore, QtWidgets

from elvis_core.grounding.types import GroundingMap
from elvis_core.phantom.generate import generate
from elvis_core.review import ReviewSession
from elvis_viewer.review import ReviewView
from elvis_viewer.review.dialogs import SETTINGS_KEY
from elvis_viewer.workers import wait_all

Key = QtCore.Qt.Key


class CentreEngine:
    """Stands in for GroundingEngine in the view (only ``ground_image`` is used): a map peaked at the image centre."""

    def __init__(self):
        self.calls = []

    def ground_image(self, rad, phrase):
        self.calls.append(phrase)
        rows, cols = rad.shape
        g = 8
        yy, xx = np.mgrid[0:g, 0:g]
        sim = np.exp(-((xx - 3.5) ** 2 + (yy - 3.5) ** 2) / 4.0).astype(np.float32) * 1.6 - 0.6
        a = np.array([[cols / g, 0, 0], [0, rows / g, 0], [0, 0, 1.0]])
        return GroundingMap(similarity=sim, grid_to_image=a, image_shape=(rows, cols), phrase=phrase)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("review_phantom")
    summary = generate(root, n_studies=8, seed=1, size=128)
    return Path(summary.csv_path), Path(summary.out_dir)


@pytest.fixture
def annotations(tmp_path, phantom):
    own = tmp_path / "ms_cxr.csv"
    own.write_bytes(phantom[0].read_bytes())
    return own, phantom[1]


@pytest.fixture
def settings(tmp_path):
    s = QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.Format.IniFormat)
    s.setValue(SETTINGS_KEY, "Dr Keys")
    return s


def _view(qtbot, settings, engine=None, **kw):
    v = ReviewView(lambda: engine, settings=settings, **kw)
    qtbot.addWidget(v)
    v.resize(1300, 760)
    v.show()
    qtbot.waitExposed(v)
    v.activateWindow()
    v.setFocus()
    return v


def _wait_item(qtbot, v, with_map=False):
    key = v.session.item.key
    qtbot.waitUntil(lambda: v.loaded_key == key and (not with_map or v.map_key == key), timeout=10000)


def _press(qtbot, v, key, mods=QtCore.Qt.KeyboardModifier.NoModifier):
    qtbot.keyClick(v.focusWidget() or v, key, mods)


def _answer_modal(qtbot, keys):
    """Press ``keys`` in the next modal dialog (keyboard only), from inside its event loop."""
    def go():
        dlg = QtWidgets.QApplication.activeModalWidget()
        if dlg is None:
            QtCore.QTimer.singleShot(20, go)
            return
        target = dlg.focusWidget() or dlg
        for k in keys:
            if isinstance(k, str):
                qtbot.keyClicks(target, k)
            else:
                qtbot.keyClick(target, k)
    QtCore.QTimer.singleShot(0, go)


def _rows(p):
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_keyboard_only_review_and_exports(qtbot, annotations, settings, tmp_path):
    ann, root = annotations
    engine = CentreEngine()
    v = _view(qtbot, settings, engine)
    assert v.load(ann, root)
    n = len(v.session.items)
    assert n >= 5 and v.problems.count() == 0 and not v.problems.isVisible()  # no empty problems box
    _wait_item(qtbot, v, with_map=True)
    assert "CNR" in v.figures_label.text() and "no model map" not in v.figures_label.text()
    assert v.report_view.report is not None and v.report_view.current is not None  # phrase highlighted
    start, end = v.report_view.current
    assert v.report_view.report.text[start:end].lower() == v.session.item.label_text.lower()

    # 1: accept (A) → saved, queue advances
    first = v.session.item.key
    _press(qtbot, v, Key.Key_A)
    assert v.session.items[0].status == "accepted" and v.session.current == 1
    _wait_item(qtbot, v)  # a decision waits for its item to be on screen
    # 2: reject (R) with a reason picked by keyboard in the dialog
    _answer_modal(qtbot, [Key.Key_Down, Key.Key_Return])
    _press(qtbot, v, Key.Key_R)
    assert v.session.items[1].status == "rejected"
    assert v.session.items[1].boxes[0].reason == "box too large" and v.session.current == 2
    _wait_item(qtbot, v)
    # 3: add a box (N), it is selected; delete it (Del); undo (Ctrl+Z) brings it back; redo removes it again
    nb = len(v.session.item.boxes)
    _press(qtbot, v, Key.Key_N)
    assert len(v.session.item.boxes) == nb + 1 and v.boxes.selected == v.session.item.boxes[-1].box_id
    _press(qtbot, v, Key.Key_Delete)
    assert len(v.session.item.boxes) == nb
    _press(qtbot, v, Key.Key_Z, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert len(v.session.item.boxes) == nb + 1
    _press(qtbot, v, Key.Key_Z, QtCore.Qt.KeyboardModifier.ControlModifier | QtCore.Qt.KeyboardModifier.ShiftModifier)
    assert len(v.session.item.boxes) == nb
    # select the first original box (S) and edit it as a drag does (ROI change finished) → edited, live IoU shown
    _press(qtbot, v, Key.Key_S)
    b = v.session.item.boxes[0]
    bid, (x, y, w, h) = b.box_id, b.xywh
    v.boxes.set_box_geometry(bid, x + w // 2 + 0.3, y + 0.2, w, h)  # a drag ends between pixels
    qtbot.waitUntil(lambda: v.session.item.box(bid).status == "edited", timeout=3000)
    iou = float(v.figures_label.text().split("IoU orig→edit: ")[1].split()[0])
    assert iou == pytest.approx(1 / 3, abs=0.02)
    assert all(float(c).is_integer() for c in v.session.item.box(bid).xywh)  # stored (and exported) as whole pixels
    # keyboard edit: Shift+Right moves the selected box 10 px, Ctrl+Down grows it 1 px, Ctrl+Z undoes both
    before = v.session.item.box(bid).xywh
    _press(qtbot, v, Key.Key_Right, QtCore.Qt.KeyboardModifier.ShiftModifier)
    _press(qtbot, v, Key.Key_Down, QtCore.Qt.KeyboardModifier.ControlModifier)
    after = v.session.item.box(bid).xywh
    W, H = v.session.item.image_width, v.session.item.image_height
    x, y, w, h = before
    ex = min(x + 10, W - 1)  # edits are clipped to the image
    assert after == pytest.approx((ex, y, min(ex + w, W) - ex, min(y + h + 1, H) - y))
    _press(qtbot, v, Key.Key_Z, QtCore.Qt.KeyboardModifier.ControlModifier)
    _press(qtbot, v, Key.Key_Z, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert v.session.item.box(bid).xywh == pytest.approx(before)
    _press(qtbot, v, Key.Key_A)  # accept the rest of item 2, advance
    assert v.session.items[2].status == "edited" and v.session.current == 3
    # navigation: K back, J forward, U next unreviewed
    _press(qtbot, v, Key.Key_K)
    assert v.session.current == 2
    _press(qtbot, v, Key.Key_J)
    assert v.session.current == 3
    _press(qtbot, v, Key.Key_U)
    assert v.session.current == 4 and v.session.item.status == "unreviewed"
    # the queue shows the counts
    assert v.counts_label.text().startswith("3 / ")

    paths = v.export(tmp_path / "out")
    rows = _rows(paths["csv"])
    by_status = {}
    for r in rows:
        by_status.setdefault(r["review_status"], []).append(r)
    assert len(by_status["rejected"]) == len(v.session.items[1].boxes)
    assert {r["reject_reason"] for r in by_status["rejected"]} == {"box too large"}
    assert len(by_status["edited"]) == 1
    assert float(by_status["edited"][0]["iou_original"]) == pytest.approx(1 / 3, abs=0.04)  # half a box, whole px
    assert all(r["reviewer"] == "Dr Keys" for r in rows if r["review_status"] != "unreviewed")
    coco = json.loads(Path(paths["coco"]).read_text())
    assert len(coco["annotations"]) == len(rows) - len(by_status["rejected"])
    summ = json.loads(Path(paths["summary"]).read_text())["overall"]
    assert (summ["reviewed"], summ["accepted"], summ["edited"], summ["rejected"]) == (3, 1, 1, 1)
    assert summ["mean_iou_change"] == pytest.approx(2 / 3, abs=0.04)

    # reopening resumes where the annotator stopped, with every decision
    v.close()
    wait_all()
    v2 = _view(qtbot, settings)
    assert v2.load(ann, root)
    assert v2.session.current == 4
    assert [it.status for it in v2.session.items[:3]] == ["accepted", "rejected", "edited"]
    assert v2.session.items[0].key == first
    v2.close()
    wait_all()


def test_reviewer_name_is_asked_once_and_kept(qtbot, annotations, tmp_path):
    ann, root = annotations
    settings = QtCore.QSettings(str(tmp_path / "empty.ini"), QtCore.QSettings.Format.IniFormat)
    v = _view(qtbot, settings)
    _answer_modal(qtbot, ["A. Notator", Key.Key_Return])
    assert v.load(ann, root)
    assert settings.value(SETTINGS_KEY) == "A. Notator" and v.session.reviewer == "A. Notator"
    v.close()
    wait_all()
    asked = []
    orig = QtWidgets.QInputDialog.getText
    QtWidgets.QInputDialog.getText = staticmethod(lambda *a, **k: asked.append(1) or ("x", True))
    try:
        v2 = _view(qtbot, settings)
        assert v2.load(ann, root) and asked == [] and v2.session.reviewer == "A. Notator"
    finally:
        QtWidgets.QInputDialog.getText = orig
    v2.close()
    wait_all()


def test_bad_rows_are_listed_and_the_queue_still_works(qtbot, annotations, settings, tmp_path):
    ann, root = annotations
    rows = _rows(ann)
    base = dict(rows[0])
    rows += [dict(base, label_text="bad number", w="wide"), dict(base, label_text="gone", path="files/p1/x.dcm")]
    with open(ann, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(base), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    v = _view(qtbot, settings)
    assert v.load(ann, root)
    texts = [v.problems.item(i).text() for i in range(v.problems.count())]
    assert any("'w'" in t and "not a number" in t for t in texts)
    assert any("image not found" in t and "files/p1/x.dcm" in t for t in texts)
    assert v.problems_label.text() == f"Import problems ({len(texts)})" and v.problems.isVisible()
    _wait_item(qtbot, v)
    _press(qtbot, v, Key.Key_A)
    assert v.session.items[0].status == "accepted"
    v.close()
    wait_all()


def test_missing_columns_fail_with_a_message_not_a_traceback(qtbot, settings, tmp_path, phantom):
    bad = tmp_path / "bad.csv"
    bad.write_text("dicom_id,path\nx,y\n")
    v = _view(qtbot, settings)
    assert not v.load(bad, phantom[1])
    assert "bad.csv" in v.last_error and "missing" in v.last_error
    v.close()


def test_filters_by_category_status(qtbot, annotations, settings):
    ann, root = annotations
    v = _view(qtbot, settings)
    assert v.load(ann, root)
    cats = v.session.counts()["category"]
    cat = max(cats, key=cats.get)
    v.set_filters(category=cat)
    assert v.queue.count() == cats[cat]
    assert all(v.session.items[i].category == cat for i in v.session.visible())
    _wait_item(qtbot, v)
    _press(qtbot, v, Key.Key_A)
    v.set_filters(status="unreviewed")
    assert v.queue.count() == len(v.session.items) - 1
    assert v.status_combo.currentText().startswith("unreviewed (")
    v.close()
    wait_all()


def test_inside_main_window_with_a_real_engine(qtbot, annotations, settings):
    """The Review tab of the main window: review keys win over the window's own (R = ruler, H = overlay), and the
    map comes from a real GroundingEngine (tiny untrained model) in a worker."""
    import torch

    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.model import build_model, preset
    from elvis_viewer.main_window import MainWindow

    ann, root = annotations
    torch.manual_seed(0)
    texts = [r["label_text"] for r in _rows(ann)]
    engine = GroundingEngine(build_model(preset("tiny"), texts=texts))
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    w.resize(1300, 800)
    w.show()
    qtbot.waitExposed(w)
    rv = w.review_view
    assert rv is not None and rv.settings is settings
    rv.engine_provider = lambda: engine
    w.tabs.setCurrentWidget(rv)
    rv.reason_provider = lambda parent: "wrong location"
    assert rv.load(ann, root)
    _wait_item(qtbot, rv, with_map=True)
    assert rv.gmap is not None and rv.gmap.phrase == rv.session.item.label_text
    assert "map CNR: —" not in rv.figures_label.text()
    rv.setFocus()
    rulers_before = len(w.image_view.measure.tools)
    _press(qtbot, rv, Key.Key_R)  # R = reject here, never "add ruler" of the Viewer tab
    assert rv.session.items[0].status == "rejected" and len(w.image_view.measure.tools) == rulers_before
    assert not w.actions_by_id["tools.ruler"].isEnabled()  # the Viewer's tools are off while Review is shown
    _press(qtbot, rv, Key.Key_K)
    _wait_item(qtbot, rv)
    _press(qtbot, rv, Key.Key_A)
    assert rv.session.items[0].status == "rejected"  # A accepts unreviewed boxes only; the rejection stands
    rv.close()
    wait_all()


def test_a_failed_save_is_shown_and_the_queue_does_not_move(qtbot, annotations, settings, monkeypatch):
    from elvis_core.review.store import ReviewStoreError

    ann, root = annotations
    v = _view(qtbot, settings)
    assert v.load(ann, root)
    shown = []
    monkeypatch.setattr(QtWidgets.QMessageBox, "critical", staticmethod(lambda *a: shown.append(a[2])))

    def full(*a, **k):
        raise ReviewStoreError("cannot save decision (database or disk is full)", v.session.store.path)

    monkeypatch.setattr(v.session.store, "save", full)
    _wait_item(qtbot, v)
    _press(qtbot, v, Key.Key_A)
    assert v.session.current == 0 and v.session.items[0].status == "unreviewed"
    assert shown and "disk is full" in shown[0]
    v.close()
    wait_all()


def test_rescale_is_asked_once_when_sizes_differ(qtbot, annotations, settings, monkeypatch):
    from elvis_viewer.review import view as view_mod

    ann, root = annotations
    rows = [dict(r, image_width=str(int(r["image_width"]) * 2), image_height=str(int(r["image_height"]) * 2))
            for r in _rows(ann)]
    with open(ann, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    asked = []
    monkeypatch.setattr(view_mod, "ask_rescale", lambda parent, n, ex: asked.append((n, ex)) or True)
    v = _view(qtbot, settings)
    assert v.load(ann, root)
    assert len(asked) == 1 and asked[0][0] == len(v.session.items)
    it = v.session.items[0]
    r0 = next(r for r in rows if r["label_text"] == it.label_text and r["path"] == it.path)
    assert it.rescaled and it.boxes[0].x == pytest.approx(float(r0["x"]) / 2)
    v.close()
    wait_all()
    v2 = _view(qtbot, settings)
    assert v2.load(ann, root) and len(asked) == 1 and v2.session.items[0].rescaled  # stored answer, not asked
    v2.close()
    wait_all()


def test_map_requested_when_the_model_finishes_loading(qtbot, annotations, settings):
    """Reopening a review before the model is loaded: the first item gets its map as soon as the model is ready,
    without pressing J then K."""
    ann, root = annotations
    box = {"engine": None}
    v = _view(qtbot, settings, engine=None)
    v.engine_provider = lambda: box["engine"]
    assert v.load(ann, root)
    _wait_item(qtbot, v)
    assert v.map_key is None  # no model yet
    box["engine"] = CentreEngine()
    v.engine_ready()  # what the main window calls on ViewerSession.modelChanged
    _wait_item(qtbot, v, with_map=True)
    assert v.gmap is not None and v.gmap.phrase == v.session.item.label_text
    v.close()
    wait_all()


def test_next_item_is_preloaded_with_its_map(qtbot, annotations, settings):
    ann, root = annotations
    eng = CentreEngine()
    v = _view(qtbot, settings, engine=eng)
    assert v.load(ann, root)
    _wait_item(qtbot, v, with_map=True)
    vis = v.session.visible()
    nxt = v.session.items[vis[1]]
    qtbot.waitUntil(lambda: nxt.key in v._ahead, timeout=10000)
    _press(qtbot, v, Key.Key_J)
    # shown at once, map included: no worker round trip after the key press
    assert v.loaded_key == nxt.key and v.map_key == nxt.key and v.gmap.phrase == nxt.label_text
    assert eng.calls.count(nxt.label_text) == 1  # grounded once, ahead of time
    v.close()
    wait_all()


_HOLDER = r"""
import sys
from elvis_core.review import ReviewSession
s = ReviewSession.open(sys.argv[1], sys.argv[2], reviewer="first")
print("READY", flush=True)
sys.stdin.readline()
s.close()
"""


def test_a_review_file_in_use_can_be_opened_read_only(qtbot, annotations, settings, monkeypatch):
    """Another reviewer's process writes the review file: the view offers a read-only look instead of failing;
    declined, it fails with the holder named; accepted, the queue opens and says that nothing is saved."""
    import os
    import subprocess
    import sys

    from elvis_viewer.review import view as view_mod

    ann, root = annotations
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(ann), str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "READY", holder.stderr.read()
        asked = []
        monkeypatch.setattr(view_mod, "ask_open_read_only", lambda parent, reason: asked.append(reason) or False)
        v = _view(qtbot, settings)
        assert not v.load(ann, root)
        assert asked and "in use" in asked[0] and "in use" in v.last_error
        monkeypatch.setattr(view_mod, "ask_open_read_only", lambda parent, reason: True)
        messages = []
        v.message.connect(messages.append)
        assert v.load(ann, root)
        assert v.session.read_only_reason and "READ-ONLY" in messages[-1]
        before = v.session.store.last_seq
        from elvis_core.review import ReviewStoreError

        with pytest.raises(ReviewStoreError, match="read-only"):
            v.session.accept()  # a decision is refused with the reason; nothing is written
        assert v.session.store.last_seq == before
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)


def test_a_damaged_review_file_offers_recovery(qtbot, annotations, settings, monkeypatch):
    """A damaged review file is never opened or re-created: the view names it and offers to recover what can be read
    (declined: it fails with the problem, the file untouched; accepted: the decisions come back from the audit
    trail and the status says how many)."""
    import sqlite3

    from elvis_core.review.store import review_path_for
    from elvis_viewer.review import view as view_mod

    ann, root = annotations
    v = _view(qtbot, settings)
    assert v.load(ann, root)
    keys = []
    for _ in range(3):
        keys.append(v.session.item.key)
        v.session.accept(advance=True)
    v.session.close()
    v.session = None
    rf = review_path_for(ann)
    db = sqlite3.connect(str(rf))
    db.execute("PRAGMA journal_mode=DELETE")
    db.executescript("DROP TABLE items")
    db.commit()
    db.close()
    before = rf.read_bytes()
    asked = []
    monkeypatch.setattr(view_mod, "ask_recover", lambda parent, err: asked.append(err) or False)
    assert not v.load(ann, root)
    assert asked and "items table is missing" in v.last_error and rf.read_bytes() == before
    assert asked[0].copy is not None and asked[0].copy.read_bytes() == before  # the damaged file kept as it was
    monkeypatch.setattr(view_mod, "ask_recover", lambda parent, err: True)
    messages = []
    v.message.connect(messages.append)
    assert v.load(ann, root)
    assert messages[-1].startswith("recovered 3 decision(s)"), messages[-1]
    got = {it.key: it.status for it in v.session.items}
    assert all(got[k] == "accepted" for k in keys)
    v.session.close()


def test_the_recover_dialog_names_the_problem_and_recovers_on_enter(qtbot, tmp_path):
    """The dialog itself (keyboard only): Enter = Recover (the default button), Escape = Cancel."""
    from elvis_core.review.store import ReviewDamagedError
    from elvis_viewer.review.dialogs import ask_recover

    err = ReviewDamagedError("the items table is missing", tmp_path / "a.csv.review.sqlite",
                             copy=tmp_path / "a.csv.review.sqlite.damaged-1")
    seen = []

    def answer(key):
        def go():
            dlg = QtWidgets.QApplication.activeModalWidget()
            if dlg is None:
                QtCore.QTimer.singleShot(20, go)
                return
            seen.append(dlg.text())
            qtbot.keyClick(dlg, key)
        QtCore.QTimer.singleShot(0, go)

    answer(QtCore.Qt.Key.Key_Return)
    assert ask_recover(None, err) is True
    assert "items table is missing" in seen[0] and "damaged-1" in seen[0] and "Recover what can be read" in seen[0]
    answer(QtCore.Qt.Key.Key_Escape)
    assert ask_recover(None, err) is False
