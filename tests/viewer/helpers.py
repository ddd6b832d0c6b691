"""Window and view set-up shared by the viewer tests (and tests/pacs/test_pacs_viewer.py): each test gets its own
QSettings ini under its tmp_path, a shown window or view, and the background workers drained at teardown."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from PySide6 import QtCore, QtWidgets
from pydicom.data import get_testdata_file

from elvis_viewer import workers
from elvis_viewer.image_view import ImageView
from elvis_viewer.main_window import MainWindow


def ini_settings(path: Path | str, values: dict | None = None) -> QtCore.QSettings:
    """A QSettings backed by the ini file at ``path`` (a test's own, under its tmp_path), ``values`` set in it."""
    settings = QtCore.QSettings(str(path), QtCore.QSettings.Format.IniFormat)
    for key, value in (values or {}).items():
        settings.setValue(key, value)
    return settings


def show_widget(qtbot, widget, size):
    """``widget`` registered with qtbot (closed at teardown), resized to ``size``, shown and exposed."""
    qtbot.addWidget(widget)
    widget.resize(*size)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


@contextlib.contextmanager
def shown_window(qtbot, settings: QtCore.QSettings, size=(1200, 800)):
    """A shown MainWindow on ``settings``; on leaving, waits for its background workers (as a fixture's teardown)."""
    yield show_widget(qtbot, MainWindow(settings=settings), size)
    workers.wait_all(30000)


def shown_image_view(qtbot, size=(600, 600)) -> ImageView:
    return show_widget(qtbot, ImageView(), size)


def open_folder(qtbot, win, root):
    """File → Open folder on ``root``: waits for the first image and for the window to be idle."""
    with qtbot.waitSignal(win.imageShown, timeout=30000):
        win.open_folder(str(root))
    qtbot.waitUntil(lambda: not win.busy(), timeout=30000)


def write_mimic_study(root: Path, report: str, images: dict) -> Path:
    """MIMIC layout under ``root``: files/p10/p10000001/s50000001/ with ``images`` ({file name: pydicom test file}
    copied in) and the report s50000001.txt beside it; returns the study folder."""
    sdir = root / "files" / "p10" / "p10000001" / "s50000001"
    sdir.mkdir(parents=True)
    for name, testdata in images.items():
        shutil.copy(get_testdata_file(testdata), sdir / name)
    (sdir.parent / "s50000001.txt").write_text(report)
    return sdir


def copy_testdata(testdata: str, dest: Path) -> Path:
    """pydicom's test file ``testdata`` copied to ``dest``, in a new folder; returns ``dest``."""
    dest.parent.mkdir()
    shutil.copy(get_testdata_file(testdata), dest)
    return dest


def fake_save_dialog(monkeypatch) -> dict:
    """File → Export's save dialog answered by the test: cancelled, the proposed file name kept under "name"."""
    seen = {}

    def fake(parent, title, name, filt):
        seen["name"] = name
        return "", ""
    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", fake)
    return seen
