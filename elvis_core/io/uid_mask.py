"""DICOM UIDs out of sight: a consistent pseudonym for a UID (PS3.15 action U) and UIDs masked inside free text.

Light on purpose (only ``re`` and ``hashlib``): the viewer masks its window title, study list and messages with it
without importing the PS3.15 tables of :mod:`elvis_core.io.privacy`, which re-exports these functions.
"""

from __future__ import annotations

import hashlib
import re

#: a DICOM UID inside free text (a file or folder name, a message): root 0/1/2, at least three components
_UID_IN_TEXT = re.compile(r"(?<![\w.])[0-2](?:\.(?:0|[1-9]\d{0,38})){2,}(?![\w]|\.\d)")


def pseudonym_uid(uid: str) -> str:
    """A consistent replacement UID (``2.25.<128 bits of sha256>``): the same input always gives the same output,
    so series and studies still group, and the original cannot be read back."""
    h = int.from_bytes(hashlib.sha256(str(uid).strip().encode("utf-8", "replace")).digest()[:16], "big")
    return f"2.25.{h}"


def short_pseudonym(uid: str) -> str:
    """A short display form of a UID's pseudonym (``uid~`` + its last 8 digits): the same input always gives the
    same text, so a list still groups, and nothing of the original is shown."""
    return "uid~" + pseudonym_uid(uid)[-8:]


def mask_uids_in_text(text: str, short: bool = True) -> str:
    """Every DICOM UID inside ``text`` (a PACS cache path ``…/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``, a study key, a
    message) replaced by its pseudonym (:func:`short_pseudonym` when ``short``, else :func:`pseudonym_uid`);
    the rest of the text unchanged."""
    fn = short_pseudonym if short else pseudonym_uid
    return _UID_IN_TEXT.sub(lambda m: fn(m.group(0)), str(text or ""))
