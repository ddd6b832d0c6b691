"""Grounding maps of one image → ONE **FRACTIONAL Segmentation** (PROBABILITY type), one segment per phrase.

The map keeps its values: each segment's frame holds ``max(cosine similarity, 0)`` on the source image's pixel grid
(quantised to 1/255; the part of the image the model did not see is 0). Cosine scales differ between models (the
demo model peaks at 0.2–0.35), so a consumer should display a segment on its own range; the Segment Description
(0062,0006) says how far to believe the map — the same trust line the viewer shows (calibrated presence or
"uncalibrated (peak …)", unknown words) — and the peak, so nothing has to be guessed. The Segment Label is the
phrase, the Segment Algorithm Identification the checkpoint and its SHA-256.

Why not a Parametric Map: that IOD requires a Frame of Reference and Plane Position / Orientation / Pixel Measures
(a 3-D patient coordinate system), which a projection radiograph has not; the SEG IOD allows images without one.
What PACS viewers *display* of a heat map is the RGB Secondary Capture (:mod:`.sc`), written beside it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from elvis_core.dicom_results.common import (MANUFACTURER, MODEL_NAME, PRIVATE_SCHEME, DicomExportError, ModelInfo,
                                             category_code, image_label, keep_filing_attributes, lo,
                                             private_scheme_item, software_version)


#: RLE Lossless: every DICOM toolkit decodes it; a 1841 x 1955 map shrinks from 3.6 MB to ~0.16 MB, values intact
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


@dataclass
class MapLayer:
    """One phrase's map on the source image's pixel grid (cosine similarity, NaN where the model saw nothing)."""

    phrase: str
    similarity: np.ndarray
    trust: str = ""  # GroundingMap.trust_line()
    category: str = ""

    @classmethod
    def from_map(cls, gm, category: str = "") -> "MapLayer":
        return cls(gm.phrase, gm.to_image(), trust_line(gm), category)


def trust_line(gm) -> str:
    """The one line every surface shows about how far to believe a map (``GroundingMap.trust_line()``); for a
    map object without it: "uncalibrated (peak …)" and whether the whole image was seen."""
    fn = getattr(gm, "trust_line", None)
    if callable(fn):
        return str(fn())
    sim = np.asarray(getattr(gm, "raw_similarity", None) if getattr(gm, "raw_similarity", None) is not None
                     else gm.similarity, dtype=np.float32)
    peak = float(np.nanmax(sim)) if sim.size and np.isfinite(sim).any() else float("nan")
    seen = "whole image seen" if getattr(gm, "fully_seen", True) else "centre crop seen"
    return f"uncalibrated (peak {peak:.2f}) \u00b7 {seen}"


def _st(text: str, n: int = 1024) -> str:
    t = " ".join(str(text).replace("\\", "/").split())
    return t[:n]


def maps_seg(source, layers: Sequence[MapLayer], model: ModelInfo, *, series_uid: Optional[str] = None,
             series_number: int = 902, instance_number: int = 1):
    """A FRACTIONAL SEG of the source image with one segment per phrase (see the module docstring)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    where = image_label(source)
    if not layers:
        raise DicomExportError("no map to export", where)
    rows, cols = int(source.Rows), int(source.Columns)
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomExportError("multi-frame source: a SEG of one frame is not supported yet", where)
    frames = np.zeros((1, rows, cols, len(layers)), dtype=np.float32)
    h = "".join(c for c in model.sha256.lower() if c in "0123456789abcdef")[:64]
    algo = hd.AlgorithmIdentificationSequence(
        name=lo(f"ELVIS grounding {model.name}"), version=h or "unknown",
        family=codes.cid7162.ArtificialIntelligence, source=lo(f"{MANUFACTURER} {software_version()}"))
    descs = []
    for k, layer in enumerate(layers):
        arr = np.asarray(layer.similarity, dtype=np.float32)
        if arr.shape != (rows, cols):
            raise DicomExportError(f"map of {layer.phrase!r} is {arr.shape[1]}x{arr.shape[0]}, the image "
                                   f"{cols}x{rows}", where)
        if not layer.phrase.strip():
            raise DicomExportError(f"map {k + 1} has no phrase", where)
        frames[0, :, :, k] = np.clip(np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
        finding = category_code(layer.category) if layer.category else \
            Code("GROUNDING", PRIVATE_SCHEME, "Phrase grounding region")
        desc = hd.seg.SegmentDescription(
            segment_number=k + 1, segment_label=lo(layer.phrase),
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=finding, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo)
        peak = float(np.nanmax(arr)) if np.isfinite(arr).any() else float("nan")
        desc.SegmentDescription = _st(f"{layer.phrase.strip()} | {layer.trust or 'uncalibrated'} | "
                                      f"value = max(cosine, 0), peak cosine {peak:.3f}")
        descs.append(desc)
    with warnings.catch_warnings():  # highdicom warns quoting the source's names: not for any log
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=[source], pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY, max_fractional_value=255,
            segment_descriptions=descs, omit_empty_frames=False,
            series_instance_uid=series_uid or hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
            instance_number=instance_number, manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
            software_versions=software_version(), device_serial_number=(h[:16] or "0"),
            content_description=lo(f"ELVIS grounding maps, {len(layers)} phrase(s), {model.name} sha256:{h[:12]}"),
            content_label="GROUNDING", series_description=lo(f"ELVIS grounding maps ({model.name})"),
            transfer_syntax_uid=RLE_LOSSLESS,
        )
    seg.CodingSchemeIdentificationSequence = [private_scheme_item()]
    # General Image, Type 2C when there is no Image Orientation/Position: same pixel grid, so the source's applies
    seg.PatientOrientation = source.get("PatientOrientation", "") or ""
    _drop_invalid_pixel_spacing(seg)
    keep_filing_attributes(seg, device_serial=h[:16] or "0")
    if any(ord(c) > 127 for layer in layers for c in layer.phrase + layer.trust):
        seg.SpecificCharacterSet = "ISO_IR 192"
    return seg


def _drop_invalid_pixel_spacing(ds) -> None:
    """highdicom copies the source's Pixel Spacing into the shared Pixel Measures; some real files carry 0\\0 there
    (pydicom-data's RG1 does), which is invalid: then leave the spacing out rather than copy a wrong one."""
    for fg in ds.get("SharedFunctionalGroupsSequence", []):
        pm = fg.get("PixelMeasuresSequence")
        if not pm:
            continue
        sp = pm[0].get("PixelSpacing")
        try:
            bad = sp is not None and not all(float(v) > 0 for v in sp)
        except (TypeError, ValueError):
            bad = True
        if bad:
            del fg.PixelMeasuresSequence
