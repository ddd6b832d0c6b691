"""Projection heads and the BioViL-T image fusion, as plain modules over channels-last features.

Projection head kinds (``model.projection.image_head`` / ``text_head``), each applied on the last dimension of
``[..., C]`` (on an image grid ``[B, gh, gw, C]`` a linear layer *is* a 1x1 convolution):

- ``"linear-gelu-linear"``: Linear → GELU → Linear (our default; tensors ``fc1``, ``fc2``).
- ``"linear-bn-relu-linear"``: Linear (no bias) → BatchNorm → ReLU → Linear (BioViL's image projector,
  conv1x1-BN-ReLU-conv1x1; ``fc1``, ``bn``, ``fc2``). BatchNorm1d over the flattened ``[N, C]`` positions normalises
  per channel over batch and grid, exactly as BatchNorm2d over ``[B, C, gh, gw]``.
- ``"linear-gelu-layernorm-linear"``: Linear → GELU → LayerNorm(eps 1e-12) → Linear (CXR-BERT's
  ``cls_projection_head``; ``fc1``, ``ln``, ``fc2``).

:class:`TemporalFusion` (``model.image.fusion.kind = "biovil-t"``) is BioViL-T's multi-image encoder head written
from its description: the backbone grid is reduced by a 1x1 convolution (``backbone_to_vit``, no bias) to ``dim``
channels; a second ``dim``-channel "difference" grid is concatenated. With a previous image, the difference grid
is the output of a small transformer (:class:`VitPooler`) over the current and previous patch tokens; without
one (the viewer's case: a single study image) it is a learned ``missing_previous_emb`` vector at every cell.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

HEAD_KINDS = ("linear-gelu-linear", "linear-bn-relu-linear", "linear-gelu-layernorm-linear")


class ProjectionHead(nn.Module):
    """A two-layer projection of the last dimension; ``kind`` is one of :data:`HEAD_KINDS`."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, kind: str = "linear-gelu-linear"):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"unknown projection head kind {kind!r} (known: {', '.join(HEAD_KINDS)})")
        self.kind = kind
        self.fc1 = nn.Linear(in_dim, hidden, bias=kind != "linear-bn-relu-linear")
        if kind == "linear-bn-relu-linear":
            self.bn = nn.BatchNorm1d(hidden)
        elif kind == "linear-gelu-layernorm-linear":
            self.ln = nn.LayerNorm(hidden, eps=1e-12)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.kind == "linear-gelu-linear":
            h = F.gelu(h)
        elif self.kind == "linear-bn-relu-linear":
            shape = h.shape
            h = F.relu(self.bn(h.reshape(-1, shape[-1])).reshape(shape))
        else:
            h = self.ln(F.gelu(h))
        return self.fc2(h)


def sine_positions(grid: Sequence[int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """2-D sine/cosine position embedding ``[gh * gw, dim]`` (DETR's normalised form: y half then x half, each
    position scaled to (0, 2 pi], interleaved sin/cos per frequency), as BioViL-T's pooler uses."""
    gh, gw = int(grid[0]), int(grid[1])
    half = dim // 2
    scale = 2 * math.pi
    ys = torch.arange(1, gh + 1, dtype=torch.float32) / (gh + 1e-6) * scale
    xs = torch.arange(1, gw + 1, dtype=torch.float32) / (gw + 1e-6) * scale
    i = torch.arange(half, dtype=torch.float32)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / half)

    def enc(v: torch.Tensor) -> torch.Tensor:  # [n] -> [n, half]
        p = v[:, None] / freq
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    py = enc(ys)[:, None, :].expand(gh, gw, half)
    px = enc(xs)[None, :, :].expand(gh, gw, half)
    return torch.cat((py, px), dim=2).reshape(gh * gw, 2 * half)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.proj_q = nn.Linear(dim, dim, bias=False)
        self.proj_k = nn.Linear(dim, dim, bias=False)
        self.proj_v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads

        def split(t):
            return t.reshape(b, n, h, c // h).transpose(1, 2)

        q, k, v = split(self.proj_q(x)), split(self.proj_k(x)), split(self.proj_v(x))
        attn = (q @ k.transpose(-2, -1)) * (c // h) ** -0.5
        o = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(o)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block; position + type embeddings are added to the normalised input of attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x) + emb)
        return x + self.mlp(self.norm2(x))


class VitPooler(nn.Module):
    """BioViL-T's transformer over current (+ previous) patch tokens; returns the current image's tokens as a grid.

    ``forward(current [B, gh, gw, C], previous [B, gh, gw, C] | None) -> [B, gh, gw, C]``. Dropout / drop-path of
    the original are training-time only and left out (this module runs in eval for imported models; training it
    further is possible but without those regularisers)."""

    def __init__(self, dim: int, heads: int = 8, blocks: int = 3, grid: Sequence[int] = (14, 14)):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.blocks = nn.ModuleList([_Block(dim, heads) for _ in range(blocks)])
        self.norm_post = nn.LayerNorm(dim, eps=1e-6)
        self.type_embed = nn.Parameter(torch.zeros(2, 1, dim))
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        self.register_buffer("pos_embed", sine_positions(self.grid, dim), persistent=False)

    def forward(self, current: torch.Tensor, previous: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, gh, gw, c = current.shape
        if (gh, gw) != self.grid:
            raise ValueError(f"the temporal pooler was built for a {self.grid[0]}x{self.grid[1]} grid, got {gh}x{gw} "
                             f"(use the model's input size)")
        n = gh * gw
        x = current.reshape(b, n, c)
        emb = self.pos_embed.to(x.dtype)[None].expand(b, n, c) + self.type_embed[0].expand(b, n, c)
        if previous is not None:
            x = torch.cat((x, previous.reshape(b, n, c)), dim=1)
            emb = torch.cat((emb, self.pos_embed.to(x.dtype)[None].expand(b, n, c)
                             + self.type_embed[1].expand(b, n, c)), dim=1)
        for blk in self.blocks:
            x = blk(x, emb)
        x = self.norm_post(x)
        return x[:, :n].reshape(b, gh, gw, c)


class TemporalFusion(nn.Module):
    """BioViL-T image head: ``[B, gh, gw, C_backbone]`` → ``[B, gh, gw, 2 * dim]`` (current ‖ difference)."""

    def __init__(self, in_channels: int, dim: int = 256, heads: int = 8, blocks: int = 3,
                 grid: Sequence[int] = (14, 14)):
        super().__init__()
        self.backbone_to_vit = nn.Linear(in_channels, dim, bias=False)
        self.vit_pooler = VitPooler(dim, heads=heads, blocks=blocks, grid=grid)
        self.missing_previous_emb = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.missing_previous_emb, std=0.02)
        self.out_channels = 2 * dim

    def forward(self, feats: torch.Tensor, previous_feats: Optional[torch.Tensor] = None) -> torch.Tensor:
        cur = self.backbone_to_vit(feats)
        if previous_feats is None:
            diff = self.missing_previous_emb.to(cur.dtype).expand_as(cur)
        else:
            diff = self.vit_pooler(cur, self.backbone_to_vit(previous_feats))
        return torch.cat((cur, diff), dim=-1)
