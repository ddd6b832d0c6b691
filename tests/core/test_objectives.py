"""Each objective against a small case computed by hand (explicit Python loops over plain floats)."""

import math

import pytest
import torch
import torch.nn.functional as F

from elvis_core.training.objectives import (CombinedObjective, GlobalInfoNCE, IntraModalSimilarity, LocalTokenPatch,
                                            RegionSentence, sentence_ids_from_tokens, word_mask)


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


def test_region_sentence_hand():
    # 2 samples, 2 patches each, tokens: sample 0 has two sentences, sample 1 one sentence (+ an excluded token)
    P = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [-0.8, 0.6]]], dtype=torch.float64), dim=-1)
    Tk = F.normalize(torch.tensor([[[1.0, 0.2], [0.8, 0.1], [0.1, 1.0]],
                                   [[0.5, 0.5], [0.3, 0.9], [9.0, 9.0]]], dtype=torch.float64), dim=-1)
    sid = torch.tensor([[0, 0, 1], [0, 0, -1]])
    ta, tau, wt, wi = 0.25, 0.5, 0.3, 0.7
    loss = RegionSentence(temperature=tau, attn_temperature=ta, text_weight=wt, image_weight=wi)(P, Tk, sid).item()
    Pl, Tl = P.tolist(), Tk.tolist()
    # sentence embeddings (mean of tokens, normalised), owners
    sents = [(0, normalize([(Tl[0][0][d] + Tl[0][1][d]) / 2 for d in range(2)])), (0, Tl[0][2]),
             (1, normalize([(Tl[1][0][d] + Tl[1][1][d]) / 2 for d in range(2)]))]
    text_terms = []
    for s, (b, e) in enumerate(sents):
        a = softmax([dot(e, Pl[b][k]) / ta for k in range(2)])
        z = normalize([sum(a[k] * Pl[b][k][d] for k in range(2)) for d in range(2)])
        text_terms.append(ce([dot(z, e2) / tau for _, e2 in sents], s))
    text_loss = sum(text_terms) / len(text_terms)
    image_terms = []
    for b in range(2):
        es = [e for o, e in sents if o == b]
        per = []
        for k in range(2):
            a = softmax([dot(Pl[b][k], e) / ta for e in es])
            u = normalize([sum(a[s] * es[s][d] for s in range(len(es))) for d in range(2)])
            per.append(ce([dot(u, Pl[b][k2]) / tau for k2 in range(2)], k))
        image_terms.append(sum(per) / 2)
    image_loss = sum(image_terms) / 2
    assert loss == pytest.approx(wt * text_loss + wi * image_loss, rel=1e-6)


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
    comb = CombinedObjective({"global": 1.0, "local": 0.5, "region_sentence": 0.25, "intra": 2.0, },
                             {"global": {"learnable": False}})
    total, parts = comb(img, txt, words, sids)
    assert set(parts) == {"global", "local", "region_sentence", "intra"}
    expect = parts["global"] + 0.5 * parts["local"] + 0.25 * parts["region_sentence"] + 2.0 * parts["intra"]
    assert total.item() == pytest.approx(expect, rel=1e-5)
    assert set(CombinedObjective({"global": 1.0, "intra": 0.0}).terms) == {"global"}
    with pytest.raises(ValueError, match="unknown objectives"):
        CombinedObjective({"globl": 1.0})
