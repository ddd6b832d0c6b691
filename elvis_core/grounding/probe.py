"""Segmentation probes (the ELVIS / LoVT evaluation, arXiv 2304.05303 and 2112.03237): how much segmentation a
pre-trained image encoder supports with few labels.

Labelled data: phantom studies (``elvis phantom``) whose masks the generator knows — both lungs, the heart and each
finding category's region (where the finding's density layer exceeds a quarter of its maximum, the rule that also
draws its MS-CXR boxes). :func:`probe_set` writes the studies as DICOMs (so the images go through the same reader and
model-input transform as in training) and re-renders each study in memory from the same seeds for its masks (checked:
the re-rendered report must equal the one on disk).

- **Linear probe** (:func:`linear_probe`): the encoder is frozen; a 1 x 1 convolution on the pre-projection patch
  features (``patch_feats``) predicts one logit per class and cell, bilinearly upsampled; trained with BCE + soft
  Dice on a fraction (1 %, 10 %, 100 %) of the labelled studies, as LoVT's "linear" evaluation does.
- **Fine-tuning** (:func:`finetune_probe`): the same head with the image encoder trained too.
- **Dice** (:func:`dice_per_image`): per test image and class at model-input resolution (threshold 0.5), NaN when the
  class is absent from both the label and the prediction.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from elvis_core.errors import ElvisError
from elvis_core.phantom.findings import CATEGORIES

#: the classes, in channel order: anatomy first, then the finding categories
CLASSES = ("lungs", "heart") + tuple(c.lower() for c in CATEGORIES)
#: how the classes are reported: anatomy one by one, findings as the mean over the categories present
GROUPS = {"lungs": ("lungs",), "heart": ("heart",), "findings": tuple(c.lower() for c in CATEGORIES)}


@dataclass
class ProbeSet:
    """``inputs`` [N, 1, S, S] float32 model inputs, ``masks`` [N, K, S, S] bool labels in model-input space (K =
    len(:data:`CLASSES`)), ``paths`` the DICOMs (relative to the set's folder)."""

    inputs: torch.Tensor
    masks: torch.Tensor
    paths: List[str]

    def subset(self, idx: Sequence[int]) -> "ProbeSet":
        idx = list(idx)
        return ProbeSet(self.inputs[idx], self.masks[idx], [self.paths[i] for i in idx])

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def _to_input_space(mask: np.ndarray, image_shape, transform) -> np.ndarray:
    """A mask on any canvas of the image's aspect -> bool (S, S) in model-input space (same resize + padding)."""
    geo = transform.geometry(tuple(image_shape))
    new_w, new_h = transform._resized(*image_shape)
    m = cv2.resize(mask.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_AREA) > 0.5
    out = np.zeros((transform.size, transform.size), bool)
    py, px = int(geo.pad_y), int(geo.pad_x)
    out[py:py + new_h, px:px + new_w] = m
    return out


def study_masks(study, geometry) -> Dict[str, np.ndarray]:
    """Class name -> float mask on the working canvas for one rendered phantom study and its anatomy geometry."""
    out = {"lungs": np.maximum.reduce([np.asarray(m, np.float32) for m in geometry.lungs.values()]),
           "heart": np.asarray(geometry.heart, np.float32)}
    for f, layer in zip(study.findings, study.layers):
        a = np.abs(layer)
        if a.max() <= 0:
            continue
        m = (a > 0.25 * a.max()).astype(np.float32)
        k = f.category.lower()
        out[k] = np.maximum(out[k], m) if k in out else m
    return out


def probe_set(folder: os.PathLike | str, n_studies: int, seed: int, size: int, transform,
              version: Optional[int] = None) -> ProbeSet:
    """Labelled phantom studies for the probes: generated into ``folder`` (once; all in the "test" split) by phantom
    generator ``version`` (None: the default) and read back through ``transform`` (the model's input transform)."""
    from elvis_core.grounding.evaluate import read_any_image
    from elvis_core.phantom import generate
    from elvis_core.phantom.anatomy import render_anatomy, sample_anatomy
    from elvis_core.phantom.generate import GENERATOR_VERSION, _plan, _seq, render_study

    version = GENERATOR_VERSION if version is None else int(version)
    folder = Path(folder)
    if not (folder / "ms_cxr.csv").is_file():
        generate(folder, n_studies, seed=seed, size=size, splits=(0, 0, 100), version=version)
    inputs, masks, paths = [], [], []
    for job in _plan(n_studies, seed, size, (0, 0, 100)):
        anatomy = sample_anatomy(_seq(job.seed, 2, job.patient))
        study = render_study(_seq(job.seed, 3, job.index), size=job.size, anatomy=anatomy, with_clean=False,
                             version=version)
        txt = folder / job.rel_txt
        if not txt.is_file() or txt.read_text(encoding="utf-8") != study.report:
            raise ElvisError("phantom folder does not match its seed (another generator version or seed?); "
                             "delete it to regenerate", folder)
        rad = read_any_image(folder / job.rel_dcm)
        x = transform.apply(rad)
        g = render_anatomy(study.anatomy, study.height, study.width)
        ms = study_masks(study, g)
        shape = (study.height, study.width)
        m = np.zeros((len(CLASSES), transform.size, transform.size), bool)
        for k, name in enumerate(CLASSES):
            if name in ms:
                m[k] = _to_input_space(ms[name], shape, transform)
        inputs.append(np.asarray(x, np.float32))
        masks.append(m)
        paths.append(job.rel_dcm)
    return ProbeSet(torch.from_numpy(np.stack(inputs))[:, None], torch.from_numpy(np.stack(masks)), paths)


def fraction_indices(n: int, fraction: float, seed: int) -> List[int]:
    """A fixed random subset of ``max(1, round(n * fraction))`` of ``range(n)`` (the same for every model)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    k = max(1, int(round(n * fraction)))
    return sorted(np.random.default_rng(seed).permutation(n)[:k].tolist())


# -- heads ------------------------------------------------------------------------------------------------------------

class LinearHead(nn.Module):
    """1 x 1 convolution on [B, gh, gw, C] features -> [B, K, gh, gw] logits."""

    def __init__(self, channels: int, n_classes: int = len(CLASSES)):
        super().__init__()
        self.conv = nn.Conv2d(channels, n_classes, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.conv(feats.permute(0, 3, 1, 2))


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice (per class over the batch); ``target`` [B, K, h, w] in [0, 1] at the logits' size."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((0, 2, 3))
    den = p.sum((0, 2, 3)) + target.sum((0, 2, 3))
    has = target.sum((0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (den + 1.0)
    return bce + (1 - dice[has]).mean() if bool(has.any()) else bce


def _targets(masks: torch.Tensor, res: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(masks.float(), res)


@torch.no_grad()
def frozen_features(model, inputs: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Pre-projection patch features [N, gh, gw, C] of the frozen image encoder."""
    was = model.training
    model.eval()
    try:
        return torch.cat([model.encode_image(inputs[i:i + batch_size].to(model.device)).patch_feats.float().cpu()
                          for i in range(0, inputs.shape[0], batch_size)])
    finally:
        model.train(was)


def linear_probe(feats: torch.Tensor, masks: torch.Tensor, iters: int = 300, lr: float = 0.02, res: int = 32,
                 seed: int = 0) -> LinearHead:
    """Train a :class:`LinearHead` full-batch (Adam) on frozen ``feats`` [N, gh, gw, C] against ``masks``
    [N, K, S, S] (pooled to ``res`` x ``res`` soft targets)."""
    torch.manual_seed(seed)
    head = LinearHead(feats.shape[-1], masks.shape[1])
    mu = feats.mean((0, 1, 2))
    sd = feats.std((0, 1, 2)).clamp_min(1e-6)
    head.register_buffer("mu", mu)
    head.register_buffer("sd", sd)
    x = (feats - mu) / sd
    tgt = _targets(masks, res)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(iters):
        logits = F.interpolate(head.conv(x.permute(0, 3, 1, 2)), size=(res, res), mode="bilinear",
                               align_corners=False)
        loss = _loss(logits, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


@torch.no_grad()
def predict_linear(head: LinearHead, feats: torch.Tensor, size: int) -> torch.Tensor:
    """Probabilities [N, K, size, size] from frozen features."""
    x = (feats - head.mu) / head.sd
    return torch.sigmoid(F.interpolate(head.conv(x.permute(0, 3, 1, 2)), size=(size, size), mode="bilinear",
                                       align_corners=False))


def dice_per_image(prob: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """[N, K] Dice of ``prob > threshold`` against ``masks``; NaN where both are empty."""
    pred = prob > threshold
    gt = masks.bool()
    inter = (pred & gt).sum((2, 3)).double()
    den = (pred.sum((2, 3)) + gt.sum((2, 3))).double()
    d = (2 * inter / den.clamp_min(1)).numpy()
    d[den.numpy() == 0] = np.nan
    return d


def group_dice(d: np.ndarray, masks: torch.Tensor) -> Dict[str, np.ndarray]:
    """Per image: lungs, heart, and findings (mean over the finding classes present in the label; NaN if none)."""
    present = masks.bool().flatten(2).any(-1).numpy()
    out = {}
    for g, names in GROUPS.items():
        idx = [CLASSES.index(n) for n in names]
        v = np.where(present[:, idx], d[:, idx], np.nan)
        with np.errstate(all="ignore"):
            out[g] = np.array([np.nanmean(r) if np.any(~np.isnan(r)) else np.nan for r in v])
    return out


def finetune_probe(model, train: ProbeSet, test_inputs: torch.Tensor, steps: int = 60, batch_size: int = 16,
                   lr: float = 1e-3, res: int = 32, seed: int = 0) -> torch.Tensor:
    """Fine-tune a COPY of the model's image encoder (+ projection-free linear head) on ``train``; returns the test
    probabilities [N, K, S, S]. The model itself is left untouched."""
    torch.manual_seed(seed)
    enc = copy.deepcopy(model).train()
    for p in enc.text_encoder.parameters():
        p.requires_grad_(False)
    feats0 = frozen_features(enc, train.inputs[:min(len(train), 64)])
    head = LinearHead(feats0.shape[-1], train.masks.shape[1])
    mu, sd = feats0.mean((0, 1, 2)), feats0.std((0, 1, 2)).clamp_min(1e-6)
    params = [p for n, p in enc.named_parameters() if n.startswith("image_encoder.")] + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    tgt = _targets(train.masks, res)
    g = torch.Generator().manual_seed(seed)
    n = len(train)
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        f = enc._backbone(train.inputs[idx])
        logits = F.interpolate(head((f - mu) / sd), size=(res, res), mode="bilinear", align_corners=False)
        loss = _loss(logits, tgt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    size = test_inputs.shape[-1]
    out = []
    with torch.no_grad():
        for i in range(0, test_inputs.shape[0], 32):
            f = enc._backbone(test_inputs[i:i + 32])
            out.append(torch.sigmoid(F.interpolate(head((f - mu) / sd), size=(size, size), mode="bilinear",
                                                   align_corners=False)))
    return torch.cat(out)


def probe_scores(model, train: ProbeSet, test: ProbeSet, fractions: Sequence[float] = (0.01, 0.1, 1.0),
                 seed: int = 0, finetune_fraction: Optional[float] = None, finetune_steps: int = 60
                 ) -> Dict[str, Dict[str, np.ndarray]]:
    """``{"linear 1%": {"lungs": [N_test], "heart": ..., "findings": ..., "mean": ...}, ..., "finetune 10%": ...}``
    per test image; "mean" = the mean of the three groups (NaN-skipping)."""
    size = test.inputs.shape[-1]
    ftr, fte = frozen_features(model, train.inputs), frozen_features(model, test.inputs)
    out = {}

    def pack(prob):
        gd = group_dice(dice_per_image(prob, test.masks), test.masks)
        with np.errstate(all="ignore"):
            gd["mean"] = np.nanmean(np.stack([gd[g] for g in GROUPS]), axis=0)
        return gd

    for fr in fractions:
        idx = fraction_indices(len(train), fr, seed)
        head = linear_probe(ftr[idx], train.masks[idx], seed=seed)
        out[f"linear {fr * 100:g}%"] = pack(predict_linear(head, fte, size))
    if finetune_fraction:
        idx = fraction_indices(len(train), finetune_fraction, seed)
        out[f"finetune {finetune_fraction * 100:g}%"] = pack(finetune_probe(model, train.subset(idx), test.inputs,
                                                                             steps=finetune_steps, seed=seed))
    return out


def mean_dice(scores: Dict[str, np.ndarray]) -> float:
    v = scores["mean"]
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


__all__ = ["CLASSES", "GROUPS", "ProbeSet", "probe_set", "fraction_indices", "LinearHead", "linear_probe",
           "predict_linear", "frozen_features", "finetune_probe", "dice_per_image", "group_dice", "probe_scores",
           "mean_dice", "study_masks"]
