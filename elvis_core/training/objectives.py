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
- :class:`RegionSentence` — LoVT (arXiv 2112.03237) region–sentence alignment within each sample: regions attend
  over their report's sentences and sentences over their image's regions; LoVT's intra-sample contrastive loss in
  both directions, spatially smoothed positives for regions, the report's other sentences as negatives,
  attention-weighted region terms.
- :class:`ElvisLocal` (``elvis``) — ELVIS (arXiv 2304.05303) as we read the paper: the same region-level loss with
  SOFT targets from the intra-modal similarity of the pre-projection features (stop-gradient), so similar regions /
  sentences are not pushed apart after projection.
- :class:`IntraModalSimilarity` (``intra``) — the other reading, kept for the ablation: the similarity structure
  among a modality's local features BEFORE projection (``patch_feats`` / ``token_feats``) is the target for the
  structure AFTER projection (``patch_emb`` / ``token_emb``), row by row, with KL of softmaxed rows or MSE.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

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


# -- region–sentence (LoVT) and ELVIS soft-target local loss ----------------------------------------------------------

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


def intra_sample_contrastive(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                             temperature: float, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LoVT's intra-sample local contrastive loss, both directions, with (soft) targets.

    ``a``, ``b`` [B, M, D] L2-normalised (local features and their cross-modal counterparts), ``targets`` [B, M, M]
    (row i: distribution over the positives j of element i; rows sum to 1 over valid j), ``valid`` [B, M] bool,
    ``weights`` [B, M] (per-element weight; normalised to sum 1 over the valid elements of each sample; None =
    uniform). For each valid i: ``l_ab(i) = -sum_j t_ij s_ij + logsumexp_j s_ij`` with ``s_ij = a_i . b_j / tau``
    over the valid j of the same sample (= cross-entropy of softmax_j(s_i.) against t_i.), ``l_ba`` the same with a
    and b swapped. Loss = mean over samples with >= 1 valid element of ``sum_i w_i (l_ab(i) + l_ba(i)) / 2``.
    """
    v = valid.bool()
    if not bool(v.any()):
        return a.sum() * 0.0
    neg = torch.finfo(torch.float32).min
    colmask = ~v.unsqueeze(1)  # [B, 1, M]
    t = targets.float().masked_fill(colmask, 0.0)
    t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
    s_ab = (a.float() @ b.float().transpose(1, 2)) / temperature  # [B, M, M]
    s_ba = s_ab.transpose(1, 2)
    l_ab = -(t * s_ab.masked_fill(colmask, 0.0)).sum(-1) + torch.logsumexp(s_ab.masked_fill(colmask, neg), dim=-1)
    l_ba = -(t * s_ba.masked_fill(colmask, 0.0)).sum(-1) + torch.logsumexp(s_ba.masked_fill(colmask, neg), dim=-1)
    w = torch.ones_like(l_ab) if weights is None else weights.float()
    w = w.masked_fill(~v, 0.0)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    per_sample = (w * 0.5 * (l_ab + l_ba)).sum(-1)  # [B]
    has = v.any(-1)
    return per_sample[has].mean()


def similarity_targets(feats: torch.Tensor, valid: torch.Tensor, target_temperature: float) -> torch.Tensor:
    """ELVIS soft targets: row i = softmax_j(cos(f_i, f_j) / target_temperature) over the valid j, stop-gradient.

    Limits (tested): identical features give cos = 1 everywhere, hence the UNIFORM distribution over the valid
    elements; mutually orthogonal features with ``target_temperature -> 0`` give the ONE-HOT identity, i.e. LoVT's
    "each element is its own only positive"."""
    with torch.no_grad():
        f = F.normalize(feats.detach().float(), dim=-1)
        sim = f @ f.transpose(1, 2)
        sim = sim.masked_fill(~valid.bool().unsqueeze(1), torch.finfo(torch.float32).min)
        return torch.softmax(sim / target_temperature, dim=-1)


def spatial_targets(gh: int, gw: int, distance_threshold: float, smooth_lambda: float = 0.0,
                    device=None) -> torch.Tensor:
    """LoVT's spatially smoothed positives for regions: [N, N] row-normalised weights, positive where the distance
    between cell centres divided by the grid diagonal is <= ``distance_threshold`` (0 = only the cell itself);
    weight ``exp(-smooth_lambda * distance)`` (0 = flat)."""
    yy, xx = torch.meshgrid(torch.arange(gh, dtype=torch.float32, device=device),
                            torch.arange(gw, dtype=torch.float32, device=device), indexing="ij")
    c = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1) / math.sqrt(gh ** 2 + gw ** 2)
    d = torch.cdist(c, c)
    w = (d <= distance_threshold + 1e-9).float() * torch.exp(-smooth_lambda * d)
    return w / w.sum(-1, keepdim=True)


class _LocalCrossModal(nn.Module):
    """Shared part of LoVT's region–sentence loss and ELVIS: cross-modal attention within each sample.

    Regions (patches ``p_k``) attend over their own report's sentences (``e_s``, mean of the sentence's token
    embeddings, normalised): ``u_k = normalize(sum_s softmax_s(p_k . e_s / attn_temperature) e_s)``; sentences attend
    over their own image's regions: ``z_s = normalize(sum_k softmax_k(e_s . p_k / attn_temperature) p_k)``.
    Region terms are weighted by the attention each region receives from the report's sentences (detached;
    ``weighting="attention"``) or uniformly; sentence terms uniformly.
    """

    def __init__(self, temperature: float, attn_temperature: float, text_weight: float, image_weight: float,
                 weighting: str):
        super().__init__()
        if temperature <= 0 or attn_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        if weighting not in ("attention", "uniform"):
            raise ValueError("weighting must be 'attention' or 'uniform'")
        self.temperature, self.attn_temperature = temperature, attn_temperature
        self.text_weight, self.image_weight, self.weighting = text_weight, image_weight, weighting

    def cross(self, p: torch.Tensor, e: torch.Tensor, s_valid: torch.Tensor):
        """p [B, N, D], e [B, S, D] normalised, s_valid [B, S] → (u [B, N, D], z [B, S, D], region weights [B, N])."""
        logits = torch.einsum("bnd,bsd->bns", p, e) / self.attn_temperature  # [B, N, S]
        neg = torch.finfo(logits.dtype).min
        has = s_valid.any(-1)
        a_ps = torch.softmax(logits.masked_fill(~s_valid.unsqueeze(1), neg), dim=-1)  # regions over sentences
        u = F.normalize(torch.einsum("bns,bsd->bnd", a_ps, e), dim=-1)
        a_sp = torch.softmax(logits.transpose(1, 2), dim=-1)  # sentences over regions [B, S, N]
        z = F.normalize(torch.einsum("bsn,bnd->bsd", a_sp, p), dim=-1)
        if self.weighting == "attention":
            w = (a_sp.detach() * s_valid.unsqueeze(-1)).sum(1)  # attention mass each region receives
        else:
            w = torch.ones(p.shape[:2], device=p.device)
        w = w * has.unsqueeze(-1)
        return u, z, w

    def combine(self, p, u, w, e, z, s_valid, region_targets, sentence_targets) -> torch.Tensor:
        n_valid = torch.ones(p.shape[:2], dtype=torch.bool, device=p.device) & s_valid.any(-1, keepdim=True)
        total = p.new_zeros((), dtype=torch.float32)
        if self.image_weight:
            total = total + self.image_weight * intra_sample_contrastive(p, u, region_targets, n_valid,
                                                                         self.temperature, w)
        if self.text_weight:
            total = total + self.text_weight * intra_sample_contrastive(e, z, sentence_targets, s_valid,
                                                                        self.temperature, None)
        return total


class RegionSentence(_LocalCrossModal):
    """LoVT (Müller et al., arXiv 2112.03237) local alignment between image regions and report sentences.

    Both directions of the intra-sample contrastive loss (:func:`intra_sample_contrastive`) on each side: region
    ``p_k`` vs the cross-modal ``u_k`` of the regions of the SAME image (positives: the regions within
    ``distance_threshold`` of k, relative to the grid diagonal, LoVT's spatial smoothing; optionally weighted
    ``exp(-smooth_lambda d)``), and sentence ``e_s`` vs ``z_s`` of the sentences of the SAME report (positive: itself,
    negatives: the report's other sentences). Region terms attention-weighted (see :class:`_LocalCrossModal`).
    Defaults from the LoVT code's config (similarity temperature 0.3, relative distance threshold 0.3, no smoothing).
    Where we differ: LoVT's regions are the ResNet's 7x7 grid behind its own projection / attention-pooling heads and
    its weights come from that pooling; here regions are our patch grid, the weights are the attention each region
    receives from the report's sentences, and sentences are spans between "." tokens of one encoding of the report.
    LoVT also subtracts a constant log(#negatives) (no effect on gradients); we do not.
    """

    def __init__(self, temperature: float = 0.3, attn_temperature: float = 0.1, text_weight: float = 0.5,
                 image_weight: float = 0.5, distance_threshold: float = 0.3, smooth_lambda: float = 0.0,
                 weighting: str = "attention"):
        super().__init__(temperature, attn_temperature, text_weight, image_weight, weighting)
        self.distance_threshold, self.smooth_lambda = distance_threshold, smooth_lambda

    def forward(self, patch_emb: torch.Tensor, token_emb: torch.Tensor, sentence_ids: torch.Tensor,
                sentences: Optional["Sentences"] = None) -> torch.Tensor:
        """``sentences``: separately encoded sentences (:class:`Sentences`) instead of the "."-spans of the report."""
        gh, gw = (patch_emb.shape[1], patch_emb.shape[2]) if patch_emb.ndim == 4 else (1, patch_emb.shape[1])
        p = patch_emb.flatten(1, -2) if patch_emb.ndim == 4 else patch_emb  # [B, N, D]
        e, s_valid = (sentences.emb, sentences.valid) if sentences is not None \
            else sentence_tensors(token_emb, sentence_ids)
        if e.shape[1] == 0:
            return p.sum() * 0.0
        e = F.normalize(e, dim=-1)
        u, z, w = self.cross(p, e, s_valid)
        rt = spatial_targets(gh, gw, self.distance_threshold, self.smooth_lambda, p.device)
        rt = rt.unsqueeze(0).expand(p.shape[0], -1, -1)
        st = torch.eye(e.shape[1], device=p.device).unsqueeze(0).expand(p.shape[0], -1, -1)
        return self.combine(p, u, w, e, z, s_valid, rt, st)


class ElvisLocal(_LocalCrossModal):
    """ELVIS (arXiv 2304.05303) as we read the paper: LoVT's region-level contrastive loss whose one-hot / spatial
    targets ("each region matches itself and repels every other region of its image") are replaced by SOFT targets
    from the intra-modal similarity of the local features BEFORE projection, stop-gradient:
    ``t_kk' = softmax_k'(cos(f_k, f_k') / target_temperature)`` for the image's regions (``f`` = ``patch_feats``)
    and for the report's sentences (``f`` = mean of the sentence's pre-projection ``token_feats``), so regions /
    sentences that the encoder already finds similar are no longer pushed apart after projection.

    ``similarity_source``: ``"pre_projection"`` (the reading above, default), ``"post_projection"`` (the detached
    projected embeddings, an ablation) or ``"none"`` (one-hot targets: LoVT's loss without spatial smoothing).
    Limits (tested): identical pre-projection features give uniform targets; orthogonal ones with
    ``target_temperature -> 0`` give one-hot targets.
    """

    def __init__(self, temperature: float = 0.3, attn_temperature: float = 0.1, target_temperature: float = 0.1,
                 text_weight: float = 0.5, image_weight: float = 0.5, similarity_source: str = "pre_projection",
                 weighting: str = "attention"):
        super().__init__(temperature, attn_temperature, text_weight, image_weight, weighting)
        if similarity_source not in ("pre_projection", "post_projection", "none"):
            raise ValueError("similarity_source must be 'pre_projection', 'post_projection' or 'none'")
        if target_temperature <= 0:
            raise ValueError("target_temperature must be > 0")
        self.target_temperature, self.similarity_source = target_temperature, similarity_source

    def forward(self, patch_feats, patch_emb, token_feats, token_emb, sentence_ids,
                sentences: Optional["Sentences"] = None) -> torch.Tensor:
        """``sentences``: separately encoded sentences (:class:`Sentences`: pooled embedding and its pre-projection
        feature) instead of the "."-spans of the report (mean of token embeddings / of pre-projection features)."""
        p = patch_emb.flatten(1, -2) if patch_emb.ndim == 4 else patch_emb  # [B, N, D]
        pf = patch_feats.flatten(1, -2) if patch_feats.ndim == 4 else patch_feats
        e, s_valid = (sentences.emb, sentences.valid) if sentences is not None \
            else sentence_tensors(token_emb, sentence_ids)
        if e.shape[1] == 0:
            return p.sum() * 0.0
        e = F.normalize(e, dim=-1)
        u, z, w = self.cross(p, e, s_valid)
        n_valid = torch.ones(p.shape[:2], dtype=torch.bool, device=p.device)
        if self.similarity_source == "none":
            rt = torch.eye(p.shape[1], device=p.device).expand(p.shape[0], -1, -1)
            st = torch.eye(e.shape[1], device=p.device).expand(p.shape[0], -1, -1)
        else:
            if self.similarity_source == "pre_projection":
                src_p = pf
                src_s = sentences.feats if sentences is not None else sentence_tensors(token_feats, sentence_ids)[0]
            else:
                src_p, src_s = p, e
            rt = similarity_targets(src_p, n_valid, self.target_temperature)
            st = similarity_targets(src_s, s_valid, self.target_temperature)
        return self.combine(p, u, w, e, z, s_valid, rt, st)


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
    from elvis_core.training.anatomy import AnatomyAlignment

    return AnatomyAlignment


OBJECTIVES["negation"] = (NegationContrast, {"temperature": 0.1, "attn_temperature": 0.1})
OBJECTIVES["mirror"] = (MirrorConsistency, {"kind": "pearson", "temperature": 0.05})
OBJECTIVES["anatomy"] = (None, {"temperature": 0.1, "width": 128, "layers": 1, "heads": 4})


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
