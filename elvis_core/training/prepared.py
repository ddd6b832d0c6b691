"""The prepared image cache behind ``elvis prepare`` and ``data.cache = "prepared:PATH"``.

A training set at MIMIC-CXR scale (377 k images, 2–3 k pixels a side) cannot be decoded on every epoch (tens of ms
per image) nor held in RAM. ``elvis prepare`` decodes every image **once** into the model-input form (the
:class:`~elvis_core.model.transforms.ModelInputTransform`'s [0, 1] output before standardisation, as uint8) and
writes it into sharded ``.npy`` files that training reads memory-mapped.

Layout of ``CACHE_DIR``::

    plan.json            what is to be prepared: data root, transform config + hash, shard size, items
                         (path relative to the root, study, patient folder, view, report) and their text offsets
    texts.bin            UTF-8 training texts (FINDINGS + IMPRESSION) of the studies, back to back
    shard-00000.npy      uint8 [n, S, S], one row per plan item of that shard (an unreadable image's row stays 0)
    shard-00000.json     written after its .npy is complete and renamed: rows, original shapes, unreadable images
                         (path + one-line reason), sha256 and size of the .npy, the plan hash
    index.json           written last: the whole index (columns per entry: path, study, patient, view, report,
                         text_start/text_end into texts.bin, shard, row, original rows/cols), the shards with their
                         sha256, the unreadable images, the transform config and its hash, and ``cache_hash``

Crash safety: a shard's ``.npy`` is written under a temporary name (``.tmp.<pid>``), fsynced and renamed; only then
is its ``.json`` written (atomically). A shard counts as done only when its ``.json`` names this plan and its
``.npy`` has exactly the recorded size, so a half-written shard is never used: a rerun after a kill (even SIGKILL)
redoes just the missing shards. Every byte written depends only on the plan (decoding is deterministic, one OpenCV
thread per worker), so a resumed run gives the same ``cache_hash`` as an uninterrupted one.

Training refuses a cache whose transform config differs from the model's (:meth:`PreparedCache.check_transform`).

The format constants, hashes and the reader (:class:`PreparedCache`) are in :mod:`elvis_core.training.prepared_cache`
and re-exported here; this module writes a cache (:func:`prepare`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from elvis_core.atomic import atomic_write_bytes
from elvis_core.errors import ConfigError, ElvisError
from elvis_core.training.prepared_cache import (  # noqa: F401  (re-exported: the format and the reader)
    COLUMNS, FORMAT, FORMAT_VERSION, INDEX, PLAN, TEXTS, PreparedCache, _fsync_dir, _sha256_file, _shard_name,
    _transform_diff, canonical_json, transform_config, transform_hash)

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 256


# -- the plan ---------------------------------------------------------------------------------------------------------

@dataclass
class PrepareSummary:
    cache_dir: str
    n_items: int = 0
    n_ready: int = 0
    n_unreadable: int = 0
    n_shards: int = 0
    shards_reused: int = 0
    shards_written: int = 0
    seconds: float = 0.0
    cache_hash: str = ""
    transform_hash: str = ""
    already_complete: bool = False
    unreadable: List[Tuple[str, str]] = field(default_factory=list)
    data_lines: List[str] = field(default_factory=list)

    def lines(self) -> List[str]:
        out = list(self.data_lines)
        if self.already_complete:
            out.append(f"{self.cache_dir}: already prepared ({self.n_ready} images, transform {self.transform_hash})")
        else:
            out.append(f"prepared {self.n_ready} of {self.n_items} images in {self.n_shards} shards "
                       f"({self.shards_written} written, {self.shards_reused} reused from an earlier run) in "
                       f"{self.seconds:.1f} s")
        if self.n_unreadable:
            out.append(f"{self.n_unreadable} unreadable image(s) left out (listed in index.json):")
            out += [f"  {p}: {m}" for p, m in self.unreadable[:20]]
            if self.n_unreadable > 20:
                out.append(f"  ... and {self.n_unreadable - 20} more")
        out.append(f"cache hash {self.cache_hash}, transform hash {self.transform_hash}")
        return out


def build_plan(root: str, transform, pairs, shard_size: int, views: Sequence[str]) -> Tuple[Dict[str, Any], bytes]:
    """(plan dict, texts.bin bytes) from ``find_pairs`` output. Texts are stored once per report."""
    root_abs = os.path.abspath(root)
    texts = bytearray()
    offsets: Dict[str, Tuple[int, int]] = {}
    items = []
    for p in pairs:
        key = p.report_path or p.study_key
        if key not in offsets:
            b = p.text.encode("utf-8")
            offsets[key] = (len(texts), len(texts) + len(b))
            texts += b
        s, e = offsets[key]
        items.append({"path": os.path.relpath(p.image_path, root_abs), "study": p.study_key, "patient": p.patient,
                      "view": p.view, "report": os.path.relpath(p.report_path, root_abs) if p.report_path else "",
                      "text_start": s, "text_end": e})
    tcfg = transform_config(transform)
    plan = {"format": FORMAT, "format_version": FORMAT_VERSION, "root": root_abs, "transform": tcfg,
            "transform_hash": transform_hash(tcfg), "size": int(transform.size), "shard_size": int(shard_size),
            "views": [v.upper() for v in views], "texts_sha256": hashlib.sha256(bytes(texts)).hexdigest(),
            "items": items}
    return plan, bytes(texts)


def plan_hash(plan: Dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(plan)).hexdigest()


def _n_shards(n_items: int, shard_size: int) -> int:
    return max(1, (n_items + shard_size - 1) // shard_size) if n_items else 0


# -- workers ----------------------------------------------------------------------------------------------------------

def _mp_context():
    """``forkserver`` (else ``spawn``), never a plain ``fork``: forking a process whose OpenCV / OpenMP thread pools
    have run can deadlock the child (seen: ``cv2.setNumThreads`` hanging in a forked worker after the parent resized
    images with OpenCV threads). The server imports the decoding modules (and torch, through ``elvis_core.model``)
    once; each worker is forked from it, clean."""
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["elvis_core.training.prepared", "elvis_core.model.transforms",
                                    "elvis_core.io.images", "elvis_core.io.dicom"])
        return ctx
    return mp.get_context("spawn")


def _worker_init(parent_pid: Optional[int]) -> None:
    """Die with the parent (a SIGKILLed ``elvis prepare`` must not leave workers writing), one OpenCV thread.
    Under ``forkserver`` the parent is the server, which exits when ``elvis prepare`` does."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent
    import cv2

    cv2.setNumThreads(1)


def decode_unit_uint8(path: str, transform) -> Tuple[np.ndarray, Tuple[int, int]]:
    """The cached form of one image: the transform's [0, 1] output before standardisation, rounded to uint8, and the
    original (rows, cols). Raises ElvisError / ValueError / cv2.error for unreadable images."""
    from elvis_core.io.images import read_image

    rad = read_image(path)
    x = transform.apply(rad)
    unit = np.clip(x * transform.std + transform.mean, 0.0, 1.0)
    return np.round(unit * 255.0).astype(np.uint8), (int(rad.pixels.shape[0]), int(rad.pixels.shape[1]))


def _shard_done(cache: Path, i: int, phash: str) -> Optional[Dict[str, Any]]:
    """The shard's record when shard ``i`` of this plan is complete, else None."""
    js, npy = cache / f"{_shard_name(i)}.json", cache / f"{_shard_name(i)}.npy"
    try:
        rec = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("plan_hash") != phash or rec.get("shard") != i:
        return None
    try:
        if npy.stat().st_size != int(rec.get("nbytes", -1)):
            return None
    except OSError:
        return None
    return rec


def _write_shard(args) -> Dict[str, Any]:
    """Worker: decode the shard's images into ``shard-i.npy`` (tmp + fsync + rename), then write ``shard-i.json``."""
    from numpy.lib.format import open_memmap

    from elvis_core.model.transforms import transform_from_config

    cache_dir, i, root, paths, tcfg, phash = args
    cache = Path(cache_dir)
    transform = transform_from_config(tcfg)
    s = int(transform.size)
    name = _shard_name(i)
    tmp = cache / f"{name}.npy.tmp.{os.getpid()}"
    arr = open_memmap(str(tmp), mode="w+", dtype=np.uint8, shape=(len(paths), s, s))
    rows: List[int] = []
    shapes: List[List[int]] = []
    errors: Dict[str, str] = {}
    import cv2

    for k, rel in enumerate(paths):
        full = os.path.join(root, rel)
        try:
            img, shape = decode_unit_uint8(full, transform)
            arr[k] = img
            rows.append(k)
            shapes.append([shape[0], shape[1]])
        except (ElvisError, ValueError, cv2.error, OSError, MemoryError) as err:
            rows.append(-1)
            shapes.append([0, 0])
            errors[str(k)] = (getattr(err, "problem", None) or str(err)).splitlines()[0][:300]
        if os.environ.get("ELVIS_PREPARE_TEST_DELAY_S"):  # test hook: slow down so a test can kill mid-run
            time.sleep(float(os.environ["ELVIS_PREPARE_TEST_DELAY_S"]))
    arr.flush()
    del arr
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    final = cache / f"{name}.npy"
    os.replace(tmp, final)
    _fsync_dir(cache)
    rec = {"format": FORMAT, "shard": i, "plan_hash": phash, "n": len(paths), "rows": rows, "shapes": shapes,
           "errors": errors, "nbytes": final.stat().st_size, "sha256": _sha256_file(final)}
    atomic_write_bytes(cache / f"{name}.json", json.dumps(rec).encode("utf-8"))
    return rec


# -- prepare ----------------------------------------------------------------------------------------------------------

def prepare(root: str, cache_dir: str, transform, views: Sequence[str] = ("PA", "AP"), workers: int = 0,
            shard_size: int = DEFAULT_SHARD_SIZE, view_of: Optional[Dict[str, str]] = None,
            progress: Optional[Callable[[int, int], None]] = None,
            scan_progress: Optional[Callable[[int, int], None]] = None) -> PrepareSummary:
    """Decode the image-report pairs under ``root`` into a prepared cache in ``cache_dir`` (resumable).

    ``workers``: processes (0 = one per available CPU core). ``progress(done_images, total_images)`` after each shard.
    """
    from elvis_core.training.pairs import find_pairs

    t0 = time.perf_counter()
    cache = Path(cache_dir)
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be >= 1, got {shard_size}")
    if cache.exists() and not cache.is_dir():
        raise ConfigError("cache output exists and is not a folder", cache)
    cache.mkdir(parents=True, exist_ok=True)
    tcfg = transform_config(transform)
    thash = transform_hash(tcfg)
    summary = PrepareSummary(cache_dir=str(cache), transform_hash=thash)

    index_path = cache / INDEX
    if index_path.is_file():  # already complete: only check it is the same transform and data
        pc = PreparedCache.open(str(cache))
        pc.check_transform(transform)
        if pc.root != os.path.abspath(root):
            raise ConfigError(f"this cache was prepared from another data root ({pc.root}); use another --out", cache)
        summary.already_complete = True
        summary.n_items = summary.n_ready = len(pc)
        summary.n_unreadable = len(pc.unreadable)
        summary.unreadable = list(pc.unreadable)
        summary.cache_hash = pc.cache_hash
        summary.seconds = time.perf_counter() - t0
        return summary

    plan_path = cache / PLAN
    plan = None
    if plan_path.is_file():  # resume: reuse the plan (no rescan) when it is the same transform, root and sharding
        try:
            plan = json.loads(plan_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the plan of an earlier run ({err}); delete the folder to start over",
                              plan_path) from err
        if plan.get("format") != FORMAT or plan.get("format_version") != FORMAT_VERSION:
            raise ConfigError("not an elvis prepared cache of this version; use another --out", cache)
        if plan.get("transform_hash") != thash:
            raise ConfigError("this folder holds a partial cache made with another transform ("
                              + _transform_diff(plan.get("transform", {}), tcfg)
                              + "); use another --out or delete it", cache)
        if plan.get("root") != os.path.abspath(root):
            raise ConfigError(f"this folder holds a partial cache of another data root ({plan.get('root')}); "
                              "use another --out", cache)
        if plan.get("shard_size") != shard_size or [v.upper() for v in views] != plan.get("views"):
            raise ConfigError(f"this folder holds a partial cache with shard size {plan.get('shard_size')} and "
                              f"views {plan.get('views')}; rerun with the same options or use another --out", cache)
        texts_ok = (cache / TEXTS).is_file() and _sha256_file(cache / TEXTS) == plan.get("texts_sha256")
        if not texts_ok:
            plan = None  # the kill came between plan.json and texts.bin: plan again
    if plan is None:
        pairs, stats = find_pairs(root, views=views, view_of=view_of, progress=scan_progress)
        summary.data_lines = stats.lines()
        if not pairs:
            raise ConfigError("no image-report pairs found (need DICOM/JPG images with a report holding FINDINGS or "
                              "IMPRESSION, views " + "/".join(views) + ")", root)
        plan, texts = build_plan(root, transform, pairs, shard_size, views)
        atomic_write_bytes(cache / TEXTS, texts)
        atomic_write_bytes(plan_path, json.dumps(plan).encode("utf-8"))
    phash = plan_hash(plan)
    items = plan["items"]
    n_sh = _n_shards(len(items), shard_size)
    summary.n_items, summary.n_shards = len(items), n_sh

    # leftovers of a killed run: temporary shard files are never used
    for f in cache.glob("shard-*.npy.tmp.*"):
        try:
            f.unlink()
        except OSError:
            pass
    records: Dict[int, Dict[str, Any]] = {}
    todo = []
    for i in range(n_sh):
        rec = _shard_done(cache, i, phash)
        if rec is not None:
            records[i] = rec
        else:
            for stale in (cache / f"{_shard_name(i)}.json", cache / f"{_shard_name(i)}.npy"):
                if stale.exists():
                    stale.unlink()
            todo.append(i)
    summary.shards_reused = len(records)
    done_images = sum(r["n"] for r in records.values())
    if progress:
        progress(done_images, len(items))
    jobs = [(str(cache), i, plan["root"], [it["path"] for it in items[i * shard_size:(i + 1) * shard_size]],
             plan["transform"], phash) for i in todo]
    n_workers = workers or len(os.sched_getaffinity(0))
    n_workers = max(1, min(n_workers, len(jobs))) if jobs else 0
    if jobs:
        ctx = _mp_context()
        parent = None if ctx.get_start_method() == "forkserver" else os.getpid()
        try:
            with ctx.Pool(n_workers, initializer=_worker_init, initargs=(parent,)) as pool:
                for rec in pool.imap_unordered(_write_shard, jobs, chunksize=1):
                    records[rec["shard"]] = rec
                    summary.shards_written += 1
                    done_images += rec["n"]
                    if progress:
                        progress(done_images, len(items))
        except OSError as err:  # disk full, permissions, ...: finished shards stay for the next run
            raise ElvisError(f"cannot write the cache ({err}); finished shards are kept, run again to resume",
                             cache) from err

    index = _build_index(plan, phash, records, n_sh)
    atomic_write_bytes(index_path, json.dumps(index).encode("utf-8"))
    _fsync_dir(cache)
    summary.n_ready = len(index["entries"]["path"])
    summary.unreadable = [tuple(u) for u in index["unreadable"]]
    summary.n_unreadable = len(summary.unreadable)
    summary.cache_hash = index["cache_hash"]
    summary.seconds = time.perf_counter() - t0
    return summary


def _build_index(plan: Dict[str, Any], phash: str, records: Dict[int, Dict[str, Any]], n_sh: int) -> Dict[str, Any]:
    cols: Dict[str, List[Any]] = {c: [] for c in COLUMNS}
    unreadable: List[List[str]] = []
    ss = plan["shard_size"]
    shards = []
    for i in range(n_sh):
        rec = records[i]
        shards.append({"file": f"{_shard_name(i)}.npy", "n": rec["n"], "sha256": rec["sha256"],
                       "nbytes": rec["nbytes"]})
        for k in range(rec["n"]):
            it = plan["items"][i * ss + k]
            if rec["rows"][k] < 0:
                unreadable.append([it["path"], rec["errors"].get(str(k), "unreadable")])
                continue
            for c in ("path", "study", "patient", "view", "report", "text_start", "text_end"):
                cols[c].append(it[c])
            cols["shard"].append(i)
            cols["row"].append(rec["rows"][k])
            cols["rows"].append(rec["shapes"][k][0])
            cols["cols"].append(rec["shapes"][k][1])
    index = {"format": FORMAT, "format_version": FORMAT_VERSION, "root": plan["root"], "transform": plan["transform"],
             "transform_hash": plan["transform_hash"], "size": plan["size"], "shard_size": ss,
             "views": plan["views"], "plan_hash": phash, "texts": TEXTS, "texts_sha256": plan["texts_sha256"],
             "shards": shards, "entries": cols, "unreadable": unreadable}
    index["cache_hash"] = hashlib.sha256(canonical_json(index)).hexdigest()[:16]
    return index
