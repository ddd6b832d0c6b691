"""Mirror consensus: grounding averaged with the mirrored film (sides swapped), and the mirror-consistency term.

Contrastive grounding losses cannot see a constant shift of the feature grid; a shift flips with the film, so both
the consensus map (inference) and the consistency term (training) can."""

import numpy as np
import pytest
import torch

from elvis_core.grounding.engine import GroundingEngine, mirror_model_input
from elvis_core.grounding.sides import mirrored_phrase
from elvis_core.io.radiograph import Radiograph
from elvis_core.model import build_model, preset
from elvis_core.training.objectives import MirrorConsistency


def test_mirrored_phrase_swaps_sides_only():
    assert mirrored_phrase("Right apical opacity") == "Left apical opacity"
    assert mirrored_phrase("no LEFT effusion; right-sided atelectasis") == "no RIGHT effusion; left-sided atelectasis"
    assert mirrored_phrase("bright lefty bilateral edema") == "bright lefty bilateral edema"


def test_mirror_input_puts_cell_centres_on_cell_centres():
    s, size = 16, 64
    g = size // s
    x = torch.arange(size, dtype=torch.float32).repeat(1, 1, size, 1)  # value = column index
    t = type("T", (), {"mean": 0.5, "std": 0.25})()
    m = mirror_model_input(x, s, t)
    for j in range(g):  # a ResNet's output j looks at input column s * j
        assert m[0, 0, 0, s * (g - 1 - j)] == x[0, 0, 0, s * j]
    assert torch.all(m[..., size - (s - 1):] == (0.0 - 0.5) / 0.25)  # entering columns: black padding


def _radiograph(arr):
    return Radiograph(pixels=arr.astype(np.float32))


def test_engine_mirror_average_is_the_mean_of_both_grids():
    torch.manual_seed(0)
    model = build_model(preset("tiny")).eval()
    rng = np.random.default_rng(0)
    rad = _radiograph(rng.random((90, 70)) * 1000)
    plain = GroundingEngine(model, device="cpu", mirror_average=False)
    both = GroundingEngine(model, device="cpu", mirror_average=True)
    assert both.settings()["mirror_average"] is True and plain.settings()["mirror_average"] is False
    phrase = "right lower lobe opacity"
    plain.set_image(rad)
    both.set_image(rad)
    a = plain.ground(phrase).similarity
    got = both.ground(phrase).similarity
    # by hand: the mirrored model input, its grid flipped back, against "left lower lobe opacity"
    x = torch.from_numpy(model.transform.apply(rad).astype(np.float32))[None, None]
    xm = mirror_model_input(x, model.output_stride, model.transform)
    with torch.no_grad():
        pm = model.encode_image(xm).patch_emb[0].flip(1)
        tok = model.tokenize([mirrored_phrase(phrase)])
        v = model.encode_text(tok["input_ids"], tok["attention_mask"]).global_emb[0]
    b = torch.einsum("hwd,d->hw", pm, v).numpy()
    assert np.allclose(got, (a + b) / 2, atol=1e-5)
    assert not np.allclose(got, a, atol=1e-3)
    # ground_many agrees, and the GUI fast path waits until the swapped twin is cached too
    assert np.allclose(both.ground_many([phrase, "cardiomegaly"])[0].similarity, got, atol=1e-6)
    fresh = GroundingEngine(model, device="cpu", mirror_average=True)
    fresh.set_image(rad)
    fresh._text_globals(["left apical opacity"])
    assert not fresh.has_phrase("left apical opacity")
    assert fresh.try_ground_cached(rad, "left apical opacity") is None
    assert fresh.encode_phrases(["left apical opacity"]) == 1  # only the missing swapped twin
    assert fresh.has_phrase("left apical opacity") and fresh.try_ground_cached(rad, "left apical opacity") is not None


def test_engine_reads_mirror_average_from_the_checkpoint_config():
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg["image"]["mirror_average"] = True
    model = build_model(cfg).eval()
    assert GroundingEngine(model, device="cpu").mirror_average is True
    assert GroundingEngine(model, device="cpu", mirror_average=False).mirror_average is False
    assert GroundingEngine(build_model(preset("tiny")).eval(), device="cpu").mirror_average is False


def test_mirror_consistency_hand_cases_and_gradients():
    term = MirrorConsistency()
    torch.manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(2, 3, 4, 8), dim=-1)
    e = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    owner = torch.tensor([0, 1, 1])
    assert term(p, p.clone(), e, e.clone(), owner).item() == pytest.approx(0.0, abs=1e-6)  # consistent: 0
    assert term(p, p.clone(), e, -e, owner).item() == pytest.approx(2.0, abs=1e-5)  # anti-correlated maps: 2
    shifted = torch.roll(p, 1, dims=2)  # the same features one cell to the right
    assert term(p, shifted, e, e.clone(), owner).item() > 0.1
    pa = p.clone().requires_grad_(True)
    pb = shifted.clone().requires_grad_(True)
    term(pa, pb, e, e.clone(), owner).backward()
    assert pa.grad.abs().sum() > 0 and pb.grad.abs().sum() > 0  # both branches are trained
    assert term(p, p, e[:0], e[:0], owner[:0]).item() == 0.0


def test_mirror_attention_kind_sees_a_one_cell_shift_more_than_pearson():
    """A blob three cells wide moved one cell: Pearson r over the grid stays high; the attention KL does not."""
    grid = torch.zeros(1, 8, 8)
    grid[0, 3:6, 2:5] = 1.0
    shifted = torch.roll(grid, 1, dims=2)
    basis = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    # patches whose cosine with e = (1, 0) is 0.5 on the blob and 0.1 elsewhere
    def patches(g):
        c = 0.1 + 0.4 * g
        return torch.stack([c, torch.sqrt(1 - c ** 2)], -1)
    e = basis[:1]
    owner = torch.tensor([0])
    pear = MirrorConsistency("pearson")(patches(grid), patches(shifted), e, e, owner).item()
    att = MirrorConsistency("attention", temperature=0.05)(patches(grid), patches(shifted), e, e, owner).item()
    same = MirrorConsistency("attention")(patches(grid), patches(grid), e, e, owner).item()
    assert same == pytest.approx(0.0, abs=1e-6)
    assert att > 1.0 > pear  # KL of two spatial distributions whose mass moved: large; 1 - r: moderate
    with pytest.raises(ValueError, match="kind"):
        MirrorConsistency("cosine")
