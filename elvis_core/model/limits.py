"""Resource limits of a model config, checked **before** anything is built.

A checkpoint's ``config.json`` decides how much memory building the model takes: ``num_hidden_layers: 1000000``
allocates until the OOM killer, ``preprocessing.size: 65536`` asks OpenCV for 16 GB per image, ``hidden_size: 0``
crashes inside transformers. :func:`check_model_config` reads the sizes a config claims (types first: integers
must be integers), estimates the parameter count analytically (no module is built) and compares it with

- an absolute cap (``ELVIS_MAX_MODEL_PARAMETERS``, default 1 000 000 000: ResNet-50 + BERT-base is ~135 M,
  BioViL-T ~200 M), and
- when a ``model.safetensors`` is given, the number of values that file actually holds (read from its JSON header
  only): a config that describes a model several times larger than its weights is refused as inconsistent.

Limits on shapes: at most 256 transformer layers and 1 024 heads, hidden sizes up to 65 536, ResNet stages up to
16 with up to 1 000 blocks in all, model input side 32..2 048 px (``ELVIS_MAX_MODEL_INPUT``), a patch grid of at most
128 x 128 cells (dilated stages, ``image.dilate_stages``, keep their resolution), text length up to the position
embeddings and 8 192. Unknown keys are left to the config validator (this module only bounds sizes).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Mapping, Optional

from elvis_core.errors import ConfigError


def _env_int(name: str, default: int) -> int:
    try:
        v = int(float(os.environ.get(name, "")))
    except ValueError:
        return default
    return v if v > 0 else default


MAX_PARAMETERS = _env_int("ELVIS_MAX_MODEL_PARAMETERS", 1_000_000_000)
MAX_INPUT_SIZE = _env_int("ELVIS_MAX_MODEL_INPUT", 2048)
MAX_LAYERS = 256
MAX_HEADS = 1024
MAX_WIDTH = 65536
MAX_VOCAB = 1_000_000
MAX_STAGES = 16
MAX_BLOCKS = 1000
MAX_TEXT_LENGTH = 8192
#: patch grid side (activation memory of the last stages grows with its square): 128 x 128 cells
MAX_GRID = 128
#: a config may describe at most this many times the values its weights file holds (plus a small allowance)
FILE_SLACK = 1.5


def _int(section: Mapping[str, Any], key: str, default: Optional[int], name: str, lo: int, hi: int) -> Optional[int]:
    if key not in section:
        return default
    v = section[key]
    if v is None:
        if default is None:
            return None
        raise ConfigError(f"{name} is null: must be an integer {lo}..{hi}")
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and math.isfinite(v) and v == int(v):
            v = int(v)
        else:
            raise ConfigError(f"{name} must be an integer {lo}..{hi}, got {type(v).__name__} {str(v)[:30]}")
    if not lo <= v <= hi:
        raise ConfigError(f"{name} is {v}: must be {lo}..{hi}")
    return v


def _number(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {type(v).__name__} {str(v)[:30]}")
    return float(v)


def _int_list(section: Mapping[str, Any], key: str, name: str, lo: int, hi: int, max_len: int):
    if key not in section:
        return None
    v = section[key]
    if not isinstance(v, (list, tuple)):
        raise ConfigError(f"{name} must be a list of integers, got {type(v).__name__}")
    if not 1 <= len(v) <= max_len:
        raise ConfigError(f"{name} has {len(v)} entries: must be 1..{max_len}")
    return [_int({"v": x}, "v", None, f"{name}[{i}]", lo, hi) for i, x in enumerate(v)]


def _section(cfg: Mapping[str, Any], *path: str) -> Mapping[str, Any]:
    cur: Any = cfg
    for p in path:
        if not isinstance(cur, Mapping):
            return {}
        cur = cur.get(p, {})
        if cur is None:
            return {}
    if not isinstance(cur, Mapping):
        raise ConfigError(f"model.{'.'.join(path)} must be a table, got {type(cur).__name__}")
    return cur


def estimate_parameters(model_cfg: Mapping[str, Any]) -> int:
    """Parameter count a model config implies (ResNet image encoder + BERT-like text encoder + projections), from
    the sizes alone; within a few per cent of the built model for the shipped presets. Raises ConfigError for a size
    of the wrong type or out of range."""
    # -- image: transformers ResNetConfig fields (defaults = ResNet-50)
    rn = _section(model_cfg, "image", "resnet")
    emb = _int(rn, "embedding_size", 64, "model.image.resnet.embedding_size", 1, MAX_WIDTH)
    hidden = _int_list(rn, "hidden_sizes", "model.image.resnet.hidden_sizes", 1, MAX_WIDTH, MAX_STAGES) \
        or [256, 512, 1024, 2048]
    depths = _int_list(rn, "depths", "model.image.resnet.depths", 1, MAX_BLOCKS, MAX_STAGES) or [3, 4, 6, 3]
    if len(hidden) != len(depths):
        raise ConfigError(f"model.image.resnet.hidden_sizes has {len(hidden)} stages but depths has {len(depths)}")
    if sum(depths) > MAX_BLOCKS:
        raise ConfigError(f"model.image.resnet.depths add up to {sum(depths)} blocks: at most {MAX_BLOCKS}")
    layer_type = rn.get("layer_type", "bottleneck")
    n_img = 7 * 7 * 1 * emb + 2 * emb
    cin = emb
    for c, d in zip(hidden, depths):
        for b in range(d):
            i = cin if b == 0 else c
            if layer_type == "basic":
                n = 9 * i * c + 9 * c * c + 4 * c
            else:
                r = max(1, c // 4)
                n = i * r + 9 * r * r + r * c + 2 * (2 * r + c)
            if b == 0 and i != c:
                n += i * c + 2 * c
            n_img += n
        cin = c
    # -- text: BertConfig fields (defaults = BERT-base)
    text = _section(model_cfg, "text")
    hf = _section(model_cfg, "text", "hf_config")
    tok = _section(model_cfg, "text", "tokenizer")
    h = _int(hf, "hidden_size", 768, "model.text.hf_config.hidden_size", 1, MAX_WIDTH)
    layers = _int(hf, "num_hidden_layers", 12, "model.text.hf_config.num_hidden_layers", 1, MAX_LAYERS)
    heads = _int(hf, "num_attention_heads", 12, "model.text.hf_config.num_attention_heads", 1, MAX_HEADS)
    if h % heads:
        raise ConfigError(f"model.text.hf_config.hidden_size {h} is not a multiple of num_attention_heads {heads}")
    inter = _int(hf, "intermediate_size", 3072, "model.text.hf_config.intermediate_size", 1, 4 * MAX_WIDTH)
    pos = _int(hf, "max_position_embeddings", 512, "model.text.hf_config.max_position_embeddings", 1,
               MAX_TEXT_LENGTH)
    vocab = _int(hf, "vocab_size", None, "model.text.hf_config.vocab_size", 1, MAX_VOCAB)
    if vocab is None:
        vocab = _int(tok, "vocab_size", 30522, "model.text.tokenizer.vocab_size", 1, MAX_VOCAB)
    types = _int(hf, "type_vocab_size", 2, "model.text.hf_config.type_vocab_size", 1, 1024)
    max_len = _int(text, "max_length", 96, "model.text.max_length", 1, MAX_TEXT_LENGTH)
    if max_len is not None and pos is not None and max_len > pos:
        raise ConfigError(f"model.text.max_length {max_len} is longer than the text model's "
                          f"max_position_embeddings {pos}")
    n_txt = (vocab + pos + types) * h + 2 * h + layers * (4 * h * h + 2 * h * inter + 9 * h + inter)
    # -- projections
    proj = _section(model_cfg, "projection")
    dim = _int(proj, "dim", 128, "model.projection.dim", 1, MAX_WIDTH)
    ph = _int(proj, "hidden", 256, "model.projection.hidden", 1, MAX_WIDTH)
    n_proj = 4 * (max(hidden[-1], h) * ph + ph * dim + ph + dim)
    # -- model input
    pre = _section(model_cfg, "preprocessing")
    side = _int(pre, "size", 512, "model.preprocessing.size", 32, MAX_INPUT_SIZE)
    if "crop" in pre:
        side = _int(pre, "crop", 480, "model.preprocessing.crop", 32, MAX_INPUT_SIZE)
    # -- patch grid: dilated stages keep their resolution, so activation memory grows 4x per dilated stage
    img = _section(model_cfg, "image")
    dil = _int(img, "dilate_stages", 0, "model.image.dilate_stages", 0, 3)
    first_down = bool(rn.get("downsample_in_first_stage", False))
    stride = 4 * 2 ** (len(hidden) - 1) * (2 if first_down else 1)
    stride = max(1, stride // 2 ** min(dil or 0, len(hidden) - (0 if first_down else 1)))
    cells = -(-int(side) // stride)
    if cells > MAX_GRID:
        raise ConfigError(f"model.image.dilate_stages {dil} gives a {cells} x {cells} patch grid at "
                          f"{side} px (stride {stride}): at most {MAX_GRID} x {MAX_GRID}")
    for key in ("mean", "std"):
        if key in pre:
            _number(pre[key], f"model.preprocessing.{key}")
    if "percentiles" in pre:
        pc = pre["percentiles"]
        if not isinstance(pc, (list, tuple)) or len(pc) != 2:
            raise ConfigError(f"model.preprocessing.percentiles must be two numbers, got {str(pc)[:40]}")
        for i, v in enumerate(pc):
            _number(v, f"model.preprocessing.percentiles[{i}]")
    return int(n_img + n_txt + n_proj)


def safetensors_values(path: os.PathLike | str) -> Optional[int]:
    """Number of values a safetensors file holds, from its JSON header only (None when the header is unreadable;
    the loader reports that itself)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > (100 << 20):
                return None
            hdr = json.loads(f.read(n))
        total = 0
        for k, v in hdr.items():
            if k == "__metadata__":
                continue
            total += math.prod(int(x) for x in v["shape"])
        return total
    except (OSError, ValueError, KeyError, TypeError, struct.error, RecursionError):
        return None


def check_model_config(model_cfg: Any, weights: Optional[os.PathLike | str] = None) -> int:
    """Raise :class:`ConfigError` when ``model_cfg`` asks for more than the limits (see the module docstring) or
    more than ``weights`` holds; returns the estimated parameter count. Builds nothing."""
    if not isinstance(model_cfg, Mapping):
        raise ConfigError(f"the model config must be a table, got {type(model_cfg).__name__}")
    n = estimate_parameters(model_cfg)
    if n > MAX_PARAMETERS:
        raise ConfigError(f"the model config describes ~{n:,} parameters, more than the limit of {MAX_PARAMETERS:,} "
                          "(ELVIS_MAX_MODEL_PARAMETERS)")
    if weights is not None and Path(weights).is_file():
        held = safetensors_values(weights)
        if held is not None and n > FILE_SLACK * held + 5_000_000:
            raise ConfigError(f"the model config describes ~{n:,} parameters but {Path(weights).name} holds only "
                              f"{held:,} values: config and weights do not belong together")
    return n
