"""`elvis train CONFIG.toml [--set key=value ...] [--out DIR]`: train an ELVIS model (CPU, GPU, or DDP via torchrun)."""

from __future__ import annotations

import argparse
import math
import os
import sys

EXAMPLE = """examples:
  elvis phantom --out phantom --studies 400 --seed 0 --size 256
  elvis train resources/configs/demo.toml --set data.root=phantom --out runs/demo
  elvis train resources/configs/demo.toml --set data.root=phantom --set train.max_steps=20 --set train.lr=3e-4
  torchrun --nproc_per_node 4 -m elvis_core train resources/configs/mimic-resnet50.toml --out runs/r50

A crashed or interrupted run continues from OUT/last when started again with the same --out
(--set train.resume=false starts over). Outputs: OUT/model (checkpoint), OUT/last (resume state), OUT/log.csv."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an ELVIS model on a MIMIC-CXR-layout or phantom folder",
                       description="Train an ELVIS model. CONFIG is a TOML file (see docs/training.md); "
                                   "--set overrides single keys.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (TOML), e.g. resources/configs/demo.toml")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (TOML literal; repeatable), e.g. --set train.lr=3e-4")
    p.add_argument("--out", default=None, help="output folder (default: output.dir of the config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-onnx", action="store_true", help="do not export OUT/model to ONNX for the viewer "
                   "(default: exported and checked against torch; 'elvis export-onnx' does it later)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from elvis_core.training.config import load_config
    from elvis_core.training.trainer import train

    cfg = load_config(args.config, args.sets)
    res = train(cfg, out_dir=args.out, progress=False if args.no_progress else None)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    for line in res.data_lines:
        print(line)
    print(f"trained {res.steps} steps ({res.epochs_done} epochs) in {res.seconds:.1f} s, "
          f"{res.pairs_per_s:.1f} pairs/s; loss {res.first_loss:.4f} -> {res.last_loss:.4f}"
          + (f" (resumed at step {res.resumed_from_step})" if res.resumed_from_step else ""))
    if res.unreadable_images:
        print(f"skipped {res.unreadable_images} unreadable image(s)")
    if res.val_metrics:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in res.val_metrics.items()
                                           if not (isinstance(v, float) and math.isnan(v))))
    print(f"checkpoint: {res.model_dir}")
    from elvis_core.model.onnx_export import export_after_write, summary_lines

    manifest = export_after_write(res.model_dir, enabled=not args.no_onnx, say=lambda m: print(m, file=sys.stderr))
    for line in summary_lines(manifest) if manifest else ():
        print(f"ONNX export: {line}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
