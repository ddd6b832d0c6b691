"""`elvis import`: BioViL / BioViL-T + CXR-BERT in their published layouts (random weights, BN statistics randomised)
converted and compared with a reference forward pass written from hi-ml's architecture (tests/core/biovil_reference)."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.core import biovil_reference as ref

_TEXT_DIRS = {}  # checkpoint parent folder -> text folder name
TSV = Path(__file__).resolve().parents[1] / "data" / "biovil_image_state_dict.tsv"
PHRASES = ["Right lower lobe opacity.", "small left pleural effusion", "no pneumothorax!",
           "Moderate cardiomegaly, increasing (12 cm)"]


def _layout(state):
    return [(k, tuple(v.shape)) for k, v in state.items()]


@pytest.fixture(scope="module")
def biovil(tmp_path_factory):
    """Files of a BioViL download (random weights) + the reference models that produced them."""
    d = tmp_path_factory.mktemp("biovil")
    image_model = ref.randomise(ref.ImageModel(multi=False), seed=1)
    torch.save(image_model.state_dict(), d / "biovil_image_resnet50_proj_size_128.pt")
    mlm, head = ref.make_cxr_bert_folder(d / "BiomedVLP-CXR-BERT-specialized")
    png = d / "cxr.png"
    cv2.imwrite(str(png), ref.sample_image(512, 512))
    _TEXT_DIRS[d] = "BiomedVLP-CXR-BERT-specialized"
    return {"dir": d, "image": image_model, "mlm": mlm, "head": head, "png": png,
            "weights": d / "biovil_image_resnet50_proj_size_128.pt", "text": d / "BiomedVLP-CXR-BERT-specialized"}


@pytest.fixture(scope="module")
def biovil_ckpt(biovil):
    from elvis_core.model.importers import import_biovil

    return import_biovil("biovil", biovil["weights"], biovil["text"], biovil["dir"] / "ckpt")


def test_reference_has_the_published_layout():
    lines = [ln.split("\t") for ln in TSV.read_text().splitlines() if ln and not ln.startswith("#")]
    published = [(name, tuple(int(x) for x in shape.strip("()").split(",") if x.strip())) for name, shape in lines]
    assert len(published) == 328
    assert _layout(ref.ImageModel(multi=False).state_dict()) == published


def _grid_and_text(ckpt, png, phrases):
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.io.images import read_image

    eng = GroundingEngine(str(ckpt), device="cpu")
    # the converted tokenizer gives hi-ml's token ids (vocab.txt really read: few [UNK])
    from transformers import BertTokenizer

    hf = BertTokenizer.from_pretrained(str(Path(ckpt).parent / _TEXT_DIRS[Path(ckpt).parent]))
    ours = eng.model.tokenize([p.rstrip("!?.") for p in phrases])["input_ids"].tolist()
    want = hf([p.rstrip("!?.") for p in phrases], padding="longest")["input_ids"]
    assert ours == want and sum(i == hf.unk_token_id for row in want for i in row) <= 2
    eng.set_image(read_image(png))
    maps = eng.ground_many(phrases)
    text = torch.stack([v for v, _ in eng._text_globals(phrases)])
    return eng, maps, text


def test_biovil_maps_and_text_match_reference(biovil, biovil_ckpt):
    eng, maps, text = _grid_and_text(biovil_ckpt, biovil["png"], PHRASES)
    x = ref.reference_input(cv2.imread(str(biovil["png"]), cv2.IMREAD_UNCHANGED), 480)
    patches = biovil["image"].patch_grid(x)[0]  # [15, 15, 128]
    t_ref = ref.reference_text_embedding(biovil["text"], biovil["mlm"], biovil["head"], PHRASES)
    assert torch.equal(text, t_ref) or float((text - t_ref).abs().max()) < 1e-6
    for i, gm in enumerate(maps):
        want = (patches @ t_ref[i]).numpy()
        assert gm.similarity.shape == (15, 15)
        assert float(np.abs(gm.similarity - want).max()) <= 1e-4
        assert want.std() > 1e-3  # a map with structure, not a constant
    # the global embedding: mean of the projected patches (BioViL), not the projection of the pooled grid
    from elvis_core.model.checkpoint import load_checkpoint

    m = load_checkpoint(biovil_ckpt)
    # an imported model records its tokenizer's whole words (its pretraining corpus is not published)
    assert "tokenizer whole-word vocabulary" in m.known_words["source"]
    assert "atelectasis" in m.known_words["words"] and not any(w.startswith("##") for w in m.known_words["words"])
    with torch.no_grad():
        ours = m.encode_image(x[:, :1]).global_emb[0]
    assert float((ours - biovil["image"].global_embedding(x)[0]).abs().max()) < 1e-4


def test_biovil_map_marks_the_cropped_border_not_seen(biovil, biovil_ckpt):
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.io.images import read_image

    png = biovil["dir"] / "wide.png"
    cv2.imwrite(str(png), ref.sample_image(512, 600, seed=2))  # 600 wide: 60 px each side beyond the 480 crop
    eng = GroundingEngine(str(biovil_ckpt), device="cpu")
    eng.set_image(read_image(png))
    gm = eng.ground("left lower lobe opacity")
    assert not gm.fully_seen
    assert gm.seen_box() == pytest.approx((60.0, 16.0, 540.0, 496.0))
    full = gm.to_image()
    assert np.isnan(full[:, :60]).all() and np.isnan(full[:16]).all() and np.isnan(full[496:]).all()
    assert np.isfinite(full[16:496, 60:540]).all()
    # our own transform sees everything
    demo = GroundingEngine(str(Path(__file__).resolve().parents[2] / "resources" / "demo_model"), device="cpu")
    demo.set_image(read_image(png))
    g2 = demo.ground("left lower lobe opacity")
    assert g2.fully_seen and np.isfinite(g2.to_image()).all()


@pytest.mark.slow
def test_biovil_t_maps_text_and_two_image_pooler_match_reference(tmp_path):
    from elvis_core.model.checkpoint import load_checkpoint
    from elvis_core.model.importers import import_biovil

    image_model = ref.randomise(ref.ImageModel(multi=True), seed=5)
    w = tmp_path / "biovil_t_image_model_proj_size_128.pt"
    torch.save(image_model.state_dict(), w)
    names = set(image_model.state_dict())
    assert {"encoder.backbone_to_vit.weight", "encoder.missing_previous_emb", "encoder.vit_pooler.type_embed",
            "encoder.vit_pooler.blocks.2.attn.proj_q.weight", "encoder.encoder.fc.weight"} <= names
    mlm, head = ref.make_cxr_bert_folder(tmp_path / "BiomedVLP-BioViL-T", seed=3, safetensors=True)
    _TEXT_DIRS[tmp_path] = "BiomedVLP-BioViL-T"
    png = tmp_path / "cxr.png"
    cv2.imwrite(str(png), ref.sample_image(512, 512, seed=4))
    ckpt = import_biovil("biovil-t", w, tmp_path / "BiomedVLP-BioViL-T", tmp_path / "ckpt")
    eng, maps, text = _grid_and_text(ckpt, png, PHRASES)
    x = ref.reference_input(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), 448)
    patches = image_model.patch_grid(x)[0]
    t_ref = ref.reference_text_embedding(tmp_path / "BiomedVLP-BioViL-T", mlm, head, PHRASES)
    assert float((text - t_ref).abs().max()) < 1e-6
    for i, gm in enumerate(maps):
        assert gm.similarity.shape == (14, 14)
        assert float(np.abs(gm.similarity - (patches @ t_ref[i]).numpy()).max()) <= 1e-4
    # with a previous image the transformer pooler runs (not used by the viewer, kept by the import)
    prev = ref.reference_input(ref.sample_image(512, 512, seed=9), 448)
    m = load_checkpoint(ckpt)
    with torch.no_grad():
        ours = m.encode_image(x[:, :1], previous_pixel_values=prev[:, :1]).patch_emb[0]
    want = image_model.patch_grid(x, prev)[0]
    assert float((ours - want).abs().max()) < 1e-4
    assert float((want - patches).abs().max()) > 1e-3  # the previous image does change the map


@pytest.mark.slow
def test_ground_cli_writes_the_reference_grid(biovil, biovil_ckpt, tmp_path):
    out = tmp_path / "m.png"
    r = subprocess.run([sys.executable, "-m", "elvis_core", "ground", "--checkpoint", str(biovil_ckpt),
                        str(biovil["png"]), "right lower lobe opacity", "--out", str(out), "--npy"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    grid = np.load(tmp_path / "m.grid.npy")
    x = ref.reference_input(cv2.imread(str(biovil["png"]), cv2.IMREAD_UNCHANGED), 480)
    t = ref.reference_text_embedding(biovil["text"], biovil["mlm"], biovil["head"], ["right lower lobe opacity"])
    want = (biovil["image"].patch_grid(x)[0] @ t[0]).numpy()
    assert grid.shape == (15, 15) and float(np.abs(grid - want).max()) <= 1e-4
    z = np.load(tmp_path / "m.grid.npz")
    assert np.array_equal(z["raw_similarity"], grid)
    assert np.allclose(z["similarity_sigma_1_5"], _scipy_like_gaussian(grid.astype(np.float64), 1.5), atol=1e-6)
    full = np.load(tmp_path / "m.npy")
    assert full.shape == (512, 512) and np.isnan(full[:16]).all() and np.isfinite(full[16:496, 16:496]).all()
    # hi-ml's smoothed map (sigma 1.5, scipy.ndimage.gaussian_filter) is --sigma 1.5
    from elvis_core.grounding.engine import smooth_grid

    assert np.allclose(smooth_grid(want, 1.5), _scipy_like_gaussian(want, 1.5), atol=1e-6)


def _scipy_like_gaussian(g, sigma):
    """scipy.ndimage.gaussian_filter (truncate 4, mode 'reflect') written out (scipy is not a dependency)."""
    r = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * np.arange(-r, r + 1) ** 2 / sigma ** 2)
    k /= k.sum()
    for axis in (0, 1):
        p = np.pad(g, [(r, r) if a == axis else (0, 0) for a in (0, 1)], mode="symmetric")
        g = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), axis, p)
    return g


# -- bad inputs ---------------------------------------------------------------------------------------------------------
class NotATensor:
    pass


def _import_cli(capsys, *args):
    from elvis_core.cli import main

    rc = main(["import", *[str(a) for a in args]])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_inputs_one_line_nonzero_nothing_written(biovil, tmp_path, capsys):
    text = biovil["text"]
    out = tmp_path / "out"
    # truncated .pt
    data = biovil["weights"].read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    rc, err = _import_cli(capsys, "biovil", "--image-weights", trunc, "--text-model", text, "--out", out)
    assert rc != 0 and "\n" not in err and "trunc.pt" in err and "truncated" in err and "Traceback" not in err
    trunc.write_bytes(data[:1000])  # cut inside the zip: torch's long miniz message, only its first sentence
    rc, err = _import_cli(capsys, "biovil", "--image-weights", trunc, "--text-model", text, "--out", out)
    assert rc != 0 and "\n" not in err and "truncated" in err and "internal miniz" not in err and err.endswith(")")
    # a pickle holding something besides tensors: refused by weights-only loading
    evil = tmp_path / "evil.pt"
    torch.save({"encoder.encoder.conv1.weight": torch.zeros(1), "x": NotATensor()}, evil)
    rc, err = _import_cli(capsys, "biovil", "--image-weights", evil, "--text-model", text, "--out", out)
    assert rc != 0 and "\n" not in err and "evil.pt" in err and "refused" in err
    # plain non-tensor values pass weights-only loading but are not a state dict
    odd = tmp_path / "odd.pt"
    torch.save({"a": 3}, odd)
    rc, err = _import_cli(capsys, "biovil", "--image-weights", odd, "--text-model", text, "--out", out)
    assert rc != 0 and "\n" not in err and "not tensors" in err
    # text folder without vocab.txt
    novocab = tmp_path / "novocab"
    novocab.mkdir()
    for f in text.iterdir():
        if f.name != "vocab.txt":
            (novocab / f.name).write_bytes(f.read_bytes())
    rc, err = _import_cli(capsys, "biovil", "--image-weights", biovil["weights"], "--text-model", novocab,
                          "--out", out)
    assert rc != 0 and "\n" not in err and "vocab.txt" in err
    # mismatched shapes: a config that does not describe the weights
    bad = tmp_path / "badshape"
    bad.mkdir()
    for f in text.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    import json

    c = json.loads((bad / "config.json").read_text())
    c["hidden_size"] = 48
    (bad / "config.json").write_text(json.dumps(c))
    rc, err = _import_cli(capsys, "biovil", "--image-weights", biovil["weights"], "--text-model", bad, "--out", out)
    assert rc != 0 and "\n" not in err and "wrong shape" in err
    # BioViL-T asked for BioViL files
    rc, err = _import_cli(capsys, "biovil-t", "--image-weights", biovil["weights"], "--text-model", text,
                          "--out", out)
    assert rc != 0 and "not a BioViL-T" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left
    # opening the raw download as a checkpoint says how to convert it
    from elvis_core.errors import CheckpointError
    from elvis_core.model.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="elvis import"):
        load_checkpoint(text)


def test_bad_input_from_a_real_process(biovil, tmp_path):
    trunc = tmp_path / "t.pt"
    trunc.write_bytes(biovil["weights"].read_bytes()[:1000])
    r = subprocess.run([sys.executable, "-m", "elvis_core", "import", "biovil", "--image-weights", str(trunc),
                        "--text-model", str(biovil["text"]), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


# -- training from an imported checkpoint ------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_from_imported_checkpoint_loss_falls(tmp_path):
    """A small ResNet in BioViL's layout + tiny CXR-BERT, imported, then `elvis train` with model.init_from on
    phantom studies: a few CPU steps, the loss falls and the result is again a loadable checkpoint."""
    from elvis_core.model.checkpoint import load_checkpoint, read_checkpoint_config
    from elvis_core.model.importers import import_biovil
    from elvis_core.phantom import generate
    from elvis_core.training.config import load_config
    from elvis_core.training.trainer import train

    image_model = ref.randomise(ref.ImageModel(multi=False, joint=16, layers=(1, 1), widths=(4, 8), stem=8,
                                               num_classes=10), seed=7)
    w = tmp_path / "small.pt"
    torch.save(image_model.state_dict(), w)
    ref.make_cxr_bert_folder(tmp_path / "text", projection_size=16, max_positions=512)
    ckpt = import_biovil("biovil", w, tmp_path / "text", tmp_path / "ckpt", resize=64, crop=64)
    cfg = read_checkpoint_config(ckpt)
    assert cfg["model"]["image"]["resnet"]["depths"] == [1, 1]
    root = tmp_path / "ph"
    generate(root, 16, seed=3, size=128)
    sets = [f"data.root={str(root)!r}", f"model.init_from={str(ckpt)!r}", "train.batch_size=8", "train.threads=1",
            "train.lr=3e-3", "train.text_lr=3e-4", "train.warmup_steps=0", "train.max_steps=16", "train.log_every=1",
            "train.progress=false", "augment.enabled=false", f"output.dir={str(tmp_path / 'run')!r}"]
    res = train(load_config(None, sets))
    assert res.steps == 16
    first, last = np.mean(res.losses[:4]), np.mean(res.losses[-4:])
    assert last < first - 0.3, res.losses  # measured: 5.65 -> 3.8 (global + local + intra)
    m = load_checkpoint(res.model_dir)
    start = load_checkpoint(ckpt)
    for name in ("image_encoder.embedder.embedder.convolution.weight", "image_proj.fc1.weight", "text_proj.ln.weight",
                 "text_encoder.encoder.layer.0.attention.self.query.weight"):
        assert not torch.equal(m.state_dict()[name], start.state_dict()[name]), name
    assert m.config["projection"]["image_head"] == "linear-bn-relu-linear"
    assert m.checkpoint_config["provenance"]["training"]["init_from"] == str(ckpt)


def test_image_pretrained_imagenet_resnet_folder(tmp_path):
    """image.pretrained = a transformers ResNetForImageClassification folder: its architecture and weights, RGB stem
    folded (grey x gives the RGB network's features of (x, x, x)), classifier dropped; read only for training."""
    from transformers import ResNetConfig, ResNetForImageClassification

    from elvis_core.model import build_model, preset
    from elvis_core.model.checkpoint import load_checkpoint, save_checkpoint
    from elvis_core.training.config import load_config, model_config_from

    torch.manual_seed(0)
    rgb = ResNetForImageClassification(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[16, 32],
                                                    depths=[1, 1], layer_type="bottleneck", num_labels=5)).eval()
    rgb.save_pretrained(tmp_path / "resnet")
    cfg = model_config_from(load_config(None, ["model.preset='tiny'",
                                               f"model.overrides.image.pretrained={str(tmp_path / 'resnet')!r}"]))
    m = build_model(cfg).eval()
    assert m.config["image"]["resnet"]["hidden_sizes"] == [16, 32]
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        want = rgb.resnet(pixel_values=x.repeat(1, 3, 1, 1)).last_hidden_state
        got = m.image_encoder(pixel_values=x).last_hidden_state
    assert float((got - want).abs().max()) < 1e-4
    # a saved checkpoint does not read the folder again
    save_checkpoint(m, tmp_path / "ck")
    (tmp_path / "resnet" / "model.safetensors").unlink()
    assert torch.equal(load_checkpoint(tmp_path / "ck").image_encoder.embedder.embedder.convolution.weight,
                       m.image_encoder.embedder.embedder.convolution.weight)


def test_whole_image_variant_sees_everything(tmp_path):
    """--whole-image: our pad-to-square transform with hi-ml's intensity mapping (min-max, no mean/std)."""
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.io.images import read_image
    from elvis_core.model.checkpoint import read_checkpoint_config
    from elvis_core.model.importers import import_biovil

    im = ref.randomise(ref.ImageModel(multi=False, joint=16, layers=(1, 1), widths=(4, 8), stem=8, num_classes=10),
                       seed=2)
    torch.save(im.state_dict(), tmp_path / "w.pt")
    ref.make_cxr_bert_folder(tmp_path / "text", projection_size=16)
    ck = import_biovil("biovil", tmp_path / "w.pt", tmp_path / "text", tmp_path / "ck", whole_image=True, resize=96)
    pre = read_checkpoint_config(ck)["model"]["preprocessing"]
    assert pre["kind"] == "resize_long_side_pad_square" and pre["size"] == 96 and pre["normalization"] == "minmax"
    assert (pre["mean"], pre["std"]) == (0.0, 1.0)
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), ref.sample_image(128, 160))
    eng = GroundingEngine(str(ck), device="cpu")
    eng.set_image(read_image(png))
    gm = eng.ground("left lower lobe opacity")
    assert gm.fully_seen and np.isfinite(gm.to_image()).all() and gm.similarity.shape == (12, 12)
