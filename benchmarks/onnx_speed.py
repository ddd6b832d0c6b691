"""Typed phrase -> overlay and full-size image embedding on the CPU: torch vs ONNX Runtime (fp32, int8 text), with
the fidelity of each map against torch fp32 (issue 25, items 4 and 5).

    python benchmarks/onnx_speed.py [--checkpoint DIR] [--threads 1 2] [--phrases 30] [--images 5] [--no-window]

Without ``--checkpoint`` a ResNet-50 + BERT-base model is built from the preset (random weights: the cost does not
depend on them; no downloads) at 512 px, saved and exported (``export_onnx``, timed) in a temporary folder.

Rows, side by side in one run (ratios against the torch row):

- text: one NEW phrase -> its map against a cached image (tokenize + text tower + matrix-vector product + map), p50 /
  p95 over distinct phrases, with torch fp32 (``GroundingEngine``, inference mode), ONNX Runtime fp32 and ONNX Runtime
  with the dynamically int8-quantized text tower; min Pearson r of the maps against torch fp32 over the phantom
  phrases;
- window: the same typed phrase -> overlay drawn in the viewer (``ViewerSession.ground_phrase`` until the view
  repainted; Enter at once, so the text tower runs on the worker), torch engine vs the ONNX engine;
- image: embedding one full-size CR (RG1 1955x1841 -> 512 px model input -> patch grid), median over runs, with
  torch fp32 (as the engine runs it), torch channels_last, and ONNX Runtime, for each thread count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def pct(xs, q):
    return float(np.percentile(np.asarray(xs, dtype=float), q))


def build_large(tmp: Path) -> Path:
    import torch

    from elvis_core.model import build_model, preset
    from elvis_core.model.checkpoint import save_checkpoint
    from elvis_core.model.onnx_export import export_onnx

    torch.manual_seed(0)
    m = build_model(preset("resnet50-bert-base"), texts=["left basal opacity. no pneumothorax. cardiomegaly."] * 3)
    d = save_checkpoint(m, tmp / "r50bb")
    t = time.time()
    export_onnx(d, int8=True, model=m, say=lambda s: print(s, file=sys.stderr))
    print(f"export of ResNet-50 + BERT-base: {time.time() - t:.0f} s", flush=True)
    return d


def typed(engine, rad, n: int, tag: str):
    engine.set_image(rad)
    ts = []
    for k in range(n):
        t0 = time.perf_counter()
        engine.ground(f"{tag} opacity in zone {k} of the {['left', 'right'][k % 2]} lung")
        ts.append((time.perf_counter() - t0) * 1000)
    return ts


def window_typed(ckpt: Path, rad_path: str, n: int, no_onnx: bool, fp32_only: bool = False):
    """Typed phrase -> overlay drawn in a MainWindow (Enter at once), p50/p95 ms, and the engine (class + backend).
    ``fp32_only``: the ONNX engine without its int8 text tower even when that passed its fidelity check."""
    from PySide6 import QtCore, QtWidgets

    from elvis_core.grounding import onnx_engine as oe
    from elvis_viewer import workers
    from elvis_viewer.main_window import MainWindow

    load = oe.OnnxGroundingEngine.__dict__["load"]
    if fp32_only:
        oe.OnnxGroundingEngine.load = classmethod(
            lambda cls, d, **kw: load.__func__(cls, d, **dict(kw, use_int8=False)))

    if no_onnx:
        os.environ["ELVIS_NO_ONNX"] = "1"
    else:
        os.environ.pop("ELVIS_NO_ONNX", None)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    win = MainWindow(settings=QtCore.QSettings(os.path.join(tempfile.mkdtemp(), "s.ini"),
                                               QtCore.QSettings.Format.IniFormat))
    win.resize(1500, 950)
    win.show()
    win.open_paths([rad_path])
    win.load_checkpoint(str(ckpt), 0)

    def wait(pred, timeout=600):
        t_end = time.perf_counter() + timeout
        while not pred() and time.perf_counter() < t_end:
            app.processEvents()
            time.sleep(0.0005)
    wait(lambda: not win.busy() and win.rad is not None and (win.slots[0].engine is not None or win.slots[0].error))
    s = win.session
    ts = []
    for k in range(n):
        done = []
        s.mapReady.connect(done.append)
        t0 = time.perf_counter()
        s.ground_phrase(f"window opacity in zone {k} of the {['left', 'right'][k % 2]} lung", None)
        wait(lambda: bool(done))
        win.image_view.glw.viewport().repaint()
        ts.append((time.perf_counter() - t0) * 1000)
        s.mapReady.disconnect(done.append)
    eng = win.slots[0].engine
    name = type(eng).__name__ + (f" ({eng.backend})" if hasattr(eng, "backend") else "")
    workers.wait_all()
    win.close()
    oe.OnnxGroundingEngine.load = load
    return ts, name


def image_rows(ckpt: Path, rad, threads, runs: int):
    import torch

    from elvis_core.grounding.onnx_engine import OnnxGroundingEngine
    from elvis_core.model.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt)
    x = torch.from_numpy(np.ascontiguousarray(model.transform.apply(rad), dtype=np.float32))[None, None]
    out = []
    for n in threads:
        torch.set_num_threads(n)
        res = {}
        with torch.inference_mode():
            model.encode_image(x)  # first-call set-up
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                model.encode_image(x)
                ts.append(time.perf_counter() - t0)
            res["torch fp32 (as the engine runs it)"] = ts
            cl = load_checkpoint(ckpt).to(memory_format=torch.channels_last)
            xc = x.contiguous(memory_format=torch.channels_last)
            cl.encode_image(xc)
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                cl.encode_image(xc)
                ts.append(time.perf_counter() - t0)
            res["torch fp32 channels_last"] = ts
        eng = OnnxGroundingEngine(ckpt, threads=n)
        xn = x.numpy()
        eng._image.run(None, {"pixel_values": xn})
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            eng._image.run(None, {"pixel_values": xn})
            ts.append(time.perf_counter() - t0)
        res["ONNX Runtime fp32"] = ts
        base = statistics.median(res["torch fp32 (as the engine runs it)"])
        for k, v in res.items():
            out.append((f"image embed {rad.shape[1]}x{rad.shape[0]} -> {x.shape[-1]} px, {k}, {n} thread(s)",
                        statistics.median(v) * 1000, max(v) * 1000, f"x{base / statistics.median(v):.2f} vs torch"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a checkpoint with an ONNX export (default: ResNet-50 + BERT-base, built)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--phrases", type=int, default=30)
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--no-window", action="store_true", help="leave out the in-window typed-phrase rows")
    a = ap.parse_args()
    import torch
    from pydicom.data import get_testdata_file

    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.grounding.onnx_engine import OnnxGroundingEngine
    from elvis_core.io.images import read_image
    from elvis_core.model.onnx_export import compare_engines, fidelity_cases

    ckpt = Path(a.checkpoint) if a.checkpoint else build_large(Path(tempfile.mkdtemp()))
    rg1 = get_testdata_file("RG1_UNCR.dcm")
    rad = read_image(rg1)
    rows = []
    torch.set_num_threads(1)  # the viewer's interactive setting on 2 cores (session_tasks.torch_threads)
    ref = GroundingEngine(ckpt, device="cpu")
    engines = [("torch fp32", ref), ("ONNX Runtime fp32", OnnxGroundingEngine(ckpt, use_int8=False, threads=1))]
    q = OnnxGroundingEngine(ckpt, use_int8=True, threads=1)
    if "int8" in q.backend:
        engines.append(("ONNX Runtime, int8 text tower", q))
    rads, phrases = fidelity_cases(size=512, seeds=(31,))
    base = None
    for name, eng in engines:
        ts = typed(eng, rad, a.phrases, name.split()[0])
        fid = "reference" if eng is ref else f"maps min r {compare_engines(ref, eng, rads, phrases)['min_r']:.5f}"
        base = base or pct(ts, 50)
        rows.append((f"typed phrase -> map (core), {name}, 1 thread", pct(ts, 50), pct(ts, 95),
                     f"x{base / pct(ts, 50):.2f} vs torch; {fid}"))
    if "int8" not in q.backend:
        rows.append(("int8 text tower: not used (failed its fidelity check or not made)", float("nan"),
                     float("nan"), str(q.manifest.get("text_int8"))))
    if not a.no_window:
        for no_onnx, fp32 in ((True, False), (False, False), (False, True)):
            if fp32 and "int8" not in q.backend:
                continue  # the ONNX row above already ran fp32
            ts, name = window_typed(ckpt, rg1, a.phrases, no_onnx, fp32)
            rows.append((f"typed phrase -> overlay drawn (window, Enter at once), {name}", pct(ts, 50), pct(ts, 95),
                         "target p50 <= 60"))
    rows += image_rows(ckpt, rad, a.threads, a.images)
    load = os.getloadavg()
    print(f"\n{ckpt.name}; load average {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores")
    print(f"{'measurement':96s} {'p50 ms':>8s} {'p95/max':>8s}  note")
    for name, p50, p95, note in rows:
        print(f"{name:96s} {p50:8.1f} {p95:8.1f}  {note}")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
