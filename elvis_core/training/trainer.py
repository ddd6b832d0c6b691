"""The training loop behind ``elvis train``: one CPU, one GPU, or DDP under ``torchrun`` (single or multi-node).

- data: :mod:`elvis_core.training.pairs` (image-report pairs, validation split), :mod:`elvis_core.training.data`
  (datasets: RAM cache, prepared cache, augmentation without flips), :mod:`elvis_core.training.batching`;
- model: ``build_model`` (WordPiece vocabulary trained on the training reports) or the resumed checkpoint;
- objectives: :class:`~elvis_core.training.objectives.CombinedObjective` (weights from the config);
- AdamW + linear warm-up + cosine decay, gradient accumulation (``no_sync`` between micro-steps), gradient clipping;
- CUDA: bf16 autocast, channels_last, optional ``torch.compile``;
- DDP: ``env://`` initialisation (``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR), a
  DistributedSampler (``drop_last``), global InfoNCE negatives all-gathered across ranks; rank 0 writes everything;
- outputs in ``OUT``: ``model/`` (the final checkpoint), ``last/`` (resume state: a model checkpoint +
  ``trainer_state.safetensors`` + ``trainer_state.json``, never pickle), ``log.csv`` (losses, lr, pairs/s,
  validation metrics), TensorBoard events when the ``tensorboard`` package is importable, ``config.resolved.json``.

This module holds :func:`train` (the loop) and :class:`TrainResult`; its parts live beside it and are re-exported
here: :mod:`~elvis_core.training.train_module` (TrainModule, optimizer groups, schedule, batch to device),
:mod:`~elvis_core.training.train_state` (resume state), :mod:`~elvis_core.training.train_log` (log.csv /
TensorBoard, grounding validation) and :mod:`~elvis_core.training.distributed` (process group, barrier).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from elvis_core.errors import ConfigError, ElvisError
from elvis_core.model.checkpoint import load_checkpoint, save_checkpoint
from elvis_core.model.vocab import merge_known_words, tokenizer_whole_words
from elvis_core.training.config import INIT_FROM_OVERRIDES, model_config_from
# the parts of a run, re-exported: tests and benchmarks import them from here, and train looks them up in this
# module's namespace (benchmarks/elvis_paper.py replaces trainer.grounding_validation)
from elvis_core.training.distributed import _barrier, _init_distributed, _tokenizer_from_rank0  # noqa: F401
from elvis_core.training.objectives import CombinedObjective
from elvis_core.training.train_log import LOG_COLUMNS, _Logger, grounding_validation  # noqa: F401
from elvis_core.training.train_module import (  # noqa: F401
    TrainModule, _param_groups, adamw_options, lr_lambda, to_device)
from elvis_core.training.train_state import (  # noqa: F401
    STATE_JSON, STATE_TENSORS, load_trainer_state, save_trainer_state)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: str
    model_dir: str
    steps: int
    epochs_done: int
    first_loss: float
    last_loss: float
    losses: List[float] = field(default_factory=list)
    pairs_per_s: float = 0.0
    seconds: float = 0.0
    n_train_pairs: int = 0
    n_val_pairs: int = 0
    unreadable_images: int = 0
    resumed_from_step: int = 0
    val_metrics: Dict[str, float] = field(default_factory=dict)
    data_lines: List[str] = field(default_factory=list)


# -- main entry ------------------------------------------------------------------------------------------------------

def _hash_pairs(pairs) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update((p if isinstance(p, str) else os.path.basename(p.image_path)).encode())
    return h.hexdigest()[:12]


def train(cfg: Dict[str, Any], out_dir: Optional[str] = None, progress: Optional[bool] = None) -> TrainResult:
    """Run a training described by a validated config (:func:`elvis_core.training.config.load_config`)."""
    from elvis_core.model.elvis import build_model
    from elvis_core.training.batching import Collate, ThreadPrefetcher
    from elvis_core.training.data import Augment, PairDataset, PreparedDataset, prepared_texts
    from elvis_core.training.pairs import (PairStats, excluded_patients_from_csv, find_pairs, read_mimic_views,
                                           split_val, split_val_ids)

    t_start = time.perf_counter()
    tc, dc = cfg["train"], cfg["data"]
    rank, world, local_rank, device = _init_distributed(tc["device"])
    is0 = rank == 0
    show = tc["progress"] if progress is None else progress
    if tc["threads"]:
        torch.set_num_threads(tc["threads"])
    out = Path(out_dir or cfg["output"]["dir"])
    if is0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.resolved.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    torch.manual_seed(tc["seed"])
    np.random.seed(tc["seed"])

    model_cfg = model_config_from(cfg)  # validate the model part before scanning data

    # ---- data
    prepared = None
    if dc["cache"].startswith("prepared:"):
        from elvis_core.training.prepared_cache import PreparedCache

        prepared = PreparedCache.open(dc["cache"][len("prepared:"):])
        if not dc["root"]:
            dc["root"] = prepared.root  # for validation images (data.root is only informative otherwise)
    elif not dc["root"]:
        raise ConfigError("config key 'data.root' is empty: give the MIMIC-CXR-layout or phantom folder to train on")
    excluded = set()
    if dc["exclude_ms_cxr"]:
        excluded = excluded_patients_from_csv(dc["exclude_ms_cxr"], dc["exclude_splits"])
    if prepared is not None:
        from elvis_core.model.transforms import transform_from_config

        prepared.check_transform(transform_from_config(model_cfg["preprocessing"]))
        ids = prepared.select(dc["views"], excluded, dc["max_pairs"])
        if len(ids) == 0:
            raise ConfigError("no entries of the prepared cache are left after the view / MS-CXR exclusion filters",
                              prepared.path)
        train_ids, val_ids = split_val_ids(ids, prepared.group_keys(ids), dc["val_fraction"], tc["seed"])
        stats = PairStats(pairs=len(ids), images_seen=len(prepared), unreadable_images=len(prepared.unreadable))
        stats_lines = [f"{len(ids)} image-report pairs from the prepared cache {prepared.path} ({len(prepared)} "
                       f"entries; {len(prepared.unreadable)} unreadable images left out by 'elvis prepare')"]
        train_pairs, val_pairs = [], []
        train_texts = prepared_texts(prepared, train_ids)
        n_val = len(val_ids)
    else:
        view_of = read_mimic_views(dc["mimic_metadata"]) if dc["mimic_metadata"] else None
        pairs, stats = find_pairs(dc["root"], views=dc["views"], exclude_patients=excluded,
                                  max_pairs=dc["max_pairs"], view_of=view_of)
        if not pairs:
            raise ConfigError("no image-report pairs found (need DICOM/JPG images with a report holding FINDINGS or "
                              "IMPRESSION, PA/AP views); " + stats.lines()[1], dc["root"])
        train_pairs, val_pairs = split_val(pairs, dc["val_fraction"], tc["seed"])
        train_texts = [p.text for p in train_pairs]
        stats_lines = None
        n_val = len(val_pairs)

    # ---- model (resume or new)
    last = out / "last"
    meta: Dict[str, Any] = {}
    resume = tc["resume"] and (last / STATE_JSON).is_file()
    if resume:
        model = load_checkpoint(last).train()
        if model.config["image"] != model_cfg["image"] or model.config["projection"] != model_cfg["projection"]:
            raise ConfigError("the run in this output folder used another architecture; use a new --out folder "
                              "or --set train.resume=false", out)
    elif cfg["model"].get("init_from"):
        model = load_checkpoint(cfg["model"]["init_from"])
        if {k: model.config["image"].get(k) for k in INIT_FROM_OVERRIDES} != \
                {k: model_cfg["image"].get(k) for k in INIT_FROM_OVERRIDES}:  # same weights, another grid/anchor
            again = build_model(model_cfg, tokenizer=model.tokenizer, init_text_from_path=False)
            again.load_state_dict(model.state_dict())
            again.known_words = getattr(model, "known_words", None)
            model = again
        model = model.train()
        if is0:
            log.info("model initialised from checkpoint %s", cfg["model"]["init_from"])
    else:
        tokenizer = None
        if model_cfg["text"]["source"] == "config":
            if is0:
                from elvis_core.model.vocab import train_wordpiece

                tk = model_cfg["text"]["tokenizer"]
                tokenizer = train_wordpiece(train_texts, vocab_size=tk["vocab_size"],
                                            lowercase=tk["lowercase"], min_frequency=tk["min_frequency"],
                                            model_max_length=model_cfg["text"]["max_length"])
            tokenizer = _tokenizer_from_rank0(tokenizer, world, rank)
        torch.manual_seed(tc["seed"])
        model = build_model(model_cfg, tokenizer=tokenizer)
    prior_known = getattr(model, "known_words", None) if (resume or cfg["model"].get("init_from")) else None
    if prior_known is None and model_cfg["text"]["source"] != "config":  # a pretrained text encoder's own words
        prior_known = {"source": "pretrained tokenizer whole words", "words": tokenizer_whole_words(model.tokenizer)}
    if not (resume and prior_known):  # a resumed run's checkpoint already holds this run's words
        model.known_words = merge_known_words(prior_known, train_texts, f"{len(train_texts)} training reports")
    model.to(device).train()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast (objectives' fp32 parts)
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed image size: let cuDNN pick the fastest convolutions
    if device.type == "cuda" and tc["channels_last"]:
        model.image_encoder.to(memory_format=torch.channels_last)

    augment = None
    if cfg["augment"]["enabled"]:
        a = cfg["augment"]
        augment = Augment(scale=tuple(a["scale"]), rotate_deg=a["rotate_deg"], translate=a["translate"],
                          brightness=a["brightness"], contrast=a["contrast"])
    anatomy = None
    if dc["anatomy"]:
        from elvis_core.training.anatomy import read_anatomy

        anatomy = read_anatomy(dc["anatomy"])
    elif cfg["objectives"]["weights"].get("anatomy", 0):
        raise ConfigError("the anatomy objective needs anatomy boxes: set data.anatomy (a phantom anatomy.csv or a "
                          "Chest ImaGenome scene-graph folder)")
    if prepared is not None:
        if anatomy is not None:
            raise ConfigError("data.anatomy is not available with a prepared cache yet; train from the folder")
        prepared.check_transform(model.transform)  # refuse a cache made with another transform
        ds = PreparedDataset(prepared, train_ids, augment=augment, seed=tc["seed"])
        ds.pretokenize(model.tokenizer, model.max_text_length)
        ds.pairs = [os.path.basename(prepared.paths[i]) for i in train_ids]  # provenance hash only
        use_cache = False
        n_unreadable = len(prepared.unreadable)
    else:
        ds = PairDataset(train_pairs, model.transform, augment=augment, seed=tc["seed"], anatomy=anatomy)
        use_cache = dc["cache"] == "ram" or (dc["cache"] == "auto" and len(train_pairs) <= dc["cache_max_images"])
        if use_cache:
            if is0:
                log.info("decoding %d training images into the RAM cache", len(ds))
            ds.build_cache()
        n_unreadable = ds.n_unreadable
    stats.unreadable_images = n_unreadable
    tf = model.transform
    global_batch = tc["batch_size"] * world
    if len(ds) < global_batch:
        raise ConfigError(f"only {len(ds)} readable training pairs, fewer than one batch (train.batch_size "
                          f"{tc['batch_size']} x {world} process(es)); lower train.batch_size", dc["root"])
    sampler = torch.utils.data.distributed.DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True,
                                                              seed=tc["seed"], drop_last=True)
    oc = cfg["objectives"]
    dims = {"image_channels": int(model.image_channels), "embed_dim": int(model.embed_dim)}
    objective = CombinedObjective(oc["weights"], {k: oc[k] for k in oc if k not in ("weights", "sentences")},
                                  sentences=oc["sentences"], dims=dims)
    collate = Collate(model, pad_to_max_length=tc["static_shapes"],
                      separate_sentences=objective.needs_separate_sentences)
    collate.negations = "negation" in objective.terms
    collate.mirrors = "mirror" in objective.terms
    loader = torch.utils.data.DataLoader(ds, batch_size=tc["batch_size"], sampler=sampler, drop_last=True,
                                         num_workers=tc["num_workers"], collate_fn=collate,
                                         pin_memory=device.type == "cuda",
                                         persistent_workers=tc["num_workers"] > 0)
    val_loader = None
    if n_val:
        if prepared is not None:
            vds = PreparedDataset(prepared, val_ids, augment=None)
            vds.pretokenize(model.tokenizer, model.max_text_length)
        else:
            vds = PairDataset(val_pairs, model.transform, augment=None, anatomy=anatomy)
            if use_cache:
                vds.build_cache()
        vs = torch.utils.data.distributed.DistributedSampler(vds, num_replicas=world, rank=rank, shuffle=False,
                                                             drop_last=False)
        val_loader = torch.utils.data.DataLoader(vds, batch_size=tc["batch_size"], sampler=vs, collate_fn=collate)

    # ---- objectives (built above, with the data), optimizer, schedule
    module = TrainModule(model, objective).to(device)
    text_lr = tc["text_lr"] if model_cfg["text"]["source"] == "pretrained" else 0.0
    optimizer = torch.optim.AdamW(_param_groups(module, tc["lr"], text_lr, tc["weight_decay"]),
                                  betas=(0.9, 0.98), eps=1e-6, **adamw_options(device))
    steps_per_epoch = max(1, len(loader) // tc["grad_accum"])
    total_steps = tc["max_steps"] or steps_per_epoch * tc["epochs"]
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, tc["warmup_steps"], total_steps, tc["min_lr_ratio"]))
    step, start_epoch, skip_batches = 0, 0, 0
    if resume:
        meta = load_trainer_state(last, module, optimizer, scheduler)
        step, start_epoch, skip_batches = int(meta["step"]), int(meta["epoch"]), int(meta["batch_in_epoch"])
        if is0:
            log.info("resuming from %s at step %d (epoch %d)", last, step, start_epoch)
    resumed_from = step
    if tc["compile"]:
        mode = None if tc["compile_mode"] == "default" else tc["compile_mode"]
        model.image_encoder.compile(mode=mode)
        model.text_encoder.compile(mode=mode)
    ddp = module
    if world > 1:
        w = objective.weights
        # a head no enabled objective reaches (e.g. separate global heads with global InfoNCE off) has no gradient
        unused = not model_cfg["projection"]["shared_local_global"] and (
            "global" not in w or not ({"local", "region_sentence", "intra", "elvis", "anatomy"} & set(w)))
        ddp = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=unused, gradient_as_bucket_view=True)

    provenance = {
        "objectives": {"weights": oc["weights"], **{k: oc[k] for k in oc if k != "weights"}},
        "data": {"root": os.path.abspath(dc["root"]), "n_train_pairs": len(ds), "n_val_pairs": n_val,
                 "pairs_hash": _hash_pairs(ds.pairs), "excluded_ms_cxr": dc["exclude_ms_cxr"] or None,
                 "exclude_splits": dc["exclude_splits"], "views": dc["views"],
                 "stats": stats_lines or stats.lines(), "unreadable_images": n_unreadable}
                | ({"prepared_cache": prepared.path, "prepared_cache_hash": prepared.cache_hash}
                   if prepared is not None else {}),
        "training": {k: tc[k] for k in ("batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps", "seed",
                                        "bf16", "compile")} | {"world_size": world, "device": device.type,
                                                               "init_from": cfg["model"].get("init_from") or None,
                                                               "total_steps": total_steps,
                                                               "augment": cfg["augment"]},
    }
    logger = _Logger(out, is0)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and tc["bf16"]
           else contextlib.nullcontext())
    bar = None
    if is0 and show:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="elvis train", unit="step", dynamic_ncols=True)
    losses: List[float] = []
    first_loss = float("nan")
    val_metrics: Dict[str, float] = {}
    dropped = 0
    t_window, pairs_window = time.perf_counter(), 0
    pairs_total, t_loop = 0, time.perf_counter()
    epoch = start_epoch
    done = step >= total_steps

    def checkpoint(epoch_now: int, batch_in_epoch: int) -> None:
        if is0:
            save_trainer_state(out, module, optimizer, scheduler,
                               {"step": step, "epoch": epoch_now, "batch_in_epoch": batch_in_epoch,
                                "total_steps": total_steps}, provenance)
        _barrier(world)

    def validate() -> Dict[str, float]:
        res: Dict[str, float] = {}
        if val_loader is not None:
            module.eval()
            tot, n = 0.0, 0
            with torch.no_grad(), amp:
                for vb in val_loader:
                    if vb is None:
                        continue
                    vb = to_device(vb, device, tf, channels_last=False)
                    loss_v, _ = module(vb)
                    tot += float(loss_v) * vb["input_ids"].shape[0]
                    n += vb["input_ids"].shape[0]
            module.train()
            res["val_loss"] = tot / max(1, n)
        if is0 and cfg["validation"]["annotations"]:
            res.update(grounding_validation(model, cfg))
        return res

    while not done and epoch < n_epochs:
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        micro = 0
        parts_acc: Dict[str, float] = {}
        loss_acc = 0.0
        # prepared cache in-process: batches come from a background thread, a few ahead of the step
        batches = ThreadPrefetcher(loader) if (prepared is not None and tc["num_workers"] == 0) else loader
        for bi, batch in enumerate(batches):
            if bi < skip_batches:
                continue
            if batch is None:
                continue
            dropped += batch["n_dropped"]
            batch = to_device(batch, device, tf, channels_last=device.type == "cuda" and tc["channels_last"])
            micro += 1
            sync = micro % tc["grad_accum"] == 0
            ctx = ddp.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                with amp:
                    loss, parts = ddp(batch)
                (loss / tc["grad_accum"]).backward()
            loss_acc += float(loss.detach()) / tc["grad_accum"]
            for k, v in parts.items():
                parts_acc[k] = parts_acc.get(k, 0.0) + v / tc["grad_accum"]
            pairs_window += batch["input_ids"].shape[0] * world
            if not sync:
                continue
            if tc["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(module.parameters(), tc["grad_clip"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if not math.isfinite(loss_acc):
                raise ElvisError(f"training diverged at step {step} (loss {loss_acc}); lower train.lr")
            if math.isnan(first_loss):
                first_loss = loss_acc
            losses.append(loss_acc)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_acc:.3f}")
            if step % tc["log_every"] == 0 or step == total_steps:
                now = time.perf_counter()
                pps = pairs_window / max(now - t_window, 1e-9)
                pairs_total += pairs_window
                t_window, pairs_window = now, 0
                logger.row(step=step, epoch=epoch, lr=float(scheduler.get_last_lr()[0]), loss=loss_acc,
                           pairs_per_s=pps, seconds=now - t_start, **parts_acc)
            loss_acc, parts_acc = 0.0, {}
            if cfg["validation"]["every"] and step % cfg["validation"]["every"] == 0:
                val_metrics = validate()
                logger.row(step=step, epoch=epoch, **val_metrics)
            if step % tc["checkpoint_every"] == 0 and step < total_steps:
                checkpoint(epoch, bi + 1)
            if step >= total_steps:
                done = True
                break
        if batches is not loader:
            batches.close()
        skip_batches = 0
        epoch += 1
        if not cfg["validation"]["every"] and (val_loader is not None or cfg["validation"]["annotations"]):
            val_metrics = validate()
            logger.row(step=step, epoch=epoch - 1, **val_metrics)
        if not done:
            checkpoint(epoch, 0)
    if bar is not None:
        bar.close()
    pairs_total += pairs_window
    loop_s = time.perf_counter() - t_loop
    provenance["training"].update({"steps_done": step, "epochs_done": epoch, "final_loss": losses[-1] if losses else
                                   None, "seconds": round(time.perf_counter() - t_start, 1),
                                   "resumed_from_step": resumed_from, "val_metrics": val_metrics,
                                   "dropped_unreadable_in_batches": dropped})
    model_dir = out / "model"
    if is0:
        save_trainer_state(out, module, optimizer, scheduler,
                           {"step": step, "epoch": epoch, "batch_in_epoch": 0, "total_steps": total_steps},
                           provenance)
        save_checkpoint(model, model_dir, provenance=provenance)
    _barrier(world)
    logger.close()
    result = TrainResult(out_dir=str(out), model_dir=str(model_dir), steps=step, epochs_done=epoch,
                         first_loss=first_loss, last_loss=losses[-1] if losses else float("nan"), losses=losses,
                         pairs_per_s=pairs_total / max(loop_s, 1e-9), seconds=time.perf_counter() - t_start,
                         n_train_pairs=len(ds), n_val_pairs=n_val,
                         unreadable_images=n_unreadable + dropped, resumed_from_step=resumed_from,
                         val_metrics=val_metrics, data_lines=stats_lines or stats.lines())
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()
    return result
