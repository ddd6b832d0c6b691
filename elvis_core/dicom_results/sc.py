"""A phrase's map as a PACS viewer can show it: an **RGB Secondary Capture** image (SC Image Storage) of the film
with the map over it, the colour bar and the caption a radiologist sees in the viewer — the phrase, the trust line
(calibrated presence or "uncalibrated", unknown words), the checkpoint and its hash — burned in (Burned In
Annotation YES) and repeated in Image Comments. It references the source image (Source Image Sequence) and is put
in the source's study, so any PACS viewer (OHIF, Weasis, a vendor's) displays it next to the film; it is a picture,
not data: the values live in the FRACTIONAL SEG (:mod:`.seg`)."""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np

from elvis_core.dicom_results.common import (MANUFACTURER, DicomExportError, ModelInfo, image_label,
                                             keep_filing_attributes, lo, software_version)
from elvis_core.dicom_results.seg import trust_line


#: JPEG baseline (8-bit, lossy; Lossy Image Compression 01 is recorded): a picture for display, ~20x smaller than
#: RLE for a film (9 MB → under 1 MB); every PACS viewer decodes it. The map's values live in the SEG.
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

_FOLD = {"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u00b7": "|", "\u2014": "-", "\u2013": "-",
         "\u2265": ">=", "\u2264": "<=", "\u2026": "...", "\u00d7": "x", "\u03c3": "sigma"}


def burnable(text: str) -> str:
    """The caption as the burned-in (Hershey, ASCII-only) font can draw it: typographic marks folded to ASCII,
    other letters decomposed (é → e); whatever is left becomes '?'."""
    import unicodedata

    t = "".join(_FOLD.get(c, c) for c in str(text))
    t = unicodedata.normalize("NFKD", t).encode("ascii", "ignore").decode() if any(ord(c) > 127 for c in t) else t
    return t


def caption_lines(phrase: str, trust: str, model: ModelInfo, extra: Sequence[str] = ()) -> list:
    """The caption as the viewer words it: the phrase, how far to believe the map, where it comes from."""
    out = [f"\u201c{phrase.strip()}\u201d", trust]
    out += [x for x in extra if x]
    out.append(f"model {model.name} sha256:{model.sha256[:12]} \u00b7 {MANUFACTURER} {software_version()} \u00b7 "
               "map over cosine [-1, 1] \u00b7 not a diagnosis")
    return out


def heatmap_sc(source, radiograph, gm, model: ModelInfo, *, extra_caption: Sequence[str] = (),
               opacity: float = 0.5, series_uid: Optional[str] = None, series_number: int = 903,
               instance_number: int = 1, rgb: Optional[np.ndarray] = None):
    """An RGB Secondary Capture of the map over the film with its caption (``rgb`` = an already composed picture,
    e.g. the viewer's export; else drawn here by :func:`elvis_core.grounding.figure.render_overlay`)."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    where = image_label(source)
    caption = caption_lines(gm.phrase, trust_line(gm), model, extra_caption)
    if rgb is None:
        from elvis_core.grounding.figure import render_overlay

        rgb = render_overlay(radiograph, gm, phrase=burnable(caption[0]),
                             footer=" | ".join(burnable(c) for c in caption[1:]), opacity=opacity, min_side=1024)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise DicomExportError(f"heat map picture has shape {rgb.shape}, expected (rows, cols, 3)", where)
    orient = tuple(str(v) for v in (source.get("PatientOrientation") or []))
    with warnings.catch_warnings():  # highdicom warns about the source's names, quoting them: not for any log
        warnings.simplefilter("ignore")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=rgb, photometric_interpretation="YBR_FULL_422", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid or hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer=MANUFACTURER,
            patient_orientation=orient if len(orient) == 2 and all(orient) else None,
            transfer_syntax_uid=JPEG_BASELINE,
        )
    # General Series Laterality is Type 2C (paired body parts): the source's value, else present and empty
    sc.Laterality = str(source.get("Laterality", "") or "")
    sc.SeriesDescription = lo(f"ELVIS heat map ({model.name})")
    sc.BurnedInAnnotation = "YES"
    sc.LossyImageCompression = "01"  # JPEG baseline: say so (PS3.3 C.7.6.1.1.5)
    sc.LossyImageCompressionMethod = "ISO_10918_1"
    try:
        from pydicom.encaps import generate_fragmented_frames

        n = sum(len(b"".join(f)) for f in generate_fragmented_frames(sc.PixelData))
        sc.LossyImageCompressionRatio = f"{rgb.size / max(n, 1):.2f}"[:16]
    except Exception:  # noqa: BLE001 - the ratio is Type 3: leave it out rather than guess
        pass
    sc.ImageComments = " | ".join(caption)[:10240]
    sc.DerivationDescription = lo("grounding map over the source film, rendered by ELVIS Viewer")[:64]
    sc.SoftwareVersions = software_version()
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    keep_filing_attributes(sc)
    if any(ord(c) > 127 for c in sc.ImageComments):
        sc.SpecificCharacterSet = "ISO_IR 192"
    return sc
