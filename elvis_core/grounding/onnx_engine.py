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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from elvis_core.errors import GroundingError
from elvis_core.grounding.engine_common import EngineCommon
from elvis_core.grounding.mapbuild import trust_sources_of
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


class OnnxGroundingEngine(EngineCommon):
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
        self._init_caches()
        self.backend = "onnxruntime" + (" int8 text" if text_file != self.manifest["text_file"] else "")

    # -- identity -------------------------------------------------------------------------------------------------
    device_name = "CPU (ONNX Runtime)"

    @property
    def checkpoint_hash(self) -> str:
        return self._hash

    def settings(self) -> Dict[str, Any]:
        return {**self._base_settings(), "device": self.device_name, "backend": self.backend}

    def _guard(self):
        return self._lock

    def _trust_args(self):
        return self._trust

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
    def _mirror(self, x: np.ndarray) -> np.ndarray:
        s = int(x.shape[-1])
        k = max(0, min(self.output_stride - 1, s - 1))
        pad = (0.0 - float(getattr(self.transform, "mean", 0.0))) / float(getattr(self.transform, "std", 1.0) or 1.0)
        out = np.full_like(x, pad)
        out[..., : s - k] = x[..., ::-1][..., k:]
        return out

    def set_image(self, radiograph) -> None:
        key = self._cached_image_key(radiograph)
        if key is None:
            return
        x = np.ascontiguousarray(self.transform.apply(radiograph), dtype=np.float32)[None, None]
        if self.mirror_average:
            x = np.concatenate([x, self._mirror(x)])
        with self._lock:
            patch = self._image.run(None, {"pixel_values": x})[0].astype(np.float32)
            if self.mirror_average:
                patch = np.stack([patch[0], patch[1][:, ::-1]])
            self._store_image(key, radiograph, np.ascontiguousarray(patch), self.grid_anchor)

    # -- text -----------------------------------------------------------------------------------------------------
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

    def _encode_vectors(self, missing: Sequence[str]):
        g, t, tok = self._encode_texts(missing)
        if self.phrase_map == "token-mean":
            keep = self._content_tokens(tok["input_ids"], tok["attention_mask"])
            unit = _normalize(t) * keep[..., None]
            g = unit.sum(1) / np.maximum(keep.sum(1, keepdims=True), 1)
        return g, tok["truncated"]

    # -- grounding ------------------------------------------------------------------------------------------------
    @staticmethod
    def _similarity(patch: np.ndarray, vec: np.ndarray, mirror_vec: Optional[np.ndarray] = None) -> np.ndarray:
        sim = patch[0] @ vec
        if patch.shape[0] > 1:
            sim = 0.5 * (sim + patch[1] @ (vec if mirror_vec is None else mirror_vec))
        return np.clip(sim, -1.0, 1.0).astype(np.float32)

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
        return self._spread_latency(maps, t0)

    def ground_tokens(self, phrase: str) -> GroundingMap:
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
            tm = None
            if keep:
                tm = np.clip(np.einsum("hwd,td->thw", patch[0], _normalize(t[0, keep])), -1.0, 1.0)
            return self._token_result(phrase, sim, tm, [tok["tokens"][0][i] for i in keep], shape, g2i, seen,
                                      bool(tok["truncated"][0]), t0)


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
