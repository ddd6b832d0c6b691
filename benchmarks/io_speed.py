"""I/O speed of the foundation layer: prints two tables.

1. Decode + first display per pydicom-data radiograph: ours (read_radiograph + to_uint8), plain pydicom
   (dcmread + pixel_array, no LUTs, no display) and SimpleITK (ReadImage + GetArrayFromImage). Median of --repeat runs.
2. Header scan (scan_folder) of a generated folder of --n-files DICOM files (small pydicom-data files copied with new
   UIDs into MIMIC-like study folders), in files/s; plus to_uint8 alone on a 3000 x 3000 image.

Usage: python benchmarks/io_speed.py [--repeat 5] [--n-files 2000]
Targets (issue #2): first display of an RG-size uncompressed CR <= 150 ms; scan >= 2000 headers/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RADIOGRAPHS = ["RG1_UNCI.dcm", "RG1_J2KI.dcm", "RG3_UNCI.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"]


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def decode_table(repeat: int) -> None:
    import pydicom
    import SimpleITK as sitk
    from pydicom.data import get_testdata_file

    from elvis_core.io.dicom import read_radiograph
    from elvis_core.io.display import to_uint8

    # warm the imports and decoder plugins on another file
    to_uint8(read_radiograph(get_testdata_file("MR_small.dcm")))
    print(f"{'file':<16} {'size':>11} {'syntax':<28} {'ours read+display ms':>21} {'of which display':>16} "
          f"{'pydicom ms':>11} {'SimpleITK ms':>13}")
    for name in RADIOGRAPHS:
        path = get_testdata_file(name)
        first_t = time.perf_counter()
        r = read_radiograph(path)
        to_uint8(r)
        first = (time.perf_counter() - first_t) * 1000.0
        ours = _median_ms(lambda: to_uint8(read_radiograph(path)), repeat)
        disp = _median_ms(lambda: to_uint8(r), repeat)
        plain = _median_ms(lambda: pydicom.dcmread(path).pixel_array, repeat)
        si = _median_ms(lambda: sitk.GetArrayFromImage(sitk.ReadImage(path)), repeat)
        size = f"{r.cols}x{r.rows}"
        syntax = r.meta.get("TransferSyntaxName", "")[:28]
        print(f"{name:<16} {size:>11} {syntax:<28} {ours:>14.1f} (1st {first:>4.0f}) {disp:>16.1f} {plain:>11.1f} "
              f"{si:>13.1f}")
    big = np.random.default_rng(0).normal(1000, 300, size=(3000, 3000)).astype(np.float32)
    from elvis_core.io.radiograph import Radiograph, Window

    rb = Radiograph(pixels=big, windows=[Window(1000, 800)])
    print(f"to_uint8 alone, 3000x3000 float32: {_median_ms(lambda: to_uint8(rb), repeat):.1f} ms (median)")


def make_folder(root: str, n_files: int) -> None:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    sources = [pydicom.dcmread(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm")]
    per_study = 4
    for i in range(n_files):
        ds = sources[i % len(sources)]
        study = i // per_study
        if i % per_study == 0:
            study_uid = generate_uid()
        folder = os.path.join(root, "files", f"p1{study % 10}", f"p1{study:07d}", f"s5{study:07d}")
        os.makedirs(folder, exist_ok=True)
        ds.StudyInstanceUID = study_uid
        if i % per_study == 0:
            series_uid = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(os.path.join(folder, f"{i:06d}.dcm"))
        if i % per_study == 0:
            with open(folder + ".txt", "w") as f:
                f.write("FINDINGS: Clear.\n")


def scan_table(n_files: int, repeat: int) -> None:
    from elvis_core.io.studies import scan_folder

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        make_folder(tmp, n_files)
        print(f"generated {n_files} DICOM files in {time.perf_counter() - t:.1f} s")
        rates = []
        for _ in range(repeat):
            t = time.perf_counter()
            res = scan_folder(tmp)
            dt = time.perf_counter() - t
            rates.append(n_files / dt)
        assert res.n_images == n_files and not res.errors, (res.n_images, res.errors[:3])
        print(f"{'scan_folder':<12} {'files':>6} {'studies':>8} {'median files/s':>15} {'best files/s':>13}")
        print(f"{'':<12} {n_files:>6} {len(res.studies):>8} {statistics.median(rates):>15.0f} {max(rates):>13.0f}")
        print("(warm page cache: the files were just written; a cold network share will be slower)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n-files", type=int, default=2000)
    args = ap.parse_args()
    decode_table(args.repeat)
    print()
    scan_table(args.n_files, max(1, min(args.repeat, 3)))


if __name__ == "__main__":
    main()
