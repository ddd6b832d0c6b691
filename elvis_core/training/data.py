"""Training data: the datasets that decode, cache and augment image–report pairs for the trainer.

The pairs themselves (:func:`find_pairs` over a MIMIC-CXR-layout root or a phantom folder, the patient-wise
validation split) are found by :mod:`elvis_core.training.pairs`; batches are made by :mod:`elvis_core.training.batching`
(:class:`Collate`, :class:`ThreadPrefetcher`). Their names are re-exported here.

:class:`PairDataset` decodes and transforms images (``ModelInputTransform``), optionally caching the [0, 1] model
input as uint8 in RAM; unreadable images are skipped and counted (in the cache pass, or at load time by the collate
function). :class:`PreparedDataset` serves a prepared cache (:mod:`elvis_core.training.prepared`). :class:`Augment`
never flips left/right (laterality matters in chest X-rays); :func:`batch_model_input` applies the same augmentation
to a whole batch on the training device.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from elvis_core.errors import ConfigError, ElvisError
from elvis_core.model.transforms import ModelInputTransform
from elvis_core.training.batching import Collate, ThreadPrefetcher  # noqa: F401
from elvis_core.training.pairs import (  # noqa: F401
    REPORT_SECTIONS, Pair, PairStats, excluded_patients_from_csv, find_pairs, read_mimic_views, report_training_text,
    split_val, split_val_ids)

log = logging.getLogger(__name__)


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


def prepared_texts(cache, entries: Sequence[int]) -> List[str]:
    """The training texts of prepared-cache entries (``texts.bin`` read once)."""
    with open(cache.texts_path(), "rb") as fh:
        blob = fh.read()
    return [blob[int(cache.text_start[i]):int(cache.text_end[i])].decode("utf-8") for i in entries]
