"""Box review: how fast are import, a durable save, reopening, live figures and export? Prints a table.

    python benchmarks/review_bench.py [--phrases 1200] [--size 2500]

A synthetic MS-CXR-sized set (default 1200 phrases over 400 tiny DICOM files whose headers claim the real size, so
header reads cost what they cost on MIMIC; pixels are never read by the import), then:
- import: CSV parse + header read of every image + grouping;
- save: one decision (SQLite WAL, synchronous=FULL, fsync'ed) — median and p95 over 300 decisions;
- reopen: open the review file with 300 decisions and resume;
- figures: one live-figure update while a box is dragged (map cached at <= 512 px, 2500 x 2048 image);
- export: CSV + COCO JSON + summary (atomic).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_set(root: Path, n_phrases: int, size: int):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    n_images = max(1, n_phrases // 3)
    rows = []
    for k in range(n_images):
        rel = f"files/p1{k % 10}/p1{k:07d}/s5{k:07d}/{k:08x}.dcm"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.Rows, ds.Columns = size, int(size * 0.82)
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
        ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
        ds.PixelData = b"\0\0" * 4  # header benchmark only: pixels never decoded
        ds.save_as(str(p), enforce_file_format=True)
        for j in range(3):
            rows.append({"dicom_id": f"{k:08x}", "category_name": ("Pneumonia", "Edema", "Atelectasis")[j],
                         "label_text": f"finding {j} of image {k}", "path": rel, "x": 100 + 10 * j, "y": 200,
                         "w": 300, "h": 250, "image_width": int(size * 0.82), "image_height": size,
                         "split": ("train", "val", "test")[k % 3]})
            if len(rows) >= n_phrases:
                break
    csv_path = root / "ms_cxr.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return csv_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phrases", type=int, default=1200)
    ap.add_argument("--size", type=int, default=2500)
    ap.add_argument("--saves", type=int, default=300)
    args = ap.parse_args()

    from elvis_core.grounding.types import GroundingMap
    from elvis_core.review import ReviewSession, export_all, import_annotations, item_figures
    from elvis_core.review.figures import map_on_grid

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv_path = make_set(root, args.phrases, args.size)
        t = time.perf_counter()
        res = import_annotations(csv_path, root)
        results.append(("import (CSV + headers)", f"{len(res.items)} phrases", time.perf_counter() - t))

        s = ReviewSession.open(csv_path, root, reviewer="bench")
        lat = []
        for i in range(args.saves):
            b = s.item.boxes[0]
            t = time.perf_counter()
            if i % 2:
                s.accept(advance=True)
            else:
                s.edit_box(b.box_id, (b.x + 3, b.y, b.w, b.h))
            lat.append(time.perf_counter() - t)
        s.close()
        lat_ms = np.array(lat) * 1000
        results.append(("durable decision (median)", f"{args.saves} decisions", float(np.median(lat_ms)) / 1000))
        results.append(("durable decision (p95)", "", float(np.percentile(lat_ms, 95)) / 1000))

        t = time.perf_counter()
        s = ReviewSession.open(csv_path, root)
        results.append(("reopen + resume", f"at item {s.current}", time.perf_counter() - t))

        it = s.item
        shape = (args.size, int(args.size * 0.82))
        g = 16
        sim = np.random.default_rng(0).uniform(-1, 1, (g, g)).astype(np.float32)
        a = np.array([[shape[1] / g, 0, 0], [0, shape[0] / g, 0], [0, 0, 1.0]])
        gmap = GroundingMap(sim, a, shape)
        t = time.perf_counter()
        cached = map_on_grid(gmap, shape)
        results.append(("map resample for figures (once per item)", f"{cached[0].shape}", time.perf_counter() - t))
        reps = []
        for _ in range(50):
            t = time.perf_counter()
            item_figures(it.boxes, map_values=cached)
            reps.append(time.perf_counter() - t)
        results.append(("live figures per drag update (median)", "", statistics.median(reps)))

        t = time.perf_counter()
        export_all(s.items, root / "out")
        results.append(("export CSV + COCO + summary", f"{len(s.items)} phrases", time.perf_counter() - t))
        s.close()

    print(f"{'step':<44}{'what':<22}{'time':>12}")
    for name, what, sec in results:
        print(f"{name:<44}{what:<22}{sec * 1000:>10.2f} ms")


if __name__ == "__main__":
    main()
