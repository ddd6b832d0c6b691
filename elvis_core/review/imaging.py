"""Image size from headers (fast, for importing thousands of rows) and image loading for the review queue.

``image_size`` reads only a DICOM header, or the PNG IHDR / JPEG SOF marker, never the pixels.
``load_image`` is ``elvis_core.io.images.read_image`` (the pixel-path contract: float32, higher = brighter).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Tuple

from elvis_core.errors import DicomReadError, ElvisError
from elvis_core.io.radiograph import Radiograph

def _png_size(data: bytes, path: Path) -> Tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ElvisError("not a valid PNG (no IHDR chunk)", path)
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def _jpeg_size(path: Path) -> Tuple[int, int]:
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            raise ElvisError("not a valid JPEG (no SOI marker)", path)
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
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                sof = f.read(5)
                if len(sof) < 5:
                    break
                _, h, w = struct.unpack(">BHH", sof)
                return int(w), int(h)
            f.seek(length - 2, 1)
    raise ElvisError("not a valid JPEG (no frame header found)", path)


def image_size(path: str | Path) -> Tuple[int, int]:
    """(width, height) of a DICOM, PNG or JPEG file from its header. Raises ElvisError when unreadable."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".png":
            with open(path, "rb") as f:
                return _png_size(f.read(24), path)
        if suffix in (".jpg", ".jpeg"):
            return _jpeg_size(path)
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        if "Rows" not in ds or "Columns" not in ds:
            raise DicomReadError("DICOM has no Rows/Columns (not an image)", path)
        return int(ds.Columns), int(ds.Rows)
    except ElvisError:
        raise
    except OSError as err:
        raise ElvisError(f"cannot read image: {err.strerror or err}", path) from None
    except Exception as err:  # pydicom raises many types for non-DICOM input
        raise DicomReadError(f"not a readable DICOM file ({type(err).__name__})", path) from None


def load_image(path: str | Path) -> Radiograph:
    """Read an image as a `Radiograph` (:func:`elvis_core.io.images.read_image`: DICOM, JPG or PNG)."""
    from elvis_core.io.images import read_image

    return read_image(path)
