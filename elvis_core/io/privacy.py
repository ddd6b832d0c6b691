"""Patient-identifier hygiene: which DICOM keywords identify a person, and a masked tag listing for the inspector.

Nothing in the core logs, exports or puts into an exception message any value of :data:`IDENTIFYING_KEYWORDS`.
:func:`dicom_tag_rows` is the one place that may show them, and only when asked (``reveal_identifiers=True``).
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple


def _profile_database():
    """The newest PS3.15 Annex E basic-profile table shipped by ``dicom-anonymizer`` (generated there from the
    standard's Table E.1-1): {category name such as "X_TAGS": [(group, element), ...]}."""
    import importlib
    import pkgutil

    import dicomanonymizer.dicom_anonymization_databases as dbs

    names = sorted(m.name for m in pkgutil.iter_modules(dbs.__path__) if m.name.startswith("dicomfields_"))
    if not names:  # pragma: no cover - the package always ships at least one
        raise ImportError("dicom-anonymizer ships no PS3.15 table")
    mod = importlib.import_module(f"{dbs.__name__}.{names[-1]}")
    return names[-1].replace("dicomfields_", ""), {k: list(v) for k, v in vars(mod).items()
                                                    if k.endswith("_TAGS") and k != "ALL_TAGS" and isinstance(v, list)}


def _load_profile():
    version, db = _profile_database()
    actions: Dict[int, str] = {}
    for category, tags in db.items():
        letters = category[: -len("_TAGS")].replace("_STAR", "*").replace("_", "/")  # "X_Z_D" -> "X/Z/D"
        for tag in tags:
            if isinstance(tag, tuple) and len(tag) == 2:
                actions[(int(tag[0]) << 16) | int(tag[1])] = letters
    return version, actions


#: edition of PS3.15 the table comes from (e.g. "2026c") and {tag: action code "X", "Z", "D", "U", "X/Z/D", ...} of
#: every attribute of the DICOM PS3.15 Annex E basic application level confidentiality profile (Table E.1-1)
PROFILE_EDITION, BASIC_PROFILE = _load_profile()


from elvis_core.io.uid_mask import mask_uids_in_text, pseudonym_uid, short_pseudonym  # noqa: E402,F401


def _keywords_of(tags) -> frozenset:
    from pydicom.datadict import keyword_for_tag

    out = set()
    for t in tags:
        try:
            kw = keyword_for_tag(t)
        except Exception:  # noqa: BLE001
            kw = ""
        if kw:
            out.add(kw)
    return frozenset(out)


#: keywords of the profile's attributes (what the core never logs, exports or puts into a message)
IDENTIFYING_KEYWORDS = _keywords_of(BASIC_PROFILE)
#: profile attributes that are UIDs (action "U": replaced by a consistent pseudonym when shown)
UID_TAGS = frozenset(t for t, a in BASIC_PROFILE.items() if a == "U")


def is_identifying_tag(tag: int) -> bool:
    """True for an attribute of the basic confidentiality profile and for every private tag (odd group)."""
    tag = int(tag)
    return tag in BASIC_PROFILE or bool((tag >> 16) & 1)


def mask_uid_value(value) -> str:
    """Pseudonymise a (possibly multi-valued) UID value for display."""
    parts = value if isinstance(value, (list, tuple)) else [value]
    return "\\".join(pseudonym_uid(str(v)) for v in parts if str(v).strip())


MASK = "***"
#: characters no DICOM text value holds (besides TAB/LF/FF/CR and ESC for ISO 2022 character sets)
_CONTROL = __import__("re").compile("[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")

_UID_CHARS = frozenset("0123456789.")


def mask_meta(meta: Dict[str, object]) -> Dict[str, object]:
    """A copy of a metadata dict (``Radiograph.meta``, ``read_header``) fit for output: values of profile keywords
    masked, UIDs of the profile replaced by their consistent pseudonym."""
    from pydicom.datadict import tag_for_keyword

    out: Dict[str, object] = {}
    for k, v in meta.items():
        if k in IDENTIFYING_KEYWORDS:
            try:
                t = tag_for_keyword(k)
            except Exception:  # noqa: BLE001
                t = None
            out[k] = pseudonym_uid(str(v)) if t in UID_TAGS and v else MASK
        else:
            out[k] = v
    return out


def mask_uid_text(text: str) -> str:
    """A DICOM UID (digits and dots) → its pseudonym; anything else (a MIMIC file stem, a path) unchanged."""
    t = str(text or "")
    return pseudonym_uid(t) if t and set(t) <= _UID_CHARS and "." in t else t


def is_identifying(keyword: str) -> bool:
    return keyword in IDENTIFYING_KEYWORDS


def _damaged_text(elem) -> bool:
    """A text value holding control bytes (see ``_CONTROL``), single or multi-valued."""
    try:
        v = elem.value
        items = [v] if isinstance(v, (str, bytes)) else (list(v) if isinstance(v, (list, tuple)) or
                                                          type(v).__name__ == "MultiValue" else [v])
        return any(isinstance(x, str) and _CONTROL.search(x) for x in items)
    except BaseException as err:  # noqa: BLE001
        from elvis_core.io.dicom_header import is_fatal

        if is_fatal(err):
            raise
        return True


def _value_text(elem, limit: int = 200) -> str:
    try:
        if elem.VR == "SQ":
            return f"<sequence of {len(elem.value)} item(s)>"
        if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or elem.tag == 0x7FE00010:
            try:
                n = len(elem.value)
            except TypeError:
                n = 0
            return f"<{n} bytes>"
    except BaseException as err:  # noqa: BLE001
        from elvis_core.io.dicom_header import is_fatal

        if is_fatal(err):
            raise
        return "<unreadable>"
    try:
        text = str(elem.value)
    except BaseException as err:  # noqa: BLE001 - a malformed value must not break the listing
        from elvis_core.io.dicom_header import is_fatal

        if is_fatal(err):
            raise
        text = "<unreadable>"
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dicom_tag_rows(path: os.PathLike | str, reveal_identifiers: bool = False) -> List[Tuple[str, str, str, str]]:
    """All header elements (file meta first, then the data set; sequences summarised, pixel data not read) as
    ``(tag "(gggg,eeee)", keyword, VR, value text)``.

    Unless ``reveal_identifiers`` is true, every attribute of the DICOM PS3.15 basic confidentiality profile
    (:data:`BASIC_PROFILE`, Table E.1-1 of the standard as shipped by ``dicom-anonymizer``), every private tag,
    every tag that is not in the DICOM dictionary and any other person-name (PN) value is shown as ``"***"``; the profile's UIDs (action U) are replaced by a
    consistent pseudonym UID (:func:`pseudonym_uid`). An element whose value cannot be decoded is listed as
    ``<unreadable>``. Raises :class:`DicomReadError` when the file is not DICOM."""
    from elvis_core.io.dicom_header import is_fatal
    from elvis_core.io.dicom_open import _check_path, _dcmread

    path = _check_path(path)
    ds = _dcmread(path, stop_before_pixels=True)
    rows: List[Tuple[str, str, str, str]] = []
    for container in (getattr(ds, "file_meta", None), ds):
        if container is None:
            continue
        for tag in list(container.keys()):
            t = int(tag)
            tag_text = f"({t >> 16:04X},{t & 0xFFFF:04X})"
            try:
                elem = container[tag]
                keyword = elem.keyword or ""
                vr = str(elem.VR)
            except BaseException as err:  # noqa: BLE001 - one broken element must not hide the others
                if is_fatal(err):
                    raise
                rows.append((tag_text, "", "??", MASK if (is_identifying_tag(t) and not reveal_identifiers)
                             else "<unreadable>"))
                continue
            if reveal_identifiers:
                value = _value_text(elem)
            elif t in UID_TAGS:
                try:
                    value = mask_uid_value(list(elem.value) if vr != "SQ" and not isinstance(elem.value, str)
                                           else elem.value)
                except BaseException as err:  # noqa: BLE001
                    if is_fatal(err):
                        raise
                    value = MASK
            elif is_identifying_tag(t) or vr == "PN" or keyword in IDENTIFYING_KEYWORDS or not keyword:
                # no keyword: a tag not in the DICOM dictionary (often a damaged tag number, e.g. PatientName's
                # value under a corrupted tag): its content cannot be vetted, so it is masked too
                value = MASK
            else:
                value = _value_text(elem)
                if _damaged_text(elem):
                    # control bytes in a text value: a damaged length swallowed the following elements (and perhaps
                    # a patient's name with them): not shown
                    value = MASK + " (damaged value)"
            rows.append((tag_text, keyword, vr, value))
    return rows
