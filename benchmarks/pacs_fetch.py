"""PACS round trip against a local Orthanc (DICOMweb plugin): how fast are search, fetch (cold), fetch (resume, all
cached), STOW and the DICOM exports? Prints a table.

    python benchmarks/pacs_fetch.py [--instances 20]

Needs the Debian packages orthanc + orthanc-dicomweb (and dicom3tools for the dciodvfy column). Uses the test
helper that starts a throw-away Orthanc on a free 127.0.0.1 port. Data: ``--instances`` copies of pydicom-data's
RG1 (a real 1841 x 1955 CR, 7.2 MB uncompressed) in one series, plus one demo phantom study.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=20)
    args = ap.parse_args()

    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file

    from elvis_core.dicom_results import (MapLayer, ModelInfo, SrBox, dciodvfy, dciodvfy_available, maps_seg,
                                          read_source, review_sr, write_dataset)
    from elvis_core.pacs import PacsClient
    from tests.pacs.orthanc import PASSWORD, USER, OrthancServer
    from tests.pacs.sr_fixtures import series_copies

    tmp = Path(tempfile.mkdtemp(prefix="elvis_pacs_bench_"))
    srv = OrthancServer(tmp / "orthanc")
    (tmp / "orthanc").mkdir()
    rows = []
    t0 = time.perf_counter()
    srv.start()
    rows.append(("start Orthanc (until /system answers)", time.perf_counter() - t0, ""))
    try:
        files = series_copies(get_testdata_file("RG1_UNCI.dcm"), args.instances, tmp / "series")
        mb = sum(p.stat().st_size for p in files) / 1e6
        t0 = time.perf_counter()
        ids = [srv.upload(p)["ID"] for p in files]
        rows.append((f"upload {args.instances} instances (REST, {mb:.0f} MB)", time.perf_counter() - t0, ""))
        study = str(pydicom.dcmread(str(files[0]), stop_before_pixels=True).StudyInstanceUID)
        c = PacsClient(srv.dicomweb, username=USER, password=PASSWORD, cache_dir=tmp / "cache", timeout=60)
        t0 = time.perf_counter()
        hits = c.search_studies(patient_id="MULTI0001")
        rows.append(("QIDO search by patient ID", time.perf_counter() - t0, f"{len(hits)} study"))
        from elvis_core.pacs.search import search_page

        t0 = time.perf_counter()
        page = search_page(c, patient_id="MULTI*", limit=10)
        rows.append(("QIDO search with a wildcard, paged (CR + DX)", time.perf_counter() - t0, page.summary()))
        t0 = time.perf_counter()
        res = c.fetch_study(study)
        dt = time.perf_counter() - t0
        rows.append((f"WADO fetch, cold ({res.downloaded} instances)", dt,
                     f"{res.downloaded / dt:.1f} inst/s, {mb / dt:.0f} MB/s"))
        import requests

        t0 = time.perf_counter()
        for i in ids:  # the server's own speed: its plain REST download of the same files, no DICOMweb
            requests.get(f"{srv.base}/instances/{i}/file", auth=(USER, PASSWORD), timeout=60).raise_for_status()
        dt_rest = time.perf_counter() - t0
        rows.append((f"baseline: Orthanc REST /instances/ID/file x {len(ids)}", dt_rest,
                     f"{len(ids) / dt_rest:.1f} inst/s; WADO fetch / REST = {dt / dt_rest:.2f}"))
        t0 = time.perf_counter()
        res2 = c.fetch_study(study)
        rows.append((f"fetch again (resume: {res2.cached} cached, {res2.downloaded} downloaded)",
                     time.perf_counter() - t0, "QIDO listing only"))
        src = read_source(files[0])
        t0 = time.perf_counter()
        sr = review_sr(src, [SrBox(100 + 10 * k, 200, 300, 250, "Pneumothorax", f"box {k}", "accepted", "alice")
                             for k in range(10)])
        sr_path = write_dataset(sr, tmp / "boxes.sr.dcm")
        rows.append(("SR (TID 1500, 10 boxes): build + write", time.perf_counter() - t0, ""))
        yy, xx = np.mgrid[0:src.Rows, 0:src.Columns]
        sims = [(0.3 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 4e4) - 0.05).astype(np.float32)
                for cx, cy in ((500, 700), (1300, 1400))]
        model = ModelInfo("bench", "0" * 64)
        t0 = time.perf_counter()
        seg = maps_seg(src, [MapLayer(f"phrase {k}", m) for k, m in enumerate(sims)], model)
        seg_path = write_dataset(seg, tmp / "map.seg.dcm")
        rows.append((f"FRACTIONAL SEG, 2 phrases ({src.Columns}x{src.Rows}, RLE): build + write",
                     time.perf_counter() - t0, f"{seg_path.stat().st_size / 1e3:.0f} kB "
                     f"(uncompressed {2 * src.Rows * src.Columns / 1e3:.0f} kB)"))

        class _Map:  # what heatmap_sc needs of a GroundingMap
            phrase, fully_seen = "phrase 0", True

            def trust_line(self):
                return "uncalibrated (peak 0.25) \u00b7 whole image seen"

            def to_image(self, shape=None):
                import cv2

                return sims[0] if shape is None or tuple(shape) == sims[0].shape else \
                    cv2.resize(sims[0], (shape[1], shape[0]))

        from elvis_core.dicom_results import heatmap_sc
        from elvis_core.io.images import read_image

        rad = read_image(files[0])
        t0 = time.perf_counter()
        sc_path = write_dataset(heatmap_sc(src, rad, _Map(), model), tmp / "map.sc.dcm")
        rows.append(("SC heat map (JPEG baseline): render + build + write", time.perf_counter() - t0,
                     f"{sc_path.stat().st_size / 1e3:.0f} kB"))
        if dciodvfy_available():
            for p in (sr_path, seg_path, sc_path):
                t0 = time.perf_counter()
                ok, _ = dciodvfy(p)
                rows.append((f"dciodvfy {p.name}", time.perf_counter() - t0, "no Error" if ok else "ERRORS"))
        t0 = time.perf_counter()
        n = c.store([sr_path, seg_path, sc_path])
        rows.append((f"STOW {n} objects", time.perf_counter() - t0, ""))
    finally:
        srv.stop()
    w = max(len(r[0]) for r in rows)
    print(f"{'step':<{w}}  {'seconds':>8}  note")
    for name, sec, note in rows:
        print(f"{name:<{w}}  {sec:8.3f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
