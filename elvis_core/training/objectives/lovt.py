"""LoVT region–sentence alignment (objective ``region_sentence``) and the cross-modal part it shares with ELVIS.

Paper: LoVT, Müller et al., "Joint Learning of Localized Representations from Medical Images and Reports",
arXiv 2112.03237 (ECCV 2022).

Regions attend over their report's sentences and sentences over their image's regions; LoVT's intra-sample
contrastive loss in both directions, spatially smoothed positives for regions, the report's other sentences as
negatives, attention-weighted region terms.

What we changed (see :class:`RegionSentence`): regions are our patch grid (LoVT: the ResNet's 7x7 grid behind its own
projection / attention-pooling heads); region weights are the attention each region receives from the report's
sentences (LoVT: its attention pooling); sentences are "."-spans of one encoding of the report, or each sentence
encoded alone (``objectives.sentences = "separate"``); the constant log(#negatives) LoVT subtracts is left out.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from elvis_core.training.objectives.shared import Sentences, sentence_tensors


def intra_sample_contrastive(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                             temperature: float, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LoVT's intra-sample local contrastive loss, both directions, with (soft) targets.

    ``a``, ``b`` [B, M, D] L2-normalised (local features and their cross-modal counterparts), ``targets`` [B, M, M]
    (row i: distribution over the positives j of element i; rows sum to 1 over valid j), ``valid`` [B, M] bool,
    ``weights`` [B, M] (per-element weight; normalised to sum 1 over the valid elements of each sample; None =
    uniform). For each valid i: ``l_ab(i) = -sum_j t_ij s_ij + logsumexp_j s_ij`` with ``s_ij = a_i . b_j / tau``
    over the valid j of the same sample (= cross-entropy of softmax_j(s_i.) against t_i.), ``l_ba`` the same with a
    and b swapped. Loss = mean over samples with >= 1 valid element of ``sum_i w_i (l_ab(i) + l_ba(i)) / 2``.
    """
    v = valid.bool()
    if not bool(v.any()):
        return a.sum() * 0.0
    neg = torch.finfo(torch.float32).min
    colmask = ~v.unsqueeze(1)  # [B, 1, M]
    t = targets.float().masked_fill(colmask, 0.0)
    t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
    s_ab = (a.float() @ b.float().transpose(1, 2)) / temperature  # [B, M, M]
    s_ba = s_ab.transpose(1, 2)
    l_ab = -(t * s_ab.masked_fill(colmask, 0.0)).sum(-1) + torch.logsumexp(s_ab.masked_fill(colmask, neg), dim=-1)
    l_ba = -(t * s_ba.masked_fill(colmask, 0.0)).sum(-1) + torch.logsumexp(s_ba.masked_fill(colmask, neg), dim=-1)
    w = torch.ones_like(l_ab) if weights is None else weights.float()
    w = w.masked_fill(~v, 0.0)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    per_sample = (w * 0.5 * (l_ab + l_ba)).sum(-1)  # [B]
    has = v.any(-1)
    return per_sample[has].mean()


def spatial_targets(gh: int, gw: int, distance_threshold: float, smooth_lambda: float = 0.0,
                    device=None) -> torch.Tensor:
    """LoVT's spatially smoothed positives for regions: [N, N] row-normalised weights, positive where the distance
    between cell centres divided by the grid diagonal is <= ``distance_threshold`` (0 = only the cell itself);
    weight ``exp(-smooth_lambda * distance)`` (0 = flat)."""
    yy, xx = torch.meshgrid(torch.arange(gh, dtype=torch.float32, device=device),
                            torch.arange(gw, dtype=torch.float32, device=device), indexing="ij")
    c = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1) / math.sqrt(gh ** 2 + gw ** 2)
    d = torch.cdist(c, c)
    w = (d <= distance_threshold + 1e-9).float() * torch.exp(-smooth_lambda * d)
    return w / w.sum(-1, keepdim=True)


class _LocalCrossModal(nn.Module):
    """Shared part of LoVT's region–sentence loss and ELVIS: cross-modal attention within each sample.

    Regions (patches ``p_k``) attend over their own report's sentences (``e_s``, mean of the sentence's token
    embeddings, normalised): ``u_k = normalize(sum_s softmax_s(p_k . e_s / attn_temperature) e_s)``; sentences attend
    over their own image's regions: ``z_s = normalize(sum_k softmax_k(e_s . p_k / attn_temperature) p_k)``.
    Region terms are weighted by the attention each region receives from the report's sentences (detached;
    ``weighting="attention"``) or uniformly; sentence terms uniformly.
    """

    def __init__(self, temperature: float, attn_temperature: float, text_weight: float, image_weight: float,
                 weighting: str):
        super().__init__()
        if temperature <= 0 or attn_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        if weighting not in ("attention", "uniform"):
            raise ValueError("weighting must be 'attention' or 'uniform'")
        self.temperature, self.attn_temperature = temperature, attn_temperature
        self.text_weight, self.image_weight, self.weighting = text_weight, image_weight, weighting

    def attend(self, patch_emb: torch.Tensor, token_emb: torch.Tensor, sentence_ids: torch.Tensor,
               sentences: Optional["Sentences"] = None):
        """What every region–sentence method starts from: patches ``p`` [B, N, D], the report's sentences (separately
        encoded ``sentences``, else the "."-spans of the report), normalised, and :meth:`cross` of the two. Returns
        ``(p, None)`` when no report has a sentence, else ``(p, (e, s_valid, u, z, w))``."""
        p = patch_emb.flatten(1, -2) if patch_emb.ndim == 4 else patch_emb  # [B, N, D]
        e, s_valid = (sentences.emb, sentences.valid) if sentences is not None \
            else sentence_tensors(token_emb, sentence_ids)
        if e.shape[1] == 0:
            return p, None
        e = F.normalize(e, dim=-1)
        return p, (e, s_valid) + tuple(self.cross(p, e, s_valid))

    def cross(self, p: torch.Tensor, e: torch.Tensor, s_valid: torch.Tensor):
        """p [B, N, D], e [B, S, D] normalised, s_valid [B, S] → (u [B, N, D], z [B, S, D], region weights [B, N])."""
        logits = torch.einsum("bnd,bsd->bns", p, e) / self.attn_temperature  # [B, N, S]
        neg = torch.finfo(logits.dtype).min
        has = s_valid.any(-1)
        a_ps = torch.softmax(logits.masked_fill(~s_valid.unsqueeze(1), neg), dim=-1)  # regions over sentences
        u = F.normalize(torch.einsum("bns,bsd->bnd", a_ps, e), dim=-1)
        a_sp = torch.softmax(logits.transpose(1, 2), dim=-1)  # sentences over regions [B, S, N]
        z = F.normalize(torch.einsum("bsn,bnd->bsd", a_sp, p), dim=-1)
        if self.weighting == "attention":
            w = (a_sp.detach() * s_valid.unsqueeze(-1)).sum(1)  # attention mass each region receives
        else:
            w = torch.ones(p.shape[:2], device=p.device)
        w = w * has.unsqueeze(-1)
        return u, z, w

    def combine(self, p, u, w, e, z, s_valid, region_targets, sentence_targets) -> torch.Tensor:
        n_valid = torch.ones(p.shape[:2], dtype=torch.bool, device=p.device) & s_valid.any(-1, keepdim=True)
        total = p.new_zeros((), dtype=torch.float32)
        if self.image_weight:
            total = total + self.image_weight * intra_sample_contrastive(p, u, region_targets, n_valid,
                                                                         self.temperature, w)
        if self.text_weight:
            total = total + self.text_weight * intra_sample_contrastive(e, z, sentence_targets, s_valid,
                                                                        self.temperature, None)
        return total


class RegionSentence(_LocalCrossModal):
    """LoVT (Müller et al., arXiv 2112.03237) local alignment between image regions and report sentences.

    Both directions of the intra-sample contrastive loss (:func:`intra_sample_contrastive`) on each side: region
    ``p_k`` vs the cross-modal ``u_k`` of the regions of the SAME image (positives: the regions within
    ``distance_threshold`` of k, relative to the grid diagonal, LoVT's spatial smoothing; optionally weighted
    ``exp(-smooth_lambda d)``), and sentence ``e_s`` vs ``z_s`` of the sentences of the SAME report (positive: itself,
    negatives: the report's other sentences). Region terms attention-weighted (see :class:`_LocalCrossModal`).
    Defaults from the LoVT code's config (similarity temperature 0.3, relative distance threshold 0.3, no smoothing).
    Where we differ: LoVT's regions are the ResNet's 7x7 grid behind its own projection / attention-pooling heads and
    its weights come from that pooling; here regions are our patch grid, the weights are the attention each region
    receives from the report's sentences, and sentences are spans between "." tokens of one encoding of the report.
    LoVT also subtracts a constant log(#negatives) (no effect on gradients); we do not.
    """

    def __init__(self, temperature: float = 0.3, attn_temperature: float = 0.1, text_weight: float = 0.5,
                 image_weight: float = 0.5, distance_threshold: float = 0.3, smooth_lambda: float = 0.0,
                 weighting: str = "attention"):
        super().__init__(temperature, attn_temperature, text_weight, image_weight, weighting)
        self.distance_threshold, self.smooth_lambda = distance_threshold, smooth_lambda

    def forward(self, patch_emb: torch.Tensor, token_emb: torch.Tensor, sentence_ids: torch.Tensor,
                sentences: Optional["Sentences"] = None) -> torch.Tensor:
        """``sentences``: separately encoded sentences (:class:`Sentences`) instead of the "."-spans of the report."""
        gh, gw = (patch_emb.shape[1], patch_emb.shape[2]) if patch_emb.ndim == 4 else (1, patch_emb.shape[1])
        p, att = self.attend(patch_emb, token_emb, sentence_ids, sentences)
        if att is None:
            return p.sum() * 0.0
        e, s_valid, u, z, w = att
        rt = spatial_targets(gh, gw, self.distance_threshold, self.smooth_lambda, p.device)
        rt = rt.unsqueeze(0).expand(p.shape[0], -1, -1)
        st = torch.eye(e.shape[1], device=p.device).unsqueeze(0).expand(p.shape[0], -1, -1)
        return self.combine(p, u, w, e, z, s_valid, rt, st)
