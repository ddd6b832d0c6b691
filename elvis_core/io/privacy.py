"""Patient-identifier hygiene: which DICOM keywords identify a person, and a masked tag listing for the inspector.

Nothing in the core logs, exports or puts into an exception message any value of :data:`IDENTIFYING_KEYWORDS`.
:func:`dicom_tag_rows` is the one place that may show them, and only when asked (``reveal_identifiers=True``).
"""

from __future__ import annotations

import os
from typing import List, Tuple

from elvis_core.errors import DicomReadError

#: DICOM keywords whose values identify a patient, a person or an institution (PS3.15 Annex E, the usual subset).
IDENTIFYING_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthName",
        "PatientMotherBirthName",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "IssuerOfPatientID",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientInsurancePlanCodeSequence",
        "MedicalRecordLocator",
        "PatientComments",
        "MilitaryRank",
        "BranchOfService",
        "EthnicGroup",
        "Occupation",
        "AdditionalPatientHistory",
        "ResponsiblePerson",
        "ResponsibleOrganization",
        "ReferringPhysicianName",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansOfRecord",
        "RequestingPhysician",
        "OperatorsName",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "AccessionNumber",
        "StudyID",
        "DeviceSerialNumber",
        "RequestAttributesSequence",
        "ContentCreatorName",
        "PersonName",
        "ScheduledPerformingPhysicianName",
        "PerformedProcedureStepID",
        "RequestedProcedureID",
    }
)

MASK = "***"


def is_identifying(keyword: str) -> bool:
    return keyword in IDENTIFYING_KEYWORDS


def _value_text(elem, limit: int = 200) -> str:
    if elem.VR == "SQ":
        return f"<sequence of {len(elem.value)} item(s)>"
    if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or elem.tag == 0x7FE00010:
        try:
            n = len(elem.value)
        except TypeError:
            n = 0
        return f"<{n} bytes>"
    try:
        text = str(elem.value)
    except Exception:  # noqa: BLE001 - a malformed value must not break the listing
        text = "<unreadable>"
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dicom_tag_rows(path: os.PathLike | str, reveal_identifiers: bool = False) -> List[Tuple[str, str, str, str]]:
    """All header elements (file meta first, then the data set; sequences summarised, pixel data not read) as
    ``(tag "(gggg,eeee)", keyword, VR, value text)``. Values of identifying keywords (and of any person-name VR) are
    ``"***"`` unless ``reveal_identifiers`` is true. Raises :class:`DicomReadError` when the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DicomReadError("no such file", path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise DicomReadError("not a DICOM file (no DICM preamble)", path) from None
    except Exception as err:  # noqa: BLE001
        raise DicomReadError(f"cannot read DICOM header ({type(err).__name__})", path) from None
    rows: List[Tuple[str, str, str, str]] = []
    elements = list(getattr(ds, "file_meta", None) or []) + list(ds)
    for elem in elements:
        try:
            keyword = elem.keyword or ""
            vr = str(elem.VR)
            tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
            hide = (keyword in IDENTIFYING_KEYWORDS or vr == "PN") and not reveal_identifiers
            value = MASK if hide else _value_text(elem)
        except Exception:  # noqa: BLE001 - one broken element must not hide the others
            continue
        rows.append((tag, keyword, vr, value))
    return rows
