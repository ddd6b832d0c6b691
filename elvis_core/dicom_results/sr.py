"""Reviewed boxes of one image → a **Comprehensive SR** holding a **TID 1500 Measurement Report** (PS3.16).

A review SR exported again for an image whose earlier review SRs lie in its (PACS-fetched) study folder names them
in its Predecessor Documents Sequence. One TID 1410 planar-ROI group per reviewed box — accepted, edited, added *and rejected* (a rejected box is a
decision too: its group says "Rejected" and carries the reason) — each with

- the box as a closed SCOORD POLYLINE in the source image's pixel space, SELECTED FROM its SOP Instance (DICOM puts
  0.0\\0.0 at the top-left corner of the top-left pixel, as MS-CXR's (x, y, w, h) does);
- the MS-CXR category as the coded *Finding* (SNOMED CT where the concept is unambiguous, else the private scheme
  ``99ELVIS``), finding category "Morphologically abnormal structure" (SCT 49755003);
- the phrase as a TEXT *Qualitative Evaluations* item, (C0034375, UMLS) as TID 1410 names it;
- the review decision as a coded qualitative evaluation (``99ELVIS`` Review decision: Accepted / Edited / Added /
  Rejected), the reason of a rejection as a TEXT *Comment* (DCM 121106), an edited box's position before the edit
  as a TEXT ``99ELVIS`` "Box before edit" ("x y w h");
- the decision time as the group's and the decision item's Observation DateTime (0040,A032);
- the reviewer: the person observer of the report (TID 1001/1003), and per group when someone else decided.

Observer context also names a **device observer** (TID 1004): name = "ELVIS Viewer <software version>", model name
= the checkpoint whose maps the reviewer saw, serial number = its SHA-256, UID derived from that hash. Once every
box of the image has a decision the SR is COMPLETE, FINAL and VERIFIED by the main reviewer (Verifying Observer
Sequence, with the latest decision time); while boxes are still open it is PARTIAL / PRELIMINARY / UNVERIFIED.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from elvis_core.dicom_results.common import (MANUFACTURER, PRIVATE_SCHEME, QUALITATIVE_EVALUATIONS,
                                             DicomExportError, ModelInfo, category_code, image_label,
                                             keep_filing_attributes, lo, person_name, private_scheme_item,
                                             read_source, software_version, write_dataset)
from elvis_core.errors import ElvisError

REVIEW_DECISION = ("REVIEWDECISION", PRIVATE_SCHEME, "Review decision")
DECISION_CODES = {
    "accepted": ("ACCEPTED", PRIVATE_SCHEME, "Accepted"),
    "edited": ("EDITED", PRIVATE_SCHEME, "Edited"),
    "added": ("ADDED", PRIVATE_SCHEME, "Added"),
    "rejected": ("REJECTED", PRIVATE_SCHEME, "Rejected"),
}
#: an edited box's position before the edit, "x y w h" in source pixels (TEXT; lets a review resume exactly)
ORIGINAL_BOX = ("ORIGINALBOX", PRIVATE_SCHEME, "Box before edit")
DEFAULT_ORGANIZATION = "ELVIS Viewer review"


@dataclass
class SrBox:
    """One reviewed box for the SR: (x, y, w, h) in source-image pixels."""

    x: float
    y: float
    w: float
    h: float
    category: str
    phrase: str
    decision: str  # accepted / edited / added / rejected
    reviewer: str = ""
    timestamp: str = ""  # ISO 8601 (the review store's), "" when unknown
    reason: str = ""  # why a box was rejected
    original: Optional[Tuple[float, float, float, float]] = None  # an edited box as it was before the edit


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


def _device(model: Optional[ModelInfo]):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    model = model or ModelInfo()
    h = "".join(c for c in model.sha256.lower() if c in "0123456789abcdef")[:64]
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["elvis-model", h]) if h else generate_uid(),
            name=lo(f"{MANUFACTURER} {software_version()}"), manufacturer_name=MANUFACTURER,
            model_name=lo(model.name) if model.name else "no model (boxes reviewed by hand)",
            serial_number=h or None))


def dicom_datetime(iso: str) -> Optional[str]:
    """ISO 8601 (with or without offset) → a DICOM DT value in UTC (YYYYMMDDHHMMSS+0000); None when unparsable."""
    try:
        t = _dt.datetime.fromisoformat(str(iso).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def review_sr(source, boxes: Sequence[SrBox], *, series_uid: Optional[str] = None, series_number: int = 901,
              instance_number: int = 1, series_description: str = "ELVIS reviewed findings",
              model: Optional[ModelInfo] = None, complete: bool = True,
              organization: str = DEFAULT_ORGANIZATION, previous: Sequence = ()):
    """A Comprehensive SR (TID 1500) for the reviewed boxes of one source image (a pydicom Dataset, header only).

    ``complete``: every box of the image has a decision (no unreviewed box left) → COMPLETE / FINAL / VERIFIED.
    ``previous``: earlier review SRs of this image (datasets) that this one supersedes (Predecessor Documents)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    where = image_label(source)
    if not boxes:
        raise DicomExportError("no reviewed box to export (accepted / edited / added / rejected)", where)
    rows, cols = int(source.Rows), int(source.Columns)
    reviewers = [b.reviewer for b in boxes if b.reviewer]
    main_reviewer = max(sorted(set(reviewers)), key=reviewers.count) if reviewers else ""
    context = hd.sr.ObservationContext(observer_person_context=_person(main_reviewer),
                                       observer_device_context=_device(model))
    groups = []
    src_ref = hd.sr.SourceImageForRegion.from_source_image(source)
    times = []
    for k, b in enumerate(boxes, start=1):
        decision = DECISION_CODES.get(b.decision.lower())
        if decision is None:
            raise DicomExportError(f"box {k}: review status {b.decision!r} is not a decision", where)
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                   graphic_data=_box_polyline(b, rows, cols, where), source_image=src_ref)
        evaluation = hd.sr.QualitativeEvaluation(Code(*REVIEW_DECISION), Code(*decision))
        when = dicom_datetime(b.timestamp) if b.timestamp else None
        if when:
            times.append(when)
            evaluation[0].ObservationDateTime = when
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=hd.UID(), identifier=f"box {k}" + (" (rejected)" if decision[0] == "REJECTED" else "")),
            referenced_region=region,
            finding_type=category_code(b.category),
            finding_category=codes.SCT.MorphologicallyAbnormalStructure,
            qualitative_evaluations=[evaluation],
        )
        if when:
            group[0].ObservationDateTime = when
        items = group[0].ContentSequence
        if b.phrase.strip():
            items.append(hd.sr.TextContentItem(
                name=hd.sr.CodedConcept(*QUALITATIVE_EVALUATIONS), value=b.phrase.strip(),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        if decision[0] == "EDITED" and b.original is not None:
            items.append(hd.sr.TextContentItem(
                name=hd.sr.CodedConcept(*ORIGINAL_BOX), value=" ".join(f"{float(v):g}" for v in b.original),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        if decision[0] == "REJECTED" and b.reason.strip():
            items.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=b.reason.strip(),
                                               relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        if b.reviewer and b.reviewer != main_reviewer:
            items.extend(_person(b.reviewer))
        groups.append(group)
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=codes.SCT.PlainRadiography,
                                     imaging_measurements=groups)
    verified = bool(complete and main_reviewer)
    with warnings.catch_warnings():  # highdicom warns quoting the source's names: not for any log
        warnings.simplefilter("ignore")
        sr = hd.sr.ComprehensiveSR(
            evidence=[source], content=report[0], series_instance_uid=series_uid or hd.UID(),
            series_number=series_number, sop_instance_uid=hd.UID(), instance_number=instance_number,
            manufacturer=MANUFACTURER, is_complete=bool(complete), is_final=verified, is_verified=verified,
            verifying_observer_name=person_name(main_reviewer) if verified else None,
            verifying_organization=lo(organization or DEFAULT_ORGANIZATION) if verified else None,
            series_description=lo(series_description), institution_name=None,
            previous_versions=list(previous) or None,
        )
    if verified and times:
        sr.VerifyingObserverSequence[0].VerificationDateTime = max(times)
    sr.SoftwareVersions = software_version()
    sr.CodingSchemeIdentificationSequence = [private_scheme_item()]
    keep_filing_attributes(sr)
    if any(ord(c) > 127 for b in boxes for c in (b.phrase + b.reviewer + b.reason)):
        sr.SpecificCharacterSet = "ISO_IR 192"
    return sr


# ------------------------------------------------------------------------------------------------ review export #

def boxes_from_items(items: Iterable) -> Tuple[Dict[str, List[SrBox]], Dict[str, int]]:
    """Reviewed boxes (accepted / edited / added / rejected) of review items grouped by image path, and per image
    the number of boxes still without a decision."""
    from elvis_core.review.model import ACCEPTED, ADDED, EDITED, REJECTED, UNREVIEWED

    out: Dict[str, List[SrBox]] = {}
    open_: Dict[str, int] = {}
    for it in items:
        for b in it.boxes:
            if b.status in (ACCEPTED, EDITED, ADDED, REJECTED):
                out.setdefault(it.image_path, []).append(
                    SrBox(b.x, b.y, b.w, b.h, it.category, it.label_text, b.status, b.reviewer,
                          b.timestamp, b.reason, tuple(b.original) if b.original is not None else None))
            elif b.status == UNREVIEWED:
                open_[it.image_path] = open_.get(it.image_path, 0) + 1
    return out, open_


@dataclass
class ExportResult:
    written: List[Path]
    problems: List[str]


def export_review_sr(items: Sequence, out_dir: os.PathLike | str, *, model: Optional[ModelInfo] = None,
                     organization: str = DEFAULT_ORGANIZATION) -> ExportResult:
    """One SR per image with reviewed boxes, named ``<source SOP Instance UID>.sr.dcm``; one new series per
    study (a series never spans studies or patients). A bad image is reported and skipped; the others are
    written."""
    import highdicom as hd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series: Dict[str, str] = {}  # StudyInstanceUID -> our series
    numbers: Dict[str, int] = {}
    written: List[Path] = []
    problems: List[str] = []
    by_image, open_boxes = boxes_from_items(items)
    found: Dict[Path, list] = {}  # study folder -> our review SRs in it (each folder read once)
    for image_path, boxes in sorted(by_image.items()):
        try:
            src = read_source(image_path)
            study = str(src.StudyInstanceUID)
            series.setdefault(study, hd.UID())
            numbers[study] = numbers.get(study, 0) + 1
            sr = review_sr(src, boxes, series_uid=series[study], instance_number=numbers[study], model=model,
                           complete=open_boxes.get(image_path, 0) == 0, organization=organization,
                           previous=_predecessors(image_path, src, found))
            written.append(write_dataset(sr, out / f"{src.SOPInstanceUID}.sr.dcm"))
        except ElvisError as err:
            problems.append(str(err))
    return ExportResult(written, problems)


def _predecessors(image_path: str, src, found: Dict[Path, list]) -> list:
    """Our review SRs of this image already in its study folder (a study fetched from a PACS, reviewed on and
    exported again): the new SR names them in its Predecessor Documents Sequence, as a revised report should.
    Only a PACS cache's study folder (``<StudyUID>/<SeriesUID>/<SOP>.dcm``) is searched; ``found`` caches it."""
    import pydicom

    from elvis_core.dicom_results.sr_read import find_review_srs

    img = Path(image_path)
    folder = img.parent.parent
    if folder.name != str(src.StudyInstanceUID) or not folder.is_dir():
        return []  # not a fetched study: a dataset folder is never scanned once per image
    if folder not in found:
        found[folder] = find_review_srs(folder)
    out = []
    for r in found[folder]:
        if r.image_sop_uid == str(src.SOPInstanceUID) and r.study_uid == str(src.StudyInstanceUID):
            try:
                out.append(pydicom.dcmread(r.path, stop_before_pixels=True))
            except Exception:  # noqa: BLE001 - unreadable now: not named
                continue
    return out
