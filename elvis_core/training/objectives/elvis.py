"""ELVIS soft-target local loss (objective ``elvis``).

Paper: ELVIS, Kang et al., "ELVIS: Empowering Locality of Vision Language Pre-training with Intra-modal Similarity",
arXiv 2304.05303.

As we read the paper: LoVT's region-level loss (:mod:`~elvis_core.training.objectives.lovt`) with SOFT targets from
the intra-modal similarity of the PRE-projection features (stop-gradient), so regions / sentences that the encoder
already finds similar are not pushed apart after projection (the paper's Figure 1: local alignment "loses the
intra-image correlation after projection", ELVIS preserves it).

What we changed / chose where the paper is not specific: the targets are a row softmax of cosines at
``target_temperature`` (0.1 by default; swept in ``benchmarks/elvis_paper.py``); the sentence side uses the mean of
the sentence's pre-projection token features (or the separately encoded sentence's pooled feature); the other
reading of the paper, a direct before/after structure-matching term, is :mod:`~elvis_core.training.objectives.intra`;
``similarity_source = "post_projection"`` / ``"none"`` are ablations (detached projected embeddings / one-hot).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from elvis_core.training.objectives.lovt import _LocalCrossModal
from elvis_core.training.objectives.shared import Sentences, sentence_tensors


def similarity_targets(feats: torch.Tensor, valid: torch.Tensor, target_temperature: float) -> torch.Tensor:
    """ELVIS soft targets: row i = softmax_j(cos(f_i, f_j) / target_temperature) over the valid j, stop-gradient.

    Limits (tested): identical features give cos = 1 everywhere, hence the UNIFORM distribution over the valid
    elements; mutually orthogonal features with ``target_temperature -> 0`` give the ONE-HOT identity, i.e. LoVT's
    "each element is its own only positive"."""
    with torch.no_grad():
        f = F.normalize(feats.detach().float(), dim=-1)
        sim = f @ f.transpose(1, 2)
        sim = sim.masked_fill(~valid.bool().unsqueeze(1), torch.finfo(torch.float32).min)
        return torch.softmax(sim / target_temperature, dim=-1)


class ElvisLocal(_LocalCrossModal):
    """ELVIS (arXiv 2304.05303) as we read the paper: LoVT's region-level contrastive loss whose one-hot / spatial
    targets ("each region matches itself and repels every other region of its image") are replaced by SOFT targets
    from the intra-modal similarity of the local features BEFORE projection, stop-gradient:
    ``t_kk' = softmax_k'(cos(f_k, f_k') / target_temperature)`` for the image's regions (``f`` = ``patch_feats``)
    and for the report's sentences (``f`` = mean of the sentence's pre-projection ``token_feats``), so regions /
    sentences that the encoder already finds similar are no longer pushed apart after projection.

    ``similarity_source``: ``"pre_projection"`` (the reading above, default), ``"post_projection"`` (the detached
    projected embeddings, an ablation) or ``"none"`` (one-hot targets: LoVT's loss without spatial smoothing).
    Limits (tested): identical pre-projection features give uniform targets; orthogonal ones with
    ``target_temperature -> 0`` give one-hot targets.
    """

    def __init__(self, temperature: float = 0.3, attn_temperature: float = 0.1, target_temperature: float = 0.1,
                 text_weight: float = 0.5, image_weight: float = 0.5, similarity_source: str = "pre_projection",
                 weighting: str = "attention"):
        super().__init__(temperature, attn_temperature, text_weight, image_weight, weighting)
        if similarity_source not in ("pre_projection", "post_projection", "none"):
            raise ValueError("similarity_source must be 'pre_projection', 'post_projection' or 'none'")
        if target_temperature <= 0:
            raise ValueError("target_temperature must be > 0")
        self.target_temperature, self.similarity_source = target_temperature, similarity_source

    def forward(self, patch_feats, patch_emb, token_feats, token_emb, sentence_ids,
                sentences: Optional["Sentences"] = None) -> torch.Tensor:
        """``sentences``: separately encoded sentences (:class:`Sentences`: pooled embedding and its pre-projection
        feature) instead of the "."-spans of the report (mean of token embeddings / of pre-projection features)."""
        pf = patch_feats.flatten(1, -2) if patch_feats.ndim == 4 else patch_feats
        p, att = self.attend(patch_emb, token_emb, sentence_ids, sentences)
        if att is None:
            return p.sum() * 0.0
        e, s_valid, u, z, w = att
        n_valid = torch.ones(p.shape[:2], dtype=torch.bool, device=p.device)
        if self.similarity_source == "none":
            rt = torch.eye(p.shape[1], device=p.device).expand(p.shape[0], -1, -1)
            st = torch.eye(e.shape[1], device=p.device).expand(p.shape[0], -1, -1)
        else:
            if self.similarity_source == "pre_projection":
                src_p = pf
                src_s = sentences.feats if sentences is not None else sentence_tensors(token_feats, sentence_ids)[0]
            else:
                src_p, src_s = p, e
            rt = similarity_targets(src_p, n_valid, self.target_temperature)
            st = similarity_targets(src_s, s_valid, self.target_temperature)
        return self.combine(p, u, w, e, z, s_valid, rt, st)
