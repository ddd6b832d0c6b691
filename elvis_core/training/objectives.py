"""Training objectives, each an ``nn.Module`` returning a scalar loss; combined by weights from the config.

Notation: B batch (per process), N = gh*gw image patches, L tokens, D joint dimension. All embeddings given to these
modules are L2-normalised (as :class:`~elvis_core.model.elvis.ElvisModel` returns them), so dot products are cosines.

- :class:`GlobalInfoNCE` — symmetric image–report InfoNCE (CLIP). Under DDP the global embeddings of all ranks are
  gathered (:func:`all_gather_with_grad`) so every rank sees the negatives of the whole global batch; each rank's loss
  is the mean over ITS rows of the global logit matrix. With DDP's gradient averaging this gives exactly the
  gradient of the single-process loss over the global batch (tested in ``tests/core/test_ddp.py``).
- :class:`LocalTokenPatch` — GLoRIA/BioViL-style word–region alignment: for every (image i, report j) pair each word
  of j attends over i's patches, the attended context is compared (cosine) with the word, word scores aggregate
  (log-sum-exp or mean) into a pair score, and a symmetric contrastive loss runs over the batch. Local to a rank.
- :class:`RegionSentence` — LoVT-style region–sentence alignment within each sample: sentences attend over patches
  and patches over sentences; contrastive losses whose negatives are the other sentences (of the batch) and the
  other patches (of the same image).
- :class:`IntraModalSimilarity` — the ELVIS objective (our reading of arXiv 2304.05303): the similarity structure
  among a modality's local features BEFORE projection (``patch_feats`` / ``token_feats``) is the target for the
  structure AFTER projection (``patch_emb`` / ``token_emb``), row by row, with KL of softmaxed rows or MSE.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


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


# -- global ---------------------------------------------------------------------------------------------------------

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


# -- local token–patch ----------------------------------------------------------------------------------------------

class LocalTokenPatch(nn.Module):
    """GLoRIA/BioViL-style word–region alignment with a contrastive loss over the batch.

    For image i and report j: ``a[w, k] = softmax_k(t_jw . p_ik / attn_temperature)``, ``c_w = sum_k a[w,k] p_ik``,
    ``r_w = cos(c_w, t_jw)``; pair score ``S[i, j] = (1/gamma) log sum_w exp(gamma r_w)`` (``aggregation="lse"``,
    GLoRIA) or the mean of ``r_w`` (``"mean"``), over the words of j (``token_mask``). Loss: symmetric cross-entropy of
    ``S / temperature`` with the matching pairs on the diagonal.
    """

    def __init__(self, temperature: float = 0.1, attn_temperature: float = 0.1, aggregation: str = "lse",
                 gamma: float = 5.0):
        super().__init__()
        if aggregation not in ("lse", "mean"):
            raise ValueError("aggregation must be 'lse' or 'mean'")
        self.temperature, self.attn_temperature = temperature, attn_temperature
        self.aggregation, self.gamma = aggregation, gamma

    def pair_scores(self, patch_emb: torch.Tensor, token_emb: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """S [B_img, B_txt]."""
        p = patch_emb.flatten(1, -2) if patch_emb.ndim == 4 else patch_emb  # [B, N, D]
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


# -- region–sentence (LoVT style) -----------------------------------------------------------------------------------

def sentence_embeddings(token_emb: torch.Tensor, sentence_ids: torch.Tensor):
    """Mean of the tokens of each sentence, L2-normalised. Returns (emb [S_total, D], owner [S_total] sample index).
    ``sentence_ids`` [B, L]: sentence index per token, -1 for tokens of no sentence ([CLS], [SEP], padding)."""
    embs, owners = [], []
    for b in range(token_emb.shape[0]):
        ids = sentence_ids[b]
        for s in torch.unique(ids[ids >= 0]).tolist():
            embs.append(token_emb[b][ids == s].mean(0))
            owners.append(b)
    if not embs:
        return token_emb.new_zeros((0, token_emb.shape[-1])), torch.zeros(0, dtype=torch.long)
    return F.normalize(torch.stack(embs), dim=-1), torch.tensor(owners, dtype=torch.long, device=token_emb.device)


class RegionSentence(nn.Module):
    """LoVT-style local alignment between image regions (patches) and report sentences.

    Sentence e_s (mean of its token embeddings) attends over its own image's patches:
    ``z_s = normalize(sum_k softmax_k(e_s . p_k / attn_temperature) p_k)``; text-side loss = cross-entropy of
    ``z_s . e_s' / temperature`` over ALL sentences s' of the batch, target s. Patch p_k attends over its own report's
    sentences: ``u_k = normalize(sum_s softmax_s(p_k . e_s / attn_temperature) e_s)``; image-side loss =
    cross-entropy of ``u_k . p_k' / temperature`` over the patches k' of the SAME image, target k (LoVT's negatives).
    Loss = ``text_weight * text_side + image_weight * image_side``.
    """

    def __init__(self, temperature: float = 0.1, attn_temperature: float = 0.1, text_weight: float = 0.5,
                 image_weight: float = 0.5):
        super().__init__()
        self.temperature, self.attn_temperature = temperature, attn_temperature
        self.text_weight, self.image_weight = text_weight, image_weight

    def forward(self, patch_emb: torch.Tensor, token_emb: torch.Tensor, sentence_ids: torch.Tensor) -> torch.Tensor:
        p = patch_emb.flatten(1, -2) if patch_emb.ndim == 4 else patch_emb  # [B, N, D]
        e, owner = sentence_embeddings(token_emb, sentence_ids)
        if e.shape[0] == 0:
            return p.sum() * 0.0
        # text side: sentence -> own image's patches
        pe = p[owner]  # [S, N, D]
        a = torch.softmax(torch.einsum("sd,snd->sn", e, pe) / self.attn_temperature, dim=-1)
        z = F.normalize(torch.einsum("sn,snd->sd", a, pe), dim=-1)
        logits = (z @ e.t()).float() / self.temperature
        text_loss = F.cross_entropy(logits, torch.arange(e.shape[0], device=e.device))
        # image side: patch -> own report's sentences, negatives are the other patches of the same image
        image_losses = []
        for b in range(p.shape[0]):
            eb = e[owner == b]
            if eb.shape[0] == 0:
                continue
            att = torch.softmax(p[b] @ eb.t() / self.attn_temperature, dim=-1)  # [N, Sb]
            u = F.normalize(att @ eb, dim=-1)  # [N, D]
            lg = (u @ p[b].t()).float() / self.temperature
            image_losses.append(F.cross_entropy(lg, torch.arange(p.shape[1], device=p.device)))
        image_loss = torch.stack(image_losses).mean()
        return self.text_weight * text_loss + self.image_weight * image_loss


# -- ELVIS intra-modal similarity -----------------------------------------------------------------------------------

def _cos_matrix(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x if x.dtype == torch.float64 else x.float(), dim=-1)
    return x @ x.transpose(-1, -2)


class IntraModalSimilarity(nn.Module):
    """ELVIS intra-modal similarity preservation (our reading of arXiv 2304.05303).

    For each sample, ``T = cos(feats_i, feats_j)`` among local features BEFORE projection (the target, detached by
    default) and ``P = cos(emb_i, emb_j)`` AFTER projection, over valid positions (all patches; the word tokens,
    i.e. not padding / [CLS] / [SEP]). ``distance="kl"``: mean over rows i of ``KL(softmax_j(T_i / target_temperature) ||
    softmax_j(P_i / temperature))``; ``"mse"``: mean over (i, j) of ``(T_ij - P_ij)^2``. ``exclude_self`` drops the
    diagonal (always 1 on both sides). Loss = ``image_weight * patches + text_weight * tokens``.
    """

    def __init__(self, distance: str = "kl", temperature: float = 0.1, target_temperature: Optional[float] = None,
                 detach_target: bool = True, exclude_self: bool = True, image_weight: float = 1.0,
                 text_weight: float = 1.0):
        super().__init__()
        if distance not in ("kl", "mse"):
            raise ValueError("distance must be 'kl' or 'mse'")
        self.distance, self.temperature = distance, temperature
        self.target_temperature = temperature if target_temperature is None else target_temperature
        self.detach_target, self.exclude_self = detach_target, exclude_self
        self.image_weight, self.text_weight = image_weight, text_weight

    def structure_loss(self, feats: torch.Tensor, emb: torch.Tensor,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``feats`` [B, M, C], ``emb`` [B, M, D], ``mask`` [B, M] (1 = valid) → scalar."""
        t = _cos_matrix(feats)
        if self.detach_target:
            t = t.detach()
        p = _cos_matrix(emb)
        b, m = t.shape[:2]
        valid = torch.ones(b, m, dtype=torch.bool, device=t.device) if mask is None else mask.bool()
        pair = valid.unsqueeze(2) & valid.unsqueeze(1)  # [B, M, M]
        if self.exclude_self:
            pair = pair & ~torch.eye(m, dtype=torch.bool, device=t.device)
        if self.distance == "mse":
            w = pair.float()
            return ((t - p) ** 2 * w).sum() / w.sum().clamp_min(1.0)
        neg = torch.finfo(t.dtype).min
        lt = torch.log_softmax((t / self.target_temperature).masked_fill(~pair, neg), dim=-1)
        lp = torch.log_softmax((p / self.temperature).masked_fill(~pair, neg), dim=-1)
        kl = (lt.exp() * (lt - lp)).masked_fill(~pair, 0.0).sum(-1)  # [B, M]
        rows = pair.any(-1)
        return (kl * rows).sum() / rows.sum().clamp_min(1)

    def forward(self, patch_feats, patch_emb, token_feats, token_emb, token_mask) -> torch.Tensor:
        total = patch_emb.new_zeros(())
        if self.image_weight:
            total = total + self.image_weight * self.structure_loss(patch_feats.flatten(1, -2),
                                                                    patch_emb.flatten(1, -2))
        if self.text_weight:
            total = total + self.text_weight * self.structure_loss(token_feats, token_emb, token_mask)
        return total


# -- combination ----------------------------------------------------------------------------------------------------

#: objective name -> (class, default options); weights come from the training config ([objectives] table)
OBJECTIVES = {
    "global": (GlobalInfoNCE, {"temperature": 0.07, "learnable": True, "gather": True}),
    "local": (LocalTokenPatch, {"temperature": 0.1, "attn_temperature": 0.1, "aggregation": "lse", "gamma": 5.0}),
    "region_sentence": (RegionSentence, {"temperature": 0.1, "attn_temperature": 0.1, "text_weight": 0.5,
                                         "image_weight": 0.5}),
    "intra": (IntraModalSimilarity, {"distance": "kl", "temperature": 0.1, "target_temperature": 0.1,
                                     "detach_target": True, "exclude_self": True, "image_weight": 1.0,
                                     "text_weight": 1.0}),
}


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


class CombinedObjective(nn.Module):
    """Weighted sum of the enabled objectives. ``weights``: name -> float (0 disables); ``options``: name -> kwargs.

    :meth:`forward` takes the two embedding objects and the token masks and returns ``(total, {name: value})``.
    """

    def __init__(self, weights: Dict[str, float], options: Optional[Dict[str, dict]] = None):
        super().__init__()
        options = options or {}
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
            self.terms[name] = cls(**kw)

    def forward(self, img, txt, words: torch.Tensor, sentence_ids: Optional[torch.Tensor] = None):
        parts: Dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            if name == "global":
                parts[name] = term(img.global_emb, txt.global_emb)
            elif name == "local":
                parts[name] = term(img.patch_emb, txt.token_emb, words)
            elif name == "region_sentence":
                parts[name] = term(img.patch_emb, txt.token_emb, sentence_ids)
            elif name == "intra":
                parts[name] = term(img.patch_feats, img.patch_emb, txt.token_feats, txt.token_emb, words)
        total = sum(self.weights[n] * v for n, v in parts.items())
        return total, {n: float(v.detach()) for n, v in parts.items()}
