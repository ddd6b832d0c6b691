"""Training-loader speed: the prepared cache (``elvis prepare``) vs decoding the image files, in one run.

    python benchmarks/loader_speed.py                               # 160 phantom studies at 2500 px, model input 512
    python benchmarks/loader_speed.py --studies 400 --image-size 3000 --workers 1 2

What is timed is what the training loop receives per batch: pixel tensors of the model input + tokenized reports
(word masks, sentence ids), from a ``torch.utils.data.DataLoader`` with the given number of worker processes
(0 = in the main process, i.e. one core). File paths: ``PairDataset`` without RAM cache (decode the DICOM / JPEG,
window, resize the long side to --size, pad), as ``elvis train`` does with ``data.cache = "none"``. Prepared cache:
``PreparedDataset`` (memory-mapped uint8 shards, augmentation parameters drawn per item; the augmentation itself runs
on the training device, timed separately on this CPU as "batch augmentation"). Batches in random order (a shuffled
sampler), like training.

Data: phantom studies (``elvis_core.phantom``, DICOM CR/DX with some RLE / JPEG 2000) at --image-size, plus a
MIMIC-CXR-JPG-like copy (8-bit JPEG, quality 95, display window), generated once under --data and reused.
RAM held: anonymous resident memory (RssAnon) added by the loader in the main process plus that of its workers, after
the timed batches; the page cache holding the memory-mapped shards is the kernel's (reclaimable, shared) and is
reported separately as file-backed RSS. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _status(pid: int | str = "self") -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _private_anon(pid: int) -> int:
    """Anonymous memory a (forked) worker holds on its own: Pss_Anon (shared copy-on-write pages split between the
    processes that share them); RssAnon when smaps_rollup is not available."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _status(pid).get("RssAnon", 0)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def make_data(data: str, studies: int, image_size: int, workers: int) -> tuple:
    """(dicom_root, jpg_root), generated once."""
    import cv2

    from elvis_core.io.display import to_uint8
    from elvis_core.io.images import read_image
    from elvis_core.phantom import generate

    dcm_root = os.path.join(data, f"dicom{image_size}_{studies}")
    jpg_root = os.path.join(data, f"jpg{image_size}_{studies}")
    if not os.path.isfile(os.path.join(dcm_root, "ms_cxr.csv")):
        if os.path.exists(dcm_root):
            shutil.rmtree(dcm_root)
        t = time.perf_counter()
        generate(dcm_root, studies, seed=0, size=image_size, workers=workers)
        print(f"generated {studies} phantom studies at {image_size} px in {time.perf_counter() - t:.0f} s",
              flush=True)
    done_flag = os.path.join(jpg_root, ".complete")
    if not os.path.isfile(done_flag):
        if os.path.exists(jpg_root):
            shutil.rmtree(jpg_root)
        for dirpath, _, files in os.walk(dcm_root):
            rel = os.path.relpath(dirpath, dcm_root)
            os.makedirs(os.path.join(jpg_root, rel), exist_ok=True)
            for f in files:
                src = os.path.join(dirpath, f)
                if f.endswith(".dcm"):
                    img = to_uint8(read_image(src))
                    cv2.imwrite(os.path.join(jpg_root, rel, f[:-4] + ".jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
                elif f.endswith(".txt"):
                    shutil.copy(src, os.path.join(jpg_root, rel, f))
        open(done_flag, "w").close()
    return dcm_root, jpg_root


def time_loader(ds, collate, batch: int, workers: int, min_batches: int, min_seconds: float, seed: int = 0):
    """(pairs/s wall, pairs per CPU-second, batches, anon bytes held by the loader, file-backed RSS).

    Pairs per CPU-second counts the CPU time of the main process and of the workers while the batches were timed:
    on a shared machine it is the per-core rate, whatever else runs."""
    import gc

    gc.collect()
    before = _status()
    g = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(ds, replacement=False, generator=g)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers,
                                         collate_fn=collate, persistent_workers=workers > 0,
                                         prefetch_factor=4 if workers else None)
    n_pairs, n_batches = 0, 0
    it = iter(loader)
    first = next(it)  # worker start-up and the first batch are not timed
    pids = [os.getpid()] + [p.pid for p in (getattr(it, "_workers", None) or [])]
    cpu0 = sum(_cpu_seconds(p) for p in pids)
    t0 = time.perf_counter()
    epoch = 0
    while n_batches < min_batches or time.perf_counter() - t0 < min_seconds:
        try:
            b = next(it)
        except StopIteration:
            epoch += 1
            it = iter(loader)
            continue
        n_pairs += b["pixel_values"].shape[0]
        n_batches += 1
    dt = time.perf_counter() - t0
    cpu = sum(_cpu_seconds(p) for p in pids) - cpu0
    after = _status()
    anon = after.get("RssAnon", 0) - before.get("RssAnon", 0)
    file_rss = after.get("RssFile", 0)
    workers_anon = sum(_private_anon(p) for p in pids[1:])
    del first, it, loader
    return n_pairs / dt, n_pairs / max(cpu, 1e-9), n_batches, anon + workers_anon, file_rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/elvis_loader_bench", help="where the benchmark data is generated/reused")
    ap.add_argument("--studies", type=int, default=160)
    ap.add_argument("--image-size", type=int, default=2500, help="phantom image height (MIMIC: 2000-3000 px)")
    ap.add_argument("--size", type=int, default=512, help="model input side")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to time")
    ap.add_argument("--file-batches", type=int, default=3, help="batches timed per file-path row")
    ap.add_argument("--cache-seconds", type=float, default=5.0, help="seconds timed per prepared-cache row")
    ap.add_argument("--gen-workers", type=int, default=2)
    ap.add_argument("--step-ms", type=float, default=20.0, help="simulated training step for the overlap line")
    args = ap.parse_args()

    from elvis_core.model import build_model, preset
    from elvis_core.training.data import (Augment, Collate, PairDataset, PreparedDataset, batch_model_input,
                                          find_pairs)
    from elvis_core.training.prepared import PreparedCache, prepare

    torch.set_num_threads(1)
    os.makedirs(args.data, exist_ok=True)
    dcm_root, jpg_root = make_data(args.data, args.studies, args.image_size, args.gen_workers)
    cfg = preset("demo")
    cfg["preprocessing"]["size"] = args.size
    cfg["text"]["max_length"] = 128
    cfg["text"]["hf_config"]["max_position_embeddings"] = 512
    pairs, _ = find_pairs(dcm_root)
    torch.manual_seed(0)
    model = build_model(cfg, texts=[p.text for p in pairs])
    tf = model.transform
    collate = Collate(model)

    cache_dir = os.path.join(args.data, f"cache{args.size}_{os.path.basename(dcm_root)}")
    t = time.perf_counter()
    summ = prepare(dcm_root, cache_dir, tf, workers=args.gen_workers, shard_size=64)
    prep_s = time.perf_counter() - t
    pc = PreparedCache.open(cache_dir)
    prep_line = (f"elvis prepare: {summ.n_ready} DICOM images ({args.image_size} px) -> {args.size} px cache, "
                 f"{args.gen_workers} workers: " + (f"{summ.n_ready / prep_s:.1f} images/s"
                                                    if not summ.already_complete else "reused an earlier run"))
    print(prep_line, flush=True)

    rows = []
    n_file = args.batch * args.file_batches
    for kind, root in (("DICOM files", dcm_root), ("JPEG files", jpg_root)):
        kp, _ = find_pairs(root)
        for w in args.workers:
            ds = PairDataset(kp, tf, augment=None)
            pps, ppc, nb, ram, _ = time_loader(ds, collate, args.batch, w, max(1, n_file // args.batch), 0.0)
            rows.append((kind, w, pps, ppc, ram, ""))
            print(f"  {kind}, {w} workers: {pps:.1f} pairs/s, {ppc:.1f} pairs per CPU-second", flush=True)
    ids = np.arange(len(pc))
    for w in args.workers:
        ds = PreparedDataset(pc, ids, augment=Augment(), seed=0)
        ds.pretokenize(model.tokenizer, model.max_text_length)  # as elvis train does
        pps, ppc, nb, ram, frss = time_loader(ds, collate, args.batch, w, 20, args.cache_seconds)
        rows.append(("prepared cache", w, pps, ppc, ram, f"file-backed RSS {frss / 2**20:.0f} MiB (page cache)"))
        print(f"  prepared, {w} workers: {pps:.1f} pairs/s, {ppc:.1f} pairs per CPU-second", flush=True)

    # the loader overlapped with a training step: a GPU step leaves the CPU idle (sleep stands in for it)
    from elvis_core.training.data import ThreadPrefetcher

    ds = PreparedDataset(pc, ids, augment=Augment(), seed=0)
    ds.pretokenize(model.tokenizer, model.max_text_length)
    step_s, n_steps = args.step_ms / 1000.0, 60
    overlap = {}
    for mode in ("in line", "prefetch thread") * 2:  # twice each, the better kept (a shared machine is noisy)
        dl = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=0,
                                         collate_fn=collate)

        def endless():
            while True:
                yield from dl

        src = ThreadPrefetcher(endless()) if mode == "prefetch thread" else endless()
        next(src)
        t = time.perf_counter()
        for _ in range(n_steps):
            next(src)
            time.sleep(step_s)
        overlap[mode] = min(overlap.get(mode, float("inf")), (time.perf_counter() - t) / n_steps * 1000)
        if mode == "prefetch thread":
            src.close()
    overlap_line = (f"with a simulated {args.step_ms:.0f} ms training step per batch of {args.batch}: "
                    + ", ".join(f"{k} {v:.1f} ms per step" for k, v in overlap.items()))
    print("  " + overlap_line, flush=True)

    # the augmentation that training runs on the device, here on this CPU (1 thread)
    x = torch.from_numpy(np.stack([pc_row for pc_row in np.load(pc.shard_paths()[0], mmap_mode="r")[:args.batch]]))
    x = x[:, None]
    rng = np.random.default_rng(0)
    params = torch.from_numpy(np.stack([Augment().sample(rng) for _ in range(x.shape[0])]))
    batch_model_input(x, params, tf.mean, tf.std)
    t = time.perf_counter()
    n_aug = 0
    while time.perf_counter() - t < 2.0:
        batch_model_input(x, params, tf.mean, tf.std)
        n_aug += x.shape[0]
    aug_rate = n_aug / (time.perf_counter() - t)

    load = os.getloadavg()[0]
    print()
    print(f"Loader speed, model input {args.size} px, batch {args.batch}, {len(pairs)} phantom studies at "
          f"{args.image_size} px; {os.cpu_count()} CPU cores, load average {load:.1f} at the end")
    print("| source | DataLoader workers | pairs/s (wall) | pairs per CPU-second (= per core) | vs files, per core | "
          "RAM held by the loader |")
    print("|---|---|---|---|---|---|")
    base = {}
    for kind, w, pps, ppc, ram, _ in rows:
        if kind != "prepared cache":
            base.setdefault(kind, []).append(ppc)
    base = {k: max(v) for k, v in base.items()}
    for kind, w, pps, ppc, ram, note in rows:
        if kind == "prepared cache":
            ratio = " / ".join(f"{ppc / base[k]:.0f}x {k.split()[0]}" for k in ("DICOM files", "JPEG files")
                               if k in base)
        else:
            ratio = "1x"
        print(f"| {kind} | {w} | {pps:.0f} | {ppc:.0f} | {ratio} | "
              f"{ram / 2**20:.0f} MiB{(' + ' + note) if note else ''} |")
    best = max(ppc for kind, w, pps, ppc, ram, note in rows if kind == "prepared cache")
    print(f"\nprepared cache on 2 cores (2 x the best per-core rate): {2 * best:.0f} pairs/s (target >= 2000); "
          f"measured wall rate with 2 workers on this shared machine: "
          f"{max([pps for kind, w, pps, ppc, ram, note in rows if kind == 'prepared cache' and w == 2] or [0]):.0f}")
    print(overlap_line)
    print(f"\nbatch augmentation (affine_grid + grid_sample + contrast/brightness) on this CPU, 1 thread: "
          f"{aug_rate:.0f} pairs/s (training runs it on the GPU when there is one)")
    print(prep_line)
    n_mimic = 377_110
    print(f"a RAM cache of MIMIC-CXR's {n_mimic} images at {args.size} px would hold "
          f"{n_mimic * args.size * args.size / 2**30:.0f} GiB; the prepared cache puts them on disk "
          f"({args.size * args.size / 2**10:.0f} KiB per image) and reads them memory-mapped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
