"""Resource limits checked **before** any work that a file's own claims would size: decoding pixels, inflating a
deflated data set, reading a report or an annotation file.

Defaults are sized for the largest real radiographs (a 43 x 43 cm flat panel at 70 um is 6144 x 6144 = 37.7 Mpx;
a full-field mammogram 4096 x 5625 = 23 Mpx; chest radiographs are 2-18 Mpx) with room for a 16-bit RGB frame, and
keep one read of any input under about 1 GB of memory. Change them per process with :func:`set_limits` or the
environment variables below (read at import):

==========================  ===========================  ===========================================================
limit                       environment variable         default
==========================  ===========================  ===========================================================
``max_frame_pixels``        ``ELVIS_MAX_FRAME_PIXELS``   40 000 000 pixels per frame (rows x columns)
``max_decoded_bytes``       ``ELVIS_MAX_DECODED_MB``     256 MiB produced by one decoder call (one frame for
                                                         pydicom; all frames for SimpleITK; a deflated data set)
``max_inflated_bytes``      ``ELVIS_MAX_INFLATED_MB``    64 MiB for a deflated data set (pydicom holds it whole,
                                                         with copies: ~4x that in memory)
``max_report_bytes``        ``ELVIS_MAX_REPORT_MB``      1 MiB per report file (MIMIC-CXR reports are < 10 kB)
``max_annotation_bytes``    ``ELVIS_MAX_ANNOTATION_MB``  256 MiB per annotation CSV / JSON (MS-CXR is ~0.2 MB)
==========================  ===========================  ===========================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace


def _env_int(name: str, default: int, scale: int = 1) -> int:
    try:
        v = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return int(v * scale) if v > 0 else default


@dataclass(frozen=True)
class Limits:
    max_frame_pixels: int = 40_000_000
    max_decoded_bytes: int = 256 << 20
    max_inflated_bytes: int = 64 << 20
    max_report_bytes: int = 1 << 20
    max_annotation_bytes: int = 256 << 20


_limits = Limits(
    max_frame_pixels=_env_int("ELVIS_MAX_FRAME_PIXELS", Limits.max_frame_pixels),
    max_decoded_bytes=_env_int("ELVIS_MAX_DECODED_MB", Limits.max_decoded_bytes, 1 << 20),
    max_inflated_bytes=_env_int("ELVIS_MAX_INFLATED_MB", Limits.max_inflated_bytes, 1 << 20),
    max_report_bytes=_env_int("ELVIS_MAX_REPORT_MB", Limits.max_report_bytes, 1 << 20),
    max_annotation_bytes=_env_int("ELVIS_MAX_ANNOTATION_MB", Limits.max_annotation_bytes, 1 << 20),
)


def limits() -> Limits:
    """The limits in force."""
    return _limits


def set_limits(**changes: int) -> Limits:
    """Change limits for this process (e.g. ``set_limits(max_frame_pixels=80_000_000)``); returns the old ones."""
    global _limits
    old = _limits
    for k, v in changes.items():
        if not hasattr(old, k):
            raise TypeError(f"unknown limit {k!r}")
        if int(v) <= 0:
            raise ValueError(f"{k} must be > 0")
    _limits = replace(old, **{k: int(v) for k, v in changes.items()})
    return old


def mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB" if n >= (1 << 20) else f"{n:,} bytes"


def check_frame(rows: int, cols: int, samples: int = 1, bytes_per_sample: int = 2, frames: int = 1,
                what: str = "image") -> None:
    """Raise ValueError (callers wrap it into their typed error naming the file) when decoding ``frames`` frames of
    ``rows x cols x samples`` would pass the limits."""
    lim = _limits
    px = int(rows) * int(cols)
    if px > lim.max_frame_pixels:
        raise ValueError(f"{what} of {rows} x {cols} = {px:,} pixels per frame is larger than the limit of "
                         f"{lim.max_frame_pixels:,} (ELVIS_MAX_FRAME_PIXELS)")
    need = px * max(1, int(samples)) * max(1, int(bytes_per_sample)) * max(1, int(frames))
    if need > lim.max_decoded_bytes:
        many = f" x {frames} frames" if frames > 1 else ""
        raise ValueError(f"{what} would decode to {mib(need)} ({rows} x {cols} x {samples} sample(s) x "
                         f"{bytes_per_sample} byte(s){many}), more than the limit of {mib(lim.max_decoded_bytes)} "
                         "(ELVIS_MAX_DECODED_MB)")
