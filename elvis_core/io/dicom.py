"""DICOM → :class:`~elvis_core.io.radiograph.Radiograph` (DESIGN.md, "The pixel path", step 1).

pydicom decodes first (with the pylibjpeg plugins for JPEG / JPEG-LS / JPEG 2000 / RLE); SimpleITK is the fallback for
what pydicom cannot decode. Whatever decoder ran, the result follows the Radiograph contract: float32 modality values,
higher = brighter (MONOCHROME1 inverted exactly once), windows and VOI LUT in the same sense.

Errors are :class:`DicomReadError` / :class:`UnsupportedDicomError` naming the file and the problem; messages never
contain patient identifiers.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from elvis_core.errors import DicomReadError, UnsupportedDicomError
from elvis_core.io.dicom_header import ImageHeader, codestream_shapes, get_str, image_header, is_fatal, sanitize
from elvis_core.io.limits import check_frame, limits, mib
from elvis_core.io.radiograph import Radiograph, VoiLut, Window

log = logging.getLogger(__name__)

# pydicom logs decoder failures with full tracebacks (logger.exception) before our SimpleITK fallback succeeds, and
# warns about every odd value. Our reader reports problems itself (typed errors, Radiograph.warnings, debug log), so
# pydicom's own log is silenced unless ELVIS_PYDICOM_LOG=1.
import pydicom.config  # noqa: E402 - imported first: pydicom.config resets its logger's level on import

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

#: header keywords the header-only reads need (studies scan, inspect)
HEADER_KEYWORDS = (
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
    "PhotometricInterpretation",
    "BitsStored",
    "BitsAllocated",
    "SamplesPerPixel",
    "Manufacturer",
    "BodyPartExamined",
    "StudyDate",
    "StudyDescription",
)

_META_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "ViewPosition",
    "Rows",
    "Columns",
    "PhotometricInterpretation",
    "BitsStored",
    "BitsAllocated",
    "PixelRepresentation",
    "SamplesPerPixel",
    "Manufacturer",
    "BodyPartExamined",
    "SeriesDescription",
)


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


def read_header(path: os.PathLike | str) -> Dict[str, Any]:
    """Fast header-only read (no pixel data). Returns non-identifying keys only: the UIDs, Modality, ViewPosition,
    Rows, Columns, NumberOfFrames, PhotometricInterpretation, BitsStored, SamplesPerPixel, Manufacturer,
    BodyPartExamined, SeriesDescription, SeriesNumber, InstanceNumber, StudyDate, StudyDescription, TransferSyntaxUID,
    TransferSyntaxName, HasPixelData, ImageKind (None for images, else e.g. "Structured Report")."""
    path = _check_path(path)
    # defer_size: the pixel data element is located (so HasPixelData is true to the file) but never loaded
    ds = _dcmread(path, defer_size=256, specific_tags=list(HEADER_KEYWORDS) + [0x7FE00010])
    sanitize(ds, path, required=frozenset())
    out: Dict[str, Any] = {}
    for kw in HEADER_KEYWORDS:
        v = ds.get(kw, None)
        if v is None or v == "":
            continue
        out[kw] = _plain(v)
    if "NumberOfFrames" in out:
        try:
            out["NumberOfFrames"] = int(out["NumberOfFrames"])
        except (TypeError, ValueError, OverflowError):
            out["NumberOfFrames"] = 1
    uid = _ts_uid(ds)
    out["TransferSyntaxUID"] = uid
    out["TransferSyntaxName"] = _ts_name(uid)
    out["HasPixelData"] = "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
    out["ImageKind"] = _non_image_kind(ds)
    return out


def _plain(v: Any) -> Any:
    """A JSON-friendly plain value (pydicom IS/DS/UID/PersonName subclasses → int/float/str); a damaged value
    (a sequence where a value belongs, items that cannot be decoded) becomes a short placeholder."""
    try:
        return _plain_value(v)
    except BaseException as err:  # noqa: BLE001
        if is_fatal(err):
            raise
        return "<unreadable>"


def _plain_value(v: Any) -> Any:
    from pydicom.sequence import Sequence

    if isinstance(v, Sequence):
        return f"<sequence of {len(v)} item(s)>"
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    try:
        from pydicom.multival import MultiValue

        if isinstance(v, (MultiValue, list, tuple)):
            return [_plain_value(x) for x in v]
    except ImportError:  # pragma: no cover
        pass
    return str(v)


# ---------------------------------------------------------------------------------------------------------------- #
# pixel reading
# ---------------------------------------------------------------------------------------------------------------- #


def _modality_range(ds, hdr: ImageHeader, pixels: np.ndarray) -> Tuple[float, float]:
    """Range of modality values: the Modality LUT's output range, else the stored range through rescale."""
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        try:
            table = _lut_data(ds.ModalityLUTSequence[0], _big_endian(ds))
        except (TypeError, ValueError, IndexError, OverflowError):
            table = None
        if table is not None and table.size:
            return float(table.min()), float(table.max())
    lo, hi = hdr.stored_range()
    slope, intercept = hdr.rescale_slope, hdr.rescale_intercept
    a, b = sorted((lo * slope + intercept, hi * slope + intercept))
    pmin, pmax = (float(pixels.min()), float(pixels.max())) if pixels.size else (a, b)
    # a header that lies about BitsStored: fall back to the actual data range so the pivot keeps values in range
    if pmin < a or pmax > b:
        return min(a, pmin), max(b, pmax)
    return a, b


def _lut_data(item, big_endian: bool = False) -> Optional[np.ndarray]:
    desc = item.get("LUTDescriptor", None)
    data = item.get("LUTData", None)
    if desc is None or data is None:
        return None
    desc = _multi(desc)
    n = int(desc[0]) or 65536
    bits = int(desc[2]) if len(desc) > 2 else 16
    if isinstance(data, (bytes, bytearray)):
        dtype = "u1" if bits <= 8 and len(data) == n else (">u2" if big_endian else "<u2")
        arr = np.frombuffer(bytes(data), dtype=dtype).astype(np.float64)
    else:
        arr = np.asarray(_multi(data), dtype=np.float64)
    return arr[:n] if arr.size >= n else arr


def _big_endian(ds) -> bool:
    return _ts_uid(ds) == "1.2.840.10008.1.2.2"


def _lut_first_mapped(item, ds) -> float:
    desc = _multi(item.LUTDescriptor)
    first = int(desc[1])
    # the first mapped value is US or SS by the pixel representation; an unsigned read of a negative value wraps
    if get_str(ds, "PixelRepresentation", "0") == "1" and first >= 2**15:
        first -= 2**16
    return float(first)


def _decode_pydicom(ds, path: str, frame: int, n_frames: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    from elvis_core.io.native_quiet import quiet_fd2

    with quiet_fd2():  # a native decoder's own stderr (pylibjpeg-rle's Rust panic + backtrace) never reaches the user
        if n_frames > 1:
            return pixel_array(ds, index=frame)
        return ds.pixel_array


#: the SimpleITK fallback, run in a child process: GDCM allocates without bound on some corrupt streams (a
#: bit-flipped 256 x 1024 JPEG took 860 MB), and nothing in its API caps that. The child sets RLIMIT_AS first.
_SITK_CHILD = r"""
import resource, sys
vsz = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
extra = int(sys.argv[4])
try:
    resource.setrlimit(resource.RLIMIT_AS, (vsz + extra, vsz + extra))
except (ValueError, OSError):
    pass
import numpy as np
import SimpleITK as sitk
vsz = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
try:
    resource.setrlimit(resource.RLIMIT_AS, (vsz + extra, vsz + extra))
except (ValueError, OSError):
    pass
path, frame, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    img = reader.Execute()
    arr = sitk.GetArrayFromImage(img)
    if img.GetDimension() == 3:
        if frame >= arr.shape[0]:
            sys.stdout.write("FRAMES %d" % arr.shape[0])
            sys.exit(3)
        arr = arr[frame]
    np.save(out, np.ascontiguousarray(arr))
except MemoryError:
    sys.stdout.write("MEMORY")
    sys.exit(4)
except Exception as err:
    sys.stdout.write("ERROR %s: %s" % (type(err).__name__, str(err)[-300:]))
    sys.exit(2)
"""


def _decode_sitk(path: str, frame: int, expected_bytes: int = 0) -> np.ndarray:
    """Decode with SimpleITK in a child process whose address space is capped (see ``_SITK_CHILD``)."""
    import subprocess
    import sys
    import tempfile

    headroom = 768 << 20
    extra = headroom + 4 * max(0, int(expected_bytes))
    with tempfile.TemporaryDirectory(prefix="elvis-sitk-") as tmp:
        out = os.path.join(tmp, "frame.npy")
        try:
            proc = subprocess.run([sys.executable, "-c", _SITK_CHILD, path, str(int(frame)), out, str(extra)],
                                  capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise RuntimeError("SimpleITK did not finish within 300 s") from None
        msg = (proc.stdout or "").strip()
        if proc.returncode == 3 and msg.startswith("FRAMES "):
            raise DicomReadError(f"frame {frame} out of range (the file has {msg.split()[1]} frames)", path)
        if proc.returncode == 4 or (proc.returncode != 0 and "bad_alloc" in (proc.stderr or "")):
            raise RuntimeError(f"SimpleITK needed more than {mib(extra)} of memory for this file (refused)")
        if proc.returncode != 0 or not os.path.isfile(out):
            why = msg[6:] if msg.startswith("ERROR ") else f"decoder process ended with status {proc.returncode}"
            raise RuntimeError(why)
        return np.load(out)


def _to_grey(arr: np.ndarray, photometric: str, warnings: List[str]) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        warnings.append(f"colour image ({photometric or 'RGB'}) converted to grey (ITU-R 601 luma)")
        return grey
    return arr


#: JPEG 2000 (Part 1, Part 2 multi-component) and High-Throughput JPEG 2000 transfer syntaxes; the other
#: 1.2.840.10008.1.2.4.* syntaxes hold JPEG / JPEG-LS codestreams
_JPEG2000_SYNTAXES = frozenset("1.2.840.10008.1.2.4." + n for n in ("90", "91", "92", "93", "201", "202", "203"))


def _check_decoded_size(ds, hdr: ImageHeader, path: str, ts: str, decoder: str) -> None:
    """Refuse before decoding what would pass the limits (:mod:`elvis_core.io.limits`): the header's frame size,
    and for compressed data the sizes the JPEG / JPEG-LS / JPEG 2000 frame headers claim (a decoder allocates what
    the codestream says, whatever the DICOM header says)."""
    try:
        check_frame(hdr.rows, hdr.cols, hdr.samples, hdr.bytes_per_sample, 1)
    except ValueError as err:
        raise DicomReadError(str(err), path) from None
    if not ts.startswith("1.2.840.10008.1.2.4.") or "PixelData" not in ds:
        return  # JPEG-family codestreams only: RLE segments have no frame header (and may contain marker-like bytes)
    try:
        data = ds["PixelData"].value
    except BaseException as err:  # noqa: BLE001
        if is_fatal(err):
            raise
        raise DicomReadError(f"pixel data unreadable ({type(err).__name__})", path) from None
    if not isinstance(data, (bytes, bytearray)):
        return
    j2k = ts in _JPEG2000_SYNTAXES
    for codec, r, c, comps in codestream_shapes(data, jpeg2000=j2k, jpeg=not j2k):
        try:
            check_frame(r, c, comps, hdr.bytes_per_sample, 1, what=f"the {codec} frame header's image")
        except ValueError as err:
            raise DicomReadError(str(err), path) from None
        if (r, c) != (hdr.rows, hdr.cols) and r and c:
            raise DicomReadError(f"the {codec} frame header says {c} x {r} but the DICOM header says "
                                 f"{hdr.cols} x {hdr.rows} (Columns x Rows): corrupt file", path)


def read_radiograph(path: os.PathLike | str, frame: int = 0, decoder: str = "auto") -> Radiograph:
    """Read one frame of a DICOM image into a :class:`Radiograph` (see the contract in ``radiograph.py``).

    ``decoder``: "auto" (pydicom, SimpleITK if pydicom cannot decode), "pydicom" or "SimpleITK" (tests, benchmarks).
    Raises :class:`DicomReadError` (not DICOM, truncated, zero-size, bad frame) or :class:`UnsupportedDicomError`
    (no pixel data: SR, presentation state; a transfer syntax no decoder handles).
    """
    if decoder not in ("auto", "pydicom", "SimpleITK"):
        raise ValueError(f"unknown decoder {decoder!r}")
    path = _check_path(path)
    ds = _dcmread(path)
    notes: List[str] = []
    sanitize(ds, path, notes)

    kind = _non_image_kind(ds)
    has_pixels = "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
    if len(ds) == 0:
        raise DicomReadError("truncated or damaged: no data set could be read after the file meta information", path)
    if not has_pixels:
        if kind is None and (_is_image_sop_class(ds) or "Rows" in ds):
            raise DicomReadError("truncated or damaged: an image header but no complete pixel data element", path)
        what = f" ({kind})" if kind else ""
        raise UnsupportedDicomError(f"DICOM without pixel data{what}: nothing to display", path)

    hdr = image_header(ds, path)
    rows, cols, n_frames = hdr.rows, hdr.cols, hdr.frames
    frame = int(frame)
    if frame < 0 or frame >= n_frames:
        raise DicomReadError(f"frame {frame} out of range (the file has {n_frames} frame(s))", path)

    photometric = hdr.photometric
    ts = _ts_uid(ds)
    _check_decoded_size(ds, hdr, path, ts, decoder)
    used = None
    arr = None
    errors: List[str] = []
    if decoder in ("auto", "pydicom"):
        try:
            arr = _decode_pydicom(ds, path, frame, n_frames)
            used = "pydicom"
        except DicomReadError:
            raise
        except MemoryError:
            raise DicomReadError(f"not enough memory to decode a {rows} x {cols} frame", path) from None
        except BaseException as err:  # noqa: BLE001 - decoders raise anything, incl. Rust PanicException
            if is_fatal(err):
                raise
            errors.append(f"pydicom: {type(err).__name__}: {_short(err, path=path)}")
            if _looks_truncated(err):
                raise DicomReadError(f"truncated pixel data ({_short(err, 120, path)})", path) from None
    if arr is None and decoder in ("auto", "SimpleITK"):
        try:
            check_frame(rows, cols, hdr.samples, hdr.bytes_per_sample, n_frames,
                        what="SimpleITK decodes all frames at once: the image")
            arr = _decode_sitk(path, frame, hdr.rows * hdr.cols * hdr.samples * hdr.bytes_per_sample * n_frames)
            used = "SimpleITK"
        except DicomReadError:
            raise
        except ValueError as err:
            if not errors:
                raise DicomReadError(str(err), path) from None
            errors.append(f"SimpleITK: not tried ({err})")
        except MemoryError:
            raise DicomReadError(f"not enough memory to decode a {rows} x {cols} image", path) from None
        except BaseException as err:  # noqa: BLE001
            if is_fatal(err):
                raise
            errors.append(f"SimpleITK: {type(err).__name__}: {_short(err, 100, path)}")
    if arr is None:
        name = _ts_name(ts) or "unknown transfer syntax"
        raise UnsupportedDicomError(f"cannot decode pixel data ({name}): " + "; ".join(errors), path)

    arr = np.asarray(arr)
    if arr.size == 0:
        raise DicomReadError("zero-size pixel data", path)
    if photometric == "PALETTE COLOR" and arr.ndim == 2:
        try:
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        except BaseException as err:  # noqa: BLE001
            if is_fatal(err):
                raise
            notes.append(f"palette colour lookup table unreadable ({type(err).__name__}): indices shown as grey")
    arr = _to_grey(arr, photometric, notes)
    if arr.ndim != 2:
        raise UnsupportedDicomError(f"unexpected pixel array shape {arr.shape}", path)

    # ---- Modality LUT / rescale (SimpleITK applies rescale itself; it ignores a Modality LUT sequence)
    is_colour = photometric not in ("MONOCHROME1", "MONOCHROME2", "")
    has_mlut = "ModalityLUTSequence" in ds
    if not is_colour and has_mlut and used in ("pydicom", "SimpleITK"):
        try:
            from pydicom.pixels import apply_modality_lut

            pixels = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        except BaseException as err:  # noqa: BLE001
            if is_fatal(err):
                raise
            raise DicomReadError(f"Modality LUT Sequence unreadable ({type(err).__name__}: {_short(err, 80, path)})",
                                 path) from None
    elif used == "pydicom" and not is_colour and (hdr.rescale_slope != 1.0 or hdr.rescale_intercept != 0.0):
        # the rescale in float32 (pydicom's apply_modality_lut would make a float64 copy: twice the memory)
        pixels = arr.astype(np.float32)
        pixels *= np.float32(hdr.rescale_slope)
        pixels += np.float32(hdr.rescale_intercept)
    else:
        pixels = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(pixels)):
        notes.append("non-finite pixel values replaced by 0")
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)

    # ---- MONOCHROME1: invert exactly once
    inverted = False
    pivot = 0.0
    if photometric == "MONOCHROME1":
        lo, hi = _modality_range(ds, hdr, pixels if used == "pydicom" else np.empty(0, np.float32))
        pivot = lo + hi
        inverted = True
        if used == "pydicom":
            pixels = np.subtract(np.float32(pivot), pixels, dtype=np.float32)
        # SimpleITK (GDCM) already returns maxval - stored (then rescale): with an unsigned stored range this is
        # exactly pivot - value, so nothing more to do. Record it, never invert twice.
    shape = get_str(ds, "PresentationLUTShape").upper()
    flip_for_presentation = photometric == "MONOCHROME2" and shape == "INVERSE"
    if flip_for_presentation:
        # MONOCHROME2 with Presentation LUT Shape INVERSE: displayed inverted (PS3.3 C.11.6); neither decoder applies it
        lo, hi = _modality_range(ds, hdr, pixels)
        pivot = lo + hi
        inverted = True
        pixels = np.subtract(np.float32(pivot), pixels, dtype=np.float32)
        notes.append("Presentation LUT Shape INVERSE: pixels inverted so that higher means brighter")

    # ---- windows
    windows: List[Window] = []
    centers = _floats(ds.get("WindowCenter", None))
    widths = _floats(ds.get("WindowWidth", None))
    names = [str(x) for x in _multi(ds.get("WindowCenterWidthExplanation", None))]
    if centers and widths:
        if len(centers) != len(widths):
            notes.append(f"{len(centers)} window centres but {len(widths)} widths: extra values ignored")
        for i, (c, w) in enumerate(zip(centers, widths)):
            if not (np.isfinite(c) and np.isfinite(w)):
                notes.append(f"window preset {i + 1} is not numeric: ignored")
                continue
            if w <= 0:
                notes.append(f"window preset {i + 1} has width {w:g} (must be > 0): ignored")
                continue
            if inverted:
                c = pivot - c
            name = names[i] if i < len(names) else f"file window {i + 1}"  # no WindowCenterWidthExplanation
            windows.append(Window(center=float(c), width=float(w), name=name))

    # ---- VOI LUT
    voi: Optional[VoiLut] = None
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        try:
            voi = _voi_lut(ds, inverted, pivot)
        except Exception as err:  # noqa: BLE001
            notes.append(f"VOI LUT sequence unreadable ({type(err).__name__}): ignored")

    # ---- spacing
    spacing, source = _spacing(ds, notes)

    meta: Dict[str, Any] = {}
    for kw in _META_KEYWORDS:
        v = ds.get(kw, None)
        if v is not None and v != "":
            meta[kw] = _plain(v)
    meta["Rows"], meta["Columns"] = int(pixels.shape[0]), int(pixels.shape[1])
    meta["NumberOfFrames"] = n_frames
    meta["Frame"] = frame
    meta["TransferSyntaxUID"] = ts
    meta["TransferSyntaxName"] = _ts_name(ts)
    meta["Decoder"] = used
    if shape:
        meta["PresentationLUTShape"] = shape
    if "VOILUTFunction" in ds:
        meta["VOILUTFunction"] = str(ds.VOILUTFunction)
    if errors and used == "SimpleITK":
        notes.append("pydicom could not decode this file; SimpleITK was used")

    for n in notes:
        log.debug("%s: %s", path, n)
    return Radiograph(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        windows=windows,
        voi_lut=voi,
        pixel_spacing=spacing,
        spacing_source=source,
        meta=meta,
        source_path=path,
        warnings=notes,
        inverted_from_monochrome1=inverted and not flip_for_presentation,
        invert_pivot=float(pivot),
    )


def _looks_truncated(err: BaseException) -> bool:
    text = str(err).lower()
    return any(
        k in text
        for k in ("expected length", "truncated", "buffer is too small", "insufficient", "not enough", "end of file",
                  "premature", "buffer size", "is less than", "shorter than")
    )


def _voi_lut(ds, inverted: bool, pivot: float) -> Optional[VoiLut]:
    item = ds.VOILUTSequence[0]
    table = _lut_data(item, _big_endian(ds))
    if table is None or table.size == 0:
        return None
    desc = _multi(item.LUTDescriptor)
    bits = int(desc[2]) if len(desc) > 2 else 16
    first = _lut_first_mapped(item, ds)
    top = float(2**bits - 1)
    if table.max() > top:  # descriptor lies about the bit depth
        top = float(2 ** int(np.ceil(np.log2(table.max() + 1))) - 1)
    norm = (table / top).astype(np.float32)
    explanation = str(item.get("LUTExplanation", "") or "")
    if inverted:
        # input axis mirrored (v' = pivot - v) and output reversed (MONOCHROME1: high output = dark)
        n = norm.size
        return VoiLut(first_mapped=float(pivot - (first + n - 1)), table=(1.0 - norm[::-1]).astype(np.float32),
                      explanation=explanation)
    return VoiLut(first_mapped=first, table=norm, explanation=explanation)


def _spacing(ds, notes: List[str]) -> Tuple[Optional[Tuple[float, float]], str]:
    ps = _floats(ds.get("PixelSpacing", None))
    if len(ps) >= 2:
        if all(np.isfinite(v) and v > 0 for v in ps[:2]):
            return (ps[0], ps[1]), "PixelSpacing"
        notes.append(f"PixelSpacing {ps[:2]} is not positive: ignored")
    ips = _floats(ds.get("ImagerPixelSpacing", None))
    if len(ips) >= 2:
        if all(np.isfinite(v) and v > 0 for v in ips[:2]):
            mag = _floats(ds.get("EstimatedRadiographicMagnificationFactor", None))
            if mag and np.isfinite(mag[0]) and mag[0] > 0:
                return (ips[0] / mag[0], ips[1] / mag[0]), "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
            return (ips[0], ips[1]), "ImagerPixelSpacing"
        notes.append(f"ImagerPixelSpacing {ips[:2]} is not positive: ignored")
    return None, "none"
