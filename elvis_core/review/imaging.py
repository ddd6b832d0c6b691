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
