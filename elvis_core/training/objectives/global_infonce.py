"""Global image–report contrastive loss (CLIP / ConVIRT).

Papers: InfoNCE (van den Oord et al., arXiv 1807.03748); ConVIRT (Zhang et al., arXiv 2010.00747), the first
image–report contrastive pre-training on chest X-rays; CLIP (Radford et al., arXiv 2103.00020) for the learnable
temperature (stored as log(1/tau), the scale clamped at 100).

What we changed: nothing in the loss. Under DDP the global embeddings of all ranks are gathered
(:func:`~elvis_core.training.objectives.shared.all_gather_with_grad`) so every rank sees the negatives of the whole
global batch; each rank's loss is the mean over ITS rows of the global logit matrix, weighted so that DDP's gradient
average equals the gradient of the single-process loss over the global batch (tested in ``tests/core/test_ddp.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from elvis_core.training.objectives.shared import _rank_offset, all_gather_with_grad, dist_info


class GlobalInfoNCE(nn.Module):
    """Symmetric InfoNCE over image and report global embeddings.

    ``temperature``: initial tau (logits = cos / tau); ``learnable``: tau is a parameter (stored as log(1/tau), the
    scale clamped at ``max_scale``); ``gather``: use the negatives of all DDP ranks.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = True, gather: bool = True,
                 max_scale: float = 100.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        init = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)
        self.gather = gather
        self.max_scale = max_scale

    @property
    def temperature(self) -> float:
        return float(1.0 / self.log_scale.detach().exp().clamp(max=self.max_scale))

    def forward(self, image_global: torch.Tensor, text_global: torch.Tensor) -> torch.Tensor:
        b = image_global.shape[0]
        rank, world = dist_info()
        if self.gather and world > 1:
            all_img, all_txt = all_gather_with_grad(image_global), all_gather_with_grad(text_global)
            offset = _rank_offset(b, image_global.device)
        else:
            all_img, all_txt, offset = image_global, text_global, 0
        scale = self.log_scale.exp().clamp(max=self.max_scale)
        labels = torch.arange(b, device=image_global.device) + offset
        logits_i2t = scale * image_global @ all_txt.t()  # [B, B_global]
        logits_t2i = scale * text_global @ all_img.t()
        ce = F.cross_entropy(logits_i2t.float(), labels, reduction="sum") \
            + F.cross_entropy(logits_t2i.float(), labels, reduction="sum")
        # rows of this rank, weighted so that DDP's gradient average equals the gradient of the mean over the whole
        # gathered batch (also when ranks hold different numbers of rows); = the plain mean when world == 1
        n_total = all_img.shape[0]
        return 0.5 * ce * (world if self.gather else 1) / (n_total if self.gather else b)
