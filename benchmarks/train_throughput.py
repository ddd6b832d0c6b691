"""Training throughput of the ELVIS model on synthetic tensors (no data on disk): pairs/s, and on CUDA the achieved
TFLOP/s (FLOPs counted with torch.utils.flop_counter.FlopCounterMode over one forward+backward step) and MFU.

    python benchmarks/train_throughput.py                              # CPU, demo preset, small batch
    python benchmarks/train_throughput.py --device cuda --steps 30     # ResNet-50@512 + BERT-base, bf16
    torchrun --nproc_per_node 8 benchmarks/train_throughput.py --device cuda --steps 30 --ddp

Prints one table. MFU = achieved FLOP/s / peak dense bf16 FLOP/s of the GPU (table below; --peak-tflops to override).
FLOPs are the matmul/conv FLOPs FlopCounterMode sees (2 per multiply-add), the usual MFU convention.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

#: dense bf16 peak TFLOP/s (no sparsity) by device-name substring
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "A10G": 70.0, "L4": 121.0, "V100": 125.0, "RTX 4090": 165.0}


def peak_tflops(name: str) -> float | None:
    for k, v in PEAK_BF16_TFLOPS.items():
        if k in name:
            return v
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--preset", default=None, help="model preset (default: resnet50-bert-base on CUDA, demo on CPU)")
    ap.add_argument("--size", type=int, default=None, help="input side (default: 512 on CUDA, the preset's on CPU)")
    ap.add_argument("--batch", type=int, default=None, help="pairs per process per step (default 32 CUDA / 8 CPU)")
    ap.add_argument("--text-len", type=int, default=128, help="tokens per report")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--objectives", default="global=1,local=0.5,intra=0.5",
                    help="name=weight list (global, local, region_sentence, intra)")
    ap.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode: default | reduce-overhead (CUDA graphs; text padded to --text-len, so "
                         "shapes are fixed) | max-autotune")
    ap.add_argument("--no-fused", action="store_true", help="plain (foreach) AdamW instead of fused on CUDA")
    ap.add_argument("--prepared", default=None, metavar="CACHE_DIR",
                    help="feed the steps from a prepared cache (elvis prepare, same --size) through the training "
                         "loader (pinned memory, augmentation on the device) instead of synthetic tensors")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers with --prepared")
    ap.add_argument("--ddp", action="store_true", help="DDP under torchrun (NCCL on CUDA, gloo on CPU)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak per GPU for MFU (default: by name)")
    args = ap.parse_args()

    from elvis_core.model import build_model, preset
    from elvis_core.training.objectives import CombinedObjective
    from elvis_core.training.trainer import TrainModule

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    rank, world, local_rank = 0, 1, 0
    if args.ddp:
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    name = args.preset or ("resnet50-bert-base" if cuda else "demo")
    cfg = preset(name)
    if args.size or cuda:
        cfg["preprocessing"]["size"] = args.size or 512
    cfg["text"]["max_length"] = max(cfg["text"]["max_length"], args.text_len)
    cfg["text"]["hf_config"].setdefault("max_position_embeddings", 512)
    torch.manual_seed(0)
    model = build_model(cfg)
    bs = args.batch or (32 if cuda else 8)
    size = model.transform.size
    L = min(args.text_len, model.max_text_length)
    weights = {k: float(v) for k, v in (kv.split("=") for kv in args.objectives.split(","))}
    objective = CombinedObjective(weights, {"global": {"learnable": True}})
    module = TrainModule(model, objective).to(device).train()
    channels_last = cuda and not args.no_channels_last
    if channels_last:
        model.image_encoder.to(memory_format=torch.channels_last)
    if args.compile:
        mode = None if args.compile_mode == "default" else args.compile_mode
        model.image_encoder.compile(mode=mode)
        model.text_encoder.compile(mode=mode)
    net = module
    if args.ddp:
        net = torch.nn.parallel.DistributedDataParallel(module, device_ids=[local_rank] if cuda else None)
    from elvis_core.training.trainer import adamw_options, to_device

    opt = torch.optim.AdamW(module.parameters(), lr=1e-4, **({} if args.no_fused else adamw_options(device)))
    vocab = int(model.text_encoder.config.vocab_size)
    g = torch.Generator().manual_seed(rank)
    pix = torch.randn(bs, 1, size, size, generator=g).to(device)
    if channels_last:
        pix = pix.contiguous(memory_format=torch.channels_last)
    ids = torch.randint(5, vocab, (bs, L), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones(bs, L, dtype=torch.long)
    words = mask.clone()
    words[:, 0] = words[:, -1] = 0
    batch = {"pixel_values": pix, "input_ids": ids.to(device), "attention_mask": mask.to(device),
             "words": words.to(device), "sentence_ids": torch.zeros_like(ids).to(device)}
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and not args.no_bf16 else contextlib.nullcontext())

    feed = None
    if args.prepared:
        from elvis_core.training.data import Augment, Collate, PreparedDataset
        from elvis_core.training.prepared import PreparedCache

        pc = PreparedCache.open(args.prepared)
        pc.check_transform(model.transform)
        pds = PreparedDataset(pc, list(range(len(pc))), augment=Augment(), seed=rank)
        pds.pretokenize(model.tokenizer, model.max_text_length)
        smp = torch.utils.data.distributed.DistributedSampler(pds, num_replicas=world, rank=rank, drop_last=True)
        dl = torch.utils.data.DataLoader(pds, batch_size=bs, sampler=smp, drop_last=True, num_workers=args.workers,
                                         collate_fn=Collate(model, pad_to_max_length=args.compile_mode
                                                            == "reduce-overhead"),
                                         pin_memory=cuda, persistent_workers=args.workers > 0)

        def batches():
            ep = 0
            while True:
                smp.set_epoch(ep)
                pds.set_epoch(ep)
                for b in dl:
                    yield to_device(b, device, model.transform, channels_last=channels_last)
                ep += 1

        feed = batches()

    def step():
        nonlocal batch
        if feed is not None:
            batch = next(feed)
        with amp:
            loss, _ = net(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    # FLOPs of one training step (forward + backward) on this process
    from torch.utils.flop_counter import FlopCounterMode

    for _ in range(max(1, args.warmup)):
        step()
    sync()
    fc = FlopCounterMode(display=False)
    with fc:
        with amp:
            loss, _ = module(batch)  # no DDP hooks inside the counter
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops_step = fc.get_total_flops()
    sync()
    if args.ddp:
        import torch.distributed as dist

        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    if args.ddp:
        import torch.distributed as dist

        dist.destroy_process_group()
    if rank != 0:
        return 0
    pairs_s = bs * world / dt
    rows = [("device", torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"),
            ("processes", str(world)), ("preset", name), ("input", f"{size} x {size}"),
            ("grid", "x".join(map(str, model.grid_shape()))), ("text tokens", str(L)),
            ("batch / process", str(bs)), ("objectives", args.objectives),
            ("input pipeline", f"prepared cache, {args.workers} workers" if args.prepared else "synthetic tensors"),
            ("optimizer", "AdamW " + ("fused" if cuda and not args.no_fused else "foreach")),
            ("compile", args.compile_mode if args.compile else "off"),
            ("precision", "bf16 autocast" if cuda and not args.no_bf16 else "fp32"),
            ("parameters", f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M"),
            ("step time", f"{dt * 1000:.1f} ms"), ("pairs/s", f"{pairs_s:.1f}"),
            ("GFLOP / pair (fwd+bwd)", f"{flops_step / bs / 1e9:.1f}")]
    if cuda:
        achieved = flops_step / dt / 1e12  # per GPU
        peak = args.peak_tflops or peak_tflops(torch.cuda.get_device_name(device))
        rows += [("TFLOP/s per GPU", f"{achieved:.1f}"), ("TFLOP/s total", f"{achieved * world:.1f}"),
                 ("peak bf16 TFLOP/s per GPU", f"{peak:.0f}" if peak else "unknown (--peak-tflops)"),
                 ("MFU", f"{100 * achieved / peak:.1f} %" if peak else "n/a"),
                 ("max memory", f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")]
    w = max(len(k) for k, _ in rows)
    print(f"{'metric'.ljust(w)} | value")
    print(f"{'-' * w}-|-{'-' * 24}")
    for k, v in rows:
        print(f"{k.ljust(w)} | {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
