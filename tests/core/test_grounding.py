"""GroundingEngine against a tiny, transparent stand-in model with the agreed model API.

The stand-in's patch embedding is [b, 1 - b] (normalised) where b is the patch's mean input brightness in [0, 1];
the text embedding of "bright" is [1, 0], of "dark" [0, 1], any other word [1, 1]/sqrt(2). So "bright" must ground
on bright regions, "dark" on dark ones, and the expected similarity values can be written down.
"""

import math
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from elvis_core.errors import GroundingError
from elvis_core.grounding.engine import GroundingEngine, smooth_grid
from elvis_core.grounding.metrics import cnr, pointing_game
from elvis_core.io.annotations import Box
from elvis_core.io.radiograph import Radiograph, Window
from elvis_core.model.transforms import ModelInputTransform

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "bright", "dark", "left", "right", "opacity", "lung", "small"]


def _tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]")


class StandInModel(torch.nn.Module):
    """Same API as elvis_core.model.ElvisModel, transparent behaviour (see the module docstring)."""

    def __init__(self, size=128, max_text_length=8):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.transform = ModelInputTransform(size=size, normalization="percentile", percentiles=(0.0, 100.0))
        self.tokenizer = _tokenizer()
        self.max_text_length = max_text_length
        self.encode_text_calls = 0
        self.encode_image_calls = 0
        vecs = torch.full((len(WORDS), 2), 1 / math.sqrt(2))
        vecs[WORDS.index("bright")] = torch.tensor([1.0, 0.0])
        vecs[WORDS.index("dark")] = torch.tensor([0.0, 1.0])
        vecs[:4] = 0.0
        self.register_buffer("vecs", vecs)
        self.config = {"preprocessing": self.transform.to_config()}

    def tokenize(self, texts):
        enc = [self.tokenizer(t)["input_ids"] for t in texts]
        enc = [[WORDS.index("[CLS]")] + e + [WORDS.index("[SEP]")] for e in enc]
        truncated = [len(e) > self.max_text_length for e in enc]
        enc = [e[:self.max_text_length - 1] + [WORDS.index("[SEP]")] if t else e for e, t in zip(enc, truncated)]
        L = max(len(e) for e in enc)
        ids = torch.zeros((len(enc), L), dtype=torch.long)
        mask = torch.zeros((len(enc), L), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask, "truncated": truncated}

    def encode_image(self, pixel_values):
        self.encode_image_calls += 1
        t = self.transform
        v = (pixel_values * t.std + t.mean).clamp(0, 1)
        b = torch.nn.functional.avg_pool2d(v, 32)[:, 0]  # [B, gh, gw]
        patch = torch.nn.functional.normalize(torch.stack([b, 1 - b], dim=-1), dim=-1)
        return SimpleNamespace(patch_emb=patch, global_emb=patch.mean((1, 2)), patch_feats=patch)

    def encode_text(self, input_ids, attention_mask):
        self.encode_text_calls += 1
        tok = self.vecs[input_ids]  # [B, L, 2]
        glob = torch.nn.functional.normalize((tok * attention_mask[..., None]).sum(1), dim=-1)
        return SimpleNamespace(token_emb=torch.nn.functional.normalize(tok, dim=-1), global_emb=glob,
                               token_feats=tok, attention_mask=attention_mask)


#: bright rectangle in a 96 x 160 image (non-square: the transform pads rows)
BRIGHT = Box(100, 20, 60, 60)


def phantom(shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    px = rng.normal(100.0, 5.0, (96, 160)).astype(np.float32) + shift
    px[20:80, 100:160] += 800.0
    return Radiograph(pixels=px, windows=[Window(500.0, 1000.0)], source_path="phantom")


def bright_ramp_map():
    """A 96 x 160 left-to-right ramp (0 .. 1000) and the stand-in model's map of "bright" on it: (rad, gm)."""
    rad = Radiograph(pixels=np.tile(np.linspace(0, 1000, 160, dtype=np.float32), (96, 1)))
    eng = GroundingEngine(StandInModel(), device="cpu")
    eng.set_image(rad)
    return rad, eng.ground("bright")


@pytest.fixture()
def engine():
    return GroundingEngine(StandInModel(), device="cpu")


def test_grounds_bright_phrase_in_bright_box(engine):
    rad = phantom()
    engine.set_image(rad)
    gm = engine.ground("bright")
    assert gm.similarity.shape == (4, 4) and gm.similarity.dtype == np.float32
    assert gm.similarity.min() >= -1 and gm.similarity.max() <= 1
    assert gm.image_shape == (96, 160) and gm.phrase == "bright" and gm.latency_s > 0
    x, y = gm.peak_xy()
    assert BRIGHT.x <= x <= BRIGHT.x2 and BRIGHT.y <= y <= BRIGHT.y2
    img = gm.to_image()
    assert img.shape == (96, 160) and not np.isnan(img).any()  # whole image covered
    assert pointing_game(img, [BRIGHT]) and cnr(img, [BRIGHT]) > 1.0
    dark = engine.ground("dark").to_image()
    assert not pointing_game(dark, [BRIGHT])
    assert cnr(dark, [BRIGHT]) > 1.0  # contrast, but the other sign
    assert dark[[50], [130]] < dark[[50], [30]]


def test_affine_matches_transform(engine):
    rad = phantom()
    engine.set_image(rad)
    gm = engine.ground("bright")
    np.testing.assert_allclose(gm.grid_to_image, engine.transform.grid_to_image((96, 160), (4, 4)))
    # grid column 0 starts at image x=0, the last column ends at x=160
    assert (gm.grid_to_image @ [0, 0, 1])[0] == pytest.approx(0.0)
    assert (gm.grid_to_image @ [4, 0, 1])[0] == pytest.approx(160.0)


def test_image_cache_lru_and_counts():
    model = StandInModel()
    eng = GroundingEngine(model, device="cpu", cache_size=2)
    a, b, c = phantom(0), phantom(1), phantom(2)
    eng.set_image(a)
    eng.set_image(Radiograph(pixels=a.pixels.copy(), windows=list(a.windows)))  # same content, new object
    assert model.encode_image_calls == 1
    eng.set_image(b)
    eng.set_image(c)  # evicts a
    assert model.encode_image_calls == 3
    eng.set_image(b)
    assert model.encode_image_calls == 3
    eng.set_image(a)
    assert model.encode_image_calls == 4


def test_window_is_part_of_the_key_for_window_normalisation():
    model = StandInModel()
    object.__setattr__(model, "transform", ModelInputTransform(size=128, normalization="window"))
    eng = GroundingEngine(model, device="cpu")
    a = phantom()
    eng.set_image(a)
    eng.set_image(Radiograph(pixels=a.pixels, windows=[Window(300.0, 200.0)]))
    assert model.encode_image_calls == 2


def test_bad_phrases_and_no_image(engine):
    with pytest.raises(GroundingError, match="no image"):
        engine.ground("bright")
    engine.set_image(phantom())
    for bad in ("", "   \n\t"):
        with pytest.raises(GroundingError, match="empty"):
            engine.ground(bad)
        with pytest.raises(GroundingError, match="empty"):
            engine.ground_tokens(bad)
    with pytest.raises(GroundingError, match="phrase 1"):
        engine.ground_many(["bright", " "])


def test_overlong_phrase_truncated_with_warning(engine):
    engine.set_image(phantom())
    assert engine.ground("bright").warnings == []
    gm = engine.ground("bright " + "lung " * 20)
    assert any("truncated" in w and "8" in w for w in gm.warnings)
    assert np.isfinite(gm.similarity).all()


def test_ground_many_one_text_call_and_same_maps():
    model = StandInModel()
    eng = GroundingEngine(model, device="cpu")
    eng.set_image(phantom())
    phrases = ["bright", "dark", "small opacity", "left lung"]
    many = eng.ground_many(phrases)
    assert model.encode_text_calls == 1
    assert [m.phrase for m in many] == phrases
    fresh = GroundingEngine(StandInModel(), device="cpu")
    fresh.set_image(phantom())
    for p, m in zip(phrases, many):
        np.testing.assert_allclose(m.similarity, fresh.ground(p).similarity, atol=1e-6)
    eng.ground("bright")  # served from the text cache
    assert model.encode_text_calls == 1


def test_ground_tokens(engine):
    engine.set_image(phantom())
    gm = engine.ground_tokens("bright dark lung")
    assert gm.tokens == ["bright", "dark", "lung"]  # [CLS]/[SEP] left out
    assert gm.token_maps.shape == (3, 4, 4)
    np.testing.assert_allclose(gm.token_maps[0], engine.ground("bright").similarity, atol=1e-6)
    np.testing.assert_allclose(gm.token_maps[1], engine.ground("dark").similarity, atol=1e-6)


def test_smoothing_on_grid():
    g = np.zeros((5, 5), np.float32)
    g[2, 2] = 1.0
    s = smooth_grid(g, 1.0)
    assert s.max() < 1.0 and s[2, 2] == s.max() and s.sum() == pytest.approx(1.0, abs=1e-4)
    assert s[2, 1] == pytest.approx(s[1, 2]) and s[2, 1] > s[0, 0]
    np.testing.assert_array_equal(smooth_grid(g, 0.0), g)
    eng = GroundingEngine(StandInModel(), device="cpu", smoothing_sigma=1.5)
    eng.set_image(phantom())
    gm = eng.ground("bright")
    assert gm.smoothing_sigma == 1.5 and -1 <= gm.similarity.min() and gm.similarity.max() <= 1
    with pytest.raises(GroundingError):
        GroundingEngine(StandInModel(), smoothing_sigma=-1)


def test_thread_safe_concurrent_use(engine):
    imgs = [phantom(0, 1), phantom(0, 2)]
    expected = []
    for im in imgs:
        engine.set_image(im)
        expected.append(engine.ground("bright").similarity.copy())
    errors = []

    def work(k):
        try:
            for _ in range(20):
                gm = engine.ground_image(imgs[k % 2], "bright")
                np.testing.assert_allclose(gm.similarity, expected[k % 2], atol=1e-6)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_identity(engine):
    assert engine.device_name == "CPU"
    assert engine.checkpoint_name == "in-memory model"
    h = engine.checkpoint_hash
    assert len(h) == 12 and h == GroundingEngine(StandInModel(), device="cpu").checkpoint_hash


def test_token_mean_phrase_map():
    eng = GroundingEngine(StandInModel(), device="cpu", phrase_map="token-mean")
    eng.set_image(phantom())
    toks = eng.ground_tokens("bright dark lung")
    np.testing.assert_allclose(toks.similarity, toks.token_maps.mean(0), atol=1e-6)
    many = eng.ground_many(["bright dark lung", "bright"])
    np.testing.assert_allclose(many[0].similarity, toks.similarity, atol=1e-6)
    np.testing.assert_allclose(many[1].similarity, toks.token_maps[0], atol=1e-6)
    assert eng.settings()["phrase_map"] == "token-mean"
    with pytest.raises(GroundingError, match="phrase map"):
        GroundingEngine(StandInModel(), phrase_map="max")
