"""Segmentation probes (elvis_core/grounding/probe.py): labelled phantom studies, linear / fine-tuned heads, Dice."""

import math

import numpy as np
import pytest
import torch

from elvis_core.errors import ElvisError
from elvis_core.grounding.probe import (CLASSES, dice_per_image, finetune_probe, fraction_indices, group_dice,
                                        linear_probe, predict_linear, probe_scores, probe_set)
from elvis_core.model.config import preset
from elvis_core.model.elvis import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(preset("tiny"), texts=["left effusion", "no pneumothorax"]).eval()


@pytest.fixture(scope="module")
def probes(model, tmp_path_factory):
    return probe_set(tmp_path_factory.mktemp("probe") / "set", 8, 7, 64, model.transform)


def test_probe_masks_lie_on_the_anatomy_they_name(probes):
    assert probes.inputs.shape == (8, 1, 64, 64) and probes.masks.shape == (8, len(CLASSES), 64, 64)
    x = probes.inputs[:, 0]
    lungs, heart = probes.masks[:, CLASSES.index("lungs")], probes.masks[:, CLASSES.index("heart")]
    assert bool(lungs.flatten(1).any(1).all()) and bool(heart.flatten(1).any(1).all())
    for i in range(8):  # lungs are air (dark), the heart is dense (bright) on every film: masks and pixels align
        assert float(x[i][lungs[i]].mean()) < float(x[i][heart[i]].mean()) - 0.5
    # every finding of the set has a mask
    assert int(probes.masks[:, 2:].flatten(2).any(-1).sum()) >= 1


def test_probe_set_refuses_a_folder_that_does_not_match_its_seed(model, probes, tmp_path):
    folder = tmp_path / "p"
    probe_set(folder, 2, 9, 64, model.transform)
    txt = next(folder.rglob("*.txt"))
    txt.write_text("Something else.", encoding="utf-8")
    with pytest.raises(ElvisError, match="does not match its seed"):
        probe_set(folder, 2, 9, 64, model.transform)


def test_probe_set_of_generator_v1_is_read_with_its_version(model, tmp_path):
    """The documented ELVIS-paper run's probe sets are generator v1: read back with version=1, refused by the v2
    default (its reports differ), never silently mixed."""
    folder = tmp_path / "v1"
    ps = probe_set(folder, 2, 9, 64, model.transform, version=1)
    assert ps.inputs.shape[0] == 2
    with pytest.raises(ElvisError, match="does not match its seed"):
        probe_set(folder, 2, 9, 64, model.transform)


def test_dice_per_image_by_hand():
    prob = torch.zeros(1, 2, 4, 4)
    prob[0, 0, :2, :2] = 0.9  # 4 predicted cells
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :] = True  # 8 true cells, 4 shared
    d = dice_per_image(prob, masks)
    assert d[0, 0] == pytest.approx(2 * 4 / (4 + 8)) and math.isnan(d[0, 1])
    g = group_dice(np.array([[0.5, 0.7] + [0.2] * (len(CLASSES) - 2)]),
                   torch.zeros(1, len(CLASSES), 2, 2, dtype=torch.bool))
    assert math.isnan(g["lungs"][0]) and math.isnan(g["findings"][0])  # nothing labelled: no score


def test_fraction_indices():
    a = fraction_indices(200, 0.01, 3)
    assert len(a) == 2 and a == fraction_indices(200, 0.01, 3) and len(fraction_indices(200, 1.0, 3)) == 200
    assert set(fraction_indices(200, 0.1, 3)) != set(fraction_indices(200, 0.1, 4))
    with pytest.raises(ValueError, match="fraction"):
        fraction_indices(10, 0.0, 0)


def test_linear_probe_learns_from_informative_features_and_not_from_noise(probes):
    g = torch.Generator().manual_seed(0)
    grid = torch.nn.functional.adaptive_avg_pool2d(probes.masks.float(), 16)  # [N, K, 16, 16]
    informative = torch.cat([grid, 0.1 * torch.randn(grid.shape, generator=g)], 1).permute(0, 2, 3, 1)
    noise = torch.randn(informative.shape, generator=g)
    tr, te = list(range(6)), list(range(6, 8))
    scores = {}
    for name, f in (("informative", informative), ("noise", noise)):
        head = linear_probe(f[tr], probes.masks[tr], iters=200)
        d = dice_per_image(predict_linear(head, f[te], 64), probes.masks[te])
        scores[name] = np.nanmean(d[:, :2])  # lungs and heart
    assert scores["informative"] > 0.8 and scores["informative"] > scores["noise"] + 0.2


def test_finetune_leaves_the_model_untouched_and_probe_scores_has_every_fraction(model, probes):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prob = finetune_probe(model, probes.subset(range(4)), probes.inputs[4:], steps=2, batch_size=2)
    assert prob.shape == (4, len(CLASSES), 64, 64) and float(prob.min()) >= 0 and float(prob.max()) <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    sc = probe_scores(model, probes.subset(range(6)), probes.subset([6, 7]), fractions=(0.5, 1.0),
                      finetune_fraction=0.5, finetune_steps=1)
    assert set(sc) == {"linear 50%", "linear 100%", "finetune 50%"}
    assert set(sc["linear 100%"]) == {"lungs", "heart", "findings", "mean"} and len(sc["linear 100%"]["mean"]) == 2
