"""ONNX export of a checkpoint's image and text towers, fidelity-checked against torch (issue 25).

``export_onnx(CKPT)`` writes, inside the checkpoint folder::

    onnx/image.onnx       pixel_values [B, 1, S, S] float32 -> patch_emb [B, gh, gw, D] (L2-normalised)
    onnx/text.onnx        input_ids, attention_mask [B, L] int64 -> global_emb [B, D], token_emb [B, L, D]
    onnx/text.int8.onnx   the text tower with dynamic int8 weights (ONNX Runtime quantize_dynamic), kept only when
                          its maps pass the same check (it makes a typed phrase faster with a BERT-base tower)
    onnx/manifest.json    weights hash + config digest it was made from, opset, torch version, and the fidelity
                          check: Pearson r of every phrase map (raw cosine grid) of the ONNX Runtime engine against
                          the torch engine on rendered phantom studies and phantom phrases; passed = min r >= 0.999

Exported with ``torch.onnx.export(..., dynamo=True)`` (the legacy TorchScript exporter gave wrong maps). The viewer's
:class:`~elvis_core.grounding.onnx_engine.OnnxGroundingEngine` uses the export only when the manifest matches the
checkpoint and the check passed; torch stays the engine for training, evaluation and the fallback.

Idempotent and fast when nothing changed: an export whose manifest matches the weights and config is kept (``force``
redoes it). The manifest is removed first and written last, so a crash never leaves a "passed" export behind.
Made by the trainer when it writes its final checkpoint, by ``elvis import``, and by
``python -m elvis_core export-onnx CKPT``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

log = logging.getLogger(__name__)

MIN_PEARSON = 0.999
OPSET = 18
#: the int8 text tower is made only for text towers at least this large (a BERT-base is ~440 MB; the demo's 2 MB
#: tower runs in under a millisecond either way, and the shipped files stay small)
INT8_MIN_BYTES = 20 * 2 ** 20
#: phantom-style phrases (the 8 MS-CXR categories, both sides, negation, a long one) for the fidelity check
FIDELITY_PHRASES = [
    "right lower lobe opacity", "small left pleural effusion", "cardiomegaly", "left apical pneumothorax",
    "right upper zone consolidation", "bilateral interstitial edema", "left basilar atelectasis",
    "right middle lobe pneumonia", "no pneumothorax", "enlarged cardiac silhouette", "lungs are clear",
    "moderate right pleural effusion with adjacent atelectasis at the base",
]


def _towers(model):
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m.encode_image(pixel_values).patch_emb

    class TextTower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            out = self.m.encode_text(input_ids, attention_mask)
            return out.global_emb, out.token_emb

    return ImageTower(model).eval(), TextTower(model).eval()


def _export(module, args, dynamic_shapes, input_names, output_names, out: Path) -> None:
    import torch

    tmp = out.with_name(out.name + ".tmp")
    with torch.inference_mode(False), torch.no_grad():
        prog = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes, opset_version=OPSET,
                                 input_names=input_names, output_names=output_names, external_data=False,
                                 verbose=False)
        prog.save(str(tmp))
    os.replace(tmp, out)


def fidelity_cases(size: int = 512, seeds=(31, 77)):
    """(radiographs, phrases): rendered phantom studies with 3 findings each, their finding phrases and report
    sentences, and :data:`FIDELITY_PHRASES`."""
    from elvis_core.io.radiograph import Radiograph
    from elvis_core.phantom.generate import render_study

    rads, phrases = [], list(FIDELITY_PHRASES)
    for s in seeds:
        st = render_study(int(s), size=size, n_findings=3, with_clean=False)
        rads.append(Radiograph(pixels=st.image.astype(np.float32)))
        phrases += [f.label_text for f in st.findings]
        phrases += [x.strip() for x in st.report.replace("\n", " ").split(".") if len(x.strip()) > 3][:6]
    return rads, list(dict.fromkeys(phrases))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if den < 1e-12:  # a flat map: equal when the values agree
        return 1.0 if float(np.abs(a - b).max(initial=0.0)) < 1e-5 else 0.0
    return float((a * b).sum() / den)


def compare_engines(reference, candidate, rads, phrases) -> Dict[str, Any]:
    """min / median Pearson r and max |difference| of the raw phrase maps of ``candidate`` against ``reference``."""
    rs, diffs = [], []
    for rad in rads:
        reference.set_image(rad)
        candidate.set_image(rad)
        ref = reference.ground_many(phrases)
        got = candidate.ground_many(phrases)
        for a, b in zip(ref, got):
            rs.append(pearson(a.raw_similarity, b.raw_similarity))
            diffs.append(float(np.abs(a.raw_similarity - b.raw_similarity).max()))
    return {"min_r": min(rs), "median_r": float(np.median(rs)), "max_abs_diff": max(diffs), "n_maps": len(rs),
            "passed": bool(min(rs) >= MIN_PEARSON)}


def _write_json(path: Path, obj) -> None:
    from elvis_core.atomic import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(obj, indent=1).encode("utf-8"))


def is_current(ckpt) -> bool:
    from elvis_core.grounding.onnx_engine import onnx_problem

    return onnx_problem(Path(ckpt)) is None


def export_onnx(ckpt, force: bool = False, int8: Optional[bool] = None, say: Optional[Callable[[str], None]] = None,
                model=None) -> Dict[str, Any]:
    """Export ``ckpt``'s towers to ``ckpt/onnx/`` and check them (module docstring). Returns the manifest; its
    ``fidelity.passed`` says whether the viewer will use it. Keeps a current export unless ``force``."""
    from elvis_core.grounding.onnx_engine import MANIFEST, ONNX_DIR, OnnxGroundingEngine, config_digest, \
        read_manifest
    from elvis_core.model.checkpoint import checkpoint_hash, load_checkpoint, read_checkpoint_config

    say = say or (lambda m: log.info("%s", m))
    ckpt = Path(ckpt)
    cfg = read_checkpoint_config(ckpt)
    if not force and is_current(ckpt):  # no torch import: a second run takes well under a second
        say(f"{ckpt}: ONNX export is up to date (weights {checkpoint_hash(ckpt)})")
        return read_manifest(ckpt) or {}
    import torch

    from elvis_core.grounding.engine import GroundingEngine

    t_start = time.perf_counter()
    out = ckpt / ONNX_DIR
    out.mkdir(exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    if model is None:
        model = load_checkpoint(ckpt, device="cpu")
    model = model.to("cpu").eval()
    img, txt = _towers(model)
    size = int(model.transform.size)
    batch = torch.export.Dim("batch", min=1, max=64)
    say(f"{ckpt}: exporting the image tower (input {size}x{size}) ...")
    _export(img, (torch.zeros(2, 1, size, size),), ({0: batch},), ["pixel_values"], ["patch_emb"],
            out / "image.onnx")
    tok = model.tokenize(["left lower lobe opacity", "no pneumothorax seen on this film today"])
    tbatch = torch.export.Dim("tbatch", min=1, max=1024)
    length = torch.export.Dim("length", min=2, max=max(3, int(model.max_text_length)))
    say(f"{ckpt}: exporting the text tower (up to {model.max_text_length} tokens) ...")
    _export(txt, (tok["input_ids"], tok["attention_mask"]), ({0: tbatch, 1: length}, {0: tbatch, 1: length}),
            ["input_ids", "attention_mask"], ["global_emb", "token_emb"], out / "text.onnx")
    manifest: Dict[str, Any] = {
        "format": "elvis-onnx", "format_version": 1, "image_file": "image.onnx", "text_file": "text.onnx",
        "weights_hash": checkpoint_hash(ckpt), "config_digest": config_digest(cfg["model"]),
        "output_stride": int(model.output_stride), "max_text_length": int(model.max_text_length),
        "opset": OPSET, "exporter": "torch.onnx.export(dynamo=True)", "torch": torch.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fidelity": {"passed": False},
    }
    (out / "text.int8.onnx").unlink(missing_ok=True)
    say(f"{ckpt}: checking maps of ONNX Runtime against torch ...")
    rads, phrases = fidelity_cases(size=max(256, min(1024, size * 2)))
    ref = GroundingEngine(model)
    cand = OnnxGroundingEngine(ckpt, checked_manifest=manifest, use_int8=False)
    fid = compare_engines(ref, cand, rads, phrases)
    fid.update(on="phantom studies seeds 31, 77 (3 findings each) x %d phantom phrases" % len(phrases),
               threshold=MIN_PEARSON)
    manifest["fidelity"] = fid
    say(f"{ckpt}: fp32 maps r min {fid['min_r']:.6f} (median {fid['median_r']:.6f}, max |diff| "
        f"{fid['max_abs_diff']:.2e}, {fid['n_maps']} maps): {'passed' if fid['passed'] else 'FAILED'}")
    if int8 is None:  # a tiny tower gains nothing from int8
        int8 = (out / "text.onnx").stat().st_size >= INT8_MIN_BYTES
    if int8 and fid["passed"]:
        manifest["text_int8"] = _int8_text(ckpt, manifest, ref, rads, phrases, say)
    manifest["export_s"] = round(time.perf_counter() - t_start, 1)
    _write_json(out / MANIFEST, manifest)
    return manifest


def _int8_text(ckpt: Path, manifest: Dict[str, Any], ref, rads, phrases, say) -> Dict[str, Any]:
    """Dynamic int8 weights of the text tower's MatMuls; kept when its maps pass the same check."""
    from elvis_core.grounding.onnx_engine import ONNX_DIR, OnnxGroundingEngine

    out = Path(ckpt) / ONNX_DIR
    target = out / "text.int8.onnx"
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.WARNING))  # the quantizer logs every skipped node at INFO on the root
        try:
            # per-channel uint8 weights: of the recipes tried on a BERT-base tower (per-tensor int8, per-channel
            # int8 with and without reduced range, per-channel uint8, feed-forward MatMuls only) the closest to fp32
            quantize_dynamic(str(out / "text.onnx"), str(target), weight_type=QuantType.QUInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            root.setLevel(level)
        m = dict(manifest, text_int8={"file": target.name, "passed": True})
        cand = OnnxGroundingEngine(ckpt, checked_manifest=m, use_int8=True)
        fid = compare_engines(ref, cand, rads, phrases)
    except Exception as e:  # quantization is an optimisation: the fp32 export stays
        target.unlink(missing_ok=True)
        say(f"{ckpt}: int8 text tower not made ({type(e).__name__}: {str(e)[:120]})")
        return {"file": None, "passed": False, "error": f"{type(e).__name__}"}
    fid["file"] = target.name if fid["passed"] else None
    fid["recipe"] = "onnxruntime quantize_dynamic, MatMul/Gemm weights uint8 per channel, activations dynamic"
    say(f"{ckpt}: int8 text tower maps r min {fid['min_r']:.6f}: {'kept' if fid['passed'] else 'not used'}")
    if not fid["passed"]:
        target.unlink(missing_ok=True)
    return fid


def export_or_warn(ckpt, say: Optional[Callable[[str], None]] = None, **kw) -> Optional[Dict[str, Any]]:
    """:func:`export_onnx` for writers (trainer, import): a failed export is a warning, never a failed command (the
    viewer then grounds with torch)."""
    try:
        return export_onnx(ckpt, say=say, **kw)
    except ImportError as e:
        (say or log.warning)(f"{ckpt}: no ONNX export ({e}); the viewer will use torch")
    except Exception as e:  # noqa: BLE001 - an exporter limitation must not lose a trained checkpoint
        (say or log.warning)(f"{ckpt}: ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                             "the viewer will use torch")
    return None


def export_after_write(ckpt, enabled: bool = True, say: Optional[Callable[[str], None]] = None):
    """The hook of the commands that write a checkpoint (``elvis train``, ``elvis import``): export unless
    ``--no-onnx`` or ``ELVIS_ONNX_EXPORT=0`` (the test suite sets it: its many tiny checkpoints are never viewed).
    Returns the manifest, or None when skipped or failed (a warning; the viewer then uses torch)."""
    if not enabled or os.environ.get("ELVIS_ONNX_EXPORT", "1").strip() == "0":
        return None
    return export_or_warn(ckpt, say=say)


def summary_lines(manifest: Dict[str, Any]) -> List[str]:
    fid = manifest.get("fidelity") or {}
    lines = [f"fidelity: {'passed' if fid.get('passed') else 'FAILED'} (min r {fid.get('min_r', float('nan')):.6f} "
             f">= {MIN_PEARSON} over {fid.get('n_maps', 0)} maps)"]
    q = manifest.get("text_int8") or {}
    if q:
        lines.append(f"int8 text tower: {'used' if q.get('passed') else 'not used'}"
                     + (f" (min r {q['min_r']:.6f})" if "min_r" in q else ""))
    return lines
