"""Image–report pairs for training: found under a MIMIC-CXR-layout root (DICOM or JPG) or a phantom folder, and split.

:func:`find_pairs` scans the root (``elvis_core.io.studies.scan_folder``, headers only), keeps PA/AP images, reads
each study's report (``elvis_core.io.report.read_report``) and uses its FINDINGS + IMPRESSION text
(:func:`report_training_text`); optionally the patients of an MS-CXR CSV are excluded
(:func:`excluded_patients_from_csv`) so evaluation images never leak into training. Everything it drops is counted
in :class:`PairStats` (no patient identifiers in messages). JPG images carry no view tag: :func:`read_mimic_views`
reads their views from MIMIC-CXR-JPG's metadata CSV.

:func:`split_val` / :func:`split_val_ids` hold out a validation set by patient (pairs, or prepared-cache entries).

No torch here: the datasets that decode and serve these pairs are in :mod:`elvis_core.training.data` (which
re-exports these names).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from elvis_core.errors import ConfigError, ElvisError

REPORT_SECTIONS = ("FINDINGS", "IMPRESSION")


@dataclass
class Pair:
    image_path: str
    text: str
    study_key: str
    patient: str = ""  # MIMIC patient folder (pXXXXXXXX) when in that layout; not a DICOM identifier
    view: str = ""  # ViewPosition (tag, or MIMIC metadata for JPG); "" when unknown
    report_path: str = ""


@dataclass
class PairStats:
    studies_seen: int = 0
    images_seen: int = 0
    pairs: int = 0
    no_report: int = 0
    empty_report_sections: int = 0
    unreadable_reports: int = 0
    wrong_view: int = 0
    unknown_view_kept: int = 0
    excluded_patients: int = 0
    scan_errors: int = 0
    unreadable_images: int = 0
    problems: List[Tuple[str, str]] = field(default_factory=list)  # (path, message), first few only

    def lines(self) -> List[str]:
        return [f"{self.pairs} image-report pairs from {self.studies_seen} studies / {self.images_seen} images",
                f"dropped: {self.no_report} without report, {self.empty_report_sections} reports without FINDINGS/"
                f"IMPRESSION text, {self.unreadable_reports} unreadable reports, {self.wrong_view} non-PA/AP views, "
                f"{self.excluded_patients} images of excluded (MS-CXR) patients, {self.scan_errors} unreadable files "
                f"in the scan, {self.unreadable_images} unreadable images"
                + (f"; kept {self.unknown_view_kept} images without a view position (JPG/PNG)"
                   if self.unknown_view_kept else "")]


def report_training_text(report) -> str:
    """FINDINGS + IMPRESSION of a parsed report (whitespace collapsed); the whole text when it has no sections."""
    parts = []
    for name in REPORT_SECTIONS:
        sec = report.section(name)
        if sec is not None and sec.end > sec.start:
            parts.append(report.text[sec.start:sec.end])
    if not parts and not report.sections:
        parts = [report.text]
    return " ".join(" ".join(p.split()) for p in parts).strip()


def excluded_patients_from_csv(path: str, splits: Sequence[str] = ()) -> Set[str]:
    """MIMIC patient folders (``pXXXXXXXX``) named by an MS-CXR CSV's ``path`` column (only rows of ``splits`` when
    given, e.g. ``["val", "test"]`` for a phantom set whose CSV also covers the training patients)."""
    from elvis_core.io.annotations import patient_id_from_path, read_ms_cxr_csv

    aset = read_ms_cxr_csv(path)
    out: Set[str] = set()
    for ph in aset.phrases:
        if splits and (ph.split or "") not in splits:
            continue
        pid = patient_id_from_path(ph.path)
        if pid:
            out.add(pid)
    return out


def read_mimic_views(path: str) -> Dict[str, str]:
    """``dicom_id -> ViewPosition`` from MIMIC-CXR-JPG's ``mimic-cxr-2.0.0-metadata.csv`` (or ``.csv.gz``), for JPG
    images, which carry no view tag."""
    import csv
    import gzip

    if not os.path.isfile(path):
        raise ConfigError("MIMIC metadata CSV not found", path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            if "dicom_id" not in cols or "ViewPosition" not in cols:
                raise ConfigError(f"MIMIC metadata CSV needs columns dicom_id and ViewPosition (found: "
                                  f"{', '.join(cols)})", path)
            return {row["dicom_id"]: (row["ViewPosition"] or "").strip().upper() for row in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"cannot read the MIMIC metadata CSV ({err})", path) from err


def find_pairs(root: str, views: Sequence[str] = ("PA", "AP"), exclude_patients: Optional[Set[str]] = None,
               max_pairs: int = 0, progress: Optional[Callable[[int, int], None]] = None,
               view_of: Optional[Dict[str, str]] = None) -> Tuple[List[Pair], PairStats]:
    """Image-report pairs under ``root``. ``view_of``: dicom_id (file stem) -> view, for images without a view tag
    (MIMIC-CXR-JPG; see :func:`read_mimic_views`)."""
    from elvis_core.io.annotations import patient_id_from_path
    from elvis_core.io.report import read_report
    from elvis_core.io.studies import scan_folder

    if not os.path.isdir(root):
        raise ConfigError("data root is not a folder", root)
    scan = scan_folder(root, progress=progress)
    stats = PairStats(scan_errors=len(scan.errors))
    for path, msg in scan.errors[:5]:
        stats.problems.append((path, msg))
    views_u = {v.upper() for v in views}
    pairs: List[Pair] = []
    for st in scan.studies:
        stats.studies_seen += 1
        stats.images_seen += len(st.images)
        if not st.report_path:
            stats.no_report += len(st.images)
            continue
        try:
            text = report_training_text(read_report(st.report_path))
        except ElvisError as err:
            stats.unreadable_reports += 1
            if len(stats.problems) < 10:
                stats.problems.append((st.report_path, err.problem))
            continue
        if not text:
            stats.empty_report_sections += 1
            continue
        for im in st.images:
            view = (im.view_position or "").upper()
            if not view and view_of:
                view = view_of.get(os.path.splitext(os.path.basename(im.path))[0], "")
            if view and view not in views_u:
                stats.wrong_view += 1
                continue
            if not view:
                if im.path.lower().endswith((".dcm", ".dicom", ".dic")):
                    stats.wrong_view += 1  # a DICOM without ViewPosition: unknown projection, not used
                    continue
                stats.unknown_view_kept += 1
            pid = patient_id_from_path(os.path.relpath(im.path, root)) or ""
            if exclude_patients and pid in exclude_patients:
                stats.excluded_patients += 1
                continue
            pairs.append(Pair(image_path=im.path, text=text, study_key=st.key, patient=pid, view=view,
                              report_path=st.report_path))
    pairs.sort(key=lambda p: p.image_path)
    if max_pairs and len(pairs) > max_pairs:
        pairs = pairs[:max_pairs]
    stats.pairs = len(pairs)
    return pairs, stats


def split_val(pairs: List[Pair], fraction: float, seed: int) -> Tuple[List[Pair], List[Pair]]:
    """Split by patient (or study when no patient folder) so no patient is on both sides."""
    if fraction <= 0:
        return pairs, []
    groups: Dict[str, List[Pair]] = {}
    for p in pairs:
        groups.setdefault(p.patient or p.study_key, []).append(p)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    rng.shuffle(keys)
    n_val = max(1, int(math.floor(len(keys) * fraction)))
    val_keys = set(keys[:n_val])
    return ([p for p in pairs if (p.patient or p.study_key) not in val_keys],
            [p for p in pairs if (p.patient or p.study_key) in val_keys])


def split_val_ids(ids: np.ndarray, keys: Sequence[str], fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`split_val` for prepared-cache entry ids, grouped by ``keys`` (patient, else study): the same patients
    are held out as :func:`split_val` would hold out from the same pairs."""
    ids = np.asarray(ids, dtype=np.int64)
    if fraction <= 0:
        return ids, ids[:0]
    groups = sorted(set(keys))
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    n_val = max(1, int(math.floor(len(groups) * fraction)))
    val_keys = set(groups[:n_val])
    is_val = np.array([k in val_keys for k in keys], dtype=bool)
    return ids[~is_val], ids[is_val]
