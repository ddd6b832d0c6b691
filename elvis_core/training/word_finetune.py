"""Fine-tune a checkpoint so that its maps follow the words (:class:`~elvis_core.training.objectives.words.WordNegatives`)
on a phantom set written with ``elvis phantom --twins`` (films, their finding-free twins and the box CSV).

    python -m elvis_core.training.word_finetune resources/configs/demo_words.toml [--set key=value ...]

The config (TOML) names ``init_from`` (the checkpoint to start from), ``data`` (a phantom folder with ``ms_cxr.csv``
and ``twins/``; only its ``split`` rows are used), the loss weights and the schedule. A checkpoint is written every
``checkpoint_every`` steps to ``OUT/step_NNNNN`` (safetensors + JSON, like every ELVIS checkpoint) and the loss parts
to ``OUT/log.csv``; choose the step on validation data (``elvis eval --twins``), never on the test set.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from elvis_core.errors import ConfigError, ElvisError

DEFAULTS: Dict[str, Any] = {
    "init_from": "resources/demo_model", "data": "", "split": "train", "out": "runs/words", "max_images": 0,
    "steps": 600, "batch_size": 8, "lr": 1e-4, "weight_decay": 0.01, "warmup_steps": 20, "seed": 0,
    "threads": 2, "checkpoint_every": 50, "log_every": 10, "freeze_batchnorm": True,
    "loss": {"temperature": 0.1, "margin": 0.1, "rank_temperature": 0.05, "box_weight": 1.0, "rank_weight": 1.0,
             "out_of_box_weight": 0.5, "negation_weight": 0.0},
}


def load_config(path: str, sets=()) -> Dict[str, Any]:
    import copy

    from elvis_core.training.config import parse_set

    cfg = copy.deepcopy(DEFAULTS)
    try:
        with open(path, "rb") as fh:
            user = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config file not found", path) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"not valid TOML ({err})", path) from None
    for item in sets:
        keys, value = parse_set(item)
        d = user
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    for k, v in user.items():
        if k not in cfg:
            raise ConfigError(f"unknown key {k!r}", path)
        if isinstance(cfg[k], dict):
            bad = sorted(set(v) - set(cfg[k]))
            if bad:
                raise ConfigError(f"unknown key(s) {', '.join(k + '.' + b for b in bad)}", path)
            cfg[k].update(v)
        else:
            cfg[k] = v
    if not cfg["data"]:
        raise ConfigError("set data = a phantom folder written with --twins", path)
    return cfg


def grid_geometry(transform, image_shape, grid_shape, anchor) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seen [gh, gw] bool, cell-centre x [gh, gw], y [gh, gw]) in image pixels."""
    g2i = transform.grid_to_image(tuple(image_shape), tuple(grid_shape), anchor)
    gh, gw = grid_shape
    jj, ii = np.meshgrid(np.arange(gw) + 0.5, np.arange(gh) + 0.5)
    xs = g2i[0, 0] * jj + g2i[0, 2]
    ys = g2i[1, 1] * ii + g2i[1, 2]
    rows, cols = image_shape
    return (xs >= 0) & (xs < cols) & (ys >= 0) & (ys < rows), xs, ys


def box_cells(boxes, xs, ys) -> np.ndarray:
    """Cells whose centre lies in any box; a box too small for any centre gets its nearest cell."""
    m = np.zeros(xs.shape, bool)
    for x, y, w, h in boxes:
        inside = (xs >= x) & (xs < x + w) & (ys >= y) & (ys < y + h)
        if not inside.any():
            d = (xs - (x + w / 2)) ** 2 + (ys - (y + h / 2)) ** 2
            inside = d == d.min()
        m |= inside
    return m


def load_items(root: str, split: str, model, max_images: int = 0, log=print) -> List[Dict[str, Any]]:
    """One item per film: model inputs of the film and its twin (float16), seen cells, phrases with box cells."""
    from elvis_core.grounding.evaluate import read_any_image

    csv_path = os.path.join(root, "ms_cxr.csv")
    if not os.path.isfile(csv_path):
        raise ElvisError("no ms_cxr.csv in the phantom folder", root)
    by_path: Dict[str, Dict[str, List]] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if split and r["split"] != split:
                continue
            box = tuple(float(r[k]) for k in ("x", "y", "w", "h"))
            by_path.setdefault(r["path"], {}).setdefault(r["label_text"], []).append(box)
    paths = sorted(by_path)
    if max_images:
        paths = paths[:max_images]
    t = model.transform
    grid = model.grid_shape()
    items, skipped = [], 0
    for k, rel in enumerate(paths):
        twin = os.path.join(root, "twins", rel)
        try:
            rad, rad_t = read_any_image(os.path.join(root, rel)), read_any_image(twin)
        except ElvisError as err:
            skipped += 1
            log(f"skipped {rel}: {err.problem}")
            continue
        seen, xs, ys = grid_geometry(t, rad.shape, grid, model.grid_anchor)
        phrases = [(text, box_cells(b, xs, ys)) for text, b in sorted(by_path[rel].items())]
        items.append({"x": t.apply(rad).astype(np.float16), "twin": t.apply(rad_t).astype(np.float16),
                      "seen": seen, "phrases": phrases})
        if (k + 1) % 200 == 0:
            log(f"loaded {k + 1}/{len(paths)} films")
    if not items:
        raise ElvisError(f"no readable films with phrases in split {split!r}", root)
    log(f"{len(items)} films, {sum(len(i['phrases']) for i in items)} phrases ({skipped} skipped)")
    return items


def make_batch(items, idx, model):
    from elvis_core.training.objectives.words import negatives_for

    x = torch.from_numpy(np.stack([items[i]["x"] for i in idx] + [items[i]["twin"] for i in idx]).astype(np.float32))
    seen = torch.from_numpy(np.stack([items[i]["seen"] for i in idx]))
    from elvis_core.grounding.sides import negated

    texts, owner, boxes, negs, neg_of, is_neg = [], [], [], [], [], []
    for b, i in enumerate(idx):
        for text, cells in items[i]["phrases"]:
            k = len(texts)
            texts.append(text)
            owner.append(b)
            boxes.append(cells)
            for n in negatives_for(text):
                negs.append(n)
                neg_of.append(k)
                is_neg.append(n == negated(text))
    return {"pixels": x[:, None], "seen": seen, "texts": texts, "owner": torch.tensor(owner),
            "box": torch.from_numpy(np.stack(boxes)), "negs": negs, "neg_of": torch.tensor(neg_of, dtype=torch.long),
            "neg_is_negation": torch.tensor(is_neg, dtype=torch.bool)}


def train(cfg: Dict[str, Any], log=print) -> Path:
    from elvis_core.model.checkpoint import load_checkpoint, save_checkpoint
    from elvis_core.training.objectives.words import WordNegatives

    torch.manual_seed(int(cfg["seed"]))
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    model = load_checkpoint(cfg["init_from"])
    model.train()
    if cfg["freeze_batchnorm"]:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
                for p in m.parameters():
                    p.requires_grad_(False)
    items = load_items(cfg["data"], cfg["split"], model, int(cfg["max_images"]), log)
    loss_fn = WordNegatives(**cfg["loss"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    steps, warm = int(cfg["steps"]), int(cfg["warmup_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warm)) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))))
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(cfg["seed"]))
    order = rng.permutation(len(items))
    pos = 0
    bs = int(cfg["batch_size"])
    with open(out / "log.csv", "a", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["step", "loss", "box", "rank", "out_of_box", "negation", "present_peak", "absent_peak",
                     "seconds"])
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            if pos + bs > len(order):
                order, pos = rng.permutation(len(items)), 0
            idx = order[pos:pos + bs]
            pos += bs
            b = make_batch(items, idx, model)
            img = model.encode_image(b["pixels"])
            n = len(idx)
            tok = model.tokenize(b["texts"] + b["negs"])
            emb = model.encode_text(tok["input_ids"], tok["attention_mask"]).global_emb
            p = len(b["texts"])
            loss, parts = loss_fn(img.patch_emb[:n], img.patch_emb[n:], b["seen"], emb[:p], b["owner"], b["box"],
                                  emb[p:], b["neg_of"], b["neg_is_negation"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            wr.writerow([step, f"{float(loss.detach()):.5f}"] + [f"{parts[k]:.5f}" for k in
                                                        ("box", "rank", "out_of_box", "negation", "present_peak",
                                                         "absent_peak")]
                        + [f"{time.perf_counter() - t0:.1f}"])
            fh.flush()
            if step % int(cfg["log_every"]) == 0:
                log(f"step {step}/{steps} loss {float(loss.detach()):.4f} " + " ".join(f"{k} {v:.3f}" for k, v in parts.items())
                    + f" ({time.perf_counter() - t0:.0f} s)")
            if step % int(cfg["checkpoint_every"]) == 0 or step == steps:
                model.eval()
                save_checkpoint(model, out / f"step_{step:05d}", provenance={
                    "recipe": "elvis_core.training.word_finetune", "config": cfg, "step": step})
                model.train()
                if cfg["freeze_batchnorm"]:
                    for m in model.modules():
                        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                            m.eval()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        out = train(cfg, log=lambda s: print(s, flush=True))
    except ElvisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
