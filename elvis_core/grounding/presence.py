"""How far to believe a phrase map: a presence probability calibrated on the map's raw peak.

A phrase map always has a maximum, whether or not the finding is on the film. The raw (unsmoothed) peak cosine over
the cells the model saw separates "the finding is there" from "it is not" far better than the map's shape does, so a
checkpoint can carry a one-feature logistic calibration of that peak, fitted on validation images with the finding
(present) and their finding-free twins (absent):

``presence = sigmoid(a * peak + b)``

stored in the checkpoint's ``config.json`` under ``"presence_calibration"``::

    {"kind": "logistic", "feature": "peak", "a": float, "b": float, "threshold": float,
     "calibrated_on": str, "ece": float | None, "n_present": int, "n_absent": int}

``threshold`` is on the presence probability (a map is *confident* when ``presence >= threshold``). ``ece`` is the
expected calibration error measured on held-out data when the fitter was given some (``ece_data`` says which), else
on the fitting data itself. A checkpoint without the key (an imported model) is *uncalibrated*: every surface says
so instead of inventing a probability.

What presence means: the probability, on data like ``calibrated_on``, that the phrase's finding is on the film given
the map's peak. What it does not mean: a diagnosis, nor a calibrated probability on data unlike ``calibrated_on``
(a phantom-calibrated score on a real film is a ranking, not a probability).

Pure numpy (no sklearn): the fit is Newton's method on the L2-regularised log-likelihood (the small ridge keeps the
slope finite on perfectly separable data, where the unregularised maximum is at infinity).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import numpy as np

CALIBRATION_KEY = "presence_calibration"
_REQUIRED = ("kind", "feature", "a", "b", "threshold")


def _as_1d(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).reshape(-1)
    arr = arr[np.isfinite(arr)]
    if arr.size < 2:
        raise ValueError(f"presence calibration needs at least 2 finite {what} peaks, got {arr.size}")
    return arr


def _logistic_newton(x: np.ndarray, y: np.ndarray, ridge: float, iters: int = 100) -> tuple:
    """(slope, intercept) of the L2-regularised logistic regression of ``y`` on standardised ``x`` (ridge on the
    slope only), by Newton / IRLS."""
    w = np.zeros(2)  # [slope, intercept]
    X = np.stack([x, np.ones_like(x)], axis=1)
    reg = np.diag([ridge, 0.0])
    for _ in range(iters):
        z = X @ w
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
        g = X.T @ (p - y) + reg @ w
        h = (X * (p * (1 - p))[:, None]).T @ X + reg + 1e-12 * np.eye(2)
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def fit_presence_calibration(peaks_present: Sequence[float], peaks_absent: Sequence[float], calibrated_on: str,
                             threshold: float = 0.5, ridge: float = 1e-2,
                             heldout_present: Optional[Sequence[float]] = None,
                             heldout_absent: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Logistic regression of presence (1 = finding on the film, 0 = its finding-free twin) on the raw map peak.

    ``threshold`` is the presence probability from which a map counts as confident. ``ridge`` is the L2 penalty on
    the slope in standardised units (per sample-sum of the log-likelihood; small: it only matters when the classes
    are separable). With ``heldout_present``/``heldout_absent`` the stored ``ece`` is measured on them (honest);
    otherwise on the fitting data (``ece_data`` says which)."""
    pos = _as_1d(peaks_present, "present")
    neg = _as_1d(peaks_absent, "absent")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"presence threshold must lie in (0, 1), got {threshold}")
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    mu, sd = float(x.mean()), float(x.std())
    if not sd > 0:
        raise ValueError("presence calibration needs peaks that vary (all peaks are equal)")
    s, c = _logistic_newton((x - mu) / sd, y, float(ridge))
    a = s / sd
    b = c - s * mu / sd
    cal: Dict[str, Any] = {"kind": "logistic", "feature": "peak", "a": float(a), "b": float(b),
                           "threshold": float(threshold), "calibrated_on": str(calibrated_on), "ece": None,
                           "n_present": int(pos.size), "n_absent": int(neg.size)}
    if heldout_present is not None and heldout_absent is not None:
        hp, ha = _as_1d(heldout_present, "held-out present"), _as_1d(heldout_absent, "held-out absent")
        ex = np.concatenate([hp, ha])
        ey = np.concatenate([np.ones(hp.size), np.zeros(ha.size)])
        cal["ece_data"] = f"held-out ({hp.size} present + {ha.size} absent)"
    else:
        ex, ey = x, y
        cal["ece_data"] = "fitting data (in-sample)"
    cal["ece"] = expected_calibration_error([presence_probability(v, cal) for v in ex], ey)
    return cal


def check_calibration(calibration: Any) -> Optional[Dict[str, Any]]:
    """``calibration`` when it is a usable logistic-on-peak calibration, ``None`` when absent; ValueError (one line,
    what is wrong) when present but malformed."""
    if calibration is None:
        return None
    if not isinstance(calibration, dict):
        raise ValueError(f"presence_calibration must be an object, got {type(calibration).__name__}")
    missing = [k for k in _REQUIRED if k not in calibration]
    if missing:
        raise ValueError(f"presence_calibration lacks {', '.join(missing)}")
    if calibration["kind"] != "logistic" or calibration["feature"] != "peak":
        raise ValueError(f"presence_calibration kind {calibration['kind']!r} on {calibration['feature']!r} is not "
                         "supported (only 'logistic' on 'peak')")
    for k in ("a", "b", "threshold"):
        v = calibration[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"presence_calibration {k} must be a finite number, got {v!r}")
    if not 0.0 < float(calibration["threshold"]) < 1.0:
        raise ValueError(f"presence_calibration threshold must lie in (0, 1), got {calibration['threshold']}")
    return calibration


def presence_probability(peak: Optional[float], calibration: Optional[Dict[str, Any]]) -> Optional[float]:
    """``sigmoid(a * peak + b)``; ``None`` when uncalibrated (no calibration) or the peak is missing/not finite."""
    if calibration is None or peak is None:
        return None
    peak = float(peak)
    if not math.isfinite(peak):
        return None
    z = float(calibration["a"]) * peak + float(calibration["b"])
    z = max(-60.0, min(60.0, z))
    return 1.0 / (1.0 + math.exp(-z))


def peak_at_threshold(calibration: Optional[Dict[str, Any]]) -> Optional[float]:
    """The raw peak at which presence equals the threshold (None when uncalibrated or the slope is 0)."""
    if calibration is None or float(calibration["a"]) == 0.0:
        return None
    t = float(calibration["threshold"])
    return (math.log(t / (1.0 - t)) - float(calibration["b"])) / float(calibration["a"])


def expected_calibration_error(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> float:
    """Expected calibration error: sum over ``n_bins`` equal-width probability bins of (bin share) x |mean label -
    mean probability|. 0 for a perfectly calibrated score; NaN for no samples."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} probabilities but {y.size} labels")
    if p.size == 0:
        return float("nan")
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    idx = np.clip((p * n_bins).astype(int), 0, int(n_bins) - 1)
    ece = 0.0
    for k in range(int(n_bins)):
        sel = idx == k
        if sel.any():
            ece += sel.mean() * abs(float(y[sel].mean()) - float(p[sel].mean()))
    return float(ece)


def map_peak(raw_similarity: np.ndarray, seen_cells: Optional[np.ndarray] = None) -> Optional[float]:
    """The raw (unsmoothed) maximum cosine over the grid cells the model saw (``seen_cells`` bool, same shape; None =
    all). None when no finite value is seen."""
    raw = np.asarray(raw_similarity, dtype=np.float64)
    if seen_cells is not None:
        seen = np.asarray(seen_cells, dtype=bool)
        if seen.shape != raw.shape:
            raise ValueError(f"seen cells {seen.shape} do not match the map {raw.shape}")
        if seen.any():
            raw = raw[seen]
    raw = raw[np.isfinite(raw)]
    return float(raw.max()) if raw.size else None


# -- one place that makes a map say how far to believe it (every backend calls it) ----------------------------------
def trust_sources(model, checkpoint_config: Optional[Dict[str, Any]] = None) -> tuple:
    """(calibration dict or None, known words frozenset, where the words come from) for a model.

    Calibration: ``checkpoint_config["presence_calibration"]`` (config.json), else the model's
    ``checkpoint_config`` / ``presence_calibration`` attribute; a malformed one raises ValueError saying what is wrong.
    Known words: the checkpoint's ``known_words.json`` (``model.known_words``), else the tokenizer's whole words."""
    from elvis_core.model.vocab import tokenizer_whole_words

    cfg = checkpoint_config if isinstance(checkpoint_config, dict) else getattr(model, "checkpoint_config", None)
    cal = cfg.get(CALIBRATION_KEY) if isinstance(cfg, dict) else None
    if cal is None:
        cal = getattr(model, "presence_calibration", None)
    try:
        cal = check_calibration(cal)
    except ValueError as err:
        raise ValueError(f"config.json {err}") from None
    known = getattr(model, "known_words", None)
    if isinstance(known, dict) and isinstance(known.get("words"), list):
        return cal, frozenset(known["words"]), known.get("source") or "known_words.json"
    tok = getattr(model, "tokenizer", None)
    words = tokenizer_whole_words(tok) if tok is not None else []
    return cal, frozenset(words), "the tokenizer's whole words"


def attach_trust(gm, calibration: Optional[Dict[str, Any]], known_words) -> Any:
    """Fill a :class:`~elvis_core.grounding.types.GroundingMap`'s trust fields in place and return it: ``peak`` (raw
    maximum over the cells the model saw), ``presence`` / ``presence_threshold`` / ``calibrated_on`` (None when
    ``calibration`` is None) and ``unknown_words`` (the phrase's words not in ``known_words``). The one function
    every inference backend (torch engine, ONNX Runtime, ...) calls after building a map."""
    from elvis_core.model.vocab import unknown_words

    raw = gm.raw_similarity if gm.raw_similarity is not None else gm.similarity
    gm.peak = map_peak(raw, gm.seen_cells())
    gm.presence = presence_probability(gm.peak, calibration)
    gm.presence_threshold = float(calibration["threshold"]) if calibration is not None else None
    gm.calibrated_on = str(calibration.get("calibrated_on") or "") or None if calibration is not None else None
    gm.unknown_words = unknown_words(gm.phrase, known_words)
    return gm
