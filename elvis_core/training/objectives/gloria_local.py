"""GLoRIA / BioViL-style word–region alignment, contrastive over the batch (objective ``local``).

Papers: GLoRIA (Huang et al., "GLoRIA: A Multimodal Global-Local Representation Learning Framework for
Label-efficient Medical Image Recognition", ICCV 2021; not on arXiv); BioViL (Boecking et al., arXiv 2204.09817),
whose grounding (cosine of a phrase embedding with every patch) our viewer uses.

For every (image i, report j) pair each word of j attends over i's patches, the attended context is compared (cosine)
with the word, word scores aggregate (log-sum-exp as GLoRIA, or mean) into a pair score, and a symmetric
contrastive loss runs over the batch. Local to a DDP rank.

What we changed: GLoRIA uses the intermediate ResNet feature map and separate word embeddings; we use the model's
projected patch grid and token embeddings (the same space grounding reads). ``units="sentences"`` lets separately
encoded report sentences take the words' place (a phrase at grounding time is encoded alone, like them). Large
batches are computed in blocks with recomputation in the backward pass (same values; ``tests/core/test_local_blocks.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LocalTokenPatch(nn.Module):
    """GLoRIA/BioViL-style word–region alignment with a contrastive loss over the batch.

    For image i and report j: ``a[w, k] = softmax_k(t_jw . p_ik / attn_temperature)``, ``c_w = sum_k a[w,k] p_ik``,
    ``r_w = cos(c_w, t_jw)``; pair score ``S[i, j] = (1/gamma) log sum_w exp(gamma r_w)`` (``aggregation="lse"``,
    GLoRIA) or the mean of ``r_w`` (``"mean"``), over the words of j (``token_mask``). Loss: symmetric cross-entropy of
    ``S / temperature`` with the matching pairs on the diagonal. ``units="sentences"``: the report's separately
    encoded sentences (:class:`Sentences`, ``objectives.sentences = "separate"``) take the words' place.
    """

    def __init__(self, temperature: float = 0.1, attn_temperature: float = 0.1, aggregation: str = "lse",
                 gamma: float = 5.0, units: str = "tokens"):
        super().__init__()
        if aggregation not in ("lse", "mean"):
            raise ValueError("aggregation must be 'lse' or 'mean'")
        if units not in ("tokens", "sentences"):
            raise ValueError("units must be 'tokens' or 'sentences'")
        self.temperature, self.attn_temperature = temperature, attn_temperature
        self.aggregation, self.gamma, self.units = aggregation, gamma, units

    #: elements of one block of the [Bi, Bj, L, N] token–patch similarities (2^26 = 256 MiB in fp32). Beyond it the
    #: scores are computed for a few images at a time and, under autograd, each block is recomputed in the backward
    #: pass instead of being kept, so the whole [B, B, L, N] tensor (with its softmax and the [B, B, L, D] context:
    #: ~2.5 GB in fp32 at B = 64, L = 128, N = 256, growing with B²) is never held at once. Same values (tested).
    block_elements: int = 1 << 26

    def pair_scores(self, patch_emb: torch.Tensor, token_emb: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """S [B_img, B_txt]."""
        p = patch_emb.flatten(1, -2) if patch_emb.ndim == 4 else patch_emb  # [B, N, D]
        per_image = max(1, token_emb.shape[0] * token_emb.shape[1] * p.shape[1])
        rows = max(1, self.block_elements // per_image)
        if rows >= p.shape[0]:
            return self._pair_scores_block(p, token_emb, token_mask)
        from torch.utils.checkpoint import checkpoint

        grad = torch.is_grad_enabled() and (p.requires_grad or token_emb.requires_grad)
        out = []
        for a in range(0, p.shape[0], rows):
            blk = p[a:a + rows]
            out.append(checkpoint(self._pair_scores_block, blk, token_emb, token_mask, use_reentrant=False)
                       if grad else self._pair_scores_block(blk, token_emb, token_mask))
        return torch.cat(out, dim=0)

    def _pair_scores_block(self, p: torch.Tensor, token_emb: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        sim = torch.einsum("jwd,ikd->ijwk", token_emb, p)  # [Bi, Bj, L, N]
        attn = torch.softmax(sim / self.attn_temperature, dim=-1)
        ctx = torch.einsum("ijwk,ikd->ijwd", attn, p)  # [Bi, Bj, L, D]
        r = F.cosine_similarity(ctx, token_emb.unsqueeze(0).expand_as(ctx), dim=-1)  # [Bi, Bj, L]
        mask = token_mask.bool().unsqueeze(0).expand_as(r)
        if self.aggregation == "lse":
            r = r.masked_fill(~mask, float("-inf"))
            return torch.logsumexp(self.gamma * r, dim=-1) / self.gamma
        m = mask.to(r.dtype)
        return (r * m).sum(-1) / m.sum(-1).clamp_min(1.0)

    def forward(self, patch_emb: torch.Tensor, token_emb: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        s = self.pair_scores(patch_emb, token_emb, token_mask).float() / self.temperature
        labels = torch.arange(s.shape[0], device=s.device)
        return 0.5 * (F.cross_entropy(s, labels) + F.cross_entropy(s.t(), labels))
