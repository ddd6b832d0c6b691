"""Issue 20 item 4: after a session through the real viewer (Review tab of the main window), quitting leaves every
decision in the review ``.sqlite`` itself: a copy of that file alone (no ``-wal``) reads every decision back."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PySide6 import QtCore

from elvis_core.review.sample import write_sample_set
from elvis_core.review.store import ReviewStore, review_path_for
from elvis_viewer.review.dialogs import SETTINGS_KEY


@pytest.fixture
def settings(tmp_path):
    s = QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.Format.IniFormat)
    s.setValue(SETTINGS_KEY, "Dr Keys")
    return s


def _session(tmp_path, settings, qtbot):
    from elvis_viewer.main_window import MainWindow

    csv_path, root = write_sample_set(tmp_path / "set", n_studies=3, seed=2, size=96)
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    if w.review_view is None:
        pytest.skip("Review tab unavailable")
    rv = w.review_view
    assert rv.load(csv_path, root, rescale=False)
    keys = []
    for _ in range(3):
        keys.append(rv.session.item.key)
        rv.session.accept(advance=True)
    return w, rv, Path(csv_path), keys, root


def _alone(tmp_path, csv_path) -> dict:
    alone = tmp_path / "alone.sqlite"
    shutil.copyfile(review_path_for(csv_path), alone)
    st = ReviewStore(alone, read_only=True)
    try:
        return st.items()
    finally:
        st.close()


def test_quit_leaves_every_decision_in_the_sqlite(tmp_path, settings, qtbot):
    w, rv, csv_path, keys, _root = _session(tmp_path, settings, qtbot)
    w.close()
    items = _alone(tmp_path, csv_path)
    assert all(items[k].status == "accepted" for k in keys)


def test_export_and_switching_checkpoint(tmp_path, settings, qtbot):
    w, rv, csv_path, keys, root = _session(tmp_path, settings, qtbot)
    rv.export(tmp_path / "out")
    items = _alone(tmp_path, csv_path)
    assert all(items[k].status == "accepted" for k in keys)
    other = tmp_path / "other.csv"
    other.write_bytes(csv_path.read_bytes())
    rv.session.reject("wrong location", advance=True)
    key4 = rv.session.items[3].key
    assert rv.load(other, root, rescale=False)  # switching annotations closes (and checkpoints) the first
    items = _alone(tmp_path, csv_path)
    assert items[key4].status == "rejected"
    w.close()


def test_a_process_that_exits_without_closing_leaves_everything_in_the_sqlite(tmp_path):
    """Quit = interpreter exit: any review store still open is checkpointed (TRUNCATE) and closed at exit."""
    import subprocess
    import sys

    csv_path, root = write_sample_set(tmp_path / "set", n_studies=2, seed=3, size=64)
    code = ("import sys; from elvis_core.review import ReviewSession; "
            "s = ReviewSession.open(sys.argv[1], sys.argv[2], reviewer='x'); "
            "[s.accept(advance=True) for _ in range(2)]; print(s.items[0].key)")
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", code, str(csv_path), str(root)], capture_output=True, text=True,
                       cwd=str(repo), env={**__import__("os").environ, "PYTHONPATH": str(repo)}, timeout=120)
    assert r.returncode == 0, r.stderr
    wal = review_path_for(csv_path).with_name(review_path_for(csv_path).name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed and truncated at exit
    items = _alone(tmp_path, csv_path)
    assert items[r.stdout.strip()].status == "accepted"
