"""Locality after projection (elvis_core/grounding/locality.py): the agreement of the similarity structure before
and after projection, on a tiny model whose projection we replace."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from elvis_core.grounding.locality import (image_locality, patch_similarity_figure, patch_similarity_maps,
                                           structure_agreement, summarise, text_locality)
from elvis_core.model.config import preset
from elvis_core.model.elvis import build_model

SENTS = [["The heart is normal.", "There is a left effusion.", "No pneumothorax.", "Right lung clear."],
         ["Left apical pneumothorax.", "No effusion.", "Mild cardiomegaly.", "Lungs are clear.", "Stable."]]


class _Linear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        return x @ self.w


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(preset("tiny"), texts=[s for r in SENTS for s in r]).eval()
    return m


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 64, 64, generator=g)
    x[:, :, 20:40, 10:30] += 2.0  # some structure so that patches differ
    return x


def test_structure_agreement_matches_numpy_and_is_rank_based():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(12, 7, generator=g)
    b = torch.randn(12, 5, generator=g)
    r, rho = structure_agreement(a, b)
    ca = torch.nn.functional.normalize(a.double(), dim=1)
    cb = torch.nn.functional.normalize(b.double(), dim=1)
    iu = np.triu_indices(12, 1)
    sa, sb = (ca @ ca.t()).numpy()[iu], (cb @ cb.t()).numpy()[iu]
    assert r == pytest.approx(np.corrcoef(sa, sb)[0, 1], abs=1e-9)
    from scipy.stats import spearmanr

    assert rho == pytest.approx(spearmanr(sa, sb).correlation, abs=1e-9)
    # same matrix: both 1; too few rows: NaN; mismatched rows: error
    assert structure_agreement(a, a) == pytest.approx((1.0, 1.0))
    assert all(math.isnan(v) for v in structure_agreement(a[:2], b[:2]))
    with pytest.raises(ValueError, match="same rows"):
        structure_agreement(a, b[:5])


def test_identity_or_orthogonal_projection_keeps_locality_and_a_low_rank_one_loses_it(model, images):
    orig = model.image_proj
    try:
        model.image_proj = nn.Identity()
        ident = image_locality(model, images)
        assert all(r == pytest.approx(1.0, abs=1e-9) and rho == pytest.approx(1.0, abs=1e-9) for r, rho in ident)
        feats = model.encode_image(images).patch_feats
        c = feats.shape[-1]
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=torch.Generator().manual_seed(5)))
        model.image_proj = _Linear(q)
        ortho = image_locality(model, images)
        assert all(r == pytest.approx(1.0, abs=1e-6) for r, _ in ortho)
        low = torch.randn(c, 1, generator=torch.Generator().manual_seed(6)) @ \
            torch.randn(1, 16, generator=torch.Generator().manual_seed(7))
        model.image_proj = _Linear(low + 0.01 * torch.randn(c, 16, generator=torch.Generator().manual_seed(8)))
        lowr = summarise(image_locality(model, images))
        assert lowr["n"] == 3 and lowr["pearson"] < 0.9
    finally:
        model.image_proj = orig


def test_text_locality_identity_is_one_and_short_reports_are_nan(model):
    head = "text_proj" if model.config["projection"]["shared_local_global"] else "text_global_proj"
    orig = getattr(model, head)
    try:
        setattr(model, head, nn.Identity())
        vals = text_locality(model, SENTS + [["Only one.", "Two."]])
        assert vals[0] == pytest.approx((1.0, 1.0)) and vals[1] == pytest.approx((1.0, 1.0))
        assert all(math.isnan(v) for v in vals[2])
        s = summarise(vals)
        assert s["n"] == 2 and s["pearson"] == pytest.approx(1.0)
    finally:
        setattr(model, head, orig)


def test_patch_similarity_maps_and_figure(model, images, tmp_path):
    before, after = patch_similarity_maps(model, images[:1], (1, 2))
    assert before.shape == after.shape and before[1, 2] == pytest.approx(1.0) and after[1, 2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="outside"):
        patch_similarity_maps(model, images[:1], (99, 0))
    out = tmp_path / "fig.png"
    scores = patch_similarity_figure({"a": model, "b": model}, images[:1], (1, 2), out)
    assert out.is_file() and set(scores) == {"a", "b"} and scores["a"] == pytest.approx(scores["b"])
    import cv2

    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] > 3 * 160


def test_elvis_loss_sees_patches_only_through_the_report_sentences_so_locality_is_not_kept_by_construction():
    """Why the `elvis` objective cannot preserve the intra-image structure by itself (docs/elvis_paper.md): its
    region term (the one whose soft targets carry the image's pre-projection similarity) reads the patch embeddings
    only through their dot products with the report's sentence embeddings. Moving each patch's component orthogonal
    to the sentences' span to another direction of the same length leaves that term EXACTLY unchanged while the
    patch-similarity structure is scrambled; the `intra` term does see it. (The sentence term sees the patches only
    through the norm of attention-pooled patch sums: not a constraint on which patch resembles which.)"""
    from elvis_core.training.objectives import ElvisLocal, IntraModalSimilarity, Sentences

    g = torch.Generator().manual_seed(11)
    b, n, d, s, c = 2, 9, 16, 3, 12
    feats = torch.randn(b, 3, 3, c, generator=g)
    p = torch.nn.functional.normalize(torch.randn(b, n, d, generator=g), dim=-1)
    e = torch.nn.functional.normalize(torch.randn(b, s, d, generator=g), dim=-1)
    sent = Sentences(emb=e, feats=torch.randn(b, s, 8, generator=g), valid=torch.ones(b, s, dtype=torch.bool))
    p2 = []
    for i in range(b):
        q, _ = torch.linalg.qr(e[i].t())  # [d, s] orthonormal basis of the sentences' span
        par = p[i] @ q @ q.t()
        orth = p[i] - par
        rnd = torch.randn(n, d, generator=g)
        rnd = rnd - rnd @ q @ q.t()
        rnd = torch.nn.functional.normalize(rnd, dim=-1) * orth.norm(dim=-1, keepdim=True)
        p2.append(par + rnd)
    p2 = torch.stack(p2)
    assert torch.allclose(p2.norm(dim=-1), torch.ones(b, n), atol=1e-5)
    assert torch.allclose(p2 @ e.transpose(1, 2), p @ e.transpose(1, 2), atol=1e-5)
    elvis = ElvisLocal(text_weight=0.0)
    args = dict(token_feats=torch.zeros(b, 1, 8), token_emb=torch.zeros(b, 1, d),
                sentence_ids=torch.zeros(b, 1, dtype=torch.long), sentences=sent)
    l1 = elvis(feats, p.reshape(b, 3, 3, d), **args)
    l2 = elvis(feats, p2.reshape(b, 3, 3, d), **args)
    assert float(l1) == pytest.approx(float(l2), abs=1e-5)
    r = [structure_agreement(p[i], p2[i])[0] for i in range(b)]
    assert max(r) < 0.8  # the structure after "projection" changed a lot, the ELVIS loss did not see it
    intra = IntraModalSimilarity(text_weight=0.0)
    i1 = intra(feats, p.reshape(b, 3, 3, d), None, None, None)
    i2 = intra(feats, p2.reshape(b, 3, 3, d), None, None, None)
    assert abs(float(i1) - float(i2)) > 1e-3
