"""The word-following objective (box, presence ranking vs twins and swapped phrases, out of box) and its fine-tune
loop on a phantom set with twins."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from elvis_core.training.objectives.words import WordNegatives, negatives_for


def test_negatives_for():
    n = negatives_for("small left upper lobe opacity")
    assert n == ["small right upper lobe opacity", "small left lower lobe opacity", "no small left upper lobe opacity"]
    assert negatives_for("cardiomegaly") == ["no cardiomegaly"]


def _setup(match_box: bool, twin_matches: bool, neg_matches_box: bool):
    torch.manual_seed(0)
    gh = gw = 6
    d = 8
    phrase = F.normalize(torch.randn(1, d), dim=-1)
    neg = F.normalize(torch.randn(1, d), dim=-1)
    background = F.normalize(torch.randn(1, gh, gw, d), dim=-1) * 0.1
    patch = background.clone()
    box = torch.zeros(1, gh, gw, dtype=torch.bool)
    box[0, 1:3, 1:3] = True
    target = (1, 1) if match_box else (4, 4)
    patch[0, target[0], target[1]] = phrase[0]
    if neg_matches_box:
        patch[0, 2, 2] = neg[0]
    twin = background.clone()
    if twin_matches:
        twin[0, 1, 1] = phrase[0]
    seen = torch.ones(1, gh, gw, dtype=torch.bool)
    return dict(patch=patch, twin_patch=twin, seen=seen, pos_emb=phrase, owner=torch.tensor([0]), box=box,
                neg_emb=neg, neg_of=torch.tensor([0]))


def test_each_term_rewards_what_it_should():
    loss = WordNegatives()
    good, gp = loss(**_setup(True, False, False))
    wrong_place, wp = loss(**_setup(False, False, False))
    twin_lights, tp = loss(**_setup(True, True, False))
    neg_in_box, np_ = loss(**_setup(True, False, True))
    assert gp["box"] < wp["box"]
    assert gp["rank"] < tp["rank"] and tp["absent_peak"] > gp["absent_peak"]
    assert gp["out_of_box"] < np_["out_of_box"]
    assert good < min(wrong_place, twin_lights, neg_in_box)


def test_gradients_reach_image_and_text():
    args = _setup(False, True, True)
    args["patch"].requires_grad_(True)
    args["pos_emb"].requires_grad_(True)
    total, _ = WordNegatives()(**args)
    total.backward()
    assert args["patch"].grad.abs().sum() > 0 and args["pos_emb"].grad.abs().sum() > 0


def test_finetune_loop_writes_a_loadable_checkpoint(tmp_path):
    from elvis_core.model.checkpoint import load_checkpoint
    from elvis_core.phantom import generate
    from elvis_core.resources import demo_model
    from elvis_core.training.word_finetune import load_config, train

    generate(tmp_path / "ph", 6, seed=2, size=256, splits=(100, 0, 0), twins=True)
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f'init_from = "{demo_model()}"\ndata = "{tmp_path / "ph"}"\nout = "{tmp_path / "run"}"\n'
                        "steps = 2\nbatch_size = 2\ncheckpoint_every = 2\nthreads = 1\n")
    logs = []
    out = train(load_config(str(cfg_path)), log=logs.append)
    ck = out / "step_00002"
    model = load_checkpoint(ck)
    assert model.grid_shape() == load_checkpoint(demo_model()).grid_shape()
    assert (out / "log.csv").read_text().count("\n") == 3  # header + 2 steps
    assert any("films" in ln for ln in logs)


def test_negation_shape_term_punishes_a_no_p_map_like_p():
    loss = WordNegatives(negation_weight=1.0)
    args = _setup(True, False, False)
    same = dict(args, neg_emb=args["pos_emb"].clone(), neg_is_negation=torch.tensor([True]))
    _t, p_same = loss(**same)
    opposite = dict(args, neg_emb=-args["pos_emb"].clone(), neg_is_negation=torch.tensor([True]))
    _t, p_opp = loss(**opposite)
    assert p_same["negation"] > 1.0 and p_opp["negation"] == 0.0
    _t, p_off = loss(**dict(same, neg_is_negation=torch.tensor([False])))
    assert p_off["negation"] == 0.0
