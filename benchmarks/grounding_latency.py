"""Per-phrase grounding latency: image cached (GroundingEngine) vs. recomputing the image each time (the hi-ml way).

Same model, same process, one run each, random-initialised models from the presets (weights do not change the cost).
Prints a table with p50/p95 in milliseconds.

    python benchmarks/grounding_latency.py                    # demo + resnet50-bert-base
    python benchmarks/grounding_latency.py --presets demo --phrases 50 --threads 2

Targets on a 2-core CPU: <= 20 ms p50 per phrase cached for the demo model; cached >= 10x faster than recomputing for
ResNet-50 + BERT-base.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from elvis_core.grounding.engine import GroundingEngine  # noqa: E402
from elvis_core.io.radiograph import Radiograph, Window  # noqa: E402
from elvis_core.model import build_model, preset  # noqa: E402

PHRASES = ["right lower lobe opacity", "small left pleural effusion", "cardiomegaly", "left apical pneumothorax",
           "bibasilar atelectasis", "mild pulmonary edema", "right upper lobe consolidation",
           "enlarged cardiac silhouette", "blunting of the left costophrenic angle", "patchy opacity at the right base"]


def pct(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(np.floor(k)), int(np.ceil(k))
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def bench(name: str, n_phrases: int, n_uncached: int, image_shape, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(preset(name), texts=PHRASES * 3)
    build_s = time.perf_counter() - t0
    eng = GroundingEngine(model, device=device)
    rng = np.random.default_rng(0)
    rad = Radiograph(pixels=rng.normal(1000, 200, image_shape).astype(np.float32), windows=[Window(1000, 800)])
    phrases = [f"{PHRASES[i % len(PHRASES)]} {i}" for i in range(n_phrases)]  # distinct: no text-cache hits
    # warm-up
    eng.set_image(rad)
    eng.ground("warm up")

    t = time.perf_counter()
    eng.clear_cache()
    eng.set_image(rad)
    _sync(device)
    first_image_s = time.perf_counter() - t

    cached = []
    for p in phrases:
        t = time.perf_counter()
        eng.ground(p)
        cached.append(time.perf_counter() - t)

    # hi-ml way: every phrase re-encodes the image (same engine code path, cache cleared before each phrase)
    uncached = []
    for p in phrases[:n_uncached]:
        t = time.perf_counter()
        eng.clear_cache()
        eng.set_image(rad)
        eng.ground(p + " again")
        uncached.append(time.perf_counter() - t)

    t = time.perf_counter()
    eng.ground_many([p + " batch" for p in phrases])
    batch_per = (time.perf_counter() - t) / len(phrases)
    n_params = sum(p.numel() for p in model.parameters())
    return {"preset": name, "params_M": n_params / 1e6, "grid": "x".join(map(str, model.grid_shape())),
            "input": model.transform.size, "build_s": build_s, "image_ms": first_image_s * 1e3,
            "cached_p50": statistics.median(cached) * 1e3, "cached_p95": pct(cached, 0.95) * 1e3,
            "uncached_p50": statistics.median(uncached) * 1e3, "uncached_p95": pct(uncached, 0.95) * 1e3,
            "batch_ms": batch_per * 1e3, "n": len(cached), "n_uncached": len(uncached)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["demo", "resnet50-bert-base"])
    ap.add_argument("--phrases", type=int, default=40, help="phrases timed with the image cached")
    ap.add_argument("--uncached", type=int, default=10, help="phrases timed recomputing the image (slow for R50)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the 2 cores here are shared, and 2 threads under load "
                         "oversubscribe and get slower)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--image", type=int, nargs=2, default=[2544, 3056], metavar=("ROWS", "COLS"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dev_name}; "
          f"image {args.image[0]}x{args.image[1]}")
    rows = [bench(p, args.phrases, args.uncached, tuple(args.image), args.device) for p in args.presets]
    head = (f"{'preset':<20} {'params':>8} {'input':>6} {'grid':>6} {'image':>9} {'cached p50':>11} {'p95':>8} "
            f"{'recompute p50':>14} {'p95':>8} {'speed-up':>9} {'batch/phr':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['preset']:<20} {r['params_M']:>7.1f}M {r['input']:>6} {r['grid']:>6} {r['image_ms']:>7.1f}ms "
              f"{r['cached_p50']:>9.2f}ms {r['cached_p95']:>6.2f}ms {r['uncached_p50']:>12.1f}ms "
              f"{r['uncached_p95']:>6.1f}ms {r['uncached_p50'] / r['cached_p50']:>8.1f}x {r['batch_ms']:>8.2f}ms")
    print("image = first set_image (transform + image encoder); cached = ground() per phrase with the image cached;"
          " recompute = set_image on an empty cache + ground() per phrase (hi-ml way); batch/phr = ground_many per"
          " phrase")
    return 0


if __name__ == "__main__":
    sys.exit(main())
