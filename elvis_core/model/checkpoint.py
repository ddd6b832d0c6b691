"""Checkpoints: a directory with ``config.json``, ``model.safetensors`` and the tokenizer files. Never pickle.

``config.json``::

    {"format": "elvis-checkpoint", "format_version": 1,
     "model": {...the model config, incl. "preprocessing"...},
     "provenance": {...objectives, data, training, anything the caller passes...},
     "code_version": elvis_core.__version__, "git_commit": "abc123..." | null,
     "created_utc": "2026-...Z", "n_parameters": 804960}

:func:`load_checkpoint` rebuilds the architecture from the config, then checks every tensor name and shape of
``model.safetensors`` against it before loading, and raises :class:`~elvis_core.errors.CheckpointError` naming the
directory and exactly which tensors are missing, unexpected or of the wrong shape.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

from elvis_core.errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # torch is imported where weights are read or written: reading config.json or hashing the
    import torch  # weights must not cost torch's import (the viewer's ONNX path, issue 25)

FORMAT = "elvis-checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_TOKENIZER_NAME = "tokenizer.json"
#: the words the text encoder was trained on (``{"source": str, "words": [...]}``; see elvis_core/model/vocab.py)
KNOWN_WORDS_NAME = "known_words.json"
_KNOWN_WORDS_MAX_BYTES = 16 << 20


def git_commit() -> Optional[str]:
    """The git commit of the code (the checkout this package lives in), or None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _state_for_saving(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    # clone: safetensors refuses shared storage; contiguous CPU tensors only
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(model, out_dir: Union[str, os.PathLike], provenance: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` + tokenizer files into ``out_dir`` (created). Returns the dir.

    Files are written to temporary names and renamed, so a crash never leaves a half-written checkpoint behind.
    """
    from safetensors.torch import save_file

    import elvis_core

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _state_for_saving(model)
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config,
        "provenance": provenance or {},
        "code_version": elvis_core.__version__,
        "git_commit": git_commit(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "n_parameters": int(sum(v.numel() for v in state.values())),
    }
    tmp_w = out / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp_w), metadata={"format": FORMAT})
    model.tokenizer.save_pretrained(str(out))
    known = getattr(model, "known_words", None)
    if isinstance(known, dict) and isinstance(known.get("words"), list):
        tmp_k = out / (KNOWN_WORDS_NAME + ".tmp")
        tmp_k.write_text(json.dumps({"source": str(known.get("source", "")), "words": sorted(set(known["words"]))},
                                    indent=0), encoding="utf-8")
        os.replace(tmp_k, out / KNOWN_WORDS_NAME)
    tmp_c = out / (CONFIG_NAME + ".tmp")
    tmp_c.write_text(json.dumps(cfg, indent=2, sort_keys=False), encoding="utf-8")
    os.replace(tmp_w, out / WEIGHTS_NAME)
    os.replace(tmp_c, out / CONFIG_NAME)
    return out


def read_checkpoint_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory (validated format), without loading weights."""
    d = Path(path)
    if not d.exists():
        raise CheckpointError("checkpoint folder does not exist", d)
    if not d.is_dir():
        raise CheckpointError("a checkpoint is a folder with config.json, model.safetensors and tokenizer files; "
                              "this is a file", d)
    cpath = d / CONFIG_NAME
    if not os.path.lexists(cpath):
        raise CheckpointError(f"missing {CONFIG_NAME}", d)
    from elvis_core.io.safe_json import read_json_file

    # a regular file (no FIFO, no /dev/zero), ≤ 16 MiB, depth-checked before parsing (a 100 000-deep config is a
    # clean error, not a RecursionError), any parser failure one line
    cfg = read_json_file(cpath, CheckpointError, max_bytes=16 << 20, what=CONFIG_NAME)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        hint = ""
        if isinstance(cfg, dict) and (cfg.get("model_type") or cfg.get("architectures")):
            hint = (f"; this looks like a Hugging Face model folder (model_type {cfg.get('model_type')!r}): convert "
                    "it once with 'elvis import biovil|biovil-t' (docs/models.md)")
        raise CheckpointError(f"{CONFIG_NAME} is not an ELVIS checkpoint config (expected \"format\": \"{FORMAT}\")"
                              + hint, d)
    fv = cfg.get("format_version", 0)
    if isinstance(fv, bool) or not isinstance(fv, int):
        raise CheckpointError(f"{CONFIG_NAME}: format_version must be an integer, got {str(fv)[:30]}", d)
    if fv > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format_version {cfg.get('format_version')} is newer than this code "
                              f"understands ({FORMAT_VERSION})", d)
    if not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{CONFIG_NAME} has no \"model\" section", d)
    return cfg


def read_known_words(path: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """``{"source": str, "words": [...]}`` from a checkpoint's ``known_words.json``; None when the file is absent
    (callers fall back to the tokenizer's whole words). A malformed file raises CheckpointError saying what is wrong."""
    d = Path(path)
    f = d / KNOWN_WORDS_NAME
    if not f.is_file():
        return None
    if f.stat().st_size > _KNOWN_WORDS_MAX_BYTES:
        raise CheckpointError(f"{KNOWN_WORDS_NAME} is larger than {_KNOWN_WORDS_MAX_BYTES >> 20} MB", d)
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{KNOWN_WORDS_NAME} is not valid JSON ({err})", d) from None
    if isinstance(data, list):
        data = {"source": "", "words": data}
    words = data.get("words") if isinstance(data, dict) else None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise CheckpointError(f"{KNOWN_WORDS_NAME} must hold a list of words under \"words\"", d)
    return {"source": str(data.get("source") or ""), "words": sorted({w.lower() for w in words})}


def _load_tokenizer(d: Path):
    from transformers import PreTrainedTokenizerFast

    if not (d / _TOKENIZER_NAME).is_file():
        raise CheckpointError(f"missing tokenizer file {_TOKENIZER_NAME}", d)
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(d), local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read the tokenizer files: {err}".splitlines()[0], d) from err


def _list(names, limit: int = 8) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_state_dict(expected: Dict[str, torch.Tensor], found_shapes: Dict[str, tuple], where) -> None:
    """Raise CheckpointError listing missing / unexpected / wrong-shape tensors (by name)."""
    missing = set(expected) - set(found_shapes)
    unexpected = set(found_shapes) - set(expected)
    wrong = [f"{k} (checkpoint {list(found_shapes[k])}, architecture {list(expected[k].shape)})"
             for k in sorted(set(expected) & set(found_shapes)) if tuple(found_shapes[k]) != tuple(expected[k].shape)]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of the wrong shape: {_list(wrong, 5)}")
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing: {_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_list(unexpected)}")
    if problems:
        raise CheckpointError("weights do not match the architecture in config.json (a checkpoint from another "
                              "architecture?): " + "; ".join(problems), where)


def load_checkpoint(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu"):
    """Load a checkpoint directory into an :class:`~elvis_core.model.elvis.ElvisModel` in eval mode on ``device``.

    Validates the config, every tensor name and shape; raises CheckpointError naming the directory and the
    mismatching tensors. Reads safetensors only (never pickle).
    """
    from safetensors import SafetensorError, safe_open

    from elvis_core.model.elvis import build_model

    d = Path(path)
    cfg = read_checkpoint_config(d)
    wpath = d / WEIGHTS_NAME
    if not os.path.lexists(wpath):
        raise CheckpointError(f"missing {WEIGHTS_NAME}", d)
    from elvis_core.model.import_weights import check_safetensors_header
    from elvis_core.model.limits import check_model_config

    # the header against the file and the limits before anything is read (a 40 GB sparse file, offsets past the
    # end, overlapping tensors, a regular file only)
    check_safetensors_header(wpath, CheckpointError)
    try:  # sizes and memory checked before anything is built (elvis_core/model/limits.py)
        check_model_config(cfg["model"], weights=wpath)
    except ConfigError as err:
        raise CheckpointError(f"config.json describes an invalid model: {err}", d) from None
    tokenizer = _load_tokenizer(d)
    try:
        model = build_model(cfg["model"], tokenizer=tokenizer, init_text_from_path=False)
    except ConfigError as err:
        raise CheckpointError(f"config.json describes an invalid model: {err}", d) from err
    except Exception as err:  # noqa: BLE001 - transformers' own checks raise many types (StrictDataclass..., ...)
        raise CheckpointError(f"config.json describes a model that cannot be built ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160] if str(err) else ''})", d) from None
    expected = model.state_dict()
    try:
        with safe_open(str(wpath), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
            check_state_dict(expected, shapes, d)
            state = {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{WEIGHTS_NAME} is not a readable safetensors file ({err})".splitlines()[0], d) \
            from err
    bad_dtype = [k for k, v in state.items() if v.dtype.is_floating_point != expected[k].dtype.is_floating_point]
    if bad_dtype:
        raise CheckpointError(f"tensor(s) of the wrong kind (float vs integer): {_list(bad_dtype)}", d)
    import torch

    bad_values = [k for k, v in state.items() if v.dtype.is_floating_point and not bool(torch.isfinite(v).all())]
    if bad_values:
        raise CheckpointError(f"tensor(s) with NaN or infinite values (a diverged training run?): {_list(bad_values)}",
                              d)
    model.load_state_dict(state, strict=True)
    model.checkpoint_dir = str(d)
    model.checkpoint_config = cfg
    model.known_words = read_known_words(d)
    return model.to(device).eval()


def checkpoint_hash(path: Union[str, os.PathLike], length: int = 12) -> str:
    """Short sha256 (hex) of the checkpoint's ``model.safetensors`` (for provenance and exports)."""
    d = Path(path)
    w = d / WEIGHTS_NAME if d.is_dir() else d
    if not w.is_file():
        raise CheckpointError(f"missing {WEIGHTS_NAME}", d)
    h = hashlib.sha256()
    with open(w, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]
