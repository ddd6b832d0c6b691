"""Phantom generator speed: end-to-end studies/s (render + DICOM + report + CSV) and where the time goes.

    python benchmarks/phantom_speed.py [--studies 60] [--sizes 1024,2048] [--workers 1,2]

Target (issue #3): >= 10 studies/s at 1024 px on the project machine (2 shared cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from elvis_core.phantom import generate, render_study  # noqa: E402
from elvis_core.phantom.dicom_writer import Encoding, write_dicom  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=60)
    ap.add_argument("--sizes", default="1024,2048")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    workers = [int(w) for w in args.workers.split(",")]

    print(f"cpu cores: {os.cpu_count()}  load average before: {os.getloadavg()[0]:.2f}  studies per run: {args.studies}")
    print("\nend to end (generate: render + write DICOM + report + CSV); cpu = this process's CPU seconds")
    print(f"{'size':>6} {'workers':>7} {'seconds':>8} {'studies/s':>10} {'studies/cpu-s':>14}")
    for size in sizes:
        for w in workers:
            with tempfile.TemporaryDirectory() as d:
                t0, c0 = time.perf_counter(), time.process_time()
                generate(os.path.join(d, "ph"), args.studies, seed=1, size=size, workers=w)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
            cpu = f"{args.studies / dc:>14.1f}" if w == 1 else f"{'-':>14}"
            print(f"{size:>6} {w:>7} {dt:>8.2f} {args.studies / dt:>10.1f} {cpu}")

    print("\nparts, one process (ms per study)")
    print(f"{'size':>6} {'render':>8} {'explicit':>9} {'RLE':>8} {'J2K':>8}")
    n = max(5, args.studies // 6)
    for size in sizes:
        t0 = time.perf_counter()
        studies = [render_study(100 + i, size=size, with_clean=False) for i in range(n)]
        t_render = (time.perf_counter() - t0) / n * 1000
        ids = {"patient_id": "PHANTOM1", "patient_name": "PHANTOM^1", "study_uid": "2.25.1", "series_uid": "2.25.2",
               "sop_uid": "2.25.3", "study_date": "21500101", "study_id": "1", "accession": "1"}
        row = []
        with tempfile.TemporaryDirectory() as d:
            for syntax in ("explicit", "rle", "j2k"):
                enc = Encoding("CR", "MONOCHROME2", 12, 1.0, 0.0, syntax, 400.0, None, 0.9, 0.0)
                t0 = time.perf_counter()
                for i, st in enumerate(studies):
                    write_dicom(os.path.join(d, f"{syntax}{i}.dcm"), st.image, enc, ids, "PA", "F")
                row.append((time.perf_counter() - t0) / n * 1000)
        print(f"{size:>6} {t_render:>8.1f} {row[0]:>9.1f} {row[1]:>8.1f} {row[2]:>8.1f}")
    print("\nshares in generate(): explicit 70 %, RLE 22 %, JPEG 2000 8 % (per-study random)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
