"""The ELVIS model: encoders, projection heads, presets and checkpoints.

Public API::

    from elvis_core.model import build_model, ElvisModel, preset
    from elvis_core.model.checkpoint import save_checkpoint, load_checkpoint, checkpoint_hash
"""

from elvis_core.model.config import minilm_path, preset, preset_names, validate_model_config
from elvis_core.model.elvis import ElvisModel, ImageEmbeddings, TextEmbeddings, build_model

__all__ = ["ElvisModel", "ImageEmbeddings", "TextEmbeddings", "build_model", "preset", "preset_names",
           "validate_model_config", "minilm_path"]
