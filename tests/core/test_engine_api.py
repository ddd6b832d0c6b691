"""The engine's public API for interactive front ends: load + warm-up, batched phrase encoding, the non-blocking
cached path, the per-radiograph pixel hash and the provenance it exposes."""

import json
import threading

import numpy as np
import pytest

from elvis_core.grounding.engine import GroundingEngine
from elvis_core.grounding.provenance import is_phantom_image, provenance_warning, training_data_kind
from elvis_core.io.radiograph import Radiograph

from .test_grounding import StandInModel, phantom


def test_load_warms_up_and_hashes():
    model = StandInModel()
    eng = GroundingEngine.load(model, device="cpu")
    assert model.encode_image_calls == 1 and model.encode_text_calls == 1  # the warm-up pass
    assert len(eng.checkpoint_hash) == 12 and eng.provenance == {}


def test_encode_phrases_is_one_batched_call_and_makes_grounding_a_lookup():
    model = StandInModel()
    eng = GroundingEngine(model, device="cpu")
    rad = phantom()
    eng.embed(rad)
    assert eng.encode_phrases(["bright", "dark", " ", "bright", "left lung"]) == 3
    assert model.encode_text_calls == 1  # one call for the three distinct phrases
    assert eng.encode_phrases(["dark"]) == 0 and model.encode_text_calls == 1
    gm = eng.try_ground_cached(rad, "bright")
    assert gm is not None and model.encode_text_calls == 1 and model.encode_image_calls == 1
    np.testing.assert_allclose(gm.similarity, eng.ground_image(rad, "bright").similarity)
    # a phrase or an image that is not cached: None (the caller goes to a worker), nothing encoded
    assert eng.try_ground_cached(rad, "small opacity") is None
    assert eng.try_ground_cached(phantom(5.0), "bright") is None
    assert model.encode_text_calls == 1 and model.encode_image_calls == 1


def test_try_ground_cached_never_blocks_on_a_busy_engine():
    eng = GroundingEngine(StandInModel(), device="cpu")
    rad = phantom()
    eng.embed(rad)
    eng.encode_phrases(["bright"])
    held, release = threading.Event(), threading.Event()

    def hold():
        with eng._lock:
            held.set()
            release.wait(5)
    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        assert eng.try_ground_cached(rad, "bright") is None  # busy: returns at once instead of waiting
    finally:
        release.set()
        t.join()
    assert eng.try_ground_cached(rad, "bright") is not None


def test_pixel_hash_is_computed_once_per_radiograph(monkeypatch):
    import hashlib

    eng = GroundingEngine(StandInModel(), device="cpu")
    rad = phantom()
    calls = []
    real = hashlib.blake2b
    monkeypatch.setattr(hashlib, "blake2b", lambda *a, **k: calls.append(1) or real(*a, **k))
    k1 = eng.image_key(rad)
    for _ in range(5):
        assert eng.image_key(rad) == k1
    assert len(calls) == 1
    # a different array (same values) is hashed on its own and gives the same key
    other = Radiograph(pixels=rad.pixels.copy(), windows=rad.windows)
    assert eng.image_key(other) == k1 and len(calls) == 2


def test_ground_image_tokens():
    eng = GroundingEngine(StandInModel(), device="cpu")
    gm = eng.ground_image(phantom(), "bright dark", tokens=True)
    assert gm.tokens == ["bright", "dark"] and gm.token_maps.shape[0] == 2


def test_checkpoint_provenance_read_from_config(tmp_path):
    import torch

    from elvis_core.model import build_model
    from elvis_core.model.checkpoint import save_checkpoint
    from elvis_core.model.config import preset

    torch.manual_seed(0)
    ck = save_checkpoint(build_model(preset("demo")), tmp_path / "ck",
                         provenance={"data": {"root": "/data/ph", "source": "phantom"}})
    eng = GroundingEngine(ck, device="cpu")
    assert eng.provenance["data"]["source"] == "phantom"
    assert training_data_kind(eng.provenance) == "phantom"


def test_training_data_kind_and_warning():
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[2] / "resources" / "demo_model" / "config.json"
    demo = json.loads(cfg.read_text(encoding="utf-8"))["provenance"]
    assert training_data_kind(demo) == "phantom"  # demo_build.phantom + "elvis phantom" in its command
    assert training_data_kind({"data": {"root": "/mimic", "n_train_pairs": 10}}) == "real"
    assert training_data_kind({}) == "unknown" and training_data_kind(None) == "unknown"
    assert training_data_kind({"data": {"root": "/x"}, "phantom": False}) == "real"
    real = Radiograph(pixels=np.zeros((4, 4), np.float32), meta={"Manufacturer": "Philips Medical Systems"})
    ph = Radiograph(pixels=np.zeros((4, 4), np.float32), meta={"Manufacturer": "ELVIS Phantom"})
    assert is_phantom_image(ph) and not is_phantom_image(real)
    assert "phantom" in provenance_warning(demo, real, "demo_model")
    assert provenance_warning(demo, ph) == ""  # phantom model on a phantom image: nothing to warn about
    assert provenance_warning({"data": {"root": "/mimic"}}, real) == ""


def test_phantom_writer_marks_its_images(tmp_path):
    """The phantom generator's DICOMs are recognised after a real read (the metadata the check relies on)."""
    from elvis_core.io.images import read_image
    from elvis_core.phantom.generate import generate

    generate(str(tmp_path / "ph"), n_studies=1, seed=0, size=128)
    dcm = next((tmp_path / "ph").rglob("*.dcm"))
    assert is_phantom_image(read_image(str(dcm)))


@pytest.mark.parametrize("bad", ["", "   "])
def test_try_ground_cached_rejects_empty(bad):
    eng = GroundingEngine(StandInModel(), device="cpu")
    assert eng.try_ground_cached(phantom(), bad) is None
