"""Checks on everything a DICOMweb server sends, before it is used, shown or cached.

- :func:`clean_text`: a server-controlled string made safe for a terminal, a TSV or a dialog (control characters,
  escape sequences, tabs, newlines and bidirectional overrides become spaces; length capped).
- :func:`json_depth` / :func:`parse_json`: a linear scan for the nesting depth before ``json.loads`` (which recurses
  and raises RecursionError on a 100 000-deep answer), then typed access.
- :func:`qido_items` and :func:`attr_str` / :func:`attr_int` / :func:`attr_uid`: every QIDO field checked for its
  type (a list of objects, each attribute an object with a ``Value`` list of the VR's type).
- :func:`single_part`: strict ``multipart/related`` parsing (a boundary is required, the closing delimiter must be
  there: a truncated answer is not a part).
- :func:`check_instance`: the bytes of one instance parse as DICOM, are not truncated (pixel data of the size the
  header says, encapsulated fragments complete) and carry the SOP Instance UID that was asked for.
"""

from __future__ import annotations

import io
import json
import re
import struct
from typing import Any, Dict, List

from elvis_core.errors import ElvisError
from elvis_core.io.safe_json import json_depth  # noqa: F401 - one scanner for every JSON we read

_CTRL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?|[\x00-\x1f\x7f-\x9f"
                   r"\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class ServerAnswerError(ElvisError):
    """The server's answer is malformed (wrong type, too deep, not DICOM, truncated, another instance)."""


def clean_text(value: Any, max_len: int = 200) -> str:
    """A server string safe for a terminal or a TSV: escape sequences and control characters (tabs and newlines
    included) become one space, the result is stripped and at most ``max_len`` characters."""
    s = value if isinstance(value, str) else str(value)
    s = _CTRL.sub(" ", s[: max_len * 4])
    s = re.sub(r" {2,}", " ", s).strip()
    return s[:max_len]


def parse_json(data: bytes, what: str, max_depth: int) -> Any:
    """``json.loads`` after the depth check; every failure is a :class:`ServerAnswerError`."""
    if json_depth(data, max_depth) > max_depth:
        raise ServerAnswerError(f"{what}: the answer is nested more than {max_depth} levels deep")
    try:
        return json.loads(data)
    except (ValueError, RecursionError, UnicodeDecodeError) as err:
        raise ServerAnswerError(f"{what}: unreadable answer from the server (not DICOM JSON: "
                                f"{clean_text(type(err).__name__)})") from None


def qido_items(answer: Any, what: str, max_items: int) -> List[Dict[str, Any]]:
    """The answer must be a list of objects (null / empty answer = no results), at most ``max_items``."""
    if answer is None or answer == b"" or answer == "":
        return []
    if not isinstance(answer, list):
        raise ServerAnswerError(f"{what}: the answer is a {type(answer).__name__}, not a list of results")
    if len(answer) > max_items:
        raise ServerAnswerError(f"{what}: the server listed {len(answer)} results, more than the limit of {max_items}")
    for k, item in enumerate(answer):
        if not isinstance(item, dict):
            raise ServerAnswerError(f"{what}: result {k + 1} is a {type(item).__name__}, not an object")
    return answer


def _first(item: Dict[str, Any], tag: str, what: str) -> Any:
    a = item.get(tag)
    if a is None:
        return None
    if not isinstance(a, dict):
        raise ServerAnswerError(f"{what}: attribute {tag} is a {type(a).__name__}, not an object")
    v = a.get("Value")
    if v is None:
        return None
    if not isinstance(v, list):
        raise ServerAnswerError(f"{what}: attribute {tag} has a Value that is not a list")
    return v[0] if v else None


def attr_str(item: Dict[str, Any], tag: str, what: str, max_len: int = 200) -> str:
    v = _first(item, tag, what)
    if v is None:
        return ""
    if isinstance(v, dict):  # PN
        v = v.get("Alphabetic", "")
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ServerAnswerError(f"{what}: attribute {tag} is a {type(v).__name__}, not text")
    return clean_text(v, max_len)


def attr_strs(item: Dict[str, Any], tag: str, what: str, max_n: int = 32) -> tuple:
    a = item.get(tag)
    if a is None:
        return ()
    if not isinstance(a, dict):
        raise ServerAnswerError(f"{what}: attribute {tag} is a {type(a).__name__}, not an object")
    v = a.get("Value") or []
    if not isinstance(v, list):
        raise ServerAnswerError(f"{what}: attribute {tag} has a Value that is not a list")
    out = []
    for x in v[:max_n]:
        if isinstance(x, bool) or not isinstance(x, (str, int, float)):
            raise ServerAnswerError(f"{what}: attribute {tag} holds a {type(x).__name__}, not text")
        out.append(clean_text(x, 16))
    return tuple(out)


def attr_int(item: Dict[str, Any], tag: str, what: str, lo: int = 0, hi: int = 10 ** 7) -> int:
    v = _first(item, tag, what)
    if v is None or v == "":
        return 0
    if isinstance(v, bool):
        raise ServerAnswerError(f"{what}: attribute {tag} is a boolean, not a number")
    if isinstance(v, str):
        if len(v) > 12 or not v.strip().lstrip("+-").isdigit():
            raise ServerAnswerError(f"{what}: attribute {tag} is {clean_text(v, 20)!r}, not a number")
        v = int(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")) or v != int(v):
            raise ServerAnswerError(f"{what}: attribute {tag} is not a whole number")
        v = int(v)
    if not isinstance(v, int):
        raise ServerAnswerError(f"{what}: attribute {tag} is a {type(v).__name__}, not a number")
    if not lo <= v <= hi:
        raise ServerAnswerError(f"{what}: attribute {tag} = {v} is outside {lo}..{hi}")
    return v


def attr_uid(item: Dict[str, Any], tag: str, what: str, required: bool = True) -> str:
    v = _first(item, tag, what)
    if v is None:
        if required:
            raise ServerAnswerError(f"{what}: a result has no {tag} UID")
        return ""
    if not isinstance(v, str) or not v or len(v) > 64 or not _UID.match(v.strip()):
        raise ServerAnswerError(f"{what}: the server returned an invalid UID in {tag} ({clean_text(v, 70)!r})")
    return v.strip()


def study_hit(item: Dict[str, Any], what: str = "search for studies"):
    """A :class:`~elvis_core.pacs.StudyHit` from one QIDO study result: every field typed and sanitised (any code
    that reads QIDO study results should build its hits here)."""
    from elvis_core.pacs import StudyHit

    if not isinstance(item, dict):
        raise ServerAnswerError(f"{what}: a result is a {type(item).__name__}, not an object")
    return StudyHit(study_uid=attr_uid(item, "0020000D", what), patient_id=attr_str(item, "00100020", what, 64),
                    accession=attr_str(item, "00080050", what, 16), study_date=attr_str(item, "00080020", what, 8),
                    modalities=attr_strs(item, "00080061", what), description=attr_str(item, "00081030", what, 64),
                    n_series=attr_int(item, "00201206", what), n_instances=attr_int(item, "00201208", what))


# -- WADO-RS multipart -----------------------------------------------------------------------------------------
def _content_type_params(ctype: str) -> tuple:
    media, _, rest = (ctype or "").partition(";")
    params: Dict[str, str] = {}
    for m in re.finditer(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*;?', rest):
        val = m.group(2).strip()
        if val.startswith('"'):
            val = val[1:-1]
        params[m.group(1).lower()] = val
    return media.strip().lower(), params


def single_part(body: bytes, content_type: str, what: str) -> bytes:
    """The one part of a ``multipart/related`` answer, strictly: a boundary (1..70 characters), an opening
    delimiter, part headers, and the closing delimiter (a truncated answer has none). More than one part, or a part
    that is not ``application/dicom``, is refused."""
    media, params = _content_type_params(content_type)
    if media != "multipart/related":
        raise ServerAnswerError(f"{what}: the answer is {clean_text(media, 60)!r}, not multipart/related")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 70 or any(ord(c) < 32 or ord(c) > 126 for c in boundary):
        raise ServerAnswerError(f"{what}: the multipart answer has no valid boundary")
    b = boundary.encode("ascii")
    opening = b"--" + b
    start = 0 if body.startswith(opening) else body.find(b"\r\n" + opening)
    if start < 0:
        raise ServerAnswerError(f"{what}: the multipart answer does not start with its boundary")
    start = start + len(opening) + (0 if body.startswith(opening) else 2)
    head_end = body.find(b"\r\n\r\n", start)
    if head_end < 0:
        raise ServerAnswerError(f"{what}: the multipart answer is truncated (no part headers)")
    headers = body[start:head_end].decode("latin-1").split("\r\n")
    ptype = ""
    for h in headers[1:] if headers and headers[0].strip() == "" else headers:
        name, _, val = h.partition(":")
        if name.strip().lower() == "content-type":
            ptype = val.split(";")[0].strip().lower()
    if ptype and ptype != "application/dicom":
        raise ServerAnswerError(f"{what}: the part is {clean_text(ptype, 60)!r}, not application/dicom")
    data_start = head_end + 4
    end = body.find(b"\r\n" + opening, data_start)
    if end < 0:
        raise ServerAnswerError(f"{what}: the multipart answer is truncated (no closing boundary)")
    after = body[end + 2 + len(opening): end + 4 + len(opening)]
    if after != b"--":
        raise ServerAnswerError(f"{what}: the answer holds more than one part (one instance was asked for)")
    return body[data_start:end]


# -- DICOM bytes -----------------------------------------------------------------------------------------------
def check_instance(data: bytes, sop_uid: str, what: str, max_bytes: int, expect_image: bool = False):
    """The parsed dataset of one instance's bytes, or :class:`ServerAnswerError` when they are not a complete DICOM
    instance with the asked-for SOP Instance UID (``expect_image``: a CR/DX series, so pixel data must be there)."""
    import warnings

    import pydicom
    from pydicom.errors import InvalidDicomError

    if len(data) > max_bytes:
        raise ServerAnswerError(f"{what}: the instance is larger than {max_bytes >> 20} MiB")
    if len(data) < 132:
        raise ServerAnswerError(f"{what}: the server sent {len(data)} bytes, not a DICOM instance")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
            ds.PixelData if "PixelData" in ds else None  # noqa: B018 - force the value to be read
            for _elem in ds.iterall():  # every sequence read to its end
                pass
        if any("end of file" in str(w.message).lower() or "delimiter" in str(w.message).lower() for w in caught):
            raise EOFError("ended before a delimiter")
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError,
            OverflowError, UnicodeError, RecursionError, MemoryError, struct.error) as err:
        raise ServerAnswerError(f"{what}: the server sent bytes that are not a complete DICOM instance "
                                f"({clean_text(type(err).__name__, 40)})") from None
    got = str(getattr(ds, "SOPInstanceUID", "") or "")
    if got != sop_uid:
        raise ServerAnswerError(f"{what}: the server sent another instance than asked for ({sop_uid})")
    if expect_image and "PixelData" not in ds:
        raise ServerAnswerError(f"{what}: the instance is truncated or not an image (no pixel data)")
    _check_pixels(ds, what)
    return ds


def _check_pixels(ds, what: str) -> None:
    if "PixelData" not in ds:
        if "Rows" in ds and not any(k in ds for k in ("FloatPixelData", "DoubleFloatPixelData")):
            raise ServerAnswerError(f"{what}: the instance is truncated (an image header without pixel data)")
        return
    px = ds.PixelData
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits, spp = int(ds.BitsAllocated), int(getattr(ds, "SamplesPerPixel", 1) or 1)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise ServerAnswerError(f"{what}: the instance has pixel data without a valid image header") from None
    if syntax is not None and syntax.is_encapsulated:
        # items (FFFE,E000) must tile the value exactly: a truncated fragment claims more bytes than are left
        pos, n, data = 0, 0, bytes(px)
        endian = "<"
        while pos + 8 <= len(data):
            group, elem, length = struct.unpack_from(endian + "HHI", data, pos)
            if (group, elem) != (0xFFFE, 0xE000) or pos + 8 + length > len(data):
                raise ServerAnswerError(f"{what}: the instance's compressed pixel data is truncated or damaged")
            pos += 8 + length
            n += 1
        if pos != len(data) or n < 2:  # the offset table, then at least one fragment
            raise ServerAnswerError(f"{what}: the instance's compressed pixel data is truncated or damaged")
        return
    expected = (rows * cols * frames * spp * bits + 7) // 8
    if len(px) < expected:
        raise ServerAnswerError(f"{what}: the instance is truncated ({len(px)} of {expected} pixel bytes)")


