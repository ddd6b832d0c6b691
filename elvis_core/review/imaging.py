"""Image size from headers (fast, for importing thousands of rows) and image loading for the review queue.

``image_size`` reads only a DICOM header, or the PNG IHDR / JPEG SOF marker, never the pixels.
``load_image`` is ``elvis_core.io.images.read_image`` (the pixel-path contract: float32, higher = brighter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

from elvis_core.errors import DicomReadError, ElvisError
from elvis_core.io.images import IMAGE_EXTENSIONS, raster_header_shape
from elvis_core.io.radiograph import Radiograph

def image_size(path: str | Path) -> Tuple[int, int]:
    """(width, height) of a DICOM, PNG or JPEG file from its header. Raises ElvisError when unreadable."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGE_EXTENSIONS:
            rows, cols = raster_header_shape(path)
            return cols, rows
        from elvis_core.io.dicom import read_header

        hdr = read_header(path)  # validated, deflate-guarded, header only
        rows, cols = hdr.get("Rows"), hdr.get("Columns")
        if not isinstance(rows, int) or not isinstance(cols, int) or isinstance(rows, bool):
            raise DicomReadError("DICOM has no usable Rows/Columns (not an image)", path)
        if not (1 <= rows <= 65535 and 1 <= cols <= 65535):
            raise DicomReadError(f"DICOM Rows/Columns {rows} x {cols} out of range", path)
        return cols, rows
    except ElvisError:
        raise
    except OSError as err:
        raise ElvisError(f"cannot read image: {err.strerror or err}", path) from None
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for non-DICOM input
        raise DicomReadError(f"not a readable DICOM file ({type(err).__name__})", path) from None


def load_image(path: str | Path) -> Radiograph:
    """Read an image as a `Radiograph` (:func:`elvis_core.io.images.read_image`: DICOM, JPG or PNG)."""
    from elvis_core.io.images import read_image

    return read_image(path)
