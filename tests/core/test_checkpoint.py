"""Checkpoints: safetensors + JSON round trip, validation by name and shape, no pickle."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from elvis_core.errors import CheckpointError
from elvis_core.model import build_model, minilm_path, preset
from elvis_core.model.checkpoint import checkpoint_hash, load_checkpoint, read_checkpoint_config, save_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(1)
    m = build_model(preset("tiny"), texts=["Pneumothorax at the right apex.", "Cardiomegaly."]).eval()
    d = save_checkpoint(m, tmp_path_factory.mktemp("ck") / "tiny", provenance={"note": "unit test"})
    return m, d


def _outputs(m):
    torch.manual_seed(5)
    x = torch.randn(2, 1, m.transform.size, m.transform.size)
    tok = m.tokenize(["right apical pneumothorax", "heart is enlarged"])
    with torch.no_grad():
        return m.encode_image(x), m.encode_text(tok["input_ids"], tok["attention_mask"]), tok


def test_round_trip_identical_outputs(saved):
    m, d = saved
    assert sorted(p.name for p in d.iterdir()) >= ["config.json", "model.safetensors", "tokenizer.json"]
    m2 = load_checkpoint(d)
    assert not m2.training
    (i1, t1, k1), (i2, t2, k2) = _outputs(m), _outputs(m2)
    assert torch.equal(k1["input_ids"], k2["input_ids"])
    assert torch.equal(i1.patch_emb, i2.patch_emb) and torch.equal(i1.global_emb, i2.global_emb)
    assert torch.equal(t1.token_emb, t2.token_emb) and torch.equal(t1.global_emb, t2.global_emb)
    cfg = read_checkpoint_config(d)
    assert cfg["provenance"] == {"note": "unit test"}
    assert cfg["model"]["preprocessing"]["size"] == 64
    import elvis_core
    assert cfg["code_version"] == elvis_core.__version__
    assert len(checkpoint_hash(d)) == 12 and checkpoint_hash(d) == checkpoint_hash(d / "model.safetensors")


def test_no_pickle_files(saved):
    _, d = saved
    for p in d.iterdir():
        assert p.suffix not in (".bin", ".pt", ".pth", ".pkl")


def _copy(d, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(d, out)
    return out


def test_wrong_shape_named(saved, tmp_path):
    _, d = saved
    c = _copy(d, tmp_path)
    state = load_file(str(c / "model.safetensors"))
    state["image_proj.fc2.weight"] = torch.zeros(3, 32)
    save_file(state, str(c / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"image_proj\.fc2\.weight \(checkpoint \[3, 32\], architecture "
                                              r"\[16, 32\]\)") as e:
        load_checkpoint(c)
    assert str(c) in str(e.value)


def test_missing_and_unexpected_named(saved, tmp_path):
    _, d = saved
    c = _copy(d, tmp_path)
    state = load_file(str(c / "model.safetensors"))
    del state["text_proj.fc1.bias"]
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(c / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing: text_proj\.fc1\.bias.*unexpected tensor\(s\): extra\.weight"):
        load_checkpoint(c)


def test_other_architecture_checkpoint(saved, tmp_path):
    """Weights of the demo architecture under the tiny config: a clear list of mismatches, no traceback."""
    _, d = saved
    c = _copy(d, tmp_path)
    demo = build_model(preset("demo"))
    save_file({k: v.contiguous() for k, v in demo.state_dict().items()}, str(c / "model.safetensors"))
    with pytest.raises(CheckpointError, match="another architecture"):
        load_checkpoint(c)


@pytest.mark.parametrize("damage, msg", [
    (lambda c: (c / "config.json").unlink(), "missing config.json"),
    (lambda c: (c / "model.safetensors").unlink(), "missing model.safetensors"),
    (lambda c: (c / "tokenizer.json").unlink(), "missing tokenizer file"),
    (lambda c: (c / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda c: (c / "config.json").write_text(json.dumps({"format": "other"})), "not an ELVIS checkpoint"),
    (lambda c: (c / "model.safetensors").write_bytes(b"\x80\x04garbage pickle"), "not a readable safetensors"),
])
def test_damaged_checkpoint(saved, tmp_path, damage, msg):
    _, d = saved
    c = _copy(d, tmp_path)
    damage(c)
    with pytest.raises(CheckpointError, match=msg):
        load_checkpoint(c)


def test_bad_model_section(saved, tmp_path):
    _, d = saved
    c = _copy(d, tmp_path)
    cfg = json.loads((c / "config.json").read_text())
    cfg["model"]["projection"]["dimension"] = 3
    (c / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model.projection.dimension"):
        load_checkpoint(c)


def test_not_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    f = tmp_path / "file.pt"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="this is a file"):
        load_checkpoint(f)


def test_minilm_checkpoint_is_self_contained(tmp_path):
    cfg = preset("tiny")
    cfg["text"] = {"source": "pretrained", "path": minilm_path(), "max_length": 32}
    m = build_model(cfg).eval()
    d = save_checkpoint(m, tmp_path / "minilm")
    saved_cfg = read_checkpoint_config(d)
    saved_cfg["model"]["text"]["path"] = str(tmp_path / "gone")  # the original folder is not needed to load
    (d / "config.json").write_text(json.dumps(saved_cfg))
    m2 = load_checkpoint(d)
    (_, t1, _), (_, t2, _) = _outputs(m), _outputs(m2)
    assert torch.equal(t1.global_emb, t2.global_emb)
