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
from typing import Any, Dict, List, Optional

import numpy as np

from elvis_core.errors import DicomReadError, UnsupportedDicomError
from elvis_core.io.dicom_header import get_str, image_header, is_fatal, sanitize
# opening a file, recognising it, scrubbing messages (importing it silences pydicom's own log); the names other
# modules import from here are re-exported
from elvis_core.io.dicom_open import (  # noqa: F401
    _check_deflate, _check_path, _dcmread, _floats, _is_image_sop_class, _multi, _non_image_kind, _short, _ts_name,
    _ts_uid, is_dicom_file, scrub)
# the decoders, the size checks before decoding, LUTs and spacing (``_decode_pydicom`` is looked up here, in this
# module, by read_radiograph: tests replace it)
from elvis_core.io.dicom_pixels import (  # noqa: F401
    _check_decoded_size, _decode_pydicom, _decode_sitk, _looks_truncated, _modality_range, _spacing, _to_grey,
    _voi_lut)
from elvis_core.io.limits import check_frame
from elvis_core.io.radiograph import Radiograph, VoiLut, Window
from elvis_core.io.scan_header import _SCAN_TAGS

log = logging.getLogger(__name__)

#: header keywords the header-only reads need: the study scan's (:data:`scan_header._SCAN_TAGS`), then inspect's
HEADER_KEYWORDS = tuple(_SCAN_TAGS) + (
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
