"""A hostile DICOMweb server on the loopback interface, for tests and the fuzz campaign.

``HostilePacs(scenario)`` answers QIDO-RS (studies / series / instances) and WADO-RS (one instance) the way the
scenario says: gzip bombs, endless or huge bodies, a drip of one byte at a time, 10 000 series, answers of the wrong
type, 100 000-deep nesting, 100 000-digit numbers, escape sequences, non-DICOM bytes, multipart without a boundary or
without its closing delimiter, a truncated instance, another instance than asked for. Every loop the server runs is
bounded (bytes sent, seconds, requests), so a client that never stops reading cannot keep it alive for ever.
Only 127.0.0.1 is bound.
"""

from __future__ import annotations

import gzip
import http.server
import io
import json
import random
import threading
import time
import zlib
from typing import Optional

#: identifiers the server returns: any of them in a log, a message or a default CLI output is a leak
PATIENT_ID = "PATSECRET7731"
ACCESSION = "ACCSECRET4412"
STUDY_UID = "1.2.826.0.1.3680043.10.999.1"
SERIES_UID = "1.2.826.0.1.3680043.10.999.1.2"

SCENARIOS = ("ok", "gzip_bomb", "deflate_bomb", "endless", "big_length", "drip", "drip_headers", "many_series",
             "many_instances", "wrong_types", "deep", "huge_number", "escapes", "not_dicom", "no_boundary",
             "no_closing", "truncated_instance", "wrong_sop", "two_parts", "bad_encoding", "html")

_MAX_SECONDS = 30.0  # no scenario keeps one connection longer
_MAX_BYTES = 3 << 30  # nor sends more


def _instance_bytes() -> tuple:
    """A small real DICOM image (pydicom-data CT_small) as a CR of our series: (bytes, SOP UID)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Modality = "CR"
    ds.PatientID = PATIENT_ID
    ds.AccessionNumber = ACCESSION
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), str(ds.SOPInstanceUID)


_INSTANCE: dict = {}


def instance() -> tuple:
    if "i" not in _INSTANCE:
        _INSTANCE["i"] = _instance_bytes()
    return _INSTANCE["i"]


def _attr(vr: str, *values) -> dict:
    return {"vr": vr, "Value": list(values)}


def study_json(description: str = "CHEST PA") -> list:
    return [{"0020000D": _attr("UI", STUDY_UID), "00100020": _attr("LO", PATIENT_ID),
             "00080050": _attr("SH", ACCESSION), "00080020": _attr("DA", "20240102"),
             "00080061": _attr("CS", "CR"), "00081030": _attr("LO", description),
             "00201206": _attr("IS", 1), "00201208": _attr("IS", 1)}]


def series_json(n: int = 1) -> list:
    return [{"0020000E": _attr("UI", SERIES_UID if k == 0 else f"{SERIES_UID}.{k}"), "00080060": _attr("CS", "CR")}
            for k in range(n)]


def instances_json(n: int = 1) -> list:
    sop = instance()[1]
    return [{"00080018": _attr("UI", sop if k == 0 else f"{sop}.{k}")} for k in range(n)]


_WRONG = [None, 7, "x", [], {}, [1, 2], {"Value": "notalist"}, {"Value": [{"deep": [1]}]}, {"Value": [True]},
          {"Value": [1e308]}, {"Value": [float("nan")]}, {"Value": ["1.2.abc"]}, {"Value": ["9" * 80]},
          {"Value": [[1, 2, 3]]}, {"Value": [{"Alphabetic": ["x"]}]}, {"Value": ["\x1b[2J\t\n"]}]


def wrong_types(r: random.Random, level: str) -> object:
    """A QIDO answer with a value of the wrong type somewhere."""
    base = {"studies": study_json(), "series": series_json(), "instances": instances_json()}[level]
    what = r.randrange(5)
    if what == 0:
        return r.choice([{"a": 1}, "text", 42, [1, 2], [None], [[{}]], True])
    item = base[0]
    tag = r.choice(list(item))
    item[tag] = r.choice(_WRONG)
    if what == 1:
        item[f"{r.randrange(1 << 32):08X}"] = r.choice(_WRONG)
    return base


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *a):  # quiet
        pass

    def _send(self, body: bytes, ctype: str = "application/dicom+json", status: int = 200, extra=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def _json(self, obj) -> None:
        self._send(json.dumps(obj).encode())

    def do_GET(self):  # noqa: N802
        srv = self.server
        with srv.lock:
            srv.requests += 1
            n = srv.requests
        if n > srv.max_requests:
            self._send(b"too many requests", "text/plain", 429)
            return
        path = self.path.split("?")[0].rstrip("/")
        level = "studies" if path.endswith("/studies") else "series" if path.endswith("/series") else \
            "instances" if path.endswith("/instances") else "instance"
        try:
            self._answer(srv.scenario, level, srv.rng)
        except OSError:
            pass

    def _answer(self, sc: str, level: str, r: random.Random) -> None:  # noqa: C901 - one branch per scenario
        normal = {"studies": lambda: study_json(), "series": lambda: series_json(),
                  "instances": lambda: instances_json()}
        data, sop = instance()
        mp_ctype = 'multipart/related; type="application/dicom"; boundary=B0undary'

        def multipart(part: bytes, closing: bool = True) -> bytes:
            return (b"--B0undary\r\nContent-Type: application/dicom\r\n\r\n" + part
                    + (b"\r\n--B0undary--\r\n" if closing else b""))

        target = r.choice(["studies", "series", "instances", "instance"]) if sc in (
            "gzip_bomb", "deflate_bomb", "endless", "big_length", "drip", "drip_headers", "bad_encoding", "html") \
            else None
        if target is not None and level != target and not self.server.fixed_target:
            target = level if r.random() < 0.5 else target
        if self.server.fixed_target:
            target = self.server.fixed_target
        hit = target == level
        if sc == "ok" or (target is not None and not hit):
            if level == "instance":
                self._send(multipart(data), mp_ctype)
            else:
                self._json(normal[level]())
            return
        if sc in ("gzip_bomb", "deflate_bomb"):
            body = self.server.bomb(sc)
            self._send(body, "application/dicom+json" if level != "instance" else mp_ctype,
                       extra=[("Content-Encoding", "gzip" if sc == "gzip_bomb" else "deflate")])
        elif sc == "endless":
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json" if level != "instance" else mp_ctype)
            self.end_headers()  # no length: the body ends when the connection does
            self.close_connection = True
            chunk = b"[" + b"0," * 32767
            sent, t0 = 0, time.monotonic()
            while sent < _MAX_BYTES and time.monotonic() - t0 < _MAX_SECONDS:
                self.wfile.write(chunk)
                sent += len(chunk)
        elif sc == "big_length":
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json" if level != "instance" else mp_ctype)
            self.send_header("Content-Length", str(1536 << 20))
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"[" * 1000)
        elif sc == "drip":
            body = json.dumps(normal[level]()).encode() if level != "instance" else multipart(data)
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json" if level != "instance" else mp_ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            t0 = time.monotonic()
            for b in body:
                if time.monotonic() - t0 > _MAX_SECONDS:
                    break
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(self.server.drip_s)
            self.close_connection = True
        elif sc == "drip_headers":
            t0 = time.monotonic()
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            k = 0
            while time.monotonic() - t0 < _MAX_SECONDS:
                self.wfile.write(f"X-Drip-{k}: 1\r\n".encode())
                self.wfile.flush()
                time.sleep(self.server.drip_s)
                k += 1
            self.close_connection = True
        elif sc == "many_series":
            self._json(series_json(10000) if level == "series" else normal.get(level, lambda: [])())
        elif sc == "many_instances":
            if level == "instances":
                self._json(instances_json(20000))
            elif level == "instance":
                self._send(multipart(data), mp_ctype)
            else:
                self._json(normal[level]())
        elif sc == "wrong_types":
            if level == "instance":
                self._send(multipart(data), mp_ctype)
            else:
                self._send(json.dumps(wrong_types(r, level), allow_nan=True).encode())
        elif sc == "deep":
            depth = 100000
            self._send(b"[" * depth + b"]" * depth if level != "instance" else multipart(data),
                       "application/dicom+json" if level != "instance" else mp_ctype)
        elif sc == "huge_number":
            if level == "instance":
                self._send(multipart(data), mp_ctype)
            else:
                self._send(b'[{"00201206": {"vr": "IS", "Value": [' + b"9" * 100000 + b"]}}]")
        elif sc == "escapes":
            if level == "studies":
                self._json(study_json("\x1b]0;owned\x07\x1b[2J\x1b[31mRED\tTAB\nNEWLINE\r\u202eevil\x00"))
            elif level == "instance":
                self._send(multipart(data), mp_ctype)
            else:
                self._json(normal[level]())
        elif sc == "bad_encoding":
            self._send(bytes(r.randrange(256) for _ in range(300)), "application/dicom+json" if level != "instance"
                       else mp_ctype, extra=[("Content-Encoding", r.choice(["br", "zstd", "gzip", "deflate"]))])
        elif sc == "html":
            self._send(b"<html><body>Login \x1b[2J please</body></html>", "text/html")
        elif level != "instance":
            self._json(normal[level]())
        elif sc == "not_dicom":
            self._send(multipart(bytes(r.randrange(256) for _ in range(r.choice([0, 10, 200, 5000])))), mp_ctype)
        elif sc == "no_boundary":
            self._send(data, 'multipart/related; type="application/dicom"')
        elif sc == "no_closing":
            self._send(multipart(data, closing=False), mp_ctype)
        elif sc == "truncated_instance":
            cut = r.randrange(200, len(data) - 10)
            self._send(multipart(data[:cut]), mp_ctype)
        elif sc == "wrong_sop":
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data))
            ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            self._send(multipart(buf.getvalue()), mp_ctype)
        elif sc == "two_parts":
            self._send(multipart(data, closing=False) + b"\r\n" + multipart(data), mp_ctype)
        else:  # pragma: no cover
            self._send(b"?", "text/plain", 500)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # a client that hangs up is the point: stay quiet
        pass


class HostilePacs:
    """``with HostilePacs("drip") as srv: PacsClient(srv.url, ...)``."""

    def __init__(self, scenario: str = "ok", seed: int = 0, drip_s: float = 0.2, max_requests: int = 500,
                 target: Optional[str] = None) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(scenario)
        self._srv = _Server(("127.0.0.1", 0), _Handler)
        self._srv.scenario = scenario
        self._srv.rng = random.Random(seed)
        self._srv.drip_s = drip_s
        self._srv.requests = 0
        self._srv.max_requests = max_requests
        self._srv.lock = threading.Lock()
        self._srv.fixed_target = target
        self._srv.bomb = _bomb
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._srv.server_address[1]}/dicom-web"

    @property
    def requests(self) -> int:
        return self._srv.requests

    def __enter__(self) -> "HostilePacs":
        if self._srv.scenario in ("gzip_bomb", "deflate_bomb"):
            _bomb(self._srv.scenario)  # built before the first request (seconds)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._srv.shutdown()
        self._srv.server_close()


_BOMBS: dict = {}


def _bomb(kind: str) -> bytes:
    """~1 GiB of JSON-looking spaces, compressed (about 1 MB)."""
    if kind not in _BOMBS:
        if kind == "gzip_bomb":
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6) as g:
                g.write(b"[")
                block = b" " * (1 << 20)
                for _ in range(1024):
                    g.write(block)
            _BOMBS[kind] = buf.getvalue()
        else:
            c = zlib.compressobj(6)
            parts = [c.compress(b"[")]
            block = b" " * (1 << 20)
            for _ in range(1024):
                parts.append(c.compress(block))
            parts.append(c.flush())
            _BOMBS[kind] = b"".join(parts)
    return _BOMBS[kind]
