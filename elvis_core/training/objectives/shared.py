"""Shared pieces of the objectives: DDP gathering, report sentences (spans of one encoding or separately encoded
sentences), token masks. No method of its own; the methods are the other modules of this package.

Notation used by every objective module: B batch (per process), N = gh*gw image patches, L tokens, D joint dimension.
All embeddings given to the objectives are L2-normalised (as :class:`~elvis_core.model.elvis.ElvisModel` returns
them), so dot products are cosines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F


# -- distributed helpers -------------------------------------------------------------------------------------------

def dist_info():
    """(rank, world_size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """all_gather (rows may differ per rank) whose backward sums the gradients of every rank for this rank's rows
    (all_reduce + slice), so gradients flow back to the rank that produced each row. Works with gloo and nccl."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = dist_info()
        n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
        sizes = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes, n)
        sizes = [int(s.item()) for s in sizes]
        m = max(sizes)
        padded = x.new_zeros((m,) + tuple(x.shape[1:]))
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.rank, ctx.sizes, ctx.m = rank, sizes, m
        return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        full = grad.new_zeros((len(ctx.sizes) * ctx.m,) + tuple(grad.shape[1:]))
        off = 0
        for r, s in enumerate(ctx.sizes):
            full[r * ctx.m:r * ctx.m + s] = grad[off:off + s]
            off += s
        dist.all_reduce(full, op=dist.ReduceOp.SUM)
        return full[ctx.rank * ctx.m:ctx.rank * ctx.m + ctx.sizes[ctx.rank]]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B_r, ...] of all ranks along dim 0 (rank order), differentiably; ``x`` itself without DDP.
    Ranks may hold different B_r (e.g. when an unreadable image was dropped from one rank's batch)."""
    _, world = dist_info()
    if world == 1:
        return x
    return _AllGather.apply(x)


def _rank_offset(n: int, device) -> int:
    """Index of this rank's first row in the gathered batch."""
    rank, world = dist_info()
    t = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(sizes, t)
    return int(sum(int(s.item()) for s in sizes[:rank]))


# -- sentences -------------------------------------------------------------------------------------------------------

def sentence_embeddings(token_emb: torch.Tensor, sentence_ids: torch.Tensor):
    """Mean of the tokens of each sentence, L2-normalised. Returns (emb [S_total, D], owner [S_total] sample index).
    ``sentence_ids`` [B, L]: sentence index per token, -1 for tokens of no sentence ([CLS], [SEP], padding)."""
    x, valid = sentence_tensors(token_emb, sentence_ids)
    owner = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(valid)[valid]
    return F.normalize(x[valid], dim=-1), owner


def sentence_tensors(token_x: torch.Tensor, sentence_ids: torch.Tensor):
    """Per-sample padded sentence means: (x [B, S, D] = mean of the sentence's tokens of ``token_x`` [B, L, D],
    valid [B, S] bool). S = the largest sentence count of the batch; not normalised."""
    b = token_x.shape[0]
    n_s = int(sentence_ids.max().item()) + 1 if sentence_ids.numel() and sentence_ids.max() >= 0 else 0
    if n_s == 0:
        return token_x.new_zeros((b, 0, token_x.shape[-1])), torch.zeros(b, 0, dtype=torch.bool,
                                                                          device=token_x.device)
    onehot = (sentence_ids.unsqueeze(1) == torch.arange(n_s, device=token_x.device).view(1, -1, 1))  # [B, S, L]
    cnt = onehot.sum(-1)  # [B, S]
    x = torch.einsum("bsl,bld->bsd", onehot.to(token_x.dtype), token_x) / cnt.clamp_min(1).unsqueeze(-1)
    return x, cnt > 0


_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")
_ENUM = re.compile(r"^\(?\d{1,2}[.)]\s*$")


def split_sentences(text: str, max_sentences: int = 16) -> List[str]:
    """Sentences of a (whitespace-collapsed) report text: split after ``.``/``!``/``?`` + space; list numbers
    ("1.") are dropped, so are fragments without a letter. At most ``max_sentences`` (the first ones)."""
    out = []
    for part in _SENT_SPLIT.split(text.strip()):
        part = part.strip()
        if not part or _ENUM.match(part) or not any(ch.isalpha() for ch in part):
            continue
        out.append(part)
        if len(out) >= max_sentences:
            break
    return out


@dataclass
class Sentences:
    """Separately encoded sentences of each report, padded per sample: ``emb`` [B, S, D] (the text encoder's pooled
    embedding of each sentence alone, projected, L2-normalised: what a phrase gets at grounding time), ``feats``
    [B, S, H] (the same before projection), ``valid`` [B, S] bool."""

    emb: torch.Tensor
    feats: torch.Tensor
    valid: torch.Tensor
    #: negated copies of affirmative finding sentences (``negation`` objective): (pos [T, D], neg [T, D], owner [T])
    negations: Optional[tuple] = None
    #: ``mirror`` objective: (mirrored patch_emb flipped back [B, gh, gw, D], sentence [T, D], swapped copy [T, D],
    #: owner [T])
    mirrors: Optional[tuple] = None

    @staticmethod
    def pack(emb: torch.Tensor, feats: torch.Tensor, owner: torch.Tensor, batch_size: int) -> "Sentences":
        """From flat per-sentence rows (``owner`` [T] = sample index, rows of a sample in order)."""
        counts = torch.bincount(owner, minlength=batch_size) if owner.numel() else \
            torch.zeros(batch_size, dtype=torch.long, device=emb.device)
        s_max = int(counts.max().item()) if owner.numel() else 0
        slot = torch.zeros_like(owner)
        if owner.numel():
            starts = torch.cumsum(counts, 0) - counts
            slot = torch.arange(owner.numel(), device=owner.device) - starts[owner]
        e = emb.new_zeros((batch_size, s_max, emb.shape[-1]))
        f = feats.new_zeros((batch_size, s_max, feats.shape[-1]))
        v = torch.zeros(batch_size, s_max, dtype=torch.bool, device=emb.device)
        e[owner, slot] = emb
        f[owner, slot] = feats
        v[owner, slot] = True
        return Sentences(e, f, v)


def word_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids) -> torch.Tensor:
    """[B, L] long: 1 for real word pieces (not padding, not [CLS]/[SEP]/other special tokens)."""
    m = attention_mask.bool()
    for sid in special_ids:
        m &= input_ids != int(sid)
    return m.long()


def sentence_ids_from_tokens(input_ids: torch.Tensor, words: torch.Tensor, period_ids) -> torch.Tensor:
    """[B, L] sentence index of each word token (a period token closes a sentence and belongs to it), -1 elsewhere."""
    out = torch.full_like(input_ids, -1)
    periods = torch.zeros_like(words, dtype=torch.bool)
    for pid in period_ids:
        periods |= input_ids == int(pid)
    # sentence index = number of periods strictly before this token
    before = torch.cumsum(periods.long(), dim=1) - periods.long()
    out[words.bool()] = before[words.bool()]
    return out
