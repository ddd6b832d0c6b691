"""The clinical round trip both ways, against a real Orthanc (issue 23): QIDO search with wildcards, paging and
checked dates; review decisions → TID 1500 SR → STOW → fetched back → the review resumes from the PACS with every
decision restored → more decisions → written back; maps → FRACTIONAL SEG + RGB Secondary Capture → STOW → the SEG
comes back with the study; a report SR is never a problem and the Review tab finds it in the cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from elvis_core.dicom_results import (MapLayer, ModelInfo, export_review_sr, find_review_srs, heatmap_sc, maps_seg,
                                      read_source, write_dataset)
from elvis_core.io.studies import scan_folder
from elvis_core.pacs import PacsClient, PacsError
from elvis_core.pacs.search import parse_date, query_string, search_page
from elvis_core.review.from_sr import review_from_study
from elvis_core.review.session import ReviewSession, find_report
from tests.pacs.dicom_checks import assert_dciodvfy_clean, needs_dciodvfy
from tests.pacs.orthanc import PASSWORD, USER
from tests.pacs.sr_fixtures import StandInMap, report_sr

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "resources" / "demo"
RG1 = get_testdata_file("RG1_UNCI.dcm")
RG1_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
MODEL = ModelInfo("demo_model", "cd" * 32)


@pytest.fixture(scope="module")
def seeded(orthanc, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seed")
    for p in sorted(DEMO.rglob("*.dcm")):
        orthanc.upload(p)
    orthanc.upload(RG1)
    orthanc.upload(report_sr(RG1, {"FINDINGS": "Small right apical pneumothorax. No effusion.",
                                   "IMPRESSION": "Right apical pneumothorax."}, tmp / "rg1_report.dcm"))
    return orthanc


def _client(orthanc, cache) -> PacsClient:
    return PacsClient(orthanc.dicomweb, username=USER, password=PASSWORD, cache_dir=cache, timeout=20)


def _cli(*args, env=None):
    import os

    e = dict(os.environ, ELVIS_PACS_PASSWORD=PASSWORD, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "elvis_core", *args], capture_output=True, text=True,
                          cwd=str(REPO), timeout=180, env=e)


# ------------------------------------------------------------------------------------------------------ search #

def test_query_keeps_wildcards_and_dates_are_real_dates():
    q = query_string({"PatientID": "PHANTOM1*", "AccessionNumber": "A?C 1&2"}, ["StudyDate"], limit=5, offset=10)
    assert "PatientID=PHANTOM1*" in q and "AccessionNumber=A?C%201%262" in q  # * and ? as typed, the rest encoded
    assert "%2A" not in q and "limit=5" in q and "offset=10" in q
    assert parse_date("2004-08-26") == parse_date("20040826") == "20040826"
    for bad in ("2004-13-01", "2004-02-30", "20041301", "yesterday", "2004-8-6x"):
        with pytest.raises(PacsError, match=r"--from: .* is not a valid date \(YYYY-MM-DD or YYYYMMDD\)"):
            parse_date(bad, "--from")


def test_search_wildcards_and_paging_on_orthanc(seeded, tmp_path):
    c = _client(seeded, tmp_path / "cache")
    demo = {str(pydicom.dcmread(str(p), stop_before_pixels=True).StudyInstanceUID) for p in DEMO.rglob("*.dcm")}
    everything = search_page(c, patient_id="PHANTOM*", limit=100)
    assert {h.study_uid for h in everything.hits} == demo and everything.total == len(demo) == 7
    assert {h.study_uid for h in search_page(c, patient_id="PHANTOM1?2*", limit=100).hits} < demo  # ? matches one
    assert search_page(c, patient_id="PHANTOM1?2*", limit=100).total >= 1
    assert search_page(c, patient_id="9RG*").hits[0].study_uid == RG1_STUDY
    pages = [search_page(c, patient_id="PHANTOM*", limit=3, offset=k) for k in (0, 3, 6)]
    assert [len(p.hits) for p in pages] == [3, 3, 1] and all(p.total == 7 for p in pages)
    uids = [h.study_uid for p in pages for h in p.hits]
    assert len(set(uids)) == 7 and uids == [h.study_uid for h in everything.hits]  # disjoint, same (newest) order
    assert pages[0].summary() == "showing 1\u20133 of 7 studies (next page: --offset 3)"
    assert pages[2].summary() == "showing 7\u20137 of 7 studies"
    # a server that caps its answers (DCM4CHEE: QIDOMaxNumberOfResults) is paged through with offset, not
    # silently truncated: stand-in = this Orthanc's answers cut to 2 per request, honouring offset
    from urllib.parse import parse_qs, urlsplit

    real = c._client._http_get_application_json
    asked = []

    def capped_server(url):
        asked.append(url)
        q = parse_qs(urlsplit(url).query)
        off = int(q.get("offset", ["0"])[0])
        return real(url.split("&limit=")[0])[off:off + 2]

    c._client._http_get_application_json = capped_server
    assert search_page(c, patient_id="PHANTOM*", limit=50).total == 7
    assert any("offset=2" in u for u in asked) and all("%2A" not in u for u in asked)
    capped = search_page(c, patient_id="PHANTOM*", limit=50, max_matches=3)
    assert capped.capped and "of more than 3 studies" in capped.summary() and "narrow the search" in capped.summary()


def test_search_cli_pages_and_refuses_bad_dates(seeded):
    r = _cli("pacs", "search", "--url", seeded.dicomweb, "--user", USER, "--patient-id", "PHANTOM*", "--limit", "3",
             "--offset", "3")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1 + 3  # header + one page
    assert "showing 4\u20136 of 7 studies (next page: --offset 6)" in r.stderr
    assert "PHANTOM1" not in r.stdout  # patient IDs only with --show-identifiers
    r = _cli("pacs", "search", "--url", seeded.dicomweb, "--user", USER, "--from", "2004-13-01")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == \
        ["elvis pacs: error: --from: '2004-13-01' is not a valid date (YYYY-MM-DD or YYYYMMDD)"]


# ------------------------------------------------------------------------------------------- SR both ways #

def _csv(folder: Path, cr: Path) -> Path:
    rel = cr.relative_to(folder)
    csv = folder.parent / "ann.csv"
    csv.write_text("dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
                   f"{cr.stem},Pneumothorax,small right apical pneumothorax,{rel},200,150,300,250,1841,1955\n"
                   f"{cr.stem},Pneumothorax,small right apical pneumothorax,{rel},1200,150,300,250,1841,1955\n"
                   f"{cr.stem},Pleural Effusion,no effusion,{rel},100,1500,400,300,1841,1955\n"
                   f"{cr.stem},Lung Opacity,basal opacity,{rel},900,1400,300,300,1841,1955\n")
    return csv


@needs_dciodvfy
def test_review_sr_both_ways(seeded, tmp_path, capsys):
    c = _client(seeded, tmp_path / "cache")
    folder = c.fetch_study(RG1_STUDY).folder
    scan = scan_folder(folder)
    assert scan.skipped == [] and scan.errors == []  # the report SR is the study's report, never a problem
    cr = Path(scan.studies[0].images[0].path)
    s = ReviewSession.open(_csv(folder, cr), folder, reviewer="alice")
    try:
        assert find_report(s.item) is not None  # the Review tab finds the study's report SR in the cache
        s.go_to(0)
        it = s.item
        s.accept(it.boxes[0].box_id)
        s.edit_box(it.boxes[1].box_id, (1180, 160, 320, 260))
        s.reviewer = "bob"
        s.add_box((600, 600, 100, 120))
        s.go_to(1)
        s.reject("no effusion on this film")
        # "basal opacity" stays unreviewed: the SR is PARTIAL, not verified
        res = export_review_sr(s.items, tmp_path / "sr1", model=MODEL)
    finally:
        s.close()
    assert not res.problems and len(res.written) == 1
    assert_dciodvfy_clean(res.written[0], capsys)
    assert c.store(res.written) == 1

    # a second workstation: fetch the study (fresh cache), the review SR comes with it; resume from the PACS
    c2 = _client(seeded, tmp_path / "cache2")
    folder2 = c2.fetch_study(RG1_STUDY).folder
    assert len(find_review_srs(folder2)) == 1
    scan2 = scan_folder(folder2)
    assert scan2.skipped == [] and scan2.errors == [] and len(scan2.studies[0].images) == 1
    from elvis_core.io.report import read_report

    # the narrative SR is the study's report (the reading tab shows it), not our review SR
    assert "pneumothorax" in read_report(scan2.studies[0].report_path).text.lower()
    r = _cli("review", "from-sr", str(tmp_path / "resumed.csv"), "--images", str(folder2), "--reviewer", "carol")
    assert r.returncode == 0, r.stderr
    assert "restored 4 decision(s) from 1 review SR(s)" in r.stderr
    assert RG1_STUDY not in r.stdout + r.stderr and "uid~" in r.stderr  # the cache folder is named by the study UID
    s2 = ReviewSession.open(tmp_path / "resumed.csv", folder2, reviewer="carol")
    try:
        by_phrase = {it.label_text: it for it in s2.items}
        assert set(by_phrase) == {"small right apical pneumothorax", "no effusion"}  # unreviewed rows are not in it
        ptx = sorted(by_phrase["small right apical pneumothorax"].boxes, key=lambda b: (b.status, b.x))
        assert [(b.status, b.reviewer) for b in ptx] == [("accepted", "alice"), ("added", "bob"), ("edited", "alice")]
        np.testing.assert_allclose(ptx[2].xywh, (1180, 160, 320, 260))
        np.testing.assert_allclose(ptx[2].original, (1200, 150, 300, 250))  # the box before the edit, from the SR
        np.testing.assert_allclose(ptx[1].xywh, (600, 600, 100, 120))
        eff = by_phrase["no effusion"].boxes
        assert [(b.status, b.reason) for b in eff] == [("rejected", "no effusion on this film")]
        # write back: carol reverses the rejection, exports again, stores it
        s2.go_to(by_phrase["no effusion"].key)
        s2.accept(eff[0].box_id)
        res2 = export_review_sr(s2.items, tmp_path / "sr2", model=MODEL)
    finally:
        s2.close()
    sr2 = pydicom.dcmread(res2.written[0])
    assert (sr2.CompletionFlag, sr2.VerificationFlag) == ("COMPLETE", "VERIFIED")  # every restored box decided
    # the revision names the SR it supersedes (Predecessor Documents Sequence)
    first = pydicom.dcmread(res.written[0], stop_before_pixels=True)
    pred = sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert_dciodvfy_clean(res2.written[0], capsys)
    assert c2.store(res2.written) == 1
    folder3 = _client(seeded, tmp_path / "cache3").fetch_study(RG1_STUDY).folder
    srs = find_review_srs(folder3)
    assert len(srs) == 2 and srs[0].sop_instance_uid == str(sr2.SOPInstanceUID)  # newest first
    assert [b.decision for b in srs[0].boxes if b.phrase == "no effusion"] == ["accepted"]


def test_review_from_a_study_without_review_sr_says_so(seeded, tmp_path):
    folder = _client(seeded, tmp_path / "cache").fetch_study(
        str(pydicom.dcmread(str(next(DEMO.rglob("*.dcm"))), stop_before_pixels=True).StudyInstanceUID)).folder
    with pytest.raises(Exception, match="no ELVIS review SR in this study"):
        review_from_study(folder)


# ----------------------------------------------------------------------------------------- maps both ways #

@needs_dciodvfy
def test_maps_both_ways(seeded, tmp_path, capsys):
    from elvis_core.io.images import read_image

    c = _client(seeded, tmp_path / "cache")
    folder = c.fetch_study(RG1_STUDY).folder
    cr = Path(scan_folder(folder).studies[0].images[0].path)
    src = read_source(cr)
    yy, xx = np.mgrid[0:src.Rows, 0:src.Columns]
    sims = [(0.3 * np.exp(-((xx - 400) ** 2 + (yy - 300) ** 2) / 2e4) - 0.05).astype(np.float32),
            (0.2 * np.exp(-((xx - 1400) ** 2 + (yy - 1500) ** 2) / 4e4)).astype(np.float32)]
    phrases = ["right apical pneumothorax", "left basal effusion"]
    seg = write_dataset(maps_seg(src, [MapLayer(p, m, "uncalibrated") for p, m in zip(phrases, sims)], MODEL),
                        tmp_path / "out" / "maps.seg.dcm")
    gm = StandInMap(sims[0], phrases[0], "uncalibrated (peak 0.30) \u00b7 whole image seen")
    sc = write_dataset(heatmap_sc(src, read_image(cr), gm, MODEL), tmp_path / "out" / "a.sc.dcm")
    for p in (seg, sc):
        assert_dciodvfy_clean(p, capsys)
    assert c.store([seg, sc]) == 2
    # QIDO sees both in the source's study
    inst = c._client.search_for_instances(study_instance_uid=RG1_STUDY)
    uids = {i["00080018"]["Value"][0] for i in inst}
    assert {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in (seg, sc)} <= uids
    # fetched back with the study: the SEG (values intact); the SC stays for PACS viewers; nothing is a problem
    folder2 = _client(seeded, tmp_path / "cache2").fetch_study(RG1_STUDY).folder
    segs = [p for p in folder2.rglob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SEG"]
    assert len(segs) == 1
    back = hd.seg.segread(str(segs[0]))
    assert [d.SegmentLabel for d in back.SegmentSequence] == phrases
    px = back.get_pixels_by_source_instance([src.SOPInstanceUID], combine_segments=False)[0]
    for k in range(2):
        np.testing.assert_allclose(px[..., k], np.clip(sims[k], 0, 1), atol=0.5 / 255 + 1e-6)
    scan = scan_folder(folder2)
    assert scan.skipped == [] and scan.errors == [] and len(scan.studies[0].images) == 1
