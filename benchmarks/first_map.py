"""Launch -> first map drawn, side by side with its floors (issue 25); offscreen or in a real X session.

    python benchmarks/first_map.py [--runs 3] [--x11] [--skip-large]
    python benchmarks/viewer_speed.py --first-map [...]      # the same

Every row is a fresh process (wall clock from just before ``subprocess`` starts it):

- floor "bare Qt": a process importing PySide6.QtWidgets, pyqtgraph, pydicom and numpy, nothing else;
- floor "torch": a process importing torch, building the model from its config and embedding one image (what any
  torch-based first map must pay at least);
- ``elvis-viewer --demo`` (first study, its first annotated phrase grounded): window shown, image painted, first map
  drawn (``ELVIS_VIEWER_TIMING=map``), as shipped (the demo model carries an ONNX export: ONNX Runtime, no torch)
  and with ``ELVIS_NO_ONNX=1`` (the torch engine: torch + transformers imported by the loading worker);
- the same with ``--checkpoint`` of a ResNet-50 + BERT-base model built from the preset (random weights, no
  downloads), exported to ONNX once before the runs (the export time is printed), RG1 (a real 1955x1841 CR) and
  ``--phrase``;
- the largest GUI event-loop gap (a 5 ms QTimer) from the window until the first map, and while the checkpoint
  loads (``ELVIS_VIEWER_GAPS=1``), in the same processes: what the first model load costs the GUI.

``--x11`` runs everything under Xvfb (display :95) with openbox as window manager (``QT_QPA_PLATFORM=xcb``),
otherwise offscreen. The table gives each median and its ratio to the bare Qt floor. Numbers depend on the machine
and its load (printed); compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_BASE = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get(
    "OMP_NUM_THREADS", "1"))

FLOOR_QT = "import PySide6.QtWidgets, pyqtgraph, pydicom, numpy"
FLOOR_TORCH = """
import sys, numpy as np, torch
from elvis_core.model import build_model, preset
from elvis_core.model.checkpoint import load_checkpoint
torch.set_num_threads(1)
m = load_checkpoint(sys.argv[1]) if len(sys.argv) > 1 else build_model(preset("demo"), texts=["a b c"])
with torch.inference_mode():
    s = int(m.transform.size); m.encode_image(torch.zeros(1, 1, s, s))
"""


GIL_PROBE = """
import sys, threading, time
step, arg = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
if step.startswith("engine") or step == "torch-load":  # what the viewer imports at launch (elvis_viewer/app.py)
    import onnxruntime, tokenizers, cv2  # noqa (measured separately: 'import onnxruntime + tokenizers')
    import elvis_core.grounding.onnx_engine  # noqa
if step == "torch-load":
    import torch, transformers  # noqa
done = threading.Event()
took = []
def work():
    t = time.perf_counter()
    if step == "baseline (a thread that sleeps)":
        time.sleep(1.0)
    elif step == "import onnxruntime + tokenizers":
        import onnxruntime, tokenizers  # noqa
    elif step == "import torch + transformers":
        import torch, transformers  # noqa
        from transformers import BertModel, ResNetModel, PreTrainedTokenizerFast  # noqa
    elif step.startswith("engine"):
        from elvis_core.grounding.onnx_engine import OnnxGroundingEngine
        OnnxGroundingEngine.load(arg)
    elif step == "torch-load":
        from elvis_core.grounding.engine import GroundingEngine
        GroundingEngine.load(arg)
    took.append(time.perf_counter() - t)
    done.set()
th = threading.Thread(target=work)
last = time.perf_counter(); mx = 0.0
th.start()
while not done.is_set():
    time.sleep(0.005)
    now = time.perf_counter(); mx = max(mx, now - last); last = now
print("GIL", took[0] * 1000, mx * 1000)
"""


def gil_rows(env, ckpts, runs: int):
    """Each step of a first model load in a worker thread of a fresh process while the main thread ticks every 5 ms:
    the step's time and the largest tick gap (= how long the GUI thread could not run), next to a thread that only
    sleeps (the machine's own scheduling noise)."""
    steps = [("baseline (a thread that sleeps)", None), ("import onnxruntime + tokenizers", None),
             ("import torch + transformers", None)]
    steps += [(f"engine: ONNX Runtime load of {name}", str(c)) for name, c in ckpts]
    steps += [("torch-load", str(c)) for name, c in ckpts[:1]]
    rows = []
    for step, arg in steps:
        res = []
        for _ in range(runs):
            p = subprocess.run([sys.executable, "-c", GIL_PROBE, step] + ([arg] if arg else []), env=env,
                               cwd=str(ROOT), capture_output=True, text=True, timeout=900)
            res += [tuple(map(float, ln.split()[1:])) for ln in p.stdout.splitlines() if ln.startswith("GIL")]
        label = "torch engine load of the demo model (torch imported first)" if step == "torch-load" else step
        if res:
            rows.append((label, med([r[0] for r in res]), med([r[1] for r in res]), max(r[1] for r in res)))
    return rows


def start_x11(display: str = ":95"):
    """Xvfb + openbox on ``display``; returns (env additions, processes to stop)."""
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(DISPLAY=display, QT_QPA_PLATFORM="xcb")
    for _ in range(100):
        if subprocess.run(["xdpyinfo"], env=dict(os.environ, **env), capture_output=True).returncode == 0:
            break
        time.sleep(0.05)
    wm = subprocess.Popen(["openbox"], env=dict(os.environ, **env), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return env, [wm, xvfb]


def run_floor(code: str, env, args=()) -> float:
    t0 = time.time()
    subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=str(ROOT), check=True, capture_output=True,
                   timeout=600)
    return time.time() - t0


def run_viewer(viewer_args, env, no_onnx: bool):
    """(window s, painted s, mapped s, engine class, max GUI gap ms) of one fresh viewer process."""
    env = dict(env, ELVIS_VIEWER_TIMING="map", ELVIS_VIEWER_GAPS="1",
               ELVIS_VIEWER_SETTINGS=os.path.join(tempfile.mkdtemp(), "s.ini"))
    if no_onnx:
        env["ELVIS_NO_ONNX"] = "1"
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "elvis_viewer", *viewer_args], env=env, cwd=tempfile.gettempdir(),
                       capture_output=True, text=True, timeout=600)
    st, extra = {}, {}
    for ln in p.stderr.splitlines():
        if ln.startswith("elvis-timing"):
            parts = ln.split()
            st[parts[1]] = float(parts[2]) - t0
            extra.update(kv.split("=", 1) for kv in parts[3:] if "=" in kv)
    if "mapped" not in st:
        raise RuntimeError("viewer did not draw a map:\n" + p.stderr[-1500:])
    return (st.get("window"), st.get("painted"), st["mapped"], extra.get("engine", "?"),
            float(extra.get("gap_ms", "nan")), float(extra.get("load_gap_ms", "nan")))


def large_checkpoint(tmp: Path) -> Path:
    """ResNet-50 + BERT-base from the preset (random weights), saved and exported to ONNX (timed)."""
    code = f"""
import sys, time, torch
from elvis_core.model import build_model, preset
from elvis_core.model.checkpoint import save_checkpoint
from elvis_core.model.onnx_export import export_onnx
torch.manual_seed(0)
m = build_model(preset("resnet50-bert-base"), texts=["left basal opacity. no pneumothorax. cardiomegaly."] * 3)
save_checkpoint(m, {str(tmp / 'r50bb')!r})
t = time.time(); man = export_onnx({str(tmp / 'r50bb')!r}, int8=True, model=m)
print("EXPORT", round(time.time() - t, 1), man["fidelity"]["min_r"], (man.get("text_int8") or {{}}).get("min_r"),
      (man.get("text_int8") or {{}}).get("passed"))
"""
    p = subprocess.run([sys.executable, "-c", code], env=ENV_BASE, cwd=str(ROOT), capture_output=True, text=True,
                       timeout=1800)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("EXPORT")]
    if p.returncode or not line:
        raise RuntimeError(p.stderr[-2000:])
    print("ResNet-50 + BERT-base export (s, fp32 min r, int8 min r, int8 used):", line[0][7:], flush=True)
    return tmp / "r50bb"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--x11", action="store_true", help="run under Xvfb :95 + openbox (real X) instead of offscreen")
    ap.add_argument("--skip-large", action="store_true", help="leave out ResNet-50 + BERT-base")
    ap.add_argument("--large-checkpoint", metavar="DIR",
                    help="an exported ResNet-50 + BERT-base checkpoint to reuse (default: built and exported here)")
    ap.add_argument("--first-map", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    stop = []
    env = dict(ENV_BASE, QT_QPA_PLATFORM="offscreen")
    if a.x11:
        extra, stop = start_x11()
        env.update(extra)
    mode = "real X (Xvfb :95 + openbox)" if a.x11 else "offscreen"
    try:
        from pydicom.data import get_testdata_file

        rg1 = get_testdata_file("RG1_UNCR.dcm")
        tmp = Path(tempfile.mkdtemp(prefix="first_map_"))
        cases = [("--demo", ["--demo"], str(ROOT / "resources" / "demo_model"))]
        if not a.skip_large:
            big = Path(a.large_checkpoint) if a.large_checkpoint else large_checkpoint(tmp)
            cases.append(("--checkpoint ResNet-50 + BERT-base", [rg1, "--checkpoint", str(big), "--phrase",
                                                                 "left basal opacity"], str(big)))
        # rounds: each viewer run is paired with a bare-Qt floor run just before it, and its ratio is taken to that
        # floor (the shared machine's load changes from minute to minute: an unpaired floor can be off by 4x)
        rows = []  # (label, median s, median ratio to the paired bare-Qt floor, note)
        all_qt = []

        def paired(fn):
            out = []
            for _ in range(a.runs):
                q = run_floor(FLOOR_QT, env)
                all_qt.append(q)
                out.append((q, fn()))
            return out
        for label, args, ckpt in cases:
            name = "ResNet-50 + BERT-base" if "BERT" in label else "demo"
            tf = paired(lambda: run_floor(FLOOR_TORCH, env, [ckpt]))
            rows.append((f"floor: import torch, load the {name} model, embed one image", med([t for _, t in tf]),
                         med([t / q for q, t in tf]), ""))
            for no_onnx in (False, True):
                res = paired(lambda: run_viewer(args, env, no_onnx))
                eng = res[0][1][3]
                tag = f"{label}, {'torch engine (ELVIS_NO_ONNX=1)' if no_onnx else 'as shipped'} [{eng}]"
                for i, what in ((0, "window"), (1, "image painted"), (2, "FIRST MAP drawn")):
                    vals = [(q, r[i]) for q, r in res if r[i] is not None]
                    rows.append((f"launch -> {what}, {tag}", med([v for _, v in vals]),
                                 med([v / q for q, v in vals]),
                                 f"max {max(v for _, v in vals):.2f}" if i == 2 else ""))
                rows.append((f"largest GUI gap until the first map / while the checkpoint loads, {tag}", None, None,
                             f"{med([r[4] for _, r in res]):.0f} / {med([r[5] for _, r in res]):.0f} ms (max "
                             f"{max(r[4] for _, r in res):.0f} / {max(r[5] for _, r in res):.0f})"))
        rows.insert(0, ("floor: import PySide6.QtWidgets, pyqtgraph, pydicom, numpy (every round)", med(all_qt), 1.0,
                        f"{min(all_qt):.2f}-{max(all_qt):.2f} s over {len(all_qt)} runs"))
        grows = gil_rows(env, [(label.split()[-1] if "BERT" not in label else "ResNet-50 + BERT-base", c)
                               for label, _, c in cases], a.runs)
        load = os.getloadavg()
        print(f"\nfirst map, {mode}; {a.runs} fresh processes per row (median), each paired with a bare-Qt floor run "
              f"just before it (ratio = median of the pairs' ratios); load average {load[0]:.1f} / {load[1]:.1f} on "
              f"{os.cpu_count()} cores")
        print(f"{'measurement':100s} {'s':>6s} {'x bare Qt':>9s}  note")
        for name, v, ratio, note in rows:
            if v is None:
                print(f"{name:100s} {'':>6s} {'':>9s}  {note}")
            else:
                print(f"{name:100s} {v:6.2f} {ratio:9.2f}  {note}")
        print(f"\nwhere the GIL is held during a first load (a step in a worker thread, the main thread ticking every "
              f"5 ms; {a.runs} fresh processes, median)")
        print(f"{'step':80s} {'step ms':>8s} {'gap ms':>8s} {'max gap':>8s}")
        for name, t, g, gmax in grows:
            print(f"{name:80s} {t:8.0f} {g:8.0f} {gmax:8.0f}")
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        for p in stop:
            p.terminate()
            p.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
