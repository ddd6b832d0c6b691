"""Negation-aware term (objective ``negation``; ours).

Papers: none of the seed papers has it. Related in spirit: NegCLIP's hard negatives (Yuksekgonul et al., "When and why
vision-language models behave like bags-of-words", arXiv 2210.01936), which negate by word-order perturbation
instead.

What it does: for an affirmative finding sentence and its copy "no <sentence>" (:func:`negated_sentence`), the patches
the sentence attends to must match "no ..." less than they match the sentence, and less than the image's other
patches match "no ...".
"""

from __future__ import annotations

import re
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


_FINDING_WORDS = ("effusion", "pneumothorax", "opacit", "consolidation", "atelectasis", "pneumonia", "edema",
                  "cardiomegaly", "enlarge", "airspace")
_NEG_CUES = re.compile(r"\b(no|not|without|negative|clear|normal|resolved|sharp)\b", re.IGNORECASE)
_LEAD = re.compile(r"^(there (is|are) (likely )?|findings include |redemonstration of |interval development of |"
                   r"new |possible |probable )", re.IGNORECASE)


def negated_sentence(sentence: str) -> Optional[str]:
    """"no <finding>" for an affirmative sentence that names a finding ("There is a small left effusion." ->
    "no a small left effusion"... with the lead-in dropped: "no small left effusion"), else None (already negated,
    or no finding word). The grounding check negates a phrase the same way (``"no " + phrase``)."""
    t = sentence.strip().rstrip(".").strip()
    low = t.lower()
    if not any(w in low for w in _FINDING_WORDS) or _NEG_CUES.search(low):
        return None
    t = _LEAD.sub("", t)
    t = re.sub(r"^(a|an) ", "", t, flags=re.IGNORECASE)
    return "no " + t[:1].lower() + t[1:]


class NegationContrast(nn.Module):
    """Negation-aware term (ours; none of the seed papers has it): for an affirmative finding sentence ``s`` of a
    report and its negated copy ``s'`` = "no <s>" (:func:`negated_sentence`), the image's patches that ``s`` attends to
    (``a_k = softmax_k(p_k . e_s / attn_temperature)``, detached) must be less similar to ``e_s'`` than to ``e_s``
    AND than the image's other patches are to ``e_s'``: with ``m' = sum_k a_k p_k . e_s'``, loss =
    ``(softplus((m' - sum_k a_k p_k . e_s) / temperature) + softplus((m' - mean_k p_k . e_s') / temperature)) / 2``,
    mean over pairs. So the map of "no X" is low where X is (a shift of the whole map would not change its Pearson
    correlation with the map of X; the second term changes its shape). The phantom reports' own negatives ("No left
    pneumothorax.") are trained by the other terms like any sentence."""

    def __init__(self, temperature: float = 0.1, attn_temperature: float = 0.1):
        super().__init__()
        self.temperature, self.attn_temperature = temperature, attn_temperature

    def forward(self, patch_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, owner: torch.Tensor):
        """patch_emb [B, gh, gw, D]; pos / neg [T, D] normalised (sentence, its negated copy); owner [T] image."""
        if pos.shape[0] == 0:
            return patch_emb.sum() * 0.0
        p = patch_emb.flatten(1, -2)[owner]  # [T, N, D]
        sp = torch.einsum("tnd,td->tn", p, pos)
        sn = torch.einsum("tnd,td->tn", p, neg)
        a = torch.softmax(sp.detach() / self.attn_temperature, dim=-1)
        at_x = (a * sn).sum(-1)  # the "no X" map where X is
        vs_x = F.softplus((at_x - (a * sp).sum(-1)) / self.temperature)  # below the X map there
        vs_rest = F.softplus((at_x - sn.mean(-1)) / self.temperature)  # and below its own image mean
        return 0.5 * (vs_x + vs_rest).mean()
