"""A DICOM file cut short in its pixel data, found while a folder is scanned (headers only, two small reads), so
the file is listed among the problems instead of in the study list where it would fail only when opened.

Native pixel data: the PixelData element's declared length must fit in the file. Encapsulated (compressed) pixel
data: the sequence delimiter item that ends it must be near the end of the file.
"""

from __future__ import annotations

import os
from typing import Optional

_PIXEL_TAG = b"\xe0\x7f\x10\x00"
_EXPLICIT_LONG_VRS = (b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN")
#: float / double float pixel data, and pixel data in big endian files (not checked further)
_OTHER_PIXEL_TAGS = (b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00", b"\x7f\xe0\x00\x10")
_DEFLATED = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian (in the uncompressed file meta)
_SEQ_DELIM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
HEAD_BYTES = 1 << 18  # where the PixelData element is looked for (headers are far smaller)
TAIL_BYTES = 1 << 16  # where the end of encapsulated pixel data is looked for


def pixel_data_problem(path: str) -> Optional[str]:
    """One line saying how the file's pixel data is cut short, or None (complete, or nothing to tell here). Call it
    for a file whose header describes an image (Rows/Columns)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(min(size, HEAD_BYTES))
        if _DEFLATED in head[:4096]:
            return None  # a deflated data set: its tags are compressed, the read will tell
        i = head.rfind(_PIXEL_TAG)  # the last one: PixelData is the last top-level element in practice
        if i < 132:
            if size <= HEAD_BYTES and not any(t in head for t in _OTHER_PIXEL_TAGS):
                return f"truncated DICOM: no pixel data (the file ends after {size} bytes)"
            return None  # a header larger than what was read: the full read will tell
        if head[i + 4:i + 6] in _EXPLICIT_LONG_VRS:
            length, start = int.from_bytes(head[i + 8:i + 12], "little"), i + 12
        else:
            length, start = int.from_bytes(head[i + 4:i + 8], "little"), i + 8
        if start > size:
            return f"truncated DICOM: the file ends inside the pixel data element ({size} bytes)"
        if length == 0xFFFFFFFF:  # encapsulated: items, then the sequence delimiter
            f.seek(max(start, size - TAIL_BYTES))
            if _SEQ_DELIM not in f.read():
                return (f"truncated DICOM: the compressed pixel data has no end ({size} bytes; sequence delimiter "
                        "missing)")
            return None
    if start + length > size:
        return (f"truncated DICOM: the pixel data needs {length} bytes, the file ends {start + length - size} bytes "
                "short")
    return None
