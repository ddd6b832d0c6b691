"""Intra-modal similarity preservation (objective ``intra``): the other reading of ELVIS, kept for the ablation.

Paper: ELVIS, Kang et al., arXiv 2304.05303 ("intra-modal similarity").

The similarity structure among a modality's local features BEFORE projection (``patch_feats`` / ``token_feats``) is
the target for the structure AFTER projection (``patch_emb`` / ``token_emb``), row by row, with KL of softmaxed rows
or MSE. What we changed: this is a stand-alone regulariser (no cross-modal term); the paper folds the similarity into
the local contrastive targets, which is :mod:`~elvis_core.training.objectives.elvis`. Tokens, not sentences, are the
text units here.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _cos_matrix(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x if x.dtype == torch.float64 else x.float(), dim=-1)
    return x @ x.transpose(-1, -2)


class IntraModalSimilarity(nn.Module):
    """ELVIS intra-modal similarity preservation (our reading of arXiv 2304.05303).

    For each sample, ``T = cos(feats_i, feats_j)`` among local features BEFORE projection (the target, detached by
    default) and ``P = cos(emb_i, emb_j)`` AFTER projection, over valid positions (all patches; the word tokens,
    i.e. not padding / [CLS] / [SEP]). ``distance="kl"``: mean over rows i of ``KL(softmax_j(T_i / target_temperature) ||
    softmax_j(P_i / temperature))``; ``"mse"``: mean over (i, j) of ``(T_ij - P_ij)^2``. ``exclude_self`` drops the
    diagonal (always 1 on both sides). Loss = ``image_weight * patches + text_weight * tokens``.
    """

    def __init__(self, distance: str = "kl", temperature: float = 0.1, target_temperature: Optional[float] = None,
                 detach_target: bool = True, exclude_self: bool = True, image_weight: float = 1.0,
                 text_weight: float = 1.0):
        super().__init__()
        if distance not in ("kl", "mse"):
            raise ValueError("distance must be 'kl' or 'mse'")
        self.distance, self.temperature = distance, temperature
        self.target_temperature = temperature if target_temperature is None else target_temperature
        self.detach_target, self.exclude_self = detach_target, exclude_self
        self.image_weight, self.text_weight = image_weight, text_weight

    def structure_loss(self, feats: torch.Tensor, emb: torch.Tensor,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``feats`` [B, M, C], ``emb`` [B, M, D], ``mask`` [B, M] (1 = valid) → scalar."""
        t = _cos_matrix(feats)
        if self.detach_target:
            t = t.detach()
        p = _cos_matrix(emb)
        b, m = t.shape[:2]
        valid = torch.ones(b, m, dtype=torch.bool, device=t.device) if mask is None else mask.bool()
        pair = valid.unsqueeze(2) & valid.unsqueeze(1)  # [B, M, M]
        if self.exclude_self:
            pair = pair & ~torch.eye(m, dtype=torch.bool, device=t.device)
        if self.distance == "mse":
            w = pair.float()
            return ((t - p) ** 2 * w).sum() / w.sum().clamp_min(1.0)
        neg = torch.finfo(t.dtype).min
        lt = torch.log_softmax((t / self.target_temperature).masked_fill(~pair, neg), dim=-1)
        lp = torch.log_softmax((p / self.temperature).masked_fill(~pair, neg), dim=-1)
        kl = (lt.exp() * (lt - lp)).masked_fill(~pair, 0.0).sum(-1)  # [B, M]
        rows = pair.any(-1)
        return (kl * rows).sum() / rows.sum().clamp_min(1)

    def forward(self, patch_feats, patch_emb, token_feats, token_emb, token_mask) -> torch.Tensor:
        total = patch_emb.new_zeros(())
        if self.image_weight:
            total = total + self.image_weight * self.structure_loss(patch_feats.flatten(1, -2),
                                                                    patch_emb.flatten(1, -2))
        if self.text_weight:
            total = total + self.text_weight * self.structure_loss(token_feats, token_emb, token_mask)
        return total
