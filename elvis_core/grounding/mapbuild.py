"""How a raw cosine grid becomes a :class:`GroundingMap`: ONE function for every engine (the torch
:class:`~elvis_core.grounding.engine.GroundingEngine` and the ONNX Runtime
:class:`~elvis_core.grounding.onnx_engine.OnnxGroundingEngine`), so that both give the same map with the same
warnings and trust fields. Torch-free (numpy only): the viewer's ONNX path imports it without torch.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from elvis_core.grounding.types import GroundingMap


def smooth_grid(grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a small grid (sigma in grid cells), exactly as hi-ml's ``scipy.ndimage.gaussian_filter``
    (kernel radius ``int(4 sigma + 0.5)``, mirrored borders ``d c b a | a b c d``), so ``sigma=1.5`` reproduces
    BioViL's smoothed maps. A convex combination of the cells: values stay within the grid's [min, max]."""
    if sigma <= 0:
        return grid.astype(np.float32, copy=True)
    radius = max(1, int(4.0 * float(sigma) + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * x * x / (float(sigma) ** 2))
    k /= k.sum()
    g = np.asarray(grid, dtype=np.float64)
    for axis in (0, 1):
        n = g.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        p = np.pad(g, pad, mode="symmetric")
        g = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(2 * radius + 1))
    return g.astype(np.float32)


def build_map(phrase: str, raw: np.ndarray, shape: Sequence[int], g2i, seen: Optional[Tuple[float, ...]],
              smoothing_sigma: float, truncation_warning: Optional[str], t0: float,
              trust: Optional[Tuple[Any, Any]] = None) -> GroundingMap:
    """The map of ``phrase`` from its raw (unsmoothed, clipped) cosine grid ``raw`` [gh, gw] on an image of
    ``shape``: smoothed, placed by the grid->image affine ``g2i``, with what the model saw (``seen``) and the
    truncation warning (None when the phrase fitted); ``latency_s`` counted from ``t0`` (``time.perf_counter``).
    ``trust``: (presence calibration, known words) of the checkpoint, given to the map-trust function
    (``elvis_core.grounding.presence.attach_trust``) when the core has it."""
    sim = smooth_grid(raw, smoothing_sigma)
    gm = GroundingMap(similarity=sim.astype(np.float32), grid_to_image=np.array(g2i, dtype=np.float64),
                      image_shape=tuple(shape), phrase=phrase, smoothing_sigma=float(smoothing_sigma),
                      raw_similarity=np.asarray(raw, dtype=np.float32), seen_region=seen)
    if trust is not None and _attach_trust() is not None:
        _attach_trust()(gm, *trust)
    if truncation_warning:
        gm.warnings.append(truncation_warning)
    gm.latency_s = time.perf_counter() - t0
    return gm


def image_key(radiograph, transform) -> str:
    """Content hash of what the model input depends on: pixels, shape and (for window normalisation) window.

    The pixel hash is computed once per ``Radiograph`` object and kept on it (``_content_hash``, checked against
    the array's identity and shape): radiographs are not modified after reading."""
    import hashlib

    px = radiograph.pixels
    cached = getattr(radiograph, "_content_hash", None)
    if cached is not None and cached[0] is px and cached[1] == px.shape:
        digest = cached[2]
    else:
        arr = np.ascontiguousarray(px)
        h = hashlib.blake2b(digest_size=16)
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(arr.data)
        digest = h.hexdigest()
        try:
            radiograph._content_hash = (px, px.shape, digest)
        except AttributeError:  # a frozen or slotted stand-in: hash every time
            pass
    if transform.normalization == "window":
        w = radiograph.default_window()
        return digest + repr((float(w.center), float(w.width)))
    return digest


def _attach_trust():
    """``presence.attach_trust`` (the one function that fills a map's trust fields), or None in a core without it."""
    try:
        from elvis_core.grounding.presence import attach_trust
    except ImportError:
        return None
    return attach_trust


def trust_sources_of(checkpoint_dir, checkpoint_config, tokenizer):
    """(presence calibration, known words, where the words come from) of a checkpoint for an engine without a torch
    model (the ONNX Runtime one), through the same ``presence.trust_sources`` as the torch engine; None when the core
    has no map-trust module."""
    try:
        from elvis_core.grounding.presence import trust_sources
        from elvis_core.model.checkpoint import read_known_words
    except ImportError:
        return None
    from types import SimpleNamespace

    model = SimpleNamespace(checkpoint_config=checkpoint_config, known_words=read_known_words(checkpoint_dir),
                            tokenizer=tokenizer)
    return trust_sources(model, checkpoint_config)
