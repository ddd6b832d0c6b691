"""PACS over DICOMweb against a real Orthanc (issue 14): search by patient ID and date, fetch a study into the
cache (only what is needed, resumable), read it like a folder with its SR report, export SR + SEG, STOW them, find
them again with QIDO; clear one-line errors for 401 / 404 / refused / timeouts; a server killed mid-fetch leaves a
clean cache; credentials never reach the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from elvis_core.dicom_results import MapLayer, ModelInfo, SrBox, maps_seg, read_source, review_sr, write_dataset
from elvis_core.io.report import read_report
from elvis_core.io.studies import scan_folder
from elvis_core.pacs import PacsCancelled, PacsClient, PacsError, redact_url
from tests.pacs.orthanc import PASSWORD, USER, OrthancServer
from tests.pacs.dicom_checks import assert_dciodvfy_clean, needs_dciodvfy
from tests.pacs.sr_fixtures import report_sr, series_copies

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "resources" / "demo"
RG1 = get_testdata_file("RG1_UNCI.dcm")
RG1_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"


@pytest.fixture(scope="module")
def seeded(orthanc, tmp_path_factory):
    """Orthanc holding the demo phantom studies, RG1 (a real CR) with an Enhanced SR report, and a 5-instance
    series."""
    tmp = tmp_path_factory.mktemp("seed")
    demo_files = sorted(DEMO.rglob("*.dcm"))
    for p in demo_files:
        orthanc.upload(p)
    orthanc.upload(RG1)
    orthanc.upload(report_sr(RG1, {"FINDINGS": "Lungs are clear. No pleural effusion.",
                                   "IMPRESSION": "No acute cardiopulmonary process."}, tmp / "rg1_report.dcm"))
    multi = series_copies(demo_files[0], 5, tmp / "multi")
    for p in multi:
        orthanc.upload(p)
    return {"demo": demo_files, "multi_study": pydicom.dcmread(str(multi[0]), stop_before_pixels=True)
            .StudyInstanceUID}


def _client(orthanc, tmp_path, **kw) -> PacsClient:
    kw.setdefault("username", USER)
    kw.setdefault("password", PASSWORD)
    return PacsClient(orthanc.dicomweb, cache_dir=tmp_path / "cache", timeout=10, **kw)


def test_search_by_patient_id_and_date(orthanc, seeded, tmp_path):
    c = _client(orthanc, tmp_path)
    hits = c.search_studies(patient_id="9RG1")
    assert [h.study_uid for h in hits] == [RG1_STUDY]
    assert hits[0].study_date == "20040826" and "CR" in hits[0].modalities
    assert [h.study_uid for h in c.search_studies(date_from="2004-08-26", date_to="2004-08-26")] == [RG1_STUDY]
    assert c.search_studies(patient_id="9RG1", date_from="2005-01-01") == []
    demo_pid = str(pydicom.dcmread(str(seeded["demo"][0]), stop_before_pixels=True).PatientID)
    demo_hits = c.search_studies(patient_id=demo_pid)
    assert len(demo_hits) == 1 and set(demo_hits[0].modalities) & {"CR", "DX"}
    assert len(c.search_studies()) == len(seeded["demo"]) + 2  # all studies: 7 demo, RG1, the multi-instance one
    with pytest.raises(PacsError, match="date range is reversed"):
        c.search_studies(date_from="2020-01-02", date_to="2020-01-01")


def test_fetch_reads_like_a_folder_with_its_sr_report_and_resumes(orthanc, seeded, tmp_path):
    c = _client(orthanc, tmp_path)
    seen = []
    res = c.fetch_study(RG1_STUDY, progress=lambda d, t: seen.append((d, t)))
    assert res.downloaded == 2 and res.cached == 0 and seen[-1] == (2, 2)  # the CR and its SR report, nothing else
    assert all(p.is_file() for p in res.files) and not list(res.folder.rglob("*.part"))
    scan = scan_folder(res.folder)
    assert len(scan.studies) == 1 and len(scan.studies[0].images) == 1
    rep = read_report(scan.studies[0].report_path)
    assert [s.name for s in rep.sections] == ["FINDINGS", "IMPRESSION"]
    assert rep.sentence_text(rep.sentences[1]) == "No pleural effusion."
    again = c.fetch_study(RG1_STUDY)
    assert (again.downloaded, again.cached) == (0, 2)
    # cancel: complete instances stay, the message says how to resume
    with pytest.raises(PacsCancelled, match="after 0 of 5"):
        c.fetch_study(seeded["multi_study"], cancel=lambda: True)


def test_fetch_keeps_the_stored_transfer_syntax(orthanc, seeded, tmp_path):
    """RLE and JPEG 2000 demo files come back byte-compatible: same transfer syntax, same pixels."""
    import numpy as np

    c = _client(orthanc, tmp_path)
    for src in seeded["demo"]:
        ds = pydicom.dcmread(str(src))
        if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1":
            continue
        res = c.fetch_study(ds.StudyInstanceUID)
        (img,) = [p for p in res.files if pydicom.dcmread(str(p), stop_before_pixels=True).Modality != "SR"]
        got = pydicom.dcmread(str(img))
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        np.testing.assert_array_equal(got.pixel_array, ds.pixel_array)


def test_errors_are_one_clear_line(orthanc, seeded, tmp_path):
    with pytest.raises(PacsError, match=r"HTTP 401 unauthorized: check the user/password") as e:
        _client(orthanc, tmp_path, password="wrong").search_studies()
    assert "wrong" not in str(e.value) and PASSWORD not in str(e.value)
    c = _client(orthanc, tmp_path)
    with pytest.raises(PacsError, match="no series in study|HTTP 404"):
        c.fetch_study("1.2.3.4.5.6.7.8.9")
    with pytest.raises(PacsError, match="invalid Study Instance UID"):
        c.fetch_study("../../etc")
    dead = OrthancServer(tmp_path)  # a free port nobody listens on
    with pytest.raises(PacsError, match="connection refused|cannot connect"):
        PacsClient(dead.dicomweb, timeout=2).search_studies()
    with pytest.raises(PacsError, match="not a DICOMweb URL"):
        PacsClient("ftp://x/dicom-web")
    # credentials in the URL move to the session and out of every message
    c2 = PacsClient(f"http://{USER}:{PASSWORD}@127.0.0.1:{orthanc.port}/dicom-web", timeout=10,
                    cache_dir=tmp_path / "c2")
    assert PASSWORD not in repr(c2) and PASSWORD not in c2.url
    assert [h.study_uid for h in c2.search_studies(patient_id="9RG1")] == [RG1_STUDY]
    assert redact_url("https://u:p@h:1/x?y=1") == "https://h:1/x"


def test_timeout_is_a_clear_message(tmp_path):
    import socket

    srv = socket.socket()  # accepts, never answers
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    try:
        with pytest.raises(PacsError, match=r"no answer within 1 s"):
            PacsClient(f"http://127.0.0.1:{port}/dicom-web", timeout=1, cache_dir=tmp_path).search_studies()
    finally:
        srv.close()


@needs_dciodvfy
def test_export_sr_and_seg_stow_and_find_them(orthanc, seeded, tmp_path, capsys):
    c = _client(orthanc, tmp_path)
    res = c.fetch_study(RG1_STUDY)
    img = next(p for p in res.files if pydicom.dcmread(str(p), stop_before_pixels=True).Modality == "CR")
    src = read_source(img)
    sr_path = write_dataset(review_sr(src, [SrBox(200, 300, 400, 350, "Pneumothorax", "right apical pneumothorax",
                                                  "accepted", "alice")]), tmp_path / "boxes.sr.dcm")
    yy, xx = np.mgrid[0:src.Rows, 0:src.Columns]
    sim = np.cos(xx / 300.0).astype(np.float32) * 0.3
    seg = maps_seg(src, [MapLayer("right apical pneumothorax", sim)], ModelInfo("demo_model", "0123456789abcdef" * 4))
    seg_path = write_dataset(seg, tmp_path / "map.seg.dcm")
    for p in (sr_path, seg_path):
        assert_dciodvfy_clean(p, capsys)
    assert c.store([sr_path, seg_path]) == 2
    found = {str(sr.SOPInstanceUID) for sr in (pydicom.dcmread(str(sr_path)), pydicom.dcmread(str(seg_path)))}
    inst = c._client.search_for_instances(study_instance_uid=RG1_STUDY)
    uids = {i["00080018"]["Value"][0] for i in inst}
    assert found <= uids
    mods = {m for h in c.search_studies(patient_id="9RG1", modalities=["SEG"]) for m in h.modalities}
    assert {"SR", "SEG", "CR"} <= mods
    # fetching again takes the CR and the report SR; our measurement SR is fetched (modality SR) but the scan still
    # picks the narrative report
    again = c.fetch_study(RG1_STUDY)
    scan = scan_folder(again.folder)
    assert read_report(scan.studies[0].report_path).section("IMPRESSION") is not None


def test_killed_server_mid_fetch_leaves_a_clean_cache(seeded, tmp_path):
    """A second Orthanc (we kill it) holding the 5-instance series: SIGKILL after 2 instances, clear message,
    only whole instances in the cache, and a restart resumes where it stopped."""
    srv = OrthancServer(tmp_path / "srv")
    (tmp_path / "srv").mkdir()
    srv.start()
    try:
        multi = series_copies(seeded["demo"][1], 5, tmp_path / "multi")
        for p in multi:
            srv.upload(p)
        study = str(pydicom.dcmread(str(multi[0]), stop_before_pixels=True).StudyInstanceUID)
        c = PacsClient(srv.dicomweb, username=USER, password=PASSWORD, timeout=5, cache_dir=tmp_path / "cache")

        def kill_after_two(done, total):
            if done == 2:
                srv.kill()

        with pytest.raises(PacsError) as e:
            c.fetch_study(study, progress=kill_after_two)
        msg = str(e.value)
        assert "stopped after 2 of 5 instances" in msg and "fetch again to resume" in msg
        assert "connection refused" in msg or "cannot connect" in msg
        assert "\n" not in msg and PASSWORD not in msg
        folder = c.study_folder(study)
        files = sorted(folder.rglob("*"))
        dcm = [p for p in files if p.is_file()]
        assert len(dcm) == 2 and all(p.suffix == ".dcm" for p in dcm)  # no .part, nothing half-written
        for p in dcm:
            pydicom.dcmread(str(p)).pixel_array  # whole, decodable instances
        srv.start()  # same storage, same port
        res = c.fetch_study(study)
        assert (res.downloaded, res.cached) == (3, 2)
        assert len(list(folder.rglob("*.dcm"))) == 5
    finally:
        srv.stop()


def _cli(args, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELVIS_PACS")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "elvis_core", "-v", "pacs", *args], capture_output=True, text=True,
                          cwd=str(REPO), env=env, timeout=timeout)


def test_cli_search_fetch_store_keep_credentials_and_identifiers_out(orthanc, seeded, tmp_path):
    env = {"ELVIS_PACS_PASSWORD": PASSWORD, "ELVIS_PACS_URL": orthanc.dicomweb}
    r = _cli(["search", "--user", USER, "--patient-id", "9RG1", "--from", "2004-08-01", "--to", "2004-08-31"], env)
    assert r.returncode == 0, r.stderr
    assert RG1_STUDY in r.stdout and "1 study" in r.stderr
    assert "9RG1" not in r.stdout + r.stderr.replace("--patient-id", "")  # the ID searched for is not echoed
    r = _cli(["fetch", "--user", USER, RG1_STUDY, "--cache", str(tmp_path / "c")], env)
    assert r.returncode == 0, r.stderr
    folder = Path(r.stdout.strip().splitlines()[-1])
    got = [pydicom.dcmread(str(p), stop_before_pixels=True).Modality for p in folder.rglob("*.dcm")]
    # the CR, its SRs (report + our review SR stored earlier) and the SEG stored back: results come both ways
    assert folder.is_dir() and got.count("CR") == 1 and got.count("SEG") == 1 and got.count("SR") >= 1
    assert set(got) <= {"CR", "SR", "SEG"}
    # bearer token path: Orthanc wants basic auth, so the token is refused (401) — and never printed
    r = _cli(["search"], {"ELVIS_PACS_URL": orthanc.dicomweb, "ELVIS_PACS_TOKEN": "tok-SECRET-123"})
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("elvis pacs: error: ") and "HTTP 401" in last
    assert "Traceback" not in r.stderr
    r2 = _cli(["search", "--user", USER], {"ELVIS_PACS_URL": orthanc.dicomweb, "ELVIS_PACS_PASSWORD": "bad-PW-9"})
    assert r2.returncode == 2 and "HTTP 401" in r2.stderr
    for out in (r.stdout + r.stderr, r2.stdout + r2.stderr):
        assert "tok-SECRET-123" not in out and "bad-PW-9" not in out and PASSWORD not in out
    for p in (tmp_path / "c").rglob("*"):
        if p.is_file():
            assert PASSWORD.encode() not in p.read_bytes()
    r = _cli(["fetch", RG1_STUDY], {"ELVIS_PACS_URL": f"http://127.0.0.1:{OrthancServer(tmp_path).port}/dicom-web"})
    assert r.returncode == 2 and "connection refused" in r.stderr and "Traceback" not in r.stderr
