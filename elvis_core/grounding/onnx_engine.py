"""`OnnxGroundingEngine`: the viewer's inference path without torch or transformers (issue 25).

A checkpoint exported by :func:`elvis_core.model.onnx_export.export_onnx` carries ``onnx/image.onnx`` (model input
[B, 1, S, S] -> ``patch_emb`` [B, gh, gw, D]), ``onnx/text.onnx`` (``input_ids``/``attention_mask`` [B, L] ->
``global_emb`` [B, D], ``token_emb`` [B, L, D]) and ``onnx/manifest.json`` (which weights and config they were made
from, and the fidelity check they passed: Pearson r of maps against torch). This engine runs them with ONNX Runtime
(import ~0.12 s, against ~3.5 s for torch + transformers on 2 cores) and tokenizes with ``tokenizers`` from the
checkpoint's ``tokenizer.json``. It has the public API of :class:`~elvis_core.grounding.engine.GroundingEngine`
that the viewer uses (``load / embed / has_image / encode_phrases / has_phrase / try_ground_cached /
ground_image``, ``ground / ground_many / ground_tokens``) and builds every map with the same
:func:`~elvis_core.grounding.mapbuild.build_map`.

:func:`load_fast_engine` picks it when the export is present and current (same weights hash and model config as
the manifest says, fidelity passed), else returns ``None`` and the caller falls back to the torch engine.

Thread-safe like the torch engine: one re-entrant lock around sessions and caches; ``try_ground_cached`` never
blocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from elvis_core.errors import GroundingError
from elvis_core.grounding.mapbuild import build_map, image_key, trust_sources_of
from elvis_core.grounding.types import GroundingMap

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
MANIFEST = "manifest.json"


def ort_threads() -> int:
    """Intra-op threads: ``ELVIS_TORCH_THREADS`` (the viewer's one knob), else half the cores (1..4): the viewer
    shares the machine (see ``elvis_viewer.session_tasks.torch_threads``)."""
    env = os.environ.get("ELVIS_TORCH_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def config_digest(model_cfg: Dict[str, Any]) -> str:
    """sha256 of the model section of config.json (canonical JSON): a graph is stale when it changes."""
    return hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(ckpt: Path) -> Optional[Dict[str, Any]]:
    try:
        m = json.loads((Path(ckpt) / ONNX_DIR / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def onnx_problem(ckpt: Path, cfg: Optional[Dict[str, Any]] = None, weights_hash: Optional[str] = None
                 ) -> Optional[str]:
    """Why the checkpoint's ONNX export cannot be used (None = usable): missing, stale or failed its check."""
    from elvis_core.model.checkpoint import checkpoint_hash, read_checkpoint_config

    ckpt = Path(ckpt)
    m = read_manifest(ckpt)
    if m is None:
        return "no ONNX export (python -m elvis_core export-onnx CHECKPOINT makes one)"
    cfg = cfg if cfg is not None else read_checkpoint_config(ckpt)
    if m.get("config_digest") != config_digest(cfg["model"]):
        return "the ONNX export was made from another config.json"
    if m.get("weights_hash") != (weights_hash or checkpoint_hash(ckpt)):
        return "the ONNX export was made from other weights"
    if not (m.get("fidelity") or {}).get("passed"):
        return "the ONNX export failed its fidelity check against torch"
    for name in (m.get("image_file"), m.get("text_file")):
        if not name or not (ckpt / ONNX_DIR / name).is_file():
            return f"the ONNX file {name} is missing"
    return None


class _Tokenizer:
    """``ElvisModel.tokenize`` without transformers: the checkpoint's ``tokenizer.json`` through ``tokenizers``."""

    def __init__(self, ckpt: Path, max_length: int, strip_trailing: str):
        from tokenizers import Tokenizer

        path = Path(ckpt) / "tokenizer.json"
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as err:
            raise GroundingError(f"cannot read the tokenizer: {err}".splitlines()[0], str(path)) from None
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=int(max_length))
        self.max_length = int(max_length)
        self.strip = strip_trailing or ""
        added = self.tok.get_added_tokens_decoder()
        self.special_ids = sorted(i for i, t in added.items() if getattr(t, "special", False))
        pad = None
        try:
            tc = json.loads((Path(ckpt) / "tokenizer_config.json").read_text(encoding="utf-8"))
            pad = tc.get("pad_token")
            pad = pad.get("content") if isinstance(pad, dict) else pad
        except (OSError, ValueError):
            pass
        pid = self.tok.token_to_id(pad) if isinstance(pad, str) else None
        self.pad_id = int(pid if pid is not None else 0)

    def __call__(self, texts: Sequence[str]) -> Dict[str, Any]:
        texts = [t.rstrip(self.strip) if self.strip else t for t in texts]
        encs = self.tok.encode_batch(list(texts))
        n = max(len(e.ids) for e in encs)
        ids = np.full((len(encs), n), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), n), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = e.attention_mask
        return {"input_ids": ids, "attention_mask": mask, "truncated": [bool(e.overflowing) for e in encs],
                "tokens": [e.tokens for e in encs]}


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


class OnnxGroundingEngine:
    """Same behaviour as the torch engine for the front-end API; see the module docstring."""

    def __init__(self, checkpoint_dir, smoothing_sigma: float = 0.0, cache_size: int = 8, text_cache_size: int = 256,
                 phrase_map: str = "global", mirror_average: Optional[bool] = None, use_int8: bool = True,
                 threads: Optional[int] = None, weights_hash: Optional[str] = None,
                 checked_manifest: Optional[Dict[str, Any]] = None):
        from elvis_core.model.checkpoint import checkpoint_hash, read_checkpoint_config
        from elvis_core.model.transforms import transform_from_config

        if phrase_map not in ("global", "token-mean"):
            raise GroundingError(f"phrase map must be global or token-mean, got {phrase_map!r}")
        if smoothing_sigma < 0 or not np.isfinite(float(smoothing_sigma)):
            raise GroundingError(f"smoothing sigma must be a finite number >= 0, got {smoothing_sigma}")
        path = Path(checkpoint_dir)
        cfg = read_checkpoint_config(path)
        self._hash = weights_hash or checkpoint_hash(path)
        if checked_manifest is None:  # (the exporter passes the manifest it is about to check)
            problem = onnx_problem(path, cfg, self._hash)
            if problem:
                raise GroundingError(problem, str(path))
        self.manifest = checked_manifest or read_manifest(path) or {}
        model = cfg["model"]
        self.config = model
        self.transform = transform_from_config(model["preprocessing"])
        self.phrase_map = phrase_map
        self.smoothing_sigma = float(smoothing_sigma)
        self.cache_size, self.text_cache_size = int(cache_size), int(text_cache_size)
        if mirror_average is None:
            mirror_average = bool((model.get("image") or {}).get("mirror_average", False))
        self.mirror_average = bool(mirror_average)
        self.grid_anchor = str(model["image"].get("grid_anchor", "receptive_field"))
        self.output_stride = int(self.manifest.get("output_stride", 1))
        self.max_text_length = int(self.manifest.get("max_text_length", model["text"]["max_length"]))
        self.tokenizer = _Tokenizer(path, self.max_text_length, model["text"].get("strip_trailing", ""))
        try:  # how far to believe a map (presence calibration, known words): the torch engine's sources
            src = trust_sources_of(path, cfg, self.tokenizer.tok)
        except ValueError as err:
            raise GroundingError(str(err), str(path)) from None
        self._trust = None if src is None else (src[0], src[1])
        if src is not None:
            self.presence_calibration, self.known_words, self.known_words_source = src
        n = int(threads or ort_threads())
        d = path / ONNX_DIR
        self._image = _session(d / self.manifest["image_file"], n)
        int8 = self.manifest.get("text_int8") or {}
        text_file = self.manifest["text_file"]
        if use_int8 and int8.get("passed") and (d / str(int8.get("file"))).is_file():
            text_file = int8["file"]
        self.text_file = text_file
        self._text = _session(d / text_file, n)
        self.checkpoint_name = path.name or str(path)
        self.checkpoint_path: Optional[str] = str(path)
        prov = cfg.get("provenance")
        self.provenance: Dict[str, Any] = prov if isinstance(prov, dict) else {}
        self.checkpoint_config = cfg
        self._lock = threading.RLock()
        self._images: "OrderedDict[str, Tuple[np.ndarray, Tuple[int, int], np.ndarray, tuple]]" = OrderedDict()
        self._texts: "OrderedDict[str, Tuple[np.ndarray, bool]]" = OrderedDict()
        self._current: Optional[str] = None
        self.image_encode_count = 0
        self.backend = "onnxruntime" + (" int8 text" if text_file != self.manifest["text_file"] else "")

    # -- identity -------------------------------------------------------------------------------------------------
    device_name = "CPU (ONNX Runtime)"

    @property
    def checkpoint_hash(self) -> str:
        return self._hash

    def settings(self) -> Dict[str, Any]:
        return {"smoothing_sigma": self.smoothing_sigma, "preprocessing": self.transform.to_config(),
                "phrase_map": self.phrase_map, "mirror_average": self.mirror_average,
                "similarity": ("cosine(patch_emb, text global_emb)" if self.phrase_map == "global"
                               else "mean over tokens of cosine(patch_emb, token_emb)"),
                "device": self.device_name, "backend": self.backend}

    @classmethod
    def load(cls, checkpoint_dir, warm_up: bool = True, **kw) -> "OnnxGroundingEngine":
        engine = cls(checkpoint_dir, **kw)
        if warm_up:
            engine.warm_up()
        return engine

    def warm_up(self) -> bool:
        try:
            with self._lock:
                self._encode_texts(["warm up"])
            return True
        except Exception as e:  # pragma: no cover - depends on the model
            log.warning("warm-up pass failed: %s", e)
            return False

    # -- image ----------------------------------------------------------------------------------------------------
    def image_key(self, radiograph) -> str:
        return image_key(radiograph, self.transform)

    def _mirror(self, x: np.ndarray) -> np.ndarray:
        s = int(x.shape[-1])
        k = max(0, min(self.output_stride - 1, s - 1))
        pad = (0.0 - float(getattr(self.transform, "mean", 0.0))) / float(getattr(self.transform, "std", 1.0) or 1.0)
        out = np.full_like(x, pad)
        out[..., : s - k] = x[..., ::-1][..., k:]
        return out

    def set_image(self, radiograph) -> None:
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
        x = np.ascontiguousarray(self.transform.apply(radiograph), dtype=np.float32)[None, None]
        if self.mirror_average:
            x = np.concatenate([x, self._mirror(x)])
        with self._lock:
            patch = self._image.run(None, {"pixel_values": x})[0].astype(np.float32)
            if self.mirror_average:
                patch = np.stack([patch[0], patch[1][:, ::-1]])
            self.image_encode_count += 1
            gh, gw = int(patch.shape[1]), int(patch.shape[2])
            g2i = self.transform.grid_to_image(radiograph.shape, (gh, gw), anchor=self.grid_anchor)
            seen = tuple(float(v) for v in self.transform.geometry(tuple(radiograph.shape)).seen_box())
            self._images[key] = (np.ascontiguousarray(patch), radiograph.shape, g2i, seen)
            self._images.move_to_end(key)
            while len(self._images) > self.cache_size:
                self._images.popitem(last=False)
            self._current = key

    embed = set_image

    def has_image(self, radiograph) -> bool:
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

    def _truncation_warning(self) -> str:
        return f"phrase longer than the text encoder's limit of {self.max_text_length} tokens; truncated"

    def _encode_texts(self, phrases: Sequence[str]):
        tok = self.tokenizer(phrases)
        g, t = self._text.run(None, {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]})
        return g.astype(np.float32), t.astype(np.float32), tok

    def _content_tokens(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        keep = mask.astype(bool) & ~np.isin(ids, self.tokenizer.special_ids)
        empty = keep.sum(1) == 0
        keep[empty] = mask.astype(bool)[empty]
        return keep.astype(np.float32)

    def _text_globals(self, phrases: Sequence[str]) -> List[Tuple[np.ndarray, bool]]:
        missing = [p for p in dict.fromkeys(phrases) if p not in self._texts]
        if missing:
            g, t, tok = self._encode_texts(missing)
            if self.phrase_map == "token-mean":
                keep = self._content_tokens(tok["input_ids"], tok["attention_mask"])
                unit = _normalize(t) * keep[..., None]
                g = unit.sum(1) / np.maximum(keep.sum(1, keepdims=True), 1)
            for i, p in enumerate(missing):
                self._texts[p] = (g[i], bool(tok["truncated"][i]))
        res = []
        for p in phrases:
            self._texts.move_to_end(p)
            res.append(self._texts[p])
        while len(self._texts) > self.text_cache_size:
            self._texts.popitem(last=False)
        return res

    def _phrase_vectors(self, texts: Sequence[str]):
        if not self.mirror_average:
            return self._text_globals(texts), None
        from elvis_core.grounding.sides import mirrored_phrase

        both = self._text_globals(list(texts) + [mirrored_phrase(t) for t in texts])
        return both[:len(texts)], both[len(texts):]

    def encode_phrases(self, phrases: Sequence[str], batch_size: int = 64) -> int:
        texts = list(dict.fromkeys(p.strip() for p in phrases if isinstance(p, str) and p.strip()))
        if self.mirror_average:
            from elvis_core.grounding.sides import mirrored_phrase

            texts = list(dict.fromkeys(x for t in texts for x in (t, mirrored_phrase(t))))
        texts = texts[-self.text_cache_size:]
        n = 0
        for i in range(0, len(texts), max(1, int(batch_size))):
            with self._lock:
                missing = [p for p in texts[i:i + batch_size] if p not in self._texts]
                if missing:
                    self._text_globals(missing)
                    n += len(missing)
        return n

    def has_phrase(self, phrase: str) -> bool:
        if not isinstance(phrase, str) or phrase.strip() not in self._texts:
            return False
        if self.mirror_average:
            from elvis_core.grounding.sides import mirrored_phrase

            return mirrored_phrase(phrase.strip()) in self._texts
        return True

    # -- grounding ------------------------------------------------------------------------------------------------
    @staticmethod
    def _similarity(patch: np.ndarray, vec: np.ndarray, mirror_vec: Optional[np.ndarray] = None) -> np.ndarray:
        sim = patch[0] @ vec
        if patch.shape[0] > 1:
            sim = 0.5 * (sim + patch[1] @ (vec if mirror_vec is None else mirror_vec))
        return np.clip(sim, -1.0, 1.0).astype(np.float32)

    def _make_map(self, phrase, raw, shape, g2i, seen, truncated: bool, t0: float) -> GroundingMap:
        return build_map(phrase, raw, shape, g2i, seen, self.smoothing_sigma,
                         self._truncation_warning() if truncated else None, t0, trust=self._trust)

    def ground(self, phrase: str) -> GroundingMap:
        text = self._check_phrase(phrase)
        t0 = time.perf_counter()
        with self._lock:
            patch, shape, g2i, seen = self._current_image()
            vecs, mvecs = self._phrase_vectors([text])
            (vec, truncated), = vecs
            sim = self._similarity(patch, vec, mvecs[0][0] if mvecs else None)
            return self._make_map(phrase, sim, shape, g2i, seen, truncated, t0)

    def ground_many(self, phrases: Sequence[str]) -> List[GroundingMap]:
        texts = [self._check_phrase(p, f" {i}") for i, p in enumerate(phrases)]
        if not texts:
            return []
        t0 = time.perf_counter()
        with self._lock:
            patch, shape, g2i, seen = self._current_image()
            vecs, mvecs = self._phrase_vectors(texts)
            maps = [self._make_map(p, self._similarity(patch, vecs[i][0], mvecs[i][0] if mvecs else None),
                                   shape, g2i, seen, vecs[i][1], t0) for i, p in enumerate(phrases)]
        per = (time.perf_counter() - t0) / len(maps)
        for m in maps:
            m.latency_s = per
        return maps

    def ground_tokens(self, phrase: str) -> GroundingMap:
        from elvis_core.grounding.mapbuild import smooth_grid

        text = self._check_phrase(phrase)
        t0 = time.perf_counter()
        with self._lock:
            patch, shape, g2i, seen = self._current_image()
            g, t, tok = self._encode_texts([text])
            ids, mask = tok["input_ids"][0], tok["attention_mask"][0]
            special = set(self.tokenizer.special_ids)
            keep = [i for i in range(len(ids)) if mask[i] and int(ids[i]) not in special]
            vecs, mvecs = self._phrase_vectors([text])
            vec = vecs[0][0] if (self.phrase_map == "token-mean" or mvecs) else g[0]
            sim = self._similarity(patch, vec, mvecs[0][0] if mvecs else None)
            if keep:
                temb = _normalize(t[0, keep])
                tm = np.clip(np.einsum("hwd,td->thw", patch[0], temb), -1.0, 1.0)
                tm = np.stack([smooth_grid(m, self.smoothing_sigma) for m in tm])
            else:
                tm = np.zeros((0,) + sim.shape, dtype=np.float32)
            gm = self._make_map(phrase, sim, shape, g2i, seen, bool(tok["truncated"][0]), t0)
            gm.token_maps = tm.astype(np.float32)
            gm.tokens = [tok["tokens"][0][i] for i in keep]
            gm.latency_s = time.perf_counter() - t0
            return gm

    def ground_image(self, radiograph, phrase: str, tokens: bool = False) -> GroundingMap:
        with self._lock:
            self.set_image(radiograph)
            return self.ground_tokens(phrase) if tokens else self.ground(phrase)

    def try_ground_cached(self, radiograph, phrase: str) -> Optional[GroundingMap]:
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


def load_fast_engine(checkpoint_dir, **kw) -> Optional[OnnxGroundingEngine]:
    """The ONNX Runtime engine of a checkpoint when its export is usable, else None (the caller loads torch).
    Never raises for a missing/stale/failed export or a missing onnxruntime: says why in the log. A checkpoint
    without an export costs one file check: onnxruntime is not imported for it (its initialisation holds the GIL
    for ~0.1 s, a GUI stall the torch path would not otherwise have)."""
    if read_manifest(Path(checkpoint_dir)) is None:
        log.info("%s: no ONNX export: grounding with torch", checkpoint_dir)
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.info("onnxruntime is not installed: grounding with torch")
        return None
    try:
        return OnnxGroundingEngine.load(checkpoint_dir, **kw)
    except GroundingError as e:
        log.info("%s: grounding with torch", e)
    except Exception as e:  # a corrupt .onnx file, an unsupported operator: fall back, say why
        log.warning("ONNX engine failed (%s: %s): grounding with torch", type(e).__name__, str(e)[:200])
    return None
