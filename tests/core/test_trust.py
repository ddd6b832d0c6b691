"""A map says how far to believe it: GroundingMap trust fields, attach_trust, the engine, known words."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from elvis_core.errors import CheckpointError, GroundingError
from elvis_core.grounding.engine import GroundingEngine
from elvis_core.grounding.presence import attach_trust, fit_presence_calibration
from elvis_core.grounding.types import GroundingMap
from elvis_core.model.vocab import (known_words_from_texts, merge_known_words, tokenizer_whole_words, unknown_words,
                                    unknown_words_sentence, words_of)

from .test_grounding import StandInModel, bright_ramp_map, phantom

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo_model"
CAL = {"kind": "logistic", "feature": "peak", "a": 20.0, "b": -10.0, "threshold": 0.5,
       "calibrated_on": "synthetic test", "ece": None, "n_present": 10, "n_absent": 10}


def _map(sim, seen=None, phrase="left effusion"):
    sim = np.asarray(sim, dtype=np.float32)
    gh, gw = sim.shape
    a = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 1]])
    return GroundingMap(similarity=sim, grid_to_image=a, image_shape=(10 * gh, 10 * gw), phrase=phrase,
                        seen_region=seen)


def test_trust_line_calibrated_uncalibrated_partial_and_unknown():
    gm = attach_trust(_map([[0.2, 0.3], [0.1, 0.6]], phrase="nodule left"), CAL, {"left"})
    assert gm.peak == pytest.approx(0.6)
    assert gm.presence == pytest.approx(1 / (1 + math.exp(-(20 * 0.6 - 10))))
    assert gm.confident is True and gm.presence_threshold == 0.5 and gm.calibrated_on == "synthetic test"
    assert gm.unknown_words == ["nodule"]
    assert gm.trust_line() == "presence 0.88 — confident region · whole image seen · unknown to this model: nodule"
    low = attach_trust(_map([[0.2, 0.3], [0.1, 0.4]]), CAL, {"left", "effusion"})
    assert low.confident is False and low.unknown_words == []
    assert low.trust_line() == "presence 0.12 — no confident region · whole image seen"
    unc = attach_trust(_map([[0.2, 0.41], [0.1, 0.3]]), None, None)
    assert unc.presence is None and unc.confident is None and unc.presence_threshold is None
    assert unc.unknown_words == []  # nothing known about the vocabulary: claim nothing
    assert unc.trust_line() == "uncalibrated (peak 0.41) · whole image seen"
    assert GroundingMap(np.zeros((2, 2), np.float32), np.eye(3), (2, 2)).trust_line().startswith("uncalibrated ·")


def test_peak_counts_only_what_the_model_saw():
    # the model saw only the left half (x < 10 of 20): the right column's 0.9 is not evidence
    gm = attach_trust(_map([[0.2, 0.9], [0.3, 0.9]], seen=(0.0, 0.0, 10.0, 20.0)), None, None)
    assert gm.peak == pytest.approx(0.3)
    assert "model saw 50 % of the image" in gm.trust_line()
    # the raw grid decides, not the smoothed one
    gm2 = _map([[0.1, 0.1], [0.1, 0.1]])
    gm2.raw_similarity = np.array([[0.1, 0.7], [0.1, 0.1]], np.float32)
    assert attach_trust(gm2, None, None).peak == pytest.approx(0.7)


def test_engine_fills_trust_from_model_calibration_and_vocabulary():
    model = StandInModel()
    eng = GroundingEngine(model, device="cpu")
    gm = eng.ground_image(phantom(), "bright nodule")
    assert gm.presence is None and gm.peak == pytest.approx(float(gm.raw_similarity.max()), abs=1e-6)
    assert gm.unknown_words == ["nodule"]  # the stand-in tokenizer has no such word
    assert eng.known_words_source == "the tokenizer's whole words"
    model2 = StandInModel()
    cal = fit_presence_calibration([0.8, 0.9, 0.95, 0.85], [0.5, 0.6, 0.55, 0.65], "stand-in test")
    model2.presence_calibration = cal
    eng2 = GroundingEngine(model2, device="cpu")
    maps = [eng2.ground_image(phantom(), "bright", tokens=True)] + eng2.ground_many(["bright", "dark"])
    for m in maps:
        assert m.presence == pytest.approx(1 / (1 + math.exp(-(cal["a"] * m.peak + cal["b"]))))
        assert m.calibrated_on == "stand-in test"
    model3 = StandInModel()
    model3.presence_calibration = {"kind": "logistic"}
    with pytest.raises(GroundingError, match="presence_calibration lacks"):
        GroundingEngine(model3, device="cpu")


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck") / "demo"
    shutil.copytree(DEMO, d)
    return d


def test_demo_model_knows_its_training_words_not_basal_or_pacemaker(demo_copy):
    assert (DEMO / "known_words.json").is_file()
    eng = GroundingEngine(demo_copy, device="cpu")
    assert "training reports" in eng.known_words_source
    tok = eng.model.tokenizer
    for w in ("effusion", "pneumothorax", "cardiomegaly", "left", "right", "basilar", "retrocardiac"):
        assert w in eng.known_words
    gm = eng.ground_image(phantom(), "nodule in the left basal lung pacemaker")
    known = set(json.loads((DEMO / "known_words.json").read_text())["words"])
    for w in ("nodule", "basal", "pacemaker"):
        # the recorded training words decide, not the tokenizer: a word split into pieces may still have been trained
        assert (w in gm.unknown_words) == (w not in known), (w, gm.unknown_words)
    assert "left" not in gm.unknown_words and "lung" not in gm.unknown_words
    assert tok.tokenize("nodule") == ["no", "##d", "##ul", "##e"] and tok.tokenize("basal") == ["bas", "##al"]
    assert "pacemaker" in tok.get_vocab()  # in the tokenizer's seed corpus, but in no training report or phrase
    assert "basal" not in known and "pacemaker" not in known
    if "nodule" in known:  # the word-following fine-tune trained on phantom v2's nodule phrases
        assert gm.unknown_words == ["basal", "pacemaker"]
        assert gm.trust_line().endswith("unknown to this model: basal, pacemaker")
    else:  # the model trained on phantom4k alone (seed 11)
        assert gm.unknown_words == ["nodule", "basal", "pacemaker"]
        assert gm.trust_line().endswith("unknown to this model: nodule, basal, pacemaker")


def test_calibration_in_config_json_is_used_and_a_bad_one_named(demo_copy, tmp_path):
    d = tmp_path / "cal"
    shutil.copytree(demo_copy, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["presence_calibration"] = dict(CAL)
    (d / "config.json").write_text(json.dumps(cfg))
    eng = GroundingEngine(d, device="cpu")
    gm = eng.ground_image(phantom(), "left pleural effusion")
    assert gm.presence == pytest.approx(1 / (1 + math.exp(-(20 * gm.peak - 10))))
    assert gm.trust_line().startswith(f"presence {gm.presence:.2f} — ")
    cfg["presence_calibration"]["a"] = "steep"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GroundingError, match=r"presence_calibration a must be a finite number") as ei:
        GroundingEngine(d, device="cpu")
    assert "cal" in str(ei.value)


def test_known_words_json_round_trip_and_bad_file(tmp_path):
    import torch

    from elvis_core.model import build_model
    from elvis_core.model.checkpoint import load_checkpoint, save_checkpoint
    from elvis_core.model.config import preset

    torch.manual_seed(0)
    m = build_model(preset("demo"))
    m.known_words = {"source": "2 test reports", "words": ["effusion", "left", "effusion"]}
    ck = save_checkpoint(m, tmp_path / "ck")
    data = json.loads((ck / "known_words.json").read_text())
    assert data == {"source": "2 test reports", "words": ["effusion", "left"]}
    assert load_checkpoint(ck).known_words["words"] == ["effusion", "left"]
    (ck / "known_words.json").write_text('{"words": [1, 2]}')
    with pytest.raises(CheckpointError, match="known_words.json must hold a list"):
        load_checkpoint(ck)
    (ck / "known_words.json").unlink()
    assert load_checkpoint(ck).known_words is None  # old checkpoints: the engine falls back to the tokenizer


def test_vocab_word_helpers():
    assert words_of("Small left-sided effusion, 1 cm.") == ["small", "left", "sided", "effusion", "cm"]
    assert known_words_from_texts(["No effusion.", "Left effusion"]) == ["effusion", "left", "no"]
    assert unknown_words("Nodule, nodule at the LEFT base", {"left", "at", "the"}) == ["nodule", "base"]
    assert unknown_words("anything", set()) == [] and unknown_words("anything", None) == []
    assert unknown_words_sentence(["nodule"]) == "nodule is unknown to this model"
    assert unknown_words_sentence(["nodule", "basal"]) == "nodule, basal are unknown to this model"
    assert unknown_words_sentence([]) == ""
    merged = merge_known_words({"source": "old", "words": ["a"]}, ["b c"], "1 training report")
    assert merged == {"source": "1 training report + old", "words": ["a", "b", "c"]}
    whole = tokenizer_whole_words(StandInModel().tokenizer)
    assert "bright" in whole and "[UNK]" not in whole and "[unk]" not in whole


def test_figure_carries_the_trust_caption_and_draws_a_not_confident_map_faint():
    from elvis_core.grounding.figure import render_overlay

    rad, gm = bright_ramp_map()
    plain = render_overlay(rad, gm, opacity=1.0, min_side=0, trust="")
    captioned = render_overlay(rad, gm, opacity=1.0, min_side=0)  # default: gm.trust_line()
    assert captioned.shape[0] > plain.shape[0]
    band = captioned[: captioned.shape[0] - plain.shape[0]]
    lit = band[band.max(axis=2) > 100]
    assert len(lit) and (lit[:, 0] > lit[:, 2] + 60).mean() > 0.5  # uncalibrated: amber text
    img_plain = plain[:96, :160].astype(int)
    sure = attach_trust(gm, dict(CAL, a=100.0, b=-1.0), None)
    assert sure.confident is True
    img_sure = render_overlay(rad, sure, opacity=1.0, min_side=0, trust="")[:96, :160].astype(int)
    assert np.array_equal(img_sure, img_plain)  # confident: drawn as before
    unsure = attach_trust(gm, dict(CAL, a=1.0, b=-50.0), None)
    assert unsure.confident is False
    img_unsure = render_overlay(rad, unsure, opacity=1.0, min_side=0, trust="")[:96, :160].astype(int)
    grey = render_overlay(rad, gm, opacity=0.0, min_side=0, trust="")[:96, :160].astype(int)
    # faint: 40 % of the colour, the rest the film
    assert np.abs(img_unsure - (0.4 * img_plain + 0.6 * grey)).max() <= 2


def test_engine_settings_say_whether_maps_are_calibrated():
    eng = GroundingEngine(StandInModel(), device="cpu")
    assert eng.settings()["presence_calibration"] == "uncalibrated"
    assert eng.settings()["known_words"] == "the tokenizer's whole words"
    m = StandInModel()
    m.presence_calibration = CAL
    assert GroundingEngine(m, device="cpu").settings()["presence_calibration"] == "synthetic test"
