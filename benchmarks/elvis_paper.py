"""ELVIS tested the way its paper tests it (issue #22): locality after projection, segmentation probes, pointing and
word following, per objective, with paired-bootstrap 95 % confidence intervals over seeds and test items.

Stages (``--stage``; both by default):

- ``train``: trains every (objective set, seed) once at the same budget on a generated phantom set, validating every
  ``--val-every`` steps on a separate validation phantom set (pointing, the trainer's own validation) and keeping a
  checkpoint at each validation (``WORK/runs/<run>_s<seed>/curve/step_NNNN``) for the learning curves. Runs whose
  ``model/`` exists are skipped, so an interrupted run goes on where it stopped. The ELVIS ablations (target
  temperature sweep, pre- vs post-projection similarity) train on ``--ablation-seeds``.
- ``eval``: scores every trained checkpoint (and the untrained model of the same preset, ``random init``) on held-out
  phantom studies: locality after projection (:mod:`elvis_core.grounding.locality`), linear-probe and fine-tuned
  segmentation Dice at 1 / 10 / 100 % of the probe labels (:mod:`elvis_core.grounding.probe`), MS-CXR-style pointing
  and word following (the phrase with its side or zone word swapped, same image). Prints one table; writes the
  learning curves (validation pointing and probe Dice vs step) to ``WORK/curves.csv``.

    OMP_NUM_THREADS=1 nohup nice -n 10 python benchmarks/elvis_paper.py --work /tmp/elvis_paper --steps 120 \
        --val-every 40 --val-phrases 60 --seeds 0,1 --ablation-seeds 0 --curve-seeds 0 --locality-images 100 \
        --finetune-steps 30 --markdown > elvis_paper.log 2>&1 &
    python benchmarks/elvis_paper.py --stage table --work /tmp/elvis_paper --steps 120 --seeds 0,1 --ablation-seeds 0

(the run in docs/elvis_paper.md; ``--compute-seeds`` / ``--wait-pids`` / ``--runs`` split the scoring over several
processes that share the cache in ``WORK/eval``).

The model and training recipe are those of ``benchmarks/phantom_quality.py``'s documented run (demo config, 128 px,
small ResNet, lr 2e-3); only the objective weights differ between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_Z = {"global": 0.0, "local": 0.0, "region_sentence": 0.0, "intra": 0.0, "elvis": 0.0, "negation": 0.0,
      "anatomy": 0.0, "mirror": 0.0}
#: run name -> (objective weights, extra settings); the paper's rows. "random init" (no training) is added at eval.
RUNS = {
    "global": (dict(_Z, **{"global": 1.0}), []),
    "GLoRIA (global+local)": (dict(_Z, **{"global": 1.0, "local": 0.5}), []),
    "LoVT (global+region_sentence)": (dict(_Z, **{"global": 1.0, "region_sentence": 0.5}), []),
    "ELVIS (global+elvis)": (dict(_Z, **{"global": 1.0, "elvis": 0.5}), []),
    "intra (global+local+intra)": (dict(_Z, **{"global": 1.0, "local": 0.5, "intra": 0.5}), []),
    "anatomy (global+anatomy)": (dict(_Z, **{"global": 1.0, "anatomy": 0.5}), ["data.anatomy={anatomy}"]),
}
#: ELVIS ablations: target temperature (the main run uses 0.1) and which similarity makes the targets
ABLATIONS = {
    "ELVIS tt=0.05": (RUNS["ELVIS (global+elvis)"][0], ["objectives.elvis.target_temperature=0.05"]),
    "ELVIS tt=0.2": (RUNS["ELVIS (global+elvis)"][0], ["objectives.elvis.target_temperature=0.2"]),
    "ELVIS tt=0.5": (RUNS["ELVIS (global+elvis)"][0], ["objectives.elvis.target_temperature=0.5"]),
    "ELVIS post-projection targets": (RUNS["ELVIS (global+elvis)"][0],
                                      ["objectives.elvis.similarity_source='post_projection'"]),
}
MODEL_SETS = ["model.overrides={preprocessing = {size = 128}, image = {resnet = {embedding_size = 32, "
              "hidden_sizes = [32, 96], depths = [1, 2]}}}", "data.max_pairs=0", "train.warmup_steps=10",
              "train.lr=2e-3"]
REFERENCE = "ELVIS (global+elvis)"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).strip("_")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("train", "eval", "all", "table"), default="all",
                   help="table: print the tables from the cached scores of an earlier eval (no model runs)")
    p.add_argument("--work", required=True, help="folder for the phantom sets, runs and curves (kept)")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ablation-seeds", default="0", help="seeds of the ELVIS ablation runs ('' = none)")
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of: " + ", ".join(RUNS))
    p.add_argument("--train-studies", type=int, default=2000)
    p.add_argument("--val-studies", type=int, default=150)
    p.add_argument("--test-studies", type=int, default=330)
    p.add_argument("--probe-studies", type=int, default=200, help="labelled studies for the segmentation probes")
    p.add_argument("--probe-test-studies", type=int, default=100)
    p.add_argument("--locality-images", type=int, default=100, help="held-out images (and reports) for locality")
    p.add_argument("--curve-seeds", default="0", help="seeds whose checkpoints are scored for the learning curves")
    p.add_argument("--curve-runs", default="global,GLoRIA,LoVT,ELVIS",
                   help="short names of the runs whose checkpoints get a probe Dice for the learning curves")
    p.add_argument("--compute-seeds", default=None,
                   help="eval: seeds this process scores itself (default: all); the others are read from the cache")
    p.add_argument("--skip-random", action="store_true", help="eval: do not score the untrained model")
    p.add_argument("--wait-pids", default="", help="eval: keep scoring new models while these processes live")
    p.add_argument("--figure-image", type=int, default=0, help="index of the held-out image drawn in the figure")
    p.add_argument("--val-every", type=int, default=40)
    p.add_argument("--val-phrases", type=int, default=60)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--generator-version", type=int, default=1,
                   help="phantom generator of every set (1: the documented run's data; 2: phantom v2)")
    p.add_argument("--config", default=str(REPO / "resources" / "configs" / "demo.toml"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--finetune-steps", type=int, default=30,
                   help="fine-tuning variant of the probe, on 10 %% of the labels (0 = skip)")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args(argv)
    a.seed_list = [int(s) for s in a.seeds.split(",") if s.strip()]
    a.ablation_seed_list = [int(s) for s in a.ablation_seeds.split(",") if s.strip()]
    a.curve_seed_list = [int(s) for s in a.curve_seeds.split(",") if s.strip()]
    a.curve_run_list = [r.strip() for r in a.curve_runs.split(",") if r.strip()]
    a.compute_seed_list = None if a.compute_seeds is None else \
        [int(x) for x in a.compute_seeds.split(",") if x.strip()]
    a.wait_pid_list = [int(x) for x in a.wait_pids.split(",") if x.strip()]
    a.run_names = [r.strip() for r in a.runs.split(",") if r.strip()]
    bad = [r for r in a.run_names if r not in RUNS]
    if bad:
        p.error(f"unknown run(s) {bad}; known: {list(RUNS)}")
    return a


# -- data -------------------------------------------------------------------------------------------------------------

def phantom_sets(a) -> dict:
    """Generate (once) the training, validation and test phantom sets: distinct seeds, so distinct patients."""
    from elvis_core.phantom import generate

    work = Path(a.work)
    sets = {"train": (a.train_studies, 101, (100, 0, 0)), "val": (a.val_studies, 31, (0, 100, 0)),
            "test": (a.test_studies, 202, (0, 0, 100))}
    out = {}
    for name, (n, seed, splits) in sets.items():
        d = work / name
        if not (d / "ms_cxr.csv").is_file():
            if d.exists():
                shutil.rmtree(d)
            generate(d, n, seed=seed, size=a.size, splits=splits, version=a.generator_version)
        out[name] = d
    return out


# -- training ---------------------------------------------------------------------------------------------------------

def run_list(a):
    """(name, seed, weights, extra sets) in training order: every run of the first seed (ablations included) first,
    so an interrupted benchmark still has one complete seed."""
    out = []
    for i, s in enumerate(a.seed_list):
        for n in a.run_names:
            out.append((n, s) + RUNS[n])
        for n, v in ABLATIONS.items():
            if s in a.ablation_seed_list:
                out.append((n, s) + v)
    return out


def run_dir(a, name: str, seed: int) -> Path:
    return Path(a.work) / "runs" / f"{slug(name)}_s{seed}"


def train_all(a, data) -> None:
    import elvis_core.training.trainer as tr
    from elvis_core.model.checkpoint import save_checkpoint
    from elvis_core.training.config import load_config

    orig_val = tr.grounding_validation
    state = {"out": None, "calls": 0}

    def validation_with_checkpoint(model, cfg):
        """The trainer's validation (pointing on the validation set) + a checkpoint for the learning curves."""
        state["calls"] += 1
        step = state["calls"] * a.val_every
        save_checkpoint(model, state["out"] / "curve" / f"step_{step:05d}")
        return orig_val(model, cfg)

    tr.grounding_validation = validation_with_checkpoint
    base = [f"data.root={json.dumps(str(data['train']))}", 'data.exclude_ms_cxr=""', "data.exclude_splits=[]",
            f"validation.annotations={json.dumps(str(data['val'] / 'ms_cxr.csv'))}",
            f"validation.images_root={json.dumps(str(data['val']))}", f"validation.every={a.val_every}",
            f"validation.max_phrases={a.val_phrases}", f"train.max_steps={a.steps}",
            f"train.batch_size={a.batch_size}", f"train.threads={a.threads}", "train.progress=false",
            "train.resume=false", f"train.checkpoint_every={a.steps}"] + MODEL_SETS
    for name, seed, weights, extra in run_list(a):
        out = run_dir(a, name, seed)
        if (out / "model" / "config.json").is_file():
            continue
        if out.exists():
            shutil.rmtree(out)
        sets = base + [f"train.seed={seed}"] + [f"objectives.weights.{k}={v}" for k, v in weights.items()]
        sets += [x.format(anatomy=json.dumps(str(data["train"] / "anatomy.csv"))) for x in extra]
        cfg = load_config(a.config, sets)
        state.update(out=out, calls=0)
        t0 = time.perf_counter()
        res = tr.train(cfg, out_dir=str(out), progress=False)
        print(f"trained {name} seed {seed}: {res.steps} steps in {time.perf_counter() - t0:.0f} s, loss "
              f"{res.first_loss:.3f} -> {res.last_loss:.3f}, val {res.val_metrics}", flush=True)
    tr.grounding_validation = orig_val



# -- evaluation -------------------------------------------------------------------------------------------------------

class Context:
    """Everything a model is scored on, loaded once: images + reports (locality), phrases with boxes and lung
    geometry (pointing, word following), probe sets."""

    def __init__(self, a, data, transform, which: str, probe_train=None):
        from elvis_core.grounding.evaluate import read_any_image
        from elvis_core.grounding.probe import probe_set
        from elvis_core.io.annotations import read_ms_cxr_csv
        from elvis_core.training.data import find_pairs
        from elvis_core.training.objectives import split_sentences

        root = data[which]
        self.root, self.which = root, which
        pairs, _ = find_pairs(str(root))
        pairs = sorted(pairs, key=lambda p: p.image_path)[: a.locality_images]
        self.loc_inputs, self.reports = [], []
        import torch

        for p in pairs:
            self.loc_inputs.append(transform.apply(read_any_image(p.image_path)))
            self.reports.append(split_sentences(p.text))
        self.loc_inputs = torch.from_numpy(__import__("numpy").stack(self.loc_inputs))[:, None]
        aset = read_ms_cxr_csv(root / "ms_cxr.csv").filter_split(which)
        self.phrases = sorted(aset.phrases, key=lambda ph: ph.key)
        self.lungs = lung_geometry(root / "anatomy.csv")
        w = Path(a.work)
        self.probe_train = probe_train if probe_train is not None else \
            probe_set(w / "probe_train", a.probe_studies, 303, a.size, transform, a.generator_version)
        if which == "test":
            self.probe_test = probe_set(w / "probe_test", a.probe_test_studies, 305, a.size, transform,
                                        a.generator_version)
        else:
            self.probe_test = probe_set(w / "probe_val", max(20, a.probe_test_studies // 2), 304, a.size, transform,
                                        a.generator_version)


def lung_geometry(csv_path: Path) -> dict:
    """path -> (midline x, (lung top, lung bottom)) in image pixels from the phantom's anatomy boxes."""
    import csv

    boxes = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["bbox_name"] in ("right lung", "left lung"):
                boxes.setdefault(r["path"], {})[r["bbox_name"]] = tuple(float(r[k]) for k in "xywh")
    out = {}
    for path, b in boxes.items():
        if len(b) == 2:
            rl, ll = b["right lung"], b["left lung"]  # the patient's right lung is on the image's left
            out[path] = (0.5 * (rl[0] + rl[2] + ll[0]), (min(rl[1], ll[1]), max(rl[1] + rl[3], ll[1] + ll[3])))
    return out


#: the word-following measure of the table (the peak-based verdict; presence is uncalibrated for these models, so
#: ``presence_of`` is not given and only the peak decides)
WORD_FOLLOWING = "elvis_core.grounding.word_following"


def grounding_items(model, ctx) -> tuple:
    """Pointing (raw-map peak in a box) per phrase and word following per swap, keyed for pairing."""
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.grounding.evaluate import read_any_image
    from elvis_core.grounding.word_following import map_peak_xy as peak, word_following as wf

    engine = GroundingEngine(model, device="cpu")
    point, follow = {}, {}
    by_path = {}
    for ph in ctx.phrases:
        by_path.setdefault(ph.path, []).append(ph)
    for path, phs in by_path.items():
        engine.set_image(read_any_image(ctx.root / path))
        for ph in phs:
            boxes = [(b.x, b.y, b.w, b.h) for b in ph.boxes]
            x, y = peak(engine.ground(ph.label_text))
            point[f"{path}|{ph.label_text}"] = float(any(bx <= x < bx + bw and by <= y < by + bh
                                                          for bx, by, bw, bh in boxes))
            if path in ctx.lungs:
                mid, span = ctx.lungs[path]
                for r in wf(engine.ground, ph.label_text, boxes, mid, span):
                    follow[f"{path}|{ph.label_text}|{r['kind']}"] = float(r["followed"])
    return point, follow


def text_prior_items(ctx) -> tuple:
    """A map that reads only the words: its peak at the centre of the named side's lung, in the named zone's band
    (the middle without a zone word). What a model that ignores the image would reach; no seed, no training."""
    import re
    from types import SimpleNamespace

    import numpy as np

    from elvis_core.grounding.sides import phrase_side
    from elvis_core.grounding.word_following import map_peak_xy as peak, word_following as wf

    level = {"upper": 1 / 6, "apical": 1 / 12, "apex": 1 / 12, "apices": 1 / 12, "lower": 5 / 6, "basilar": 11 / 12,
             "base": 11 / 12, "bases": 11 / 12, "basal": 11 / 12, "mid": 0.5, "middle": 0.5}
    zre = re.compile(r"\b(" + "|".join(level) + r")\b", re.IGNORECASE)
    point, follow = {}, {}
    for ph in ctx.phrases:
        if ph.path not in ctx.lungs:
            continue
        mid, (top, bot) = ctx.lungs[ph.path]
        w, h = ph.image_width, ph.image_height

        def prior_map(text):  # a one-cell "map" whose peak is the prior's point
            side = phrase_side(text)
            x = (mid + (w - mid) / 2) if side == "left" else (mid / 2 if side == "right" else mid)
            m = zre.search(text)
            y = top + (level[m.group(1).lower()] if m else 0.5) * (bot - top)
            one = np.ones((1, 1))
            return SimpleNamespace(raw_similarity=one, similarity=one, image_shape=(h, w),
                                   grid_to_image=np.array([[0.0, 0.0, x], [0.0, 0.0, y], [0.0, 0.0, 1.0]]))

        boxes = [(b.x, b.y, b.w, b.h) for b in ph.boxes]
        x, y = peak(prior_map(ph.label_text))
        key = f"{ph.path}|{ph.label_text}"
        point[key] = float(any(bx <= x < bx + bw and by <= y < by + bh for bx, by, bw, bh in boxes))
        for r in wf(prior_map, ph.label_text, boxes, mid, (top, bot)):
            follow[f"{key}|{r['kind']}"] = float(r["followed"])
    return point, follow


def evaluate_model(a, model, ctx, seed: int) -> dict:
    """Every per-item figure of one model on one context (JSON-able). On the validation context (the ELVIS
    ablations) the probe is the linear one at 100 % only (CPU budget)."""
    from elvis_core.grounding.locality import image_locality, text_locality
    from elvis_core.grounding.probe import probe_scores

    t0 = time.perf_counter()
    out = {"loc_img": image_locality(model, ctx.loc_inputs), "loc_txt": text_locality(model, ctx.reports)}
    light = ctx.which != "test"
    pr = probe_scores(model, ctx.probe_train, ctx.probe_test, fractions=(1.0,) if light else (0.01, 0.1, 1.0),
                      seed=seed, finetune_fraction=0.1 if a.finetune_steps and not light else None,
                      finetune_steps=a.finetune_steps)
    out["probe"] = {k: {g: [float(x) for x in v] for g, v in d.items()} for k, d in pr.items()}
    out["pointing"], out["follow"] = grounding_items(model, ctx)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def random_model(a, data, seed: int):
    import torch

    from elvis_core.model.elvis import build_model
    from elvis_core.training.config import load_config, model_config_from
    from elvis_core.training.data import find_pairs

    cfg = load_config(a.config, MODEL_SETS + [f"data.root={json.dumps(str(data['train']))}"])
    pairs, _ = find_pairs(cfg["data"]["root"])
    torch.manual_seed(seed)
    return build_model(model_config_from(cfg), texts=[p.text for p in pairs]).eval()


def cached_eval(a, key: str, ctx, make_model, seed: int) -> dict:
    f = Path(a.work) / "eval" / ctx.which / f"{key}.json"
    if f.is_file():
        return json.loads(f.read_text())
    if a.compute_seed_list is not None and seed not in a.compute_seed_list:
        return None  # another eval process scores this seed (--compute-seeds); read its result when it is there
    res = evaluate_model(a, make_model(), ctx, seed)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, f)
    print(f"scored {key} on {ctx.which} in {res['seconds']} s", flush=True)
    return res


#: table columns: (label, extractor of the per-item values from one evaluation)
def _loc(field, i):
    return lambda r: [v[i] for v in r[field]]


COLUMNS = [("locality image r", _loc("loc_img", 0)), ("locality text r", _loc("loc_txt", 0)),
           ("Dice linear 1%", lambda r: r["probe"]["linear 1%"]["mean"]),
           ("Dice linear 10%", lambda r: r["probe"]["linear 10%"]["mean"]),
           ("Dice linear 100%", lambda r: r["probe"]["linear 100%"]["mean"]),
           ("Dice fine-tune 10%", lambda r: r["probe"].get("finetune 10%", {}).get("mean", [])),
           ("pointing", lambda r: [r["pointing"][k] for k in sorted(r["pointing"])]),
           ("word following side", lambda r: [r["follow"][k] for k in sorted(r["follow"]) if k.endswith("|side")]),
           ("word following zone", lambda r: [r["follow"][k] for k in sorted(r["follow"]) if k.endswith("|zone")])]
EXTRA = [("locality image rho", _loc("loc_img", 1)), ("locality text rho", _loc("loc_txt", 1))] + [
    (f"{g} Dice linear {f}", (lambda g, f: lambda r: r["probe"][f"linear {f}"][g])(g, f))
    for g in ("lungs", "heart", "findings") for f in ("1%", "100%")]


def bootstrap(results: dict, columns, n_boot: int, reference: str = REFERENCE, seed: int = 12345) -> dict:
    """results[run][seed] = evaluation. Per run and column: mean over seeds and items with a 95 % interval from a
    paired bootstrap (seeds and items resampled with replacement, the same item draw for every run) and the
    difference to ``reference`` on the seeds both runs have (paired by seed and item). Runs with one "seed" (the
    text prior) resample items only."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for label, get in columns:
        mats = {}
        for run, per_seed in results.items():
            try:
                rows = {s: np.asarray(get(r), np.float64) for s, r in sorted(per_seed.items())}
            except KeyError:
                continue
            lens = {len(x) for x in rows.values()}
            if not rows or len(lens) != 1 or 0 in lens:
                continue
            mats[run] = rows
        if not mats:
            continue
        n_items = max(len(next(iter(m.values()))) for m in mats.values())
        draws = [(rng.integers(0, 10 ** 9), rng.integers(0, n_items, n_items)) for _ in range(n_boot)]
        ref = mats.get(reference)
        for run, rows in mats.items():
            m = np.stack(list(rows.values()))
            if m.shape[1] != n_items:
                continue
            common = sorted(set(rows) & set(ref)) if ref is not None and run != reference else []
            rm = np.stack([ref[s] for s in common]) if common else None
            tm = np.stack([rows[s] for s in common]) if common else None
            vals, diffs = [], []
            for sd, it in draws:
                si = np.random.default_rng(sd).integers(0, m.shape[0], m.shape[0])
                vals.append(np.nanmean(m[si][:, it]))
                if common:
                    ci = np.random.default_rng(sd + 1).integers(0, len(common), len(common))
                    diffs.append(np.nanmean(rm[ci][:, it]) - np.nanmean(tm[ci][:, it]))
            d = {"mean": float(np.nanmean(m)), "lo": float(np.nanpercentile(vals, 2.5)),
                 "hi": float(np.nanpercentile(vals, 97.5)), "n_items": int(np.sum(~np.isnan(m[0]))),
                 "n_seeds": int(m.shape[0])}
            if common:
                d["ref_minus_this"] = {"mean": float(np.nanmean(rm) - np.nanmean(tm)),
                                       "lo": float(np.nanpercentile(diffs, 2.5)),
                                       "hi": float(np.nanpercentile(diffs, 97.5)), "seeds": common}
            out.setdefault(run, {})[label] = d
    return out


def render(summary: dict, columns, markdown: bool, diff: bool = False) -> str:
    labels = [c for c, _ in columns]
    head = ["objectives"] + labels
    rows = []
    for run, cols in summary.items():
        ns = max((d.get("n_seeds", 0) for d in cols.values()), default=0)
        cells = [run + (f" ({ns} seeds)" if ns > 1 else " (1 seed)" if "prior" not in run else "")]
        for lab in labels:
            d = cols.get(lab)
            if d is None or (diff and "ref_minus_this" not in d):
                cells.append("")
                continue
            if diff:
                x = d["ref_minus_this"]
                star = " *" if x["lo"] > 0 or x["hi"] < 0 else ""
                cells.append(f"{x['mean']:+.3f} [{x['lo']:+.3f}, {x['hi']:+.3f}]{star}")
            else:
                cells.append(f"{d['mean']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]")
        if any(cells[1:]):
            rows.append(cells)
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(r) + " |" for r in rows])
    w = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(x.ljust(n) for x, n in zip(r, w)) for r in [head] + rows)


def learning_curves(a, ctx_val) -> list:
    """Validation pointing (the trainer's, logged) and linear-probe Dice (100 % of a 100-study probe subset,
    scored on the validation probe set) at every kept checkpoint of the ``--curve-seeds`` runs."""
    import csv

    from elvis_core.grounding.probe import mean_dice, probe_scores
    from elvis_core.model.checkpoint import load_checkpoint

    rows = []
    cache = Path(a.work) / "eval" / "curves.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    small = ctx_val.probe_train.subset(range(min(100, len(ctx_val.probe_train))))
    names = [n for n in list(RUNS) + list(ABLATIONS) if n.split(" (")[0] in a.curve_run_list]
    for name in names:
        for s in a.curve_seed_list:
            d = run_dir(a, name, s)
            if not (d / "model" / "config.json").is_file():
                continue
            val_pt = {}
            with open(d / "log.csv", newline="") as fh:
                for r in csv.DictReader(fh):
                    if r.get("val_pointing"):
                        val_pt[int(r["step"])] = float(r["val_pointing"])
            for ck in sorted((d / "curve").glob("step_*")):
                step = int(ck.name.split("_")[1])
                key = f"{d.name}/{step}"
                if key not in done:
                    sc = probe_scores(load_checkpoint(ck), small, ctx_val.probe_test, fractions=(1.0,), seed=s)
                    done[key] = mean_dice(sc["linear 100%"])
                    cache.write_text(json.dumps(done))
                rows.append({"run": name, "seed": s, "step": step, "val_pointing": val_pt.get(step, float("nan")),
                             "val_dice_linear_100": done[key]})
    with open(Path(a.work) / "curves.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["run", "seed", "step", "val_pointing", "val_dice_linear_100"])
        w.writeheader()
        w.writerows(rows)
    return rows


def flattened(rows: list, metric: str) -> dict:
    """Per run: the metric (mean over the curve seeds) at each kept step and its change over the last interval;
    "flat" when that change is under 0.02 (the noise of 60 validation phrases is larger: read the values)."""
    import numpy as np

    out = {}
    for run in dict.fromkeys(r["run"] for r in rows):
        steps = sorted({r["step"] for r in rows if r["run"] == run})
        if len(steps) < 3:
            continue
        m = [np.nanmean([r[metric] for r in rows if r["run"] == run and r["step"] == s]) for s in steps]
        last, total = m[-1] - m[-2], m[-1] - m[0]
        out[run] = {"steps": steps, "values": [round(float(v), 4) for v in m], "last_change": float(last),
                    "flat": bool(abs(last) < 0.02), "total_change": float(total)}
    return out


def _alive(pids) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            continue
    return False


def evaluate_all(a, data) -> int:
    from elvis_core.grounding.locality import patch_similarity_figure
    from elvis_core.model.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    transform = random_model(a, data, 0).transform
    ctx = Context(a, data, transform, "test")
    ctx_val = Context(a, data, transform, "val", probe_train=ctx.probe_train) if a.ablation_seed_list or \
        a.curve_seed_list else None
    results, sweep = {}, {}
    while True:  # score each model as soon as its training has finished (--wait-pids: the training processes)
        waiting = _alive(a.wait_pid_list)
        missing = []
        for s in ([] if a.skip_random else a.seed_list):
            r = cached_eval(a, f"random_s{s}", ctx, lambda s=s: random_model(a, data, s), s)
            if r is not None:
                results.setdefault("random init", {})[s] = r
        for name in a.run_names:
            for s in a.seed_list:
                d = run_dir(a, name, s)
                r = cached_eval(a, d.name, ctx, lambda d=d: load_checkpoint(d / "model"), s) \
                    if (d / "model" / "config.json").is_file() else None
                if r is not None:
                    results.setdefault(name, {})[s] = r
                else:
                    missing.append(f"{name} seed {s}")
        for name in [REFERENCE] + list(ABLATIONS):
            for s in a.ablation_seed_list:
                d = run_dir(a, name, s)
                r = cached_eval(a, d.name, ctx_val, lambda d=d: load_checkpoint(d / "model"), s) \
                    if (d / "model" / "config.json").is_file() else None
                if r is not None:
                    sweep.setdefault(name, {})[s] = r
        if not waiting:
            break
        time.sleep(60)
    tp, tf = text_prior_items(ctx)
    results["text prior (words only)"] = {0: {"pointing": tp, "follow": tf}}
    curves = learning_curves(a, ctx_val) if ctx_val is not None else []
    # the paper's Figure 1 on one held-out image
    fig_models = {"random init": random_model(a, data, a.seed_list[0])}
    for name in a.run_names:
        d = run_dir(a, name, a.seed_list[0])
        if (d / "model" / "config.json").is_file():
            fig_models[name.split(" (")[0]] = load_checkpoint(d / "model")
    gh, gw = fig_models["random init"].grid_shape()
    fig = Path(a.work) / "locality_figure.png"
    patch_similarity_figure(fig_models, ctx.loc_inputs[a.figure_image:a.figure_image + 1],
                            (int(gh * 0.45), int(gw * 0.3)), fig,
                            title=f"test image {a.figure_image}, seed {a.seed_list[0]}: cos to the outlined patch, "
                                  "top before / bottom after projection")
    return report(a, results, sweep, curves, fig, missing, t0)


def report(a, results, sweep, curves, fig, missing, t0) -> int:
    summary = bootstrap(results, COLUMNS + EXTRA, a.bootstrap)
    sweep_summary = bootstrap(sweep, COLUMNS, a.bootstrap) if sweep else {}
    flat = {m: flattened(curves, m) for m in ("val_pointing", "val_dice_linear_100")}
    wf_name = WORD_FOLLOWING
    print(f"\nbudget: {a.steps} steps x batch {a.batch_size} per objective and seed, seeds {a.seed_list}; config "
          f"{os.path.relpath(a.config, REPO)} + {MODEL_SETS}; train {a.train_studies} phantom studies (seed 101), "
          f"test {a.test_studies} (seed 202), validation {a.val_studies} (seed 31), probes {a.probe_studies} "
          f"labelled (seed 303) / {a.probe_test_studies} test (seed 305); word following: {wf_name}")
    if missing:
        print("NOT TRAINED (left out of the table): " + ", ".join(missing))
    print(f"eval wall {(time.perf_counter() - t0) / 60:.1f} min; load {os.getloadavg()[0]:.1f}\n")
    print("test set, mean over seeds and items, 95 % paired bootstrap CI:")
    print(render(summary, COLUMNS, a.markdown))
    print(f"\n{REFERENCE} minus each run (95 % CI; * = excludes 0):")
    print(render(summary, COLUMNS, a.markdown, diff=True))
    print("\nmore (Spearman locality, Dice per structure):")
    print(render(summary, EXTRA, a.markdown))
    if sweep_summary:
        print(f"\nELVIS ablations on the VALIDATION sets (seeds {a.ablation_seed_list}; the main run has target "
              "temperature 0.1 and pre-projection targets):")
        print(render(sweep_summary, COLUMNS, a.markdown))
    print("\nlearning curves (WORK/curves.csv; mean over curve seeds):")
    for m, d in flat.items():
        for run, v in d.items():
            print(f"  {m:20s} {run:32s} steps {v['steps']}: {v['values']} -> {'flat' if v['flat'] else 'NOT flat'}")
    print(f"\nfigure: {fig}")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "sweep": sweep_summary, "curves": curves,
                                            "flat": flat, "missing": missing, "args": vars(a)}, indent=1,
                                           default=str))
    return 0


class _PhraseContext:
    """What the text prior needs (phrases and lung geometry of the test set), without images."""

    def __init__(self, root: Path):
        from elvis_core.io.annotations import read_ms_cxr_csv

        self.root, self.which = root, "test"
        self.phrases = sorted(read_ms_cxr_csv(root / "ms_cxr.csv").filter_split("test").phrases,
                              key=lambda ph: ph.key)
        self.lungs = lung_geometry(root / "anatomy.csv")


def table_from_cache(a, data) -> int:
    """``--stage table``: the tables from the cached per-model scores (WORK/eval, WORK/curves.csv); no model runs."""
    import csv

    t0 = time.perf_counter()
    ev = Path(a.work) / "eval"

    def load(which, key):
        f = ev / which / f"{key}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    results, sweep, missing = {}, {}, []
    for s in a.seed_list:
        r = load("test", f"random_s{s}")
        if r is not None:
            results.setdefault("random init", {})[s] = r
    for name in a.run_names:
        for s in a.seed_list:
            r = load("test", run_dir(a, name, s).name)
            if r is None:
                missing.append(f"{name} seed {s}")
            else:
                results.setdefault(name, {})[s] = r
    for name in [REFERENCE] + list(ABLATIONS):
        for s in a.ablation_seed_list:
            r = load("val", run_dir(a, name, s).name)
            if r is not None:
                sweep.setdefault(name, {})[s] = r
    tp, tf = text_prior_items(_PhraseContext(data["test"]))
    results["text prior (words only)"] = {0: {"pointing": tp, "follow": tf}}
    curves = []
    cf = Path(a.work) / "curves.csv"
    if not cf.is_file():  # no probe-Dice curves were scored: the trainer's validation pointing alone
        for name in list(a.run_names) + list(ABLATIONS):
            for s in a.seed_list:
                lf = run_dir(a, name, s) / "log.csv"
                if lf.is_file():
                    with open(lf, newline="") as fh:
                        for r in csv.DictReader(fh):
                            if r.get("val_pointing"):
                                curves.append({"run": name, "seed": s, "step": int(r["step"]),
                                               "val_pointing": float(r["val_pointing"]),
                                               "val_dice_linear_100": float("nan")})
    else:
        with open(cf, newline="") as fh:
            for r in csv.DictReader(fh):
                curves.append({"run": r["run"], "seed": int(r["seed"]), "step": int(r["step"]),
                               "val_pointing": float(r["val_pointing"]),
                               "val_dice_linear_100": float(r["val_dice_linear_100"])})
    return report(a, results, sweep, curves, Path(a.work) / "locality_figure.png", missing, t0)


def main(argv=None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(max(1, a.threads))
    Path(a.work).mkdir(parents=True, exist_ok=True)
    data = phantom_sets(a)
    if a.stage in ("train", "all"):
        train_all(a, data)
    if a.stage == "table":
        return table_from_cache(a, data)
    if a.stage in ("eval", "all"):
        return evaluate_all(a, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
