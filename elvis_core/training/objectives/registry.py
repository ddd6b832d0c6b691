"""The objective registry (name -> class, default options) and :class:`CombinedObjective`, the weighted sum the
trainer optimises. Weights and options come from the training config (``[objectives]`` table)."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from elvis_core.training.objectives.elvis import ElvisLocal
from elvis_core.training.objectives.gloria_local import LocalTokenPatch
from elvis_core.training.objectives.global_infonce import GlobalInfoNCE
from elvis_core.training.objectives.intra import IntraModalSimilarity
from elvis_core.training.objectives.lovt import RegionSentence
from elvis_core.training.objectives.mirror import MirrorConsistency
from elvis_core.training.objectives.negation import NegationContrast
from elvis_core.training.objectives.shared import Sentences


# -- combination ----------------------------------------------------------------------------------------------------

#: objective name -> (class, default options); weights come from the training config ([objectives] table)
OBJECTIVES = {
    "global": (GlobalInfoNCE, {"temperature": 0.07, "learnable": True, "gather": True}),
    "local": (LocalTokenPatch, {"temperature": 0.1, "attn_temperature": 0.1, "aggregation": "lse", "gamma": 5.0,
                                "units": "tokens"}),
    "region_sentence": (RegionSentence, {"temperature": 0.3, "attn_temperature": 0.1, "text_weight": 0.5,
                                         "image_weight": 0.5, "distance_threshold": 0.3, "smooth_lambda": 0.0,
                                         "weighting": "attention"}),
    "elvis": (ElvisLocal, {"temperature": 0.3, "attn_temperature": 0.1, "target_temperature": 0.1,
                           "text_weight": 0.5, "image_weight": 0.5, "similarity_source": "pre_projection",
                           "weighting": "attention"}),
    "intra": (IntraModalSimilarity, {"distance": "kl", "temperature": 0.1, "target_temperature": 0.1,
                                     "detach_target": True, "exclude_self": True, "image_weight": 1.0,
                                     "text_weight": 1.0}),
}


def _anatomy_cls():
    from elvis_core.training.objectives.anatomy import AnatomyAlignment

    return AnatomyAlignment


OBJECTIVES["negation"] = (NegationContrast, {"temperature": 0.1, "attn_temperature": 0.1})
OBJECTIVES["mirror"] = (MirrorConsistency, {"kind": "pearson", "temperature": 0.05})
OBJECTIVES["anatomy"] = (None, {"temperature": 0.1, "width": 128, "layers": 1, "heads": 4})


class CombinedObjective(nn.Module):
    """Weighted sum of the enabled objectives. ``weights``: name -> float (0 disables); ``options``: name -> kwargs.

    :meth:`forward` takes the two embedding objects and the token masks and returns ``(total, {name: value})``.
    """

    def __init__(self, weights: Dict[str, float], options: Optional[Dict[str, dict]] = None,
                 sentences: str = "spans", dims: Optional[Dict[str, int]] = None):
        super().__init__()
        options = options or {}
        if sentences not in ("spans", "separate"):
            raise ValueError("sentences must be 'spans' or 'separate'")
        #: "separate": the trainer also encodes each report sentence alone (:class:`Sentences`) for the
        #: sentence-level objectives (region_sentence, elvis, local with units="sentences")
        self.sentences = sentences
        unknown = sorted(set(weights) - set(OBJECTIVES))
        if unknown:
            raise ValueError(f"unknown objectives: {unknown}")
        self.weights = {k: float(v) for k, v in weights.items() if float(v) != 0.0}
        if not self.weights:
            raise ValueError("at least one objective needs a weight != 0")
        self.terms = nn.ModuleDict()
        for name in self.weights:
            cls, defaults = OBJECTIVES[name]
            kw = dict(defaults)
            kw.update(options.get(name, {}))
            if name == "anatomy":  # GK-MVLP-style: needs the model's dimensions and separately encoded sentences
                if not dims:
                    raise ValueError("the anatomy objective needs the model dimensions (dims)")
                if sentences != "separate":
                    raise ValueError("the anatomy objective needs objectives.sentences = 'separate'")
                cls = _anatomy_cls()
                kw.update(in_dim=int(dims["image_channels"]), out_dim=int(dims["embed_dim"]))
            self.terms[name] = cls(**kw)

    @property
    def needs_separate_sentences(self) -> bool:
        return self.sentences == "separate" or "anatomy" in self.terms or "negation" in self.terms or \
            "mirror" in self.terms or any(
            getattr(t, "units", "") == "sentences" for t in self.terms.values())

    def forward(self, img, txt, words: torch.Tensor, sentence_ids: Optional[torch.Tensor] = None,
                sentences: Optional[Sentences] = None, anatomy: Optional[dict] = None):
        parts: Dict[str, torch.Tensor] = {}
        sep = sentences if self.sentences == "separate" else None
        for name, term in self.terms.items():
            if name == "global":
                parts[name] = term(img.global_emb, txt.global_emb)
            elif name == "local":
                if term.units == "sentences":
                    if sentences is None:
                        raise ValueError("local.units = 'sentences' needs the separately encoded sentences")
                    parts[name] = term(img.patch_emb, sentences.emb, sentences.valid.long())
                else:
                    parts[name] = term(img.patch_emb, txt.token_emb, words)
            elif name == "region_sentence":
                parts[name] = term(img.patch_emb, txt.token_emb, sentence_ids, sentences=sep)
            elif name == "intra":
                parts[name] = term(img.patch_feats, img.patch_emb, txt.token_feats, txt.token_emb, words)
            elif name == "elvis":
                parts[name] = term(img.patch_feats, img.patch_emb, txt.token_feats, txt.token_emb, sentence_ids,
                                   sentences=sep)
            elif name == "negation":
                if sentences is None or sentences.negations is None:
                    raise ValueError("the negation objective needs the separately encoded sentences")
                parts[name] = term(img.patch_emb, *sentences.negations)
            elif name == "mirror":
                if sentences is None or sentences.mirrors is None:
                    raise ValueError("the mirror objective needs the separately encoded sentences and the mirrored "
                                     "image")
                parts[name] = term(img.patch_emb, *sentences.mirrors)
            elif name == "anatomy":
                if sentences is None or not anatomy:
                    raise ValueError("the anatomy objective needs anatomy boxes (data.anatomy) and the separately "
                                     "encoded sentences")
                parts[name] = term(img.patch_feats, sentences.emb, sentences.valid, anatomy["anatomy_masks"],
                                   anatomy["anatomy_mentions"])
        total = sum(self.weights[n] * v for n, v in parts.items())
        return total, {n: float(v.detach()) for n, v in parts.items()}
