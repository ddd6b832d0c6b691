"""The mirrored model input of mirror consensus (re-exported by :mod:`elvis_core.grounding.engine`); the grid
smoothing lives in :mod:`elvis_core.grounding.mapbuild` (torch-free, shared with the ONNX engine)."""

from __future__ import annotations

import torch


def mirror_model_input(x: torch.Tensor, stride: int, transform) -> torch.Tensor:
    """The model input [B, 1, S, S] mirrored left-right and moved ``stride - 1`` pixels left, so that the mirrored
    input's grid column j' lies exactly on the original's column G - 1 - j' (a ResNet's output j looks at input pixel
    stride * j: :func:`~elvis_core.model.transforms.grid_cell_offset`). The ``stride - 1`` columns that leave the
    input are the original's rightmost ones; those that enter are the transform's padding value (black)."""
    s = int(x.shape[-1])
    k = max(0, min(int(stride) - 1, s - 1))
    pad = (0.0 - float(getattr(transform, "mean", 0.0))) / float(getattr(transform, "std", 1.0) or 1.0)
    out = torch.full_like(x, pad)
    out[..., : s - k] = x.flip(-1)[..., k:]
    return out
