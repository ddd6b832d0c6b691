"""`elvis models download` (issue 23) against a stand-in hub (tests/core/hub_standin.py) serving random-weight files
in the published layout (tests/core/biovil_reference.py): pinned revisions, the published MD5 and the hub's SHA-256
checked, git-lfs pointers named, offline = the URLs to fetch by hand, the import in the same step, model folders
readable by other users (0755 / 0644) and their parent created."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elvis_core.model.download import MODELS, HubFile, HubModel, ModelDownloadError, download_model
from tests.core import biovil_reference as ref
from tests.core.hub_standin import HubStandIn

REPO = Path(__file__).resolve().parents[2]
CXR = "microsoft/BiomedVLP-CXR-BERT-specialized"
IMG = "biovil_image_resnet50_proj_size_128.pt"
POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 109745623\n"


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    """tests/conftest.py sets HF_HUB_OFFLINE=1 (no test may reach the internet); these tests only reach the stand-in
    hub on 127.0.0.1, so huggingface_hub is let online for them."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory):
    """BioViL's files (a small ResNet in BioViL's tensor layout + a tiny CXR-BERT folder), as the hub serves them."""
    d = tmp_path_factory.mktemp("hubfiles")
    im = ref.randomise(ref.ImageModel(multi=False, joint=16, layers=(1, 1), widths=(4, 8), stem=8, num_classes=10),
                       seed=7)
    buf = io.BytesIO()
    torch.save(im.state_dict(), buf)
    ref.make_cxr_bert_folder(d / "text", projection_size=16, max_positions=512)
    files = {(CXR, "v1.1", IMG): buf.getvalue()}
    for n in ("config.json", "vocab.txt", "tokenizer_config.json", "pytorch_model.bin"):
        files[(CXR, "v1.1", n)] = (d / "text" / n).read_bytes()
    return files


def _table(image_bytes: bytes):
    """BioViL as published, but with the stand-in's image MD5 as the 'published' one (random weights)."""
    m = MODELS["biovil"]
    return {"biovil": HubModel("biovil", m.repo_id, m.revision,
                               (HubFile(IMG, hashlib.md5(image_bytes).hexdigest(), "image"),) + m.files[1:],
                               "biovil")}


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _cli(*args, endpoint: str):
    env = dict(os.environ, HF_ENDPOINT=endpoint, PYTHONPATH=str(REPO), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_OFFLINE="0")
    return subprocess.run([sys.executable, "-m", "elvis_core", "models", "download", *args], capture_output=True,
                          text=True, cwd=str(REPO), timeout=300, env=env)


def test_pinned_revisions_and_published_hashes():
    assert (MODELS["biovil"].repo_id, MODELS["biovil"].revision) == (CXR, "v1.1")
    assert (MODELS["biovil-t"].repo_id, MODELS["biovil-t"].revision) == ("microsoft/BiomedVLP-BioViL-T", "v1.0")
    assert MODELS["biovil"].files[0].md5 == "02ce6ee460f72efd599295f440dbb453"  # hi-ml-multimodal's constants
    assert MODELS["biovil-t"].files[0].md5 == "a83080e2f23aa584a4f2b24c39b1bb64"
    assert not any(f.name.endswith(".py") for m in MODELS.values() for f in m.files)  # never the repo's code


def test_download_checks_and_imports_into_a_shared_folder(hub_files, tmp_path):
    from elvis_core.model.checkpoint import load_checkpoint, read_checkpoint_config

    models_dir = tmp_path / "new" / "models"  # nothing of it exists yet
    with HubStandIn(hub_files) as hub:
        res = download_model("biovil", models_dir, hub_endpoint=hub.url, models=_table(hub_files[(CXR, "v1.1", IMG)]))
        assert all("/resolve/v1.1/" in p for _m, p in hub.requests)  # the pinned revision, every request
        assert res.checkpoint == models_dir / "biovil"
        assert any(line.startswith(IMG) and "MD5 = published" in line and "SHA-256 = hub's" in line
                   for line in res.checked)
        assert sum("SHA-256 = hub's" in line for line in res.checked) == 5
        cfg = read_checkpoint_config(res.checkpoint)
        assert cfg["provenance"]["imported"]["image_weights"]["sha256"] == \
            hashlib.sha256(hub_files[(CXR, "v1.1", IMG)]).hexdigest()[:16]
        assert load_checkpoint(res.checkpoint) is not None
        for p in [res.checkpoint, *res.checkpoint.rglob("*"), res.text_folder, *res.text_folder.glob("*")]:
            assert _mode(p) == (0o755 if p.is_dir() else 0o644), (p, oct(_mode(p)))
        with pytest.raises(ModelDownloadError, match="already there"):
            download_model("biovil", models_dir, hub_endpoint=hub.url, models=_table(hub_files[(CXR, "v1.1", IMG)]))
        # the text model alone: downloaded and checked, not imported
        txt = download_model("cxr-bert", tmp_path / "t", hub_endpoint=hub.url)
        assert txt.checkpoint is None and (txt.text_folder / "pytorch_model.bin").is_file()


def test_other_weights_than_the_published_are_refused(hub_files, tmp_path):
    with HubStandIn(hub_files) as hub:
        r = _cli("biovil", "--dir", str(tmp_path / "m"), endpoint=hub.url)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"MD5 {hashlib.md5(hub_files[(CXR, 'v1.1', IMG)]).hexdigest()} differs from the published " \
           "02ce6ee460f72efd599295f440dbb453" in r.stderr
    assert not (tmp_path / "m" / "biovil").exists()  # nothing imported


def test_tampered_mirror_and_lfs_pointer_are_refused(hub_files, tmp_path):
    table = _table(hub_files[(CXR, "v1.1", IMG)])
    with HubStandIn(hub_files) as hub:
        hub.etags[(CXR, "v1.1", "pytorch_model.bin")] = "00" * 32
        with pytest.raises(ModelDownloadError, match=r"pytorch_model.bin: SHA-256 .* differs from the hub's 0000"):
            download_model("biovil", tmp_path / "a", hub_endpoint=hub.url, models=table)
    files = dict(hub_files)
    files[(CXR, "v1.1", "pytorch_model.bin")] = POINTER
    with HubStandIn(files) as hub:
        with pytest.raises(ModelDownloadError, match="git-lfs pointer, not the file itself"):
            download_model("biovil", tmp_path / "b", hub_endpoint=hub.url, models=table)


def test_offline_says_which_urls_to_fetch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    r = _cli("biovil-t", "--dir", str(tmp_path / "m"), endpoint=f"http://127.0.0.1:{port}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = r.stderr
    assert "download these 5 files by hand (revision v1.0)" in err
    assert "https://huggingface.co/microsoft/BiomedVLP-BioViL-T/resolve/v1.0/biovil_t_image_model_proj_size_128.pt" \
           "  (MD5 a83080e2f23aa584a4f2b24c39b1bb64)" in err
    assert "https://huggingface.co/microsoft/BiomedVLP-BioViL-T/resolve/v1.0/pytorch_model.bin" in err
    assert "then: elvis import biovil-t --image-weights" in err


def test_offline_mode_is_named(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelDownloadError, match=r"HF_HUB_OFFLINE is set.*\n.*download these 5 files by hand"):
        download_model("biovil", tmp_path, hub_endpoint="http://127.0.0.1:9")


def test_unknown_revision_is_one_clear_error(hub_files, tmp_path):
    with HubStandIn(hub_files) as hub:
        with pytest.raises(ModelDownloadError, match=r"resolve/v9/.*(404|NotFound)") as ei:
            download_model("cxr-bert", tmp_path, revision="v9", hub_endpoint=hub.url)
    assert "(revision v9)" in str(ei.value)


def test_import_names_a_git_lfs_pointer_and_creates_the_parent(hub_files, tmp_path, capsys):
    from elvis_core.cli import main

    text = tmp_path / "text"
    text.mkdir()
    for n in ("config.json", "vocab.txt", "tokenizer_config.json", "pytorch_model.bin"):
        (text / n).write_bytes(hub_files[(CXR, "v1.1", n)])
    ptr = tmp_path / IMG
    ptr.write_bytes(POINTER)
    assert main(["import", "biovil", "--image-weights", str(ptr), "--text-model", str(text),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and IMG in err[0] and "git-lfs pointer" in err[0] and "git lfs pull" in err[0]
    good = tmp_path / "good.pt"
    good.write_bytes(hub_files[(CXR, "v1.1", IMG)])
    out = tmp_path / "not" / "yet" / "models" / "biovil"  # the docs' `--out models/biovil` in a fresh checkout
    assert main(["import", "biovil", "--image-weights", str(good), "--text-model", str(text), "--out", str(out)]) == 0
    assert _mode(out) == 0o755 and all(_mode(p) == 0o644 for p in out.iterdir())
