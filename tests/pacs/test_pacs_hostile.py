"""A hostile DICOMweb server (tests/fuzz/hostile_pacs.py, loopback only): bombs, endless bodies, drips, 10 000
series, answers of the wrong type, deep nesting, escape sequences, broken multipart, truncated or foreign instances.
Every request ends within its deadline with one clean line; nothing incomplete or foreign reaches the cache; no log
of any library carries an identifier; the search output shows identifiers only on request, sanitised."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import pydicom
import pytest

from elvis_core.pacs import PacsClient, PacsError
from elvis_core.pacs.transport import NetLimits
from tests.fuzz.hostile_pacs import ACCESSION, PATIENT_ID, SCENARIOS, STUDY_UID, HostilePacs, instance

_NET = ("gzip_bomb", "deflate_bomb", "endless", "big_length", "drip", "drip_headers", "bad_encoding", "html")
_LIMITS = NetLimits(max_response_bytes=8 << 20, max_json_bytes=2 << 20)


def _cache_is_clean(cache: Path) -> None:
    """Only complete instances with the UID of their file name (and no partial files) are in the cache."""
    for p in cache.rglob("*"):
        if p.is_file():
            assert p.suffix == ".dcm", p
            ds = pydicom.dcmread(p)
            assert str(ds.SOPInstanceUID) == p.stem
            assert len(ds.PixelData) == ds.Rows * ds.Columns * ds.BitsAllocated // 8


def _run(client) -> list:
    out = []
    for fn in (lambda: client.search_studies(patient_id=PATIENT_ID, accession=ACCESSION),
               lambda: client.fetch_study(STUDY_UID)):
        try:
            out.append(("ok", fn()))
        except PacsError as err:
            out.append(("error", str(err)))
    return out


CASES = [(sc, t) for sc in SCENARIOS for t in (("studies", "series", "instances", "instance") if sc in _NET
                                               else (None,))]


@pytest.mark.parametrize("scenario,target", CASES, ids=[f"{s}-{t}" if t else s for s, t in CASES])
def test_hostile_server_gives_one_clean_line(scenario, target, tmp_path):
    with HostilePacs(scenario, target=target, drip_s=0.05) as srv:
        c = PacsClient(srv.url, cache_dir=tmp_path / "cache", timeout=1.5, limits=_LIMITS)
        t0 = time.monotonic()
        results = _run(c)
        elapsed = time.monotonic() - t0
    # two operations, each a few requests; a drip or a stall ends at the deadline of each request
    assert elapsed < 8, f"{scenario}: {elapsed:.1f} s"
    for status, value in results:
        if status == "error":
            assert value.startswith(srv.url) and "\n" not in value and "Traceback" not in value, value
            assert PATIENT_ID not in value and ACCESSION not in value and "\x1b" not in value
    if scenario == "ok":
        assert [s for s, _ in results] == ["ok", "ok"]
        assert results[1][1].downloaded == 1
    elif scenario in ("not_dicom", "no_boundary", "no_closing", "truncated_instance", "wrong_sop", "two_parts") \
            or target == "instance":
        assert results[1][0] == "error", results
    _cache_is_clean(tmp_path / "cache")


def test_drip_ends_at_the_timeout(tmp_path):
    """One byte every 0.2 s: each read is within the socket timeout, but the request ends at --timeout."""
    with HostilePacs("drip", target="studies", drip_s=0.2) as srv:
        c = PacsClient(srv.url, cache_dir=tmp_path, timeout=2)
        t0 = time.monotonic()
        with pytest.raises(PacsError, match="no answer within 2 s"):
            c.search_studies(patient_id="x")
        assert time.monotonic() - t0 < 3.5


def test_gzip_bomb_stops_at_the_cap(tmp_path):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with HostilePacs("gzip_bomb", target="studies") as srv:
        c = PacsClient(srv.url, cache_dir=tmp_path, timeout=20, limits=NetLimits(max_json_bytes=16 << 20))
        with pytest.raises(PacsError, match=r"inflates to more than 16 MiB \(ELVIS_PACS_MAX_JSON_MB"):
            c.search_studies(patient_id="x")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, grown_mb  # the bomb inflates to 1 GiB


def test_ten_thousand_series_are_refused_before_any_instance_request(tmp_path):
    with HostilePacs("many_series") as srv:
        c = PacsClient(srv.url, cache_dir=tmp_path, timeout=5)
        with pytest.raises(PacsError, match="lists 10000 series, more than the limit of 200"):
            c.fetch_study(STUDY_UID)
        assert srv.requests == 1


def test_no_identifier_in_any_log(tmp_path):
    """Every logger at DEBUG (urllib3's connection logger writes the QIDO URL with PatientID=...)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        for scenario in ("ok", "no_boundary", "wrong_types"):
            with HostilePacs(scenario) as srv:
                c = PacsClient(srv.url, cache_dir=tmp_path / scenario, timeout=5, token="T0KEN-SECRET")
                for name in list(logging.root.manager.loggerDict):  # what a user's --verbose might do
                    logging.getLogger(name).setLevel(logging.DEBUG)
                _run(c)
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    text = buf.getvalue()
    assert text.strip(), "nothing was logged at all: the test would prove nothing"
    for secret in (PATIENT_ID, ACCESSION, STUDY_UID, "T0KEN-SECRET", instance()[1]):
        assert secret not in text, (secret, text[:2000])
    assert "Traceback" not in text


def test_search_output_hides_identifiers_and_sanitises(tmp_path, capsys, monkeypatch):
    from elvis_core.cli import main

    with HostilePacs("escapes") as srv:
        monkeypatch.delenv("ELVIS_PACS_TOKEN", raising=False)
        assert main(["pacs", "search", "--url", srv.url, "--cache", str(tmp_path), "--patient-id", PATIENT_ID]) == 0
        out = capsys.readouterr().out
        assert STUDY_UID in out
        for secret in (PATIENT_ID, ACCESSION, "owned", "RED", "evil"):
            assert secret not in out
        assert main(["pacs", "search", "--url", srv.url, "--cache", str(tmp_path), "--patient-id", PATIENT_ID,
                     "--show-identifiers"]) == 0
        out = capsys.readouterr().out
    lines = out.splitlines()
    header, row = lines[0].split("\t"), lines[1].split("\t")
    assert len(lines) == 2 and len(row) == len(header)
    assert PATIENT_ID in row and ACCESSION in row
    desc = row[header.index("description")]
    assert "RED" in desc and "NEWLINE" in desc and "\x1b" not in out and "\x07" not in out and "\u202e" not in out
