"""Hostile model files: every limit is checked before anything is allocated, and each problem is one clean line
(import and checkpoint loading): a deflated .pt bomb, a 40 GB sparse safetensors file, a stray block tensor, a text
config asking for 10^6 layers, configs nested 100 000 deep, NaN weights."""

from __future__ import annotations

import json
import resource
import shutil
import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch

from elvis_core.errors import CheckpointError, ElvisError, ModelImportError
from tests.core import biovil_reference as ref


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_import")
    image_model = ref.randomise(ref.ImageModel(multi=False), seed=1)
    state = image_model.state_dict()
    torch.save(state, d / "image.pt")
    ref.make_cxr_bert_folder(d / "text")
    return {"dir": d, "state": state, "image": d / "image.pt", "text": d / "text"}


def _import(image, text, out):
    from elvis_core.model.importers import import_biovil

    return import_biovil("biovil", image, text, out)


def _one_line(err: BaseException, *needles):
    msg = str(err)
    assert isinstance(err, ElvisError) and "\n" not in msg and "Traceback" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def _copy_text(files, tmp_path) -> Path:
    t = tmp_path / "text"
    shutil.copytree(files["text"], t)
    return t


def test_deflated_pt_bomb_is_refused_from_the_zip_directory(files, tmp_path):
    src = tmp_path / "big.pt"
    torch.save({"encoder.encoder.conv1.weight": torch.zeros(64 << 20, dtype=torch.uint8)}, src)  # 64 MiB stored
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    for extra in range(2):  # two more copies of the 64 MiB member: > 4 × file + 64 MiB when inflated
        with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"big/data/extra{extra}", b"\0" * (64 << 20))
    assert bomb.stat().st_size < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelImportError) as e:
        _import(bomb, files["text"], tmp_path / "out")
    _one_line(e.value, "bomb.pt", "zip bomb")
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) < 100 * 1024  # < 100 MB grown


def test_sparse_40gb_safetensors_is_refused_from_its_header(files, tmp_path):
    header = json.dumps({"encoder.encoder.conv1.weight": {"dtype": "F32", "shape": [10 ** 10],
                                                          "data_offsets": [0, 4 * 10 ** 10]}}).encode()
    sparse = tmp_path / "sparse.safetensors"
    with open(sparse, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 4 * 10 ** 10)  # sparse: no disk used
    t0 = time.monotonic()
    with pytest.raises(ModelImportError) as e:
        _import(sparse, files["text"], tmp_path / "out")
    _one_line(e.value, "sparse.safetensors", "ELVIS_MAX_IMPORT_MB")
    assert time.monotonic() - t0 < 5
    # the same file as a checkpoint's weights
    from elvis_core.model.checkpoint import load_checkpoint
    from elvis_core.model.config import preset
    from elvis_core.model.checkpoint import save_checkpoint
    from elvis_core.model.elvis import build_model

    ck = save_checkpoint(build_model(preset("tiny"), texts=["a b c"]), tmp_path / "ck")
    (ck / "model.safetensors").unlink()
    (ck / "model.safetensors").symlink_to(sparse)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    _one_line(e.value, "ELVIS_MAX_IMPORT_MB")


def test_stray_block_tensor_is_named(files, tmp_path):
    state = dict(files["state"])
    state["encoder.encoder.layer1.99999.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    p = tmp_path / "stray.pt"
    torch.save(state, p)
    with pytest.raises(ModelImportError) as e:
        _import(p, files["text"], tmp_path / "out")
    _one_line(e.value, "layer1.99999", "stray")


def test_text_config_with_a_million_layers_is_refused_before_building(files, tmp_path):
    t = _copy_text(files, tmp_path)
    c = json.loads((t / "config.json").read_text())
    c["num_hidden_layers"] = 10 ** 6
    (t / "config.json").write_text(json.dumps(c))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(ModelImportError) as e:
        _import(files["image"], t, tmp_path / "out")
    _one_line(e.value, "num_hidden_layers", "1000000")
    assert time.monotonic() - t0 < 20
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) < 300 * 1024


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_deeply_nested_text_configs(files, tmp_path, name):
    t = _copy_text(files, tmp_path)
    (t / name).write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ModelImportError) as e:
        _import(files["image"], t, tmp_path / "out")
    _one_line(e.value, name, "nested")


def test_deeply_nested_checkpoint_config(tmp_path):
    from elvis_core.model.checkpoint import load_checkpoint

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text('{"format": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    _one_line(e.value, "config.json", "nested")
    (ck / "config.json").write_text('{"format_version": ' + "9" * 100000 + "}")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    _one_line(e.value, "config.json", "too many digits")


def test_non_finite_weights_are_refused_by_name(files, tmp_path):
    state = dict(files["state"])
    w = state["projector.model.0.weight"].clone()
    w.view(-1)[:64] = float("nan")
    state["projector.model.0.weight"] = w
    p = tmp_path / "nan.pt"
    torch.save(state, p)
    with pytest.raises(ModelImportError) as e:
        _import(p, files["text"], tmp_path / "out")
    _one_line(e.value, "NaN or infinite", "projector.model.0.weight")


@pytest.mark.parametrize("key,value", [("projection_size", "x"), ("vocab_size", {}), ("hidden_size", True),
                                       ("layer_norm_eps", "tiny"), ("hidden_act", ["gelu"])])
def test_text_config_values_of_the_wrong_type(files, tmp_path, key, value):
    """Found by the fuzzer: int('x') / int({}) escaped as ValueError / TypeError tracebacks."""
    t = _copy_text(files, tmp_path)
    c = json.loads((t / "config.json").read_text())
    c[key] = value
    (t / "config.json").write_text(json.dumps(c))
    with pytest.raises(ModelImportError) as e:
        _import(files["image"], t, tmp_path / "out")
    _one_line(e.value, "config.json", key)
