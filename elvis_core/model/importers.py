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

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from elvis_core.errors import ModelImportError
# the pieces, re-exported under their old names
from elvis_core.model.import_resnet import (convert_biovil_image, resnet_config_from_torchvision,  # noqa: F401,E501
                                            torchvision_resnet_to_transformers)
from elvis_core.model.import_text import convert_cxr_bert, make_tokenizer, read_text_folder
from elvis_core.model.import_weights import read_weights, sha256_file  # noqa: F401

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
    tensors = {**img_tensors, **txt_tensors}
    _check_before_build(cfg, tensors, txt_state, text)
    tokenizer = make_tokenizer(text, max_pos)
    try:
        model = build_model(cfg, tokenizer=tokenizer, init_text_from_path=False)
    except ConfigError as err:
        raise ModelImportError(f"the weights describe a model this code cannot build: {err}") from None
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


def _check_before_build(cfg: Dict[str, Any], tensors: Dict[str, torch.Tensor], txt_state, text) -> None:
    """Sizes first, then build: the config's layer count must be the layers the weights hold (a text config asking
    for 10^6 layers beside 12 layers of tensors is refused before 2 GB are allocated), and the whole model must pass
    the limits of :mod:`elvis_core.model.limits` and hold no more than 1.5 × the values the files bring."""
    import re

    from elvis_core.errors import ConfigError
    from elvis_core.model.limits import FILE_SLACK, check_model_config

    hf = text["bert"]
    layers = {int(m.group(1)) for k in txt_state for m in [re.search(r"encoder\.layer\.(\d+)\.", k)] if m}
    want = hf.get("num_hidden_layers", 12)
    if isinstance(want, bool) or not isinstance(want, int) or want != len(layers) or \
            (layers and sorted(layers) != list(range(len(layers)))):
        raise ModelImportError(f"config.json says num_hidden_layers {str(want)[:20]} but the weights hold "
                               f"{len(layers)} layer(s) numbered {_ranges(sorted(layers))}: not this model's "
                               "config", text["folder"])
    try:
        n = check_model_config(cfg)
    except ConfigError as err:
        raise ModelImportError(f"the model described is refused: {err}", text["folder"]) from None
    held = sum(int(v.numel()) for v in tensors.values())
    if n > FILE_SLACK * held + 5_000_000:
        raise ModelImportError(f"the configs describe ~{n:,} parameters but the weights hold {held:,} values: "
                               "config and weights do not belong together", text["folder"])


def _ranges(nums: List[int]) -> str:
    if not nums:
        return "(none)"
    return f"{nums[0]}..{nums[-1]}" if nums == list(range(nums[0], nums[-1] + 1)) else \
        ", ".join(str(x) for x in nums[:5]) + (" ..." if len(nums) > 5 else "")


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
    if not os.path.lexists(cpath):
        raise ModelImportError("pretrained ResNet folder has no config.json", d)
    from elvis_core.io.safe_json import read_json_file

    conf = read_json_file(cpath, ModelImportError, max_bytes=4 << 20, what="config.json")
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
