"""`elvis import`: convert a public model you already downloaded (BioViL, BioViL-T + CXR-BERT) into an ELVIS
checkpoint folder, once. Everything afterwards (viewer, ground, eval, compare, training init) uses that folder."""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """examples:
  elvis import biovil   --image-weights biovil_image_resnet50_proj_size_128.pt \\
                        --text-model BiomedVLP-CXR-BERT-specialized --out models/biovil
  elvis import biovil-t --image-weights biovil_t_image_model_proj_size_128.pt \\
                        --text-model BiomedVLP-BioViL-T --out models/biovil-t
  elvis-viewer study/ --checkpoint models/biovil --compare resources/demo_model

The .pt/.bin files are read with torch.load(weights_only=True) (plain tensors only; nothing else is unpickled) and
the text folder's Python code is never run. Default preprocessing is hi-ml's (resize the short side to 512, centre
crop 480 / 448): the cropped-away border is shown as "not seen by the model". --whole-image stores our
pad-to-square transform instead (no border lost, but a scale and padding the model was not trained with).
See docs/models.md."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert BioViL / BioViL-T + CXR-BERT weights into an ELVIS checkpoint",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=("biovil", "biovil-t"), help="which published model the files are")
    p.add_argument("--image-weights", required=True, help="hi-ml image weights (.pt, or .safetensors)")
    p.add_argument("--text-model", required=True,
                   help="Hugging Face folder of the text model (config.json, vocab.txt, tokenizer_config.json, "
                        "pytorch_model.bin or model.safetensors)")
    p.add_argument("--out", required=True, help="new checkpoint folder (must not exist, or be empty)")
    p.add_argument("--whole-image", action="store_true",
                   help="pad the whole image to a square instead of hi-ml's centre crop (no border lost)")
    p.add_argument("--resize", type=int, default=None, help="short side before the crop (default 512)")
    p.add_argument("--crop", type=int, default=None, help="centre crop side (default 480 BioViL, 448 BioViL-T)")
    p.add_argument("--no-onnx", action="store_true", help="do not export the checkpoint to ONNX for the viewer "
                   "(default: exported and checked against torch; 'elvis export-onnx' does it later)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from elvis_core.errors import ModelImportError
    from elvis_core.model.checkpoint import read_checkpoint_config
    from elvis_core.model.download import lfs_pointer, make_shareable
    from elvis_core.model.importers import import_biovil

    # a clone made without git-lfs holds ~130-byte pointer files instead of the weights: say so, by name
    text = Path(args.text_model)
    for f in [Path(args.image_weights)] + [text / n for n in ("pytorch_model.bin", "model.safetensors",
                                                              "vocab.txt", "config.json")]:
        if lfs_pointer(f):
            raise ModelImportError(lfs_pointer(f), f)
    parent = Path(args.out).resolve().parent
    try:  # the docs' `--out models/biovil` in a fresh checkout: create models/
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelImportError(f"cannot create the output's parent folder ({err.strerror or err})", parent) from None
    out = import_biovil(args.model, args.image_weights, args.text_model, args.out, whole_image=args.whole_image,
                        resize=args.resize, crop=args.crop)
    make_shareable(out)  # written through a 0700 temp folder: an installed model is readable by every user
    cfg = read_checkpoint_config(out)
    pre = cfg["model"]["preprocessing"]
    how = (f"centre crop {pre['crop']} of the image resized to short side {pre['resize']}"
           if pre.get("kind") == "resize_short_side_center_crop" else f"whole image padded to {pre['size']}")
    print(f"{out}: {args.model} imported ({cfg['n_parameters']:,} parameters; preprocessing: {how})")
    from elvis_core.model.onnx_export import export_after_write, summary_lines

    manifest = export_after_write(out, enabled=not args.no_onnx, say=lambda m: print(m, file=sys.stderr))
    for line in summary_lines(manifest) if manifest else ():
        print(f"{out}: ONNX export: {line}")
    return 0
