"""The prepared image cache on disk: its format (file names, index columns, hashes) and :class:`PreparedCache`, which
opens a complete cache for training.

The layout, the crash safety and ``elvis prepare`` itself (which writes a cache) are described and implemented in
:mod:`elvis_core.training.prepared`, which re-exports the names here. Reading a cache needs neither torch nor OpenCV.
:meth:`PreparedCache.open` refuses a cache whose ``index.json`` does not match its ``cache_hash`` or whose shards are
missing or of the wrong size; :meth:`PreparedCache.check_transform` refuses one made with another model-input
transform than the training config's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from elvis_core.errors import ConfigError

FORMAT = "elvis-prepared-cache"
FORMAT_VERSION = 1
PLAN, INDEX, TEXTS = "plan.json", "index.json", "texts.bin"

#: columns of the index (one list per column, one value per entry)
COLUMNS = ("path", "study", "patient", "view", "report", "text_start", "text_end", "shard", "row", "rows", "cols")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def transform_config(transform) -> Dict[str, Any]:
    """The transform's config as stored in checkpoints (``to_config()``), as a plain JSON-able dict."""
    return json.loads(json.dumps(transform.to_config()))


def transform_hash(config: Dict[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of a transform config."""
    return hashlib.sha256(canonical_json(config)).hexdigest()[:16]


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _transform_diff(a: Dict[str, Any], b: Dict[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    diff = [f"{k}: cache {a.get(k)!r} vs config {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    return "; ".join(diff) or "same keys, different hash"


class PreparedCache:
    """A complete prepared cache (``index.json`` present). Entries are columns of numpy arrays (no per-entry Python
    objects beyond the path strings), shards are opened memory-mapped on first use in each process."""

    def __init__(self, path: str, index: Dict[str, Any]):
        self.path = os.path.abspath(path)
        self.root = index["root"]
        self.transform_config = index["transform"]
        self.transform_hash = index["transform_hash"]
        self.cache_hash = index["cache_hash"]
        self.size = int(index["size"])
        self.views = list(index["views"])
        self.shards = list(index["shards"])
        e = index["entries"]
        self.paths: List[str] = list(e["path"])
        self.study = np.asarray(e["study"], dtype=object)
        self.patient = np.asarray(e["patient"], dtype=object)
        self.view = np.asarray(e["view"], dtype=object)
        self.report = list(e["report"])
        self.text_start = np.asarray(e["text_start"], dtype=np.int64)
        self.text_end = np.asarray(e["text_end"], dtype=np.int64)
        self.shard = np.asarray(e["shard"], dtype=np.int32)
        self.row = np.asarray(e["row"], dtype=np.int32)
        self.shape = np.stack([np.asarray(e["rows"], dtype=np.int32), np.asarray(e["cols"], dtype=np.int32)],
                              axis=1) if self.paths else np.zeros((0, 2), np.int32)
        self.unreadable = [tuple(u) for u in index["unreadable"]]

    @classmethod
    def open(cls, path: str) -> "PreparedCache":
        p = Path(path)
        if not p.is_dir():
            raise ConfigError("prepared cache folder not found (run 'elvis prepare DATA_ROOT --out "
                              f"{path}' first)", path)
        ip = p / INDEX
        if not ip.is_file():
            hint = " (an interrupted 'elvis prepare': run it again to finish)" if (p / PLAN).is_file() else ""
            raise ConfigError(f"not a complete prepared cache: no {INDEX}{hint}", path)
        try:
            index = json.loads(ip.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read {INDEX} ({err})", path) from err
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ConfigError(f"{INDEX} is not an elvis prepared-cache index", path)
        if index.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"prepared cache format version {index.get('format_version')} is not supported "
                              f"(this code reads {FORMAT_VERSION}); prepare it again", path)
        body = {k: v for k, v in index.items() if k != "cache_hash"}
        if hashlib.sha256(canonical_json(body)).hexdigest()[:16] != index.get("cache_hash"):
            raise ConfigError(f"{INDEX} does not match its cache_hash (edited or damaged); prepare it again", path)
        pc = cls(path, index)
        for sh in pc.shards:
            f = p / sh["file"]
            if not f.is_file() or f.stat().st_size != sh["nbytes"]:
                raise ConfigError(f"shard {sh['file']} is missing or has the wrong size; prepare the cache again",
                                  path)
        return pc

    def __len__(self) -> int:
        return len(self.paths)

    def check_transform(self, transform) -> None:
        """Raise ConfigError when ``transform`` (the model's) is not the one the cache was prepared with."""
        cfg = transform_config(transform)
        if transform_hash(cfg) != self.transform_hash:
            raise ConfigError("prepared with another model-input transform than the training config's ("
                              + _transform_diff(self.transform_config, cfg)
                              + "); run 'elvis prepare' with this config (--config) into a new folder", self.path)

    def verify(self) -> List[str]:
        """Shards whose sha256 differs from the index (reads every byte)."""
        bad = []
        for sh in self.shards:
            if _sha256_file(Path(self.path) / sh["file"]) != sh["sha256"]:
                bad.append(sh["file"])
        return bad

    def select(self, views: Sequence[str] = (), exclude_patients=None, max_pairs: int = 0) -> np.ndarray:
        """Entry ids kept for training: view in ``views`` (entries without a view kept, as in ``find_pairs``),
        patient not excluded, the first ``max_pairs`` (entries are sorted by path)."""
        keep = np.ones(len(self), dtype=bool)
        if views:
            vs = {v.upper() for v in views}
            missing = sorted(vs - set(self.views))
            if missing:
                raise ConfigError(f"data.views asks for {', '.join(missing)} but the cache was prepared with views "
                                  f"{', '.join(self.views)} only; prepare it again with those views", self.path)
            keep &= np.array([(not v) or v in vs for v in self.view], dtype=bool)
        if exclude_patients:
            keep &= np.array([p not in exclude_patients for p in self.patient], dtype=bool)
        ids = np.nonzero(keep)[0]
        if max_pairs and len(ids) > max_pairs:
            ids = ids[:max_pairs]
        return ids

    def group_keys(self, ids: np.ndarray) -> List[str]:
        return [str(self.patient[i] or self.study[i]) for i in ids]

    def texts_path(self) -> str:
        return os.path.join(self.path, TEXTS)

    def shard_paths(self) -> List[str]:
        return [os.path.join(self.path, sh["file"]) for sh in self.shards]
