"""Mirror consistency (objective ``mirror``; ours).

Papers: none of the seed papers has it. Flip equivariance as a self-supervised constraint is old (e.g. the
equivariant attention of Wang et al., "Self-supervised Equivariant Attention Mechanism", arXiv 2004.04581); here the
flip also swaps "left" and "right" in the text.

What it does: the map of a report sentence on the film must be the mirror image of the map of the sentence with its
side words swapped on the mirrored film.
"""

from __future__ import annotations

import torch
from torch import nn


class MirrorConsistency(nn.Module):
    """Mirror consistency (ours; none of the seed papers has it): the map of a report sentence on the film must be the
    mirror image of the map of the same sentence with "left" and "right" swapped on the mirrored film. Contrastive
    grounding losses are blind to a constant shift of the feature grid (every patch moved one cell right scores the
    same), and a trained encoder can respond beside a finding instead of on it; such a shift flips with the film, so
    this term sees it. Loss = mean over sentences of ``1 - Pearson r`` between the sentence's cosine grid on the film
    and the swapped sentence's grid on the mirrored film, aligned back cell for cell
    (:func:`~elvis_core.grounding.engine.mirror_model_input`). Gradients reach both branches.

    ``kind = "attention"`` compares where the maps peak instead: the symmetric KL divergence between the two spatial
    distributions ``softmax(map / temperature)`` over the grid (what the local losses attend to). A one-cell shift of
    a blob a few cells wide barely lowers Pearson r over the whole grid but moves the attention mass."""

    def __init__(self, kind: str = "pearson", temperature: float = 0.05):
        super().__init__()
        if kind not in ("pearson", "attention"):
            raise ValueError(f"objectives.mirror.kind must be 'pearson' or 'attention', got {kind!r}")
        if not temperature > 0:
            raise ValueError(f"objectives.mirror.temperature must be > 0, got {temperature}")
        self.kind, self.temperature = kind, float(temperature)

    def forward(self, patch_emb: torch.Tensor, mirrored_patch_emb: torch.Tensor, emb: torch.Tensor,
                mirrored_emb: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """patch_emb / mirrored_patch_emb [B, gh, gw, D] (the latter already flipped back); emb / mirrored_emb
        [T, D] normalised (sentence, its swapped copy); owner [T] image index."""
        if emb.shape[0] == 0:
            return patch_emb.sum() * 0.0
        a = torch.einsum("tnd,td->tn", patch_emb.flatten(1, -2)[owner], emb)
        b = torch.einsum("tnd,td->tn", mirrored_patch_emb.flatten(1, -2)[owner], mirrored_emb)
        if self.kind == "attention":
            la = torch.log_softmax(a / self.temperature, dim=-1)
            lb = torch.log_softmax(b / self.temperature, dim=-1)
            kl_ab = (la.exp() * (la - lb)).sum(-1)
            kl_ba = (lb.exp() * (lb - la)).sum(-1)
            return 0.5 * (kl_ab + kl_ba).mean()
        a = a - a.mean(-1, keepdim=True)
        b = b - b.mean(-1, keepdim=True)
        r = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-8)
        return (1.0 - r).mean()
