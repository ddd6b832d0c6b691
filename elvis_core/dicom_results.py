"""Results as standard DICOM, built with highdicom (DESIGN.md, "where results go").

- Reviewed boxes of one image → a **Comprehensive SR** holding a **TID 1500 Measurement Report**
  (:func:`review_sr`): one TID 1410 planar-ROI group per kept box (accepted, edited, added — rejected and unreviewed
  boxes are not findings), each with

  - the box as a closed SCOORD POLYLINE in the source image's pixel space, referencing its SOP Instance UID
    (DICOM puts 0.0\\0.0 at the top-left corner of the top-left pixel, as MS-CXR's (x, y, w, h) does);
  - the MS-CXR category as the coded *Finding* (SNOMED CT where the concept is unambiguous, else the private
    scheme ``99ELVIS``; :data:`CATEGORY_CODES`), finding category "Morphologically abnormal structure";
  - the phrase as a TEXT *Qualitative Evaluations* item (TID 1410 row for free-text evaluations);
  - the review decision as a coded qualitative evaluation (``99ELVIS``: Accepted / Edited / Added);
  - the reviewer: the person observer of the report's observation context (TID 1001), and per group when a box
    was reviewed by someone else.

- A phrase's grounding map → a binary **Segmentation** (:func:`grounding_seg`), ``similarity >= threshold`` on the
  source image's pixel grid, referencing the source image; the segment is labelled with the phrase, its algorithm
  identification names the checkpoint and its hash, and the content description says phrase, hash and threshold.
  Why a SEG and not a Parametric Map, although the map is continuous: the Parametric Map IOD requires a Frame of
  Reference and Plane Position / Orientation / Pixel Measures (a 3-D patient coordinate system), which a projection
  radiograph (CR / DX) does not have — a PM of a chest film fails ``dciodvfy`` unless one invents a frame of
  reference, i.e. false geometry. The SEG IOD allows images without one. The threshold defaults to half of the
  map's peak (:func:`default_threshold`: cosine scales differ between models, so a fixed cut-off gives empty or
  whole-image segments) and can be set; the continuous map stays available as ``.npy`` (``elvis ground --npy``).

Identifiers: highdicom copies the patient / study module from the source image (correct inside DICOM); nothing
here logs them. :func:`dciodvfy` runs dicom3tools' validator on a written file.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from elvis_core.errors import ElvisError

# highdicom logs every module it copies from the source at INFO ("copy Patient-related attributes from dataset
# <SOP Instance UID>", nine lines per object): not for the command line's output, nor for its logs
logging.getLogger("highdicom").setLevel(logging.WARNING)

MANUFACTURER = "ELVIS Viewer"
MODEL_NAME = "elvis-viewer"
PRIVATE_SCHEME = "99ELVIS"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("elvis-viewer")
    except Exception:  # noqa: BLE001 - not installed (source checkout): still a valid Software Versions value
        return "0.1.0"


class DicomExportError(ElvisError):
    """A result cannot be written as DICOM (source is not an image, box outside the image, ...)."""


#: MS-CXR category (lower case) → (code value, scheme, meaning). SNOMED CT where the concept is unambiguous.
CATEGORY_CODES: Dict[str, Tuple[str, str, str]] = {
    "atelectasis": ("46621007", "SCT", "Atelectasis"),
    "cardiomegaly": ("8186001", "SCT", "Cardiomegaly"),
    "consolidation": ("95436008", "SCT", "Lung consolidation"),
    "edema": ("19242006", "SCT", "Pulmonary edema"),
    "pleural effusion": ("60046008", "SCT", "Pleural effusion"),
    "pneumonia": ("233604007", "SCT", "Pneumonia"),
    "pneumothorax": ("36118008", "SCT", "Pneumothorax"),
    # no single SNOMED CT concept matches MS-CXR's radiological "lung opacity": keep it explicit and private
    "lung opacity": ("LUNGOPACITY", PRIVATE_SCHEME, "Lung opacity"),
}

REVIEW_DECISION = ("REVIEWDECISION", PRIVATE_SCHEME, "Review decision")
DECISION_CODES = {
    "accepted": ("ACCEPTED", PRIVATE_SCHEME, "Accepted"),
    "edited": ("EDITED", PRIVATE_SCHEME, "Edited"),
    "added": ("ADDED", PRIVATE_SCHEME, "Added"),
}


def category_code(category: str):
    from pydicom.sr.coding import Code

    key = " ".join(str(category).lower().replace("_", " ").split())
    if key in CATEGORY_CODES:
        return Code(*CATEGORY_CODES[key])
    # unknown category: private code from its name (CS-safe value, max 16 chars)
    value = "".join(c for c in key.upper() if c.isalnum())[:16] or "FINDING"
    return Code(value, PRIVATE_SCHEME, str(category).strip() or "Finding")


def _private_scheme_item():
    """Coding Scheme Identification for 99ELVIS (PS3.3 C.12.1: private schemes should be identified)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.CodingSchemeDesignator = PRIVATE_SCHEME
    ds.CodingSchemeName = "ELVIS Viewer review and finding codes"
    ds.CodingSchemeResponsibleOrganization = "ELVIS Viewer project"
    return ds


def read_source(path: os.PathLike | str):
    """The source image's header (no pixels) for referencing; DicomExportError when it is not an image."""
    import pydicom

    from elvis_core.errors import DicomReadError
    from elvis_core.io.dicom import _check_deflate

    path = Path(path)
    try:
        _check_deflate(str(path))  # pydicom inflates a deflated data set whole: refuse a bomb first
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except DicomReadError as err:
        raise DicomExportError(err.problem, path) from None
    except Exception as err:  # noqa: BLE001
        raise DicomExportError(f"not a readable DICOM file ({type(err).__name__})", path) from None
    for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        if kw not in ds:
            raise DicomExportError(f"source is not a DICOM image (no {kw})", path)
    return ds


@dataclass
class SrBox:
    """One box for the SR: (x, y, w, h) in source-image pixels."""

    x: float
    y: float
    w: float
    h: float
    category: str
    phrase: str
    decision: str  # accepted / edited / added
    reviewer: str = ""


def _box_polyline(b: SrBox, rows: int, cols: int, where: str) -> np.ndarray:
    x0, y0 = max(0.0, float(b.x)), max(0.0, float(b.y))
    x1, y1 = min(float(cols), float(b.x + b.w)), min(float(rows), float(b.y + b.h))
    if not (np.isfinite([b.x, b.y, b.w, b.h]).all() and x1 > x0 and y1 > y0):
        raise DicomExportError(f"box ({b.x:g}, {b.y:g}, {b.w:g}, {b.h:g}) lies outside the {cols}x{rows} image",
                               where)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _person(name: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=person_name(name)))


def person_name(name: str) -> str:
    """A reviewer's login ("alice") as a DICOM PN: family-name component ("alice^"); "A^B" kept as given."""
    name = " ".join(str(name).replace("\\", "/").split())[:60]
    if not name:
        return "Unknown^Reviewer"
    return name if "^" in name else name + "^"


def review_sr(source, boxes: Sequence[SrBox], *, series_uid: Optional[str] = None, series_number: int = 901,
              instance_number: int = 1, series_description: str = "ELVIS reviewed findings"):
    """A Comprehensive SR (TID 1500) for the kept boxes of one source image (a pydicom Dataset, header only)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    where = f"image {source.SOPInstanceUID}"
    if not boxes:
        raise DicomExportError("no reviewed box to export (accepted / edited / added)", where)
    rows, cols = int(source.Rows), int(source.Columns)
    reviewers = [b.reviewer for b in boxes if b.reviewer]
    main_reviewer = max(set(reviewers), key=reviewers.count) if reviewers else ""
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="ELVIS Viewer review", manufacturer_name=MANUFACTURER, model_name=MODEL_NAME))
    context = hd.sr.ObservationContext(observer_person_context=_person(main_reviewer),
                                       observer_device_context=device)
    groups = []
    src_ref = hd.sr.SourceImageForRegion.from_source_image(source)
    for k, b in enumerate(boxes, start=1):
        decision = DECISION_CODES.get(b.decision.lower())
        if decision is None:
            raise DicomExportError(f"box {k}: review status {b.decision!r} is not a kept decision", where)
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                   graphic_data=_box_polyline(b, rows, cols, where), source_image=src_ref)
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"box {k}"),
            referenced_region=region,
            finding_type=category_code(b.category),
            finding_category=codes.SCT.MorphologicallyAbnormalStructure,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(Code(*REVIEW_DECISION), Code(*decision))],
        )
        items = group[0].ContentSequence
        if b.phrase.strip():
            items.append(hd.sr.TextContentItem(
                name=hd.sr.CodedConcept("C00034375", "UMLS", "Qualitative Evaluations"), value=b.phrase.strip(),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        if b.reviewer and b.reviewer != main_reviewer:
            items.extend(_person(b.reviewer))
        groups.append(group)
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=codes.SCT.PlainRadiography,
                                     imaging_measurements=groups)
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=series_uid or hd.UID(),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=instance_number,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=series_description[:64], institution_name=None,
    )
    sr.CodingSchemeIdentificationSequence = [_private_scheme_item()]
    if any(ord(c) > 127 for b in boxes for c in (b.phrase + b.reviewer)):
        sr.SpecificCharacterSet = "ISO_IR 192"
    return sr


def default_threshold(similarity: np.ndarray) -> float:
    """Half of the map's peak positive similarity (cosine scales differ between models: a fixed cut-off would give
    empty or whole-image segments); 0.5 when the map has no positive value."""
    peak = float(np.nanmax(similarity)) if np.size(similarity) else 0.0
    return 0.5 * peak if peak > 0 else 0.5


def grounding_seg(source, similarity_image: np.ndarray, phrase: str, checkpoint_name: str, checkpoint_hash: str,
                  *, threshold: Optional[float] = None, category: str = "", series_uid: Optional[str] = None,
                  series_number: int = 902, instance_number: int = 1):
    """A binary SEG of ``similarity >= threshold`` on the source image's pixel grid (one segment)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    where = f"image {source.SOPInstanceUID}"
    arr = np.asarray(similarity_image, dtype=np.float32)
    rows, cols = int(source.Rows), int(source.Columns)
    if arr.shape != (rows, cols):
        raise DicomExportError(f"map is {arr.shape[1]}x{arr.shape[0]}, the image {cols}x{rows}", where)
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomExportError("multi-frame source: a SEG of one frame is not supported yet", where)
    thr = default_threshold(arr) if threshold is None else float(threshold)
    if not -1.0 <= thr <= 1.0:
        raise DicomExportError(f"threshold {thr:g} is outside the cosine range [-1, 1]", where)
    mask = np.nan_to_num(arr, nan=-2.0) >= thr
    h = str(checkpoint_hash)
    algo = hd.AlgorithmIdentificationSequence(
        name=_lo(f"ELVIS grounding {checkpoint_name}"), version=h[:16] or "unknown",
        family=codes.cid7162.ArtificialIntelligence, source="ELVIS Viewer")
    finding = category_code(category) if category else Code("GROUNDING", PRIVATE_SCHEME, "Phrase grounding region")
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label=_lo(phrase), segmented_property_category=
        codes.SCT.MorphologicallyAbnormalStructure, segmented_property_type=finding,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo)
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=mask[None, :, :, None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[desc],
        series_instance_uid=series_uid or hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
        instance_number=instance_number, manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
        software_versions=_version(), device_serial_number="0",
        content_description=_lo(f"{phrase.strip()} | sha256:{h[:16]} | cos>={thr:.3f}"),
        content_label="GROUNDING", series_description=_lo(f"ELVIS grounding: {phrase.strip()}"),
    )
    seg.CodingSchemeIdentificationSequence = [_private_scheme_item()]
    # General Image, Type 2C when there is no Image Orientation/Position: same pixel grid, so the source's applies
    seg.PatientOrientation = source.get("PatientOrientation", "") or ""
    _drop_invalid_pixel_spacing(seg)
    if any(ord(c) > 127 for c in phrase):
        seg.SpecificCharacterSet = "ISO_IR 192"
    return seg, thr


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


def _lo(text: str) -> str:
    """A valid LO (64 chars, no backslash / control characters)."""
    t = " ".join(str(text).replace("\\", "/").split())
    return t if len(t) <= 64 else t[:63] + "\u2026" if any(ord(c) > 127 for c in t) else t[:61] + "..."


def write_dataset(ds, path: os.PathLike | str) -> Path:
    """Write a DICOM dataset atomically (Part 10 file)."""
    from io import BytesIO

    from elvis_core.atomic import atomic_write_bytes

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True) if _pydicom3() else ds.save_as(buf, write_like_original=False)
    try:
        return atomic_write_bytes(path, buf.getvalue())
    except OSError as err:
        raise DicomExportError(f"cannot write ({err.strerror or type(err).__name__})", path) from None


def _pydicom3() -> bool:
    import pydicom

    return int(pydicom.__version__.split(".")[0]) >= 3


# ------------------------------------------------------------------------------------------------ review export #

def boxes_from_items(items: Iterable) -> Dict[str, List[SrBox]]:
    """Kept boxes (accepted / edited / added) of review items, grouped by the image path."""
    from elvis_core.review.model import ACCEPTED, ADDED, EDITED

    out: Dict[str, List[SrBox]] = {}
    for it in items:
        for b in it.boxes:
            if b.status in (ACCEPTED, EDITED, ADDED):
                out.setdefault(it.image_path, []).append(
                    SrBox(b.x, b.y, b.w, b.h, it.category, it.label_text, b.status, b.reviewer))
    return out


@dataclass
class ExportResult:
    written: List[Path]
    problems: List[str]


def export_review_sr(items: Sequence, out_dir: os.PathLike | str) -> ExportResult:
    """One SR per image with kept boxes, in one new series, named ``<source SOP Instance UID>.sr.dcm``.
    A bad image is reported and skipped; the others are written."""
    import highdicom as hd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series_uid = hd.UID()
    written: List[Path] = []
    problems: List[str] = []
    for n, (image_path, boxes) in enumerate(sorted(boxes_from_items(items).items()), start=1):
        try:
            src = read_source(image_path)
            sr = review_sr(src, boxes, series_uid=series_uid, instance_number=n)
            written.append(write_dataset(sr, out / f"{src.SOPInstanceUID}.sr.dcm"))
        except ElvisError as err:
            problems.append(str(err))
    return ExportResult(written, problems)


# ---------------------------------------------------------------------------------------------------- dciodvfy #

def dciodvfy_available() -> bool:
    return shutil.which("dciodvfy") is not None


def dciodvfy(path: os.PathLike | str, timeout: float = 60.0) -> Tuple[bool, str]:
    """Run dicom3tools' ``dciodvfy`` on a file: (no "Error" line, full output)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise ElvisError("dciodvfy not found (Debian/Ubuntu: apt-get install dicom3tools)")
    r = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=timeout)
    text = (r.stdout + r.stderr).strip()
    errors = [ln for ln in text.splitlines() if ln.startswith("Error")]
    return (not errors), text
