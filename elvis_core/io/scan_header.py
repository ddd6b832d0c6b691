"""DICOM header reading for the study scan: the few tags :mod:`elvis_core.io.studies` groups by, read straight
from the file's first bytes (the scan's hot path), with pydicom as the fallback for anything unusual. Never reads
pixel data."""

from __future__ import annotations

from typing import Optional

_SCAN_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "SeriesNumber",
    "InstanceNumber",
    "Modality",
    "ViewPosition",
    "Rows",
    "Columns",
    "NumberOfFrames",
]


# ---- fast header parser (the scan's hot path; pydicom is the fallback for anything unusual) -------------------- #

_FAST_TAGS = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080060: "Modality",
    0x0008103E: "SeriesDescription",
    0x00185101: "ViewPosition",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
}
_LAST_FAST_TAG = 0x00280011
_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"}
_US_TAGS = {0x00280010, 0x00280011}
_INT_STR_TAGS = {0x00200011, 0x00200013, 0x00280008}
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"


class _FastHeader(dict):
    """The few scan tags as a dict that answers like a pydicom Dataset for ``get`` / ``in`` / ``file_meta``."""

    file_meta: dict = {}


class _Unusual(Exception):
    """The fast parser met something it does not handle: use pydicom."""


def _skip_undefined(buf: bytes, pos: int, explicit: bool, end_tag: int) -> int:
    """Skip elements/items from ``pos`` until the delimiter ``end_tag`` (group<<16|elem); returns the position after
    it."""
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _Unusual
        group = buf[pos] | buf[pos + 1] << 8
        elem = buf[pos + 2] | buf[pos + 3] << 8
        tag = group << 16 | elem
        if group == 0xFFFE:
            length = int.from_bytes(buf[pos + 4:pos + 8], "little")
            pos += 8
            if tag == end_tag:
                return pos
            if tag == 0xFFFEE000:  # item
                pos = _skip_undefined(buf, pos, explicit, 0xFFFEE00D) if length == 0xFFFFFFFF else pos + length
                continue
            raise _Unusual
        pos, _vr, length = _element_head(buf, pos, explicit)
        if length == 0xFFFFFFFF:
            pos = _skip_undefined(buf, pos, explicit, 0xFFFEE0DD)
        else:
            pos += length


def _element_head(buf: bytes, pos: int, explicit: bool):
    """(value position, VR bytes or None, length) of the element whose tag starts at ``pos``."""
    if explicit:
        vr = buf[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(buf):
                raise _Unusual
            return pos + 12, vr, int.from_bytes(buf[pos + 8:pos + 12], "little")
        if not (len(vr) == 2 and 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise _Unusual
        return pos + 8, vr, buf[pos + 6] | buf[pos + 7] << 8
    return pos + 8, None, int.from_bytes(buf[pos + 4:pos + 8], "little")


def _fast_scan_header(path: str, chunk: int = 8192) -> Optional[_FastHeader]:
    """Parse the scan tags straight from the file's first bytes (explicit/implicit VR little endian with a DICM
    preamble). None when the file needs pydicom (no preamble, big endian, deflate, a header longer than the chunk,
    anything odd)."""
    with open(path, "rb") as f:
        buf = f.read(chunk)
        if len(buf) < 144 or buf[128:132] != b"DICM":
            return None
        try:
            return _parse_fast(buf)
        except _Unusual:
            pass
        buf += f.read(262144 - chunk)  # long headers (big sequences before the image tags): one more try
    try:
        return _parse_fast(buf)
    except (_Unusual, IndexError, ValueError):
        return None


def _parse_fast(buf: bytes) -> _FastHeader:
    n = len(buf)
    pos = 132
    ts = None
    meta = {}
    # file meta group: always explicit VR little endian
    while pos + 8 <= n and buf[pos] | buf[pos + 1] << 8 == 0x0002:
        elem = buf[pos + 2] | buf[pos + 3] << 8
        vpos, _vr, length = _element_head(buf, pos, True)
        if length == 0xFFFFFFFF or vpos + length > n:
            raise _Unusual
        if elem == 0x0010:
            ts = buf[vpos:vpos + length].rstrip(b"\x00 ").decode("ascii", "replace")
        elif elem == 0x0002:
            meta["MediaStorageSOPClassUID"] = buf[vpos:vpos + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos = vpos + length
    if ts not in (_EXPLICIT_LE, _IMPLICIT_LE) and not (ts or "").startswith("1.2.840.10008.1.2.4.") and ts not in (
        "1.2.840.10008.1.2.5",
    ):
        raise _Unusual  # big endian, deflate, unknown: pydicom
    explicit = ts != _IMPLICIT_LE
    out = _FastHeader()
    out.file_meta = meta
    out["_TransferSyntaxUID"] = ts
    while True:
        if pos + 8 > n:
            raise _Unusual  # header continues past what we read (or the file is truncated): pydicom decides
        group = buf[pos] | buf[pos + 1] << 8
        elem = buf[pos + 2] | buf[pos + 3] << 8
        tag = group << 16 | elem
        if tag > _LAST_FAST_TAG:
            break
        vpos, vr, length = _element_head(buf, pos, explicit)
        if length == 0xFFFFFFFF:
            pos = _skip_undefined(buf, vpos, explicit, 0xFFFEE0DD)
            continue
        if vpos + length > n:
            raise _Unusual
        name = _FAST_TAGS.get(tag)
        if name is not None:
            raw = buf[vpos:vpos + length]
            if tag in _US_TAGS:
                if length != 2:
                    raise _Unusual
                out[name] = raw[0] | raw[1] << 8
            else:
                text = raw.rstrip(b"\x00 ").lstrip(b" ")
                try:
                    value = text.decode("utf-8")
                except UnicodeDecodeError:
                    value = text.decode("latin-1")
                if tag in _INT_STR_TAGS:
                    try:
                        out[name] = int(value.split("\\")[0]) if value else None
                    except ValueError:
                        raise _Unusual from None
                else:
                    out[name] = value.split("\\")[0] if tag != 0x0008103E else value
        pos = vpos + length
    return out


def _read_scan_header(path: str):
    fast = _fast_scan_header(path)
    if fast is not None:
        return fast
    return _read_scan_header_pydicom(path)


def _read_scan_header_pydicom(path: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    from elvis_core.io.dicom_open import _check_deflate, is_dicom_file

    _check_deflate(path)

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_SCAN_TAGS)
    except InvalidDicomError:
        if not is_dicom_file(path):
            raise
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_SCAN_TAGS, force=True)
        if len(ds) == 0:
            raise
        return ds
