"""Where a model's training data came from, and whether an image is a phantom: the viewer's reading-safety banner.

A checkpoint's ``config.json`` carries ``provenance`` (see :mod:`elvis_core.model.checkpoint`): the training data
root and stats, and for the shipped demo model a ``demo_build.phantom`` block. Phantom images are recognisable from
their DICOM metadata: :mod:`elvis_core.phantom.dicom_writer` writes ``Manufacturer = "ELVIS Phantom"`` (the reader
keeps Manufacturer in ``Radiograph.meta``; identifiers are never looked at).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

PHANTOM_MANUFACTURER = "ELVIS Phantom"


def _walk(obj: Any, depth: int = 0) -> Iterable[tuple]:
    """(key, value) pairs of nested dicts/lists, bounded depth (provenance is small, but never trust a file)."""
    if depth > 6:
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield str(k), v
            yield from _walk(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj[:200]:
            yield from _walk(v, depth + 1)


def training_data_kind(provenance: Optional[Mapping[str, Any]]) -> str:
    """``"phantom"`` when the provenance says the model was trained on phantom studies, ``"unknown"`` when it
    says nothing about the data, else ``"real"``.

    Phantom: a key named ``phantom`` (e.g. ``demo_build.phantom``), ``data.source == "phantom"``, a ``data.kind``
    of ``phantom``, or a recorded command running ``elvis phantom``."""
    if not provenance:
        return "unknown"
    data = provenance.get("data") if isinstance(provenance, Mapping) else None
    for key, value in _walk(provenance):
        k = key.lower()
        if k == "phantom" and value not in (None, False, "", {}):
            return "phantom"
        if k in ("source", "kind", "dataset") and isinstance(value, str) and "phantom" in value.lower():
            return "phantom"
        if k == "command" and isinstance(value, str) and "elvis phantom" in value:
            return "phantom"
    return "real" if isinstance(data, Mapping) and data else "unknown"


def is_phantom_image(radiograph) -> bool:
    """True for images written by the phantom generator (DICOM Manufacturer ``ELVIS Phantom``)."""
    meta = getattr(radiograph, "meta", None) or {}
    return str(meta.get("Manufacturer") or "").strip() == PHANTOM_MANUFACTURER


def provenance_warning(provenance: Optional[Mapping[str, Any]], radiograph, model_name: str = "the model") -> str:
    """A one-line warning when a phantom-trained model grounds a non-phantom image, else ``""``."""
    if radiograph is None or training_data_kind(provenance) != "phantom" or is_phantom_image(radiograph):
        return ""
    return (f"{model_name} was trained only on synthetic phantom studies: its maps on this real radiograph are "
            "not evidence of anything (research use only).")
