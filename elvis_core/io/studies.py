"""Find studies on disk: any folder of DICOM files, the MIMIC-CXR layout, a DICOMDIR (DESIGN.md, "Studies on disk").

:func:`scan_folder` walks a folder recursively, reads DICOM **headers only** (a few tags, never the pixel data),
groups images into :class:`Study` / :class:`Series`, and pairs reports with studies by rule
(:mod:`elvis_core.io.report_pairing`: MIMIC layout, a report SR of the same StudyInstanceUID, a ``.txt`` with an
image's stem). A ``.txt`` no study takes is listed in ``unpaired`` and given to no study (a loose note in a folder of
two studies used to become the report of both).

Non-DICOM junk (README, .DS_Store, ...) is skipped silently; a file that claims to be DICOM (DICM preamble or
``.dcm``/``.dicom`` extension) and cannot be read is listed in ``errors`` with the reason, and the scan goes on.
Valid DICOM objects without an image (SR, presentation states) are listed in ``skipped``. JPG/PNG files in the MIMIC
layout become :class:`ImageRef` too (uids: the file stem = MIMIC ``dicom_id``; modality "").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from elvis_core.errors import DicomReadError, ElvisError, StudyScanError
from elvis_core.io.images import raster_header_shape
from elvis_core.io.report_pairing import mimic_study_key, pair_study, unpaired
from elvis_core.io.scan_header import (_FAST_TAGS, _SCAN_TAGS, _fast_scan_header,  # noqa: F401 (re-exported)
                                       _read_scan_header, _read_scan_header_pydicom)

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

_STUDY_DIR_RE = re.compile(r"^s\d{6,}$")
_PATIENT_DIR_RE = re.compile(r"^p\d{6,}$")
_DICOM_EXTS = (".dcm", ".dicom", ".dic")
from elvis_core.io.images import IMAGE_EXTENSIONS as _IMAGE_EXTS  # noqa: E402  (one suffix list)
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass
class ImageRef:
    path: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    view_position: str = ""
    modality: str = ""
    rows: int = 0
    cols: int = 0
    frames: int = 1
    #: InstanceNumber when present (sorting only)
    instance_number: Optional[int] = None


@dataclass
class Series:
    uid: str
    description: str = ""
    modality: str = ""
    images: List[ImageRef] = field(default_factory=list)
    #: SeriesNumber when present (sorting only)
    number: Optional[int] = None


@dataclass
class Study:
    uid: str
    #: MIMIC "sYYYYYYYY" when in that layout, else the StudyInstanceUID
    key: str
    #: the folder holding the study's images (the common parent of its files)
    root: str
    report_path: Optional[str] = None
    series: List[Series] = field(default_factory=list)
    #: how the report was paired (report_pairing.MIMIC / SAME_STUDY_SR / SAME_STEM), "" without a report
    report_pairing: str = ""

    @property
    def images(self) -> List[ImageRef]:
        return [im for s in self.series for im in s.images]


@dataclass
class ScanResult:
    studies: List[Study] = field(default_factory=list)
    #: (path, message) for files that looked like images but could not be read, and folders that could not be listed
    errors: List[Tuple[str, str]] = field(default_factory=list)
    n_files_seen: int = 0
    cancelled: bool = False
    #: (path, reason) for valid DICOM objects that hold no image (SR, presentation state, DICOMDIR)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    #: (path, message) for reports no study could be tied to (shown with no study)
    unpaired: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(len(st.images) for st in self.studies)


# ------------------------------------------------------------------------------------------------------------------ #


_mimic_study_key = mimic_study_key


def _int(v, default=None):
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):
        return default


def _image_size(path: str) -> Tuple[int, int]:
    """(rows, cols) of a PNG/JPEG from its header bytes (no decoding); (0, 0) if unknown."""
    try:
        return raster_header_shape(path)
    except ElvisError:
        return 0, 0


def _classify(path: str, name: str) -> str:
    """"dicom", "image", "report", "dicomdir" or "junk" from the name and the first bytes."""
    from elvis_core.io.dicom_open import is_dicom_file

    lower = name.lower()
    if name in _JUNK_NAMES or name.startswith("._"):
        return "junk"
    if name.upper() == "DICOMDIR":
        return "dicomdir"
    ext = os.path.splitext(lower)[1]
    if ext == ".txt":
        return "report"
    if ext in _IMAGE_EXTS:
        return "image"
    if ext in _DICOM_EXTS:
        return "dicom"
    return "dicom" if is_dicom_file(path) else "junk"


class _Builder:
    """Accumulates image refs and report candidates, then groups them into studies."""

    def __init__(self, reports_root: Optional[str] = None) -> None:
        self.reports_root = reports_root
        self.refs: List[Tuple[ImageRef, str, Optional[int], str]] = []  # (ref, series description, series number, key)
        self.reports: Dict[str, List[str]] = {}  # folder -> .txt paths in it
        self.sr_reports: Dict[str, List[str]] = {}  # StudyInstanceUID -> SR files of that study

    def add_report(self, path: str) -> None:
        self.reports.setdefault(os.path.dirname(path), []).append(path)

    def add_dicom(self, path: str, errors: List[Tuple[str, str]], skipped: List[Tuple[str, str]]) -> None:
        from elvis_core.io.dicom_open import _is_image_sop_class, _non_image_kind, is_dicom_file

        try:
            if os.path.getsize(path) == 0:
                errors.append((path, "empty file (0 bytes)"))
                return
            ds = _read_scan_header(path)
            if not isinstance(ds, dict) and not hasattr(ds, "_fast"):
                from elvis_core.io.dicom_header import sanitize

                sanitize(ds, path, required=frozenset())
        except ElvisError as err:
            errors.append((path, err.problem))
            return
        except BaseException as err:  # noqa: BLE001 - one bad file never stops the scan (PanicException included)
            from elvis_core.io.dicom_header import is_fatal

            if is_fatal(err):
                raise
            if is_dicom_file(path):
                errors.append((path, f"corrupt or truncated DICOM header ({type(err).__name__})"))
            else:
                errors.append((path, "not a DICOM file (no DICM preamble and no DICOM header)"))
            return
        kind = _non_image_kind(ds)
        if kind is not None:
            if str(ds.get("Modality", "") or "") == "SR" or str(ds.get("SOPClassUID", "")).startswith(
                    "1.2.840.10008.5.1.4.1.1.88."):  # a report may live in an SR of the study (sr_report.py)
                uid = str(ds.get("StudyInstanceUID", "") or "")
                if uid:
                    self.sr_reports.setdefault(uid, []).append(path)
                return  # a report (or a review SR) belongs to the study: not a problem
            if str(ds.get("Modality", "") or "") == "SEG":
                return  # a segmentation result of the study (a fetched map): not a problem either
            skipped.append((path, f"no image ({kind})"))
            return
        if str(ds.get("SOPClassUID", "")) == "1.2.840.10008.5.1.4.1.1.7" and \
                str(ds.get("SeriesDescription", "") or "").startswith("ELVIS heat map"):
            return  # our own heat-map Secondary Capture (dicom_results.sc): a picture for PACS viewers, not a film
        rows, cols = _int(ds.get("Rows", 0), 0), _int(ds.get("Columns", 0), 0)
        if not rows or not cols:
            if "Rows" not in ds and (len(ds) == 0 or _is_image_sop_class(ds)):
                errors.append((path, "truncated or damaged DICOM header (an image without Rows/Columns)"))
            elif "Rows" not in ds:
                skipped.append((path, "no image (no Rows/Columns)"))
            else:
                errors.append((path, f"zero-size image (Rows={rows}, Columns={cols})"))
            return
        from elvis_core.io.truncation import pixel_data_problem

        cut = pixel_data_problem(path)  # cut short in its pixel data: a problem now, not a failure when opened
        if cut:
            errors.append((path, cut))
            return
        key = _mimic_study_key(path)
        study_uid = str(ds.get("StudyInstanceUID", "") or "") or key or os.path.dirname(os.path.abspath(path))
        series_uid = str(ds.get("SeriesInstanceUID", "") or "") or f"{study_uid}/series"
        ref = ImageRef(
            path=path,
            sop_instance_uid=str(ds.get("SOPInstanceUID", "") or os.path.splitext(os.path.basename(path))[0]),
            series_instance_uid=series_uid,
            study_instance_uid=study_uid,
            view_position=str(ds.get("ViewPosition", "") or ""),
            modality=str(ds.get("Modality", "") or ""),
            rows=rows,
            cols=cols,
            frames=max(_int(ds.get("NumberOfFrames", 1), 1) or 1, 1),
            instance_number=_int(ds.get("InstanceNumber", None)),
        )
        self.refs.append((ref, str(ds.get("SeriesDescription", "") or ""), _int(ds.get("SeriesNumber", None)),
                          key or study_uid))

    def add_image(self, path: str, errors: List[Tuple[str, str]]) -> None:
        key = _mimic_study_key(path)
        if key is None:
            return  # plain pictures outside the MIMIC layout are not studies
        rows, cols = _image_size(path)
        if not rows or not cols:
            errors.append((path, "not a readable JPG/PNG (no image size in its header)"))
            return
        stem = os.path.splitext(os.path.basename(path))[0]
        ref = ImageRef(path=path, sop_instance_uid=stem, series_instance_uid=key, study_instance_uid=key,
                       view_position="", modality="", rows=rows, cols=cols, frames=1)
        self.refs.append((ref, "", None, key))

    def build(self) -> List[Study]:
        studies: Dict[str, Study] = {}
        series_of: Dict[Tuple[str, str], Series] = {}
        folders: Dict[str, set] = {}
        stems: Dict[str, List[str]] = {}
        for ref, desc, number, key in self.refs:
            st = studies.get(ref.study_instance_uid)
            if st is None:
                st = studies[ref.study_instance_uid] = Study(uid=ref.study_instance_uid, key=key, root="")
            elif _STUDY_DIR_RE.match(key) and not _STUDY_DIR_RE.match(st.key):
                st.key = key
            se = series_of.get((st.uid, ref.series_instance_uid))
            if se is None:
                se = series_of[(st.uid, ref.series_instance_uid)] = Series(
                    uid=ref.series_instance_uid, description=desc, modality=ref.modality, number=number
                )
                st.series.append(se)
            se.images.append(ref)
            folders.setdefault(st.uid, set()).add(os.path.dirname(os.path.abspath(ref.path)))
            stems.setdefault(st.uid, []).append(ref.path)
        for st in studies.values():
            dirs = sorted(folders[st.uid])
            st.root = dirs[0] if len(dirs) == 1 else os.path.commonpath(dirs)
            pairing = pair_study(dirs, stems[st.uid], self.sr_reports.get(st.uid, ()), self.reports_root)
            if pairing is not None:
                st.report_path, st.report_pairing = pairing.path, pairing.how
            for se in st.series:
                se.images.sort(key=lambda r: (r.instance_number if r.instance_number is not None else 1 << 30, r.path))
            st.series.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))
        return sorted(studies.values(), key=lambda s: (s.key, s.uid))

    def unpaired(self, studies: List[Study]) -> List[Tuple[str, str]]:
        """Reports no study took: every .txt candidate, and narrative SRs of a StudyInstanceUID with no image."""
        from elvis_core.io.sr_report import is_text_report_sr

        cands = [p for ps in self.reports.values() for p in ps]
        uids = {st.uid for st in studies}
        cands += [p for uid, ps in self.sr_reports.items() if uid not in uids for p in ps if is_text_report_sr(p)]
        return unpaired(cands, [st.report_path for st in studies])


def scan_folder(
    root: os.PathLike | str,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelFn] = None,
    reports_root: Optional[os.PathLike | str] = None,
) -> ScanResult:
    """Scan ``root`` (a folder, recursively, or a single file) for studies. Header-only reads.

    ``reports_root``: optional separate tree holding MIMIC reports in the same layout (``[files/]pXX/pXXXXXXXX/
    sYYYYYYYY.txt``), e.g. the extracted mimic-cxr-reports next to mimic-cxr-jpg; used when no report lies beside the
    study folder.

    ``progress(done, total)`` is called after each candidate file; ``cancel()`` is polled before each file, and a
    cancelled scan returns what it found so far with ``cancelled=True``. Raises :class:`StudyScanError` only when
    ``root`` itself does not exist or cannot be listed; problems with single files go to ``errors``.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise StudyScanError("no such file or folder", root)
    result = ScanResult()
    files: List[Tuple[str, str]] = []
    if os.path.isfile(root):
        files.append((root, os.path.basename(root)))
        # a report beside a single file
        for cand in (os.path.splitext(root)[0] + ".txt",):
            if os.path.isfile(cand):
                files.append((cand, os.path.basename(cand)))
        key = _mimic_study_key(root)
        if key:
            cand = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(root))), key + ".txt")
            if os.path.isfile(cand):
                files.append((cand, os.path.basename(cand)))
    else:
        if not os.access(root, os.R_OK | os.X_OK):
            raise StudyScanError("folder cannot be read (permission denied)", root)

        def onerror(err: OSError) -> None:
            result.errors.append((getattr(err, "filename", None) or root,
                                  f"folder cannot be read ({err.strerror or type(err).__name__})"))

        for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
            dirnames.sort()
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in sorted(filenames):
                files.append((os.path.join(dirpath, name), name))

    builder = _Builder(None if reports_root is None else os.fspath(reports_root))
    # reports first (cheap, and needed to match); the rest are the progress units
    work: List[Tuple[str, str]] = []
    for path, name in files:
        if name.lower().endswith(".txt"):
            builder.add_report(path)
        else:
            work.append((path, name))
    result.n_files_seen = len(files)
    total = len(work)
    _scan_files(work, builder, result, progress, cancel)
    result.studies = builder.build()
    result.unpaired = builder.unpaired(result.studies)
    return result


def _scan_files(work, builder: "_Builder", result: ScanResult, progress, cancel) -> None:
    total = len(work)
    for i, (path, name) in enumerate(work):
        if cancel is not None and cancel():
            result.cancelled = True
            break
        try:
            kind = _classify(path, name)
            if kind == "dicom":
                builder.add_dicom(path, result.errors, result.skipped)
            elif kind == "image":
                builder.add_image(path, result.errors)
            elif kind == "dicomdir":
                result.skipped.append((path, "DICOMDIR (open it with read_dicomdir)"))
        except OSError as err:
            result.errors.append((path, f"cannot read ({err.strerror or type(err).__name__})"))
        except ElvisError as err:
            result.errors.append((path, err.problem))
        except BaseException as err:  # noqa: BLE001 - a bad file is listed, the scan goes on
            from elvis_core.io.dicom_header import is_fatal

            if is_fatal(err):
                raise
            result.errors.append((path, f"unreadable ({type(err).__name__})"))
        if progress is not None:
            progress(i + 1, total)


def read_dicomdir(path: os.PathLike | str) -> ScanResult:
    """Studies listed in a DICOMDIR. Each referenced image's header is read (to confirm it exists and get its size);
    missing or unreadable referenced files go to ``errors``. Raises :class:`StudyScanError` if the DICOMDIR itself
    cannot be read."""
    import pydicom
    from pydicom.fileset import FileSet

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "DICOMDIR")
    if not os.path.isfile(path):
        raise StudyScanError("no such DICOMDIR", path)
    try:
        fs = FileSet(pydicom.dcmread(path))
    except Exception as err:  # noqa: BLE001
        raise StudyScanError(f"not a readable DICOMDIR ({type(err).__name__}: {str(err)[:120]})", path) from None
    result = ScanResult()
    builder = _Builder()
    seen_dirs = set()
    instances = list(fs)
    for inst in instances:
        try:
            if inst.node.record_type not in ("IMAGE",):
                continue
            p = os.fspath(inst.path)
        except Exception as err:  # noqa: BLE001
            result.errors.append((path, f"bad directory record ({type(err).__name__})"))
            continue
        result.n_files_seen += 1
        if not os.path.isfile(p):
            result.errors.append((p, "referenced by the DICOMDIR but missing"))
            continue
        builder.add_dicom(p, result.errors, result.skipped)
        d = os.path.dirname(p)
        if d not in seen_dirs:
            seen_dirs.add(d)
            try:
                for name in os.listdir(d):
                    if name.lower().endswith(".txt"):
                        builder.add_report(os.path.join(d, name))
            except OSError:
                pass
    result.studies = builder.build()
    result.unpaired = builder.unpaired(result.studies)
    return result


def scan(
    path: os.PathLike | str,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelFn] = None,
    reports_root: Optional[os.PathLike | str] = None,
) -> ScanResult:
    """A DICOMDIR file → :func:`read_dicomdir`; anything else → :func:`scan_folder`."""
    p = os.fspath(path)
    if os.path.isfile(p) and os.path.basename(p).upper() == "DICOMDIR":
        return read_dicomdir(p)
    return scan_folder(p, progress=progress, cancel=cancel, reports_root=reports_root)


__all__ = [
    "ImageRef",
    "Series",
    "Study",
    "ScanResult",
    "scan_folder",
    "read_dicomdir",
    "scan",
    "DicomReadError",
    "ElvisError",
]
