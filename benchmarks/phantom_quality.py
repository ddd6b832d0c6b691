"""Grounding quality of the training objectives on phantom studies, with confidence intervals (issue #12).

Trains the same model once per (objective set, training seed) at the SAME budget (optimizer steps x batch, data,
config), scores every run on the held-out phrases of a phantom test set of unseen synthetic patients (its own seed,
all studies in its test split) and prints, per metric, the mean over seeds and phrases with a 95 % confidence interval
from a paired bootstrap over phrases and seeds, per category and macro (mean of categories), plus the difference of
each run to ELVIS (``global+elvis``) with its interval. An untrained model of the same preset is the floor.

    python benchmarks/phantom_quality.py --steps 60 --batch-size 16 --seeds 0,1,2 --train-studies 1500 \\
        --test-studies 400 --json quality.json --markdown

Phantom sets are generated (``--train-seed``, ``--test-seed``) unless ``--train-data`` / ``--test-data`` name
existing folders (the whole training folder is used for training; the test folder's ``--split`` rows are scored).
Everything else comes from ``resources/configs/demo.toml`` with ``--set KEY=VALUE`` overrides for all runs; only the
objective weights differ between runs. All runs share one process: training images are decoded once (the trainer's
RAM cache is reused across runs) and test images once.

Bootstrap: ``--bootstrap`` resamples (default 2000) draw the seeds with replacement and, independently, the test
phrases with replacement (the same draw for every run: paired), and recompute each statistic; the interval is the
2.5-97.5 % percentile range. Metrics: CNR, mIoU, pointing, in>out (share of phrases with a higher map inside the
boxes than outside) and, over one-sided phrases, laterality (peak on the named side); pointing on the finding-free
twins (``elvis phantom --twins``; the generated test set has them), word following (share of each one-sided phrase's
side- and zone-swapped versions whose peak moves to the named place) and the presence AUC (raw peak on the film vs its
twin). A *text prior* row (the mean training box of phrases with the same category + side + zone words; it never
looks at the image) is added unless ``--no-prior``, with every run's margin over it (paired bootstrap CI).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: every weight a run does not name is 0 (the base config, resources/configs/demo.toml, also sets the negation term:
#: off here, so the runs differ only in their objective set)
_Z = {"global": 0.0, "local": 0.0, "region_sentence": 0.0, "intra": 0.0, "elvis": 0.0, "negation": 0.0,
      "anatomy": 0.0, "mirror": 0.0}
#: run name -> objective weights (the rest of the config is shared; the paper combinations: GLoRIA/BioViL-style
#: global+local, LoVT = global+region_sentence, ELVIS = global + its local term; `intra` = the other ELVIS reading)
RUNS = {
    "global": dict(_Z, **{"global": 1.0}),
    "global+local": dict(_Z, **{"global": 1.0, "local": 0.5}),
    "global+region_sentence (LoVT)": dict(_Z, **{"global": 1.0, "region_sentence": 0.5}),
    "global+local+intra": dict(_Z, **{"global": 1.0, "local": 0.5, "intra": 0.5}),
    "global+elvis": dict(_Z, **{"global": 1.0, "elvis": 0.5}),
    "global+local+elvis": dict(_Z, **{"global": 1.0, "local": 0.5, "elvis": 0.5}),
    "global+anatomy (GK-MVLP)": dict(_Z, **{"global": 1.0, "anatomy": 0.5}),
    "global+local+mirror": dict(_Z, **{"global": 1.0, "local": 0.5, "mirror": 1.0}),
}
#: extra settings some runs need (anatomy boxes from the phantom's anatomy.csv; sentences encoded alone)
RUN_SETS = {"global+anatomy (GK-MVLP)": ["objectives.sentences='separate'", "data.anatomy={anatomy}"],
            # ours (issue #12's demo model): mirror consistency, attention kind (docs/training.md)
            "global+local+mirror": ["objectives.mirror.kind='attention'"]}
REFERENCE = "global+elvis"
METRICS = ("cnr", "miou", "pointing", "in_gt_out", "laterality", "twin_pointing", "words")
#: column titles of METRICS (twin pointing: peak in the box on the finding-free twin; words: share of the phrase's
#: side/zone swaps whose peak moved to the named place, elvis_core.grounding.word_following)
TITLES = ("CNR", "mIoU", "pointing", "in>out", "laterality", "pointing on twins", "word following")
PRIOR = "text prior (no image)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: python benchmarks/phantom_quality.py --steps 60 --seeds 0,1,2")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run (same for every objective)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seeds", default="0,1,2", help="training seeds (comma-separated; >= 3 for the intervals)")
    p.add_argument("--train-studies", type=int, default=1500)
    p.add_argument("--train-seed", type=int, default=101)
    p.add_argument("--test-studies", type=int, default=400)
    p.add_argument("--test-seed", type=int, default=202)
    p.add_argument("--size", type=int, default=256, help="phantom image height in pixels")
    p.add_argument("--train-data", default=None, help="existing phantom folder to train on (all of it)")
    p.add_argument("--test-data", default=None, help="existing phantom folder to score (its --split rows)")
    p.add_argument("--split", default="test")
    p.add_argument("--config", default=str(REPO / "resources" / "configs" / "demo.toml"))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (e.g. model.overrides.preprocessing.size=128)")
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of: " + ", ".join(RUNS))
    p.add_argument("--no-random", action="store_true", help="skip the untrained (random init) column")
    p.add_argument("--no-prior", action="store_true",
                   help="skip the text-prior row (the training boxes' mean for the phrase's category/side/zone words)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--work", default=None, help="folder for the data and runs (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write every phrase's figures per run and seed to this JSON file")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    p.add_argument("--table-from", default=None, metavar="JSON", help="only print the tables of a saved --json run")
    a = p.parse_args(argv)
    names = [r.strip() for r in a.runs.split(",") if r.strip()]
    bad = [r for r in names if r not in RUNS]
    if bad:
        p.error(f"unknown run(s) {bad}; known: {list(RUNS)}")
    a.run_names = names
    try:
        a.seed_list = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        p.error("--seeds must be comma-separated integers")
    if a.steps < 1 or not a.seed_list:
        p.error("--steps must be >= 1 and --seeds non-empty")
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


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- caches shared by all runs of the process -------------------------------------------------------------------------

def install_caches():
    """Decode each training image once for all runs (PairDataset.build_cache keyed by image list + transform) and
    each test image once (the evaluator's reader)."""
    import elvis_core.grounding.evaluate as ev
    import elvis_core.grounding.sides as sides  # noqa: F401 (uses ev.read_any_image at call time)
    from elvis_core.training import data as td

    built = {}
    orig_build = td.PairDataset.build_cache

    def build_cache(self, progress=None):
        key = (tuple(p.image_path for p in self.pairs), json.dumps(self.transform.to_config(), sort_keys=True))
        if key in built:
            self.pairs, self.cache, self.n_unreadable = built[key]
            return
        orig_build(self, progress)
        built[key] = (self.pairs, self.cache, self.n_unreadable)

    td.PairDataset.build_cache = build_cache
    images = {}
    orig_read = ev.read_any_image

    def read_any_image(path):
        k = str(path)
        if k not in images:
            images[k] = orig_read(path)
        return images[k]

    ev.read_any_image = read_any_image


# -- scoring ------------------------------------------------------------------------------------------------------------

def _twins(root):
    t = Path(root) / "twins"
    return str(t) if t.is_dir() else None


def score_rows(engine, aset, root, split):
    """Per-phrase metrics (same phrase order for every run) incl. laterality for one-sided phrases (else NaN), pointing
    on the finding-free twin (when ROOT/twins exists) and word following (share of the phrase's swaps followed)."""
    from elvis_core.grounding.evaluate import evaluate
    from elvis_core.grounding.sides import phrase_side
    from elvis_core.grounding.trust_eval import TrustCollector, read_anatomy

    anat = Path(root) / "anatomy.csv"
    col = TrustCollector(engine, twins_root=_twins(root), word_following=True,
                         anatomy=read_anatomy(str(anat)) if anat.is_file() else None)
    res = evaluate(engine, aset, root, split=split, on_image=col)
    rows = []
    for r in res.rows:
        wf = [w["followed"] for w in r.get("word_following", [])]
        rows.append({"key": f"{r['path']}|{r['label_text']}", "category": r["category"], "cnr": r["cnr"],
                     "miou": r["miou"], "pointing": float(r["pointing"]),
                     "in_gt_out": float(r["contrast"] > 0) if not math.isnan(r["contrast"]) else float("nan"),
                     "side": phrase_side(r["label_text"]),
                     "twin_pointing": float(r["twin_pointing"]) if "twin_pointing" in r else float("nan"),
                     "words": float(np.mean(wf)) if wf else float("nan"),
                     "peak": r.get("peak"), "twin_peak": r.get("twin_peak")})
    # laterality: peak on the named side (patient's left = image right), only for one-sided phrases
    from elvis_core.grounding.sides import side_checks

    sc = side_checks(engine, aset, root, split=split)
    peak = {f"{x['path']}|{x['label_text']}": x["peak_side"] for x in sc["rows"]}
    for r in rows:
        r["laterality"] = float(peak[r["key"]] == r["side"]) if r["side"] and r["key"] in peak else float("nan")
    return rows, sc["negation_median_r"]


def prior_rows(prior, aset, root, split):
    """The text prior's per-phrase metrics, keyed like ``score_rows`` (it never sees the image, so its map on the twin
    is its map on the film, and a swapped phrase gets the swapped words' mean box)."""
    import elvis_core.grounding.evaluate as ev
    from elvis_core.grounding.metrics import cnr, contrast, miou, pointing_game
    from elvis_core.grounding.sides import phrase_side
    from elvis_core.grounding.trust_eval import read_anatomy
    from elvis_core.grounding.word_following import followed, swap_side, swap_zone
    from elvis_core.io.annotations import rescale_boxes

    anat = Path(root) / "anatomy.csv"
    anatomy = read_anatomy(str(anat)) if anat.is_file() else {}
    rows = {}
    for ph in aset.filter_split(split).phrases:
        try:
            shape = ev.read_any_image(Path(root) / ph.path).shape[:2]
        except Exception:  # noqa: BLE001 - a missing image is missing for the models too
            continue
        boxes, _note = rescale_boxes(ph, shape)
        boxes, _notes = ev.boxes_in_image(boxes, shape)
        if not boxes:
            continue
        mid, span = anatomy.get(ph.path, (shape[1] / 2.0, (0.1 * shape[0], 0.75 * shape[0])))
        m = prior.map_for(ph.label_text, ph.category, shape)
        xywh = [(b.x, b.y, b.w, b.h) for b in boxes]
        hit = pointing_game(m, boxes)
        side = phrase_side(ph.label_text)
        swaps = []
        if swap_side(ph.label_text):
            swaps.append(("side", swap_side(ph.label_text), "left" if side == "right" else "right"))
        z = swap_zone(ph.label_text)
        if z and side:
            swaps.append(("zone", z[0], z[1]))
        wf = []
        for kind, text, named in swaps:
            sm = prior.map_for(text, ph.category, shape)
            iy, ix = np.unravel_index(int(np.argmax(sm)), sm.shape)
            wf.append(followed((ix + 0.5, iy + 0.5), None, None, kind, named, xywh, mid, span))
        iy, ix = np.unravel_index(int(np.argmax(m)), m.shape)
        c = contrast(m, boxes)
        key = f"{ph.path}|{ph.label_text}"
        rows[key] = {"key": key, "category": ph.category, "cnr": cnr(m, boxes), "miou": miou(m, boxes),
                     "pointing": float(hit), "in_gt_out": float(c > 0) if not math.isnan(c) else float("nan"),
                     "laterality": (float(("left" if ix + 0.5 > shape[1] / 2 else "right") == side) if side
                                    else float("nan")),
                     "twin_pointing": float(hit), "words": float(np.mean(wf)) if wf else float("nan")}
    return rows


# -- statistics ---------------------------------------------------------------------------------------------------------

def _macro(vals: np.ndarray, cat_idx: np.ndarray, n_cat: int) -> float:
    """Mean over categories of the mean of the non-NaN values of each category."""
    ms = []
    for c in range(n_cat):
        v = vals[cat_idx == c]
        v = v[~np.isnan(v)]
        if v.size:
            ms.append(v.mean())
    return float(np.mean(ms)) if ms else float("nan")


def summarise(results, n_boot: int, seed: int = 12345):
    """results[run][seed] = list of phrase rows (same phrases, same order). Returns per run and metric:
    macro and per-category mean with CI, and differences to REFERENCE."""
    runs = list(results)
    seeds0 = list(results[runs[0]])
    keys = [r["key"] for r in results[runs[0]][seeds0[0]]]
    cats = sorted({r["category"] for r in results[runs[0]][seeds0[0]]})
    cat_idx = np.array([cats.index(r["category"]) for r in results[runs[0]][seeds0[0]]])
    arr = {}  # run -> metric -> [n_seeds, n_phrases]
    for run in runs:
        arr[run] = {}
        for m in METRICS:
            mat = []
            for s in results[run]:
                rows = results[run][s]
                assert [r["key"] for r in rows] == keys, "runs must score the same phrases"
                mat.append([float(r[m]) for r in rows])
            arr[run][m] = np.array(mat, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n_ph = len(keys)
    draws = [(rng.integers(0, 10 ** 9), rng.integers(0, n_ph, n_ph)) for _ in range(n_boot)]
    out = {"categories": cats, "n_phrases": n_ph, "n_per_category": {c: int((cat_idx == i).sum())
                                                                        for i, c in enumerate(cats)},
           "runs": {}}

    def stat(mat, ph_idx, seed_idx, cat=None):
        sub = mat[seed_idx][:, ph_idx] if seed_idx is not None else mat[:, ph_idx]
        ci = cat_idx[ph_idx]
        if cat is None:
            return np.nanmean([_macro(row, ci, len(cats)) for row in sub])
        v = sub[:, ci == cat]
        return float(np.nanmean(v)) if v.size and not np.all(np.isnan(v)) else float("nan")

    all_ph = np.arange(n_ph)
    for run in runs:
        rs = {}
        for m in METRICS:
            mat = arr[run][m]
            n_seed = mat.shape[0]
            point = stat(mat, all_ph, None)
            boots, diffs, over_prior = [], [], []
            ref = arr.get(REFERENCE, {}).get(m)
            pri = arr.get(PRIOR, {}).get(m)
            for sd, ph in draws:
                si = np.random.default_rng(sd).integers(0, n_seed, n_seed)
                b = stat(mat, ph, si)
                boots.append(b)
                if ref is not None and run != REFERENCE and ref.shape[0] == n_seed:
                    diffs.append(stat(ref, ph, si) - b)
                if pri is not None and run != PRIOR and pri.shape[0] == n_seed:  # paired: same phrases and seeds
                    over_prior.append(b - stat(pri, ph, si))
            d = {"mean": point, "lo": float(np.nanpercentile(boots, 2.5)), "hi": float(np.nanpercentile(boots, 97.5))}
            if diffs:
                d["ref_minus_this"] = {"mean": stat(arr[REFERENCE][m], all_ph, None) - point,
                                       "lo": float(np.nanpercentile(diffs, 2.5)),
                                       "hi": float(np.nanpercentile(diffs, 97.5))}
            if over_prior:
                d["this_minus_prior"] = {"mean": point - stat(pri, all_ph, None),
                                         "lo": float(np.nanpercentile(over_prior, 2.5)),
                                         "hi": float(np.nanpercentile(over_prior, 97.5))}
            d["per_category"] = {c: stat(mat, all_ph, None, i) for i, c in enumerate(cats)}
            rs[m] = d
        out["runs"][run] = rs
    return out


def fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def tables(summary, markdown: bool) -> str:
    runs = list(summary["runs"])
    lines = []
    ms = [m for m in METRICS if m in summary["runs"][runs[0]]]  # a saved run may predate some columns
    titles = [TITLES[METRICS.index(m)] for m in ms]
    head = ["objectives"] + [f"{t} (95 % CI)" for t in titles]
    rows = []
    for run in runs:
        cells = [run]
        for m in ms:
            d = summary["runs"][run][m]
            cells.append(f"{fmt(d['mean'])} [{fmt(d['lo'])}, {fmt(d['hi'])}]")
        rows.append(cells)
    diff_head = ["objectives"] + [f"{REFERENCE} − this: {t}" for t in titles]
    diff_rows = []
    for run in runs:
        if "ref_minus_this" not in summary["runs"][run]["cnr"]:
            continue
        cells = [run]
        for m in ms:
            d = summary["runs"][run][m]["ref_minus_this"]
            tag = " *" if (d["lo"] > 0 or d["hi"] < 0) else ""
            cells.append(f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{tag}")
        diff_rows.append(cells)
    prior_head = ["objectives"] + [f"this − text prior: {t}" for t in titles]
    prior_rows_ = []
    for run in runs:
        if "this_minus_prior" not in summary["runs"][run].get("pointing", {}):
            continue
        cells = [run]
        for m in ms:
            d = summary["runs"][run][m].get("this_minus_prior")
            if d is None:
                cells.append("n/a")
                continue
            tag = " *" if (d["lo"] > 0 or d["hi"] < 0) else ""
            cells.append(f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{tag}")
        prior_rows_.append(cells)
    cats = summary["categories"]
    cat_head = ["category", "n"] + runs
    cat_rows = []
    for c in cats:
        cells = [c, str(summary["n_per_category"][c])]
        for run in runs:
            pc = summary["runs"][run]
            cells.append(" / ".join(fmt(pc[m]["per_category"][c]) for m in ("cnr", "miou", "pointing")))
        cat_rows.append(cells)

    def render(h, rs):
        if markdown:
            out = ["| " + " | ".join(h) + " |", "|" + "---|" * len(h)]
            out += ["| " + " | ".join(r) + " |" for r in rs]
            return out
        w = [max(len(x) for x in col) for col in zip(h, *rs)] if rs else [len(x) for x in h]
        return ["  ".join(x.ljust(n) for x, n in zip(r, w)) for r in [h] + rs]

    lines += [f"macro over categories ({summary['n_phrases']} test phrases; mean over seeds and phrases, "
              f"95 % paired bootstrap CI):"] + render(head, rows)
    if diff_rows:
        lines += ["", f"difference {REFERENCE} minus each run (95 % CI; * = interval excludes 0):"]
        lines += render(diff_head, diff_rows)
    if prior_rows_:
        lines += ["", "margin of each run over the text prior (95 % paired CI; * = interval excludes 0):"]
        lines += render(prior_head, prior_rows_)
    lines += ["", "per category (mean over seeds): CNR / mIoU / pointing"] + render(cat_head, cat_rows)
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.table_from:
        try:
            saved = json.loads(Path(a.table_from).read_text())["summary"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"{a.table_from}: not a phantom_quality.py --json file ({type(err).__name__})", file=sys.stderr)
            return 2
        print(tables(saved, a.markdown))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from elvis_core.errors import ElvisError
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.io.annotations import read_ms_cxr_csv
    from elvis_core.phantom import generate
    from elvis_core.training.config import load_config
    from elvis_core.training.trainer import train

    if a.threads:
        torch.set_num_threads(a.threads)
    install_caches()
    code = git_version()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="elvis_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    if a.train_data:
        train_dir = Path(a.train_data)
    else:
        train_dir = work / "train"
        if not (train_dir / "ms_cxr.csv").is_file():
            generate(train_dir, a.train_studies, seed=a.train_seed, size=a.size, splits=(100, 0, 0))
    if a.test_data:
        test_dir = Path(a.test_data)
    else:
        test_dir = work / "test"
        if not (test_dir / "ms_cxr.csv").is_file():
            generate(test_dir, a.test_studies, seed=a.test_seed, size=a.size, splits=(0, 0, 100), twins=True)
    for d in (train_dir, test_dir):
        if not (d / "ms_cxr.csv").is_file():
            print(f"{d}: not a phantom folder (no ms_cxr.csv)", file=sys.stderr)
            return 2
    aset = read_ms_cxr_csv(test_dir / "ms_cxr.csv")
    print(f"train: {train_dir}; test: {test_dir} ({len(aset.filter_split(a.split).phrases)} phrases in split "
          f"{a.split!r})", flush=True)
    base_sets = [f"data.root={json.dumps(str(train_dir))}", 'data.exclude_ms_cxr=""', "data.exclude_splits=[]",
                 'validation.annotations=""', f"train.max_steps={a.steps}", f"train.batch_size={a.batch_size}",
                 f"train.threads={a.threads}", f'train.device="{a.device}"', "train.progress=false",
                 "train.resume=false", f"train.checkpoint_every={max(a.steps, 1)}"] + list(a.sets)
    results, meta, negation = {}, {}, {}
    dev = "cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu"
    try:
        if not a.no_random:
            from elvis_core.model.elvis import build_model
            from elvis_core.training.config import model_config_from
            from elvis_core.training.data import find_pairs

            results["random init"] = {}
            for s in a.seed_list:
                cfg = load_config(a.config, base_sets + [f"train.seed={s}"])
                pairs, _ = find_pairs(cfg["data"]["root"], views=cfg["data"]["views"])
                torch.manual_seed(s)
                model = build_model(model_config_from(cfg), texts=[p.text for p in pairs]).eval().to(dev)
                results["random init"][s], negation.setdefault("random init", {})[s] = score_rows(
                    GroundingEngine(model, device=dev), aset, test_dir, a.split)
            print("random init: scored", flush=True)
        for name in a.run_names:
            results[name] = {}
            for s in a.seed_list:
                sets = base_sets + [f"train.seed={s}"] + [f"objectives.weights.{k}={v}"
                                                          for k, v in RUNS[name].items()]
                sets += [x.format(anatomy=json.dumps(str(train_dir / "anatomy.csv"))) for x in RUN_SETS.get(name, [])]
                cfg = load_config(a.config, sets)
                out = work / f"run_{name.split(' ')[0].replace('+', '_')}_s{s}"
                tc = cpu_seconds()
                res = train(cfg, out_dir=str(out), progress=False)
                results[name][s], negation.setdefault(name, {})[s] = score_rows(
                    GroundingEngine(res.model_dir, device=dev), aset, test_dir, a.split)
                meta.setdefault(name, {})[s] = {"steps": res.steps, "train_s": round(res.seconds, 1),
                                                "cpu_s": round(cpu_seconds() - tc, 1),
                                                "first_loss": res.first_loss, "last_loss": res.last_loss,
                                                "n_train_pairs": res.n_train_pairs}
                print(f"{name} seed {s}: {res.steps} steps in {res.seconds:.0f} s, loss {res.first_loss:.3f} -> "
                      f"{res.last_loss:.3f}", flush=True)
        if not a.no_prior and results:
            from elvis_core.grounding.text_prior import TextPrior

            prior = TextPrior.from_csv(str(train_dir / "ms_cxr.csv"), split=None)
            by_key = prior_rows(prior, aset, test_dir, a.split)
            nan = {m: float("nan") for m in METRICS}
            first = results[next(iter(results))]
            results[PRIOR] = {s: [{**nan, "key": r["key"], "category": r["category"], **by_key.get(r["key"], {})}
                                  for r in rows] for s, rows in first.items()}
            print(f"{PRIOR}: {prior.describe()}", flush=True)
    except ElvisError as err:
        print(str(err), file=sys.stderr)
        return 2
    from elvis_core.grounding.trust_eval import auc

    presence_auc = {name: float(np.nanmean([auc([r["peak"] for r in rows if r.get("twin_peak") is not None],
                                                [r["twin_peak"] for r in rows if r.get("twin_peak") is not None])
                                            for rows in per_seed.values()]))
                    for name, per_seed in results.items() if name != PRIOR}
    summary = summarise(results, a.bootstrap)
    total, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    n_train = next((m["n_train_pairs"] for r in meta.values() for m in r.values()), "?")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    budget = (f"budget: {a.steps} steps x batch {a.batch_size} per objective and seed, seeds {a.seed_list}, "
              f"{n_train} training pairs, config {os.path.relpath(a.config, REPO)}" + (f" + {a.sets}" if a.sets else ""))
    print()
    print(budget)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, device {a.device}, torch threads "
          f"{torch.get_num_threads()}, load {load:.1f}; code {code}; wall {total / 60:.1f} min, "
          f"CPU {cpu / 60:.1f} min")
    print()
    print(tables(summary, a.markdown))
    neg = {k: float(np.median(list(v.values()))) for k, v in negation.items()}
    print("\nnegation: median over seeds of the median Pearson r(map('no P'), map(P)): "
          + ", ".join(f"{k} {fmt(v)}" for k, v in neg.items()))
    print("presence AUC (raw peak on the film vs on its finding-free twin; mean over seeds): "
          + ", ".join(f"{k} {fmt(v)}" for k, v in presence_auc.items()))
    if a.json:
        from elvis_core.grounding.evaluate import _clean

        Path(a.json).write_text(json.dumps(_clean({"args": {k: v for k, v in vars(a).items()}, "summary": summary,
                                                   "runs": meta, "negation": neg, "presence_auc": presence_auc,
                                                   "wall_s": total, "cpu_s": cpu,
                                                   "code": code, "budget": budget,
                                                   "phrases": {k: {str(s): rows for s, rows in v.items()}
                                                               for k, v in results.items()}}), indent=1))
        print(f"\nJSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
