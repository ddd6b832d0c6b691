"""Objective: the map must follow the words (hard negatives a phantom can produce).

For each finding phrase of a training film with its boxes (an MS-CXR-style CSV) and the film's finding-free twin
(``elvis phantom --twins``):

- **box**: the phrase's spatial softmax (cosine / ``temperature`` over the cells the model saw) puts its mass in
  the phrase's boxes: ``-log sum_{cells in box} softmax`` (supervised grounding, as MS-CXR boxes allow);
- **presence ranking**: the phrase's raw peak (max cosine over seen cells: what the presence score is computed
  from) on its own film is above the peak of every *absent* case in the batch by ``margin``: the same phrase on the
  film's twin (same patient, nothing there), the phrase with its side word swapped, with its zone word swapped,
  and the negated phrase, all on the same film (``softplus((absent - present + margin) / rank_temperature)`` over
  all present x absent pairs of the batch, so peaks are comparable across films, which a calibrated threshold needs);
- **out of box**: a swapped or negated phrase's softmax keeps its mass off the true phrase's boxes
  (``-log(1 - mass in box)``): "left effusion" must not light the right effusion;
- **negation shape**: the map of "no P" is not the map of P: ``relu(r + 0.1)`` of their Pearson r over the seen
  cells (the evaluation's negation check wants r <= 0).

Inputs are tensors so the loss is independent of where the negatives come from (see
:mod:`elvis_core.training.word_finetune` for the phantom data and :mod:`elvis_core.grounding.word_following` for the
swaps, which the evaluation uses too).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from elvis_core.grounding.sides import negated
from elvis_core.grounding.word_following import swap_side, swap_zone


def negatives_for(phrase: str) -> List[str]:
    """The hard-negative phrases of ``phrase``: side-swapped, zone-swapped, negated (those that exist)."""
    out = []
    s = swap_side(phrase)
    if s:
        out.append(s)
    z = swap_zone(phrase)
    if z:
        out.append(z[0])
    out.append(negated(phrase))
    return [o for o in dict.fromkeys(out) if o.strip().lower() != phrase.strip().lower()]


class WordNegatives(nn.Module):
    """See the module docstring. ``forward`` returns (total loss, parts dict of floats)."""

    def __init__(self, temperature: float = 0.1, margin: float = 0.1, rank_temperature: float = 0.05,
                 box_weight: float = 1.0, rank_weight: float = 1.0, out_of_box_weight: float = 0.5,
                 negation_weight: float = 0.0):
        super().__init__()
        self.t = float(temperature)
        self.margin = float(margin)
        self.rt = float(rank_temperature)
        self.w = {"box": float(box_weight), "rank": float(rank_weight), "out_of_box": float(out_of_box_weight),
                  "negation": float(negation_weight)}

    @staticmethod
    def _pearson(a: torch.Tensor, b: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """Per-row Pearson r of two [N, gh, gw] maps over the seen cells."""
        m = seen.flatten(1).float()
        n = m.sum(1).clamp_min(2)
        a, b = a.flatten(1), b.flatten(1)
        a = (a - (a * m).sum(1, keepdim=True) / n[:, None]) * m
        b = (b - (b * m).sum(1, keepdim=True) / n[:, None]) * m
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)

    @staticmethod
    def _sim(patch: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """[N, gh, gw, D] x [N, D] -> [N, gh, gw] cosines (both unit-normalised)."""
        return torch.einsum("nhwd,nd->nhw", patch, emb)

    def _log_softmax(self, sim: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        logits = (sim / self.t).masked_fill(~seen, float("-inf")).flatten(1)
        return F.log_softmax(logits, dim=1).view_as(sim)

    @staticmethod
    def _peak(sim: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        return sim.masked_fill(~seen, -2.0).flatten(1).amax(1)

    def forward(self, patch: torch.Tensor, twin_patch: torch.Tensor, seen: torch.Tensor, pos_emb: torch.Tensor,
                owner: torch.Tensor, box: torch.Tensor, neg_emb: Optional[torch.Tensor] = None,
                neg_of: Optional[torch.Tensor] = None, neg_is_negation: Optional[torch.Tensor] = None):
        """``patch`` / ``twin_patch`` [B, gh, gw, D]; ``seen`` bool [B, gh, gw]; ``pos_emb`` [P, D] with ``owner``
        [P] (image index) and ``box`` bool [P, gh, gw]; ``neg_emb`` [N, D] with ``neg_of`` [N] (index of the
        positive phrase it negates; on that phrase's film); ``neg_is_negation`` bool [N]: which negatives are
        "no P" (for the negation-shape term)."""
        sp = seen[owner]
        sim = self._sim(patch[owner], pos_emb)
        logp = self._log_softmax(sim, sp)
        in_box = box & sp
        box_loss = -torch.logsumexp(logp.masked_fill(~in_box, float("-inf")).flatten(1), dim=1)
        box_loss = box_loss[in_box.flatten(1).any(1)].mean() if in_box.any() else sim.sum() * 0
        present = self._peak(sim, sp)
        absent = [self._peak(self._sim(twin_patch[owner], pos_emb), sp)]
        oob = sim.sum() * 0
        neg_r = sim.sum() * 0
        if neg_emb is not None and len(neg_emb):
            nsp = sp[neg_of]
            nsim = self._sim(patch[owner[neg_of]], neg_emb)
            absent.append(self._peak(nsim, nsp))
            nlogp = self._log_softmax(nsim, nsp)
            mass = torch.exp(torch.logsumexp(nlogp.masked_fill(~(box[neg_of] & nsp), float("-inf")).flatten(1), 1))
            oob = -torch.log((1 - mass).clamp_min(1e-4)).mean()
            if neg_is_negation is not None and bool(neg_is_negation.any()) and self.w["negation"]:
                k = neg_is_negation
                r = self._pearson(sim[neg_of[k]], nsim[k], nsp[k])
                neg_r = torch.relu(r + 0.1).mean()
        ab = torch.cat(absent)
        rank = F.softplus((ab[None, :] - present[:, None] + self.margin) / self.rt).mean() * self.rt
        total = (self.w["box"] * box_loss + self.w["rank"] * rank + self.w["out_of_box"] * oob
                 + self.w["negation"] * neg_r)
        parts: Dict[str, float] = {"box": float(box_loss.detach()), "rank": float(rank.detach()),
                                   "out_of_box": float(oob.detach()), "negation": float(neg_r.detach()),
                                   "present_peak": float(present.detach().mean()),
                                   "absent_peak": float(ab.detach().mean())}
        return total, parts
