"""What one training step computes, for :func:`elvis_core.training.trainer.train`.

- :class:`TrainModule`: the model and its objectives in one ``nn.Module`` (what DDP wraps, so the learnable temperature
  is averaged too); its forward encodes the batch (and, for the sentence-level objectives, each report sentence alone,
  with negated and mirrored copies) and returns the combined loss and its parts;
- the optimisation: AdamW parameter groups (no weight decay on biases, norms and temperatures; the pretrained text
  encoder's own learning rate), fused AdamW on CUDA, the warm-up + cosine schedule (:func:`lr_lambda`);
- :func:`to_device`: a collated batch onto the training device, where a prepared-cache batch is augmented.

Re-exported by :mod:`elvis_core.training.trainer`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

import torch
from torch import nn

from elvis_core.training.objectives import CombinedObjective


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
