"""Locality after projection: is the similarity structure of a modality's local features kept by the projection into
the joint space? (The ELVIS paper's Figure 1, arXiv 2304.05303: "(a) loss of intra-image correlation after
projection" for LoVT-style local alignment, "(b) preservation" for ELVIS.)

For one image: ``B = cos(f_k, f_k')`` over its patches BEFORE projection (``patch_feats``, the backbone's last stage)
and ``A = cos(e_k, e_k')`` AFTER projection (``patch_emb``, what grounding compares phrases with); the agreement is
the Pearson and the Spearman correlation of the off-diagonal entries of ``B`` and ``A`` (each unordered pair once).
r = 1: the projection kept which patches resemble which (up to a monotone map for Spearman); r near 0: it did not.
For one report the same over its sentences, each encoded alone as a phrase is at grounding time: before = the text
encoder's pooled feature (the model's pooling), after = the projected, normalised sentence embedding.

:func:`patch_similarity_figure` draws the paper's figure: one image, the similarity of every patch to a chosen patch
before and after projection, one column per model.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

#: fewer off-diagonal pairs than this give NaN (a correlation of 1 or 2 numbers says nothing)
MIN_PAIRS = 3


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """[M, C] -> [M, M] cosine similarities (float64)."""
    x = F.normalize(x.double().reshape(x.shape[0], -1), dim=-1)
    return x @ x.t()


def _rank(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank, 0-based), as Spearman's rho needs; vectorised."""
    sorter = np.argsort(v, kind="mergesort")
    inv = np.empty(len(v), dtype=np.int64)
    inv[sorter] = np.arange(len(v))
    sv = v[sorter]
    first = np.r_[True, sv[1:] != sv[:-1]]
    dense = np.cumsum(first)[inv]  # 1-based index of each value's tie group
    bounds = np.r_[np.nonzero(first)[0], len(v)]  # start of each group, then the end
    return 0.5 * (bounds[dense - 1] + bounds[dense] - 1).astype(np.float64)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else float("nan")


def structure_agreement(before: torch.Tensor, after: torch.Tensor) -> Tuple[float, float]:
    """(Pearson r, Spearman rho) between the off-diagonal cosine similarities of ``before`` [M, C] and ``after``
    [M, D] (same M rows, e.g. the patches of one image before and after projection). NaN when M gives fewer than
    :data:`MIN_PAIRS` pairs or either set of similarities is constant."""
    if before.shape[0] != after.shape[0]:
        raise ValueError(f"before and after must have the same rows, got {before.shape[0]} and {after.shape[0]}")
    m = before.shape[0]
    if m * (m - 1) // 2 < MIN_PAIRS:
        return float("nan"), float("nan")
    iu = torch.triu_indices(m, m, offset=1)
    b = cosine_matrix(before)[iu[0], iu[1]].cpu().numpy()
    a = cosine_matrix(after)[iu[0], iu[1]].cpu().numpy()
    return _pearson(b, a), _pearson(_rank(b), _rank(a))


@torch.no_grad()
def image_locality(model, pixel_values: torch.Tensor, batch_size: int = 16) -> List[Tuple[float, float]]:
    """Per image of ``pixel_values`` [B, 1, S, S] (model input): (Pearson, Spearman) of the patch-similarity
    matrices before (``patch_feats``) and after (``patch_emb``) projection."""
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, pixel_values.shape[0], batch_size):
            emb = model.encode_image(pixel_values[i:i + batch_size].to(model.device))
            for f, e in zip(emb.patch_feats, emb.patch_emb):
                out.append(structure_agreement(f.reshape(-1, f.shape[-1]), e.reshape(-1, e.shape[-1])))
    finally:
        model.train(was)
    return out


@torch.no_grad()
def sentence_features(model, sentences: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each sentence encoded alone: (pooled text-encoder feature before projection [S, H], projected normalised
    embedding [S, D]) — the pair the ELVIS objective's sentence targets compare (``objectives.sentences =
    "separate"``)."""
    t = model.tokenize(list(sentences))
    ids, mask = t["input_ids"].to(model.device), t["attention_mask"].to(model.device)
    st = model.encode_text(ids, mask)
    if model.config["text"]["pooling"] == "mean":
        m = mask.unsqueeze(-1).to(st.token_feats.dtype)
        pooled = (st.token_feats * m).sum(1) / m.sum(1).clamp_min(1.0)
    else:
        pooled = st.token_feats[:, 0]
    return pooled, st.global_emb


@torch.no_grad()
def text_locality(model, reports: Sequence[Sequence[str]]) -> List[Tuple[float, float]]:
    """Per report (a list of its sentences): (Pearson, Spearman) of the sentence-similarity matrices before and
    after projection; NaN for reports with fewer than 3 sentences."""
    was = model.training
    model.eval()
    out = []
    try:
        for sents in reports:
            if len(sents) < 3:
                out.append((float("nan"), float("nan")))
                continue
            before, after = sentence_features(model, sents)
            out.append(structure_agreement(before, after))
    finally:
        model.train(was)
    return out


def summarise(values: Sequence[Tuple[float, float]]) -> Dict[str, float]:
    """Mean Pearson / Spearman over the non-NaN items and how many there were."""
    arr = np.array([v for v in values if not (math.isnan(v[0]) or math.isnan(v[1]))], dtype=np.float64)
    if arr.size == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "n": 0}
    return {"pearson": float(arr[:, 0].mean()), "spearman": float(arr[:, 1].mean()), "n": int(arr.shape[0])}


# -- figure -----------------------------------------------------------------------------------------------------------

@torch.no_grad()
def patch_similarity_maps(model, pixel_values: torch.Tensor, cell: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """For one image [1, 1, S, S]: (cosine of every patch to ``cell`` = (row, col) before projection, the same after
    projection), each [gh, gw]."""
    was = model.training
    model.eval()
    try:
        emb = model.encode_image(pixel_values.to(model.device))
    finally:
        model.train(was)
    maps = []
    for x in (emb.patch_feats[0], emb.patch_emb[0]):
        gh, gw = x.shape[:2]
        if not (0 <= cell[0] < gh and 0 <= cell[1] < gw):
            raise ValueError(f"cell {cell} is outside the {gh} x {gw} grid")
        v = F.normalize(x.double().reshape(gh * gw, -1), dim=-1)
        maps.append((v @ v[cell[0] * gw + cell[1]]).reshape(gh, gw).cpu().numpy())
    return maps[0], maps[1]


def patch_similarity_figure(models: Dict[str, object], pixel_values: torch.Tensor, cell: Tuple[int, int],
                            out_png, image: Optional[np.ndarray] = None, tile: int = 160,
                            title: str = "") -> Dict[str, Tuple[float, float]]:
    """Write a PNG: the model input on the left, then one column per model (name on top), the similarity of every
    patch to ``cell`` before projection (top row) and after (bottom row), each panel scaled from its own minimum
    (dark) to its maximum (yellow, viridis) — the pattern is what matters: backbone features are post-ReLU, so their
    cosines are all positive while the projected ones are not — the chosen cell outlined. Returns each model's
    per-image (Pearson, Spearman) of the full matrices, also printed under its column."""
    import cv2

    from elvis_core.grounding.figure import colormap_lut, write_png

    lut = colormap_lut("viridis")
    pad, head, foot = 6, 28, 22
    cols = len(models) + 1
    h = head + 2 * tile + pad + foot + 20
    w = cols * (tile + pad) + pad
    canvas = np.full((h, w, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    img = pixel_values[0, 0].cpu().numpy() if image is None else image
    g = np.clip((img - img.min()) / max(float(np.ptp(img)), 1e-9) * 255, 0, 255).astype(np.uint8)
    g = cv2.resize(g, (tile, tile), interpolation=cv2.INTER_AREA)
    canvas[head:head + tile, pad:pad + tile] = g[..., None]
    cv2.putText(canvas, "image", (pad, head - 8), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for k, line in enumerate(("top row:", "before projection", "bottom row:", "after projection")):
        cv2.putText(canvas, line, (pad, head + tile + pad + 20 + 18 * k), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    scores = {}
    for j, (name, model) in enumerate(models.items(), start=1):
        x0 = pad + j * (tile + pad)
        before, after = patch_similarity_maps(model, pixel_values, cell)
        emb_scores = image_locality(model, pixel_values[:1])[0]
        scores[name] = emb_scores
        gh, gw = before.shape
        for k, m in enumerate((before, after)):
            lo, hi = float(m.min()), float(m.max())
            idx = np.clip(np.round((m - lo) / max(hi - lo, 1e-9) * 255), 0, 255).astype(np.int64)
            rgb = cv2.resize(lut[idx].astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST)
            y0 = head + k * (tile + pad)
            canvas[y0:y0 + tile, x0:x0 + tile] = rgb
            cy, cx = cell[0] * tile // gh, cell[1] * tile // gw
            cv2.rectangle(canvas, (x0 + cx, y0 + cy), (x0 + cx + tile // gw, y0 + cy + tile // gh), (255, 0, 0), 2)
        cv2.putText(canvas, name[:22], (x0, head - 8), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(canvas, f"r {emb_scores[0]:.2f} rho {emb_scores[1]:.2f}", (x0, head + 2 * tile + pad + 16),
                    font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    foot_text = title or "top: cos to the outlined patch before projection; bottom: after (each panel min..max)"
    cv2.putText(canvas, foot_text[:110], (pad, h - 8), font, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
    write_png(out_png, canvas)
    return scores
