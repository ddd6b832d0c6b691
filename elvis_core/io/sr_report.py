"""Reports stored as DICOM Structured Reports (Basic Text SR, Enhanced SR, Comprehensive SR) → :class:`Report`.

In a PACS the radiologist's report usually lives in the study as a Basic Text / Enhanced SR (TID 2000-style): a root
CONTAINER titled e.g. "Chest X-ray report", holding section CONTAINERs ("Findings", "Impression", ...) with TEXT
items, or TEXT items directly (concept names "Finding", "Impression", ...). We rebuild the plain text the way a
report is written — ``FINDINGS:`` / ``IMPRESSION:`` headers, one paragraph per TEXT item — and parse it with the
same rules as a ``.txt`` (sections and sentences as exact spans into that text). A TEXT item that already carries
its own headers on any line (a whole report pasted in one item, e.g. MIMIC's "FINAL REPORT" then "FINDINGS: ...")
is kept as it is: no header is added before it.

Our own TID 1500 measurement reports (reviewed boxes, title "Imaging Measurement Report") are not text reports and
are refused with a clear message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

from elvis_core.errors import ReportReadError
from elvis_core.io.report import Report

SR_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
}
#: document titles that are not narrative reports
_NOT_REPORTS = {("126000", "DCM"): "an imaging measurement report (boxes / measurements), not a text report"}
#: TEXT concept names → section header
_HEADER_OF = {"FINDING": "FINDINGS", "IMPRESSIONS": "IMPRESSION", "CONCLUSIONS": "CONCLUSION",
              "RECOMMENDATIONS": "RECOMMENDATION"}
_HAS_HEADER_RE = re.compile(r"(?m)^[ \t]*[A-Z][A-Z /&()\-]{2,40}:")
_MAX_TEXT = 1 << 20  # 1 MiB of report text is far more than any real report


def _meaning(item) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].get("CodeMeaning", "")).strip() if seq else ""


def _code(item) -> Tuple[str, str]:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return "", ""
    return str(seq[0].get("CodeValue", "")), str(seq[0].get("CodingSchemeDesignator", ""))


def _header(name: str) -> str:
    h = " ".join(name.upper().replace(":", " ").split())
    return _HEADER_OF.get(h, h)


def _sections(container, depth: int = 0) -> List[Tuple[str, List[str]]]:
    """(header, paragraphs) in document order; nested containers become their own sections."""
    out: List[Tuple[str, List[str]]] = []
    if depth > 16:  # absurd nesting: stop, never recurse without bound
        return out
    for item in container.get("ContentSequence", []) or []:
        vt = str(item.get("ValueType", ""))
        if vt == "TEXT":
            text = str(item.get("TextValue", "")).replace("\r\n", "\n").strip()
            if not text:
                continue
            head = _header(_meaning(item))
            if out and out[-1][0] == head:
                out[-1][1].append(text)
            else:
                out.append((head, [text]))
        elif vt == "CONTAINER":
            inner = _sections(item, depth + 1)
            if any(str(c.get("ValueType", "")) == "CONTAINER" for c in item.get("ContentSequence", []) or []):
                out.extend(inner)  # a container of sections: keep theirs
                continue
            paragraphs = [p for _h, ps in inner for p in ps]
            if paragraphs:
                out.append((_header(_meaning(item)), paragraphs))
    return out


def sr_report_text(ds) -> str:
    """The report text of an SR dataset (see the module docstring); ReportReadError when there is none."""
    sop = str(ds.get("SOPClassUID", ""))
    if sop not in SR_SOP_CLASSES:
        raise ReportReadError("DICOM object is not a structured report (no SR SOP class)")
    title = _code(ds)
    if title in _NOT_REPORTS:
        raise ReportReadError(_NOT_REPORTS[title])
    parts: List[str] = []
    for head, paragraphs in _sections(ds):
        body = "\n".join(paragraphs)
        if head and not _HAS_HEADER_RE.search(body):  # any line of its own with a header: keep the item as is
            parts.append(f"{head}:\n{body}")
        else:
            parts.append(body)
    text = "\n\n".join(parts).strip()
    if not text:
        raise ReportReadError("structured report holds no text")
    if len(text) > _MAX_TEXT:
        raise ReportReadError(f"structured report text is implausibly long ({len(text)} characters)")
    return text + "\n"


def read_sr_report(path: os.PathLike | str) -> Report:
    """Read a DICOM SR file as a :class:`Report` (``source_path`` = the file; spans into the rebuilt text)."""
    import pydicom

    from elvis_core.io.report_parse import parse_report

    from elvis_core.errors import DicomReadError
    from elvis_core.io.dicom_open import _check_deflate

    path = os.fspath(path)
    try:
        _check_deflate(path)  # pydicom inflates a deflated data set whole: refuse a bomb first
        ds = pydicom.dcmread(path)
    except DicomReadError as err:
        raise ReportReadError(err.problem, path) from None
    except Exception as err:  # noqa: BLE001 - any decoding failure is a bad file, said in one line
        raise ReportReadError(f"not a readable DICOM file ({type(err).__name__})", path) from None
    try:
        text = sr_report_text(ds)
    except ReportReadError as err:
        raise ReportReadError(err.problem, path) from None
    report = parse_report(text, path)
    report.warnings.append(f"report read from a DICOM {SR_SOP_CLASSES[str(ds.SOPClassUID)]}")
    return report


def is_text_report_sr(path: os.PathLike | str) -> Optional[bool]:
    """True for an SR that holds a narrative report, False for other DICOM objects; None when unreadable.
    Header-only read (no bulk data)."""
    import pydicom

    from elvis_core.io.dicom_open import _check_deflate
    from elvis_core.io.paths import is_regular_file

    if not is_regular_file(path):  # never open a FIFO or a device
        return None
    try:  # the values are converted lazily: a damaged SOPClassUID (wrong VR, a sequence) fails on access
        _check_deflate(os.fspath(path))  # pydicom inflates a deflated data set whole: refuse a bomb first
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "ConceptNameCodeSequence"])
        return str(ds.get("SOPClassUID", "")) in SR_SOP_CLASSES and _code(ds) not in _NOT_REPORTS
    except Exception:  # noqa: BLE001
        return None


def find_study_sr_report(image_path: os.PathLike | str, max_files: int = 200) -> Optional[str]:
    """The text-report SR of an image's study in a PACS cache layout (``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``: the
    image's grandparent folder is named after its Study Instance UID); None when there is none or the image does not
    lie in such a folder (a dataset folder is never searched). Header-only reads, at most ``max_files`` files."""
    import pydicom

    from elvis_core.io.dicom_open import _check_deflate

    img = Path(image_path)
    root = img.parent.parent
    if not root.name or any(c not in "0123456789." for c in root.name) or not root.is_dir():
        return None
    try:
        _check_deflate(str(img))
        study = str(pydicom.dcmread(str(img), stop_before_pixels=True,
                                    specific_tags=["StudyInstanceUID"]).get("StudyInstanceUID", ""))
    except Exception:  # noqa: BLE001 - not DICOM / unreadable: no SR to look for
        return None
    if study != root.name:
        return None
    for seen, p in enumerate(sorted(root.glob("*/*.dcm"))):
        if seen >= max_files:
            return None
        if p == img or not is_text_report_sr(p):
            continue
        try:
            uid = str(pydicom.dcmread(str(p), stop_before_pixels=True,
                                      specific_tags=["StudyInstanceUID"]).get("StudyInstanceUID", ""))
        except Exception:  # noqa: BLE001
            continue
        if uid == study:
            return str(p)
    return None
