"""Peak memory and time of the token–patch local objective (forward + backward), in blocks of images vs the whole
[B, B, L, N] tensor at once; each variant in its own process (peak RSS), on this CPU.

    python benchmarks/local_objective_memory.py --batch 32 --tokens 128 --grid 16 --dim 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def child(args) -> None:
    import torch
    import torch.nn.functional as F

    from elvis_core.training.objectives import LocalTokenPatch

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    b, n, length, d = args.batch, args.grid * args.grid, args.tokens, args.dim
    p = F.normalize(torch.randn(b, n, d, generator=g), dim=-1).requires_grad_()
    t = F.normalize(torch.randn(b, length, d, generator=g), dim=-1).requires_grad_()
    mask = torch.ones(b, length, dtype=torch.long)
    obj = LocalTokenPatch()
    if args.mode == "whole":
        obj.block_elements = 1 << 62
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    loss = obj(p, t, mask)
    loss.backward()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"loss": float(loss), "grad_sum": float(p.grad.abs().sum() + t.grad.abs().sum()),
                      "peak_mib": (peak - base) / 1024, "seconds": dt}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        child(args)
        return 0
    rows = {}
    for mode in ("whole", "blocks"):
        cmd = [sys.executable, __file__, "--mode", mode] + [f"--{k}={getattr(args, k)}" for k in
                                                            ("batch", "tokens", "grid", "dim", "threads")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows[mode] = json.loads(out)
    print(f"local objective fwd+bwd, B={args.batch}, L={args.tokens}, N={args.grid}x{args.grid}, D={args.dim}, "
          f"fp32, CPU {args.threads} thread(s)")
    print("| computation | peak memory added | time | loss |")
    print("|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['peak_mib']:.0f} MiB | {r['seconds']:.2f} s | {r['loss']:.6f} |")
    print(f"loss difference {abs(rows['whole']['loss'] - rows['blocks']['loss']):.2e}, "
          f"memory ratio {rows['whole']['peak_mib'] / max(rows['blocks']['peak_mib'], 1e-9):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
