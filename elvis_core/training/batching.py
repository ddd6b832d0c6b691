"""From dataset items to training batches: :class:`Collate` and :class:`ThreadPrefetcher`.

:class:`Collate` stacks the images of a :class:`~elvis_core.training.data.PairDataset` batch (dropping unreadable
items) or takes a :class:`~elvis_core.training.data.PreparedDataset` batch as it is (uint8 pixels, augmented later on
the device), tokenizes or pads the texts, and builds the word masks and sentence ids the objectives need; optionally
each report sentence alone, with negated and left/right-mirrored copies, and the anatomy boxes.

:class:`ThreadPrefetcher` runs a DataLoader a few batches ahead in a background thread (the prepared cache's
in-process loading). Both are re-exported by :mod:`elvis_core.training.data`.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch


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
