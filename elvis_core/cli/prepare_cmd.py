"""`elvis prepare DATA_ROOT --out CACHE_DIR [--config TRAIN.toml] [--workers N]`: decode a training set once into a
sharded, memory-mapped model-input cache (see :mod:`elvis_core.training.prepared`)."""

from __future__ import annotations

import argparse
import sys

from elvis_core.errors import ConfigError

EPILOG = """examples:
  elvis prepare /data/mimic-cxr-jpg --out /scratch/mimic512 --config resources/configs/mimic-resnet50.toml \\
      --set data.mimic_metadata=/data/mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz --workers 16
  elvis train resources/configs/mimic-resnet50.toml --set data.cache=prepared:/scratch/mimic512

Images are decoded once with the model-input transform of the config's model (window, resize the long side, pad to
a square) and stored as uint8 in shards of --shard-size images (CACHE_DIR/shard-*.npy, read memory-mapped) with an
index (CACHE_DIR/index.json: path, study, report text offsets, view, original shape, the transform's config and its
hash). Killed or interrupted? Run the same command again: finished shards are kept, a half-written one is redone,
and the result is identical to an uninterrupted run. Unreadable images are listed and left out. Training refuses a
cache whose transform differs from its config's."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="decode a training set once into a memory-mapped model-input cache",
                       description="Decode the image-report pairs of a MIMIC-CXR-layout / phantom folder once into a "
                                   "sharded uint8 cache of model inputs for 'elvis train' (data.cache = "
                                   "\"prepared:CACHE_DIR\"). Parallel, resumable.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", metavar="DATA_ROOT", help="MIMIC-CXR-layout or phantom folder (images + reports)")
    p.add_argument("--out", required=True, metavar="CACHE_DIR", help="cache folder (new, or an interrupted one)")
    p.add_argument("--config", default=None, metavar="TRAIN.toml",
                   help="training config whose model transform (and data.views / data.mimic_metadata) to use "
                        "(default: the built-in defaults, demo preset)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, as for 'elvis train' (repeatable)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per available CPU core)")
    p.add_argument("--shard-size", type=int, default=256, help="images per shard (default 256)")
    p.add_argument("--verify", action="store_true", help="re-read every shard of a finished cache and check its "
                                                        "sha256 against the index")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from elvis_core.model.transforms import transform_from_config
    from elvis_core.training.config import load_config, model_config_from
    from elvis_core.training.pairs import read_mimic_views
    from elvis_core.training.prepared import PreparedCache, prepare

    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    cfg = load_config(args.config, args.sets)
    transform = transform_from_config(model_config_from(cfg)["preprocessing"])
    dc = cfg["data"]
    view_of = read_mimic_views(dc["mimic_metadata"]) if dc["mimic_metadata"] else None
    bars = {}
    progress = scan_progress = None
    if not args.no_progress:
        from tqdm import tqdm

        def _bar(name: str, unit: str, done: int, total: int) -> None:
            if name == "decode" and "scan" in bars:
                bars.pop("scan").close()
            if name not in bars:
                bars[name] = tqdm(total=total, unit=unit, desc=f"elvis prepare: {name}", file=sys.stderr,
                                  dynamic_ncols=True)
            b = bars[name]
            b.total = total
            b.n = done
            b.refresh()

        def scan_progress(done: int, total: int) -> None:
            _bar("scan", "file", done, total)

        def progress(done: int, total: int) -> None:
            _bar("decode", "img", done, total)

    try:
        summary = prepare(args.root, args.out, transform, views=dc["views"], workers=args.workers,
                          shard_size=args.shard_size, view_of=view_of, progress=progress,
                          scan_progress=scan_progress)
    finally:
        for b in bars.values():
            b.close()
    for line in summary.lines():
        print(line)
    if args.verify:
        bad = PreparedCache.open(args.out).verify()
        if bad:
            print(f"elvis prepare: error: {len(bad)} shard(s) differ from the index: {', '.join(bad[:5])}",
                  file=sys.stderr)
            return 1
        print("verified: every shard matches its sha256 in the index")
    return 0
