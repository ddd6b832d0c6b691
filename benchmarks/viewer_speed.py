"""Viewer speed: W/L drag steps and repaints on a large image, overlay placement, grounding latency in the window,
and the largest GUI event-loop gap while a model loads and an image is embedded in workers.

    QT_QPA_PLATFORM=offscreen python benchmarks/viewer_speed.py [--size 3000]

Prints a table (median / max over repeats). Numbers depend on the machine; see docs/viewer.md for measured ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def timed(fn, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000, max(ts) * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()

    from PySide6 import QtCore, QtWidgets

    from elvis_core.grounding.types import GroundingMap
    from elvis_core.io.radiograph import Radiograph
    from elvis_core.model.transforms import ModelInputTransform
    from elvis_viewer import workers
    from elvis_viewer.image_view import ImageView
    from elvis_viewer.main_window import MainWindow

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    rows = []
    rng = np.random.default_rng(0)
    pix = (rng.normal(size=(a.size, a.size)) * 200 + 1000).astype(np.float32)
    rad = Radiograph(pixels=pix, meta={"ViewPosition": "PA", "Modality": "DX"}, pixel_spacing=(0.14, 0.14),
                     spacing_source="PixelSpacing")
    iv = ImageView()
    iv.resize(1000, 1000)
    iv.show()
    app.processEvents()
    rows.append((f"set_radiograph {a.size}x{a.size}", *timed(lambda: (iv.set_radiograph(rad), iv.grab()), 3)))

    def wl_step():
        iv.view_box.sigWindowDrag.emit(4.0, 3.0)
        iv.grab()  # forces a full repaint of the view
    rows.append(("W/L drag step + repaint (fit)", *timed(wl_step, a.repeats)))
    iv.one_to_one()
    rows.append(("W/L drag step + repaint (1:1)", *timed(wl_step, a.repeats)))
    iv.fit()

    def pan_step():
        iv.view_box.translateBy(x=5, y=3)
        iv.grab()
    rows.append(("pan step + repaint", *timed(pan_step, a.repeats)))
    t = ModelInputTransform(size=512)
    gm = GroundingMap(similarity=rng.uniform(-1, 1, (16, 16)).astype(np.float32),
                      grid_to_image=t.grid_to_image((a.size, a.size), (16, 16)), image_shape=(a.size, a.size))
    rows.append(("set_overlay 16x16 grid + repaint", *timed(lambda: (iv.set_overlay(gm), iv.grab()), a.repeats)))
    iv.set_isolines(True)
    rows.append(("overlay + isolines + repaint", *timed(lambda: (iv.set_overlay(gm), iv.grab()), a.repeats)))

    # window: model load + image embedding in workers while a 5 ms timer measures gaps
    import tempfile

    import pydicom
    from pydicom.data import get_testdata_file

    settings = QtCore.QSettings(os.path.join(tempfile.mkdtemp(), "s.ini"), QtCore.QSettings.Format.IniFormat)
    from elvis_viewer.app import preload_heavy_modules

    preload_heavy_modules()  # as elvis-viewer does at start-up
    win = MainWindow(settings=settings)
    win.show()
    win.open_paths([get_testdata_file("CT_small.dcm")])
    while win.busy() or win.rad is None:
        app.processEvents()
    stamps = []
    timer = QtCore.QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start()
    t0 = time.perf_counter()

    def factory():
        from elvis_core.model import build_model
        from elvis_core.model.config import preset

        return build_model(preset("demo"))
    win.load_checkpoint(None, 0, factory=factory, name="demo")
    while win.slots[0].engine is None and win.slots[0].error == "":
        app.processEvents()
    t_load = time.perf_counter() - t0
    lat = []
    for phrase in ("left basal opacity", "small right pleural effusion", "cardiomegaly", "no pneumothorax",
                   "left basal opacity"):
        done = []
        win.overlayUpdated.connect(lambda k: done.append(k))
        t1 = time.perf_counter()
        win.ground_phrase(phrase)
        while not done:
            app.processEvents()
        win.overlayUpdated.disconnect()
        lat.append((time.perf_counter() - t1) * 1000)
    timer.stop()
    gaps = np.diff([t0] + stamps) * 1000
    rows.append(("demo model build in worker", t_load * 1000, t_load * 1000))
    rows.append(("phrase → overlay drawn (first incl. embed)", lat[0], lat[0]))
    rows.append(("phrase → overlay drawn (next phrases)", statistics.median(lat[1:]), max(lat[1:])))
    rows.append(("GUI event-loop gap during load+embed+ground", float(np.median(gaps)), float(gaps.max())))
    workers.wait_all()

    print(f"{'measurement':50s} {'median ms':>10s} {'max ms':>10s}")
    for name, med, mx in rows:
        print(f"{name:50s} {med:10.1f} {mx:10.1f}")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
