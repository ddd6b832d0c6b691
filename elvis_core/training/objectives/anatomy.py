"""GK-MVLP-style anatomy alignment (objective ``anatomy``).

Paper: GK-MVLP, Deng et al., arXiv 2404.14750: anatomical region-level visual features, pooled from the patch grid
inside anatomy boxes and contextualised by a small transformer, aligned with the report sentences that mention that
anatomy.

What we changed: GK-MVLP grounds medical-knowledge entity prompts and trains four objectives (ITC, ITM, LM, entity
classification); we keep one contrastive region <-> sentence term, the sentences that mention a region are found by
keyword rules, and the module is only used in training (not part of the checkpoint). The box reading and collation
(Chest ImaGenome / the phantom's ``anatomy.csv``) stay in :mod:`elvis_core.training.anatomy`, which re-exports the
classes below.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from elvis_core.phantom.anatomy_boxes import ANATOMY_REGIONS


class AnatomyTransformer(nn.Module):
    """Region tokens = Linear(pooled pre-projection patch features) + a learned embedding of the region's name, one
    small transformer encoder over the regions of an image (absent regions masked), then Linear to the joint space,
    L2-normalised."""

    def __init__(self, in_dim: int, out_dim: int, n_regions: int, width: int = 128, layers: int = 1, heads: int = 4):
        super().__init__()
        self.inp = nn.Linear(in_dim, width)
        self.name = nn.Embedding(n_regions, width)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(width, out_dim)

    def forward(self, pooled: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """pooled [B, R, C], present [B, R] bool -> [B, R, D] normalised (rows of absent regions arbitrary)."""
        r = pooled.shape[1]
        x = self.inp(pooled) + self.name.weight[:r].unsqueeze(0)
        pad = ~present.bool()
        all_absent = pad.all(-1, keepdim=True)
        x = self.encoder(x, src_key_padding_mask=pad & ~all_absent)  # an image without any region: no masking
        return F.normalize(self.out(x), dim=-1)


def _multi_positive_ce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Mean over rows with >= 1 positive of the cross-entropy against the uniform distribution on the positives."""
    rows = pos.any(-1)
    if not bool(rows.any()):
        return logits.sum() * 0.0
    lp = torch.log_softmax(logits[rows], dim=-1)
    t = pos[rows].float()
    t = t / t.sum(-1, keepdim=True)
    return -(t * lp).sum(-1).mean()


class AnatomyAlignment(nn.Module):
    """Contrastive alignment of anatomy-region features with the sentences that mention the region (GK-MVLP's idea).

    ``v_br`` = mean of the pre-projection patch features of image b weighted by the share of each cell inside region
    r's box; ``a_br = AnatomyTransformer(v_b.)_r`` in the joint space; ``e_s`` = the separately encoded sentences.
    Region -> sentence: cross-entropy of ``a_br . e_s / temperature`` over all sentences of the batch against the
    uniform distribution on the sentences of report b that mention r; sentence -> region: the same over all present
    regions of the batch, positives the regions of its own image that it mentions. Loss = the mean of both.
    ``in_dim`` / ``out_dim`` come from the model (patch feature channels, joint dimension).
    """

    def __init__(self, in_dim: int, out_dim: int, temperature: float = 0.1, width: int = 128, layers: int = 1,
                 heads: int = 4, regions: Sequence[str] = ANATOMY_REGIONS):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.regions = tuple(regions)
        self.temperature = temperature
        self.module = AnatomyTransformer(in_dim, out_dim, len(self.regions), width, layers, heads)

    def forward(self, patch_feats: torch.Tensor, sent_emb: torch.Tensor, sent_valid: torch.Tensor,
                masks: torch.Tensor, mentions: torch.Tensor) -> torch.Tensor:
        """patch_feats [B, gh, gw, C]; sent_emb [B, S, D] normalised, sent_valid [B, S]; masks [B, R, gh, gw]
        (cell coverage); mentions [B, R, S] bool (sentence s of report b mentions region r)."""
        b, r = masks.shape[:2]
        m = masks.flatten(2).to(patch_feats.dtype)  # [B, R, N]
        area = m.sum(-1)
        present = area > 0
        pooled = torch.einsum("brn,bnc->brc", m, patch_feats.flatten(1, 2)) / area.clamp_min(1e-6).unsqueeze(-1)
        a = self.module(pooled, present)  # [B, R, D]
        s = sent_emb.shape[1]
        e = sent_emb.reshape(b * s, -1)
        sv = sent_valid.reshape(b * s).bool()
        ment = mentions.bool() & present.unsqueeze(-1) & sent_valid.bool().unsqueeze(1)  # [B, R, S]
        # positives in the flattened batch: region (b, r) <-> sentence (b', s) only when b' == b
        eye = torch.eye(b, dtype=torch.bool, device=a.device)
        pos = (eye[:, None, :, None] & ment[:, :, None, :]).reshape(b * r, b * s)  # [(B R), (B S)]
        av = a.reshape(b * r, -1)
        logits = (av @ e.t()).float() / self.temperature
        neg = torch.finfo(logits.dtype).min
        rv = present.reshape(b * r)
        l_rs = _multi_positive_ce(logits.masked_fill(~sv.unsqueeze(0), neg)[rv], pos[rv])
        l_sr = _multi_positive_ce(logits.t().masked_fill(~rv.unsqueeze(0), neg)[sv], pos.t()[sv])
        return 0.5 * (l_rs + l_sr)
