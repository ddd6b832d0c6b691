"""Which report belongs to which study: pairing BY RULE, never by being the only ``.txt`` around (DESIGN.md, "One
study on screen at a time").

A report is paired with a study only by one of these rules, in this order:

1. **MIMIC layout**: ``.../pXXXXXXXX/sYYYYYYYY/*.dcm|*.jpg`` → ``.../pXXXXXXXX/sYYYYYYYY.txt`` (or the same path
   under a separate reports tree);
2. **same StudyInstanceUID (SR)**: a DICOM SR holding a narrative report, of the study's StudyInstanceUID;
3. **same file stem**: ``img.dcm`` + ``img.txt`` beside it;
4. **explicit**: the user opened the image together with the report (``elvis-viewer IMAGE --report TXT``, both
   dropped together, or a report opened onto the image on screen).

A report that cannot be tied to exactly one study is *unpaired*: it is listed (with the reason) and shown with no
study. Every pairing says how it was made (:attr:`Pairing.how`), so the viewer's report header can say it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

MIMIC = "MIMIC layout"
SAME_STUDY_SR = "same StudyInstanceUID (SR)"
SAME_STEM = "same file stem"
EXPLICIT = "explicit"

_STUDY_DIR_RE = re.compile(r"^s\d{6,}$")
_PATIENT_DIR_RE = re.compile(r"^p\d{6,}$")

UNPAIRED = ("unpaired report: no rule ties it to exactly one study (MIMIC layout, SR of the StudyInstanceUID, the "
            "image's file stem, or IMAGE --report TXT); shown with no study")


@dataclass(frozen=True)
class Pairing:
    """A report file and the rule that tied it to its study."""

    path: str
    how: str

    @property
    def header(self) -> str:
        return f"paired: {self.how}"


def mimic_study_key(path: str) -> Optional[str]:
    """``sYYYYYYYY`` when ``path`` lies in ``.../pXXXXXXXX/sYYYYYYYY/`` (MIMIC-CXR layout), else None."""
    folder = os.path.dirname(os.path.abspath(path))
    study = os.path.basename(folder)
    patient = os.path.basename(os.path.dirname(folder))
    if _STUDY_DIR_RE.match(study) and _PATIENT_DIR_RE.match(patient):
        return study
    return None


def mimic_report(study_dir: str, reports_root: Optional[str] = None) -> Optional[str]:
    """Rule 1: ``sYYYYYYYY.txt`` beside the study folder ``study_dir`` (or under ``reports_root`` in the same
    layout: the extracted mimic-cxr-reports next to mimic-cxr-jpg)."""
    key = os.path.basename(os.path.normpath(study_dir))
    patient = os.path.dirname(os.path.abspath(study_dir))
    if not (_STUDY_DIR_RE.match(key) and _PATIENT_DIR_RE.match(os.path.basename(patient))):
        return None
    cand = os.path.join(patient, key + ".txt")
    if os.path.isfile(cand):
        return cand
    if reports_root:
        rel = os.path.join(os.path.basename(os.path.dirname(patient)), os.path.basename(patient), key + ".txt")
        for cand in (os.path.join(reports_root, "files", rel), os.path.join(reports_root, rel)):
            if os.path.isfile(cand):
                return cand
    return None


def stem_report(image_path: str) -> Optional[str]:
    """Rule 3: ``img.txt`` beside ``img.dcm``."""
    cand = os.path.splitext(image_path)[0] + ".txt"
    return cand if os.path.isfile(cand) and cand != image_path else None


def pair_study(dirs: Sequence[str], image_paths: Sequence[str], sr_reports: Sequence[str] = (),
               reports_root: Optional[str] = None) -> Optional[Pairing]:
    """The report of one study (its image folders ``dirs``, its images, the narrative SRs of its StudyInstanceUID)
    by the rules above, or None."""
    for d in dirs:
        p = mimic_report(d, reports_root)
        if p:
            return Pairing(p, MIMIC)
    from elvis_core.io.sr_report import is_text_report_sr

    for p in sorted(sr_reports):
        if is_text_report_sr(p):
            return Pairing(p, SAME_STUDY_SR)
    for img in sorted(image_paths):
        p = stem_report(img)
        if p:
            return Pairing(p, SAME_STEM)
    return None


def pair_single_file(image_path: str) -> Optional[Pairing]:
    """The report of an image opened on its own (no folder scan): MIMIC layout, then the same file stem."""
    d = os.path.dirname(os.path.abspath(image_path))
    p = mimic_report(d)
    if p:
        return Pairing(p, MIMIC)
    p = stem_report(image_path)
    return Pairing(p, SAME_STEM) if p else None


def unpaired(candidates: Iterable[str], used: Iterable[str]) -> List[Tuple[str, str]]:
    """(path, message) for every report candidate no study took."""
    taken = {os.path.abspath(p) for p in used if p}
    return [(p, f"{p}: {UNPAIRED}") for p in sorted(set(candidates)) if os.path.abspath(p) not in taken]


def study_of_file(path: str) -> Optional[str]:
    """The study a file belongs to, from its header (StudyInstanceUID) or the MIMIC layout; None when unknown."""
    key = mimic_study_key(path)
    if key:
        return key
    try:
        from elvis_core.io.scan_header import _read_scan_header

        uid = str(_read_scan_header(path).get("StudyInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - unreadable: the study is unknown (the image read says why)
        return None
    return uid or None


def explicit_pairing(image_paths: Sequence[str], report_path: str) -> Tuple[Dict[str, Pairing], Optional[str]]:
    """Rule 4: a report opened together with images. It is theirs when they all belong to ONE study (one image, or
    several of the same StudyInstanceUID / MIMIC study); else it is unpaired: ({}, message)."""
    images = list(image_paths)
    if not images:
        return {}, (f"{report_path}: unpaired report: no image was opened with it (open the image and the report "
                    "together, or elvis-viewer IMAGE --report TXT)")
    if len(images) > 1:
        studies = {study_of_file(p) for p in images}
        if None in studies or len(studies) != 1:
            return {}, (f"{report_path}: unpaired report: opened with {len(images)} images that are not all of "
                        "one study; open it with one image (elvis-viewer IMAGE --report TXT)")
    pairing = Pairing(report_path, EXPLICIT)
    return {p: pairing for p in images}, None


__all__ = ["Pairing", "MIMIC", "SAME_STUDY_SR", "SAME_STEM", "EXPLICIT", "UNPAIRED", "mimic_study_key",
           "mimic_report", "stem_report", "pair_study", "pair_single_file", "unpaired", "study_of_file",
           "explicit_pairing"]
