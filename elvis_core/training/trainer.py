"""The training loop behind ``elvis train``: one CPU, one GPU, or DDP under ``torchrun`` (single or multi-node).

- data: :mod:`elvis_core.training.data` (pairs, RAM cache, augmentation without flips);
- model: ``build_model`` (WordPiece vocabulary trained on the training reports) or the resumed checkpoint;
- objectives: :class:`~elvis_core.training.objectives.CombinedObjective` (weights from the config);
- AdamW + linear warm-up + cosine decay, gradient accumulation (``no_sync`` between micro-steps), gradient clipping;
- CUDA: bf16 autocast, channels_last, optional ``torch.compile``;
- DDP: ``env://`` initialisation (``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR), a
  DistributedSampler (``drop_last``), global InfoNCE negatives all-gathered across ranks; rank 0 writes everything;
- outputs in ``OUT``: ``model/`` (the final checkpoint), ``last/`` (resume state: a model checkpoint +
  ``trainer_state.safetensors`` + ``trainer_state.json``, never pickle), ``log.csv`` (losses, lr, pairs/s,
  validation metrics), TensorBoard events when the ``tensorboard`` package is importable, ``config.resolved.json``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from elvis_core.errors import CheckpointError, ConfigError, ElvisError
from elvis_core.model.checkpoint import load_checkpoint, save_checkpoint
from elvis_core.model.vocab import merge_known_words, tokenizer_whole_words
from elvis_core.training.config import INIT_FROM_OVERRIDES, model_config_from
from elvis_core.training.objectives import CombinedObjective

log = logging.getLogger(__name__)

LOG_COLUMNS = ["step", "epoch", "lr", "loss", "global", "local", "region_sentence", "intra", "pairs_per_s",
               "seconds", "val_loss", "val_cnr", "val_miou", "val_pointing", "elvis", "anatomy", "negation",
               "mirror"]
STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"


class TrainModule(nn.Module):
    """Model + objectives in one module (what DDP wraps, so the learnable temperature is averaged too)."""

    def __init__(self, model, objective: CombinedObjective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Dict[str, torch.Tensor]):
        img = self.model.encode_image(batch["pixel_values"])
        txt = self.model.encode_text(batch["input_ids"], batch["attention_mask"])
        sentences = None
        if "sent_input_ids" in batch:  # each report sentence encoded alone (objectives.sentences = "separate")
            from elvis_core.training.objectives import Sentences

            st = self.model.encode_text(batch["sent_input_ids"], batch["sent_attention_mask"])
            if self.model.config["text"]["pooling"] == "mean":
                m = batch["sent_attention_mask"].unsqueeze(-1).to(st.token_feats.dtype)
                pooled = (st.token_feats * m).sum(1) / m.sum(1).clamp_min(1.0)
            else:
                pooled = st.token_feats[:, 0]
            src = batch.get("sent_neg_src")
            if src is None:
                src = torch.full_like(batch["sent_owner"], -1)
            own = src == -1  # the report's own sentences (-2: mirrored copies, >= 0: negated copies)
            sentences = Sentences.pack(st.global_emb[own], pooled[own], batch["sent_owner"][own],
                                       batch["input_ids"].shape[0])
            neg = src >= 0
            if bool(neg.any()):
                sentences.negations = (st.global_emb[src[neg]], st.global_emb[neg], batch["sent_owner"][neg])
            elif "negation" in self.objective.terms:
                sentences.negations = (st.global_emb[:0], st.global_emb[:0], batch["sent_owner"][:0])
        anatomy = {k: batch[k] for k in ("anatomy_masks", "anatomy_mentions") if k in batch} or None
        if "mirror" in self.objective.terms:
            from elvis_core.grounding.engine import mirror_model_input

            if sentences is None or "sent_mirror_src" not in batch:
                raise ValueError("the mirror objective needs the mirrored report sentences (Collate.mirrors)")
            px = batch["pixel_values"]
            img_m = self.model.encode_image(mirror_model_input(px, self.model.output_stride, self.model.transform))
            msrc = batch["sent_mirror_src"]
            mir = msrc >= 0
            sentences.mirrors = (img_m.patch_emb.flip(2), st.global_emb[msrc[mir]], st.global_emb[mir],
                                 batch["sent_owner"][mir])
        return self.objective(img, txt, batch["words"], batch["sentence_ids"], sentences=sentences, anatomy=anatomy)


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


# -- distributed -----------------------------------------------------------------------------------------------------

def _init_distributed(device_opt: str):
    """(rank, world, local_rank, device). Initialises the process group under torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_opt == "auto":
        dev = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    elif device_opt == "cuda" and world > 1:
        dev = torch.device(f"cuda:{local_rank}")
    else:
        try:
            dev = torch.device(device_opt)
        except RuntimeError as err:
            raise ConfigError(f"config key 'train.device': {err}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("config key 'train.device' asks for CUDA but no CUDA device is available")
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return rank, world, local_rank, dev


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# -- schedule / optimizer ------------------------------------------------------------------------------------------

def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up from ~0 to 1 over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def _param_groups(module: TrainModule, lr: float, text_lr: float, wd: float):
    groups: Dict[tuple, List[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        is_text = name.startswith("model.text_encoder.")
        no_decay = p.ndim < 2 or name.endswith(".bias") or "LayerNorm" in name or "log_scale" in name
        key = (text_lr if (is_text and text_lr > 0) else lr, 0.0 if no_decay else wd)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": k[0], "weight_decay": k[1]} for k, ps in sorted(groups.items(), key=lambda kv: kv[0])]


def adamw_options(device: torch.device) -> Dict[str, Any]:
    """Fused AdamW (one kernel for all parameters) on CUDA; the default (foreach) implementation elsewhere."""
    return {"fused": True} if torch.device(device).type == "cuda" else {}


def to_device(batch: Dict[str, Any], device: torch.device, transform, channels_last: bool) -> Dict[str, Any]:
    """Move a collated batch to ``device`` (non-blocking: the DataLoader pins it on CUDA). A prepared-cache batch
    arrives as uint8 with per-item augmentation parameters; it becomes the standardised float model input there, so
    the augmentation runs on the GPU when there is one (:func:`~elvis_core.training.data.batch_model_input`)."""
    from elvis_core.training.data import batch_model_input

    out = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if out["pixel_values"].dtype == torch.uint8:
        out["pixel_values"] = batch_model_input(out["pixel_values"], out.pop("augment", None), transform.mean,
                                                transform.std)
    out.pop("augment", None)
    if channels_last:
        out["pixel_values"] = out["pixel_values"].contiguous(memory_format=torch.channels_last)
    return out


# -- resume state (safetensors + JSON, never pickle) ----------------------------------------------------------------

def save_trainer_state(out: Path, module: TrainModule, optimizer, scheduler, meta: Dict[str, Any],
                       provenance: Dict[str, Any]) -> None:
    """Write ``out/last``: model checkpoint + objective params + optimizer/scheduler state + progress (atomic swap)."""
    from safetensors.torch import save_file

    tmp = out / "last.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_checkpoint(module.model, tmp, provenance=provenance)
    tensors: Dict[str, torch.Tensor] = {}
    for k, v in module.objective.state_dict().items():
        tensors[f"objective.{k}"] = v.detach().cpu().contiguous().clone()
    osd = optimizer.state_dict()
    state_json: Dict[str, Dict[str, Any]] = {}
    for idx, st in osd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{idx}.{name}"] = v.detach().cpu().contiguous().clone()
            else:
                state_json.setdefault(str(idx), {})[name] = v
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / STATE_TENSORS))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    doc = {"meta": meta, "optimizer_param_groups": osd["param_groups"], "optimizer_state_scalars": state_json,
           "scheduler": sched}
    (tmp / STATE_JSON).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    last = out / "last"
    old = out / "last.old"
    if last.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(last, old)
    os.replace(tmp, last)
    if old.exists():
        shutil.rmtree(old)


def load_trainer_state(last: Path, module: TrainModule, optimizer, scheduler) -> Dict[str, Any]:
    """Restore objective params, optimizer and scheduler from ``last``; returns the saved ``meta``."""
    from safetensors.torch import load_file

    try:
        doc = json.loads((last / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(last / STATE_TENSORS))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the resume state ({err}); delete this folder to start over", last) \
            from err
    obj = {k[len("objective."):]: v for k, v in tensors.items() if k.startswith("objective.")}
    try:
        module.objective.load_state_dict(obj, strict=True)
    except RuntimeError as err:
        raise CheckpointError("resume state does not match the configured objectives (changed weights?): "
                              + str(err).splitlines()[0], last) from err
    state: Dict[int, Dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, d in doc.get("optimizer_state_scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    groups = doc["optimizer_param_groups"]
    if len(groups) != len(optimizer.param_groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(groups, optimizer.param_groups)):
        raise CheckpointError("resume state's optimizer does not match this model/config", last)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    sd = scheduler.state_dict()
    sd.update(doc["scheduler"])
    scheduler.load_state_dict(sd)
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return doc["meta"]


# -- logging -----------------------------------------------------------------------------------------------------------

class _Logger:
    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.path = out / "log.csv"
        self.tb = None
        if not enabled:
            return
        new = not self.path.exists()
        self.fh = open(self.path, "a", newline="", encoding="utf-8")
        self.w = csv.DictWriter(self.fh, fieldnames=LOG_COLUMNS)
        if new:
            self.w.writeheader()
        try:  # TensorBoard only when its package is installed
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except Exception:  # noqa: BLE001 - any import problem means "no TensorBoard"
            self.tb = None

    def row(self, **kw) -> None:
        if not self.enabled:
            return
        self.w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in kw.items() if k in LOG_COLUMNS})
        self.fh.flush()
        if self.tb is not None:
            step = kw.get("step", 0)
            for k, v in kw.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.fh.close()
            if self.tb is not None:
                self.tb.close()


# -- validation ------------------------------------------------------------------------------------------------------

def grounding_validation(model, cfg: Dict[str, Any]) -> Dict[str, float]:
    """CNR / mIoU / pointing on the configured MS-CXR CSV (first ``max_phrases`` phrases of the split)."""
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.grounding.evaluate import evaluate
    from elvis_core.io.annotations import AnnotationSet, read_ms_cxr_csv

    v = cfg["validation"]
    aset = read_ms_cxr_csv(v["annotations"]).filter_split(v["split"] or None)
    phrases = aset.phrases[: v["max_phrases"]] if v["max_phrases"] > 0 else aset.phrases
    aset = AnnotationSet(phrases, aset.errors, aset.source_path, aset.version)
    was_training = model.training
    engine = GroundingEngine(model, device=str(next(model.parameters()).device))
    try:
        res = evaluate(engine, aset, v["images_root"] or cfg["data"]["root"])
    finally:
        model.train(was_training)
    o = res.overall
    return {"val_cnr": float(o.get("cnr", float("nan"))), "val_miou": float(o.get("miou", float("nan"))),
            "val_pointing": float(o.get("pointing", float("nan"))), "val_phrases": float(res.n_evaluated)}


# -- main entry ------------------------------------------------------------------------------------------------------

def _hash_pairs(pairs) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update((p if isinstance(p, str) else os.path.basename(p.image_path)).encode())
    return h.hexdigest()[:12]


def _tokenizer_from_rank0(tokenizer, world: int, rank: int):
    """All ranks use rank 0's tokenizer (sent as its JSON text)."""
    if world == 1:
        return tokenizer
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    box = [(tokenizer.backend_tokenizer.to_str(), int(tokenizer.model_max_length)) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if rank == 0:
        return tokenizer
    text, max_len = box[0]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text), unk_token="[UNK]",
                                   pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=max_len)


def train(cfg: Dict[str, Any], out_dir: Optional[str] = None, progress: Optional[bool] = None) -> TrainResult:
    """Run a training described by a validated config (:func:`elvis_core.training.config.load_config`)."""
    from elvis_core.model.elvis import build_model
    from elvis_core.training.data import (Augment, Collate, PairDataset, PairStats, PreparedDataset,
                                          ThreadPrefetcher,
                                          excluded_patients_from_csv, find_pairs, prepared_texts, read_mimic_views,
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
