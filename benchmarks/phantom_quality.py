"""Grounding quality of the training objectives on phantom studies (issue #8).

Trains the same model preset three times -- global only, global + local, global + local + ELVIS intra-modal -- with
the same budget (optimizer steps, batch size), seed and phantom training split, evaluates each on the held-out
phantom test split (CNR, mIoU, pointing game, per category and macro), and prints one table. A randomly initialised
model of the same preset (no training) is scored too, as the floor.

    python benchmarks/phantom_quality.py --steps 150 --studies 400 --size 256
    python benchmarks/phantom_quality.py --data /tmp/phantom --steps 300 --json quality.json --markdown

The phantom set is generated with ``elvis_core.phantom.generate`` (``--seed``) unless ``--data`` names an existing
phantom folder. Everything else comes from ``resources/configs/demo.toml`` (the shipped demo model's config), with
``--set KEY=VALUE`` overrides applied to all runs; only ``objectives.weights`` differ between the runs. The patients of
the CSV's val/test splits never enter training (``data.exclude_ms_cxr`` + ``exclude_splits``), and nothing is
validated during training (the test split is only scored at the end).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: run name -> objective weights (the rest of the config is shared)
RUNS = {
    "global": {"global": 1.0, "local": 0.0, "region_sentence": 0.0, "intra": 0.0},
    "global+local": {"global": 1.0, "local": 0.5, "region_sentence": 0.0, "intra": 0.0},
    "global+local+intra (ELVIS)": {"global": 1.0, "local": 0.5, "region_sentence": 0.0, "intra": 0.5},
}
METRICS = ("cnr", "miou", "pointing", "in_gt_out")
#: in_gt_out = share of phrases whose map is higher inside the boxes than outside (CNR is unsigned: it is also large
#: when the map is *lower* on the finding)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: python benchmarks/phantom_quality.py --steps 150 --studies 400")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per run (same for every objective)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--studies", type=int, default=400, help="phantom studies to generate (all splits)")
    p.add_argument("--size", type=int, default=256, help="phantom image height in pixels")
    p.add_argument("--seed", type=int, default=0, help="phantom seed and training seed")
    p.add_argument("--data", default=None, help="use this existing phantom folder instead of generating one")
    p.add_argument("--config", default=str(REPO / "resources" / "configs" / "demo.toml"))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (e.g. train.lr=5e-4)")
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of: " + ", ".join(RUNS))
    p.add_argument("--no-random", action="store_true", help="skip the untrained (random init) column")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--split", default="test", help="CSV split to score (default: test)")
    p.add_argument("--work", default=None, help="folder for the data and runs (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write all figures (per run, per category) to this JSON file")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--table-from", default=None, metavar="JSON", help="only print the table of a saved --json run")
    a = p.parse_args(argv)
    names = [r.strip() for r in a.runs.split(",") if r.strip()]
    bad = [r for r in names if r not in RUNS]
    if bad:
        p.error(f"unknown run(s) {bad}; known: {list(RUNS)}")
    a.run_names = names
    if a.steps < 1:
        p.error("--steps must be >= 1")
    return a


def git_version() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def score(engine, csv_path: Path, root: Path, split: str):
    from elvis_core.grounding.evaluate import evaluate
    from elvis_core.io.annotations import read_ms_cxr_csv

    res = evaluate(engine, read_ms_cxr_csv(csv_path), root, split=split)
    return {"per_category": res.per_category, "macro": res.macro, "overall": res.overall,
            "n_evaluated": res.n_evaluated, "n_missing_phrases": res.n_missing_phrases}


def random_model(cfg, seed: int):
    """The untrained baseline: the same preset and tokenizer recipe as the trainer, weights from ``seed``."""
    import torch

    from elvis_core.model.elvis import build_model
    from elvis_core.training.config import model_config_from
    from elvis_core.training.data import excluded_patients_from_csv, find_pairs

    dc = cfg["data"]
    excl = excluded_patients_from_csv(dc["exclude_ms_cxr"], dc["exclude_splits"]) if dc["exclude_ms_cxr"] else set()
    pairs, _stats = find_pairs(dc["root"], views=dc["views"], exclude_patients=excl)
    torch.manual_seed(seed)
    return build_model(model_config_from(cfg), texts=[p.text for p in pairs]).eval()


def fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def table(results, markdown: bool) -> str:
    cols = list(results)
    cats = sorted({c for r in results.values() for c in r["per_category"]})
    rows = []
    for cat in cats:
        n = next(int(r["per_category"][cat]["n"]) for r in results.values() if cat in r["per_category"])
        rows.append((cat, n, [results[c]["per_category"].get(cat, {}) for c in cols]))
    n_macro = next(iter(results.values()))["n_evaluated"]
    rows.append(("macro (mean of categories)", n_macro, [results[c]["macro"] for c in cols]))
    rows.append(("all phrases", n_macro, [results[c]["overall"] for c in cols]))
    if markdown:
        head = "| category | n | " + " | ".join(f"{c}: CNR / mIoU / pointing / in>out" for c in cols) + " |"
        lines = [head, "|---|---|" + "---|" * len(cols)]
        for name, n, ds in rows:
            cells = [" / ".join(fmt(d.get(m)) for m in METRICS) for d in ds]
            b = "**" if name.startswith("macro") else ""
            lines.append(f"| {b}{name}{b} | {n} | " + " | ".join(f"{b}{c}{b}" for c in cells) + " |")
        return "\n".join(lines)
    w = 29
    head = f"{'category':<27} {'n':>4} " + " ".join(f"{c[:w]:^{w}}" for c in cols)
    sub = f"{'':<27} {'':>4} " + " ".join(f"{'CNR':>6} {'mIoU':>6} {'point':>6} {'in>out':>6}  " for _ in cols)
    lines = [head, sub, "-" * len(head)]
    for name, n, ds in rows:
        lines.append(f"{name[:27]:<27} {n:>4} " + " ".join(
            " ".join(f"{fmt(d.get(m)):>6}" for m in METRICS) + "  " for d in ds))
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.table_from:
        try:
            saved = json.loads(Path(a.table_from).read_text())["results"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"{a.table_from}: not a phantom_quality.py --json file ({type(err).__name__})", file=sys.stderr)
            return 2
        print(table(saved, a.markdown))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from elvis_core.errors import ElvisError
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.phantom import generate
    from elvis_core.training.config import load_config
    from elvis_core.training.trainer import train

    if a.threads:
        torch.set_num_threads(a.threads)
    code = git_version()  # at start: the code that runs (HEAD may move while it trains)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="elvis_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.data:
        data = Path(a.data)
        if not (data / "ms_cxr.csv").is_file():
            print(f"{data}: not a phantom folder (no ms_cxr.csv)", file=sys.stderr)
            return 2
        print(f"data: {data} (existing)", flush=True)
    else:
        data = work / "phantom"
        s = generate(data, a.studies, seed=a.seed, size=a.size)
        print(f"data: {a.studies} phantom studies, seed {a.seed}, size {a.size}: "
              f"{s.split_counts} studies per split ({s.seconds:.1f} s)", flush=True)
    csv = data / "ms_cxr.csv"
    base_sets = [f"data.root={json.dumps(str(data))}", f"data.exclude_ms_cxr={json.dumps(str(csv))}",
                 'data.exclude_splits=["val", "test"]', 'validation.annotations=""',
                 f"train.max_steps={a.steps}", f"train.batch_size={a.batch_size}", f"train.seed={a.seed}",
                 f"train.threads={a.threads}", f'train.device="{a.device}"', "train.progress=false",
                 "train.resume=false", f"train.checkpoint_every={max(a.steps, 1)}"] + list(a.sets)
    results, meta = {}, {}
    try:
        if not a.no_random:
            cfg = load_config(a.config, base_sets)
            model = random_model(cfg, a.seed)
            dev = "cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu"
            model.to(dev)
            t = time.perf_counter()
            results["random init"] = score(GroundingEngine(model, device=dev), csv, data, a.split)
            meta["random init"] = {"steps": 0, "eval_s": round(time.perf_counter() - t, 1)}
            print(f"random init: scored {results['random init']['n_evaluated']} phrases", flush=True)
        for name in a.run_names:
            sets = base_sets + [f"objectives.weights.{k}={v}" for k, v in RUNS[name].items()]
            cfg = load_config(a.config, sets)
            out = work / ("run_" + name.split(" ")[0].replace("+", "_"))
            res = train(cfg, out_dir=str(out), progress=False)
            t = time.perf_counter()
            results[name] = score(GroundingEngine(res.model_dir, device=None if a.device == "auto" else a.device),
                                  csv, data, a.split)
            meta[name] = {"steps": res.steps, "train_s": round(res.seconds, 1), "pairs_per_s": round(res.pairs_per_s, 2),
                          "first_loss": res.first_loss, "last_loss": res.last_loss, "n_train_pairs": res.n_train_pairs,
                          "eval_s": round(time.perf_counter() - t, 1), "checkpoint": res.model_dir}
            print(f"{name}: {res.steps} steps in {res.seconds:.0f} s, loss {res.first_loss:.3f} -> "
                  f"{res.last_loss:.3f}; scored {results[name]['n_evaluated']} phrases", flush=True)
    except ElvisError as err:
        print(str(err), file=sys.stderr)
        return 2
    total = time.perf_counter() - t0
    n_train = next((m["n_train_pairs"] for m in meta.values() if "n_train_pairs" in m), "?")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print()
    print(f"budget: {a.steps} steps x batch {a.batch_size} per objective, seed {a.seed}, {n_train} training pairs "
          f"(phantom train split), config {os.path.relpath(a.config, REPO)}"
          + (f" + {a.sets}" if a.sets else ""))
    print(f"scored on the phantom '{a.split}' split of {csv}; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"device {a.device}, torch threads {torch.get_num_threads()}, load {load:.1f}; code {code}; "
          f"total {total / 60:.1f} min")
    print()
    print(table(results, a.markdown))
    if a.json:
        from elvis_core.grounding.evaluate import _clean

        Path(a.json).write_text(json.dumps(_clean({"args": {k: v for k, v in vars(a).items()}, "results": results,
                                                   "runs": meta, "total_s": total, "code": code}),
                                           indent=1))
        print(f"\nJSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
