"""Reading our own TID 1500 review SR back (highdicom ``srread``): the boxes, decisions, reasons, reviewers and
times of one image, so that a review resumes from what a PACS holds (:mod:`elvis_core.review.from_sr`)."""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import List, Optional

from elvis_core.dicom_results.common import QUALITATIVE_EVALUATIONS, DicomExportError, category_from_code
from elvis_core.dicom_results.sr import DECISION_CODES, ORIGINAL_BOX, REVIEW_DECISION, SrBox

_DECISION_OF = {v[0]: k for k, v in DECISION_CODES.items()}


@dataclass
class ReviewSr:
    """What one of our SRs says about one image."""

    path: str
    sop_instance_uid: str  # the SR's own
    study_uid: str
    image_sop_uid: str  # the source image its boxes are drawn on
    boxes: List[SrBox] = field(default_factory=list)
    verified: bool = False
    complete: bool = False
    content_datetime: str = ""
    #: ContentDate + ContentTime as written (microseconds kept): orders two SRs made within the same second
    content_key: str = ""


def _iso(dt: str) -> str:
    """DICOM DT → ISO 8601 ("" when unparsable)."""
    s = str(dt).strip()
    for fmt in ("%Y%m%d%H%M%S%z", "%Y%m%d%H%M%S.%f%z", "%Y%m%d%H%M%S", "%Y%m%d%H%M%S.%f"):
        try:
            t = _dt.datetime.strptime(s, fmt)
        except ValueError:
            continue
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        return t.astimezone(_dt.timezone.utc).isoformat(timespec="seconds")
    return ""


def _sort_key(ds) -> str:
    """``YYYYMMDDHHMMSS.ffffff`` from ContentDate / ContentTime (missing parts as zeros): sortable as text."""
    d = "".join(c for c in str(ds.get("ContentDate", "")) if c.isdigit())[:8].ljust(8, "0")
    t = str(ds.get("ContentTime", "")).strip()
    hms, _, frac = t.partition(".")
    hms = "".join(c for c in hms if c.isdigit())[:6].ljust(6, "0")
    frac = "".join(c for c in frac if c.isdigit())[:6].ljust(6, "0")
    return f"{d}{hms}.{frac}"


def _code_of(item):
    seq = item.get("ConceptCodeSequence") or []
    return (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator), str(seq[0].CodeMeaning)) if seq else None


def _name_of(item):
    seq = item.get("ConceptNameCodeSequence") or []
    return (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator)) if seq else None


def _pn(value) -> str:
    """'alice^' → 'alice' (the login we wrote); other names as written."""
    s = str(value)
    return s[:-1] if s.endswith("^") and s.count("^") == 1 else s


def is_review_sr(ds) -> bool:
    """A TID 1500 SR written by ELVIS Viewer (our private coding scheme + the review decision concept)."""
    if str(ds.get("SOPClassUID", "")) != "1.2.840.10008.5.1.4.1.1.88.33":
        return False
    tmpl = ds.get("ContentTemplateSequence") or []
    if not tmpl or str(tmpl[0].get("TemplateIdentifier", "")) != "1500":
        return False
    schemes = {str(i.get("CodingSchemeDesignator", "")) for i in ds.get("CodingSchemeIdentificationSequence", [])}
    return REVIEW_DECISION[1] in schemes


def read_review_sr(path: os.PathLike | str) -> ReviewSr:
    """Boxes and decisions of one of our review SRs; DicomExportError naming the file when it is not one."""
    import highdicom as hd
    import pydicom

    from elvis_core.io.dicom_open import _check_deflate

    path = os.fspath(path)
    try:
        _check_deflate(path)
        ds = pydicom.dcmread(path)
    except Exception as err:  # noqa: BLE001
        raise DicomExportError(f"not a readable DICOM file ({type(err).__name__})", path) from None
    if not is_review_sr(ds):
        raise DicomExportError("not an ELVIS review SR (TID 1500 with review decisions)", path)
    try:
        sr = hd.sr.ComprehensiveSR.from_dataset(ds)
        groups = sr.content.get_planar_roi_measurement_groups()
        observers = sr.content.get_observer_contexts()
    except Exception as err:  # noqa: BLE001 - a damaged tree: one line
        raise DicomExportError(f"review SR cannot be read back ({type(err).__name__})", path) from None
    main = ""
    for obs in observers:
        for it in obs:
            if _name_of(it) == ("121008", "DCM"):  # Person Observer Name
                main = _pn(it.PersonName)
                break
        if main:
            break
    out = ReviewSr(path=path, sop_instance_uid=str(ds.SOPInstanceUID), study_uid=str(ds.StudyInstanceUID),
                   image_sop_uid="", verified=str(ds.get("VerificationFlag", "")) == "VERIFIED",
                   complete=str(ds.get("CompletionFlag", "")) == "COMPLETE",
                   content_datetime=_iso(f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"),
                   content_key=_sort_key(ds))
    for g in groups:
        try:
            out.boxes.append(_group_box(g, main, out))
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
            raise DicomExportError(f"review SR group cannot be read back ({type(err).__name__})", path) from None
    return out


def _group_box(g, main: str, out: ReviewSr) -> SrBox:
    import numpy as np

    roi = g.roi
    pts = np.asarray(roi.value, dtype=float).reshape(-1, 2)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    ref = roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    if out.image_sop_uid and out.image_sop_uid != ref:
        raise ValueError("boxes on several images")
    out.image_sop_uid = str(ref)
    category, phrase, decision, reason, reviewer, when, original = "", "", "", "", main, "", None
    for it in g[0].ContentSequence:
        name = _name_of(it)
        vt = str(it.get("ValueType", ""))
        if name == ("121071", "DCM") and vt == "CODE":  # Finding
            category = category_from_code(*_code_of(it))
        elif name == QUALITATIVE_EVALUATIONS[:2] and vt == "TEXT":
            phrase = str(it.TextValue)
        elif name == REVIEW_DECISION[:2] and vt == "CODE":
            decision = _DECISION_OF.get(_code_of(it)[0], "")
            when = _iso(it.get("ObservationDateTime", "")) or when
        elif name == ORIGINAL_BOX[:2] and vt == "TEXT":
            vals = [float(v) for v in str(it.TextValue).split()]
            original = tuple(vals) if len(vals) == 4 and all(np.isfinite(vals)) else None
        elif name == ("121106", "DCM") and vt == "TEXT":
            reason = str(it.TextValue)
        elif name == ("121008", "DCM"):
            reviewer = _pn(it.PersonName)
    if not when and g[0].get("ObservationDateTime"):
        when = _iso(g[0].ObservationDateTime)
    if not decision:
        raise ValueError("group without a review decision")
    return SrBox(float(x0), float(y0), float(x1 - x0), float(y1 - y0), category, phrase, decision, reviewer,
                 when, reason, original)


def find_review_srs(folder: os.PathLike | str) -> List[ReviewSr]:
    """Our review SRs under a folder (a fetched PACS study), newest content first; unreadable ones skipped."""
    import pydicom

    from pathlib import Path

    found: List[ReviewSr] = []
    for p in sorted(Path(folder).rglob("*.dcm")):
        try:
            head = pydicom.dcmread(str(p), stop_before_pixels=True, specific_tags=[
                "SOPClassUID", "ContentTemplateSequence", "CodingSchemeIdentificationSequence"])
            if not is_review_sr(head):
                continue
            found.append(read_review_sr(p))
        except Exception:  # noqa: BLE001 - not ours / damaged: the caller lists what it found
            continue
    found.sort(key=lambda r: r.content_key, reverse=True)
    return found


def latest_per_image(srs: List[ReviewSr]) -> Optional[dict]:
    """image SOP UID → the newest review SR of it (a re-export supersedes the previous one)."""
    out: dict = {}
    for r in srs:  # newest first
        out.setdefault(r.image_sop_uid, r)
    return out
