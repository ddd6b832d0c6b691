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

import hashlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from elvis_core.errors import GroundingError
from elvis_core.grounding.grid_ops import mirror_model_input  # noqa: F401 - public name kept here
from elvis_core.grounding.mapbuild import build_map, image_key, smooth_grid  # noqa: F401 - smooth_grid re-exported
from elvis_core.grounding.presence import trust_sources
from elvis_core.grounding.types import GroundingMap  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


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


class GroundingEngine:
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
        #: key -> (patch grids [1 or 2, gh, gw, D], image shape, grid->image affine, seen region)
        self._images: "OrderedDict[str, Tuple[torch.Tensor, Tuple[int, int], np.ndarray, tuple]]" = OrderedDict()
        self._texts: "OrderedDict[str, Tuple[torch.Tensor, bool]]" = OrderedDict()
        self._current: Optional[str] = None
        self.image_encode_count = 0  # how many times the image encoder actually ran (cache misses)

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
        return {"smoothing_sigma": self.smoothing_sigma, "preprocessing": self.transform.to_config(),
                "phrase_map": self.phrase_map, "mirror_average": self.mirror_average,
                "similarity": ("cosine(patch_emb, text global_emb)" if self.phrase_map == "global"
                               else "mean over tokens of cosine(patch_emb, token_emb)"),
                "presence_calibration": (self.presence_calibration or {}).get("calibrated_on") or (
                    "calibrated" if self.presence_calibration else "uncalibrated"),
                "known_words": self.known_words_source, "device": self.device_name}

    # -- image ----------------------------------------------------------------------------------------------------
    def image_key(self, radiograph) -> str:
        """Content hash of the pixels, shape and (window normalisation) window: :func:`mapbuild.image_key`."""
        return image_key(radiograph, self.transform)

    def set_image(self, radiograph) -> None:
        """Make ``radiograph`` the current image, encoding it only when it is not cached yet."""
        if radiograph is None or getattr(radiograph, "pixels", None) is None:
            raise GroundingError("no image given")
        if radiograph.pixels.ndim != 2 or min(radiograph.pixels.shape) < 1:
            raise GroundingError(f"expected a 2-D image, got shape {radiograph.pixels.shape}",
                                 getattr(radiograph, "source_path", None))
        key = self.image_key(radiograph)
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                self._current = key
                return
        x = self.transform.apply(radiograph)
        with self._lock, torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].to(self.device)
            if self.mirror_average:
                stride = int(getattr(self.model, "output_stride", 1))
                t = torch.cat([t, mirror_model_input(t, stride, self.transform)])
            emb = self.model.encode_image(t)
            patch = emb.patch_emb.float()  # [1 or 2, gh, gw, D]
            if self.mirror_average:  # mirrored grid column j' is the original's column gw - 1 - j'
                patch = torch.stack([patch[0], patch[1].flip(1)])
            self.image_encode_count += 1
            gh, gw = int(patch.shape[1]), int(patch.shape[2])
            g2i = self.transform.grid_to_image(radiograph.shape, (gh, gw),
                                               anchor=getattr(self.model, "grid_anchor", "cell"))
            seen = tuple(float(v) for v in self.transform.geometry(tuple(radiograph.shape)).seen_box())
            self._images[key] = (patch, radiograph.shape, g2i, seen)
            self._images.move_to_end(key)
            while len(self._images) > self.cache_size:
                self._images.popitem(last=False)
            self._current = key

    def embed(self, radiograph) -> None:
        """Public name of :meth:`set_image` for front ends: the image's patch grid into the cache."""
        self.set_image(radiograph)

    def has_image(self, radiograph) -> bool:
        """True when ``radiograph`` is in the image cache (does not change the current image; never blocks long)."""
        key = self.image_key(radiograph)
        return key in self._images

    def clear_cache(self) -> None:
        with self._lock:
            self._images.clear()
            self._texts.clear()
            self._current = None

    def _current_image(self):
        if self._current is None or self._current not in self._images:
            raise GroundingError("no image set: call set_image(radiograph) before grounding")
        return self._images[self._current]

    # -- text -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_phrase(phrase: Any, where: str = "") -> str:
        if not isinstance(phrase, str):
            raise GroundingError(f"phrase{where} must be text, got {type(phrase).__name__}")
        if not phrase.strip():
            raise GroundingError(f"phrase{where} is empty or only whitespace")
        return phrase.strip()

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

    def _text_globals(self, phrases: Sequence[str]) -> List[Tuple[torch.Tensor, bool]]:
        """(global embedding [D], truncated) per phrase, through the text cache; misses in ONE encoder call."""
        missing = [p for p in dict.fromkeys(phrases) if p not in self._texts]
        if missing:
            out, tok = self._encode_texts(missing)
            truncated = list(tok.get("truncated", [False] * len(missing)))
            if self.phrase_map == "token-mean":
                keep = self._content_tokens(tok["input_ids"], tok["attention_mask"]).to(out.token_emb.device)
                unit = torch.nn.functional.normalize(out.token_emb.float(), dim=-1) * keep[..., None]
                vecs = unit.sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
            else:
                vecs = out.global_emb.float()
            for i, p in enumerate(missing):
                self._texts[p] = (vecs[i], bool(truncated[i]))
        res = []
        for p in phrases:
            self._texts.move_to_end(p)
            res.append(self._texts[p])
        while len(self._texts) > self.text_cache_size:
            self._texts.popitem(last=False)
        return res

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

    def _phrase_vectors(self, texts: Sequence[str]):
        """(vecs [(vec, truncated)], mirrored vecs or None) through the text cache, in one encoder call."""
        if not self.mirror_average:
            return self._text_globals(texts), None
        from elvis_core.grounding.sides import mirrored_phrase

        mirrored = [mirrored_phrase(t) for t in texts]
        both = self._text_globals(list(texts) + mirrored)
        return both[:len(texts)], both[len(texts):]

    def _make_map(self, phrase: str, raw: np.ndarray, shape, g2i, seen, truncated: bool, t0: float
                  ) -> GroundingMap:
        # the one map builder of every engine; it calls presence.attach_trust (the one trust function)
        return build_map(phrase, raw, shape, g2i, seen, self.smoothing_sigma,
                         self._truncation_warning() if truncated else None, t0,
                         trust=(self.presence_calibration, self.known_words))

    def ground(self, phrase: str) -> GroundingMap:
        """The phrase's similarity map against the current image."""
        text = self._check_phrase(phrase)
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
            patch, shape, g2i, seen = self._current_image()
            vecs, mvecs = self._phrase_vectors([text])
            (vec, truncated), = vecs
            sim = self._similarity(patch, vec, mvecs[0][0] if mvecs else None)
            return self._make_map(phrase, sim, shape, g2i, seen, truncated, t0)

    def ground_many(self, phrases: Sequence[str]) -> List[GroundingMap]:
        """Maps of many phrases against the current image; uncached phrases go through ONE text-encoder call."""
        texts = [self._check_phrase(p, f" {i}") for i, p in enumerate(phrases)]
        if not texts:
            return []
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
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
        per = (time.perf_counter() - t0) / len(maps)
        for m in maps:
            m.latency_s = per
        return maps

    def ground_tokens(self, phrase: str) -> GroundingMap:
        """The phrase map plus one map per token (special tokens and padding left out) with the token strings."""
        text = self._check_phrase(phrase)
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
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
            if keep:  # token maps: the image itself only (a token has no mirrored twin)
                temb = out.token_emb[0, keep].float()
                temb = torch.nn.functional.normalize(temb, dim=-1)
                tm = torch.einsum("hwd,td->thw", patch[0], temb).clamp_(-1.0, 1.0).cpu().numpy()
                tm = np.stack([smooth_grid(m, self.smoothing_sigma) for m in tm])
            else:
                tm = np.zeros((0,) + sim.shape, dtype=np.float32)
            gm = self._make_map(phrase, sim, shape, g2i, seen, truncated, t0)
            gm.token_maps = tm.astype(np.float32)
            gm.tokens = list(tokens)
            gm.latency_s = time.perf_counter() - t0
            return gm


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
            with self._lock, torch.inference_mode():
                self.model.encode_image(torch.zeros(1, 1, size, size, device=self.device))
                tok = self.model.tokenize(["warm up"])
                self.model.encode_text(tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device))
            return True
        except Exception as e:  # pragma: no cover - depends on the model
            log.warning("warm-up pass failed: %s", e)
            return False

    def encode_phrases(self, phrases: Sequence[str], batch_size: int = 64) -> int:
        """Fill the text cache for ``phrases`` (blank ones skipped) in batched text-encoder calls; returns how many
        were encoded now (the others were cached already). Grounding one of them is then a matrix-vector product."""
        texts = list(dict.fromkeys(p.strip() for p in phrases if isinstance(p, str) and p.strip()))
        if self.mirror_average:
            from elvis_core.grounding.sides import mirrored_phrase

            texts = list(dict.fromkeys(x for t in texts for x in (t, mirrored_phrase(t))))
        texts = texts[-self.text_cache_size:]  # never evict what we are about to use
        n = 0
        for i in range(0, len(texts), max(1, int(batch_size))):
            chunk = texts[i:i + batch_size]
            with self._lock, torch.inference_mode():
                missing = [p for p in chunk if p not in self._texts]
                if missing:
                    self._text_globals(missing)
                    n += len(missing)
        return n

    def has_phrase(self, phrase: str) -> bool:
        """True when grounding ``phrase`` needs no text-encoder call (with mirror consensus: its mirrored twin too)."""
        if not isinstance(phrase, str) or phrase.strip() not in self._texts:
            return False
        if self.mirror_average:
            from elvis_core.grounding.sides import mirrored_phrase

            return mirrored_phrase(phrase.strip()) in self._texts
        return True

    def ground_image(self, radiograph, phrase: str, tokens: bool = False) -> GroundingMap:
        """``set_image`` then ``ground`` (or ``ground_tokens``) atomically: no other thread switches the image."""
        with self._lock:
            self.set_image(radiograph)
            return self.ground_tokens(phrase) if tokens else self.ground(phrase)

    def try_ground_cached(self, radiograph, phrase: str) -> Optional[GroundingMap]:
        """The phrase map when the image and the phrase are both cached and no other thread holds the engine;
        ``None`` otherwise. Never blocks and never runs an encoder: safe to call from a GUI thread."""
        if not isinstance(phrase, str) or not phrase.strip():
            return None
        key = self.image_key(radiograph)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if key not in self._images or not self.has_phrase(phrase):
                return None
            self._images.move_to_end(key)
            self._current = key
            return self.ground(phrase)
        finally:
            self._lock.release()


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
