"""Geometry: the first window and every restored layout fit the screen's available area (all panels visible at
1280×720), and after shrinking to the minimum and maximising again the panels get their sizes back.

Each case runs in a fresh process whose offscreen screen has the size under test (Qt's offscreen platform reads the
screens from a JSON config file), so the window manager's real rules (maximise = the available area) apply."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DRIVER = r'''
import json, sys
from PySide6 import QtCore, QtWidgets
app = QtWidgets.QApplication([])
from elvis_viewer.main_window import MainWindow
ini, steps = sys.argv[1], sys.argv[2].split(",")
w = MainWindow(settings=QtCore.QSettings(ini, QtCore.QSettings.Format.IniFormat))
H = QtCore.Qt.Orientation.Horizontal

def pump(ms=400):
    t = QtCore.QElapsedTimer(); t.start()
    while t.elapsed() < ms:
        app.processEvents(); QtCore.QThread.msleep(10)

def snap():
    fg, av = w.frameGeometry(), w.screen().availableGeometry()
    sb = w.statusBar()
    return {"frame": [fg.x(), fg.y(), fg.width(), fg.height()], "avail": [av.x(), av.y(), av.width(), av.height()],
            "win": [w.width(), w.height()],
            "docks": {d.objectName(): [d.width(), d.height(), d.isVisible(),
                                       d.geometry().right() < w.width() and d.geometry().bottom() < w.height()]
                      for d in w.docks["viewer"]},
            "image": [w.image_view.width(), w.image_view.height()],
            "status": sb.isVisible() and sb.geometry().bottom() < w.height() and sb.height() > 0}
out = {}
w.show(); pump(800)
out["first"] = snap()
for step in steps:
    if step == "drag":  # the user drags the report panel wider
        w.resizeDocks([w.report_dock], [420], H); pump()
    elif step == "wide":
        w.resize(1900, 1000); pump(); w.resizeDocks([w.study_dock, w.report_dock], [600, 900], H); pump()
    elif step == "min":
        w.resize(w.minimumSizeHint()); pump()
    elif step == "max":
        w.showMaximized(); pump()
    elif step == "save":
        w.save_state()
    out[step] = snap()
print("RESULT " + json.dumps(out))
'''


def _run(tmp_path, screen, steps, ini="s.ini"):
    cfg = tmp_path / f"screen_{screen[0]}x{screen[1]}.json"
    cfg.write_text(json.dumps({"synchronousWindowSystemEvents": True, "windowFrameMargins": False,
                               "screens": [{"name": "s", "x": 0, "y": 0, "width": screen[0], "height": screen[1],
                                            "logicalDpiX": 96, "logicalDpiY": 96, "dpr": 1}]}))
    env = dict(os.environ, QT_QPA_PLATFORM=f"offscreen:configfile={cfg}", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / ini), ",".join(steps)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, p.stdout + p.stderr[-3000:]
    return json.loads(line[0][len("RESULT "):])


def _fits(s):
    fx, fy, fw, fh = s["frame"]
    ax, ay, aw, ah = s["avail"]
    return fx >= ax and fy >= ay and fx + fw <= ax + aw and fy + fh <= ay + ah


def _all_panels_visible(s):
    docks_ok = all(vis and inside and dw >= 80 and dh >= 80 for dw, dh, vis, inside in s["docks"].values())
    return s["status"] and docks_ok and s["image"][0] >= 300 and s["image"][1] >= 200


def test_first_window_fits_1280x720(tmp_path):
    r = _run(tmp_path, (1280, 720), [])
    assert _fits(r["first"]), r["first"]
    assert _all_panels_visible(r["first"]), r["first"]


def test_first_window_keeps_its_size_on_a_large_screen(tmp_path):
    r = _run(tmp_path, (1920, 1080), [])
    assert r["first"]["win"] == [1500, 950] and _fits(r["first"])
    d = r["first"]["docks"]  # side panels in proportion: the image keeps more than half the width
    assert d["dock_studies"][0] + d["dock_report"][0] <= 0.5 * 1500


def test_shrink_to_minimum_then_maximise_brings_the_layout_back(tmp_path):
    r = _run(tmp_path, (1280, 720), ["drag", "min", "max"])
    before, squeezed, back = r["drag"]["docks"], r["min"]["docks"], r["max"]["docks"]
    assert squeezed["dock_report"][0] < 200 <= before["dock_report"][0]  # the minimum squeezed the report panel
    assert abs(back["dock_report"][0] - before["dock_report"][0]) <= 4, (before, back)
    assert abs(back["dock_studies"][0] - before["dock_studies"][0]) <= 4
    # the left column (studies over overlay) keeps its proportions
    ratio = lambda d: d["dock_studies"][1] / (d["dock_studies"][1] + d["dock_overlay"][1])  # noqa: E731
    assert abs(ratio(back) - ratio(before)) < 0.05, (before, back)
    assert _fits(r["max"]) and _all_panels_visible(r["max"])


def test_layout_saved_on_a_large_screen_fits_a_small_one(tmp_path):
    big = _run(tmp_path, (1920, 1080), ["wide", "save"])
    assert big["wide"]["docks"]["dock_report"][0] >= 800  # a wide layout was saved
    small = _run(tmp_path, (1280, 720), [])
    s = small["first"]
    assert _fits(s), s
    assert _all_panels_visible(s), s
    assert s["docks"]["dock_studies"][0] + s["docks"]["dock_report"][0] <= 0.5 * s["win"][0] + 2
