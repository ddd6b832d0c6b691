"""The ELVIS model: encoders, projection heads, presets and checkpoints.

Public API::

    from elvis_core.model import build_model, ElvisModel, preset
    from elvis_core.model.checkpoint import save_checkpoint, load_checkpoint, checkpoint_hash

The names are resolved lazily (PEP 562), so that importing a torch-free submodule (``transforms``, ``vocab``,
``onnx_export``'s reader side) does not import torch and transformers (about 3.5 s on 2 cores): the viewer's ONNX
inference path depends on it.
"""

from __future__ import annotations

import importlib

_LAZY = {"ElvisModel": "elvis", "ImageEmbeddings": "elvis", "TextEmbeddings": "elvis", "build_model": "elvis",
         "preset": "config", "preset_names": "config", "validate_model_config": "config", "minilm_path": "config"}

__all__ = ["ElvisModel", "ImageEmbeddings", "TextEmbeddings", "build_model", "preset", "preset_names",
           "validate_model_config", "minilm_path"]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
