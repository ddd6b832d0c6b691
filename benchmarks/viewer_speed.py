"""Viewer speed, one table: start-up, first paint, W/L, phrase -> overlay, review key -> next image + map.

    QT_QPA_PLATFORM=offscreen python benchmarks/viewer_speed.py [--size 3000] [--skip-large]

Rows (each with the comparison it is judged against, measured in the same run):

- launch -> window shown, launch -> first DICOM painted (pydicom-data RG1_UNCR, a real 1955x1841 CR): fresh
  ``python -m elvis_viewer FILE`` processes (``ELVIS_VIEWER_TIMING=exit`` prints wall-clock stamps), next to the same
  with torch + transformers imported first (what start-up did before: ``preload_heavy_modules``);
- GUI-thread time of the first paint of a 3000x3000 image (``set_radiograph`` + a forced repaint), with the
  display prepared in the reading worker (pyramid, robust range, window, presets) and without;
- W/L drag step and pan step + repaint;
- phrase -> overlay drawn (the call to ``ViewerSession.ground_phrase`` until the view repainted with the map) p50/p95,
  for report sentences (encoded in the background when the report opened) and typed phrases (new text each time;
  Enter at once, and after a 300 ms pause during which the line edit's pre-encoding runs), with the demo model and
  with ResNet-50 + BERT-base (random weights: the cost does not depend on them);
- Review: key J -> next image and its map shown, p50/p95, with preloading and without;
- the largest GUI event-loop gap while the first checkpoint loads in a fresh process (torch and transformers are
  imported by the loading worker then), and that load time.

Launch -> FIRST MAP drawn (demo and a ResNet-50 + BERT-base checkpoint, ONNX Runtime vs torch engine, offscreen or
``--x11`` under Xvfb + openbox, against the bare-import floors): ``--first-map [--x11] [--runs N] [--skip-large]``
runs ``benchmarks/first_map.py``. Typed phrase -> overlay and full-size image embedding with ONNX Runtime / int8:
``benchmarks/onnx_speed.py``.

Numbers depend on the machine and its load; docs/viewer.md has measured ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SENTENCES_REPORT = """FINDINGS:
There is a small left basal opacity. The heart size is normal. No pneumothorax.
Mild bilateral perihilar edema. Small right pleural effusion is again demonstrated.
The mediastinal contours are within normal limits. There is no focal consolidation.

IMPRESSION:
1. Left basal opacity, possibly atelectasis.
2. Small right pleural effusion.
"""


def wait_for(app, pred, timeout_s: float = 120.0) -> None:
    """Run the event loop until ``pred()``, sleeping between passes like an idle GUI does (a busy loop would hold
    the GIL and slow the worker threads it is waiting for)."""
    t_end = time.perf_counter() + timeout_s
    while not pred():
        app.processEvents()
        if pred() or time.perf_counter() > t_end:
            break
        time.sleep(0.0005)


def pct(xs, q):
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")


def launch_rows(path: str, runs: int):
    """Fresh processes: (window s, painted s) lists, for the viewer as shipped and with torch imported first."""
    out = {}
    for label, pre in (("as shipped (torch lazy, in a worker)", ""),
                       ("torch + transformers imported first (before)", "import torch, transformers; ")):
        win, paint = [], []
        for _ in range(runs):
            env = dict(os.environ, ELVIS_VIEWER_TIMING="exit", QT_QPA_PLATFORM=os.environ["QT_QPA_PLATFORM"],
                       ELVIS_VIEWER_SETTINGS=os.path.join(tempfile.mkdtemp(), "s.ini"))
            code = pre + "import sys; from elvis_viewer.app import main; sys.exit(main())"
            t0 = time.time()
            p = subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=120)
            stamps = {ln.split()[1]: float(ln.split()[2]) for ln in p.stderr.splitlines()
                      if ln.startswith("elvis-timing")}
            if "window" in stamps and "painted" in stamps:
                win.append(stamps["window"] - t0)
                paint.append(stamps["painted"] - t0)
        out[label] = (win, paint)
    return out


def gap_child() -> None:
    """In a fresh process (torch NOT imported yet): open RG1, load the shipped demo checkpoint (torch and
    transformers get imported by the loading worker), ground a report-less phrase; print the largest GUI event-loop
    gap seen by a 5 ms QTimer, and the load time."""
    from pydicom.data import get_testdata_file
    from PySide6 import QtCore, QtWidgets

    from elvis_viewer.main_window import MainWindow

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    win = MainWindow(settings=QtCore.QSettings(os.path.join(tempfile.mkdtemp(), "s.ini"),
                                               QtCore.QSettings.Format.IniFormat))
    win.show()
    win.open_paths([get_testdata_file("RG1_UNCR.dcm")])
    wait_for(app, lambda: win.rad is not None and not win.busy())
    assert "torch" not in sys.modules
    stamps = []
    timer = QtCore.QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start()
    t0 = time.perf_counter()
    win.load_checkpoint(str(ROOT / "resources" / "demo_model"), 0)
    wait_for(app, lambda: win.slots[0].engine is not None or bool(win.slots[0].error))
    t_load = time.perf_counter() - t0
    done = []
    win.overlayUpdated.connect(done.append)
    win.ground_phrase("left basal opacity")
    wait_for(app, lambda: bool(done) and not win.busy())
    timer.stop()
    gaps = np.diff([t0] + stamps)
    print(f"GAP {gaps.max() * 1000:.1f} {np.percentile(gaps, 50) * 1000:.1f} {t_load * 1000:.1f}", flush=True)
    os._exit(0)


def main() -> int:
    if "--gap-child" in sys.argv:
        gap_child()
    if "--first-map" in sys.argv:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import first_map

        return first_map.main([x for x in sys.argv[1:] if x != "--first-map"])
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--launch-runs", type=int, default=3)
    ap.add_argument("--phrases", type=int, default=20)
    ap.add_argument("--skip-large", action="store_true", help="leave out ResNet-50 + BERT-base")
    ap.add_argument("--gap-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    rows = []  # (measurement, p50 ms, p95/max ms, note)
    gaps, loads = [], []
    for _ in range(a.launch_runs):
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--gap-child"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        for ln in p.stdout.splitlines():
            if ln.startswith("GAP "):
                gaps.append(float(ln.split()[1]))
                loads.append(float(ln.split()[3]))
    rows.append(("largest GUI gap, first model load (demo model as shipped: ONNX engine)", pct(gaps, 50), max(gaps or [0]),
                 f"{len(gaps)} fresh processes; median of the maxima / max"))
    rows.append(("demo checkpoint load + warm-up (worker)", pct(loads, 50), max(loads or [0]), ""))

    from pydicom.data import get_testdata_file

    rg1 = get_testdata_file("RG1_UNCR.dcm")
    for label, (w, p) in launch_rows(rg1, a.launch_runs).items():
        rows.append((f"launch -> window, {label}", pct(w, 50) * 1000, max(w, default=float("nan")) * 1000,
                     f"{len(w)} runs"))
        rows.append((f"launch -> RG1 CR painted, {label}", pct(p, 50) * 1000, max(p, default=float("nan")) * 1000,
                     f"{len(p)} runs"))

    from PySide6 import QtCore, QtWidgets

    from elvis_core.io.radiograph import Radiograph
    from elvis_viewer import workers
    from elvis_viewer.image_view import ImageView
    from elvis_viewer.view_items import prepare_display

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    rng = np.random.default_rng(0)
    iv = ImageView()
    iv.resize(1000, 1000)
    iv.show()
    app.processEvents()
    for prepared in (True, False):
        ts = []
        for _ in range(3):
            rad = Radiograph(pixels=(rng.normal(size=(a.size, a.size)) * 200 + 1000).astype(np.float32),
                             meta={"ViewPosition": "PA", "Modality": "DX"}, pixel_spacing=(0.14, 0.14))
            if prepared:
                prepare_display(rad)
            t0 = time.perf_counter()
            iv.set_radiograph(rad)
            iv.presets()
            iv.grab()
            ts.append((time.perf_counter() - t0) * 1000)
        rows.append((f"GUI thread, first paint {a.size}² " + ("(prepared in the worker)" if prepared else
                                                               "(not prepared: before)"), pct(ts, 50), max(ts), ""))

    def timed(fn, n):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1000)
        return pct(ts, 50), pct(ts, 95)

    def wl_step():
        iv.view_box.sigWindowDrag.emit(4.0, 3.0)
        iv.grab()

    def pan_step():
        iv.view_box.translateBy(x=5, y=3)
        iv.grab()
    rows.append(("W/L drag step + repaint (fit)", *timed(wl_step, a.repeats), "p95"))
    rows.append(("pan step + repaint", *timed(pan_step, a.repeats), "p95"))
    iv.close()

    # ---- phrase -> overlay in the window
    from elvis_core.model import build_model, preset
    from elvis_viewer.main_window import MainWindow

    tmp = Path(tempfile.mkdtemp())
    study = tmp / "files" / "p10" / "p10000001" / "s50000001"
    study.mkdir(parents=True)
    import shutil

    shutil.copy(rg1, study / "rg1.dcm")
    (study.parent / "s50000001.txt").write_text(SENTENCES_REPORT)
    presets = ["demo"] + ([] if a.skip_large else ["resnet50-bert-base"])
    for name in presets:
        win = MainWindow(settings=QtCore.QSettings(str(tmp / f"{name}.ini"), QtCore.QSettings.Format.IniFormat))
        win.resize(1500, 950)
        win.show()
        win.open_paths([str(study / "rg1.dcm")])
        import torch

        torch.manual_seed(0)
        model = build_model(preset(name), texts=[SENTENCES_REPORT] * 3)
        win.load_checkpoint(None, 0, model=model, name=name)
        wait_for(app, lambda: not win.busy() and win.rad is not None and win.slots[0].engine is not None)
        s = win.session
        sentences = [(x.start, x.end) for x in s.report.sentences]

        def measure(text, span):
            done = []
            s.mapReady.connect(done.append)
            t0 = time.perf_counter()
            s.ground_phrase(text, span)
            wait_for(app, lambda: bool(done))
            win.image_view.glw.viewport().repaint()
            dt = (time.perf_counter() - t0) * 1000
            s.mapReady.disconnect(done.append)
            return dt
        sent_ts = [measure(s.report.text[a0:b0], (a0, b0)) for k in range(a.phrases)
                   for (a0, b0) in [sentences[k % len(sentences)]]]
        typed_ts = [measure(f"opacity in zone {k} of the {['left', 'right'][k % 2]} lung", None)
                    for k in range(a.phrases)]

        def typed_with_pause(k):
            text = f"nodule number {k} in the {['left', 'right'][k % 2]} upper lobe"
            s.preencode(text)  # what the line edit does 150 ms after the last key
            t_end = time.perf_counter() + 0.3  # the reader's pause before Enter
            wait_for(app, lambda: time.perf_counter() > t_end)
            return measure(text, None)
        paused_ts = [typed_with_pause(k) for k in range(a.phrases)]
        rows.append((f"phrase -> overlay, report sentence, {name}", pct(sent_ts, 50), pct(sent_ts, 95),
                     "target p50 <= 16"))
        rows.append((f"phrase -> overlay, typed phrase, Enter at once, {name}", pct(typed_ts, 50), pct(typed_ts, 95),
                     "target p50 <= 60 (BERT-base)" if "bert" in name else ""))
        rows.append((f"phrase -> overlay, typed phrase, 300 ms pause before Enter, {name}", pct(paused_ts, 50),
                     pct(paused_ts, 95), "encoded while typing"))
        workers.wait_all()
        win.close()

    # ---- review: key J -> next image + map
    rows += review_rows(app, tmp, n=12)
    workers.wait_all()

    print(f"{'measurement':66s} {'p50 ms':>9s} {'p95/max ms':>11s}  note")
    for name, med, mx, note in rows:
        print(f"{name:66s} {med:9.1f} {mx:11.1f}  {note}")
    sys.stdout.flush()
    os._exit(0)


def review_rows(app, tmp: Path, n: int):
    from PySide6 import QtCore

    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.model import build_model, preset
    from elvis_core.phantom.generate import generate
    from elvis_viewer import workers
    from elvis_viewer.review import ReviewView
    from elvis_viewer.review.dialogs import SETTINGS_KEY

    summary = generate(tmp / "ph", n_studies=n + 4, seed=3, size=1024)
    eng = GroundingEngine.load(build_model(preset("demo")))
    out = []
    for preload in (True, False):
        settings = QtCore.QSettings(str(tmp / f"rv{preload}.ini"), QtCore.QSettings.Format.IniFormat)
        settings.setValue(SETTINGS_KEY, "bench")
        csv = tmp / f"ms_cxr_{preload}.csv"
        csv.write_bytes(Path(summary.csv_path).read_bytes())
        v = ReviewView(lambda: eng, settings=settings)
        if not preload:
            v._preload_next = lambda: None
        v.resize(1280, 720)
        v.show()
        v.load(str(csv), summary.out_dir)

        def shown():
            it = v.session.item
            return it is not None and v.loaded_key == it.key and v.map_key == it.key
        wait_for(app, shown)
        ts = []
        for _ in range(min(n, len(v.session.visible()) - 1)):
            t_settle = time.perf_counter() + 1.0  # an annotator looks at each item (>= 1 s): preloading runs then
            while time.perf_counter() < t_settle:
                app.processEvents()
                time.sleep(0.005)
            t0 = time.perf_counter()
            v.next_item()
            wait_for(app, shown)
            v.image_view.glw.viewport().repaint()
            ts.append((time.perf_counter() - t0) * 1000)
        out.append((f"review J -> next image + map, {'with preloading' if preload else 'no preloading (before)'}",
                    pct(ts, 50), pct(ts, 95), "target p95 <= 100" if preload else ""))
        workers.wait_all()
        v.close()
    return out


if __name__ == "__main__":
    main()
