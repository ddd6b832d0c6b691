"""Training data: image–report pairs from a MIMIC-CXR-layout root (DICOM or JPG) or a phantom folder.

:func:`find_pairs` scans the root (``elvis_core.io.studies.scan_folder``, headers only), keeps PA/AP images, reads
each study's report (``elvis_core.io.report.read_report``) and uses its FINDINGS + IMPRESSION text; optionally the
patients of an MS-CXR CSV are excluded so evaluation images never leak into training. Everything it drops is counted
in :class:`PairStats` (no patient identifiers in messages).

:class:`PairDataset` decodes and transforms images (``ModelInputTransform``), optionally caching the [0, 1] model
input as uint8 in RAM; unreadable images are skipped and counted (in the cache pass, or at load time by the collate
function). :class:`Augment` never flips left/right (laterality matters in chest X-rays).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import cv2
import numpy as np
import torch

from elvis_core.errors import ConfigError, ElvisError
from elvis_core.model.transforms import ModelInputTransform

log = logging.getLogger(__name__)

REPORT_SECTIONS = ("FINDINGS", "IMPRESSION")


@dataclass
class Pair:
    image_path: str
    text: str
    study_key: str
    patient: str = ""  # MIMIC patient folder (pXXXXXXXX) when in that layout; not a DICOM identifier
    view: str = ""  # ViewPosition (tag, or MIMIC metadata for JPG); "" when unknown
    report_path: str = ""


@dataclass
class PairStats:
    studies_seen: int = 0
    images_seen: int = 0
    pairs: int = 0
    no_report: int = 0
    empty_report_sections: int = 0
    unreadable_reports: int = 0
    wrong_view: int = 0
    unknown_view_kept: int = 0
    excluded_patients: int = 0
    scan_errors: int = 0
    unreadable_images: int = 0
    problems: List[Tuple[str, str]] = field(default_factory=list)  # (path, message), first few only

    def lines(self) -> List[str]:
        return [f"{self.pairs} image-report pairs from {self.studies_seen} studies / {self.images_seen} images",
                f"dropped: {self.no_report} without report, {self.empty_report_sections} reports without FINDINGS/"
                f"IMPRESSION text, {self.unreadable_reports} unreadable reports, {self.wrong_view} non-PA/AP views, "
                f"{self.excluded_patients} images of excluded (MS-CXR) patients, {self.scan_errors} unreadable files "
                f"in the scan, {self.unreadable_images} unreadable images"
                + (f"; kept {self.unknown_view_kept} images without a view position (JPG/PNG)"
                   if self.unknown_view_kept else "")]


def report_training_text(report) -> str:
    """FINDINGS + IMPRESSION of a parsed report (whitespace collapsed); the whole text when it has no sections."""
    parts = []
    for name in REPORT_SECTIONS:
        sec = report.section(name)
        if sec is not None and sec.end > sec.start:
            parts.append(report.text[sec.start:sec.end])
    if not parts and not report.sections:
        parts = [report.text]
    return " ".join(" ".join(p.split()) for p in parts).strip()


def excluded_patients_from_csv(path: str, splits: Sequence[str] = ()) -> Set[str]:
    """MIMIC patient folders (``pXXXXXXXX``) named by an MS-CXR CSV's ``path`` column (only rows of ``splits`` when
    given, e.g. ``["val", "test"]`` for a phantom set whose CSV also covers the training patients)."""
    from elvis_core.io.annotations import patient_id_from_path, read_ms_cxr_csv

    aset = read_ms_cxr_csv(path)
    out: Set[str] = set()
    for ph in aset.phrases:
        if splits and (ph.split or "") not in splits:
            continue
        pid = patient_id_from_path(ph.path)
        if pid:
            out.add(pid)
    return out


def read_mimic_views(path: str) -> Dict[str, str]:
    """``dicom_id -> ViewPosition`` from MIMIC-CXR-JPG's ``mimic-cxr-2.0.0-metadata.csv`` (or ``.csv.gz``), for JPG
    images, which carry no view tag."""
    import csv
    import gzip

    if not os.path.isfile(path):
        raise ConfigError("MIMIC metadata CSV not found", path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            if "dicom_id" not in cols or "ViewPosition" not in cols:
                raise ConfigError(f"MIMIC metadata CSV needs columns dicom_id and ViewPosition (found: "
                                  f"{', '.join(cols)})", path)
            return {row["dicom_id"]: (row["ViewPosition"] or "").strip().upper() for row in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"cannot read the MIMIC metadata CSV ({err})", path) from err


def find_pairs(root: str, views: Sequence[str] = ("PA", "AP"), exclude_patients: Optional[Set[str]] = None,
               max_pairs: int = 0, progress: Optional[Callable[[int, int], None]] = None,
               view_of: Optional[Dict[str, str]] = None) -> Tuple[List[Pair], PairStats]:
    """Image-report pairs under ``root``. ``view_of``: dicom_id (file stem) -> view, for images without a view tag
    (MIMIC-CXR-JPG; see :func:`read_mimic_views`)."""
    from elvis_core.io.annotations import patient_id_from_path
    from elvis_core.io.report import read_report
    from elvis_core.io.studies import scan_folder

    if not os.path.isdir(root):
        raise ConfigError("data root is not a folder", root)
    scan = scan_folder(root, progress=progress)
    stats = PairStats(scan_errors=len(scan.errors))
    for path, msg in scan.errors[:5]:
        stats.problems.append((path, msg))
    views_u = {v.upper() for v in views}
    pairs: List[Pair] = []
    for st in scan.studies:
        stats.studies_seen += 1
        stats.images_seen += len(st.images)
        if not st.report_path:
            stats.no_report += len(st.images)
            continue
        try:
            text = report_training_text(read_report(st.report_path))
        except ElvisError as err:
            stats.unreadable_reports += 1
            if len(stats.problems) < 10:
                stats.problems.append((st.report_path, err.problem))
            continue
        if not text:
            stats.empty_report_sections += 1
            continue
        for im in st.images:
            view = (im.view_position or "").upper()
            if not view and view_of:
                view = view_of.get(os.path.splitext(os.path.basename(im.path))[0], "")
            if view and view not in views_u:
                stats.wrong_view += 1
                continue
            if not view:
                if im.path.lower().endswith((".dcm", ".dicom", ".dic")):
                    stats.wrong_view += 1  # a DICOM without ViewPosition: unknown projection, not used
                    continue
                stats.unknown_view_kept += 1
            pid = patient_id_from_path(os.path.relpath(im.path, root)) or ""
            if exclude_patients and pid in exclude_patients:
                stats.excluded_patients += 1
                continue
            pairs.append(Pair(image_path=im.path, text=text, study_key=st.key, patient=pid, view=view,
                              report_path=st.report_path))
    pairs.sort(key=lambda p: p.image_path)
    if max_pairs and len(pairs) > max_pairs:
        pairs = pairs[:max_pairs]
    stats.pairs = len(pairs)
    return pairs, stats


@dataclass
class Augment:
    """Random affine (scale, small rotation, translation) + brightness/contrast on the [0, 1] model input.
    Never flips: left/right carry meaning in chest X-rays."""

    scale: Tuple[float, float] = (0.9, 1.1)
    rotate_deg: float = 5.0
    translate: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One item's parameters ``[scale, angle_deg, tx, ty, contrast, brightness]`` (translation as a fraction of
        the side). The same draws, in the same order, for the per-item (cv2) and the batch (torch) paths."""
        sc = rng.uniform(*self.scale)
        ang = rng.uniform(-self.rotate_deg, self.rotate_deg)
        tx, ty = rng.uniform(-self.translate, self.translate, size=2)
        c = 1.0 + rng.uniform(-self.contrast, self.contrast)
        b = rng.uniform(-self.brightness, self.brightness)
        if not sc > 0:
            raise ConfigError(f"augment.scale must be > 0 (a negative scale would mirror the image), got {sc}")
        return np.array([sc, ang, tx, ty, c, b], dtype=np.float64)

    def __call__(self, img: np.ndarray, rng: np.random.Generator, matrix_out: Optional[list] = None) -> np.ndarray:
        """``matrix_out``: a list that receives the 2x3 affine used (model pixels -> model pixels)."""
        s = img.shape[0]
        sc, ang, tx, ty, c, b = self.sample(rng)
        m = cv2.getRotationMatrix2D((s / 2.0, s / 2.0), ang, sc)
        m[:, 2] += (tx * s, ty * s)
        assert m[0, 0] > 0, "augmentation must never mirror the image"
        if matrix_out is not None:
            matrix_out.append(m.copy())
        out = cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return np.clip((out - 0.5) * c + 0.5 + b, 0.0, 1.0).astype(np.float32)


def batch_model_input(pixels: torch.Tensor, params: Optional[torch.Tensor], mean: float, std: float) -> torch.Tensor:
    """A uint8 batch ``[B, 1, S, S]`` of prepared images → the standardised float model input, with the augmentation
    of :class:`Augment` (``params`` ``[B, 6]`` from :meth:`Augment.sample`; None = no augmentation) applied on
    whatever device the batch is on (the GPU in training), by ``affine_grid`` + ``grid_sample``: the same affine as
    the cv2 path (rotation about the centre, scale, translation; zeros outside), then contrast/brightness, clip.
    Never a flip: the linear part is a rotation times a positive scale (determinant > 0, checked)."""
    import torch.nn.functional as F

    x = pixels.to(torch.float32).div_(255.0)
    if params is not None:
        p = params.to(device=x.device, dtype=torch.float32)
        sc, ang, tx, ty, c, b = p.unbind(1)
        if bool((sc <= 0).any()):
            raise ValueError("augmentation scale must be > 0 (a negative scale would mirror the image)")
        s = x.shape[-1]
        rad = ang * (math.pi / 180.0)
        cos, sin = torch.cos(rad), torch.sin(rad)
        # cv2 forward map (output = sc * [[cos, sin], [-sin, cos]] (input - centre) + centre + t); affine_grid wants
        # the inverse, in normalised coordinates whose origin is the centre: input = R^T / sc (output - t)
        inv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) / sc[:, None, None]
        t_n = torch.stack([tx, ty], -1) * 2.0
        theta = torch.cat([inv, -(inv @ t_n[..., None])], dim=2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = ((x - 0.5) * c[:, None, None, None] + 0.5 + b[:, None, None, None]).clamp_(0.0, 1.0)
    return (x - mean) / std


class PairDataset(torch.utils.data.Dataset):
    """Items: ``(pixel_values float [1, S, S], text)`` or None when the image cannot be read.

    ``cache=True``: :meth:`build_cache` decodes every image once into a uint8 [N, S, S] array (the [0, 1] input before
    standardisation) and drops unreadable images (counted in ``n_unreadable``).
    """

    def __init__(self, pairs: List[Pair], transform: ModelInputTransform, augment: Optional[Augment] = None,
                 seed: int = 0, anatomy: Optional[dict] = None):
        #: ``anatomy``: dicom_id (image file stem) -> (image shape, {region: box}) (``training.anatomy.read_anatomy``);
        #: items then carry a third element, the regions' boxes in model-input pixels ([R, 4], NaN = absent)
        self.anatomy = anatomy
        self.pairs = list(pairs)
        self.transform = transform
        self.augment = augment
        self.seed = seed
        self.cache: Optional[np.ndarray] = None
        self.n_unreadable = 0
        self.unreadable: List[Tuple[str, str]] = []
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def _unit(self, path: str) -> np.ndarray:
        """[0, 1] float32 (S, S) model input before standardisation."""
        from elvis_core.io.images import read_image

        rad = read_image(path)
        x = self.transform.apply(rad)
        return np.clip(x * self.transform.std + self.transform.mean, 0.0, 1.0).astype(np.float32)

    def build_cache(self, progress: Optional[Callable[[int, int], None]] = None) -> None:
        s = self.transform.size
        keep, arr = [], np.zeros((len(self.pairs), s, s), dtype=np.uint8)
        for i, p in enumerate(self.pairs):
            try:
                arr[len(keep)] = np.round(self._unit(p.image_path) * 255.0).astype(np.uint8)
                keep.append(p)
            except (ElvisError, ValueError, cv2.error) as err:
                self._count_unreadable(p.image_path, getattr(err, "problem", str(err)))
            if progress:
                progress(i + 1, len(self.pairs))
        self.pairs = keep
        self.cache = arr[:len(keep)].copy()

    def _count_unreadable(self, path: str, msg: str) -> None:
        self.n_unreadable += 1
        if len(self.unreadable) < 10:
            self.unreadable.append((path, msg))
        log.warning("skipping unreadable image %s: %s", path, msg)

    def __getitem__(self, idx: int):
        p = self.pairs[idx]
        if self.cache is not None:
            img = self.cache[idx].astype(np.float32) / 255.0
        else:
            try:
                img = self._unit(p.image_path)
            except (ElvisError, ValueError, cv2.error) as err:
                self._count_unreadable(p.image_path, getattr(err, "problem", str(err)))
                return None
        mats: list = []
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self._epoch, idx])
            img = self.augment(img, rng, matrix_out=mats)
        x = (img - self.transform.mean) / self.transform.std
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(0)
        if self.anatomy is None:
            return t, p.text
        return t, p.text, self._anatomy_boxes(p, mats[0] if mats else None)

    def _anatomy_boxes(self, p: Pair, affine) -> Optional[np.ndarray]:
        from elvis_core.training.anatomy import ANATOMY_REGIONS, boxes_to_model

        entry = self.anatomy.get(os.path.splitext(os.path.basename(p.image_path))[0])
        if entry is None or entry[0] is None:
            return None
        g = self.transform.geometry(entry[0])
        b = np.array([entry[1].get(n, (np.nan,) * 4) for n in ANATOMY_REGIONS], np.float64)
        return boxes_to_model(b, g.scale, g.pad_x, g.pad_y, affine)


class PreparedDataset(torch.utils.data.Dataset):
    """Items of a prepared cache (:mod:`elvis_core.training.prepared`): uint8 images read from the memory-mapped
    shards, texts from ``texts.bin``, and (with ``augment``) each item's augmentation parameters, drawn from
    (seed, epoch, item) like :class:`PairDataset` so they do not depend on the number of processes. The augmentation
    itself runs on the batch (:func:`batch_model_input`), on the training device.

    Holds only numpy arrays (shard, row, text offsets per item), so DataLoader workers share it without copying;
    shards are opened memory-mapped on first use in each process. ``__getitems__`` fetches a whole batch at once.
    """

    def __init__(self, cache, ids: Sequence[int], augment: Optional[Augment] = None, seed: int = 0):
        ids = np.asarray(ids, dtype=np.int64)
        self.ids = ids
        self.shard = cache.shard[ids].copy()
        self.row = cache.row[ids].copy()
        self.text_start = cache.text_start[ids].copy()
        self.text_end = cache.text_end[ids].copy()
        self.size = cache.size
        self._shard_paths = cache.shard_paths()
        self._texts_path = cache.texts_path()
        self.augment = augment
        self.seed = seed
        self.n_unreadable = 0
        self.unreadable: List[Tuple[str, str]] = []
        self._epoch = 0
        self._maps: Dict[int, np.ndarray] = {}
        self._texts: Optional[np.ndarray] = None
        self._tok_flat: Optional[np.ndarray] = None  # see pretokenize()
        self._tok_off: Optional[np.ndarray] = None
        self._tok_of_item: Optional[np.ndarray] = None

    def pretokenize(self, tokenizer, max_length: int, chunk: int = 4096) -> None:
        """Tokenize every distinct report once (truncated to ``max_length``, special tokens added, no padding) and
        keep the ids in two flat arrays, so batches need no tokenizer (which otherwise costs most of the loader's
        time). :class:`Collate` pads them; the result equals ``model.tokenize`` of the texts (tested)."""
        starts, inverse = np.unique(self.text_start, return_inverse=True)
        first = np.zeros(len(starts), dtype=np.int64)
        first[inverse[::-1]] = np.arange(len(inverse))[::-1]  # an item of each distinct report
        pieces, lengths = [], []
        for a in range(0, len(starts), chunk):
            texts = [self.text(int(i)) for i in first[a:a + chunk]]
            enc = tokenizer(texts, padding=False, truncation=True, max_length=max_length)["input_ids"]
            for ids in enc:
                pieces.append(np.asarray(ids, dtype=np.int32))
                lengths.append(len(ids))
        self._tok_flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
        self._tok_off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._tok_of_item = inverse.astype(np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def _shard(self, k: int) -> np.ndarray:
        m = self._maps.get(k)
        if m is None:
            m = self._maps[k] = np.load(self._shard_paths[k], mmap_mode="r")
        return m

    def text(self, idx: int) -> str:
        if self._texts is None:
            self._texts = np.memmap(self._texts_path, dtype=np.uint8, mode="r")
        return bytes(self._texts[self.text_start[idx]:self.text_end[idx]]).decode("utf-8")

    def __getitems__(self, idxs: Sequence[int]) -> Dict[str, Any]:
        n, s = len(idxs), self.size
        if torch.utils.data.get_worker_info() is not None:
            # in a DataLoader worker: fill shared memory directly (the batch would be copied there to cross over)
            storage = torch.UntypedStorage._new_shared(n * s * s)
            pix_t = torch.empty(0, dtype=torch.uint8).set_(storage).view(n, 1, s, s)
        else:
            pix_t = torch.empty((n, 1, s, s), dtype=torch.uint8)
        pix = pix_t.numpy()
        for j, i in enumerate(idxs):
            pix[j, 0] = self._shard(int(self.shard[i]))[int(self.row[i])]
        aug = None
        if self.augment is not None:
            aug = torch.from_numpy(np.stack([
                self.augment.sample(np.random.default_rng([self.seed, self._epoch, int(i)])) for i in idxs]))
        out = {"pixels": pix_t, "augment": aug}
        if self._tok_flat is not None:
            tok = self._tok_of_item
            out["token_ids"] = [self._tok_flat[self._tok_off[tok[i]]:self._tok_off[tok[i] + 1]] for i in idxs]
        out["texts"] = [self.text(int(i)) for i in idxs]
        return out

    def __getitem__(self, idx: int):
        return self.__getitems__([idx])


class Collate:
    """Stack images, tokenize texts (model.tokenize), build word masks and sentence ids; drops None items."""

    def __init__(self, model, pad_to_max_length: bool = False, separate_sentences: bool = False,
                 max_sentences: int = 16):
        self.size = model.transform.size
        self.grid = tuple(model.grid_shape())
        from elvis_core.model.transforms import grid_cell_offset

        #: where the grid lies on the model input (the model's grid anchor): anatomy boxes pool the right cells
        self.grid_offset = grid_cell_offset(self.size, self.grid, getattr(model, "grid_anchor", "cell"))
        from elvis_core.training.objectives import (negated_sentence, sentence_ids_from_tokens, split_sentences,
                                                    word_mask)

        self._negate = negated_sentence
        #: also add left/right-swapped copies of every report sentence (``sent_mirror_src``: index of the original
        #: row, -1 otherwise; their ``sent_neg_src`` is -2), for the ``mirror`` objective
        self.mirrors = False
        #: also add "no <sentence>" copies of affirmative finding sentences (``sent_neg_src``: index of the original
        #: row, -1 for the report's own sentences), for the ``negation`` objective
        self.negations = False

        #: also tokenize each report sentence alone (``sent_input_ids`` / ``sent_attention_mask`` / ``sent_owner``)
        #: for the sentence-level objectives with ``objectives.sentences = "separate"``
        self.separate_sentences, self.max_sentences = separate_sentences, max_sentences
        self._split = split_sentences

        self.tokenize = model.tokenize
        tok = model.tokenizer
        #: pad every batch's text to the model's maximum length (fixed shapes, e.g. for CUDA graphs)
        self.pad_to = int(model.max_text_length) if pad_to_max_length else 0
        self.pad_id = int(tok.pad_token_id or 0)
        self.special = sorted(set(int(i) for i in tok.all_special_ids))
        self.periods = [i for i in (tok.convert_tokens_to_ids("."),) if i is not None and i != tok.unk_token_id]
        self._word_mask, self._sentence_ids = word_mask, sentence_ids_from_tokens

    def _pad(self, token_ids: Sequence[np.ndarray]) -> Dict[str, torch.Tensor]:
        """Pre-tokenized ids (:meth:`PreparedDataset.pretokenize`) → right-padded ``input_ids``/``attention_mask``."""
        n, width = len(token_ids), max(len(t) for t in token_ids)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for j, t in enumerate(token_ids):
            ids[j, :len(t)] = t
            mask[j, :len(t)] = 1
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    def __call__(self, items):
        aug = None
        if isinstance(items, dict):  # a PreparedDataset batch (__getitems__): uint8 pixels, augmented on the device
            pix, aug = items["pixels"], items["augment"]
            n_in = n_kept = pix.shape[0]
            texts = items["texts"]
            if "token_ids" in items:
                t = self._pad(items["token_ids"])
            else:
                t = self.tokenize(texts)
        else:
            n_in = len(items)
            items = [it for it in items if it is not None]
            if not items:
                return None
            pix = torch.stack([it[0] for it in items])
            n_kept = len(items)
            texts = [it[1] for it in items]
            t = self.tokenize(texts)
        if self.pad_to and t["input_ids"].shape[1] < self.pad_to:
            extra = self.pad_to - t["input_ids"].shape[1]
            t = {"input_ids": torch.nn.functional.pad(t["input_ids"], (0, extra), value=self.pad_id),
                 "attention_mask": torch.nn.functional.pad(t["attention_mask"], (0, extra), value=0)}
        words = self._word_mask(t["input_ids"], t["attention_mask"], self.special)
        sids = self._sentence_ids(t["input_ids"], words, self.periods)
        out = {"pixel_values": pix, "input_ids": t["input_ids"], "attention_mask": t["attention_mask"],
               "words": words, "sentence_ids": sids, "n_dropped": n_in - n_kept}
        if aug is not None:
            out["augment"] = aug
        if self.separate_sentences:
            sents, owner, per_item = [], [], []
            for b, text in enumerate(texts):
                mine = self._split(text, self.max_sentences) or [text]
                per_item.append(mine)
                for sent in mine:
                    sents.append(sent)
                    owner.append(b)
            src = [-1] * len(sents)
            if self.negations:
                for k in range(len(src)):
                    neg = self._negate(sents[k])
                    if neg is not None:
                        sents.append(neg)
                        owner.append(owner[k])
                        src.append(k)
            msrc = [-1] * len(sents)
            if self.mirrors:
                from elvis_core.grounding.sides import mirrored_phrase

                n_own = len(sents) if not self.negations else src.count(-1)
                for k in range(n_own):
                    sents.append(mirrored_phrase(sents[k]))
                    owner.append(owner[k])
                    src.append(-2)
                    msrc.append(k)
            st = self.tokenize(sents)
            out.update(sent_input_ids=st["input_ids"], sent_attention_mask=st["attention_mask"],
                       sent_owner=torch.tensor(owner, dtype=torch.long), sent_neg_src=torch.tensor(src,
                                                                                              dtype=torch.long))
            if self.mirrors:
                out["sent_mirror_src"] = torch.tensor(msrc, dtype=torch.long)
            if isinstance(items, list) and len(items[0]) > 2:  # anatomy boxes (data.anatomy; not in prepared caches)
                from elvis_core.training.anatomy import batch_anatomy

                out.update(batch_anatomy([it[2] for it in items], per_item, self.size, self.grid,
                                         offset=self.grid_offset))
        return out


def split_val(pairs: List[Pair], fraction: float, seed: int) -> Tuple[List[Pair], List[Pair]]:
    """Split by patient (or study when no patient folder) so no patient is on both sides."""
    if fraction <= 0:
        return pairs, []
    groups: Dict[str, List[Pair]] = {}
    for p in pairs:
        groups.setdefault(p.patient or p.study_key, []).append(p)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    rng.shuffle(keys)
    n_val = max(1, int(math.floor(len(keys) * fraction)))
    val_keys = set(keys[:n_val])
    return ([p for p in pairs if (p.patient or p.study_key) not in val_keys],
            [p for p in pairs if (p.patient or p.study_key) in val_keys])


def split_val_ids(ids: np.ndarray, keys: Sequence[str], fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`split_val` for prepared-cache entry ids, grouped by ``keys`` (patient, else study): the same patients
    are held out as :func:`split_val` would hold out from the same pairs."""
    ids = np.asarray(ids, dtype=np.int64)
    if fraction <= 0:
        return ids, ids[:0]
    groups = sorted(set(keys))
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    n_val = max(1, int(math.floor(len(groups) * fraction)))
    val_keys = set(groups[:n_val])
    is_val = np.array([k in val_keys for k in keys], dtype=bool)
    return ids[~is_val], ids[is_val]


def prepared_texts(cache, entries: Sequence[int]) -> List[str]:
    """The training texts of prepared-cache entries (``texts.bin`` read once)."""
    with open(cache.texts_path(), "rb") as fh:
        blob = fh.read()
    return [blob[int(cache.text_start[i]):int(cache.text_end[i])].decode("utf-8") for i in entries]


class _Raised:
    def __init__(self, err: BaseException):
        self.err = err


class ThreadPrefetcher:
    """Iterate ``iterable`` (a DataLoader with ``num_workers = 0``) in a background thread, up to ``depth`` batches
    ahead of the training loop.

    For the prepared cache this beats worker processes: a batch costs ~2 ms of CPU in-process (memory-mapped copy,
    pre-tokenized text; numpy copies release the GIL), while shipping it from a worker process through shared memory
    costs several times that (measured in ``benchmarks/loader_speed.py``). Exceptions are re-raised in the consumer;
    :meth:`close` (or leaving a ``with`` block) stops the thread.
    """

    _END = object()

    def __init__(self, iterable, depth: int = 4):
        import queue
        import threading

        self._q: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
        self._it = iter(iterable)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="elvis-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._it:
                if not self._put(item):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put(_Raised(err))
            return
        self._put(self._END)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._q.get()
        if item is self._END:
            self._q.put(self._END)  # further next() calls keep raising StopIteration
            raise StopIteration
        if isinstance(item, _Raised):
            raise item.err
        return item

    def close(self) -> None:
        import queue

        self._stop.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
