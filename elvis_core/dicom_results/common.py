"""What every result object shares: the error type, our equipment identity, coded concepts, reading the source
header, the attributes a result may carry about the patient / study (:func:`keep_filing_attributes`), writing, and
dicom3tools' validator."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from elvis_core.errors import ElvisError

# highdicom logs every module it copies from the source at INFO ("copy Patient-related attributes from dataset
# <SOP Instance UID>", nine lines per object): not for the command line's output, nor for its logs
logging.getLogger("highdicom").setLevel(logging.WARNING)

MANUFACTURER = "ELVIS Viewer"
MODEL_NAME = "elvis-viewer"
PRIVATE_SCHEME = "99ELVIS"

#: TID 1410 / TID 1419 row "Qualitative Evaluations": (C0034375, UMLS). UMLS CUIs are "C" + 7 digits.
QUALITATIVE_EVALUATIONS = ("C0034375", "UMLS", "Qualitative Evaluations")


def software_version() -> str:
    try:
        from importlib.metadata import version

        return version("elvis-viewer")
    except Exception:  # noqa: BLE001 - not installed (source checkout): still a valid Software Versions value
        return "0.1.0"


class DicomExportError(ElvisError):
    """A result cannot be written as DICOM (source is not an image, box outside the image, ...)."""


def image_label(source) -> str:
    """How an error names the source image: its SOP Instance UID as the short pseudonym ``uid~12345678`` (the same
    text the viewer shows while identifiers are hidden); an error message never carries a UID."""
    from elvis_core.io.uid_mask import short_pseudonym

    return f"image {short_pseudonym(str(getattr(source, 'SOPInstanceUID', '')))}"


@dataclass(frozen=True)
class ModelInfo:
    """The model (checkpoint) behind a result: its folder name and SHA-256 of its weights (hex, full or short)."""

    name: str = ""
    sha256: str = ""

    @classmethod
    def from_checkpoint(cls, path: os.PathLike | str) -> "ModelInfo":
        from elvis_core.model.checkpoint import checkpoint_hash

        return cls(Path(path).name, checkpoint_hash(path, length=64))

    @classmethod
    def from_engine(cls, engine) -> "ModelInfo":
        """A GroundingEngine's checkpoint: the full SHA-256 of its weights, else the engine's short hash."""
        name = str(getattr(engine, "checkpoint_name", "") or "")
        path = getattr(engine, "checkpoint_path", None)
        try:
            if path:
                return cls(name, cls.from_checkpoint(path).sha256)
        except Exception:  # noqa: BLE001 - weights moved since loading: the engine's own hash still names them
            pass
        return cls(name, str(getattr(engine, "checkpoint_hash", "") or ""))


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
#: MS-CXR's own spelling of each category, for reading an SR back
CATEGORY_NAMES = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "consolidation": "Consolidation",
                  "edema": "Edema", "pleural effusion": "Pleural Effusion", "pneumonia": "Pneumonia",
                  "pneumothorax": "Pneumothorax", "lung opacity": "Lung Opacity"}


def category_code(category: str):
    from pydicom.sr.coding import Code

    key = " ".join(str(category).lower().replace("_", " ").split())
    if key in CATEGORY_CODES:
        return Code(*CATEGORY_CODES[key])
    # unknown category: private code from its name (CS-safe value, max 16 chars)
    value = "".join(c for c in key.upper() if c.isalnum())[:16] or "FINDING"
    return Code(value, PRIVATE_SCHEME, lo(str(category).strip() or "Finding"))


def category_from_code(value: str, scheme: str, meaning: str) -> str:
    """The MS-CXR category of a coded finding (inverse of :func:`category_code`)."""
    for key, (v, s, _m) in CATEGORY_CODES.items():
        if (v, s) == (str(value), str(scheme)):
            return CATEGORY_NAMES[key]
    return str(meaning)


def private_scheme_item():
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
    from elvis_core.io.dicom_open import _check_deflate

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


def person_name(name: str) -> str:
    """A reviewer's login ("alice") as a DICOM PN: family-name component ("alice^"); "A^B" kept as given."""
    name = " ".join(str(name).replace("\\", "/").split())[:60]
    if not name:
        return "Unknown^Reviewer"
    return name if "^" in name else name + "^"


def lo(text: str) -> str:
    """A valid LO (64 chars, no backslash / control characters)."""
    t = " ".join(str(text).replace("\\", "/").split())
    return t if len(t) <= 64 else t[:63] + "\u2026" if any(ord(c) > 127 for c in t) else t[:61] + "..."


# ------------------------------------------------------------------------------------- what a result carries #

#: Patient / study attributes a result object keeps from its source: what a PACS needs to file it with the right
#: patient and study (Patient module Type 1/2, General Study module Type 1/2). Everything else of the source's
#: patient, study, visit and equipment modules (comments, age, size, weight, other IDs, addresses, study
#: description, institution, station, device serial number, physicians other than the referring one, ...) is
#: removed from the result.
FILING_ATTRIBUTES = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)
#: attributes outside groups 0010/0038 that describe the patient, the study or the source's equipment
_NOT_FILING = (
    "StudyDescription", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "PerformingPhysicianName", "OperatorsName",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "RequestingPhysician",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "IssuerOfAccessionNumberSequence",
    "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence", "RequestAttributesSequence",
    "PhysiciansOfRecordIdentificationSequence", "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName", "AdditionalPatientHistory", "OtherStudyNumbers", "InstitutionCodeSequence",
    "StudyComments", "InterpretationAuthor",
)


def keep_filing_attributes(ds, device_serial: Optional[str] = None) -> None:
    """Strip a result object down to :data:`FILING_ATTRIBUTES` about the patient and study (in place).

    ReferringPhysicianName (Type 2) stays, but empty. The Device Serial Number is ours (``device_serial``),
    never the source's; removed when ``device_serial`` is None."""
    for elem in list(ds):
        if elem.tag.group in (0x0010, 0x0038) and elem.keyword not in FILING_ATTRIBUTES:
            del ds[elem.tag]
        elif elem.tag.is_private:
            del ds[elem.tag]
    for kw in _NOT_FILING:
        if kw in ds:
            delattr(ds, kw)
    if "ReferringPhysicianName" in ds:
        ds.ReferringPhysicianName = ""
    if device_serial is None:
        if "DeviceSerialNumber" in ds:
            del ds.DeviceSerialNumber
    else:
        ds.DeviceSerialNumber = device_serial


def write_dataset(ds, path: os.PathLike | str) -> Path:
    """Write a DICOM dataset atomically (Part 10 file)."""
    from io import BytesIO

    import pydicom

    from elvis_core.atomic import atomic_write_bytes

    buf = BytesIO()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(buf, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        ds.save_as(buf, write_like_original=False)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_bytes(path, buf.getvalue())
    except OSError as err:
        raise DicomExportError(f"cannot write ({err.strerror or type(err).__name__})", path) from None


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
