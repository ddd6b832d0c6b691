"""`GroundingEngine`: a checkpoint (or an in-memory model) turned into phrase-grounding maps.

Shapes (per method):

- ``set_image(radiograph)``: model input ``[1, 1, S, S]`` -> projected patch grid ``[gh, gw, D]`` (L2-normalised),
  cached once per image in a bounded LRU keyed by a content hash of the pixels and the window the model input uses.
- ``ground(phrase)``: text global embedding ``[D]``; similarity ``[gh, gw] = patch_emb @ text_emb`` (cosine, both
  unit vectors) clipped to [-1, 1], optionally Gaussian-smoothed on the grid (sigma in grid cells, hi-ml uses 1.5),
  plus the grid->original-image affine from ``model.transform.grid_to_image`` (the inverse of the model-input
  transform: the whole image is covered, nothing cropped).
- ``ground_tokens(phrase)``: the phrase map plus one map per non-special token ``[n_tokens, gh, gw]``.
- ``ground_many(phrases)``: one text-encoder call for all phrases against the current image.

Public API for interactive front ends (the viewer; nothing outside ``elvis_core/grounding`` touches the lock):

- ``GroundingEngine.load(path_or_model)``: build + ``warm_up()`` + hash, everything a loading worker needs.
- ``warm_up()``: one dummy image and text pass (torch's first-call set-up happens here, not on the first phrase).
- ``embed(radiograph)``: the image into the cache (= ``set_image``); ``has_image(radiograph)`` without blocking.
- ``encode_phrases(phrases)``: the text cache filled in ONE batched text-encoder call (a report's sentences and
  annotated phrases when it opens), so that grounding one of them later is a matrix-vector product.
- ``ground_image(radiograph, phrase, tokens=False)``: set the image + ground atomically.
- ``try_ground_cached(radiograph, phrase)``: the map when both the image and the phrase are cached and the engine
  is free, else ``None``, never blocking (the GUI thread calls it; a miss goes to a worker).
- ``provenance``: the checkpoint's ``config.json`` provenance (training data, objectives), ``{}`` in memory.

The content hash of a radiograph is computed once per ``Radiograph`` object (stored on it), so no per-phrase work
depends on the image's size.

Thread-safe: every model call and cache access runs under one re-entrant lock (the viewer calls from a QThreadPool
worker). All inference runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from elvis_core.errors import GroundingError
from elvis_core.grounding.grid_ops import mirror_model_input  # noqa: F401 - public name kept here
from elvis_core.grounding.engine_common import EngineCommon
from elvis_core.grounding.mapbuild import smooth_grid  # noqa: F401 - re-exported
from elvis_core.grounding.presence import trust_sources
from elvis_core.grounding.types import GroundingMap  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

#: public names (``mirror_model_input``, ``smooth_grid`` and ``GroundingMap`` are re-exported from here)
__all__ = ["GroundingEngine", "GroundingMap", "PHRASE_MAPS", "mirror_model_input", "smooth_grid"]


#: how a phrase map is made: "global" = cosine(patch, text global embedding) (the agreed default, BioViL-style);
#: "token-mean" = mean over the phrase's non-special tokens of cosine(patch, token embedding) (GLoRIA-style local
#: alignment; = patch . mean of the unit token vectors, so it stays in [-1, 1])
PHRASE_MAPS = ("global", "token-mean")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_device(model) -> Optional[torch.device]:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return None


def _state_hash(model) -> str:
    """Short sha256 of an in-memory model's tensors (names, shapes, bytes) for provenance."""
    h = hashlib.sha256()
    try:
        sd = model.state_dict()
    except AttributeError:
        return "unknown"
    for name in sorted(sd):
        t = sd[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        # reshape: 0-d tensors (BatchNorm counters) cannot be viewed as bytes directly
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


class GroundingEngine(EngineCommon):
    def __init__(self, model_or_checkpoint_dir: Any, device: Optional[str] = None, smoothing_sigma: float = 0.0,
                 cache_size: int = 8, text_cache_size: int = 256, phrase_map: str = "global",
                 mirror_average: Optional[bool] = None):
        if phrase_map not in PHRASE_MAPS:
            raise GroundingError(f"phrase map must be one of {', '.join(PHRASE_MAPS)}, got {phrase_map!r}")
        self.phrase_map = phrase_map
        if smoothing_sigma < 0 or not math.isfinite(float(smoothing_sigma)):
            raise GroundingError(f"smoothing sigma must be a finite number >= 0, got {smoothing_sigma}")
        if int(cache_size) < 1:
            raise GroundingError(f"cache size must be >= 1, got {cache_size}")
        self._lock = threading.RLock()
        self.smoothing_sigma = float(smoothing_sigma)
        self.cache_size = int(cache_size)
        self.text_cache_size = int(text_cache_size)
        if isinstance(model_or_checkpoint_dir, (str, os.PathLike)):
            from elvis_core.model.checkpoint import checkpoint_hash, load_checkpoint

            path = Path(model_or_checkpoint_dir)
            self.device = torch.device(device) if device else _default_device()
            self.model = load_checkpoint(path, device=self.device)
            self.checkpoint_name = path.name or str(path)
            self.checkpoint_path: Optional[str] = str(path)
            self._hash: Optional[str] = checkpoint_hash(path)
            self.provenance: Dict[str, Any] = _read_provenance(path)
        else:
            self.model = model_or_checkpoint_dir
            if device:
                self.device = torch.device(device)
            else:
                self.device = _model_device(self.model) or _default_device()
            if hasattr(self.model, "to"):
                self.model.to(self.device)
            self.checkpoint_name = "in-memory model"
            self.checkpoint_path = None
            self._hash = None
            self.provenance = dict(getattr(self.model, "provenance", None) or {})
        if hasattr(self.model, "eval"):
            self.model.eval()
        self.transform = self.model.transform
        try:  # how far to believe a map: presence calibration + known words (elvis_core/grounding/presence.py)
            self.presence_calibration, self.known_words, self.known_words_source = trust_sources(self.model)
        except ValueError as err:
            raise GroundingError(str(err), self.checkpoint_path) from None
        #: mirror consensus (see :func:`mirror_model_input`): None = what the checkpoint says
        if mirror_average is None:
            cfg = getattr(self.model, "config", None)
            mirror_average = bool(((cfg or {}).get("image") or {}).get("mirror_average", False)) \
                if isinstance(cfg, dict) else False
        self.mirror_average = bool(mirror_average)
        self._init_caches()

    # -- identity -------------------------------------------------------------------------------------------------
    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            try:
                return torch.cuda.get_device_name(self.device)
            except Exception:  # pragma: no cover - depends on the driver
                return "CUDA"
        return self.device.type.upper()

    @property
    def checkpoint_hash(self) -> str:
        if self._hash is None:
            with self._lock:
                self._hash = _state_hash(self.model)
        return self._hash

    def settings(self) -> Dict[str, Any]:
        """What decides the maps besides the weights (for footers and provenance)."""
        return {**self._base_settings(),
                "presence_calibration": (self.presence_calibration or {}).get("calibrated_on") or (
                    "calibrated" if self.presence_calibration else "uncalibrated"),
                "known_words": self.known_words_source, "device": self.device_name}

    @contextlib.contextmanager
    def _guard(self):
        """Every model call and cache access: under the engine's lock and ``torch.inference_mode()``."""
        with self._lock, torch.inference_mode():
            yield

    def _trust_args(self):
        return self.presence_calibration, self.known_words

    # -- image ----------------------------------------------------------------------------------------------------
    def set_image(self, radiograph) -> None:
        """Make ``radiograph`` the current image, encoding it only when it is not cached yet."""
        key = self._cached_image_key(radiograph)
        if key is None:
            return
        x = self.transform.apply(radiograph)
        with self._guard():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].to(self.device)
            if self.mirror_average:
                stride = int(getattr(self.model, "output_stride", 1))
                t = torch.cat([t, mirror_model_input(t, stride, self.transform)])
            emb = self.model.encode_image(t)
            patch = emb.patch_emb.float()  # [1 or 2, gh, gw, D]
            if self.mirror_average:  # mirrored grid column j' is the original's column gw - 1 - j'
                patch = torch.stack([patch[0], patch[1].flip(1)])
            self._store_image(key, radiograph, patch, getattr(self.model, "grid_anchor", "cell"))

    # -- text -----------------------------------------------------------------------------------------------------
    def _truncation_warning(self, n_tokens: Optional[int] = None) -> str:
        limit = getattr(self.model, "max_text_length", None)
        return f"phrase longer than the text encoder's limit of {limit} tokens; truncated"

    def _encode_texts(self, phrases: Sequence[str]) -> Tuple[Any, Dict[str, Any]]:
        tok = self.model.tokenize(list(phrases))
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        out = self.model.encode_text(ids, mask)
        return out, tok

    def _content_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Float mask [B, L]: 1 for real, non-special tokens (falls back to all real tokens for a row without any)."""
        special = list(set(getattr(self.model.tokenizer, "all_special_ids", []) or []))
        keep = attention_mask.bool().clone()
        if special:
            keep &= ~torch.isin(input_ids, torch.tensor(special, dtype=input_ids.dtype))
        empty = keep.sum(1) == 0
        keep[empty] = attention_mask.bool()[empty]
        return keep.float()

    def _encode_vectors(self, missing: Sequence[str]):
        """(phrase vectors [P, D], truncated flags) of ``missing`` in ONE text-encoder call (for the text cache)."""
        out, tok = self._encode_texts(missing)
        truncated = list(tok.get("truncated", [False] * len(missing)))
        if self.phrase_map == "token-mean":
            keep = self._content_tokens(tok["input_ids"], tok["attention_mask"]).to(out.token_emb.device)
            unit = torch.nn.functional.normalize(out.token_emb.float(), dim=-1) * keep[..., None]
            return unit.sum(1) / keep.sum(1, keepdim=True).clamp_min(1), truncated
        return out.global_emb.float(), truncated

    # -- grounding ------------------------------------------------------------------------------------------------
    def _similarity(self, patch: torch.Tensor, vec: torch.Tensor, mirror_vec: Optional[torch.Tensor] = None
                    ) -> np.ndarray:
        """The raw cosine grid (not smoothed; :meth:`_make_map` smooths); with mirror consensus the mean of the
        image's grid and the mirrored image's grid (aligned back) against the side-swapped phrase."""
        sim = torch.einsum("hwd,d->hw", patch[0], vec.to(patch.device))
        if patch.shape[0] > 1:
            v = vec if mirror_vec is None else mirror_vec
            sim = 0.5 * (sim + torch.einsum("hwd,d->hw", patch[1], v.to(patch.device)))
        return sim.clamp_(-1.0, 1.0).cpu().numpy()

    def ground_many(self, phrases: Sequence[str]) -> List[GroundingMap]:
        """Maps of many phrases against the current image; uncached phrases go through ONE text-encoder call."""
        texts = [self._check_phrase(p, f" {i}") for i, p in enumerate(phrases)]
        if not texts:
            return []
        t0 = time.perf_counter()
        with self._guard():
            patch, shape, g2i, seen = self._current_image()
            vecs, mvecs = self._phrase_vectors(texts)
            mat = torch.stack([v for v, _ in vecs]).to(patch.device)  # [P, D]
            sims = torch.einsum("hwd,pd->phw", patch[0], mat)
            if patch.shape[0] > 1:
                mmat = torch.stack([v for v, _ in mvecs]).to(patch.device)
                sims = 0.5 * (sims + torch.einsum("hwd,pd->phw", patch[1], mmat))
            sims = sims.clamp_(-1.0, 1.0).cpu().numpy()
            maps = [self._make_map(p, sims[i], shape, g2i, seen, vecs[i][1], t0)
                    for i, p in enumerate(phrases)]
        return self._spread_latency(maps, t0)

    def ground_tokens(self, phrase: str) -> GroundingMap:
        """The phrase map plus one map per token (special tokens and padding left out) with the token strings."""
        text = self._check_phrase(phrase)
        t0 = time.perf_counter()
        with self._guard():
            patch, shape, g2i, seen = self._current_image()
            out, tok = self._encode_texts([text])
            truncated = bool(tok.get("truncated", [False])[0])
            ids = tok["input_ids"][0].tolist()
            mask = tok["attention_mask"][0].tolist()
            tokenizer = self.model.tokenizer
            special = set(getattr(tokenizer, "all_special_ids", []) or [])
            keep = [i for i, (t, m) in enumerate(zip(ids, mask)) if m and t not in special]
            tokens = tokenizer.convert_ids_to_tokens([ids[i] for i in keep])
            vecs, mvecs = self._phrase_vectors([text])
            if self.phrase_map == "token-mean" or mvecs:
                vec = vecs[0][0]
            else:
                vec = out.global_emb[0].float()
            sim = self._similarity(patch, vec, mvecs[0][0] if mvecs else None)
            tm = None
            if keep:  # token maps: the image itself only (a token has no mirrored twin)
                temb = torch.nn.functional.normalize(out.token_emb[0, keep].float(), dim=-1)
                tm = torch.einsum("hwd,td->thw", patch[0], temb).clamp_(-1.0, 1.0).cpu().numpy()
            return self._token_result(phrase, sim, tm, tokens, shape, g2i, seen, truncated, t0)

    # -- public API for interactive front ends ----------------------------------------------------------------------
    @classmethod
    def load(cls, model_or_checkpoint_dir: Any, warm_up: bool = True, **kw) -> "GroundingEngine":
        """Everything a loading worker does: build the engine (checkpoint directory or in-memory model), run one
        warm-up pass and hash the weights (slow for in-memory models: done here, not on a GUI thread)."""
        with _LOAD_LOCK:  # transformers' lazy imports are not thread-safe: one load at a time
            engine = cls(model_or_checkpoint_dir, **kw)
        if warm_up:
            engine.warm_up()
        try:
            engine.checkpoint_hash
        except Exception as e:  # an in-memory model that cannot be hashed: say so, keep working
            engine._hash = f"unhashed ({type(e).__name__})"
        return engine

    def warm_up(self) -> bool:
        """One dummy image and text pass, so the first real phrase does not pay torch's first-call set-up (about
        1 s on 2 CPU cores). Returns False (and stays usable) when the pass fails: the real call will report it."""
        try:
            size = int(self.transform.size)
            with self._guard():
                self.model.encode_image(torch.zeros(1, 1, size, size, device=self.device))
                tok = self.model.tokenize(["warm up"])
                self.model.encode_text(tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device))
            return True
        except Exception as e:  # pragma: no cover - depends on the model
            log.warning("warm-up pass failed: %s", e)
            return False


_LOAD_LOCK = threading.Lock()


def _read_provenance(path: Path) -> Dict[str, Any]:
    """The ``provenance`` object of a checkpoint's config.json ({} when absent or unreadable)."""
    from elvis_core.errors import ElvisError
    from elvis_core.io.safe_json import read_json_file

    try:  # regular file, depth-checked (the checkpoint loader has already refused a bad one)
        cfg = read_json_file(Path(path) / "config.json", max_bytes=16 << 20)
    except ElvisError:
        return {}
    prov = cfg.get("provenance") if isinstance(cfg, dict) else None
    return prov if isinstance(prov, dict) else {}
