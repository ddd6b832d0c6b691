"""Worker functions of :class:`elvis_viewer.session.ViewerSession` (run on the thread pool; no Qt in here).

torch / transformers are imported only inside :func:`load_engine`, i.e. in a worker when a model is needed, and
only when the checkpoint carries no usable ONNX export: with one (``elvis export-onnx``; the shipped demo model has
it) the engine is :class:`~elvis_core.grounding.onnx_engine.OnnxGroundingEngine` (ONNX Runtime + tokenizers, no
torch at all), which gives the first map seconds sooner and holds the GIL far less while it loads (issue 25).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from typing import Dict, List, Optional

import numpy as np

from elvis_core.errors import ElvisError


def read_image(path: str):
    from elvis_core.io.images import read_image as _read

    return _read(path)


def read_report(path: str):
    from elvis_core.io.report import read_report as _read

    return _read(path)


def image_and_report(path: str, report_path: Optional[str]):
    """(Radiograph, Report | None, report error | None); the display is prepared here, off the GUI thread."""
    rad = read_image(path)
    from elvis_viewer.view_items import prepare_display

    prepare_display(rad)
    report, err = None, None
    if report_path:
        try:
            report = read_report(report_path)
        except ElvisError as e:
            err = str(e)
    return rad, report, err


def thumbnail_of(rad, size: int = 96) -> np.ndarray:
    """A small uint8 picture of a Radiograph (its default window / VOI LUT), about ``size`` pixels on the long side."""
    from elvis_core.io.display import to_uint8
    from elvis_core.io.radiograph import Radiograph

    step = max(1, int(max(rad.shape) // size))
    small = Radiograph(pixels=np.ascontiguousarray(rad.pixels[::step, ::step]), windows=rad.windows,
                       voi_lut=rad.voi_lut)
    return np.ascontiguousarray(to_uint8(small, use_voi_lut=not rad.windows))


def thumbnails(paths: List[str], size: int = 96):
    out = []
    for p in paths:
        try:
            out.append((p, thumbnail_of(read_image(p), size)))
        except Exception:
            out.append((p, None))
    return out


def torch_threads() -> int:
    """Intra-op threads for interactive inference: ``ELVIS_TORCH_THREADS``, else half the cores (1..4).

    Measured on this project's 2 shared cores: with 2 threads a demo-model phrase took 570 ms (p50) instead of
    14 ms with 1, and BERT-base 1030 ms instead of 92 ms: when other processes hold a core, every parallel op waits
    at its barrier. A viewer shares the machine with everything else, so it keeps to half of it."""
    env = os.environ.get("ELVIS_TORCH_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def limit_torch_threads() -> None:
    """Apply :func:`torch_threads` in THIS thread (OpenMP's thread count is per calling thread): every worker
    function that runs the model calls it first. Nothing to do while torch is not imported (the ONNX engine sets
    its own thread count): importing it here would cost the seconds the ONNX path saves."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "get_num_threads"):
        return

    n = torch_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def ground(engine, rad, phrase: str, tokens: bool):
    limit_torch_threads()
    return engine.ground_image(rad, phrase, tokens=tokens)


_PRELOADED: Dict[str, Future] = {}
_PRELOAD_LOCK = threading.Lock()


def preload_fast_engine(path: str, after: Optional[threading.Thread] = None) -> None:
    """Start building the ONNX Runtime engine of the checkpoint ``path`` in a daemon thread (at launch, while Qt
    and the window come up; after the thread ``after``, which imports onnxruntime); :func:`load_engine` for the
    same path takes it instead of building another. A checkpoint without a usable export preloads ``None`` (torch
    is then loaded by the worker as before)."""
    key = os.path.realpath(path)
    with _PRELOAD_LOCK:
        if key in _PRELOADED:
            return
        fut: Future = Future()
        _PRELOADED[key] = fut

    def run():
        try:
            if after is not None:
                after.join()
            from elvis_core.grounding.onnx_engine import load_fast_engine

            fut.set_result(load_fast_engine(path))
        except BaseException:  # noqa: BLE001 - the worker loads it again and reports what is wrong
            fut.set_result(None)
    threading.Thread(target=run, name="elvis-preload-engine", daemon=True).start()


def _take_preloaded(path: str):
    with _PRELOAD_LOCK:
        fut = _PRELOADED.pop(os.path.realpath(path), None)
    return None if fut is None else fut.result(timeout=900)


def load_engine(path: Optional[str], model=None, factory=None):
    """Build, warm up and hash an engine: the checkpoint's ONNX export when it is current and checked
    (:func:`~elvis_core.grounding.onnx_engine.load_fast_engine`), else a torch GroundingEngine (imports torch on
    first use, in this worker)."""
    if path is not None and model is None and factory is None and not os.environ.get("ELVIS_NO_ONNX"):
        from elvis_core.grounding.onnx_engine import load_fast_engine

        engine = _take_preloaded(path) or load_fast_engine(path)
        if engine is not None:
            return engine
    import torch  # noqa: F401 - first, so that limit_torch_threads applies to this worker

    limit_torch_threads()
    from elvis_core.grounding.engine import GroundingEngine

    if factory is not None:
        model = factory()
    return GroundingEngine.load(model if model is not None else path)


def prepare_engine(engine, rad, phrases: List[str]) -> int:
    """Embed the image, then encode the phrases in one batched text-encoder call."""
    limit_torch_threads()
    engine.embed(rad)
    return engine.encode_phrases(phrases) if phrases else 0


def encode_typed(engines, text: str) -> None:
    """Text-encoder pass for a phrase being typed (fills each engine's text cache)."""
    limit_torch_threads()
    for e in engines:
        e.encode_phrases([text])


def scan_folder(root: str, progress=None, cancel=None):
    """A folder's images as a flat list of ImageEntry dicts in study order, the problem files, cancelled."""
    from elvis_core.io.studies import scan

    res = scan(root, progress=progress, cancel=cancel)
    entries = []
    for st in res.studies:
        mods = sorted({(im.modality or se.modality) for se in st.series for im in se.images} - {None, ""})
        study_label = os.path.basename(str(st.key)) + (f" [{','.join(mods)}]" if mods else "") + \
            ("" if st.report_path else " (no report)")
        for se in st.series:
            for im in se.images:
                view = f"{im.view_position} " if im.view_position else ""
                size = f" {im.cols}x{im.rows}" if im.rows and im.cols else ""
                entries.append({"path": im.path, "label": f"{view}{os.path.basename(im.path)}{size}",
                                "study_key": str(st.key), "report_path": st.report_path,
                                "study_label": study_label, "pairing": st.report_pairing})
    errors = [(p, m if p in m else f"{p}: {m}") for p, m in res.errors]
    errors += [(p, f"{p}: skipped ({m})") for p, m in getattr(res, "skipped", [])]
    errors += list(res.unpaired)  # reports tied to no study: listed, shown with none
    return entries, errors, bool(res.cancelled)
