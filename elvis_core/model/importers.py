"""``elvis import``: public models a user already has on disk → ordinary ELVIS checkpoints (run once).

Supported sources (the weights are the user's download; nothing is fetched):

- **BioViL** (hi-ml-multimodal ``ImageModel``, ResNet-50): ``biovil_image_resnet50_proj_size_128.pt`` — torchvision
  ResNet-50 tensors under ``encoder.encoder.``, a 1x1-conv projector ``projector.model.{0,1,3}``
  (conv1x1 without bias → BatchNorm → ReLU → conv1x1), global embedding = mean of the projected patches.
- **BioViL-T** (``MultiImageEncoder``): ``biovil_t_image_model_proj_size_128.pt`` — the same ResNet-50, then
  ``encoder.backbone_to_vit`` (1x1 conv 2048 → 256), ``encoder.vit_pooler.*`` (3-block transformer over current +
  previous patches), ``encoder.missing_previous_emb`` (used when there is no previous image) and the projector
  over the 512 concatenated channels.
- **CXR-BERT** text folder (Hugging Face layout of ``microsoft/BiomedVLP-CXR-BERT-specialized`` or
  ``microsoft/BiomedVLP-BioViL-T``): ``config.json`` (``model_type: cxr-bert``), ``vocab.txt``,
  ``tokenizer_config.json``, ``pytorch_model.bin`` or ``model.safetensors``. Its Python code is never run: the
  ``bert.*`` tensors go into a plain ``BertModel``, ``cls_projection_head.{dense_to_hidden, LayerNorm,
  dense_to_output}`` into a ``linear-gelu-layernorm-linear`` head; the masked-LM head (``cls.predictions.*``) is
  dropped. Text embedding = that head on the last hidden state at [CLS], L2-normalised (as hi-ml).

Conversions: the RGB stem (``conv1``, 3 input channels) is folded to one grey channel by summing its weights over
the input channels — exact, because hi-ml feeds three identical channels; the ImageNet classifier ``fc`` of the
torchvision ResNet is unused by BioViL and dropped. Torchvision names are mapped to transformers ``ResNetModel``
names (:func:`torchvision_resnet_to_transformers`), and the ResNet's shape is read from the tensors, so any
torchvision-layout ResNet (not only ResNet-50) converts.

Only here are ``.pt``/``.bin`` files read, and only with ``torch.load(..., weights_only=True)``: a pickle that
holds anything but tensors is refused. The checkpoint is written into a temporary folder beside ``--out`` and
renamed at the end, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from elvis_core.errors import ModelImportError

#: the variants: hi-ml's inference transform (resize, centre crop) and the image encoder
VARIANTS: Dict[str, Dict[str, Any]] = {
    "biovil": {"resize": 512, "crop": 480, "fusion": "none",
               "image_repo": "microsoft/BiomedVLP-CXR-BERT-specialized (file biovil_image_resnet50_proj_size_128.pt)",
               "text_repo": "microsoft/BiomedVLP-CXR-BERT-specialized"},
    "biovil-t": {"resize": 512, "crop": 448, "fusion": "biovil-t",
                 "image_repo": "microsoft/BiomedVLP-BioViL-T (file biovil_t_image_model_proj_size_128.pt)",
                 "text_repo": "microsoft/BiomedVLP-BioViL-T"},
}

#: characters hi-ml strips from the end of a prompt before tokenising (``TextInput.tokenize_input_prompts``)
CXR_BERT_STRIP = "!?."


# ---------------------------------------------------------------------------------------------------- reading
def sha256_file(path: Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def read_weights(path: os.PathLike | str) -> Dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors`` file or a PyTorch ``.pt``/``.bin`` (weights only).

    Raises :class:`ModelImportError` naming the file: missing, empty, truncated, not weights, a pickle with
    anything but tensors (refused by ``weights_only=True``), or no tensors at all."""
    p = Path(path)
    if not p.exists():
        raise ModelImportError("file not found", p)
    if not p.is_file():
        raise ModelImportError("not a file", p)
    if p.stat().st_size == 0:
        raise ModelImportError("empty file", p)
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelImportError(f"not a readable safetensors file ({str(err).splitlines()[0]})", p) from None
    else:
        import pickle
        import zipfile

        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).splitlines()[0] if str(err) else "unsupported content"
            if "weights_only" in str(err) or "Unsupported" in str(err) or "global" in str(err).lower():
                raise ModelImportError("refused: the file holds more than tensors (weights-only loading refuses "
                                       "other Python objects; only plain state dicts are imported)", p) from None
            raise ModelImportError(f"not a PyTorch weights file ({first})", p) from None
        except (EOFError, zipfile.BadZipFile) as err:
            raise ModelImportError(f"truncated or damaged PyTorch file ({type(err).__name__})", p) from None
        except (RuntimeError, OSError, ValueError, TypeError, AttributeError, KeyError, IndexError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            msg = re.split(r"(?<=[a-z])\. ", msg)[0]  # torch's first sentence; the rest is advice for its developers
            kind = "truncated or damaged" if re.search(r"zip|archive|central directory|EOF|corrupt|failed finding",
                                                       msg, re.I) else "unreadable"
            raise ModelImportError(f"{kind} PyTorch file ({msg[:160]})", p) from None
    if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
        (key, inner), = state.items()
        if key in ("state_dict", "model", "model_state_dict"):
            state = inner
    if not isinstance(state, dict):
        raise ModelImportError(f"expected a state dict (names → tensors), found a {type(state).__name__}", p)
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelImportError(f"expected a state dict of tensors; {len(bad)} entr(y/ies) are not tensors, e.g. "
                               f"{str(bad[0])[:60]!r}", p)
    if not state:
        raise ModelImportError("holds no tensors", p)
    return state


# ---------------------------------------------------------------------------------------------------- ResNet
def _stage_blocks(state: Dict[str, torch.Tensor], prefix: str) -> Dict[int, int]:
    blocks: Dict[int, int] = {}
    pat = re.compile(re.escape(prefix) + r"layer(\d+)\.(\d+)\.")
    for k in state:
        m = pat.match(k)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            blocks[s] = max(blocks.get(s, -1), b)
    return {s: n + 1 for s, n in sorted(blocks.items())}


def resnet_config_from_torchvision(state: Dict[str, torch.Tensor], prefix: str, where) -> Dict[str, Any]:
    """transformers ``ResNetConfig`` kwargs for a torchvision-layout ResNet state dict under ``prefix``."""
    stem = state.get(prefix + "conv1.weight")
    if stem is None or stem.ndim != 4:
        raise ModelImportError(f"no ResNet found: tensor {prefix}conv1.weight is missing (is this the right file?)",
                               where)
    stages = _stage_blocks(state, prefix)
    if not stages or list(stages) != list(range(1, len(stages) + 1)):
        raise ModelImportError(f"no ResNet stages {prefix}layer1.. found", where)
    bottleneck = (prefix + "layer1.0.conv3.weight") in state
    hidden = []
    for s in stages:
        last = state.get(f"{prefix}layer{s}.0.{'conv3' if bottleneck else 'conv2'}.weight")
        if last is None:
            raise ModelImportError(f"ResNet stage layer{s} is incomplete", where)
        hidden.append(int(last.shape[0]))
        if bottleneck and int(state[f"{prefix}layer{s}.0.conv1.weight"].shape[0]) * 4 != int(last.shape[0]):
            raise ModelImportError(f"ResNet stage layer{s} is not a standard bottleneck (width x 4); "
                                   "wide / grouped ResNets are not supported", where)
    return {"embedding_size": int(stem.shape[0]), "hidden_sizes": hidden, "depths": list(stages.values()),
            "layer_type": "bottleneck" if bottleneck else "basic", "downsample_in_first_stage": False,
            "downsample_in_bottleneck": False, "hidden_act": "relu", "num_channels": 1}


_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet_to_transformers(state: Dict[str, torch.Tensor], prefix: str, out_prefix: str,
                                       used: set) -> Dict[str, torch.Tensor]:
    """Rename a torchvision ResNet (``conv1``, ``bn1``, ``layerS.B.convK``/``bnK``/``downsample.{0,1}``) to
    transformers ``ResNetModel`` names, folding the RGB stem to one channel. Marks the names read in ``used``."""
    out: Dict[str, torch.Tensor] = {}

    def take(src: str, dst: str, fold: bool = False) -> None:
        t = state[prefix + src]
        used.add(prefix + src)
        if fold and t.ndim == 4 and t.shape[1] != 1:
            t = t.sum(dim=1, keepdim=True)
        out[out_prefix + dst] = t

    take("conv1.weight", "embedder.embedder.convolution.weight", fold=True)
    for b in _BN:
        if prefix + f"bn1.{b}" in state:
            take(f"bn1.{b}", f"embedder.embedder.normalization.{b}")
    bottleneck = (prefix + "layer1.0.conv3.weight") in state
    n_conv = 3 if bottleneck else 2
    for s, n in _stage_blocks(state, prefix).items():
        for j in range(n):
            src = f"layer{s}.{j}."
            dst = f"encoder.stages.{s - 1}.layers.{j}."
            for k in range(1, n_conv + 1):
                take(f"{src}conv{k}.weight", f"{dst}layer.{k - 1}.convolution.weight")
                for b in _BN:
                    if prefix + f"{src}bn{k}.{b}" in state:
                        take(f"{src}bn{k}.{b}", f"{dst}layer.{k - 1}.normalization.{b}")
            if prefix + f"{src}downsample.0.weight" in state:
                take(f"{src}downsample.0.weight", f"{dst}shortcut.convolution.weight")
                for b in _BN:
                    if prefix + f"{src}downsample.1.{b}" in state:
                        take(f"{src}downsample.1.{b}", f"{dst}shortcut.normalization.{b}")
    return out


def _conv1x1_to_linear(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1]) if t.ndim == 4 else t


# ---------------------------------------------------------------------------------------------------- image
def convert_biovil_image(state: Dict[str, torch.Tensor], variant: str, where) -> Tuple[Dict[str, torch.Tensor],
                                                                                        Dict[str, Any], List[str]]:
    """hi-ml image state dict → (our tensors, image config section incl. projection sizes, dropped names)."""
    used: set = set()
    resnet = resnet_config_from_torchvision(state, "encoder.encoder.", where)
    out = torchvision_resnet_to_transformers(state, "encoder.encoder.", "image_encoder.", used)
    fusion = {"kind": "none", "dim": 256, "heads": 8, "blocks": 3, "grid": [14, 14]}
    has_fusion = "encoder.backbone_to_vit.weight" in state
    if variant == "biovil-t" and not has_fusion:
        raise ModelImportError("this is not a BioViL-T image model (no encoder.backbone_to_vit); for BioViL use "
                               "'elvis import biovil'", where)
    if variant == "biovil" and has_fusion:
        raise ModelImportError("this is a BioViL-T image model (it has encoder.backbone_to_vit); use "
                               "'elvis import biovil-t'", where)
    if has_fusion:
        w = state["encoder.backbone_to_vit.weight"]
        used.add("encoder.backbone_to_vit.weight")
        out["image_fusion.backbone_to_vit.weight"] = _conv1x1_to_linear(w)
        if "encoder.missing_previous_emb" not in state:
            raise ModelImportError("BioViL-T tensor encoder.missing_previous_emb is missing", where)
        out["image_fusion.missing_previous_emb"] = state["encoder.missing_previous_emb"].reshape(-1)
        used.add("encoder.missing_previous_emb")
        blocks = set()
        for k, v in state.items():
            if k == "encoder.vit_pooler.pos_embed":
                continue  # a fixed sine table (not saved by current hi-ml); ours is recomputed, so it is dropped
            if k.startswith("encoder.vit_pooler."):
                used.add(k)
                out["image_fusion.vit_pooler." + k[len("encoder.vit_pooler."):]] = v
                m = re.match(r"encoder\.vit_pooler\.blocks\.(\d+)\.", k)
                if m:
                    blocks.add(int(m.group(1)))
        fusion["dim"] = int(w.shape[0])
        fusion["blocks"] = len(blocks)
        if fusion["dim"] % fusion["heads"]:
            fusion["heads"] = 1
    p0 = state.get("projector.model.0.weight")
    p3 = state.get("projector.model.3.weight")
    if p0 is None or p3 is None:
        raise ModelImportError("no projector found (tensors projector.model.0.weight / projector.model.3.weight)",
                               where)
    out["image_proj.fc1.weight"] = _conv1x1_to_linear(p0)
    for b in _BN:
        if f"projector.model.1.{b}" in state:
            out[f"image_proj.bn.{b}"] = state[f"projector.model.1.{b}"]
            used.add(f"projector.model.1.{b}")
    out["image_proj.fc2.weight"] = _conv1x1_to_linear(p3)
    if "projector.model.3.bias" in state:
        out["image_proj.fc2.bias"] = state["projector.model.3.bias"]
        used.add("projector.model.3.bias")
    used.update({"projector.model.0.weight", "projector.model.3.weight"})
    dropped = sorted(set(state) - used)
    info = {"resnet": resnet, "fusion": fusion, "image_hidden": int(p0.shape[0]), "dim": int(p3.shape[0])}
    return out, info, dropped


# ---------------------------------------------------------------------------------------------------- text
_BERT_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
              "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "position_embedding_type")


def read_text_folder(folder: os.PathLike | str) -> Dict[str, Any]:
    """Read a CXR-BERT-style folder without running its code: BERT config, projection size, tokenizer, tensors."""
    d = Path(folder)
    if not d.is_dir():
        raise ModelImportError("text model folder not found (expected the Hugging Face folder with config.json, "
                               "vocab.txt and the weights)", d)
    cpath = d / "config.json"
    if not cpath.is_file():
        raise ModelImportError("text model folder has no config.json", d)
    try:
        conf = json.loads(cpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelImportError(f"config.json is not valid JSON ({err})", cpath) from None
    if not isinstance(conf, dict) or "hidden_size" not in conf:
        raise ModelImportError("config.json does not describe a BERT-like model (no hidden_size)", cpath)
    mt = conf.get("model_type", "bert")
    if mt not in ("cxr-bert", "bert"):
        raise ModelImportError(f"model_type {mt!r} is not supported (expected 'cxr-bert' or 'bert')", cpath)
    vocab = d / "vocab.txt"
    if not vocab.is_file():
        raise ModelImportError("text model folder has no vocab.txt (the tokenizer vocabulary is required)", d)
    try:
        n_vocab = sum(1 for _ in vocab.open(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelImportError("vocab.txt is not UTF-8 text", vocab) from None
    tok_conf: Dict[str, Any] = {}
    tpath = d / "tokenizer_config.json"
    if tpath.is_file():
        try:
            tok_conf = json.loads(tpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelImportError(f"tokenizer_config.json is not valid JSON ({err})", tpath) from None
    weights = None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (d / name).is_file():
            weights = d / name
            break
    if weights is None:
        raise ModelImportError("text model folder has no model.safetensors or pytorch_model.bin", d)
    bert = {k: conf[k] for k in _BERT_KEYS if k in conf}
    bert["model_type"] = "bert"
    bert.setdefault("vocab_size", n_vocab)
    if n_vocab > int(bert["vocab_size"]):  # fewer is fine (a padded embedding matrix); more would index past it
        raise ModelImportError(f"vocab.txt has {n_vocab} entries but config.json says vocab_size "
                               f"{bert['vocab_size']}: not this model's vocabulary", d)
    return {"folder": d, "bert": bert, "projection_size": int(conf.get("projection_size", 128)),
            "vocab": vocab, "lowercase": bool(tok_conf.get("do_lower_case", True)), "weights": weights,
            "model_type": mt, "n_vocab": n_vocab}


def convert_cxr_bert(state: Dict[str, torch.Tensor], where) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``bert.*`` → ``text_encoder.*``, ``cls_projection_head.*`` → ``text_proj.*``; the MLM head is dropped."""
    out: Dict[str, torch.Tensor] = {}
    dropped = []
    head = {"cls_projection_head.dense_to_hidden.": "text_proj.fc1.", "cls_projection_head.LayerNorm.": "text_proj.ln.",
            "cls_projection_head.dense_to_output.": "text_proj.fc2."}
    has_bert_prefix = any(k.startswith("bert.") for k in state)
    for k, v in state.items():
        hk = next((h for h in head if k.startswith(h)), None)
        if hk:
            out[head[hk] + k[len(hk):]] = v
        elif k.endswith("embeddings.position_ids") or ".pooler." in k or k.startswith("pooler."):
            dropped.append(k)
        elif has_bert_prefix and k.startswith("bert."):
            out["text_encoder." + k[len("bert."):]] = v
        elif not has_bert_prefix and (k.startswith("embeddings.") or k.startswith("encoder.")):
            out["text_encoder." + k] = v
        else:
            dropped.append(k)
    if not any(k.startswith("text_proj.") for k in out):
        raise ModelImportError("no CXR-BERT projection head (cls_projection_head.*) in the text weights; a plain "
                               "BERT has no joint-space projection and cannot be paired with BioViL", where)
    return out, dropped


def make_tokenizer(info: Dict[str, Any], max_length: int):
    """BERT's WordPiece tokenizer from ``vocab.txt`` (line order = ids) and ``do_lower_case``, built with
    ``tokenizers`` (the same normaliser, pre-tokeniser and [CLS] ... [SEP] template as ``BertTokenizer``), so it does
    not depend on how a transformers version reads vocab files."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: Dict[str, int] = {}
    with open(info["vocab"], encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            vocab[line.rstrip("\n")] = i
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in vocab]
    if missing:
        raise ModelImportError(f"vocab.txt lacks the special token(s) {', '.join(missing)}: not a BERT vocabulary",
                               info["vocab"])
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=bool(info["lowercase"]))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=int(max_length))


# ---------------------------------------------------------------------------------------------------- import
def _out_dir_ok(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelImportError("output already exists; choose a new folder for the converted checkpoint", out)
    if not out.resolve().parent.is_dir():
        raise ModelImportError("the parent folder of the output does not exist", out.resolve().parent)


def import_biovil(variant: str, image_weights: os.PathLike | str, text_model: os.PathLike | str,
                  out: os.PathLike | str, whole_image: bool = False, resize: Optional[int] = None,
                  crop: Optional[int] = None) -> Path:
    """Convert BioViL / BioViL-T + CXR-BERT into an ELVIS checkpoint folder ``out``; returns it.

    ``whole_image``: store our pad-to-square transform (long side ``resize``) instead of hi-ml's centre crop, so no
    border is lost (the model then sees a scale and black padding it was not trained with; see docs/models.md).
    ``resize`` / ``crop`` override the variant's 512 / 480 (BioViL) or 512 / 448 (BioViL-T)."""
    from elvis_core.errors import ConfigError
    from elvis_core.model.checkpoint import check_state_dict, save_checkpoint
    from elvis_core.model.elvis import build_model
    from elvis_core.model.transforms import CenterCropTransform, ModelInputTransform

    if variant not in VARIANTS:
        raise ModelImportError(f"unknown model {variant!r} (known: {', '.join(VARIANTS)})")
    spec = VARIANTS[variant]
    out = Path(out)
    _out_dir_ok(out)
    image_path = Path(image_weights)
    img_state = read_weights(image_path)
    img_tensors, img_info, img_dropped = convert_biovil_image(img_state, variant, image_path)
    text = read_text_folder(text_model)
    txt_state = read_weights(text["weights"])
    txt_tensors, txt_dropped = convert_cxr_bert(txt_state, text["weights"])
    if text["projection_size"] != img_info["dim"]:
        raise ModelImportError(f"the text projection ({text['projection_size']}) and the image projection "
                               f"({img_info['dim']}) have different sizes: not a matching pair", text["folder"])

    rs = int(resize or spec["resize"])
    cr = int(crop or spec["crop"])
    try:
        if whole_image:
            pre = ModelInputTransform(size=rs, normalization="minmax", mean=0.0, std=1.0).to_config()
        else:
            pre = CenterCropTransform(resize=rs, crop=cr, normalization="minmax").to_config()
    except ConfigError as err:
        raise ModelImportError(str(err)) from None
    fusion = dict(img_info["fusion"])
    if fusion["kind"] != "none" or variant == "biovil-t":
        fusion["kind"] = "biovil-t"
        g = -(-cr // 32)  # hi-ml's pooler grid: the crop at output stride 32 (14 x 14 for 448)
        fusion["grid"] = [g, g]
    max_pos = int(text["bert"].get("max_position_embeddings", 512))
    cfg = {
        "image": {"resnet": img_info["resnet"], "fusion": fusion, "global": "mean_projected_patches"},
        "text": {"source": "pretrained", "path": None, "hf_config": text["bert"], "pooling": "cls",
                 "max_length": max_pos, "strip_trailing": CXR_BERT_STRIP},
        "projection": {"dim": img_info["dim"], "hidden": img_info["image_hidden"], "shared_local_global": True,
                       "image_head": "linear-bn-relu-linear", "text_head": "linear-gelu-layernorm-linear",
                       "image_hidden": img_info["image_hidden"], "text_hidden": text["projection_size"]},
        "preprocessing": pre,
    }
    tokenizer = make_tokenizer(text, max_pos)
    try:
        model = build_model(cfg, tokenizer=tokenizer, init_text_from_path=False)
    except ConfigError as err:
        raise ModelImportError(f"the weights describe a model this code cannot build: {err}") from None
    tensors = {**img_tensors, **txt_tensors}
    expected = model.state_dict()
    try:
        check_state_dict(expected, {k: tuple(v.shape) for k, v in tensors.items()}, "converted weights")
    except Exception as err:
        raise ModelImportError(f"the files do not fit together: {getattr(err, 'problem', err)}") from None
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)
    model.eval()
    provenance = {"imported": {
        "model": variant, "source_repository": "microsoft/hi-ml (hi-ml-multimodal)",
        "image_weights": {"file": image_path.name, "sha256": sha256_file(image_path), "from": spec["image_repo"]},
        "text_model": {"folder": Path(text["folder"]).name, "model_type": text["model_type"],
                       "weights": Path(text["weights"]).name, "sha256": sha256_file(Path(text["weights"])),
                       "from": spec["text_repo"]},
        "conversions": ["RGB stem conv1 folded to one grey channel (sum over input channels; exact for the three "
                        "identical channels hi-ml feeds)",
                        "torchvision ResNet names -> transformers ResNetModel names",
                        "1x1 convolutions of the projector stored as linear layers"],
        "dropped_tensors": {"image": _summarise(img_dropped), "text": _summarise(txt_dropped)},
        "preprocessing": "whole image (pad to square)" if whole_image else f"hi-ml: resize {rs}, centre crop {cr}",
    }}
    parent = out.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".importing", dir=str(parent)))
    from elvis_core.model.vocab import tokenizer_whole_words

    model.known_words = {"source": f"{variant} tokenizer whole-word vocabulary (imported; the words it was "
                                   "pretrained on are not published)", "words": tokenizer_whole_words(model.tokenizer)}
    try:
        save_checkpoint(model, tmp, provenance=provenance)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except OSError as err:
        raise ModelImportError(f"cannot write the checkpoint ({err.strerror or err})", out) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _summarise(names: List[str]) -> List[str]:
    """Group dropped tensor names by their module prefix (e.g. ``cls.predictions.* (9)``)."""
    groups: Dict[str, int] = {}
    for n in names:
        parts = n.split(".")
        key = ".".join(parts[:2]) if len(parts) > 2 else n
        groups[key] = groups.get(key, 0) + 1
    return [f"{k}.* ({v})" if v > 1 or k not in names else k for k, v in sorted(groups.items())]


# ---------------------------------------------------------------------------------------------------- ImageNet
def load_pretrained_resnet(folder: os.PathLike | str) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """A transformers ResNet folder (``ResNetForImageClassification`` or ``ResNetModel``, e.g. an ImageNet
    ``microsoft/resnet-50`` download): (ResNetConfig kwargs with one input channel, ``ResNetModel`` tensors with
    the RGB stem folded to one channel, classifier dropped). Grey input x gives the RGB network's response to
    (x, x, x) — the ImageNet mean/std standardisation is not applied (our transform's own is)."""
    d = Path(folder)
    if not d.is_dir():
        raise ModelImportError("pretrained ResNet folder not found", d)
    cpath = d / "config.json"
    if not cpath.is_file():
        raise ModelImportError("pretrained ResNet folder has no config.json", d)
    try:
        conf = json.loads(cpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelImportError(f"config.json is not valid JSON ({err})", cpath) from None
    if not isinstance(conf, dict) or conf.get("model_type") != "resnet":
        raise ModelImportError("config.json is not a transformers ResNet config (model_type 'resnet')", cpath)
    keys = ("embedding_size", "hidden_sizes", "depths", "layer_type", "hidden_act", "downsample_in_first_stage",
            "downsample_in_bottleneck")
    rcfg = {k: conf[k] for k in keys if k in conf}
    rcfg["num_channels"] = 1
    weights = next((d / n for n in ("model.safetensors", "pytorch_model.bin") if (d / n).is_file()), None)
    if weights is None:
        raise ModelImportError("pretrained ResNet folder has no model.safetensors or pytorch_model.bin", d)
    state = read_weights(weights)
    prefix = "resnet." if any(k.startswith("resnet.") for k in state) else ""
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix) or not (k[len(prefix):].startswith("embedder.")
                                            or k[len(prefix):].startswith("encoder.")):
            continue  # classifier.* and anything else
        name = k[len(prefix):]
        if name == "embedder.embedder.convolution.weight" and v.ndim == 4 and v.shape[1] != 1:
            v = v.sum(dim=1, keepdim=True)
        out[name] = v
    if "embedder.embedder.convolution.weight" not in out:
        raise ModelImportError("no ResNet stem (embedder.embedder.convolution.weight) in the weights", weights)
    return rcfg, out
