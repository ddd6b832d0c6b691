"""`elvis render IMAGE --out PNG`: the display pipeline (read → window or VOI LUT → uint8) at native resolution."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from elvis_core.errors import ElvisError

EXAMPLE = """examples:
  elvis render chest.dcm --out chest.png                   # the file's first window preset (else 0.5-99.5 %)
  elvis render chest.dcm --out chest.png --window 550,1024 # centre,width in modality values, higher = brighter
  elvis render cine.dcm --out f3.png --frame 3             # one frame of a multi-frame file
  elvis render vlut.dcm --out v.png --voi-lut              # use the file's VOI LUT
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="render a DICOM (or JPG/PNG) to an 8-bit PNG through the display pipeline",
        description="Render a DICOM (or JPG/PNG) to an 8-bit grey PNG at native resolution, with the same display "
        "function the viewer uses. MONOCHROME1 is shown with higher values brighter.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", help="DICOM file (or JPG/PNG)")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--window", metavar="C,W", help="window centre,width (default: the file's first preset)")
    p.add_argument("--frame", type=int, default=0, help="frame of a multi-frame DICOM (default 0)")
    p.add_argument("--voi-lut", action="store_true", help="use the file's VOI LUT instead of a window")
    p.add_argument("--invert", action="store_true", help="invert the display (black <-> white)")
    p.set_defaults(func=run)


def parse_window(text: str):
    from elvis_core.io.radiograph import Window

    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise ElvisError(f"--window must be CENTER,WIDTH (got {text!r})")
    try:
        c, w = float(parts[0]), float(parts[1])
    except ValueError:
        raise ElvisError(f"--window must be two numbers CENTER,WIDTH (got {text!r})") from None
    if not (w > 0) or w != w or c != c or abs(c) == float("inf") or w == float("inf"):
        raise ElvisError(f"--window width must be a finite number > 0 (got {text!r})")
    return Window(center=c, width=w, name="command line")


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", False):
        warnings.simplefilter("ignore")  # pydicom's value warnings; problems are reported by our own messages
    import cv2

    from elvis_core.io.display import to_uint8
    from elvis_core.io.images import read_image

    window = parse_window(args.window) if args.window else None
    out = args.out
    if not out.lower().endswith(".png"):
        raise ElvisError("output must be a .png file", out)
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise ElvisError("output folder does not exist", out_dir)
    r = read_image(args.image, frame=args.frame)
    if args.voi_lut and r.voi_lut is None:
        print(f"elvis render: warning: {args.image}: no VOI LUT in the file; using the window", file=sys.stderr)
    img = to_uint8(r, window=window, use_voi_lut=args.voi_lut, invert=args.invert)
    try:
        ok = cv2.imwrite(out, img)
    except cv2.error as err:
        raise ElvisError(f"cannot write PNG ({str(err).strip().splitlines()[-1][:100]})", out) from None
    if not ok:
        raise ElvisError("cannot write PNG", out)
    for w in r.warnings:
        print(f"elvis render: note: {w}", file=sys.stderr)
    print(f"{out}: {img.shape[1]} x {img.shape[0]} px")
    return 0
