"""What the torch :class:`~elvis_core.grounding.engine.GroundingEngine` and the ONNX Runtime
:class:`~elvis_core.grounding.onnx_engine.OnnxGroundingEngine` share: the image and text caches (bounded LRUs), the
phrase checks, mirror-consensus phrase pairs, map building and the front-end API on top of them
(``embed / has_image / encode_phrases / has_phrase / ground / ground_image / try_ground_cached``).

Torch-free (numpy only): the ONNX path imports it without torch. An engine supplies the backend parts:

- ``_guard()``: the context every model call and cache access runs in (the engine's re-entrant lock; the torch
  engine adds ``torch.inference_mode()``);
- ``_encode_vectors(missing)``: ``(vectors [P, D], truncated flags)`` of uncached phrases in ONE encoder call;
- ``_similarity(patch, vec, mirror_vec)``: the raw, clipped cosine grid ``[gh, gw]`` as numpy;
- ``_trust_args()``: (presence calibration, known words) for the map-trust function, or None;
- ``_truncation_warning()``; and the attributes ``_lock``, ``transform``, ``smoothing_sigma``, ``phrase_map``,
  ``mirror_average``, ``cache_size``, ``text_cache_size``, ``device_name``, set up by :meth:`_init_caches`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from elvis_core.errors import GroundingError
from elvis_core.grounding.mapbuild import build_map, image_key, smooth_grid
from elvis_core.grounding.types import GroundingMap


class EngineCommon:
    """Mixin of both grounding engines; see the module docstring."""

    def _init_caches(self) -> None:
        #: key -> (patch grids [1 or 2, gh, gw, D], image shape, grid->image affine, seen region)
        self._images: "OrderedDict[str, Tuple[Any, Tuple[int, int], np.ndarray, tuple]]" = OrderedDict()
        #: phrase -> (vector [D], truncated)
        self._texts: "OrderedDict[str, Tuple[Any, bool]]" = OrderedDict()
        self._current: Optional[str] = None
        self.image_encode_count = 0  # how many times the image encoder actually ran (cache misses)

    def _base_settings(self) -> Dict[str, Any]:
        return {"smoothing_sigma": self.smoothing_sigma, "preprocessing": self.transform.to_config(),
                "phrase_map": self.phrase_map, "mirror_average": self.mirror_average,
                "similarity": ("cosine(patch_emb, text global_emb)" if self.phrase_map == "global"
                               else "mean over tokens of cosine(patch_emb, token_emb)")}

    # -- image ----------------------------------------------------------------------------------------------------
    def image_key(self, radiograph) -> str:
        """Content hash of the pixels, shape and (window normalisation) window: :func:`mapbuild.image_key`."""
        return image_key(radiograph, self.transform)

    def _cached_image_key(self, radiograph) -> Optional[str]:
        """Checks ``radiograph``; makes it the current image and returns None when it is cached, else its key."""
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
                return None
        return key

    def _store_image(self, key: str, radiograph, patch, anchor: str) -> None:
        """The encoded patch grids [1 or 2, gh, gw, D] into the image cache as the current image (under the lock)."""
        self.image_encode_count += 1
        gh, gw = int(patch.shape[1]), int(patch.shape[2])
        g2i = self.transform.grid_to_image(radiograph.shape, (gh, gw), anchor=anchor)
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
        return self.image_key(radiograph) in self._images

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

    def _text_globals(self, phrases: Sequence[str]) -> List[Tuple[Any, bool]]:
        """(phrase vector [D], truncated) per phrase, through the text cache; misses in ONE encoder call."""
        missing = [p for p in dict.fromkeys(phrases) if p not in self._texts]
        if missing:
            vecs, truncated = self._encode_vectors(missing)
            for i, p in enumerate(missing):
                self._texts[p] = (vecs[i], bool(truncated[i]))
        res = []
        for p in phrases:
            self._texts.move_to_end(p)
            res.append(self._texts[p])
        while len(self._texts) > self.text_cache_size:
            self._texts.popitem(last=False)
        return res

    def _phrase_vectors(self, texts: Sequence[str]):
        """(vecs [(vec, truncated)], mirrored vecs or None) through the text cache, in one encoder call."""
        if not self.mirror_average:
            return self._text_globals(texts), None
        from elvis_core.grounding.sides import mirrored_phrase

        both = self._text_globals(list(texts) + [mirrored_phrase(t) for t in texts])
        return both[:len(texts)], both[len(texts):]

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
            with self._guard():
                missing = [p for p in texts[i:i + batch_size] if p not in self._texts]
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

    # -- grounding ------------------------------------------------------------------------------------------------
    def _make_map(self, phrase: str, raw: np.ndarray, shape, g2i, seen, truncated: bool, t0: float
                  ) -> GroundingMap:
        # the one map builder of every engine; it calls presence.attach_trust (the one trust function)
        return build_map(phrase, raw, shape, g2i, seen, self.smoothing_sigma,
                         self._truncation_warning() if truncated else None, t0, trust=self._trust_args())

    def _token_result(self, phrase: str, sim: np.ndarray, token_grids: Optional[np.ndarray], tokens,
                      shape, g2i, seen, truncated: bool, t0: float) -> GroundingMap:
        """The phrase map with its per-token maps (``token_grids`` [n, gh, gw] unsmoothed, None without tokens)."""
        if token_grids is not None:
            tm = np.stack([smooth_grid(m, self.smoothing_sigma) for m in token_grids])
        else:
            tm = np.zeros((0,) + sim.shape, dtype=np.float32)
        gm = self._make_map(phrase, sim, shape, g2i, seen, truncated, t0)
        gm.token_maps = tm.astype(np.float32)
        gm.tokens = list(tokens)
        gm.latency_s = time.perf_counter() - t0
        return gm

    @staticmethod
    def _spread_latency(maps: List[GroundingMap], t0: float) -> List[GroundingMap]:
        per = (time.perf_counter() - t0) / len(maps)
        for m in maps:
            m.latency_s = per
        return maps

    def ground(self, phrase: str) -> GroundingMap:
        """The phrase's similarity map against the current image."""
        text = self._check_phrase(phrase)
        t0 = time.perf_counter()
        with self._guard():
            patch, shape, g2i, seen = self._current_image()
            vecs, mvecs = self._phrase_vectors([text])
            (vec, truncated), = vecs
            sim = self._similarity(patch, vec, mvecs[0][0] if mvecs else None)
            return self._make_map(phrase, sim, shape, g2i, seen, truncated, t0)

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
