"""Entry point of ``elvis-viewer`` (also ``python -m elvis_viewer``).

``elvis-viewer [PATH …] [--checkpoint DIR] [--compare CKPT2] [--annotations CSV] [--images ROOT] [--review] [--demo]
[--screenshot OUT.png]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from elvis_core import resources as _resources

REPO_ROOT = Path(__file__).resolve().parent.parent
# the source checkout's resources/, else the package data of a non-editable install (elvis_core.resources)
DEMO_STUDIES = _resources.demo_studies()
DEMO_MODEL = _resources.demo_model()
DEMO_ANNOTATIONS = _resources.demo_annotations()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="elvis-viewer",
        description="Chest X-ray DICOM viewer with phrase grounding by an ELVIS vision-language model.",
        epilog="Example: elvis-viewer study_folder/ --checkpoint resources/demo_model --annotations ms_cxr.csv",
    )
    p.add_argument("paths", nargs="*", help="DICOM / image files, report .txt, study folders")
    p.add_argument("--report", metavar="TXT", help="the report of the IMAGE(s) given (explicit pairing: they must be "
                   "of one study; otherwise it is listed as unpaired and shown with none)")
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--compare", metavar="CKPT2", help="second checkpoint: opens compare mode side by side")
    p.add_argument("--annotations", metavar="CSV", help="MS-CXR annotation CSV (phrase boxes)")
    p.add_argument("--images", metavar="ROOT", help="images root the annotation paths are relative to")
    p.add_argument("--review", action="store_true", help="open the Review mode (needs --annotations and --images)")
    p.add_argument("--demo", action="store_true", help="open resources/demo with resources/demo_model "
                   "(overlay range auto unless --overlay-range says otherwise)")
    p.add_argument("--overlay-range", choices=("fixed", "auto", "stretch"), default=None,
                   help="map colour range: auto (the default: ±max |similarity|, symmetric about 0, for a confident "
                        "map; fixed [-1, 1] for a map below its presence threshold or from an uncalibrated model), "
                        "fixed [-1, 1], or stretch (±max always)")
    p.add_argument("--phrase", help="ground this phrase once the first image is shown")
    p.add_argument("--screenshot", metavar="OUT.png", help="render the window after loading, save it, exit")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds --screenshot waits for loading (default 120)")
    p.add_argument("--size", metavar="WxH", help="window size, e.g. 1280x720 (screenshots; default: the last one)")
    p.add_argument("--install-desktop-entry", action="store_true",
                   help="install the .desktop file and icon for the current user ($XDG_DATA_HOME, default "
                        "~/.local/share) and exit")
    return p


def menu_check_style(base_name: str = "Fusion"):
    """Fusion, whose menus draw a box around every checkable item's state: empty when off (Fusion alone draws
    nothing, so "Isolines" off looked like a plain command), its ✓ inside when on."""
    from PySide6 import QtCore, QtGui, QtWidgets

    class MenuCheckStyle(QtWidgets.QProxyStyle):
        def drawControl(self, element, option, painter, widget=None):
            super().drawControl(element, option, painter, widget)
            item = QtWidgets.QStyleOptionMenuItem
            if element == QtWidgets.QStyle.ControlElement.CE_MenuItem and isinstance(option, item) \
                    and option.checkType == item.CheckType.NonExclusive and option.icon.isNull():
                r = QtCore.QRect(option.rect.left() + 8, option.rect.center().y() - 5, 11, 11)
                painter.save()
                painter.setPen(QtGui.QColor("#9aa0a8" if option.state & QtWidgets.QStyle.StateFlag.State_Enabled
                                            else "#5a5e64"))
                painter.setBrush(QtCore.Qt.BrushStyle.NoBrush)
                painter.drawRect(r)
                painter.restore()

    return MenuCheckStyle(QtWidgets.QStyleFactory.create(base_name))


def apply_dark_theme(app) -> None:
    from PySide6 import QtGui, QtWidgets

    app._elvis_style = menu_check_style()  # kept referenced: the application does not own a Python style
    app.setStyle(app._elvis_style)
    pal = QtGui.QPalette()
    C = QtGui.QColor
    R = QtGui.QPalette.ColorRole
    pal.setColor(R.Window, C("#1e2126"))
    pal.setColor(R.WindowText, C("#e0e0e0"))
    pal.setColor(R.Base, C("#15171a"))
    pal.setColor(R.AlternateBase, C("#22262b"))
    pal.setColor(R.ToolTipBase, C("#2b2f36"))
    pal.setColor(R.ToolTipText, C("#e0e0e0"))
    pal.setColor(R.Text, C("#e0e0e0"))
    pal.setColor(R.Button, C("#2b2f36"))
    pal.setColor(R.ButtonText, C("#e0e0e0"))
    pal.setColor(R.BrightText, C("#ff5252"))
    pal.setColor(R.Highlight, C("#3d6fb4"))
    pal.setColor(R.HighlightedText, C("#ffffff"))
    pal.setColor(R.PlaceholderText, C("#8a8f98"))
    pal.setColor(QtGui.QPalette.ColorGroup.Disabled, R.Text, C("#6b6f76"))
    pal.setColor(QtGui.QPalette.ColorGroup.Disabled, R.ButtonText, C("#6b6f76"))
    app.setPalette(pal)


def wait_idle(win, app, timeout_s: float, settle_s: float = 0.3) -> bool:
    """Process events until the window has no pending work for ``settle_s`` (or the timeout passes)."""
    t_end = time.monotonic() + timeout_s
    idle_since = None
    while time.monotonic() < t_end:
        app.processEvents()
        if win.busy():
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= settle_s:
            return True
        time.sleep(0.01)
    return False


def preload_heavy_modules() -> None:
    """Import torch / transformers / the model code (NOT called at start-up any more: the model-loading worker
    imports them when a model is needed, so the window and a DICOM come up in about a second; kept for tools that
    want to pay the import up front)."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from elvis_core.grounding import engine  # noqa: F401
    from elvis_core.model import checkpoint, elvis  # noqa: F401
    from transformers import PreTrainedTokenizerFast, ResNetModel, BertModel  # noqa: F401  (lazy submodules)


def warm_inference_imports(args):
    """Start importing ONNX Runtime + tokenizers in a thread at launch when a checkpoint to open carries an ONNX
    export; returns the thread (or None). Importing them holds the GIL for ~0.1 s in one piece (the extension's
    initialisation; OpenCV's, needed by the model-input transform, another ~0.09 s), which would freeze a shown window: the import overlaps Qt's own import and the window's
    construction instead, and :func:`main` joins it before the window is shown (issue 25)."""
    ckpts = [args.checkpoint or (str(DEMO_MODEL) if args.demo else None), args.compare]
    if not any(c and (Path(c) / "onnx" / "manifest.json").is_file() for c in ckpts) or os.environ.get("ELVIS_NO_ONNX"):
        return None
    t = _import_in_thread("onnxruntime", "tokenizers", "cv2", "elvis_core.grounding.onnx_engine")
    from elvis_viewer.session_tasks import preload_fast_engine

    for c in ckpts:  # the engine itself is built meanwhile too (the loading worker takes it)
        if c and (Path(c) / "onnx" / "manifest.json").is_file():
            preload_fast_engine(c, after=t)
    return t


def warm_reader_imports(args):
    """Import the DICOM reading stack (pydicom, its pixel decoders, the scanner) in a thread at launch when there is
    something to open: it overlaps Qt's import (measured ~20 % sooner than one after the other on the 2 cores)
    instead of starting after the window is up. Pure-Python imports: they yield the GIL every few ms, so this is not
    joined."""
    if not (args.paths or args.demo):
        return None
    return _import_in_thread("pydicom.pixels", "elvis_core.io.dicom", "elvis_core.io.studies",
                             "elvis_core.io.images")


def _import_in_thread(*modules: str):
    import importlib
    import threading

    def run():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # the worker that needs it reports the problem (and the viewer falls back)
                return
    t = threading.Thread(target=run, name="elvis-warm-import", daemon=True)
    t.start()
    return t


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.install_desktop_entry:
        return _install_desktop_entry()
    from elvis_viewer.xlibs import check_x11

    problem = check_x11()  # before Qt: one line naming the missing X libraries instead of Qt's abort
    if problem:
        print(problem, file=sys.stderr)
        return 2

    import numpy  # noqa: F401 - before the warm threads: numpy's core refuses a concurrent first import
    # ("cannot load module more than once per process"); every thread below imports it

    warm = warm_inference_imports(args)
    warm_reader_imports(args)
    from PySide6 import QtCore, QtWidgets

    from elvis_viewer.main_window import MainWindow

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("ELVIS Viewer")
    app.setOrganizationName("ELVIS")
    apply_dark_theme(app)
    icon = _resources.resource_path("icons", "elvis-viewer.svg")
    if icon.exists():
        from PySide6 import QtGui

        app.setWindowIcon(QtGui.QIcon(str(icon)))
    settings = None
    if os.environ.get("ELVIS_VIEWER_SETTINGS"):
        settings = QtCore.QSettings(os.environ["ELVIS_VIEWER_SETTINGS"], QtCore.QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            print(f"--size {args.size}: expected WIDTHxHEIGHT, e.g. 1280x720", file=sys.stderr)
            return 2
        win.resize(w, h)
    if args.screenshot and win.review_view is not None:
        win.review_view.unattended = True  # never waits on a dialog (reviewer name, rescale, file in use)
    if warm is not None:
        warm.join(timeout=10.0)
    win.show()
    timing = os.environ.get("ELVIS_VIEWER_TIMING")
    if timing:  # benchmarks/viewer_speed.py: wall-clock stamps of the window and the first painted image
        _report_timing(win, app, exit_after_paint=(timing == "exit"))
    open_from_args(win, args, app)
    if args.screenshot:
        ok = wait_idle(win, app, args.timeout)
        # let the range/text layout settle after the last result
        for _ in range(5):
            app.processEvents()
            time.sleep(0.02)
        out = Path(args.screenshot)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not win.grab().save(str(out)):
            print(f"{out}: could not write the screenshot", file=sys.stderr)
            return 2
        if not ok:
            print(f"warning: still busy after {args.timeout:g} s; screenshot taken anyway", file=sys.stderr)
        win.save_state()
        print(f"screenshot: {out}")
        return _shutdown(win, app, 0, hard=argv is None)
    return _shutdown(win, app, app.exec(), hard=argv is None)


def _report_timing(win, app, exit_after_paint: bool) -> None:
    app.processEvents()
    win.repaint()
    print(f"elvis-timing window {time.time():.6f}", file=sys.stderr, flush=True)

    def painted(_path):
        win.repaint()  # synchronous paint of the window with the image in it
        print(f"elvis-timing painted {time.time():.6f} torch_loaded={'torch' in sys.modules}", file=sys.stderr,
              flush=True)
        if exit_after_paint:
            os._exit(0)
    win.imageShown.connect(painted)

    # last tick, largest gap until the first map, largest gap while a checkpoint loads: the GUI event loop's stalls
    gaps = [time.perf_counter(), 0.0, 0.0]
    if os.environ.get("ELVIS_VIEWER_GAPS"):
        from PySide6 import QtCore

        def tick():
            now = time.perf_counter()
            gaps[1] = max(gaps[1], now - gaps[0])
            if any(s.loading for s in win.session.slots):
                gaps[2] = max(gaps[2], now - gaps[0])
            gaps[0] = now
        win._timing_timer = QtCore.QTimer(win, interval=5, timeout=tick)
        win._timing_timer.start()

    def mapped(_slot):  # the first map drawn on screen (benchmarks/first_map.py)
        win.repaint()
        print(f"elvis-timing mapped {time.time():.6f} torch_loaded={'torch' in sys.modules} "
              f"engine={type(win.session.slots[0].engine).__name__} gap_ms={gaps[1] * 1000:.1f} "
              f"load_gap_ms={gaps[2] * 1000:.1f}",
              file=sys.stderr, flush=True)
        if timing == "map":
            os._exit(0)
    timing = os.environ.get("ELVIS_VIEWER_TIMING")
    if timing in ("map", "all"):
        win.overlayUpdated.connect(mapped)


def _install_desktop_entry() -> int:
    from elvis_core.errors import ElvisError
    from elvis_viewer.desktop_entry import install_desktop_entry

    try:
        for path in install_desktop_entry():
            print(path)
    except ElvisError as err:
        print(f"elvis-viewer: error: {err}", file=sys.stderr)
        return 2
    return 0


def _shutdown(win, app, code: int, hard: bool) -> int:
    """Wait for workers, delete the window while Qt is alive. As a program (``hard``), leave with ``os._exit``:
    tearing down pyqtgraph/Qt objects during interpreter shutdown can crash (segfault) after all work is done."""
    from elvis_viewer import workers

    win.cancel_scan()
    workers.wait_all(30000)
    win.close()
    win.deleteLater()
    app.processEvents()
    if hard:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def open_from_args(win, args, app=None) -> None:
    """Apply the command line to a window (also used by tests)."""
    paths = list(args.paths)
    checkpoint, annotations, images = args.checkpoint, args.annotations, args.images
    if args.demo:
        missing = [str(p) for p in (DEMO_STUDIES, DEMO_MODEL) if not p.exists()]
        if missing:
            win.show_message("Demo resources are not there yet: " + ", ".join(missing) +
                             " (they are built by the demo issue). Open a study with File → Open.")
            return
        paths = paths or [str(DEMO_STUDIES)]
        checkpoint = checkpoint or str(DEMO_MODEL)
        if annotations is None and DEMO_ANNOTATIONS.exists():
            annotations = str(DEMO_ANNOTATIONS)
            images = images or str(DEMO_STUDIES)  # the demo CSV's paths are relative to the demo folder
    overlay_range = getattr(args, "overlay_range", None)
    if overlay_range:
        win.overlay_panel.change(range=overlay_range)
    if annotations:
        win.load_annotations(annotations, images_root=images)
    if checkpoint:
        win.load_checkpoint(checkpoint, 0)
    if args.compare:
        win.load_checkpoint(args.compare, 1)
        win.set_compare_mode(True)
    if args.review:
        if win.review_view is None:
            win.show_message("Review mode is not available in this build (elvis_viewer.review missing)")
        elif not (annotations and images):
            win.show_message("--review needs --annotations CSV and --images ROOT")
        else:
            win.tabs.setCurrentWidget(win.review_view)
            try:
                win.review_view.load(annotations, images)
            except Exception as e:  # shown, not a traceback
                win.show_message(f"Review: {e}")
    if paths or getattr(args, "report", None):
        win.open_paths(paths, report_path=getattr(args, "report", None))
    if args.phrase:
        _after_first_image(win, lambda: win.ground_phrase(args.phrase))
    elif args.demo or (annotations and paths):
        _after_first_image(win, lambda: _select_first_annotated(win))


def _after_first_image(win, fn) -> None:
    if win.rad is not None:
        fn()
        return

    def once(_path):
        try:
            win.imageShown.disconnect(once)
        except (RuntimeError, TypeError):
            pass
        fn()
    win.imageShown.connect(once)


def _select_first_annotated(win) -> None:
    """Demo: go to the first image with an annotated phrase and ground that phrase."""
    s = win.session
    if s.annotations is None:
        return
    phrases = s.annotated_phrases()
    if phrases:
        win.select_annotated_phrase(phrases[0])
        return
    for e in list(s.entries):
        if s.annotated_phrases(e.path):
            _after_first_image_switch(win, e.path)
            return


def _after_first_image_switch(win, path):
    def shown(p):
        if p == path:
            try:
                win.imageShown.disconnect(shown)
            except (RuntimeError, TypeError):
                pass
            ph = win.session.annotated_phrases()
            if ph:
                win.select_annotated_phrase(ph[0])
    win.imageShown.connect(shown)
    win.select_image(path)
