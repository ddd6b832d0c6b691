"""ElvisModel: shapes, normalisation, tokenization, config validation, MiniLM loading."""

import json

import pytest
import torch

from elvis_core.errors import ConfigError
from elvis_core.model import build_model, minilm_path, preset, validate_model_config
from elvis_core.model.transforms import ModelInputTransform


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(preset("tiny")).eval()


def test_shapes_and_unit_norm(tiny):
    s = tiny.transform.size
    with torch.no_grad():
        img = tiny.encode_image(torch.randn(3, 1, s, s))
        tok = tiny.tokenize(["Small left pleural effusion.", "no pneumothorax"])
        txt = tiny.encode_text(tok["input_ids"], tok["attention_mask"])
    gh, gw = tiny.grid_shape()
    assert (gh, gw) == (s // tiny.output_stride, s // tiny.output_stride) == (8, 8)
    assert img.patch_emb.shape == (3, gh, gw, 16)
    assert img.patch_feats.shape == (3, gh, gw, 16)  # last stage has 16 channels in the tiny preset
    assert img.global_emb.shape == (3, 16)
    L = tok["input_ids"].shape[1]
    assert txt.token_emb.shape == (2, L, 16) and txt.token_feats.shape == (2, L, 32)
    assert txt.global_emb.shape == (2, 16)
    for t in (img.patch_emb, img.global_emb, txt.token_emb, txt.global_emb):
        assert torch.allclose(t.norm(dim=-1), torch.ones(t.shape[:-1]), atol=1e-5)
    # a grounding map is a cosine in [-1, 1]
    m = torch.einsum("hwd,d->hw", img.patch_emb[0], txt.global_emb[0])
    assert m.min() >= -1 - 1e-5 and m.max() <= 1 + 1e-5


def test_tokenize_pads_truncates_and_reports(tiny):
    long = "effusion " * 200
    tok = tiny.tokenize(["effusion", long])
    assert tok["input_ids"].dtype == torch.long and tok["attention_mask"].dtype == torch.long
    assert tok["input_ids"].shape == (2, tiny.max_text_length)
    assert tok["truncated"] == [False, True]
    assert tok["attention_mask"][0].sum() == 3  # [CLS] effusion [SEP]
    ids = tok["input_ids"][0, :3].tolist()
    assert tiny.tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "effusion", "[SEP]"]


def test_image_input_must_be_grey(tiny):
    with pytest.raises(ValueError, match=r"\[B, 1, S, S\]"):
        tiny.encode_image(torch.randn(1, 3, 64, 64))


def test_config_is_json_and_rebuilds_same_architecture(tiny):
    cfg = json.loads(json.dumps(tiny.config))
    assert cfg["preprocessing"] == tiny.transform.to_config()
    assert ModelInputTransform.from_config(cfg["preprocessing"]).size == 64
    again = build_model(cfg, tokenizer=tiny.tokenizer)
    a = {k: v.shape for k, v in tiny.state_dict().items()}
    b = {k: v.shape for k, v in again.state_dict().items()}
    assert a == b


@pytest.mark.parametrize("patch, key", [
    ({"projection": {"dimm": 3}}, "model.projection.dimm"),
    ({"projection": {"dim": "big"}}, "model.projection.dim"),
    ({"image": {"resnet": {"hidden_sizez": [8]}}}, "model.image.resnet.hidden_sizez"),
    ({"text": {"hf_config": {"num_layers": 2}}}, "model.text.hf_config.num_layers"),
    ({"text": {"pooling": "max"}}, "model.text.pooling"),
    ({"preprocessing": {"size": 8}}, "preprocessing.size"),
    ({"colour": True}, "model.colour"),
])
def test_bad_config_names_key(patch, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_model_config(patch)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        preset("huge")


def test_demo_preset_is_small_and_fast():
    m = build_model(preset("demo")).eval()
    n = sum(p.numel() for p in m.parameters())
    assert n * 4 < 15e6  # float32 bytes < 15 MB
    assert m.grid_shape() == (16, 16)
    with torch.no_grad():
        e = m.encode_image(torch.zeros(1, 1, 256, 256))
    assert e.patch_emb.shape[1:3] == (16, 16)


def test_minilm_text_encoder_loads_from_local_dir():
    cfg = preset("tiny")
    cfg["text"] = {"source": "pretrained", "path": minilm_path(), "pooling": "mean", "max_length": 64}
    m = build_model(cfg).eval()
    assert m.text_hidden == 384
    tok = m.tokenize(["left lower lobe pneumonia"])
    assert tok["input_ids"][0, 0].item() == m.tokenizer.cls_token_id == 101
    with torch.no_grad():
        t = m.encode_text(tok["input_ids"], tok["attention_mask"])
    assert t.token_feats.shape[-1] == 384 and t.global_emb.shape == (1, 16)
    # weights come from the pretrained folder (not random): the same text gives the same features twice
    m2 = build_model(cfg).eval()
    with torch.no_grad():
        t2 = m2.encode_text(tok["input_ids"], tok["attention_mask"])
    assert torch.allclose(t.token_feats, t2.token_feats, atol=1e-5)
    assert m.config["text"]["hf_config"]["model_type"] == "bert"


def test_pretrained_bad_dir_is_config_error(tmp_path):
    cfg = preset("tiny")
    cfg["text"] = {"source": "pretrained", "path": str(tmp_path)}
    with pytest.raises(ConfigError, match=str(tmp_path)):
        build_model(cfg)
