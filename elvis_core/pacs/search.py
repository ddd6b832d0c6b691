"""QIDO-RS study search done the way PACS servers actually answer it.

- **Wildcards**: DICOM matching (PS3.4 C.2.2.2.4) uses ``*`` (any run of characters) and ``?`` (one character),
  and both Orthanc and DCM4CHEE implement exactly that — *if the characters arrive*. dicomweb-client encodes query
  values with ``quote_plus``, which sends ``PHANTOM14*`` as ``PHANTOM14%2A``; Orthanc then looks for a literal
  asterisk and finds nothing. We build the query string ourselves: every value percent-encoded except ``*`` and
  ``?`` (both are legal in a URI query, RFC 3986 §3.4), so ``PatientID=PHANTOM14*`` reaches the server as typed.
  ``fuzzymatching`` is never sent (servers differ; DICOM wildcard matching is the portable part).
- **Paging**: servers cap QIDO answers (DCM4CHEE's ``QIDOMaxNumberOfResults``, Orthanc's ``LimitFindResults``) and
  say so only in a ``Warning`` header, if at all; and Orthanc 1.10 applies ``limit``/``offset`` *before* its
  ``ModalitiesInStudy`` filter, so plain paged requests miss studies there. We ask for everything first, then with
  ``offset`` = what we have for as long as new studies come (up to :data:`MAX_MATCHES`), merge the per-modality
  queries by Study Instance UID, sort newest first, and return the requested page with the total:
  "showing 51–100 of 234 studies". The pages the *user* sees are cut here, so they are consistent.
- **Dates**: checked with ``datetime.strptime`` (``2004-13-01`` is refused in one line, not sent).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence
from urllib.parse import quote

#: at most this many matching studies are listed and counted (a wider search should be narrowed)
MAX_MATCHES = 5000
#: studies asked for per QIDO request while paging through the matches
PAGE = 200
FIELDS = ("StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
          "AccessionNumber", "PatientID", "StudyDate")


def parse_date(text: str, what: str = "date") -> str:
    """YYYY-MM-DD or YYYYMMDD → YYYYMMDD ("" for empty); PacsError naming ``what`` for anything that is not a real
    calendar date."""
    from elvis_core.pacs import PacsError

    s = (text or "").strip()
    if not s:
        return ""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return _dt.datetime.strptime(s, fmt).strftime("%Y%m%d")
        except ValueError:
            continue
    raise PacsError(f"{what}: {s[:40]!r} is not a valid date (YYYY-MM-DD or YYYYMMDD)")


def qido_value(value: str) -> str:
    """Percent-encode a QIDO matching value, keeping DICOM's wildcards ``*`` and ``?`` as they are."""
    return quote(str(value), safe="*?")


def query_string(filters: Dict[str, str], fields: Sequence[str] = (), limit: Optional[int] = None,
                 offset: int = 0) -> str:
    parts = [f"{quote(k, safe='')}={qido_value(v)}" for k, v in filters.items()]
    parts += [f"includefield={quote(f, safe='')}" for f in fields]
    if limit is not None:
        parts.append(f"limit={int(limit)}")
    if offset:
        parts.append(f"offset={int(offset)}")
    return "&".join(parts)


@dataclass
class SearchPage:
    """One page of a study search: ``hits`` = studies ``offset .. offset + len(hits)`` of ``total`` matches
    (``capped``: there are more than ``total``, the search should be narrowed)."""

    hits: List = field(default_factory=list)
    total: int = 0
    offset: int = 0
    limit: int = 0
    capped: bool = False

    def summary(self) -> str:
        if not self.total:
            return "no study matches"
        noun = "study" if self.total == 1 and not self.capped else "studies"
        of = f"more than {self.total}" if self.capped else f"{self.total}"
        if not self.hits:
            return f"showing none of {of} {noun} (offset {self.offset} is past the end)"
        line = f"showing {self.offset + 1}\u2013{self.offset + len(self.hits)} of {of} {noun}"
        if self.offset + len(self.hits) < self.total or self.capped:
            line += f" (next page: --offset {self.offset + len(self.hits)})"
        if self.capped:
            line += "; narrow the search (patient ID, dates)"
        return line


def search_page(client, patient_id: str = "", accession: str = "", date_from: str = "", date_to: str = "",
                modalities: Sequence[str] = ("CR", "DX"), offset: int = 0, limit: int = 50,
                max_matches: int = MAX_MATCHES) -> SearchPage:
    """Studies matching all filters (``*`` / ``?`` wildcards allowed in patient ID and accession), newest first;
    the page ``offset .. offset + limit`` of them and how many match in all."""
    from elvis_core.pacs import PacsError

    if limit < 1 or offset < 0:
        raise PacsError(f"limit must be >= 1 and offset >= 0 (got limit {limit}, offset {offset})")
    filters: Dict[str, str] = {}
    if patient_id.strip():
        filters["PatientID"] = patient_id.strip()
    if accession.strip():
        filters["AccessionNumber"] = accession.strip()
    d0, d1 = parse_date(date_from, "--from"), parse_date(date_to, "--to")
    if d0 and d1 and d0 > d1:
        raise PacsError(f"date range is reversed ({d0} > {d1})")
    if d0 or d1:
        filters["StudyDate"] = d0 if d0 == d1 else f"{d0}-{d1}"
    hits: Dict[str, object] = {}
    capped = False
    mods = [m.strip().upper() for m in modalities if m.strip()] or [None]
    for mod in mods:  # one query per modality: ModalitiesInStudy matching of a list is not portable
        f = dict(filters)
        if mod:
            f["ModalitiesInStudy"] = mod
        got, first = 0, True
        while True:
            # the first request asks for everything (Orthanc 1.10 applies limit/offset before its ModalitiesInStudy
            # filter, so paged requests miss studies there); then offset = what we have, as long as new studies come
            # (a server capping its answers, e.g. DCM4CHEE's QIDOMaxNumberOfResults, hands out the rest that way)
            q = query_string(f, FIELDS) if first else query_string(f, FIELDS, limit=PAGE, offset=got)
            first = False
            res = client._call("search for studies", client._client._http_get_application_json,
                               f"{client.url}/studies?{q}")
            before = len(hits)
            res = _items(client, res)
            for item in res:
                hit = _hit(client, item)
                if hit is not None and hit.study_uid not in hits:
                    hits[hit.study_uid] = hit
            got += len(res)
            if len(hits) > max_matches:
                capped = True
                break
            # an empty page, or a server that ignores offset and repeats itself (nothing new): done
            if not res or len(hits) == before:
                break
        if capped:
            break
    ordered = sorted(hits.values(), key=lambda h: (h.study_date, h.study_uid), reverse=True)
    if capped:
        ordered = ordered[:max_matches]
    return SearchPage(hits=ordered[offset:offset + limit], total=len(ordered), offset=offset, limit=limit,
                      capped=capped)


_WHAT = "search for studies"


def _validators():
    """The bounded network layer's QIDO field checks (elvis_core.pacs.validate, issue 24) when present."""
    try:
        from elvis_core.pacs import validate
    except ImportError:
        return None
    return validate


def _items(client, res) -> list:
    v = _validators()
    if v is not None:  # wrong types, non-objects, too many: one clear PacsError
        return list(client._call(_WHAT, v.qido_items, res, _WHAT, MAX_MATCHES + PAGE))
    return [r for r in (res or []) if isinstance(r, dict)] if isinstance(res, list) else []


def _hit(client, item):
    """One StudyHit from a QIDO item (every field typed and bounded)."""
    from elvis_core.pacs import StudyHit

    v = _validators()
    if v is not None:
        return client._call(_WHAT, lambda: StudyHit(
            study_uid=v.attr_uid(item, "0020000D", _WHAT), patient_id=v.attr_str(item, "00100020", _WHAT, 64),
            accession=v.attr_str(item, "00080050", _WHAT, 16), study_date=v.attr_str(item, "00080020", _WHAT, 8),
            modalities=v.attr_strs(item, "00080061", _WHAT), description=v.attr_str(item, "00081030", _WHAT, 64),
            n_series=v.attr_int(item, "00201206", _WHAT), n_instances=v.attr_int(item, "00201208", _WHAT)))
    uid = str(_value(item, "0020000D"))
    if not uid:
        return None
    return StudyHit(
        study_uid=uid, patient_id=str(_value(item, "00100020")), accession=str(_value(item, "00080050")),
        study_date=str(_value(item, "00080020")), modalities=_values(item, "00080061"),
        description=str(_value(item, "00081030")), n_series=_int(_value(item, "00201206", 0)),
        n_instances=_int(_value(item, "00201208", 0)))


def _value(item: Dict, tag: str, default=""):
    """The first value of a DICOM JSON attribute (PN → its alphabetic form); ``default`` when absent or malformed."""
    attr = item.get(tag)
    v = attr.get("Value") if isinstance(attr, dict) else None
    if not isinstance(v, list) or not v:
        return default
    first = v[0]
    if isinstance(first, dict):  # PN
        return str(first.get("Alphabetic", default))
    return first if isinstance(first, (str, int, float)) else default


def _values(item: Dict, tag: str) -> tuple:
    attr = item.get(tag)
    v = attr.get("Value") if isinstance(attr, dict) else None
    return tuple(str(x) for x in v if isinstance(x, (str, int, float))) if isinstance(v, list) else ()


def _int(v) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0
