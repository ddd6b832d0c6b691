"""The validated header model: every DICOM value the readers use, typed and range-checked **before** it is used.

pydicom converts values lazily, so a damaged element (unknown VR, a US value of 1 byte, text in an IS, a sequence
where a number belongs) raises anything from ``NotImplementedError`` to ``struct.error`` at the first access.
:func:`sanitize` converts every top-level element once, up front: an unreadable element that the image needs
(Rows, Columns, BitsAllocated, ...) is a :class:`DicomReadError` naming the file and the tag; any other unreadable
element is dropped with a warning. :func:`image_header` then reads the image pixel module into an
:class:`ImageHeader` with one clear error per bad value (``(0028,0010) Rows is 'abc': not an integer``).

:func:`codestream_shapes` reads the sizes that a compressed frame claims (JPEG 2000 SIZ, JPEG / JPEG-LS SOF) so that
the decoded size can be checked against :mod:`elvis_core.io.limits` before a decoder allocates it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from elvis_core.errors import DicomReadError

#: elements the pixel path cannot do without: unreadable → the file is unreadable
REQUIRED_FOR_PIXELS = frozenset({
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
    0x00280101,  # BitsStored
    0x00280103,  # PixelRepresentation
    0x00280002,  # SamplesPerPixel
    0x00280004,  # PhotometricInterpretation
    0x00280008,  # NumberOfFrames
    0x00281052,  # RescaleIntercept
    0x00281053,  # RescaleSlope
    0x00280006,  # PlanarConfiguration
})

_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


def is_fatal(err: BaseException) -> bool:
    """Exceptions that must never be turned into a file error (the user or the interpreter stopping us)."""
    return isinstance(err, _FATAL)


def tag_name(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    try:
        kw = keyword_for_tag(tag) or ("private tag" if (tag >> 16) % 2 else "unknown tag")
    except Exception:  # noqa: BLE001
        kw = "unknown tag"
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {kw}"


def sanitize(ds, path: str, warnings: Optional[List[str]] = None, required=REQUIRED_FOR_PIXELS) -> None:
    """Convert every top-level element of ``ds`` (and the file meta) now; drop unreadable optional ones (noted in
    ``warnings``); raise :class:`DicomReadError` for an unreadable element in ``required``."""
    for container in (getattr(ds, "file_meta", None), ds):
        if container is None:
            continue
        try:
            tags = list(container.keys())
        except BaseException as err:  # noqa: BLE001
            if is_fatal(err):
                raise
            raise DicomReadError(f"damaged header ({type(err).__name__})", path) from None
        for tag in tags:
            if int(tag) == 0x7FE00010:
                continue
            try:
                elem = container[tag]
                _ = elem.value
                vr = str(elem.VR)
                if vr not in _KNOWN_VRS:
                    raise ValueError(f"unknown VR {vr!r}")
            except BaseException as err:  # noqa: BLE001 - lazy conversion raises anything on damaged input
                if is_fatal(err):
                    raise
                what = f"{tag_name(int(tag))} is unreadable ({type(err).__name__}: {_clip(str(err), 80)})"
                if int(tag) in required:
                    raise DicomReadError(what, path) from None
                try:
                    del container[tag]
                except BaseException as err2:  # noqa: BLE001
                    if is_fatal(err2):
                        raise
                if warnings is not None:
                    warnings.append(what + ": ignored")


_KNOWN_VRS = frozenset(("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
                        "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
                        "UR", "US", "UT", "UV", "OB or OW", "US or SS", "US or OW", "US or SS or OW"))


def _clip(text: str, n: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= n else text[: n - 3] + "..."


def _single(ds, keyword: str, path: str, default: Any) -> Any:
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence

    if keyword not in ds:
        return default
    elem = ds[keyword]
    v = elem.value
    if v is None or v == "" or (isinstance(v, (bytes, bytearray)) and len(v) == 0):
        return default
    if isinstance(v, Sequence):
        raise DicomReadError(f"{tag_name(int(elem.tag))} is a sequence, expected a single value", path)
    if isinstance(v, (MultiValue, list, tuple)):
        if len(v) == 0:
            return default
        if len(v) > 1:
            raise DicomReadError(f"{tag_name(int(elem.tag))} has {len(v)} values, expected one", path)
        v = v[0]
    if isinstance(v, (bytes, bytearray)):
        raise DicomReadError(f"{tag_name(int(elem.tag))} holds {len(v)} raw bytes (VR {elem.VR}), expected a number",
                             path)
    return v


def get_int(ds, keyword: str, path: str, default: int, lo: int, hi: int) -> int:
    from pydicom.datadict import tag_for_keyword

    v = _single(ds, keyword, path, default)
    name = tag_name(tag_for_keyword(keyword))
    try:
        f = float(str(v).strip()) if isinstance(v, str) else float(v)
    except (TypeError, ValueError, OverflowError):
        raise DicomReadError(f"{name} is {_clip(repr(v), 40)}: not an integer", path) from None
    if not math.isfinite(f) or f != int(f):
        raise DicomReadError(f"{name} is {_clip(repr(v), 40)}: not an integer", path)
    i = int(f)
    if not lo <= i <= hi:
        raise DicomReadError(f"{name} is {i}: must be {lo}..{hi}", path)
    return i


def get_float(ds, keyword: str, path: str, default: float, lo: float = -3e38, hi: float = 3e38) -> float:
    from pydicom.datadict import tag_for_keyword

    v = _single(ds, keyword, path, default)
    name = tag_name(tag_for_keyword(keyword))
    try:
        f = float(str(v).strip()) if isinstance(v, str) else float(v)
    except (TypeError, ValueError, OverflowError):
        raise DicomReadError(f"{name} is {_clip(repr(v), 40)}: not a number", path) from None
    if not math.isfinite(f) or not lo <= f <= hi:
        raise DicomReadError(f"{name} is {_clip(repr(v), 40)}: must be a finite number in [{lo:g}, {hi:g}]", path)
    return f


def get_str(ds, keyword: str, default: str = "") -> str:
    try:
        v = ds.get(keyword, None)
        if v is None:
            return default
        if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
            v = v[0] if len(v) else default
        return str(v).strip()
    except BaseException as err:  # noqa: BLE001
        if is_fatal(err):
            raise
        return default


@dataclass(frozen=True)
class ImageHeader:
    """The image pixel module, validated. ``frames`` >= 1; ``bits_stored`` <= ``bits_allocated``."""

    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    rescale_slope: float
    rescale_intercept: float

    @property
    def bytes_per_sample(self) -> int:
        return max(1, (self.bits_allocated + 7) // 8)

    @property
    def signed(self) -> bool:
        return self.pixel_representation == 1

    def stored_range(self) -> Tuple[float, float]:
        b = self.bits_stored
        if self.signed:
            return float(-(2 ** (b - 1))), float(2 ** (b - 1) - 1)
        return 0.0, float(2 ** b - 1)


def image_header(ds, path: str) -> ImageHeader:
    """Read and check the image pixel module (after :func:`sanitize`)."""
    rows = get_int(ds, "Rows", path, 0, 0, 65535)
    cols = get_int(ds, "Columns", path, 0, 0, 65535)
    if rows <= 0 or cols <= 0:
        raise DicomReadError(f"zero-size image (Rows={rows}, Columns={cols})", path)
    try:
        frames = get_int(ds, "NumberOfFrames", path, 1, 0, 2**31 - 1)
    except DicomReadError:
        raise
    frames = max(frames, 1)
    samples = get_int(ds, "SamplesPerPixel", path, 1, 1, 4)
    if samples not in (1, 3, 4):
        raise DicomReadError(f"(0028,0002) SamplesPerPixel is {samples}: must be 1 or 3", path)
    bits_allocated = get_int(ds, "BitsAllocated", path, 16, 1, 64)
    if bits_allocated not in (1, 8, 16, 32, 64):
        raise DicomReadError(f"(0028,0100) BitsAllocated is {bits_allocated}: must be 1, 8, 16, 32 or 64", path)
    bits_stored = get_int(ds, "BitsStored", path, bits_allocated, 1, 64)
    if bits_stored > bits_allocated:
        raise DicomReadError(f"(0028,0101) BitsStored is {bits_stored}, more than BitsAllocated ({bits_allocated})",
                             path)
    pixel_representation = get_int(ds, "PixelRepresentation", path, 0, 0, 1)
    photometric = get_str(ds, "PhotometricInterpretation").upper()
    slope = get_float(ds, "RescaleSlope", path, 1.0, -1e12, 1e12)
    intercept = get_float(ds, "RescaleIntercept", path, 0.0, -1e12, 1e12)
    lo, hi = (-(2.0 ** (bits_stored - 1)), 2.0 ** (bits_stored - 1)) if pixel_representation else (0.0, 2.0 ** bits_stored)
    top = max(abs(lo), abs(hi)) * abs(slope) + abs(intercept)
    if not math.isfinite(top) or top > 3e38:
        raise DicomReadError(f"RescaleSlope {slope:g} / RescaleIntercept {intercept:g} take values past the float32 "
                             "range", path)
    return ImageHeader(rows, cols, frames, samples, bits_allocated, bits_stored, pixel_representation, photometric,
                       slope, intercept)


# ---------------------------------------------------------------------------------------------------------------- #
# compressed frame headers
# ---------------------------------------------------------------------------------------------------------------- #

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def codestream_shapes(pixel_data: bytes, limit: int = 64, jpeg2000: bool = True,
                      jpeg: bool = True) -> List[Tuple[str, int, int, int]]:
    """(codec, rows, cols, components) claimed by the JPEG 2000 SIZ and JPEG / JPEG-LS SOF headers found in
    encapsulated pixel data (at most ``limit`` of them). Reads headers only. ``jpeg2000`` / ``jpeg``: which
    codestreams to look for (the transfer syntax says which one the data holds; looking for the other could take
    marker-like bytes inside the compressed data for a header)."""
    out: List[Tuple[str, int, int, int]] = []
    b = bytes(pixel_data) if not isinstance(pixel_data, bytes) else pixel_data
    pos = 0
    while jpeg2000 and len(out) < limit:
        i = b.find(b"\xff\x4f\xff\x51", pos)
        if i < 0 or i + 4 + 2 + 2 + 16 + 2 > len(b):
            break
        s = i + 6  # after SOC, SIZ marker and Lsiz
        xs, ys, xo, yo = struct.unpack(">IIII", b[s + 2:s + 18])
        csiz = struct.unpack(">H", b[s + 34:s + 36])[0] if s + 36 <= len(b) else 1
        out.append(("JPEG 2000", max(0, ys - yo), max(0, xs - xo), csiz))
        pos = i + 4
    pos = 0
    while jpeg and len(out) < limit:
        i = b.find(b"\xff\xd8", pos)
        if i < 0:
            break
        j = i + 2
        found = False
        while j + 4 <= len(b) and j < i + (1 << 20):
            if b[j] != 0xFF:
                break
            marker = b[j + 1]
            if marker == 0xFF:
                j += 1
                continue
            if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:
                j += 2
                continue
            (length,) = struct.unpack(">H", b[j + 2:j + 4])
            if marker in _JPEG_SOF and j + 9 + 1 <= len(b):
                _, h, w, nc = struct.unpack(">BHHB", b[j + 4:j + 10])
                out.append(("JPEG-LS" if marker == 0xF7 else "JPEG", h, w, nc))
                found = True
                break
            if marker == 0xDA or length < 2:
                break
            j += 2 + length
        pos = (j if found else i) + 2
    return out
