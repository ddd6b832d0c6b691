"""Opening a DICOM file safely, and what the reader knows about a data set before its pixels.

- :func:`is_dicom_file` (content sniffing: the DICM preamble, or a plausible raw data set), ``_check_path`` (exists, a
  regular readable non-empty file) and ``_dcmread`` (pydicom with typed errors; a preamble-less data set read with
  ``force`` gets the transfer syntax its encoding implies);
- ``_check_deflate``: a Deflated Explicit VR Little Endian file is measured inflated before pydicom inflates it whole;
- ``_non_image_kind`` / ``_is_image_sop_class``: SR, presentation states, DICOMDIR and other objects without an image;
- :func:`scrub`: a library's message made fit for a user (one line, no library file-system paths);
- small value helpers shared by the header and pixel readers (transfer syntax UID and name, multi-values, floats).

Importing this module (and so :mod:`elvis_core.io.dicom`) silences pydicom's own log unless ``ELVIS_PYDICOM_LOG=1``.
The public readers are in :mod:`elvis_core.io.dicom`, which re-exports the names here.
"""

from __future__ import annotations

import logging
import os
from typing import Any, List, Optional

from elvis_core.errors import DicomReadError
from elvis_core.io.dicom_header import is_fatal
from elvis_core.io.limits import limits, mib

# pydicom logs decoder failures with full tracebacks (logger.exception) before our SimpleITK fallback succeeds, and
# warns about every odd value. Our reader reports problems itself (typed errors, Radiograph.warnings, debug log), so
# pydicom's own log is silenced unless ELVIS_PYDICOM_LOG=1.
import pydicom.config  # imported before the level is set: pydicom.config resets its logger's level on import

if os.environ.get("ELVIS_PYDICOM_LOG", "") != "1":
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    # no UserWarning per odd header value while reading (thread-safe, unlike warnings.catch_warnings in workers)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

#: SOP classes that carry no image: a human-readable name for the error message
_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88": "Structured Report",
    "1.2.840.10008.5.1.4.1.1.11": "Presentation State",
    "1.2.840.10008.5.1.4.1.1.104": "Encapsulated Document",
    "1.2.840.10008.5.1.4.1.1.481": "RT object",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data / Registration / Segmentation",
    "1.2.840.10008.5.1.4.1.1.9": "Waveform",
    "1.2.840.10008.1.3.10": "Media Storage Directory (DICOMDIR)",
}

#: SOP classes under a non-image prefix that do hold an image
_IMAGE_SOP_EXCEPTIONS = ("1.2.840.10008.5.1.4.1.1.481.1",)  # RT Image


def _non_image_kind(ds) -> Optional[str]:
    fm = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or (fm.get("MediaStorageSOPClassUID", "") if fm is not None else "") or "")
    if sop in _IMAGE_SOP_EXCEPTIONS:
        return None
    for prefix, name in _NON_IMAGE_SOP_CLASSES.items():
        if sop == prefix or sop.startswith(prefix + "."):
            return name
    modality = str(ds.get("Modality", "") or "")
    if modality in ("SR", "PR", "KO", "DOC", "RTPLAN", "RTSTRUCT", "RTRECORD", "REG", "SEG"):
        return {"SR": "Structured Report", "PR": "Presentation State", "KO": "Key Object Selection"}.get(
            modality, f"{modality} object"
        )
    return None


def _is_image_sop_class(ds) -> bool:
    fm = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or (fm.get("MediaStorageSOPClassUID", "") if fm is not None else "") or "")
    return sop.startswith("1.2.840.10008.5.1.4.1.1.") and _non_image_kind(ds) is None


def _check_path(path: os.PathLike | str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DicomReadError("no such file", path)
    if os.path.isdir(path):
        raise DicomReadError("is a folder, not a DICOM file", path)
    from elvis_core.io.paths import require_regular_file

    require_regular_file(path, DicomReadError)  # a FIFO would block, /dev/zero read for ever
    if not os.access(path, os.R_OK):
        raise DicomReadError("permission denied", path)
    if os.path.getsize(path) == 0:
        raise DicomReadError("empty file (0 bytes)", path)
    return path


def is_dicom_file(path: os.PathLike | str) -> bool:
    """True when the file has the DICM preamble, or (no preamble) starts with a plausible group-0002/0008 element."""
    from elvis_core.io.paths import is_regular_file

    if not is_regular_file(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    # preamble-less DICOM (raw data set): group 0x0002 or 0x0008 at byte 0, little or big endian
    if len(head) < 8:
        return False
    elements = (0x0000, 0x0001, 0x0002, 0x0005, 0x0008, 0x0010, 0x0012, 0x0013, 0x0016, 0x0018)
    le_group, le_elem = int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little")
    be_group, be_elem = int.from_bytes(head[0:2], "big"), int.from_bytes(head[2:4], "big")
    return (le_group in (0x0002, 0x0008) and le_elem in elements) or (be_group == 0x0008 and be_elem in elements)


def _dcmread(path: str, stop_before_pixels: bool = False, specific_tags=None, defer_size=None):
    import pydicom
    from pydicom.errors import InvalidDicomError

    _check_deflate(path)
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags,
                               defer_size=defer_size)
    except InvalidDicomError:
        if not is_dicom_file(path):
            raise DicomReadError("not a DICOM file (no DICM preamble and no DICOM header)", path) from None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags,
                                 defer_size=defer_size, force=True)
        except BaseException as err:  # noqa: BLE001
            if is_fatal(err):
                raise
            raise DicomReadError(f"not a readable DICOM file ({type(err).__name__})", path) from None
        if len(ds) == 0:
            raise DicomReadError("not a DICOM file (no DICOM elements)", path)
        _set_transfer_syntax_from_encoding(ds)
        return ds
    except (EOFError, OSError) as err:
        raise DicomReadError(f"truncated or unreadable DICOM file ({type(err).__name__}: {_short(err, path=path)})",
                             path) from None
    except MemoryError:
        raise DicomReadError("header too large to read (out of memory)", path) from None
    except BaseException as err:  # noqa: BLE001 - pydicom raises many types on corrupt input
        if is_fatal(err):
            raise
        raise DicomReadError(f"corrupt DICOM header ({type(err).__name__}: {_short(err, path=path)})", path) from None


_DEFLATED = b"1.2.840.10008.1.2.1.99"
_LONG_VRS = (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV")


def _check_deflate(path: str) -> None:
    """A Deflated Explicit VR Little Endian file is inflated whole by pydicom: measure the inflated size first (in
    1 MiB steps, nothing kept) and refuse one larger than ``max_inflated_bytes`` (a 1.4 MB file may inflate to GBs)."""
    import zlib

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if len(head) < 144 or head[128:132] != b"DICM" or _DEFLATED not in head:
                return
            pos = 132
            while pos + 8 <= len(head) and int.from_bytes(head[pos:pos + 2], "little") == 0x0002:
                vr = head[pos + 4:pos + 6]
                if vr in _LONG_VRS:
                    pos += 12 + int.from_bytes(head[pos + 8:pos + 12], "little")
                else:
                    pos += 8 + int.from_bytes(head[pos + 6:pos + 8], "little")
            f.seek(pos)
            limit = min(limits().max_decoded_bytes, limits().max_inflated_bytes)
            d = zlib.decompressobj(-zlib.MAX_WBITS)
            total = 0
            chunk = b""
            while not d.eof:
                if not chunk:
                    chunk = f.read(1 << 16)
                # with nothing left to read, keep asking: zlib may still hold output for input it has consumed
                out = d.decompress(chunk, 1 << 20)
                chunk = d.unconsumed_tail
                total += len(out)
                if total > limit:
                    raise DicomReadError(f"deflated data set inflates to more than {mib(limit)} (the limit, "
                                         "ELVIS_MAX_INFLATED_MB): refused", path)
                if not out and not chunk and f.tell() >= os.fstat(f.fileno()).st_size:
                    break
    except OSError:
        return  # the reader proper reports it
    except zlib.error:
        raise DicomReadError("deflated data set is corrupt (zlib error)", path) from None


def _set_transfer_syntax_from_encoding(ds) -> None:
    """A raw data set (no file meta) has no Transfer Syntax UID: give it the one its encoding implies, so that
    pydicom can decode its native pixel data."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    fm = getattr(ds, "file_meta", None)
    if fm is not None and fm.get("TransferSyntaxUID", None):
        return
    try:
        implicit, little = ds.original_encoding
    except Exception:  # noqa: BLE001
        return
    if implicit is None or little is None:
        return
    if fm is None:
        ds.file_meta = fm = FileMetaDataset()
    fm.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )


def _short(err: BaseException, n: int = 160, path: Optional[str] = None) -> str:
    return scrub(str(err), n, path)


_LIB_PATH_RE = None


def scrub(text: str, n: int = 160, path: Optional[str] = None) -> str:
    """A library's message fit for a user: one line, at most ``n`` characters, with file system paths other than
    ``path`` (the user's own file) replaced by ``<path>`` (SimpleITK's build tree, site-packages, ...)."""
    import re

    global _LIB_PATH_RE
    if _LIB_PATH_RE is None:
        _LIB_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][\w.+\-@]+){2,}(?::\d+)?")
    text = text.replace("\n", " ").replace("\r", " ")
    if path:
        text = text.replace(path, "\x00")
    text = _LIB_PATH_RE.sub("<path>", text)
    if path:
        text = text.replace("\x00", path)
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _ts_uid(ds) -> str:
    fm = getattr(ds, "file_meta", None)
    return str(fm.get("TransferSyntaxUID", "")) if fm is not None else ""


def _ts_name(uid: str) -> str:
    if not uid:
        return ""
    from pydicom.uid import UID

    try:
        return UID(uid).name
    except Exception:  # noqa: BLE001
        return uid


def _multi(value) -> List[Any]:
    if value is None:
        return []
    try:
        from pydicom.multival import MultiValue

        if isinstance(value, (list, tuple, MultiValue)):
            return list(value)
    except ImportError:  # pragma: no cover
        pass
    return [value]


def _floats(value) -> List[float]:
    out = []
    for v in _multi(value):
        try:
            out.append(float(v))
        except (TypeError, ValueError, OverflowError):
            out.append(float("nan"))
    return out
