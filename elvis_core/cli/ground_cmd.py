"""`elvis ground`: ground phrases on one image and write figures (PNG) and, optionally, the maps (NPY)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

import numpy as np

from elvis_core.cli import add_show_identifiers, say, shown
from elvis_core.errors import ElvisError

EXAMPLE = """example:
  elvis ground --checkpoint runs/demo study/img.dcm "right lower lobe opacity" "small left effusion" \\
               --out maps/img.png --npy --sigma 1.5 --annotations MS_CXR.csv

With one phrase the figure goes to --out; with several, to OUT_STEM_1.png, OUT_STEM_2.png, ... in phrase order.
--npy writes beside each PNG (stem S):
  S.grid.npy  the raw patch grid: float32 (gh, gw) cosine similarities in [-1, 1] between each patch embedding and
              the phrase embedding, before any --sigma smoothing (15 x 15 for BioViL at 480, 14 x 14 for
              BioViL-T at 448; row 0 = top of the model input);
  S.grid.npz  similarity (the grid as drawn, after --sigma), raw_similarity, similarity_sigma_1_5 (the raw grid
              smoothed as hi-ml smooths its maps), grid_to_image (3x3 affine from grid cell coordinates to
              original pixels), image_shape, seen_box (x0, y0, x1, y1 the model saw);
  S.npy       the map resampled to the original image pixels (float32, rows x cols); NaN where the model saw
              nothing (the border an imported model's centre crop drops), never 0.
hi-ml's own maps are smoothed with sigma 1.5: --sigma 1.5 gives the same smoothed grid. --annotations draws the boxes of the image's matching phrases (same label
text; matched by the CSV path or the dicom_id = the image file's stem) and prints their CNR / mIoU / pointing.

  elvis ground --checkpoint runs/demo study/img.dcm "small left effusion" --out maps/img.png --dicom-out maps/dicom

Each phrase's line is followed by its trust line (how far to believe the map: presence from the checkpoint's
calibration, or "uncalibrated" with the raw peak; what the model saw; the phrase's words it does not know).
--json OUT.json writes one record per phrase: phrase, peak, presence (null when the model is uncalibrated),
presence_threshold, confident, unknown_words, trust, warnings; plus the image (file name), its warnings (e.g. a film
that looks inverted) and the checkpoint's calibration (docs/grounding.md, "What a map claims").

--dicom-out writes, for a DICOM image, ONE FRACTIONAL Segmentation with one segment per phrase (the continuous map,
max(cosine, 0); the segment description carries the map's trust line) as <SOPInstanceUID>.seg.dcm, and per phrase
an RGB Secondary Capture heat map with the caption (what PACS viewers display) as <SOPInstanceUID>.<k>.sc.dcm;
send them with `elvis pacs store`. What it prints shows every DICOM UID (those file names, an image named by its UID)
as its pseudonym uid~12345678; --show-identifiers prints the names as they are (for scripts that read the output)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ground", help="ground phrases on an image: heatmap figure (PNG) and map (NPY)",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("image", help="DICOM, PNG or JPG image")
    p.add_argument("phrases", nargs="+", metavar="PHRASE", help="phrase(s) to ground")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--npy", action="store_true", help="also write the maps as .npy (+ grid .grid.npz)")
    p.add_argument("--annotations", default=None, help="MS-CXR CSV: draw the phrase's boxes and score them")
    p.add_argument("--sigma", type=float, default=0.0, help="Gaussian smoothing on the grid, in cells (default 0)")
    p.add_argument("--opacity", type=float, default=0.5, help="map opacity over the image, 0..1 (default 0.5)")
    p.add_argument("--cmap", default="RdBu_r", help="RdBu_r (default), RdBu, viridis or gray")
    p.add_argument("--frame", type=int, default=0, help="frame of a multi-frame DICOM (default 0)")
    p.add_argument("--mirror", choices=("checkpoint", "on", "off"), default="checkpoint",
                   help="mirror consensus: also ground the side-swapped phrase on the mirrored film and average "
                        "(model.image.mirror_average; default: what the checkpoint says)")
    p.add_argument("--phrase-map", choices=("global", "token-mean"), default="global",
                   help="global: cosine(patch, phrase embedding) (default, BioViL-style); token-mean: mean over the "
                        "phrase's tokens of cosine(patch, token embedding) (GLoRIA-style)")
    p.add_argument("--dicom-out", metavar="DIR", default=None,
                   help="also write the maps as a FRACTIONAL DICOM SEG + RGB Secondary Capture heat maps "
                        "(DICOM input only)")
    p.add_argument("--json", metavar="OUT.json", default=None,
                   help="also write one record per phrase (peak, presence, unknown words, warnings) as JSON")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.set_defaults(func=run)
    add_show_identifiers(p, "file names (--dicom-out files are named by the image's SOP Instance UID)")


def _trust_json(path: Path, image: str, image_warnings: List[str], engine, records: List[dict]) -> None:
    """``image``: the file name as the command prints it (a UID masked unless --show-identifiers)."""
    import json

    from elvis_core.atomic import atomic_write_bytes

    cal = engine.presence_calibration
    doc = {"image": image, "warnings": image_warnings,
           "checkpoint": engine.checkpoint_name, "checkpoint_sha256": engine.checkpoint_hash,
           "calibration": None if cal is None else {k: cal.get(k) for k in (
               "calibrated_on", "threshold", "ece", "n_present", "n_absent")},
           "known_words": engine.known_words_source, "phrases": records}
    try:
        atomic_write_bytes(path, (json.dumps(doc, indent=1, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8"))
    except OSError as err:
        raise ElvisError(f"cannot write ({err.strerror or err})", path) from None


def _record(gm, png: Path) -> dict:
    def num(v):
        return None if v is None else round(float(v), 6)
    return {"phrase": gm.phrase, "peak": num(gm.peak), "presence": num(gm.presence),
            "presence_threshold": num(gm.presence_threshold), "confident": gm.confident,
            "unknown_words": list(gm.unknown_words), "trust": gm.trust_line(), "warnings": list(gm.warnings),
            "peak_xy": [round(v, 1) for v in gm.peak_xy()], "png": png.name}


def _outputs(out: Path, n: int) -> List[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{k}{out.suffix or '.png'}") for k in range(1, n + 1)]


def _read(path: str, frame: int):
    from elvis_core.io.images import read_image

    p = Path(path)
    if not p.exists():
        raise ElvisError("image not found", p)
    return read_image(p, frame=frame)


def _save_npy(path: Path, array, **arrays) -> None:
    """np.save / np.savez through the project's atomic writer (no half-written file)."""
    import io

    from elvis_core.atomic import atomic_write_bytes

    buf = io.BytesIO()
    if array is not None:
        np.save(buf, array)
    else:
        np.savez(buf, **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as err:
        raise ElvisError(f"cannot write ({err.strerror or err})", path) from None


def run(args: argparse.Namespace) -> int:
    from elvis_core.grounding.engine import GroundingEngine, smooth_grid
    from elvis_core.grounding.figure import colormap_lut, render_overlay, write_png
    from elvis_core.grounding.metrics import cnr, miou, pointing_game
    from elvis_core.io.annotations import read_ms_cxr_csv, rescale_boxes

    if not 0.0 <= args.opacity <= 1.0:
        raise ElvisError(f"--opacity must be in [0, 1], got {args.opacity}")
    if not 0 <= args.sigma <= 64:  # also refuses nan; a grid is at most a few dozen cells across
        raise ElvisError(f"--sigma must be 0..64 grid cells, got {args.sigma}")
    try:
        colormap_lut(args.cmap)
    except ValueError as err:
        raise ElvisError(str(err)) from None
    out = Path(args.out)
    if not out.resolve().parent.exists():
        raise ElvisError("output folder does not exist", out.resolve().parent)
    for i, ph in enumerate(args.phrases):
        if not ph.strip():
            raise ElvisError(f"phrase {i + 1} is empty or only whitespace")

    source = None
    if args.dicom_out:
        from elvis_core.dicom_results import read_source

        source = read_source(args.image)  # fails early, before the model loads, when the image is not DICOM
        Path(args.dicom_out).mkdir(parents=True, exist_ok=True)
    if args.json and not Path(args.json).resolve().parent.exists():
        raise ElvisError("output folder does not exist", Path(args.json).resolve().parent)
    rad = _read(args.image, args.frame)
    from elvis_core.io.inversion import inversion_warning

    image_warnings = list(rad.warnings)
    inv = inversion_warning(rad)
    if inv:
        image_warnings.append(inv)
        say(args, f"warning: {Path(args.image).name}: {inv}", file=sys.stderr)
    phrases_ann = []
    if args.annotations:
        aset = read_ms_cxr_csv(args.annotations)
        img = Path(args.image)
        phrases_ann = [p for p in aset.phrases
                       if p.dicom_id == img.stem or Path(p.path).stem == img.stem
                       or str(img).replace("\\", "/").endswith(p.path)]
        if not phrases_ann:
            say(args, f"{args.annotations}: no phrase for this image (matched by path or dicom_id {img.stem!r})",
                file=sys.stderr)

    engine = GroundingEngine(args.checkpoint, device=args.device, smoothing_sigma=args.sigma,
                             phrase_map=args.phrase_map,
                             mirror_average={"on": True, "off": False}.get(args.mirror))
    engine.set_image(rad)
    maps = engine.ground_many(args.phrases)
    outs = _outputs(out, len(maps))
    sc_series = None
    layers = []
    records = []
    from elvis_core.model.vocab import unknown_words_sentence

    for k, (gm, png) in enumerate(zip(maps, outs), start=1):
        if inv:
            gm.warnings.append(inv)
        for w in gm.warnings:
            say(args, f"warning: {gm.phrase!r}: {w}", file=sys.stderr)
        if gm.unknown_words:
            say(args, f"warning: {gm.phrase!r}: {unknown_words_sentence(gm.unknown_words)}; its map follows the "
                "word pieces, not the word", file=sys.stderr)
        boxes = None
        match = [p for p in phrases_ann if p.label_text.strip().lower() == gm.phrase.strip().lower()]
        if match:
            boxes = []
            for p in match:
                b, note = rescale_boxes(p, rad.shape)
                if note:
                    say(args, f"note: {note}", file=sys.stderr)
                boxes.extend(b)
        if not gm.fully_seen:
            x0, y0, x1, y1 = gm.seen_box()
            say(args, f"note: the model saw only x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f} of this image (its "
                "centre crop); the rest is not seen by the model (no map there)", file=sys.stderr)
        footer = (f"checkpoint {engine.checkpoint_name} sha256:{engine.checkpoint_hash} | grid "
                  f"{gm.similarity.shape[0]}x{gm.similarity.shape[1]} | {args.phrase_map} | sigma {args.sigma:g} | "
                  f"opacity "
                  f"{args.opacity:g} | {args.cmap} over [-1, 1] | {engine.device_name}")
        fig = render_overlay(rad, gm, boxes=boxes, phrase=gm.phrase, footer=footer, opacity=args.opacity,
                             cmap=args.cmap)
        write_png(png, fig)
        line = f"{png}: {gm.phrase!r} max {float(np.max(gm.similarity)):+.3f} at (x, y) = " \
               f"({gm.peak_xy()[0]:.0f}, {gm.peak_xy()[1]:.0f}); {gm.latency_s * 1000:.1f} ms"
        if boxes:
            m = gm.to_image()
            line += f"; CNR {cnr(m, boxes):.3f} mIoU {miou(m, boxes):.3f} pointing {pointing_game(m, boxes)}"
        say(args, line)
        say(args, f"  trust: {gm.trust_line()}")
        records.append(_record(gm, png))
        if args.npy:
            stem = png.with_suffix("")
            raw = gm.raw_similarity if gm.raw_similarity is not None else gm.similarity
            _save_npy(stem.with_name(stem.name + ".grid.npy"), raw.astype(np.float32))
            _save_npy(stem.with_name(stem.name + ".npy"), gm.to_image().astype(np.float32))
            _save_npy(stem.with_name(stem.name + ".grid.npz"), None, similarity=gm.similarity,
                      raw_similarity=raw.astype(np.float32),
                      similarity_sigma_1_5=smooth_grid(raw, 1.5), grid_to_image=gm.grid_to_image,
                      image_shape=np.array(gm.image_shape), seen_box=np.array(gm.seen_box()))
        if source is not None:
            import highdicom as hd

            from elvis_core.dicom_results import MapLayer, ModelInfo, heatmap_sc, write_dataset

            model = ModelInfo.from_engine(engine)
            sc_series = sc_series or hd.UID()
            category = match[0].category if match else ""
            layers.append(MapLayer.from_map(gm, category))
            sc = heatmap_sc(source, rad, gm, model, opacity=args.opacity, series_uid=sc_series, instance_number=k)
            dest = write_dataset(sc, Path(args.dicom_out) / f"{source.SOPInstanceUID}.{k}.sc.dcm")
            say(args, f"{dest}: heat map (RGB Secondary Capture) of {gm.phrase!r}")
    if source is not None:
        from elvis_core.dicom_results import ModelInfo, maps_seg, write_dataset

        seg = maps_seg(source, layers, ModelInfo.from_engine(engine))
        dest = write_dataset(seg, Path(args.dicom_out) / f"{source.SOPInstanceUID}.seg.dcm")
        say(args, f"{dest}: FRACTIONAL SEG, {len(layers)} segment(s) (one per phrase)")
    if args.json:
        _trust_json(Path(args.json), shown(args, Path(args.image).name), image_warnings, engine, records)
        say(args, f"{args.json}: {len(records)} phrase record(s)")
    return 0
