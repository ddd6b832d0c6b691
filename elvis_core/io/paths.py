"""One image-suffix list and one ``resolve_image`` for the whole core (annotation paths → files on disk)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from elvis_core.io.images import IMAGE_EXTENSIONS

#: raster images read by PIL (JPG/PNG); DICOM files may have any name
RASTER_SUFFIXES = tuple(IMAGE_EXTENSIONS)
#: suffixes tried, in order, when an annotation path does not exist as written (MIMIC-CXR .dcm vs MIMIC-CXR-JPG)
IMAGE_SUFFIXES = (".dcm",) + RASTER_SUFFIXES


def resolve_image(images_root: os.PathLike | str, rel_path: str) -> Optional[Path]:
    """``images_root / rel_path``, else the same path with another image suffix (:data:`IMAGE_SUFFIXES`)."""
    rel = str(rel_path).strip().lstrip("/")
    p = Path(images_root) / rel
    if p.is_file():
        return p
    for suf in IMAGE_SUFFIXES:
        q = p.with_suffix(suf)
        if q.is_file():
            return q
    return None
