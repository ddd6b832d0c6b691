"""A bounded HTTP transport for DICOMweb: every answer is read with a cap, inside a total deadline.

``requests`` (and dicomweb-client on top of it) reads a whole answer into memory (``response.content``) for as long
as the server keeps sending, and its ``timeout`` is per socket read: a server that sends one byte every second keeps
a request alive forever, a 1.5 GB body or a gzip bomb fills memory. :class:`BoundedSession` is a
``requests.Session`` (dicomweb-client takes one) whose :meth:`send` always streams and

- refuses a ``Content-Length`` over the cap before reading anything;
- reads the raw (still compressed) bytes in 64 kB steps up to :attr:`NetLimits.max_response_bytes`;
- inflates ``gzip``/``deflate`` itself with ``zlib`` ``max_length`` steps up to the same cap (a 7 MB bomb stops at
  the cap, never inflates fully); other content codings are refused (we only offer ``gzip, deflate``);
- ends every request at a **total deadline** (``timeout`` seconds from the start of the request, connection and
  headers included): the sockets of its connection pools are wrapped so that each read waits at most for what is
  left of the deadline, so a drip of one byte per second ends at ``--timeout``;
- follows at most 3 redirects.

Errors are :class:`requests.RequestException` subclasses (:class:`ResponseTooLarge`, :class:`DeadlineExceeded`),
so the client maps them to one line like every other transport failure.

Logging: urllib3, requests and dicomweb-client write request URLs (QIDO query strings carry PatientID and
AccessionNumber; paths carry UIDs) and headers at DEBUG, and urllib3 a header-parsing traceback at WARNING.
:func:`quiet_network_loggers` sets them to ERROR and attaches a filter that removes query strings, UIDs and
``Authorization`` values from any record they still make, whatever level a user or library sets later.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Optional

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_MB = 1 << 20
_CHUNK = 64 << 10


def _env_int(name: str, default: int) -> int:
    try:
        v = int(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return v if v > 0 else default


@dataclass
class NetLimits:
    """Ceilings for one DICOMweb client (environment overrides in brackets)."""

    #: bytes of one answer, compressed and inflated [ELVIS_PACS_MAX_MB, default 128 MiB: a 4 300² 16-bit DX is 37 MB]
    max_response_bytes: int = 128 * _MB
    #: bytes of one JSON (QIDO) answer [ELVIS_PACS_MAX_JSON_MB, default 32 MiB]
    max_json_bytes: int = 32 * _MB
    #: nesting of a JSON answer (DICOM JSON of a study listing is ~5 deep) [ELVIS_PACS_MAX_JSON_DEPTH, 64]
    max_json_depth: int = 64
    #: series listed in one study [ELVIS_PACS_MAX_SERIES, 200]
    max_series: int = 200
    #: instances fetched for one study [ELVIS_PACS_MAX_INSTANCES, 2000]
    max_instances: int = 2000
    #: results of one study search [ELVIS_PACS_MAX_RESULTS, 1000]
    max_results: int = 1000

    @classmethod
    def from_env(cls) -> "NetLimits":
        return cls(max_response_bytes=_env_int("ELVIS_PACS_MAX_MB", 128) * _MB,
                   max_json_bytes=_env_int("ELVIS_PACS_MAX_JSON_MB", 32) * _MB,
                   max_json_depth=_env_int("ELVIS_PACS_MAX_JSON_DEPTH", 64),
                   max_series=_env_int("ELVIS_PACS_MAX_SERIES", 200),
                   max_instances=_env_int("ELVIS_PACS_MAX_INSTANCES", 2000),
                   max_results=_env_int("ELVIS_PACS_MAX_RESULTS", 1000))


class ResponseTooLarge(requests.RequestException):
    """The answer (or what it inflates to) is larger than the cap."""


class DeadlineExceeded(requests.Timeout):
    """The request did not complete within its total deadline."""


class BadEncoding(requests.RequestException):
    """A content coding we did not offer, or a compressed body that does not inflate."""


# -- the deadline: one per thread (requests is synchronous: the request runs on the calling thread) --------------
_STATE = threading.local()


def _deadline() -> Optional[float]:
    return getattr(_STATE, "deadline", None)


class _DeadlineSocket:
    """A socket whose reads never wait past the current thread's deadline (everything else is delegated)."""

    def __init__(self, sock) -> None:
        self._sock = sock

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def _bounded(self, fn, *args):
        dl = _deadline()
        if dl is None:
            return fn(*args)
        left = dl - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline reached")
        base = self._sock.gettimeout()
        self._sock.settimeout(left if base is None else min(base, left))
        try:
            return fn(*args)
        finally:
            try:
                self._sock.settimeout(base)
            except OSError:
                pass

    def recv_into(self, *args):
        return self._bounded(self._sock.recv_into, *args)

    def recv(self, *args):
        return self._bounded(self._sock.recv, *args)

    def read(self, *args):  # SSL sockets
        return self._bounded(self._sock.read, *args)

    def makefile(self, mode="r", buffering=None, **_kw):
        import io

        raw = socket.SocketIO(self, "rb" if "b" in mode or mode == "r" else mode)
        self._sock._io_refs = getattr(self._sock, "_io_refs", 0) + 1
        return io.BufferedReader(raw, buffering if buffering and buffering > 0 else io.DEFAULT_BUFFER_SIZE)

    def _decref_socketios(self):
        dec = getattr(self._sock, "_decref_socketios", None)
        if dec is not None:
            dec()


class _DeadlineHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock)


class _DeadlineHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kw):
        super().init_poolmanager(*args, **kw)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def proxy_manager_for(self, proxy, **kw):
        mgr = super().proxy_manager_for(proxy, **kw)
        mgr.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return mgr


class _Inflater:
    """gzip / deflate / identity, producing at most ``cap`` bytes in total."""

    def __init__(self, coding: str, cap: int, env: str = "ELVIS_PACS_MAX_MB") -> None:
        coding = (coding or "identity").strip().lower()
        if coding in ("", "identity"):
            self._wbits = None
        elif coding in ("gzip", "x-gzip"):
            self._wbits = 16 + zlib.MAX_WBITS
        elif coding == "deflate":
            self._wbits = zlib.MAX_WBITS  # zlib-wrapped; raw deflate is tried when the header is not zlib
        else:
            raise BadEncoding(f"content coding {coding[:30]!r} not offered")
        self._cap = cap
        self._env = env
        self._n = 0
        self._d = zlib.decompressobj(self._wbits) if self._wbits is not None else None
        self._first = True

    def feed(self, data: bytes, out: bytearray) -> None:
        if self._d is None:
            self._add(data, out)
            return
        buf = data
        while buf:
            try:
                piece = self._d.decompress(buf, _CHUNK)
            except zlib.error:
                if self._first and self._wbits == zlib.MAX_WBITS:  # a raw deflate stream (some servers)
                    self._wbits = -zlib.MAX_WBITS
                    self._d = zlib.decompressobj(self._wbits)
                    self._first = False
                    continue
                raise BadEncoding("the compressed answer does not inflate") from None
            self._first = False
            self._add(piece, out)
            if self._d.eof:
                rest = self._d.unused_data
                if rest.strip(b"\0"):  # another gzip member
                    self._d = zlib.decompressobj(self._wbits)
                buf = rest if rest.strip(b"\0") else b""
            else:
                buf = self._d.unconsumed_tail

    def _add(self, piece: bytes, out: bytearray) -> None:
        self._n += len(piece)
        if self._n > self._cap:
            raise ResponseTooLarge(f"the answer inflates to more than {self._cap // _MB} MiB ({self._env} raises "
                                   "the limit)")
        out += piece


def _read_capped(resp: requests.Response, cap: int, env: str) -> bytearray:
    """The body, inflated, at most ``cap`` bytes (one buffer, no copy: a bytearray reads like bytes)."""
    length = resp.headers.get("Content-Length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ResponseTooLarge("the answer has an invalid Content-Length") from None
        if n > cap:
            raise ResponseTooLarge(f"the answer is {n / _MB:.0f} MiB: more than the limit of {cap // _MB} MiB "
                                   f"({env} raises it)")
    inflater = _Inflater(resp.headers.get("Content-Encoding", ""), cap, env)
    raw_n = 0
    out = bytearray()
    for chunk in resp.raw.stream(_CHUNK, decode_content=False):
        raw_n += len(chunk)
        if raw_n > cap:
            raise ResponseTooLarge(f"the answer is more than the limit of {cap // _MB} MiB ({env} raises it)")
        dl = _deadline()
        if dl is not None and time.monotonic() > dl:
            raise DeadlineExceeded("deadline reached")
        inflater.feed(chunk, out)
    return out


class BoundedSession(requests.Session):
    """A ``requests.Session`` that reads every answer with a cap and inside a total deadline (see module doc)."""

    def __init__(self, limits: Optional[NetLimits] = None, timeout: float = 20.0) -> None:
        super().__init__()
        self.limits = limits or NetLimits.from_env()
        self.deadline_s = float(timeout)
        self.max_redirects = 3
        self.headers["Accept-Encoding"] = "gzip, deflate"
        adapter = _DeadlineAdapter(max_retries=0)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def send(self, request, **kw):
        outer = _deadline() is None
        if outer:
            _STATE.deadline = time.monotonic() + self.deadline_s
        try:
            kw["stream"] = True
            try:
                resp = super().send(request, **kw)
            except (requests.ConnectionError, requests.Timeout) as err:
                dl = _deadline()
                if dl is not None and time.monotonic() >= dl - 0.05:
                    raise DeadlineExceeded(f"no complete answer within {self.deadline_s:g} s") from None
                raise err
            if resp._content_consumed:  # a redirect's body, already read
                return resp
            accept = request.headers.get("Accept", "") or ""
            is_json = "json" in accept and "multipart" not in accept
            cap = self.limits.max_json_bytes if is_json else self.limits.max_response_bytes
            env = "ELVIS_PACS_MAX_JSON_MB" if is_json else "ELVIS_PACS_MAX_MB"
            try:
                resp._content = _read_capped(resp, cap, env)
            except BaseException as err:
                resp.close()  # drop the connection: never reuse one with an unread answer
                if isinstance(err, (ResponseTooLarge, BadEncoding, DeadlineExceeded)):
                    raise
                if isinstance(err, (urllib3.exceptions.ReadTimeoutError, socket.timeout, TimeoutError)):
                    raise DeadlineExceeded(f"no complete answer within {self.deadline_s:g} s") from None
                if isinstance(err, (urllib3.exceptions.HTTPError, OSError)):
                    dl = _deadline()
                    if dl is not None and time.monotonic() >= dl - 0.05:
                        raise DeadlineExceeded(f"no complete answer within {self.deadline_s:g} s") from None
                    raise requests.exceptions.ChunkedEncodingError(type(err).__name__) from None
                raise
            resp._content_consumed = True
            resp.raw.release_conn()
            if "json" in (resp.headers.get("Content-Type", "") or "").lower() and resp._content:
                from elvis_core.pacs.validate import ServerAnswerError, json_depth

                if json_depth(resp._content, self.limits.max_json_depth) > self.limits.max_json_depth:
                    raise ServerAnswerError(f"the answer is nested more than {self.limits.max_json_depth} levels "
                                            "deep (not DICOM JSON)")
            if "Content-Encoding" in resp.headers:
                del resp.headers["Content-Encoding"]
            return resp
        finally:
            if outer:
                _STATE.deadline = None


# -- logging ---------------------------------------------------------------------------------------------------
_QUERY = re.compile(r"\?[^\s'\"]*")
_UID = re.compile(r"(?<![\w.])\d+(?:\.\d+){2,}(?![\w.])")
_AUTH = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(basic|bearer)?\s*[^'\",}\s]+")
_NET_LOGGERS = ("urllib3", "requests", "dicomweb_client", "charset_normalizer")


def redact_log_text(text: str) -> str:
    """A log line without query strings, UIDs or Authorization values."""
    text = _QUERY.sub("?<query removed>", text)
    text = _AUTH.sub(r"\1<removed>", text)
    return _UID.sub("<uid>", text)


class RedactFilter(logging.Filter):
    """Rewrites a record without identifiers (query strings, UIDs, credentials); drops its traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that does not format: keep only its template
            msg = str(record.msg)
        record.msg = redact_log_text(msg)
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


_FILTER = RedactFilter()


def quiet_network_loggers() -> None:
    """ERROR level and the redacting filter on every logger of the network libraries that exists now."""
    names = [n for n in list(logging.root.manager.loggerDict)
             if any(n == p or n.startswith(p + ".") for p in _NET_LOGGERS)]
    for name in set(names) | set(_NET_LOGGERS) | {"urllib3.connection", "urllib3.connectionpool",
                                                  "urllib3.response", "urllib3.util.retry", "urllib3.poolmanager",
                                                  "dicomweb_client.web", "dicomweb_client.api"}:
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET or lg.level < logging.ERROR:
            lg.setLevel(logging.ERROR)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)
