"""One entry point for any image file: DICOM (recognised by content, not only extension) or JPG/PNG (MIMIC-CXR-JPG).

JPG/PNG images become a grey :class:`Radiograph` (uint8/uint16 values as float32, higher = brighter, no spacing) with
``meta["Decoder"] == "image"``; 8-bit images get one window, "full range" (0..255), so they display as stored.
"""

from __future__ import annotations

import os
import struct
from typing import Tuple

import numpy as np

from elvis_core.errors import DicomReadError, ElvisError
from elvis_core.io.radiograph import Radiograph, Window

#: extensions read as plain images
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def sniff_kind(path: os.PathLike | str) -> str:
    """"dicom", "image" or "unknown", from the file's first bytes (then the extension for preamble-less DICOM)."""
    from elvis_core.io.dicom_open import is_dicom_file
    from elvis_core.io.paths import is_regular_file

    if not is_regular_file(path):  # never open a FIFO or a device to sniff it
        return "unknown"
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return "unknown"
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return "image"
    if is_dicom_file(path):
        return "dicom"
    return "unknown"


_JPEG_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def raster_header_shape(path: os.PathLike | str) -> Tuple[int, int]:
    """(rows, cols) of a PNG or JPEG from its header bytes only (PNG IHDR / JPEG SOF marker), no decoding.

    Raises :class:`ElvisError` naming the file when it is neither, or the header is cut short.
    """
    from elvis_core.io.paths import require_regular_file

    require_regular_file(path, what="image file")
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            if head.startswith(_PNG_MAGIC):
                if len(head) < 24 or head[12:16] != b"IHDR":
                    raise ElvisError("not a valid PNG (no IHDR chunk)", path)
                w, h = struct.unpack(">II", head[16:24])
                return int(h), int(w)
            if head[:2] != b"\xff\xd8":
                raise ElvisError("neither PNG nor JPEG", path)
            f.seek(2)
            while True:
                b = f.read(1)
                while b and b != b"\xff":
                    b = f.read(1)
                while b == b"\xff":
                    b = f.read(1)
                if not b:
                    break
                marker = b[0]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    continue
                seg = f.read(2)
                if len(seg) < 2:
                    break
                (length,) = struct.unpack(">H", seg)
                if marker in _JPEG_SOF_MARKERS:
                    sof = f.read(5)
                    if len(sof) < 5:
                        break
                    _, h, w = struct.unpack(">BHH", sof)
                    return int(h), int(w)
                f.seek(length - 2, os.SEEK_CUR)
    except OSError as err:
        raise ElvisError(f"cannot read image: {err.strerror or err}", path) from None
    raise ElvisError("not a valid JPEG (no frame header found)", path)


def read_plain_image(path: os.PathLike | str) -> Radiograph:
    """Read a JPG/PNG as grey. Raises :class:`DicomReadError` (the image read error type) when unreadable."""
    import cv2

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DicomReadError("no such file", path)
    if os.path.getsize(path) == 0:
        raise DicomReadError("empty file (0 bytes)", path)
    try:  # the size the header claims, checked before OpenCV allocates it
        rows, cols = raster_header_shape(path)
    except ElvisError as err:
        raise DicomReadError(f"not a readable JPG/PNG image ({err.problem})", path) from None
    from elvis_core.io.limits import check_frame

    try:
        check_frame(rows, cols, 4, 2, what="image")  # worst case: 16-bit RGBA
    except ValueError as err:
        raise DicomReadError(str(err), path) from None
    data = np.fromfile(path, dtype=np.uint8)
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise DicomReadError(f"not a readable JPG/PNG image ({str(err).splitlines()[-1][:120]})", path) from None
    if img is None or img.size == 0:
        raise DicomReadError("not a readable JPG/PNG image (corrupt or truncated)", path)
    warnings = []
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[..., :3]
        channels = img.astype(np.float32)
        if not (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])):
            warnings.append("colour image converted to grey (ITU-R 601 luma)")
        # OpenCV gives BGR
        img = channels[..., 2] * 0.299 + channels[..., 1] * 0.587 + channels[..., 0] * 0.114
    eight_bit = img.dtype == np.uint8 or (img.dtype.kind == "f" and float(np.max(img)) <= 255.0)
    pixels = np.ascontiguousarray(img, dtype=np.float32)
    # an 8-bit JPG/PNG (MIMIC-CXR-JPG) is already windowed: show it as stored (0 → black, 255 → white)
    windows = [Window(center=127.5, width=255.0, name="full range")] if eight_bit else []
    meta = {
        "Rows": int(pixels.shape[0]),
        "Columns": int(pixels.shape[1]),
        "NumberOfFrames": 1,
        "Frame": 0,
        "Decoder": "image",
        "Format": os.path.splitext(path)[1].lower().lstrip("."),
    }
    return Radiograph(pixels=pixels, windows=windows, meta=meta, source_path=path, warnings=warnings)


def read_image(path: os.PathLike | str, frame: int = 0) -> Radiograph:
    """DICOM (by content: DICM preamble or a raw data set; else by .dcm extension) or JPG/PNG → :class:`Radiograph`."""
    from elvis_core.io.dicom import read_radiograph

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DicomReadError("no such file", path)
    if os.path.isdir(path):
        raise DicomReadError("is a folder, not an image file", path)
    kind = sniff_kind(path)
    if kind == "image":
        if frame != 0:
            raise DicomReadError(f"frame {frame} out of range (a JPG/PNG has 1 frame)", path)
        return read_plain_image(path)
    if kind == "dicom":
        return read_radiograph(path, frame=frame)
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return read_plain_image(path)
    # unknown content: let the DICOM reader give the precise error ("not a DICOM file", "empty file", ...)
    return read_radiograph(path, frame=frame)
