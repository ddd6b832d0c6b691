"""`elvis export-onnx CHECKPOINT`: the checkpoint's image and text towers as ONNX, checked against torch (issue 25).

The viewer grounds with ONNX Runtime when a checkpoint carries a current, checked export (no torch or transformers
import: the first map comes seconds sooner), else with torch. Idempotent: an export that matches the weights and
config is kept (seconds); ``--force`` redoes it.
"""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """examples:
  elvis export-onnx resources/demo_model          # writes resources/demo_model/onnx/{image,text}.onnx + manifest
  python -m elvis_core export-onnx runs/x/final --force
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="export a checkpoint's towers to ONNX for the viewer (fidelity-checked against torch)",
        description="Export a checkpoint's image and text towers with torch.onnx.export(dynamo=True) into "
        "CHECKPOINT/onnx/, check the maps of ONNX Runtime against torch (Pearson r >= 0.999 on phantom studies and "
        "phrases), and add a dynamically int8-quantized text tower (for towers >= 20 MB) when it passes the same check.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint folder (config.json + model.safetensors + tokenizer.json)")
    p.add_argument("--force", action="store_true", help="export again even when the export is up to date")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--int8", dest="int8", action="store_true", default=None,
                   help="make the int8 text tower even for a small one (default: for text towers >= 20 MB)")
    q.add_argument("--no-int8", dest="int8", action="store_false", help="do not make the int8 text tower")
    p.set_defaults(func=run)


def run(args) -> int:
    from elvis_core.model.onnx_export import export_onnx, summary_lines

    manifest = export_onnx(args.checkpoint, force=args.force, int8=args.int8,
                           say=lambda m: print(m, file=sys.stderr))
    for line in summary_lines(manifest):
        print(f"{args.checkpoint}: {line}")
    return 0 if (manifest.get("fidelity") or {}).get("passed") else 1
