"""Each objective against a small case computed by hand (explicit Python loops over plain floats)."""

import math

import pytest
import torch
import torch.nn.functional as F

from elvis_core.training.objectives import (CombinedObjective, ElvisLocal, GlobalInfoNCE, IntraModalSimilarity,
                                            LocalTokenPatch, RegionSentence, sentence_ids_from_tokens,
                                            similarity_targets, word_mask)


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def norm(a):
    return math.sqrt(dot(a, a))


def normalize(a):
    n = norm(a)
    return [x / n for x in a]


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def ce(logits, target):
    m = max(logits)
    return -(logits[target] - (m + math.log(sum(math.exp(v - m) for v in logits))))


def test_global_infonce_hand():
    img = unit([1.0, 0.0], [0.6, 0.8], [0.0, 1.0])
    txt = unit([0.8, 0.6], [0.0, 1.0], [-1.0, 0.2])
    tau = 0.5
    loss = GlobalInfoNCE(temperature=tau, learnable=False)(img, txt).item()
    I, T = img.tolist(), txt.tolist()
    i2t = sum(ce([dot(I[a], T[b]) / tau for b in range(3)], a) for a in range(3)) / 3
    t2i = sum(ce([dot(T[a], I[b]) / tau for b in range(3)], a) for a in range(3)) / 3
    assert loss == pytest.approx(0.5 * (i2t + t2i), rel=1e-6)


def test_global_infonce_learnable_temperature_gets_gradient():
    obj = GlobalInfoNCE(temperature=0.07, learnable=True)
    assert obj.temperature == pytest.approx(0.07)
    img, txt = unit([1.0, 0.0], [0.0, 1.0]), unit([1.0, 0.1], [0.1, 1.0])
    obj(img.float(), txt.float()).backward()
    assert obj.log_scale.grad is not None and obj.log_scale.grad.abs() > 0
    fixed = GlobalInfoNCE(temperature=0.07, learnable=False)
    assert len(list(fixed.parameters())) == 0


def test_local_token_patch_hand():
    # 2 images x 3 patches, 2 reports x 3 token slots (last slot of report 1 is masked), D = 2
    P = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]],
                      [[-1.0, 0.0], [0.6, -0.8], [0.0, -1.0]]], dtype=torch.float64)
    P = F.normalize(P, dim=-1)
    Tk = F.normalize(torch.tensor([[[0.9, 0.1], [0.2, 1.0], [1.0, 1.0]],
                                   [[-1.0, 0.3], [0.1, -1.0], [5.0, 5.0]]], dtype=torch.float64), dim=-1)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ta, gamma, tau = 0.2, 5.0, 0.3
    obj = LocalTokenPatch(temperature=tau, attn_temperature=ta, aggregation="lse", gamma=gamma)
    loss = obj(P, Tk, mask).item()
    Pl, Tl = P.tolist(), Tk.tolist()
    S = [[0.0, 0.0], [0.0, 0.0]]
    for i in range(2):
        for j in range(2):
            acc = 0.0
            for w in range(3):
                if not mask[j, w]:
                    continue
                a = softmax([dot(Tl[j][w], Pl[i][k]) / ta for k in range(3)])
                c = [sum(a[k] * Pl[i][k][d] for k in range(3)) for d in range(2)]
                r = dot(c, Tl[j][w]) / (norm(c) * norm(Tl[j][w]))
                acc += math.exp(gamma * r)
            S[i][j] = math.log(acc) / gamma
    i2t = sum(ce([S[i][j] / tau for j in range(2)], i) for i in range(2)) / 2
    t2i = sum(ce([S[i][j] / tau for i in range(2)], j) for j in range(2)) / 2
    assert loss == pytest.approx(0.5 * (i2t + t2i), rel=1e-6)
    # mean aggregation
    obj_m = LocalTokenPatch(temperature=tau, attn_temperature=ta, aggregation="mean")
    pair = obj_m.pair_scores(P, Tk, mask)
    i, j = 1, 0
    rs = []
    for w in range(3):
        a = softmax([dot(Tl[j][w], Pl[i][k]) / ta for k in range(3)])
        c = [sum(a[k] * Pl[i][k][d] for k in range(3)) for d in range(2)]
        rs.append(dot(c, Tl[j][w]) / (norm(c) * norm(Tl[j][w])))
    assert pair[i, j].item() == pytest.approx(sum(rs) / 3, rel=1e-6)


def _lovt_hand(A, Bx, T, w, tau):
    """Both directions of the intra-sample contrastive loss for ONE sample, plain floats: rows of T are positives'
    weights (renormalised), w per-element weights (renormalised)."""
    m = len(A)
    ws = [x / sum(w) for x in w]
    tot = 0.0
    for i in range(m):
        t = [x / sum(T[i]) for x in T[i]]
        s_ab = [dot(A[i], Bx[j]) / tau for j in range(m)]
        s_ba = [dot(Bx[i], A[j]) / tau for j in range(m)]
        lse = lambda xs: max(xs) + math.log(sum(math.exp(v - max(xs)) for v in xs))  # noqa: E731
        l_ab = -sum(t[j] * s_ab[j] for j in range(m)) + lse(s_ab)
        l_ba = -sum(t[j] * s_ba[j] for j in range(m)) + lse(s_ba)
        tot += ws[i] * 0.5 * (l_ab + l_ba)
    return tot


def _cross_hand(Pb, Es, ta):
    """u_k (regions over sentences), z_s (sentences over regions), attention received per region."""
    n, ns = len(Pb), len(Es)
    u, recv = [], [0.0] * n
    for k in range(n):
        a = softmax([dot(Pb[k], e) / ta for e in Es])
        u.append(normalize([sum(a[s] * Es[s][d] for s in range(ns)) for d in range(len(Pb[0]))]))
    z = []
    for s in range(ns):
        a = softmax([dot(Es[s], Pb[k]) / ta for k in range(n)])
        for k in range(n):
            recv[k] += a[k]
        z.append(normalize([sum(a[k] * Pb[k][d] for k in range(n)) for d in range(len(Pb[0]))]))
    return u, z, recv


def _two_samples():
    """2 samples, 2x2 patch grid, 3-d; sample 0 has two sentences, sample 1 one (+ one token of no sentence)."""
    P = F.normalize(torch.tensor([[[[1.0, 0.0, 0.2], [0.0, 1.0, 0.1]], [[0.5, 0.5, 0.0], [0.1, 0.2, 1.0]]],
                                  [[[0.6, 0.8, 0.0], [-0.8, 0.6, 0.3]], [[0.2, -0.4, 0.9], [0.7, 0.7, 0.1]]]],
                                 dtype=torch.float64), dim=-1)
    Tk = F.normalize(torch.tensor([[[1.0, 0.2, 0.0], [0.8, 0.1, 0.3], [0.1, 1.0, 0.2]],
                                   [[0.5, 0.5, 0.1], [0.3, 0.9, -0.2], [9.0, 9.0, 9.0]]], dtype=torch.float64),
                     dim=-1)
    sid = torch.tensor([[0, 0, 1], [0, 0, -1]])
    Pl, Tl = P.flatten(1, 2).tolist(), Tk.tolist()
    sents = [[normalize([(Tl[0][0][d] + Tl[0][1][d]) / 2 for d in range(3)]), Tl[0][2]],
             [normalize([(Tl[1][0][d] + Tl[1][1][d]) / 2 for d in range(3)])]]
    return P, Tk, sid, Pl, sents


def test_region_sentence_hand():
    """LoVT: both directions, spatial positives (threshold 0.4 of the 2x2 diagonal: the cell and its 4-neighbours,
    not the diagonal one), sentence negatives from the same report, attention-weighted region terms."""
    P, Tk, sid, Pl, sents = _two_samples()
    ta, tau, wt, wi = 0.25, 0.5, 0.3, 0.7
    loss = RegionSentence(temperature=tau, attn_temperature=ta, text_weight=wt, image_weight=wi,
                          distance_threshold=0.4)(P, Tk, sid).item()
    cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
    diag = math.sqrt(8)
    pos = [[1.0 if math.dist(c1, c2) / diag <= 0.4 else 0.0 for c2 in cells] for c1 in cells]
    assert pos[0] == [1.0, 1.0, 1.0, 0.0]
    img, txt = [], []
    for b in range(2):
        u, z, recv = _cross_hand(Pl[b], sents[b], ta)
        img.append(_lovt_hand(Pl[b], u, pos, recv, tau))
        ns = len(sents[b])
        txt.append(_lovt_hand(sents[b], z, [[1.0 if i == j else 0.0 for j in range(ns)] for i in range(ns)],
                              [1.0] * ns, tau))
    assert txt[1] == pytest.approx(0.0, abs=1e-12)  # one sentence: its own only candidate
    expect = wt * sum(txt) / 2 + wi * sum(img) / 2
    assert loss == pytest.approx(expect, rel=1e-6)
    # uniform weighting and no spatial smoothing (threshold 0) = plain one-hot targets
    loss0 = RegionSentence(temperature=tau, attn_temperature=ta, text_weight=0.0, image_weight=1.0,
                           distance_threshold=0.0, weighting="uniform")(P, Tk, sid).item()
    eye = [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]
    hand0 = sum(_lovt_hand(Pl[b], _cross_hand(Pl[b], sents[b], ta)[0], eye, [1.0] * 4, tau) for b in range(2)) / 2
    assert loss0 == pytest.approx(hand0, rel=1e-6)


def test_elvis_soft_targets_hand():
    """ELVIS: LoVT's loss with targets softmax(cos(pre-projection features) / target_temperature)."""
    P, Tk, sid, Pl, sents = _two_samples()
    torch.manual_seed(3)
    PF = torch.randn(2, 2, 2, 5, dtype=torch.float64)
    TF = torch.randn(2, 3, 4, dtype=torch.float64)
    ta, tau, tt = 0.25, 0.5, 0.2
    loss = ElvisLocal(temperature=tau, attn_temperature=ta, target_temperature=tt, text_weight=0.4,
                      image_weight=0.6)(PF, P, TF, Tk, sid).item()
    PFl, TFl = PF.flatten(1, 2).tolist(), TF.tolist()

    def targets(feats):
        fs = [normalize(f) for f in feats]
        return [softmax([dot(fi, fj) / tt for fj in fs]) for fi in fs]

    sfeat = [[[(TFl[0][0][d] + TFl[0][1][d]) / 2 for d in range(4)], TFl[0][2]],
             [[(TFl[1][0][d] + TFl[1][1][d]) / 2 for d in range(4)]]]
    img, txt = [], []
    for b in range(2):
        u, z, recv = _cross_hand(Pl[b], sents[b], ta)
        img.append(_lovt_hand(Pl[b], u, targets(PFl[b]), recv, tau))
        txt.append(_lovt_hand(sents[b], z, targets(sfeat[b]), [1.0] * len(sents[b]), tau))
    assert loss == pytest.approx(0.4 * sum(txt) / 2 + 0.6 * sum(img) / 2, rel=1e-6)


def test_elvis_target_limits():
    # identical pre-projection features: cos = 1 everywhere -> uniform targets over the valid elements
    feats = torch.ones(1, 4, 3)
    valid = torch.tensor([[True, True, True, False]])
    t = similarity_targets(feats, valid, 0.1)
    assert torch.allclose(t[0, :, :3], torch.full((4, 3), 1 / 3)) and torch.all(t[0, :, 3] == 0)
    # orthogonal features, target temperature -> 0: one-hot identity (LoVT's targets)
    t = similarity_targets(torch.eye(4).unsqueeze(0), torch.ones(1, 4, dtype=torch.bool), 1e-3)
    assert torch.allclose(t[0], torch.eye(4), atol=1e-6)
    P, Tk, sid, _, _ = _two_samples()
    ortho_p = torch.eye(4, dtype=torch.float64).view(1, 2, 2, 4).expand(2, -1, -1, -1)
    ortho_t = torch.eye(3, 4, dtype=torch.float64).unsqueeze(0).expand(2, -1, -1)
    # sample 0's two sentences are [tok0+tok1]/2 and tok2: orthogonal means too
    soft = ElvisLocal(target_temperature=1e-3)(ortho_p, P, ortho_t, Tk, sid)
    hard = ElvisLocal(similarity_source="none")(ortho_p, P, ortho_t, Tk, sid)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)
    # identical features: = the loss with uniform targets, and different from the one-hot loss
    same = ElvisLocal()(torch.ones(2, 2, 2, 4, dtype=torch.float64), P, torch.ones(2, 3, 4, dtype=torch.float64),
                        Tk, sid)
    assert abs(same.item() - hard.item()) > 1e-3


def test_elvis_gradients_reach_the_encoder_only_through_the_projection():
    """The soft targets are stop-gradient: an encoder connected only through them gets no gradient; connected
    through the projected embeddings it does (so does the projection)."""
    torch.manual_seed(0)
    enc = torch.nn.Linear(3, 6)
    proj = torch.nn.Linear(6, 4)
    x = torch.randn(2, 2, 2, 3)
    tok = torch.randn(2, 5, 3)
    sid = torch.tensor([[-1, 0, 0, 1, -1], [-1, 0, 1, 1, 2]])
    obj = ElvisLocal()
    feats, tfeats = enc(x), enc(tok)
    # 1) embeddings from DETACHED encoder features: the encoder is reached only through the targets
    loss = obj(feats, F.normalize(proj(feats.detach()), dim=-1), tfeats,
               F.normalize(proj(tfeats.detach()), dim=-1), sid)
    loss.backward()
    assert enc.weight.grad is None or float(enc.weight.grad.abs().max()) == 0.0
    assert float(proj.weight.grad.abs().max()) > 0
    # 2) the normal path: embeddings = projection(encoder features) -> the encoder gets a gradient
    enc.zero_grad(), proj.zero_grad()
    feats, tfeats = enc(x), enc(tok)
    obj(feats, F.normalize(proj(feats), dim=-1), tfeats, F.normalize(proj(tfeats), dim=-1), sid).backward()
    assert float(enc.weight.grad.abs().max()) > 0


def test_intra_detach_target_still_trains_the_encoder_through_the_projected_branch():
    """docs/training.md: with detach_target the encoder is still trained, through the projected embeddings."""
    torch.manual_seed(0)
    enc, proj = torch.nn.Linear(3, 6), torch.nn.Linear(6, 4)
    feats = enc(torch.randn(2, 4, 3))
    loss = IntraModalSimilarity(detach_target=True, text_weight=0.0)(
        feats.view(2, 2, 2, 6), F.normalize(proj(feats), dim=-1).view(2, 2, 2, 4), None, None, None)
    loss.backward()
    assert float(enc.weight.grad.abs().max()) > 0


def _intra_hand(feats, emb, mask, distance, tau, tau_t, exclude_self):
    total, rows, pairs = 0.0, 0, 0
    for b in range(len(feats)):
        valid = [m for m in range(len(feats[b])) if mask is None or mask[b][m]]
        cos = lambda x, y: dot(x, y) / (norm(x) * norm(y))  # noqa: E731
        for i in valid:
            js = [j for j in valid if not (exclude_self and j == i)]
            T = [cos(feats[b][i], feats[b][j]) for j in js]
            Q = [cos(emb[b][i], emb[b][j]) for j in js]
            if distance == "mse":
                total += sum((t - q) ** 2 for t, q in zip(T, Q))
                pairs += len(js)
            else:
                pt, pq = softmax([t / tau_t for t in T]), softmax([q / tau for q in Q])
                total += sum(a * (math.log(a) - math.log(c)) for a, c in zip(pt, pq))
                rows += 1
    return total / (pairs if distance == "mse" else rows)


@pytest.mark.parametrize("distance", ["kl", "mse"])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_intra_modal_hand(distance, exclude_self):
    g = torch.Generator().manual_seed(3)
    pf = torch.randn(2, 2, 2, 5, generator=g, dtype=torch.float64)  # [B, gh, gw, C]
    pe = torch.randn(2, 2, 2, 3, generator=g, dtype=torch.float64)
    tf = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    te = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    tmask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    obj = IntraModalSimilarity(distance=distance, temperature=0.2, target_temperature=0.4, exclude_self=exclude_self,
                               image_weight=0.6, text_weight=1.5)
    loss = obj(pf, pe, tf, te, tmask).item()
    img = _intra_hand(pf.flatten(1, 2).tolist(), pe.flatten(1, 2).tolist(), None, distance, 0.2, 0.4, exclude_self)
    txt = _intra_hand(tf.tolist(), te.tolist(), tmask.tolist(), distance, 0.2, 0.4, exclude_self)
    assert loss == pytest.approx(0.6 * img + 1.5 * txt, rel=1e-6)


def test_intra_modal_zero_when_structure_kept_and_target_detached():
    f = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    obj = IntraModalSimilarity(distance="kl", text_weight=0.0)
    # an orthogonal projection keeps all cosines -> zero loss
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    emb = F.normalize(f @ q, dim=-1)
    loss = obj(f, emb, None, None, None)
    assert loss.item() == pytest.approx(0.0, abs=1e-9)
    emb2 = F.normalize(torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True), dim=-1)
    obj(f, emb2, None, None, None).backward()
    assert f.grad is None or f.grad.abs().max() == 0  # target side gets no gradient when detached


def test_masks_and_sentences_from_tokens():
    # [CLS]=2 a b . c . [SEP]=3 [PAD]=0 ; period id 9
    ids = torch.tensor([[2, 11, 12, 9, 13, 9, 3, 0]])
    am = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])
    w = word_mask(ids, am, [0, 2, 3])
    assert w.tolist() == [[0, 1, 1, 1, 1, 1, 0, 0]]
    s = sentence_ids_from_tokens(ids, w, [9])
    assert s.tolist() == [[-1, 0, 0, 0, 1, 1, -1, -1]]


def test_combined_weights_and_parts():
    torch.manual_seed(0)

    class E:
        pass
    img, txt = E(), E()
    img.patch_emb = F.normalize(torch.randn(3, 2, 2, 4), dim=-1)
    img.patch_feats = torch.randn(3, 2, 2, 6)
    img.global_emb = F.normalize(torch.randn(3, 4), dim=-1)
    txt.token_emb = F.normalize(torch.randn(3, 5, 4), dim=-1)
    txt.token_feats = torch.randn(3, 5, 7)
    txt.global_emb = F.normalize(torch.randn(3, 4), dim=-1)
    words = torch.tensor([[0, 1, 1, 1, 0]] * 3)
    sids = torch.tensor([[-1, 0, 0, 1, -1]] * 3)
    comb = CombinedObjective({"global": 1.0, "local": 0.5, "region_sentence": 0.25, "intra": 2.0, "elvis": 0.7},
                             {"global": {"learnable": False}})
    total, parts = comb(img, txt, words, sids)
    assert set(parts) == {"global", "local", "region_sentence", "intra", "elvis"}
    expect = parts["global"] + 0.5 * parts["local"] + 0.25 * parts["region_sentence"] + 2.0 * parts["intra"] \
        + 0.7 * parts["elvis"]
    assert total.item() == pytest.approx(expect, rel=1e-5)
    assert set(CombinedObjective({"global": 1.0, "intra": 0.0}).terms) == {"global"}
    with pytest.raises(ValueError, match="unknown objectives"):
        CombinedObjective({"globl": 1.0})


def test_sentences_pack_and_split():
    from elvis_core.training.objectives import Sentences, split_sentences

    assert split_sentences("1. Small left effusion.  2. No right pneumothorax. Heart size is normal.") == \
        ["Small left effusion.", "No right pneumothorax.", "Heart size is normal."]
    emb = torch.arange(10, dtype=torch.float32).view(5, 2)
    s = Sentences.pack(emb, emb * 10, torch.tensor([0, 0, 2, 2, 2]), 3)
    assert s.valid.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert s.emb[2, 1].tolist() == [6.0, 7.0] and s.feats[0, 1].tolist() == [20.0, 30.0]
    # local over sentence units = the GLoRIA score with the sentences in the words' place
    P = F.normalize(torch.randn(3, 2, 2, 2), dim=-1)
    e = F.normalize(torch.randn(3, 3, 2), dim=-1)
    sent = Sentences(e, e, torch.tensor([[True, True, False], [True, False, False], [True, True, True]]))
    a = LocalTokenPatch(units="sentences")(P, sent.emb, sent.valid.long())
    b = LocalTokenPatch()(P, e, sent.valid.long())
    assert a.item() == pytest.approx(b.item())


def test_negation_contrast_hand_and_negated_sentences():
    from elvis_core.training.objectives import NegationContrast, negated_sentence

    assert negated_sentence("There is a small left pleural effusion.") == "no small left pleural effusion"
    assert negated_sentence("Moderate cardiomegaly.") == "no moderate cardiomegaly"
    assert negated_sentence("No left pneumothorax.") is None and negated_sentence("Heart size is normal.") is None
    P = F.normalize(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.6, 0.8], [0.8, -0.6]]]], dtype=torch.float64),
                    dim=-1)  # [2, 1, 2, 2]
    pos = unit([1.0, 0.2], [0.1, 1.0])
    neg = unit([0.9, 0.5], [-0.3, 1.0])
    owner = torch.tensor([0, 1])
    ta, tau = 0.2, 0.5
    loss = NegationContrast(temperature=tau, attn_temperature=ta)(P, pos, neg, owner).item()
    Pl = P.flatten(1, 2).tolist()
    terms = []
    for t in range(2):
        ps = Pl[int(owner[t])]
        a = softmax([dot(p, pos[t].tolist()) / ta for p in ps])
        d = sum(a[k] * (dot(ps[k], neg[t].tolist()) - dot(ps[k], pos[t].tolist())) for k in range(2)) / tau
        terms.append(math.log1p(math.exp(d)))
    assert loss == pytest.approx(sum(terms) / 2, rel=1e-6)
