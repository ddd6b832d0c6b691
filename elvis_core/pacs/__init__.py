"""Studies from a PACS over DICOMweb (dicomweb-client): QIDO-RS search, WADO-RS retrieval into a local cache, STOW-RS.

- :class:`PacsClient` wraps ``dicomweb_client.DICOMwebClient`` with a timeout, optional basic auth or bearer token
  (set on the HTTP session, never in a URL, a header we log, or a file), and turns every failure (timeout, refused
  connection, 401/403/404/5xx, a server that stops mid-transfer) into one :class:`PacsError` line that names the
  server (its URL without credentials) and what to do.
- :meth:`PacsClient.search_studies`: patient ID, accession number, study date range, modality (CR/DX by default);
  with DICOM wildcards sent as typed, paging and the total: :func:`elvis_core.pacs.search.search_page`.
- :meth:`PacsClient.fetch_study`: only the instances needed (images of the chosen modalities, SR documents, which
  hold the report and our review SRs, and SEG results stored back), each downloaded to a temp file and renamed
  into place when complete, so the cache holds only whole instances whatever happens; already cached instances
  are skipped (resume); progress and cancel callbacks. The cache folder of a study then reads like any study
  folder (``elvis_core.io.studies.scan_folder``).
- :meth:`PacsClient.store`: STOW-RS of our SR / SEG objects back to the server.

Layout of the cache: ``CACHE/<server key>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` where the
server key is a short hash of the server URL (no credentials in folder names).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit, urlunsplit

from elvis_core.errors import ElvisError

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

#: modalities fetched as images by default (chest radiographs)
IMAGE_MODALITIES = ("CR", "DX")
#: SR documents are fetched too: a study's report usually lives in one
REPORT_MODALITIES = ("SR", "SEG")  # + SEG: our maps stored back on the PACS come with the study

# dicomweb-client, requests and urllib3 log request URLs (QIDO query strings carry the patient ID) and headers:
# quiet and redacted, whatever level is set later (no patient identifiers in logs): see transport.py
from elvis_core.pacs.transport import (BadEncoding, BoundedSession, DeadlineExceeded, NetLimits,  # noqa: E402
                                       ResponseTooLarge, quiet_network_loggers)
from elvis_core.pacs.validate import (ServerAnswerError, attr_str, attr_uid, check_instance,  # noqa: E402
                                      qido_items, single_part, study_hit)

quiet_network_loggers()


class PacsError(ElvisError):
    """A DICOMweb request failed (one line: server, what happened, what to do)."""


class PacsCancelled(PacsError):
    """The user cancelled a fetch (the instances already complete stay in the cache)."""


def redact_url(url: str) -> str:
    """The URL without user:password@ (safe for messages and settings)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def default_cache_dir() -> Path:
    env = os.environ.get("ELVIS_PACS_CACHE", "").strip()
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "elvis-viewer" / "pacs"


@dataclass
class StudyHit:
    """One QIDO-RS study result. ``patient_id`` is shown in the PACS dialog (the user searched for it) but never
    logged or printed by the command line unless asked (``--show-identifiers``)."""

    study_uid: str
    patient_id: str = ""
    accession: str = ""
    study_date: str = ""
    modalities: Tuple[str, ...] = ()
    description: str = ""
    n_series: int = 0
    n_instances: int = 0


@dataclass
class FetchResult:
    study_uid: str
    folder: Path
    downloaded: int = 0
    cached: int = 0  # already complete in the cache (resume)
    files: List[Path] = field(default_factory=list)


def _safe_uid(uid: str, what: str) -> str:
    uid = str(uid).strip()
    if not uid or len(uid) > 64 or any(c not in "0123456789." for c in uid):
        raise PacsError(f"the server returned an invalid {what} ({uid[:70]!r})")
    return uid


class _BearerAuth:
    """requests auth that adds ``Authorization: Bearer`` (kept off the client's logged per-request headers)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, r):
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:  # never print the token
        return "<bearer token>"


class PacsClient:
    """A DICOMweb server. ``url`` is the DICOMweb root (e.g. ``http://pacs:8042/dicom-web``)."""

    def __init__(self, url: str, *, username: Optional[str] = None, password: Optional[str] = None,
                 token: Optional[str] = None, timeout: float = 20.0,
                 cache_dir: Optional[os.PathLike | str] = None, limits: Optional[NetLimits] = None) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        url = (url or "").strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError(f"not a DICOMweb URL (expected http(s)://host[:port]/path): {redact_url(url) or url!r}")
        if parts.username and not username:  # credentials in the URL move to the session, out of the URL
            username, password = parts.username, parts.password or ""
        if token and username:
            raise PacsError("give either a user/password or a bearer token, not both")
        self.url = redact_url(url).rstrip("/")
        self.timeout = float(timeout)
        if not 0 < self.timeout <= 3600:
            raise PacsError(f"timeout must be 0..3600 s, got {timeout!r}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.limits = limits or NetLimits.from_env()
        # every answer streamed with a size cap and inside a total deadline of `timeout` s (transport.py)
        session = BoundedSession(self.limits, timeout=self.timeout)
        self._session = session
        if username:
            session.auth = requests.auth.HTTPBasicAuth(username, password or "")
        elif token:
            session.auth = _BearerAuth(token)
        self._client = DICOMwebClient(self.url, session=session, timeout=self.timeout)
        quiet_network_loggers()  # loggers the imports above created
        # dicomweb-client retries up to 5 times with exponential back-off, on every exception too: a refused
        # connection or a timeout would take half a minute to report. We fail fast with a clear message; the user
        # (or the viewer's Retry) decides, and a fetch resumes where it stopped.
        self._client.set_http_retry_params(retry=False)
        self._any_syntax = True

    def __repr__(self) -> str:
        return f"PacsClient({self.url!r})"

    @property
    def server_key(self) -> str:
        return hashlib.sha256(self.url.encode()).hexdigest()[:12]

    def study_folder(self, study_uid: str) -> Path:
        return self.cache_dir / self.server_key / _safe_uid(study_uid, "Study Instance UID")

    # -- errors ---------------------------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kw):
        import requests

        try:
            return fn(*args, **kw)
        except ServerAnswerError as err:
            text = str(err)
            raise PacsError(f"{self.url}: {text if text.startswith(what) else f'{what}: {text}'}") from None
        except ResponseTooLarge as err:
            raise PacsError(f"{self.url}: {what}: {err}") from None
        except DeadlineExceeded:
            raise PacsError(f"{self.url}: {what}: no answer within {self.timeout:g} s (none, or not all of it: server "
                            "too slow or stalled; try again or raise --timeout)") from None
        except requests.exceptions.HTTPError as err:
            raise PacsError(self._http_message(what, err.response)) from None
        except requests.exceptions.Timeout:
            raise PacsError(f"{self.url}: {what}: no answer within {self.timeout:g} s (server busy or unreachable; "
                            "try again or raise the timeout)") from None
        except requests.exceptions.ConnectionError as err:
            reason = "connection refused or lost" if "refused" in str(err).lower() or "aborted" in str(err).lower() \
                or "reset" in str(err).lower() else "cannot connect"
            raise PacsError(f"{self.url}: {what}: {reason} (is the server running and the URL right?)") from None
        except BadEncoding as err:
            raise PacsError(f"{self.url}: {what}: {err}") from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            raise PacsError(f"{self.url}: {what}: the transfer broke off (connection lost mid-answer)") from None
        except requests.exceptions.InvalidJSONError:
            raise PacsError(f"{self.url}: {what}: unreadable answer from the server (not DICOM JSON; is this the "
                            "DICOMweb root?)") from None
        except requests.exceptions.RequestException as err:
            raise PacsError(f"{self.url}: {what}: {type(err).__name__}") from None
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as err:
            # malformed multipart / JSON from the server (dicomweb-client parses QIDO JSON itself)
            raise PacsError(f"{self.url}: {what}: unreadable answer from the server ({type(err).__name__})") from None

    def _http_message(self, what: str, response) -> str:
        code = getattr(response, "status_code", 0)
        hint = {401: "unauthorized: check the user/password or token",
                403: "forbidden: this account may not do that",
                404: "not found: no such study/object on this server (or wrong DICOMweb root)",
                }.get(code)
        if hint is None:
            hint = "server error: try again later or ask the PACS administrator" if code >= 500 else "request refused"
        return f"{self.url}: {what}: HTTP {code} {hint}"

    # -- QIDO-RS --------------------------------------------------------------------------------------------------
    def search_studies(self, patient_id: str = "", accession: str = "", date_from: str = "", date_to: str = "",
                       modalities: Sequence[str] = IMAGE_MODALITIES, limit: int = 200) -> List[StudyHit]:
        """Studies matching all given filters. Dates are YYYYMMDD (or YYYY-MM-DD); an open end is allowed."""
        filters: Dict[str, str] = {}
        if patient_id.strip():
            filters["PatientID"] = patient_id.strip()
        if accession.strip():
            filters["AccessionNumber"] = accession.strip()
        d0, d1 = _date(date_from), _date(date_to)
        if d0 and d1 and d0 > d1:
            raise PacsError(f"date range is reversed ({d0} > {d1})")
        if d0 or d1:
            filters["StudyDate"] = d0 if d0 == d1 else f"{d0}-{d1}"
        fields = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                  "NumberOfStudyRelatedInstances", "AccessionNumber", "PatientID", "StudyDate"]
        hits: Dict[str, StudyHit] = {}
        mods = [m.strip().upper() for m in modalities if m.strip()] or [None]
        for mod in mods:  # one query per modality: ModalitiesInStudy matching of a list is not portable
            f = dict(filters)
            if mod:
                f["ModalitiesInStudy"] = mod
            what = "search for studies"
            res = self._call(what, self._client.search_for_studies, search_filters=f, fields=fields,
                             limit=min(limit, self.limits.max_results))
            items = self._call(what, qido_items, res, what, self.limits.max_results)
            for item in items:
                uid = self._call(what, attr_uid, item, "0020000D", what)
                if uid in hits:
                    continue
                hits[uid] = self._call(what, study_hit, item, what)  # every field typed and sanitised
        return sorted(hits.values(), key=lambda h: (h.study_date, h.study_uid), reverse=True)

    def list_instances(self, study_uid: str, modalities: Sequence[str] = IMAGE_MODALITIES + REPORT_MODALITIES
                       ) -> List[Tuple[str, str, str]]:
        """(series UID, SOP instance UID, modality) of the study's instances of the given modalities."""
        study_uid = _safe_uid(study_uid, "Study Instance UID")
        lim = self.limits
        what = "list the study's series"
        series = self._call(what, self._client.search_for_series, study_instance_uid=study_uid, fields=["Modality"])
        try:
            series = qido_items(series, what, 10 ** 9)
        except ServerAnswerError as err:
            text = str(err)
            raise PacsError(f"{self.url}: {text if text.startswith(what) else f'{what}: {text}'}") from None
        if not series:
            raise PacsError(f"{self.url}: no series in study {study_uid} (not on this server?)")
        if len(series) > lim.max_series:  # refused before one more request (10 000 series = 10 000 requests)
            raise PacsError(f"{self.url}: study {study_uid} lists {len(series)} series, more than the limit of "
                            f"{lim.max_series} (not a chest radiograph study?; ELVIS_PACS_MAX_SERIES raises it)")
        wanted = {m.upper() for m in modalities}
        out: List[Tuple[str, str, str]] = []
        for s in series:
            mod = self._call(what, attr_str, s, "00080060", what, 16).upper()
            if wanted and mod not in wanted:
                continue
            se_uid = self._call(what, attr_uid, s, "0020000E", what)
            w2 = "list the series' instances"
            inst = self._call(w2, self._client.search_for_instances, study_instance_uid=study_uid,
                              series_instance_uid=se_uid, limit=lim.max_instances + 1)
            inst = self._call(w2, qido_items, inst, w2, 10 ** 9)
            if len(out) + len(inst) > lim.max_instances:
                raise PacsError(f"{self.url}: study {study_uid} has more than {lim.max_instances} instances to fetch "
                                "(the limit; ELVIS_PACS_MAX_INSTANCES raises it)")
            for i in inst:
                out.append((se_uid, self._call(w2, attr_uid, i, "00080018", w2), mod))
        return out

    # -- WADO-RS --------------------------------------------------------------------------------------------------
    def fetch_study(self, study_uid: str, modalities: Sequence[str] = IMAGE_MODALITIES + REPORT_MODALITIES,
                    progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None) -> FetchResult:
        """Retrieve the study's needed instances into the cache (resuming); returns the study's cache folder."""
        todo = self.list_instances(study_uid, modalities)
        folder = self.study_folder(study_uid)
        result = FetchResult(study_uid=study_uid, folder=folder)
        if not todo:
            raise PacsError(f"{self.url}: study {study_uid} has no instance of modality "
                            f"{'/'.join(modalities)} to fetch")
        total = len(todo)
        if folder.is_dir():
            clean_partial(folder)  # a process killed mid-write leaves a hidden .part file, never a .dcm
        for k, (se_uid, sop_uid, _mod) in enumerate(todo):
            if cancel is not None and cancel():
                raise PacsCancelled(f"fetch cancelled after {k} of {total} instances (complete ones stay cached; "
                                    "fetch again to resume)")
            dest = folder / se_uid / f"{sop_uid}.dcm"
            if dest.is_file() and dest.stat().st_size > 0:
                result.cached += 1
            else:
                try:
                    ds = self._retrieve(study_uid, se_uid, sop_uid, expect_image=_mod in IMAGE_MODALITIES)
                except PacsError as err:
                    raise PacsError(f"{err} — stopped after {k} of {total} instances; the cache holds only complete "
                                    "instances, fetch again to resume") from None
                _write_instance(ds, dest)  # only a parsed, complete instance with the asked-for UID gets here
                result.downloaded += 1
            result.files.append(dest)
            if progress is not None:
                progress(k + 1, total)
        return result

    def _retrieve(self, study_uid: str, se_uid: str, sop_uid: str, expect_image: bool = False):
        """One instance in its stored transfer syntax (``transfer-syntax=*``: no server-side transcoding, which
        would decompress, or worse, recompress); a server that refuses ``*`` (406) is asked for its default.
        The answer is read by the bounded session, parsed strictly as one multipart part and checked as a complete
        DICOM instance with the asked-for SOP Instance UID (validate.py) before anyone may cache it."""
        what = "retrieve an instance"
        url = f"{self.url}/studies/{study_uid}/series/{se_uid}/instances/{sop_uid}"
        if self._any_syntax:
            try:
                return self._call(what, self._get_instance, url, sop_uid, expect_image,
                                  'multipart/related; type="application/dicom"; transfer-syntax=*')
            except PacsError as err:
                if "HTTP 406" not in str(err) and "HTTP 400" not in str(err):
                    raise
                self._any_syntax = False
        return self._call(what, self._get_instance, url, sop_uid, expect_image,
                          'multipart/related; type="application/dicom"')

    def _get_instance(self, url: str, sop_uid: str, expect_image: bool, accept: str):
        resp = self._session.get(url, headers={"Accept": accept}, timeout=self.timeout)
        resp.raise_for_status()
        what = "retrieve an instance"
        part = single_part(resp.content, resp.headers.get("Content-Type", ""), what)
        return check_instance(part, sop_uid, what, self.limits.max_response_bytes, expect_image=expect_image)

    # -- STOW-RS --------------------------------------------------------------------------------------------------
    def store(self, paths: Sequence[os.PathLike | str]) -> int:
        """Send DICOM files to the server (STOW-RS). Returns how many were stored."""
        import pydicom

        datasets = []
        for p in paths:
            try:
                datasets.append(pydicom.dcmread(str(p)))
            except Exception as err:  # noqa: BLE001
                raise PacsError(f"not a readable DICOM file ({type(err).__name__})", p) from None
        if not datasets:
            return 0
        resp = self._call("store (STOW-RS)", self._client.store_instances, datasets=datasets)
        failed = resp.get("FailedSOPSequence", []) if resp is not None else []
        if failed:
            raise PacsError(f"{self.url}: store (STOW-RS): the server refused {len(failed)} of {len(datasets)} objects")
        return len(datasets)


def _date(s: str) -> str:
    s = (s or "").strip().replace("-", "")
    if s and (len(s) != 8 or not s.isdigit()):
        raise PacsError(f"date must be YYYYMMDD or YYYY-MM-DD, got {s!r}")
    return s


def _write_instance(ds, dest: Path) -> None:
    """Temp file in the target folder, fsync, atomic rename: the cache never holds a partial instance."""
    import pydicom

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=str(dest.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            if int(pydicom.__version__.split(".")[0]) >= 3:
                ds.save_as(f, enforce_file_format=True)
            else:  # pragma: no cover - pydicom 2.x
                ds.save_as(f, write_like_original=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def clean_partial(folder: os.PathLike | str) -> int:
    """Remove leftover ``.part`` files (a process killed mid-write); returns how many."""
    n = 0
    for p in Path(folder).rglob(".*.part"):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n
