"""A small MS-CXR-style review set on disk (DICOM + reports + CSV) for tests and demos.

Writes ``root/files/p10/p1000000N/s5000000N/<dicom_id>.dcm`` (MONOCHROME2, 16-bit, a bright blob where each box is) with
the report ``s5000000N.txt`` beside the study folder, and ``ms_cxr.csv`` (v1.1.0 columns, with split).
All identifiers are synthetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

CATEGORIES = ("Pneumonia", "Pleural effusion", "Cardiomegaly", "Atelectasis")
PHRASES = {
    "Pneumonia": "right lower lobe opacity",
    "Pleural effusion": "small left pleural effusion",
    "Cardiomegaly": "enlarged cardiac silhouette",
    "Atelectasis": "left basilar atelectasis",
}


def _write_dicom(path: Path, pixels: np.ndarray, idx: int) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"elvis-review-sample-{idx}"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study-{idx}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series-{idx}"])
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def write_sample_set(out_dir: str | Path, n_studies: int = 4, seed: int = 0, size: int = 128) -> Tuple[Path, Path]:
    """Write the set; returns (csv_path, images_root). Each study has 1–2 phrases with 1–2 boxes each."""
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    rows: List[Dict[str, str]] = []
    yy, xx = np.mgrid[0:size, 0:size]
    for k in range(n_studies):
        pid, sid = f"p1000000{k}", f"s5000000{k}"
        dicom_id = f"{k:08x}-sample{seed}"
        rel = f"files/p10/{pid}/{sid}/{dicom_id}.dcm"
        img = rng.normal(800, 40, (size, size))
        cats = [CATEGORIES[k % len(CATEGORIES)]] + ([CATEGORIES[(k + 1) % len(CATEGORIES)]] if k % 2 else [])
        sentences = []
        for c in cats:
            nb = 1 + int(rng.integers(0, 2))
            for _ in range(nb):
                w, h = (int(v) for v in rng.integers(size // 8, size // 3, 2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                img += 1500 * np.exp(-(((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2))
                rows.append({"dicom_id": dicom_id, "category_name": c, "label_text": PHRASES[c], "path": rel,
                             "x": str(x), "y": str(y), "w": str(w), "h": str(h), "image_width": str(size),
                             "image_height": str(size), "split": ("train", "val", "test")[k % 3]})
            sentences.append(f"There is {PHRASES[c]}.")
        _write_dicom(root / rel, np.clip(img, 0, 4095), k)
        report = "FINDINGS: " + " ".join(sentences) + "\n\nIMPRESSION: Findings as above, unchanged since ___.\n"
        (root / f"files/p10/{pid}/{sid}.txt").write_text(report, encoding="utf-8")
    csv_path = root / "ms_cxr.csv"
    import csv

    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return csv_path, root
