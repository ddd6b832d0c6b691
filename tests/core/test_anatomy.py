"""GK-MVLP-style anatomy alignment: mentions, boxes on the grid, readers, and the loss against a hand computation."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elvis_core.errors import ElvisError
from elvis_core.training.anatomy import (AnatomyAlignment, anatomy_mentions, batch_anatomy, boxes_to_model,
                                         grid_masks, read_anatomy)


def test_mentions_follow_side_and_zone_words():
    assert anatomy_mentions("Small left apical pneumothorax.") == {"left apical zone"}
    assert anatomy_mentions("No right pleural effusion.") == {"right costophrenic angle"}
    assert anatomy_mentions("Bilateral perihilar edema.") == {"left hilar structures", "right hilar structures"}
    assert anatomy_mentions("Moderate cardiomegaly.") == {"cardiac silhouette"}
    assert anatomy_mentions("The left lung is clear.") == {"left lung"}
    assert anatomy_mentions("Opacity in the lingula.") == {"left mid lung zone"}
    assert anatomy_mentions("No acute osseous abnormalities.") == set()


def test_boxes_on_the_model_grid():
    # a 200 x 100 (rows x cols) image into a 64 px input: scale 0.32, padded 16 px left and right
    b = np.array([[0.0, 0.0, 100.0, 100.0], [np.nan] * 4])
    m = boxes_to_model(b, 0.32, 16.0, 0.0)
    assert m[0].tolist() == pytest.approx([16.0, 0.0, 48.0, 32.0]) and np.isnan(m[1]).all()
    shifted = boxes_to_model(b, 0.32, 16.0, 0.0, np.array([[1.0, 0.0, 4.0], [0.0, 1.0, -2.0]]))
    assert shifted[0].tolist() == pytest.approx([20.0, -2.0, 52.0, 30.0])
    g = grid_masks(m, 64, (4, 4))  # cells of 16 px: x 16..48 = columns 1, 2; y 0..32 = rows 0, 1
    assert g[0].tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]] and g[1].sum() == 0
    half = grid_masks(np.array([[8.0, 0.0, 16.0, 16.0]]), 64, (4, 4))
    assert half[0, 0, 0] == pytest.approx(0.5)


def test_read_phantom_csv_and_imagenome(tmp_path):
    from elvis_core.phantom import generate

    generate(tmp_path / "ph", 3, seed=5, size=128)
    idx = read_anatomy(tmp_path / "ph" / "anatomy.csv")
    assert len(idx) == 3 and all(len(v[1]) == 16 and v[0][0] == 128 for v in idx.values())
    sg = tmp_path / "sg"
    sg.mkdir()
    (sg / "abc_SceneGraph.json").write_text(json.dumps({"image_id": "abc", "objects": [
        {"bbox_name": "right lung", "original_x1": 10, "original_y1": 20, "original_x2": 110, "original_y2": 220,
         "original_width": 300, "original_height": 400, "x1": 1, "y1": 2, "x2": 3, "y2": 4},
        {"bbox_name": "spine", "x1": 1, "y1": 1, "x2": 2, "y2": 2}]}))
    got = read_anatomy(sg)
    assert got == {"abc": ((400, 300), {"right lung": (10.0, 20.0, 100.0, 200.0)})}
    (sg / "bad_SceneGraph.json").write_text("{")
    with pytest.raises(ElvisError, match="bad_SceneGraph.json.*not a Chest ImaGenome scene graph"):
        read_anatomy(sg)
    bad = tmp_path / "a.csv"
    bad.write_text("dicom_id,bbox_name,x,y,w,h\nq,right lung,1,2,zero,4\n")
    with pytest.raises(ElvisError, match="a.csv.*line 2"):
        read_anatomy(bad)
    with pytest.raises(ElvisError, match="not found"):
        read_anatomy(tmp_path / "nope.csv")


def test_anatomy_loss_hand():
    """With the transformer replaced by 'normalise the pooled feature', the loss is the two multi-positive
    cross-entropies computed by loops."""
    torch.manual_seed(0)
    feats = torch.randn(2, 2, 2, 3, dtype=torch.float64)
    sent = F.normalize(torch.randn(2, 2, 3, dtype=torch.float64), dim=-1)
    s_valid = torch.tensor([[True, True], [True, False]])
    masks = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    masks[0, 0, 0, :] = 1.0  # region 0 of image 0: top row
    masks[0, 1, :, 1] = 0.5  # region 1 of image 0: right column, half-covered cells
    masks[1, 0, 1, 0] = 1.0  # region 0 of image 1: one cell; region 1 absent
    ment = torch.zeros(2, 2, 2, dtype=torch.bool)
    ment[0, 0, 1] = True  # sentence 1 of report 0 mentions region 0
    ment[0, 1, 0] = ment[0, 1, 1] = True
    ment[1, 0, 0] = True
    ment[1, 1, 0] = True  # region 1 of image 1 is absent: ignored
    tau = 0.5
    obj = AnatomyAlignment(3, 3, temperature=tau).double()
    obj.module.forward = lambda pooled, present: F.normalize(pooled, dim=-1)
    loss = obj(feats, sent, s_valid, masks, ment).item()

    fl = feats.flatten(1, 2).tolist()
    ml = masks.flatten(2).tolist()
    regions = {}
    for b in range(2):
        for r in range(2):
            w = ml[b][r]
            if sum(w) == 0:
                continue
            v = [sum(w[n] * fl[b][n][c] for n in range(4)) / sum(w) for c in range(3)]
            nv = math.sqrt(sum(x * x for x in v))
            regions[(b, r)] = [x / nv for x in v]
    sents = {(b, s): sent[b, s].tolist() for b in range(2) for s in range(2) if s_valid[b, s]}

    def ce_multi(logits, pos):
        m = max(logits)
        lse = m + math.log(sum(math.exp(x - m) for x in logits))
        return -sum((x - lse) for x, p in zip(logits, pos) if p) / sum(pos)

    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    rs = []
    for (b, r), a in regions.items():
        keys = list(sents)
        pos = [bb == b and bool(ment[b, r, s]) for (bb, s) in keys]
        if any(pos):
            rs.append(ce_multi([dot(a, sents[k]) / tau for k in keys], pos))
    sr = []
    for (b, s), e in sents.items():
        keys = list(regions)
        pos = [bb == b and bool(ment[b, r, s]) for (bb, r) in keys]
        if any(pos):
            sr.append(ce_multi([dot(regions[k], e) / tau for k in keys], pos))
    assert loss == pytest.approx(0.5 * (sum(rs) / len(rs) + sum(sr) / len(sr)), rel=1e-6)


def test_batch_anatomy_and_gradient_reaches_the_module_and_the_features():
    boxes = [np.array([[0.0, 0.0, 32.0, 32.0]] + [[np.nan] * 4] * 15), None]
    sents = [["Small right apical pneumothorax.", "Heart size is normal."], ["Clear."]]
    out = batch_anatomy(boxes, sents, 64, (4, 4))
    assert out["anatomy_masks"].shape == (2, 16, 4, 4) and out["anatomy_masks"][0, 0].sum() == 4
    assert out["anatomy_mentions"].shape == (2, 16, 2)
    from elvis_core.phantom.anatomy_boxes import ANATOMY_REGIONS

    assert out["anatomy_mentions"][0, ANATOMY_REGIONS.index("right apical zone"), 0]
    assert out["anatomy_mentions"][0, ANATOMY_REGIONS.index("cardiac silhouette"), 1]
    feats = torch.randn(2, 4, 4, 6, requires_grad=True)
    masks = out["anatomy_masks"].clone()
    masks[0, ANATOMY_REGIONS.index("right apical zone")] = 1.0
    masks[0, ANATOMY_REGIONS.index("cardiac silhouette"), 2:, 1:3] = 1.0
    obj = AnatomyAlignment(6, 5)
    loss = obj(feats, F.normalize(torch.randn(2, 2, 5), dim=-1), torch.tensor([[True, True], [True, False]]),
               masks, out["anatomy_mentions"])
    loss.backward()
    assert torch.isfinite(loss) and float(feats.grad.abs().sum()) > 0
    assert float(obj.module.inp.weight.grad.abs().sum()) > 0
