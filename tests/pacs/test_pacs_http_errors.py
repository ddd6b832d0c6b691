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


class _DiesMidInstance(http.server.BaseHTTPRequestHandler):
    """Answers the QIDO listing of one instance, then sends a third of that instance and drops the connection."""

    def do_GET(self):  # noqa: N802
        import json

        if self.path.split("?")[0].endswith("/series"):
            body = json.dumps([{"0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
                                "00080060": {"vr": "CS", "Value": ["CR"]}}]).encode()
            ctype = "application/dicom+json"
        elif self.path.split("?")[0].endswith("/instances"):
            body = json.dumps([{"00080018": {"vr": "UI", "Value": ["1.2.3.4.5"]}}]).encode()
            ctype = "application/dicom+json"
        else:
            self.send_response(200)
            self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=XyZ')
            self.send_header("Content-Length", "300000")
            self.end_headers()
            self.wfile.write(b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + b"\0" * 100000)
            self.wfile.flush()
            self.connection.shutdown(2)  # the server "dies" mid-transfer
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_server_dying_inside_an_instance_writes_nothing(tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DiesMidInstance)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        c = PacsClient(f"http://127.0.0.1:{srv.server_address[1]}/dicom-web", cache_dir=tmp_path / "cache",
                       timeout=5)
        stale = c.study_folder("1.2.3") / "1.2.3.4" / ".1.2.3.4.9.dcm.abc.part"  # our own crash, earlier
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"half")
        with pytest.raises(PacsError) as e:
            c.fetch_study("1.2.3")
        msg = str(e.value)
        assert "the transfer broke off" in msg and "stopped after 0 of 1 instances" in msg, msg
        assert "fetch again to resume" in msg and "\n" not in msg
        assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # no .dcm, stale .part removed
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("argv", [["pacs", "--help"], ["pacs", "fetch", "--help"], ["pacs", "search", "--help"]])
def test_pacs_help_has_examples(argv, capsys):
    from elvis_core.cli import main

    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "elvis pacs fetch" in out and "ELVIS_PACS_PASSWORD" in out


def test_pacs_cli_without_url_or_with_bad_dates(monkeypatch, capsys):
    from elvis_core.cli import main

    monkeypatch.delenv("ELVIS_PACS_URL", raising=False)
    assert main(["pacs", "search"]) == 2
    assert "no server: give --url or set $ELVIS_PACS_URL" in capsys.readouterr().err
    assert main(["pacs", "search", "--url", "http://127.0.0.1:9/dicom-web", "--from", "01/02/2024"]) == 2
    assert "--from: '01/02/2024' is not a valid date (YYYY-MM-DD or YYYYMMDD)" in capsys.readouterr().err
