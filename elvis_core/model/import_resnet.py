"""torchvision-layout ResNets (BioViL's image encoder) → transformers ``ResNetModel`` names and config, and the
BioViL / BioViL-T image state dict → our tensors. Block numbering is checked (``layer1.99999.conv1.weight`` beside
blocks 0..2 is a stray tensor, refused by name: never a KeyError, never a config of 100 000 blocks)."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

import torch

from elvis_core.errors import ModelImportError

# ---------------------------------------------------------------------------------------------------- ResNet
def _stage_blocks(state: Dict[str, torch.Tensor], prefix: str, where=None) -> Dict[int, int]:
    """Blocks per stage; every stage's blocks must be numbered 0..n-1 (a gap means a stray tensor)."""
    from elvis_core.model.limits import MAX_BLOCKS, MAX_STAGES

    blocks: Dict[int, set] = {}
    pat = re.compile(re.escape(prefix) + r"layer(\d+)\.(\d+)\.")
    for k in state:
        m = pat.match(k)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            blocks.setdefault(s, set()).add(b)
            if b >= MAX_BLOCKS or s > MAX_STAGES:
                raise ModelImportError(f"stray tensor {k[:80]!r}: block/stage number beyond the limits "
                                       f"({MAX_STAGES} stages, {MAX_BLOCKS} blocks)", where)
    for s, bs in blocks.items():
        if sorted(bs) != list(range(len(bs))):
            gap = next(b for b in sorted(bs) if b >= len(bs))
            raise ModelImportError(f"stray tensor(s) {prefix}layer{s}.{gap}.*: the blocks of stage layer{s} are not "
                                   f"numbered 0..{len(bs) - 1}", where)
    return {s: len(bs) for s, bs in sorted(blocks.items())}


def resnet_config_from_torchvision(state: Dict[str, torch.Tensor], prefix: str, where) -> Dict[str, Any]:
    """transformers ``ResNetConfig`` kwargs for a torchvision-layout ResNet state dict under ``prefix``."""
    stem = state.get(prefix + "conv1.weight")
    if stem is None or stem.ndim != 4:
        raise ModelImportError(f"no ResNet found: tensor {prefix}conv1.weight is missing (is this the right file?)",
                               where)
    stages = _stage_blocks(state, prefix, where)
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
        if prefix + src not in state:
            raise ModelImportError(f"ResNet tensor {prefix + src} is missing (incomplete or damaged weights)")
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


