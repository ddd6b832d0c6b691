"""Decoding a DICOM image's pixel data and the display data around it, for :func:`elvis_core.io.dicom.read_radiograph`.

- the decoders: pydicom (``_decode_pydicom``, native decoders' stderr kept quiet) and the SimpleITK fallback, run in a
  child process whose address space is capped (``_decode_sitk``);
- ``_check_decoded_size``: the limits (:mod:`elvis_core.io.limits`) checked before any decoder runs, against the DICOM
  header and against the sizes the JPEG-family codestream headers claim;
- lookup tables: the Modality LUT's range (``_modality_range``), LUT data, the VOI LUT (``_voi_lut``, mirrored for
  MONOCHROME1);
- colour to grey (``_to_grey``) and the pixel spacing (``_spacing``: PixelSpacing, else ImagerPixelSpacing corrected
  by the estimated magnification).

The order of the steps (decode, Modality LUT, MONOCHROME1 inversion, windows) is :func:`read_radiograph`'s.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np

from elvis_core.errors import DicomReadError
from elvis_core.io.dicom_header import ImageHeader, codestream_shapes, get_str, is_fatal
from elvis_core.io.dicom_open import _floats, _multi, _ts_uid
from elvis_core.io.limits import check_frame, mib
from elvis_core.io.radiograph import VoiLut


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
