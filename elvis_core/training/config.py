"""Training configs: TOML files (``tomllib``) with defaults, ``--set key=value`` overrides and strict validation.

Every key of :data:`DEFAULTS` may be set; an unknown key or a wrong type raises
:class:`~elvis_core.errors.ConfigError` naming the key and the file. See ``docs/training.md`` for each key.
"""

from __future__ import annotations

import copy
import os
import tomllib
from typing import Any, Dict, List, Optional, Sequence

from elvis_core.errors import ConfigError
from elvis_core.model.config import merge_checked

DEFAULTS: Dict[str, Any] = {
    "model": {
        "preset": "demo",  # a name from elvis_core.model.config.preset_names()
        "overrides": {},  # a model-config table merged over the preset (validated by the model config)
        "init_from": "",  # an ELVIS checkpoint folder (incl. one made by `elvis import`): its architecture + weights
    },
    "data": {
        "root": "",  # MIMIC-CXR-layout root or phantom folder
        "views": ["PA", "AP"],
        "mimic_metadata": "",  # mimic-cxr-2.0.0-metadata.csv(.gz): ViewPosition of JPG images by dicom_id
        "exclude_ms_cxr": "",  # MS-CXR CSV: its patients never enter training
        "exclude_splits": [],  # only rows of these splits of that CSV (empty: all rows)
        "max_pairs": 0,  # 0 = all
        "cache": "auto",  # "ram" | "none" | "auto" (ram when at most cache_max_images images) | "prepared:PATH"
        "cache_max_images": 20000,
        "val_fraction": 0.0,  # held-out pairs (by patient) for a validation loss
        "anatomy": "",  # anatomy boxes for the anatomy objective: a phantom anatomy.csv or a Chest ImaGenome folder
    },
    "augment": {
        "enabled": True,
        "scale": [0.9, 1.1],
        "rotate_deg": 5.0,
        "translate": 0.05,
        "brightness": 0.1,
        "contrast": 0.1,
    },
    "objectives": {
        "weights": {"global": 1.0, "local": 0.5, "region_sentence": 0.0, "intra": 0.5, "elvis": 0.0, "anatomy": 0.0,
                    "negation": 0.0, "mirror": 0.0},
        # "spans": sentences = "."-spans of the one report encoding; "separate": each sentence encoded alone (as a
        # phrase is at grounding time) for region_sentence / elvis / local with units = "sentences"
        "sentences": "spans",
        "global": {"temperature": 0.07, "learnable": True, "gather": True},
        "local": {"temperature": 0.1, "attn_temperature": 0.1, "aggregation": "lse", "gamma": 5.0,
                  "units": "tokens"},
        "region_sentence": {"temperature": 0.3, "attn_temperature": 0.1, "text_weight": 0.5, "image_weight": 0.5,
                            "distance_threshold": 0.3, "smooth_lambda": 0.0, "weighting": "attention"},
        "elvis": {"temperature": 0.3, "attn_temperature": 0.1, "target_temperature": 0.1, "text_weight": 0.5,
                  "image_weight": 0.5, "similarity_source": "pre_projection", "weighting": "attention"},
        "anatomy": {"temperature": 0.1, "width": 128, "layers": 1, "heads": 4},
        "negation": {"temperature": 0.1, "attn_temperature": 0.1},
        "mirror": {"kind": "pearson", "temperature": 0.05},
        "intra": {"distance": "kl", "temperature": 0.1, "target_temperature": 0.1, "detach_target": True,
                  "exclude_self": True, "image_weight": 1.0, "text_weight": 1.0},
    },
    "train": {
        "epochs": 10,
        "max_steps": 0,  # optimizer steps; 0 = epochs decide
        "batch_size": 16,  # per process
        "grad_accum": 1,
        "lr": 1e-3,
        "text_lr": 0.0,  # learning rate of a pretrained text encoder (0 = lr)
        "weight_decay": 0.01,
        "warmup_steps": 50,
        "min_lr_ratio": 0.01,
        "grad_clip": 1.0,  # 0 = off
        "seed": 0,
        "num_workers": 0,
        "device": "auto",  # "auto" | "cpu" | "cuda" | "cuda:1"
        "bf16": True,  # autocast on CUDA
        "channels_last": True,  # on CUDA
        "compile": False,  # torch.compile the encoders
        "compile_mode": "default",  # torch.compile mode: "default" | "reduce-overhead" (CUDA graphs) | "max-autotune"
        "static_shapes": False,  # pad every batch's text to model.text.max_length (fixed shapes for CUDA graphs)
        "threads": 0,  # torch.set_num_threads (0 = torch default)
        "log_every": 10,
        "checkpoint_every": 200,  # optimizer steps between resume checkpoints (and at each epoch end)
        "resume": True,  # continue from OUT/last when it exists
        "progress": True,
    },
    "validation": {
        "annotations": "",  # MS-CXR CSV: grounding metrics (CNR, mIoU, pointing) during training
        "images_root": "",  # default: data.root
        "split": "val",  # "" = all rows
        "every": 0,  # optimizer steps (0 = at each epoch end)
        "max_phrases": 200,
    },
    "output": {"dir": "runs/elvis"},
}

_FREE = {"model.overrides"}
_ENUMS = {"objectives.local.aggregation": ("lse", "mean"),
          "train.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
          "objectives.intra.distance": ("kl", "mse"),
          "objectives.sentences": ("spans", "separate"), "objectives.local.units": ("tokens", "sentences"),
          "objectives.elvis.similarity_source": ("pre_projection", "post_projection", "none"),
          "objectives.elvis.weighting": ("attention", "uniform"),
          "objectives.region_sentence.weighting": ("attention", "uniform")}


def parse_set(item: str) -> tuple:
    """``"train.lr=3e-4"`` → (["train", "lr"], 0.0003). Values are TOML literals; a bare word is a string."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key or any(not k for k in key.split(".")):
        raise ConfigError(f"--set has an empty key in {item!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def _set_path(d: Dict[str, Any], path: List[str], value: Any) -> None:
    for k in path[:-1]:
        nxt = d.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{k}' is not a table")
        d = nxt
    d[path[-1]] = value


def load_config(path: Optional[str], sets: Sequence[str] = ()) -> Dict[str, Any]:
    """Read ``path`` (TOML; None = defaults only), apply ``sets`` and validate. Relative paths (data root, CSVs,
    output dir) are relative to the current directory, like every command-line path."""
    user: Dict[str, Any] = {}
    source = None
    if path:
        source = os.fspath(path)
        if not os.path.isfile(source):
            raise ConfigError("config file not found", source)
        try:
            with open(source, "rb") as fh:
                user = tomllib.load(fh)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"not valid TOML ({err})", source) from err
        except UnicodeDecodeError as err:
            raise ConfigError("not a UTF-8 text file", source) from err
    for item in sets:
        p, v = parse_set(item)
        _set_path(user, p, v)
    cfg = merge_checked(DEFAULTS, user, "", free_form=_FREE, source=source)
    for key, allowed in _ENUMS.items():
        sec, *rest = key.split(".")
        v = cfg[sec]
        for r in rest:
            v = v[r]
        if v not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}; got {v!r}", source)
    cache = cfg["data"]["cache"]
    if cache not in ("auto", "ram", "none") and not (cache.startswith("prepared:") and cache[len("prepared:"):]):
        raise ConfigError(f"config key 'data.cache' must be one of auto, ram, none or prepared:PATH; got {cache!r}",
                          source)
    t = cfg["train"]
    for k in ("batch_size", "grad_accum", "log_every", "checkpoint_every"):
        if t[k] < 1:
            raise ConfigError(f"config key 'train.{k}' must be >= 1, got {t[k]}", source)
    for k in ("epochs", "max_steps", "warmup_steps", "num_workers", "threads"):
        if t[k] < 0:
            raise ConfigError(f"config key 'train.{k}' must be >= 0, got {t[k]}", source)
    if t["epochs"] == 0 and t["max_steps"] == 0:
        raise ConfigError("set train.epochs or train.max_steps", source)
    if t["lr"] <= 0:
        raise ConfigError(f"config key 'train.lr' must be > 0, got {t['lr']}", source)
    if not 0 <= cfg["data"]["val_fraction"] < 1:
        raise ConfigError("config key 'data.val_fraction' must be in [0, 1)", source)
    if len(cfg["augment"]["scale"]) != 2:
        raise ConfigError("config key 'augment.scale' must be [min, max]", source)
    w = cfg["objectives"]["weights"]
    if not any(v != 0 for v in w.values()):
        raise ConfigError("all objective weights are 0; set at least one of objectives.weights.*", source)
    return cfg


#: model-config keys ``model.overrides`` may change on top of ``model.init_from``: they leave every weight's name and
#: shape as they are (a finer grid by dilation, where cells are drawn, mirror consensus)
INIT_FROM_OVERRIDES = ("dilate_stages", "grid_anchor", "mirror_average")


def model_config_from(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The model config: the preset with ``model.overrides`` merged over it (deep), validated; or, with
    ``model.init_from``, the architecture of that checkpoint."""
    from elvis_core.model.config import preset, validate_model_config

    if cfg["model"].get("init_from"):
        from elvis_core.model.checkpoint import read_checkpoint_config

        ov = cfg["model"]["overrides"]
        bad = sorted(set(ov) - {"image"}) + sorted(f"image.{k}" for k in (ov.get("image") or {})
                                                    if k not in INIT_FROM_OVERRIDES)
        if bad or not isinstance(ov.get("image", {}), dict):
            raise ConfigError("model.init_from takes the architecture from the checkpoint; model.overrides may only "
                              f"set image.{', image.'.join(INIT_FROM_OVERRIDES)} (same weights), not {', '.join(bad)}")
        try:
            mc = validate_model_config(read_checkpoint_config(cfg["model"]["init_from"])["model"])
            mc["image"].update(copy.deepcopy(ov.get("image") or {}))
            return validate_model_config(mc)
        except ConfigError as err:
            raise ConfigError(f"model.init_from: {err}") from None
    base = preset(cfg["model"]["preset"])

    def deep(a, b):
        out = copy.deepcopy(a)
        for k, v in b.items():
            out[k] = deep(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
        return out

    model_cfg = validate_model_config(deep(base, cfg["model"]["overrides"]))
    from elvis_core.model.limits import check_model_config

    check_model_config(model_cfg)  # parameter / input-size limits before anything is built (model/limits.py)
    return model_cfg
