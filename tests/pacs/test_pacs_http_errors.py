"""HTTP failures a real Orthanc will not produce on demand (500, 503, a non-DICOM answer), from a tiny local HTTP
server: each is one clear line naming the server, and nothing is written to the cache."""

from __future__ import annotations

import http.server
import threading

import pytest

from elvis_core.pacs import PacsClient, PacsError


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 500
    body = b"oops"

    def do_GET(self):  # noqa: N802
        self.send_response(self.status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *a):  # quiet
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("status,expect", [(500, "HTTP 500 server error: try again later"),
                                           (503, "HTTP 503 server error"),
                                           (403, "HTTP 403 forbidden"),
                                           (200, "unreadable answer from the server")])
def test_http_failures_are_one_line(server, tmp_path, status, expect):
    _Handler.status = status
    _Handler.body = b"not json" if status == 200 else b"oops"
    url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    c = PacsClient(url, cache_dir=tmp_path / "cache", timeout=5, token="t0ken-XYZ")
    with pytest.raises(PacsError) as e:
        c.search_studies(patient_id="P1")
    msg = str(e.value)
    assert msg.startswith(url) and expect in msg and "\n" not in msg and "t0ken-XYZ" not in msg
    with pytest.raises(PacsError):
        c.fetch_study("1.2.3")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.dcm"))
