"""GK-MVLP-style anatomy alignment (Deng et al., arXiv 2404.14750): anatomical region-level visual features, pooled
from the patch grid inside anatomy boxes and contextualised by a small transformer, are aligned with the report
sentences that mention that anatomy.

What we take from the paper: region-level visual features from anatomy boxes (Chest ImaGenome's), a transformer-based
module over them, and a fine-grained contrastive alignment between each region and the text that refers to it. Where
we differ: GK-MVLP grounds medical-knowledge entity prompts and trains four objectives (ITC, ITM, LM, entity
classification) on top of its module; we keep one contrastive region <-> sentence term, the "text that mentions the
region" is found by keyword rules (:func:`anatomy_mentions`: side words + zone words), and the module is only used in
training (it is not part of the checkpoint's model; grounding uses the patch grid as before).

Anatomy boxes come from
- the phantom generator's ``anatomy.csv`` (beside its ``ms_cxr.csv``; columns ``dicom_id, path, bbox_name, x, y, w,
  h, image_width, image_height, split``), or
- Chest ImaGenome scene graphs: a folder of ``<dicom_id>_SceneGraph.json`` files, each ``{"image_id": ...,
  "objects": [{"bbox_name": "right lung", "original_x1": ..., "original_y1": ..., "original_x2": ...,
  "original_y2": ..., "original_width"?: ..., "original_height"?: ...}, ...]}`` — the ``original_*`` corners in the
  DICOM's pixels (ImaGenome also gives ``x1..y2`` on its 224 px resize; we do not use those).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

from elvis_core.errors import ElvisError
from elvis_core.phantom.anatomy_boxes import ANATOMY_REGIONS
# the objective itself (one module per method); re-exported so existing imports keep working
from elvis_core.training.objectives.anatomy import AnatomyAlignment, AnatomyTransformer, _multi_positive_ce  # noqa: F401

#: dicom_id -> (image (rows, cols) or None, {region name: (x, y, w, h) in image pixels})
AnatomyIndex = Dict[str, Tuple[Optional[Tuple[int, int]], Dict[str, Tuple[float, float, float, float]]]]

_WORDS = re.compile(r"[a-z]+")
_ZONES = (  # (words, region suffix)
    ({"apex", "apical", "apices"}, "apical zone"),
    ({"upper"}, "upper lung zone"),
    ({"mid", "middle", "lingula", "lingular"}, "mid lung zone"),
    ({"lower", "base", "basilar", "basal", "bases", "retrocardiac"}, "lower lung zone"),
    ({"costophrenic", "effusion", "effusions"}, "costophrenic angle"),
    ({"hilar", "hilum", "perihilar", "hila"}, "hilar structures"),
)


def anatomy_mentions(sentence: str) -> Set[str]:
    """Region names (Chest ImaGenome spelling) a sentence refers to: a side ("left", "right", "bilateral") with a
    zone word, or a side alone (that lung); heart words -> cardiac silhouette; mediastinal words -> mediastinum."""
    w = set(_WORDS.findall(sentence.lower()))
    out: Set[str] = set()
    sides = []
    if w & {"bilateral", "bilaterally", "both"}:
        sides = ["right", "left"]
    else:
        sides = [s for s in ("right", "left") if s in w]
    if "retrocardiac" in w or "lingula" in w or "lingular" in w:
        sides = sides or ["left"]
    for side in sides:
        zones = [z for words, z in _ZONES if w & words]
        out.update(f"{side} {z}" for z in zones)
        if not zones:
            out.add(f"{side} lung")
    if w & {"heart", "cardiac", "cardiomegaly", "cardiomediastinal"}:
        out.add("cardiac silhouette")
    if w & {"mediastinal", "mediastinum"}:
        out.add("mediastinum")
    return out


# -- reading boxes ------------------------------------------------------------------------------------------------------

def read_anatomy(path: os.PathLike | str) -> AnatomyIndex:
    """Anatomy boxes by ``dicom_id`` from a phantom ``anatomy.csv`` or a Chest ImaGenome scene-graph folder (see the
    module docstring). Unknown region names are kept (they are ignored by the objective); a malformed row or file
    raises :class:`ElvisError` naming the file and what is wrong."""
    p = Path(path)
    if p.is_dir():
        return _read_imagenome(p)
    if not p.is_file():
        raise ElvisError("anatomy boxes not found (an anatomy.csv or a Chest ImaGenome scene-graph folder)", p)
    out: AnatomyIndex = {}
    with open(p, newline="", encoding="utf-8") as fh:
        rd = csv.DictReader(fh)
        need = {"dicom_id", "bbox_name", "x", "y", "w", "h"}
        if not rd.fieldnames or not need <= set(rd.fieldnames):
            raise ElvisError(f"anatomy CSV needs the columns {sorted(need)}", p)
        for i, r in enumerate(rd, start=2):
            try:
                box = tuple(float(r[k]) for k in ("x", "y", "w", "h"))
                shape = (int(r["image_height"]), int(r["image_width"])) if r.get("image_height") else None
            except (TypeError, ValueError):
                raise ElvisError(f"line {i}: x, y, w, h, image_width, image_height must be numbers", p) from None
            if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
                raise ElvisError(f"line {i}: box must be finite with w, h > 0", p)
            entry = out.setdefault(r["dicom_id"], (shape, {}))
            entry[1][r["bbox_name"]] = box  # type: ignore[assignment]
    return out


def _read_imagenome(folder: Path) -> AnatomyIndex:
    out: AnatomyIndex = {}
    for f in sorted(folder.glob("*_SceneGraph.json")):
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
            objs = doc["objects"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ElvisError(f"not a Chest ImaGenome scene graph ({type(err).__name__})", f) from None
        dicom_id = str(doc.get("image_id") or f.name[:-len("_SceneGraph.json")])
        boxes = {}
        shape = None
        for o in objs:
            try:
                x1, y1, x2, y2 = (float(o[k]) for k in ("original_x1", "original_y1", "original_x2", "original_y2"))
            except (KeyError, TypeError, ValueError):
                continue  # objects without original-pixel corners are skipped
            if x2 > x1 and y2 > y1:
                boxes[str(o.get("bbox_name", ""))] = (x1, y1, x2 - x1, y2 - y1)
            if shape is None and o.get("original_height") and o.get("original_width"):
                shape = (int(o["original_height"]), int(o["original_width"]))
        out[dicom_id] = (shape, boxes)
    if not out:
        raise ElvisError("no *_SceneGraph.json files in this folder", folder)
    return out


# -- boxes on the model grid ----------------------------------------------------------------------------------------------

def boxes_to_model(boxes: np.ndarray, scale: float, pad_x: float, pad_y: float,
                   affine: Optional[np.ndarray] = None) -> np.ndarray:
    """[R, 4] (x, y, w, h) image pixels -> [R, 4] (x0, y0, x1, y1) model-input pixels (resize + pad, then the
    optional 2x3 augmentation affine applied to the 4 corners, axis-aligned hull). NaN rows stay NaN."""
    x0 = boxes[:, 0] * scale + pad_x
    y0 = boxes[:, 1] * scale + pad_y
    x1 = (boxes[:, 0] + boxes[:, 2]) * scale + pad_x
    y1 = (boxes[:, 1] + boxes[:, 3]) * scale + pad_y
    if affine is None:
        return np.stack([x0, y0, x1, y1], 1)
    cx = np.stack([x0, x1, x1, x0], 1)
    cy = np.stack([y0, y0, y1, y1], 1)
    tx = affine[0, 0] * cx + affine[0, 1] * cy + affine[0, 2]
    ty = affine[1, 0] * cx + affine[1, 1] * cy + affine[1, 2]
    return np.stack([tx.min(1), ty.min(1), tx.max(1), ty.max(1)], 1)


def grid_masks(model_boxes: np.ndarray, size: int, grid: Tuple[int, int],
               offset: Tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """[R, 4] (x0, y0, x1, y1) model pixels -> [R, gh, gw] share of each grid cell's area inside the box (NaN box:
    all zero). ``offset`` (dx, dy): the grid's shift on the model input (the model's ``grid_anchor``,
    :func:`~elvis_core.model.transforms.grid_cell_offset`), so a region pools the cells whose features look at it."""
    gh, gw = grid
    ch, cw = size / gh, size / gw
    out = np.zeros((len(model_boxes), gh, gw), np.float32)
    ys0 = np.arange(gh) * ch + float(offset[1])
    xs0 = np.arange(gw) * cw + float(offset[0])
    for r, (x0, y0, x1, y1) in enumerate(model_boxes):
        if not np.isfinite([x0, y0, x1, y1]).all():
            continue
        oy = np.clip(np.minimum(ys0 + ch, y1) - np.maximum(ys0, y0), 0, None) / ch
        ox = np.clip(np.minimum(xs0 + cw, x1) - np.maximum(xs0, x0), 0, None) / cw
        out[r] = oy[:, None] * ox[None, :]
    return out


# -- collation --------------------------------------------------------------------------------------------------------

def batch_anatomy(boxes_per_item: List[Optional[np.ndarray]], sentences_per_item: List[List[str]], size: int,
                  grid: Tuple[int, int], regions: Sequence[str] = ANATOMY_REGIONS,
                  offset: Tuple[float, float] = (0.0, 0.0)):
    """Collate helper: model-input boxes [R, 4] (x0, y0, x1, y1, NaN = absent) per item and the item's sentences ->
    ``{"anatomy_masks": [B, R, gh, gw], "anatomy_mentions": [B, R, S_max] bool}``."""
    b, r = len(boxes_per_item), len(regions)
    s_max = max((len(x) for x in sentences_per_item), default=0)
    masks = np.zeros((b, r, grid[0], grid[1]), np.float32)
    ment = np.zeros((b, r, max(s_max, 1)), bool)
    index = {n: i for i, n in enumerate(regions)}
    for i, (bx, sents) in enumerate(zip(boxes_per_item, sentences_per_item)):
        if bx is not None:
            masks[i] = grid_masks(bx, size, grid, offset)
        for j, sent in enumerate(sents):
            for name in anatomy_mentions(sent):
                if name in index:
                    ment[i, index[name], j] = True
    return {"anatomy_masks": torch.from_numpy(masks), "anatomy_mentions": torch.from_numpy(ment[:, :, :s_max])}
