"""A contact sheet: a PNG grid of phantom studies read back from disk with their MS-CXR boxes and phrases.

Images go through the project's own pixel path (``read_radiograph`` -> default window -> uint8), so the sheet also
shows that MONOCHROME1 files, rescale and window tags come back the right way up.
"""

from __future__ import annotations

import csv
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np

from elvis_core.errors import ElvisError

#: BGR colour per category
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "Atelectasis": (0, 200, 255), "Cardiomegaly": (255, 80, 255), "Consolidation": (0, 0, 255),
    "Edema": (255, 200, 0), "Lung Opacity": (0, 255, 160), "Pleural Effusion": (255, 120, 40),
    "Pneumonia": (60, 60, 255), "Pneumothorax": (0, 255, 255),
}


def _label(canvas: np.ndarray, text: str, org: Tuple[int, int], colour: Tuple[int, int, int]) -> None:
    """Text on a dark strip (an outline drawn with a thicker stroke would be spaced differently in OpenCV)."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.36, 1)
    x, y = org
    cv2.rectangle(canvas, (x - 2, y - th - 2), (x + tw + 2, y + base), (0, 0, 0), -1)
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.36, colour, 1, cv2.LINE_AA)


def _studies(out_dir: str) -> List[str]:
    files_dir = os.path.join(out_dir, "files")
    found = []
    for root, _dirs, files in os.walk(files_dir):
        for f in files:
            if f.endswith(".dcm"):
                found.append(os.path.relpath(os.path.join(root, f), out_dir).replace(os.sep, "/"))
    return sorted(found)


def make_contact_sheet(out_dir: os.PathLike | str, png_path: os.PathLike | str, n: int = 16, tile: int = 400,
                       findings_first: bool = True) -> str:
    """Draw ``n`` studies of the phantom folder ``out_dir`` (4 per row) to ``png_path``; returns the PNG path.

    Studies are taken in path order (paths are random identifiers); with ``findings_first`` studies with boxes come
    first so the sheet shows findings, then normal ones.
    """
    from elvis_core.io.dicom import read_radiograph  # the project's reader
    from elvis_core.io.display import to_uint8

    out = os.fspath(out_dir)
    csv_path = os.path.join(out, "ms_cxr.csv")
    if not os.path.isfile(csv_path):
        raise ElvisError("no ms_cxr.csv here; is this a phantom output folder?", out)
    rows_by_path: Dict[str, List[dict]] = {}
    with open(csv_path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            rows_by_path.setdefault(row["path"], []).append(row)
    paths = _studies(out)
    if not paths:
        raise ElvisError("no DICOM files under files/", out)
    if findings_first:
        with_boxes = [p for p in paths if p in rows_by_path]
        paths = with_boxes[: max(n - 3, 0)] + [p for p in paths if p not in rows_by_path]
        paths = (paths + with_boxes[max(n - 3, 0):])[:n]
    paths = paths[:n]
    tiles = []
    for rel in paths:
        rad = read_radiograph(os.path.join(out, rel))
        img8 = to_uint8(rad)
        h, w = img8.shape
        s = tile / max(h, w)
        small = cv2.resize(img8, (int(round(w * s)), int(round(h * s))), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((tile, tile, 3), np.uint8)
        ox = (tile - small.shape[1]) // 2
        canvas[: small.shape[0], ox: ox + small.shape[1]] = small[:, :, None]
        label_y = {}
        for row in rows_by_path.get(rel, []):
            iw, ih = float(row["image_width"]), float(row["image_height"])
            sx, sy = small.shape[1] / iw, small.shape[0] / ih
            x, y, bw, bh = (float(row[k]) for k in ("x", "y", "w", "h"))
            col = COLOURS.get(row["category_name"], (255, 255, 255))
            p0 = (int(ox + x * sx), int(y * sy))
            p1 = (int(ox + (x + bw) * sx), int((y + bh) * sy))
            cv2.rectangle(canvas, p0, p1, col, 1, cv2.LINE_AA)
            key = (row["label_text"], row["category_name"])
            if key not in label_y:
                label_y[key] = 14 + 13 * len(label_y)
                txt = f"{row['category_name']}: {row['label_text']}"
                _label(canvas, txt[:64], (4, tile - 8 - (label_y[key] - 14)), col)
        meta = rad.meta
        pi = str(meta.get("PhotometricInterpretation", ""))
        head = (f"{meta.get('Modality', '')} {meta.get('ViewPosition', '')} {'MONO' + pi[-1:] if pi else ''} "
                f"{meta.get('BitsStored', '')} bit  {str(meta.get('TransferSyntaxName', ''))[:22]}  {w}x{h}")
        _label(canvas, head, (4, 13), (255, 255, 255))
        tiles.append(canvas)
    while len(tiles) % 4:
        tiles.append(np.zeros((tile, tile, 3), np.uint8))
    grid = np.vstack([np.hstack(tiles[i:i + 4]) for i in range(0, len(tiles), 4)])
    png = os.fspath(png_path)
    parent = os.path.dirname(os.path.abspath(png))
    os.makedirs(parent, exist_ok=True)
    if not cv2.imwrite(png, grid):
        raise ElvisError("cannot write the contact sheet PNG", png)
    return png
