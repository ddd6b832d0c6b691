"""`ViewerSession`: the viewer's state and work, headless (a QObject without widgets; napari's ``ViewerModel``).

It holds the study list, the current image and report, the phrase (and how the report asserts it), the two model
slots and the request generations; it runs every slow call on the thread pool and emits signals. Widgets render it
(:mod:`elvis_viewer.main_window`) and tests drive it without a window (``tests/viewer/test_session.py``).

Latency design: when an image and its report open, each loaded engine embeds the image and encodes the report's
sentences and annotated phrases in ONE batched text-encoder call (worker). Selecting one of them then costs a
matrix-vector product, done on the GUI thread by ``GroundingEngine.try_ground_cached`` (non-blocking; a miss goes to
a worker). torch and transformers are imported only by the model-loading worker.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from PySide6 import QtCore

from elvis_core.errors import ElvisError
from elvis_viewer import workers
from elvis_viewer.session_tasks import (encode_typed, ground, image_and_report, load_engine, prepare_engine,
                                        read_report, report_beside, scan_folder, thumbnail_of,
                                        thumbnails)


def err_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ElvisError) else f"{type(exc).__name__}: {exc}"


def _is_report_file(path: str) -> bool:
    """A .txt report or a report stored as a DICOM SR (header-only check)."""
    if path.lower().endswith(".txt"):
        return True
    from elvis_core.io.sr_report import is_text_report_sr

    return bool(is_text_report_sr(path))


def _label_from_image(entry: "ImageEntry", rad) -> None:
    """A file opened on its own is labelled like a scanned one: "PA name.dcm 1841x1955" under "folder [CR]"."""
    view, modality = rad.meta.get("ViewPosition"), rad.meta.get("Modality")
    entry.label = f"{view + ' ' if view else ''}{os.path.basename(entry.path)} {rad.cols}x{rad.rows}"
    if modality and not entry.study_label.endswith("]"):
        entry.study_label = f"{entry.study_label} [{modality}]"


@dataclass
class ModelSlot:
    """One checkpoint (slot 0 = main, slot 1 = compare)."""

    engine: Any = None
    name: str = ""
    path: Optional[str] = None
    loading: bool = False
    error: str = ""
    gmap: Any = None
    hash: str = ""

    @property
    def provenance(self) -> dict:
        return getattr(self.engine, "provenance", None) or {}


@dataclass
class ImageEntry:
    path: str
    label: str
    study_key: str
    report_path: Optional[str] = None
    study_label: str = ""


@dataclass
class PhraseState:
    text: str = ""
    span: Optional[Tuple[int, int]] = None
    assertion: Any = None  # elvis_core.io.negation.Assertion
    t0: float = 0.0
    gens: Dict[int, int] = field(default_factory=dict)


class ViewerSession(QtCore.QObject):
    studiesChanged = QtCore.Signal()
    problemAdded = QtCore.Signal(str, str)  # path, one-line message
    message = QtCore.Signal(str, bool)  # text, show as banner
    scanProgress = QtCore.Signal(int, int, str)  # done, total, text
    scanFinished = QtCore.Signal()
    imageChanged = QtCore.Signal(str)  # path of the image now current (rad + report set)
    reportChanged = QtCore.Signal()
    annotationsChanged = QtCore.Signal()
    phraseChanged = QtCore.Signal(str)
    mapReady = QtCore.Signal(int)  # slot whose map just arrived (slot.gmap)
    modelChanged = QtCore.Signal(int)  # slot loading / ready / failed
    provenanceChanged = QtCore.Signal(str)  # banner text ("" = none)
    compareChanged = QtCore.Signal(bool)
    thumbnailReady = QtCore.Signal(str, object)  # path, uint8 array

    def __init__(self, parent=None):
        super().__init__(parent)
        self.entries: List[ImageEntry] = []
        self._index: Dict[str, int] = {}
        self._abs: Dict[str, int] = {}  # absolute path -> index: one entry per file however it was opened
        self.problems: List[Tuple[str, str]] = []
        self.rad = None
        self.rad_path: Optional[str] = None
        self.report = None
        self.annotations = None
        self.annotations_root: Optional[str] = None
        self.phrase = PhraseState()
        self.slots = [ModelSlot(), ModelSlot()]
        self.compare = False
        self.token_mode = False
        self.last_latency_s: Optional[float] = None
        self.last_wall_s: Optional[float] = None
        self.provenance_text = ""
        self._pending = 0
        self._image_gen = workers.Generation()
        self._ground_gen = workers.Generation()
        self._thumb_gen = workers.Generation()
        self._scan_task: Optional[workers.Task] = None
        self._cache: "OrderedDict[str, tuple]" = OrderedDict()  # path -> (rad, report, report_err): preloaded
        # a long task (thumbnails, a model load) must not queue a grounding
        workers.pool().setMaxThreadCount(max(4, workers.pool().maxThreadCount()))

    # ------------------------------------------------------------------------------------------------- tasks
    def run(self, fn, *args, on_result=None, on_error=None, **kw) -> workers.Task:
        """Run ``fn`` in a worker; its callbacks are dropped when they arrive after this session was deleted (a
        result delivered while the window closes must not emit from a deleted QObject)."""
        self._pending += 1

        def done():
            self._pending -= 1
        return workers.run_task(fn, *args, on_result=workers.while_alive(self, on_result),
                                on_error=workers.while_alive(self, on_error), on_finished=done, **kw)

    def busy(self) -> bool:
        return self._pending > 0

    def problem(self, path: str, msg: str, banner: bool = True) -> None:
        self.problems.append((path, msg))
        self.problemAdded.emit(path, msg)
        self.message.emit(msg, banner)

    # ---------------------------------------------------------------------------------------------- studies
    def entry(self, path: str) -> Optional[ImageEntry]:
        i = self._index.get(path)
        return None if i is None else self.entries[i]

    def _add_entries(self, entries: Sequence[ImageEntry]) -> int:
        """Append entries not listed yet (reopening a file or folder never duplicates); returns how many."""
        n = 0
        for e in entries:
            key = os.path.abspath(e.path)
            if key in self._abs:
                continue
            self._index[e.path] = self._abs[key] = len(self.entries)
            self.entries.append(e)
            n += 1
        if n:
            self.studiesChanged.emit()
        return n

    def _find_abs(self, abspath: str) -> Optional[int]:
        return self._abs.get(abspath)

    def open_paths(self, paths: Sequence[str]) -> None:
        paths = [os.fspath(p) for p in paths]
        files = [p for p in paths if os.path.isfile(p) and not p.lower().endswith(".csv")]
        reports = [p for p in files if _is_report_file(p)]
        # one report opened together with image files (`elvis-viewer img.dcm report.txt`, a drop): it is theirs
        with_report = reports[0] if len(reports) == 1 and len(files) > 1 else None
        for p in paths:
            if os.path.isdir(p):
                self.open_folder(p)
            elif p == with_report:
                continue
            elif os.path.exists(p):
                self.open_file(p, report_path=with_report)
            else:
                self.problem(p, f"{p}: no such file or folder")

    def open_file(self, path: str, report_path: Optional[str] = None) -> None:
        """Open one file: annotations (.csv), a report (.txt or a report SR: the current image's report), or an
        image (listed once it reads), whose report is ``report_path`` or the one beside its study folder."""
        path = os.fspath(path)
        if path.lower().endswith(".csv"):
            self.load_annotations(path)
            return
        if _is_report_file(path):
            self.run(read_report, path, on_result=self._set_report,
                     on_error=lambda e: self.problem(path, err_text(e)))
            return
        known = self._find_abs(os.path.abspath(path))
        if known is not None:  # already listed: just show it
            self.select_image(self.entries[known].path)
            return
        # listed only once it reads: a broken file goes to Problems, never into the study list
        self.select_image(path, entry=ImageEntry(path=path, label=os.path.basename(path), study_key=path,
                                                 report_path=report_path or report_beside(path),
                                                 study_label=os.path.basename(os.path.dirname(path))))

    def open_folder(self, root: str) -> None:
        root = os.fspath(root)
        self.cancel_scan()
        self.scanProgress.emit(0, 0, f"Scanning {root} …")
        self._scan_task = self.run(scan_folder, root, on_result=self._on_scan,
                                   on_error=lambda e: (self.problem(root, err_text(e)), self.scanFinished.emit()),
                                   wants_progress=True)
        self._scan_task.signals.progress.connect(self.scanProgress, QtCore.Qt.ConnectionType.QueuedConnection)

    def cancel_scan(self) -> None:
        if self._scan_task is not None and not self._scan_task.done.is_set():
            self._scan_task.cancel()
            self.message.emit("Scan cancelled", False)

    def _on_scan(self, result) -> None:
        entries, errors, cancelled = result
        for path, msg in errors:
            self.problems.append((path, msg))
            self.problemAdded.emit(path, msg)
        before = len(self.entries)
        n_new = self._add_entries([ImageEntry(**e) for e in entries])
        studies = len({e["study_key"] for e in entries})
        msg = f"{studies} studies, {len(entries)} images" + (f", {len(errors)} problem files" if errors else "")
        if n_new < len(entries):
            msg += f" ({len(entries) - n_new} already listed)"
        self.message.emit(msg + (" (scan cancelled)" if cancelled else ""), False)
        self.start_thumbnails(self.entries[before:])
        if self.rad is None and self.entries:
            self.select_image(self.entries[before if before < len(self.entries) else 0].path)
        self.scanFinished.emit()

    def start_thumbnails(self, entries: Sequence[ImageEntry], limit: int = 300, chunk: int = 16) -> None:
        gen = self._thumb_gen.next()
        paths = [e.path for e in entries][:limit]
        chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]

        def deliver(result, k):
            if not self._thumb_gen.is_current(gen):
                return
            for p, arr in result:
                if arr is not None:
                    self.thumbnailReady.emit(p, arr)
            start(k + 1)

        def start(k):
            if k < len(chunks) and self._thumb_gen.is_current(gen):
                self.run(thumbnails, chunks[k], on_result=lambda r, k=k: deliver(r, k))
        start(0)

    # ---------------------------------------------------------------------------------------------- browsing
    def current_index(self) -> int:
        return self._index.get(self.rad_path, -1) if self.rad_path else -1

    def step_image(self, delta: int) -> Optional[str]:
        """Open the next (delta > 0) or previous image of the flat list; returns its path (None at the end)."""
        if not self.entries:
            return None
        i = self.current_index()
        j = (0 if delta > 0 else len(self.entries) - 1) if i < 0 else i + delta
        if not 0 <= j < len(self.entries):
            return None
        self.select_image(self.entries[j].path)
        return self.entries[j].path

    def step_study(self, delta: int) -> Optional[str]:
        """Open the first image of the next / previous study."""
        if not self.entries:
            return None
        i = max(self.current_index(), 0)
        key = self.entries[i].study_key
        rng = range(i + 1, len(self.entries)) if delta > 0 else range(i - 1, -1, -1)
        for j in rng:
            if self.entries[j].study_key != key:
                k = j
                if delta < 0:  # first image of that study
                    while k > 0 and self.entries[k - 1].study_key == self.entries[j].study_key:
                        k -= 1
                self.select_image(self.entries[k].path)
                return self.entries[k].path
        return None

    # ------------------------------------------------------------------------------------------------- image
    def select_image(self, path: str, entry: Optional[ImageEntry] = None) -> None:
        gen = self._image_gen.next()
        e = entry or self.entry(path)
        report_path = e.report_path if e else None
        if path in self._cache:  # preloaded: no worker round trip
            self._cache.move_to_end(path)
            self._on_read(gen, path, entry, self._cache[path])
            return
        self.message.emit(f"Reading {os.path.basename(path)} …", False)
        # a newly opened file (``entry``) is reported even when a later request superseded it (several files opened)
        self.run(image_and_report, path, report_path, on_result=lambda r: self._on_read(gen, path, entry, r),
                 on_error=lambda exc: (entry is not None or self._image_gen.is_current(gen))
                 and self.problem(path, err_text(exc)))

    def _on_read(self, gen, path, entry, result) -> None:
        current = self._image_gen.is_current(gen)
        if not current and entry is None:
            return
        self._remember(path, result)
        rad, report, report_err = result
        if entry is not None and self._find_abs(os.path.abspath(path)) is None:
            _label_from_image(entry, rad)
        if entry is not None and self._add_entries([entry]):
            # a file opened on its own (no folder scan), listed once it reads (also when another file opened with
            # it is the one shown); its thumbnail from the image just read
            self.run(thumbnail_of, rad, on_result=lambda arr, p=path: self.thumbnailReady.emit(p, arr),
                     on_error=lambda e: None)
        if not current:
            return
        self.rad, self.rad_path = rad, path
        for s in self.slots:
            s.gmap = None
        if report_err:
            self.problem(path, report_err, banner=False)
        self.report = report
        self.message.emit("; ".join(rad.warnings) if rad.warnings else "", False)
        self._update_provenance()
        self.reportChanged.emit()  # before imageChanged: listeners of imageChanged may select a report span
        self.imageChanged.emit(path)
        for k in (0, 1):
            self._prepare(k)
        if self.phrase.text:
            self.ground_phrase(self.phrase.text, self._span_in_report(self.phrase.text))
        QtCore.QTimer.singleShot(150, self._preload_next)  # after this image is drawn (no GIL contention)

    def _remember(self, path, result) -> None:
        self._cache[path] = result
        self._cache.move_to_end(path)
        while len(self._cache) > 3:
            self._cache.popitem(last=False)

    def _preload_next(self) -> None:
        i = self.current_index()
        if 0 <= i < len(self.entries) - 1:
            nxt = self.entries[i + 1]
            if nxt.path not in self._cache:
                self.run(image_and_report, nxt.path, nxt.report_path,
                         on_result=lambda r, p=nxt.path: self._remember(p, r), on_error=lambda e: None)

    def _set_report(self, report) -> None:
        self.report = report
        self.reportChanged.emit()
        for k in (0, 1):
            self._prepare(k)

    def _span_in_report(self, text: str) -> Optional[Tuple[int, int]]:
        return self.report.find(text) if self.report is not None else None

    # --------------------------------------------------------------------------------------------- annotations
    def load_annotations(self, path: str, images_root: Optional[str] = None) -> None:
        from elvis_core.io.annotations import read_ms_cxr_csv

        self.annotations_root = images_root
        try:
            aset = read_ms_cxr_csv(path)
        except ElvisError as e:
            self.problem(path, str(e))
            return
        self.annotations = aset
        for line, msg in aset.errors:
            self.problem(path, f"{path}:{line}: {msg}", banner=False)
        self.message.emit(f"{len(aset)} annotated phrases from {os.path.basename(path)}", False)
        self.annotationsChanged.emit()
        for k in (0, 1):
            self._prepare(k)

    def annotated_phrases(self, path: Optional[str] = None) -> list:
        path = path or self.rad_path
        if self.annotations is None or not path:
            return []
        try:
            return self.annotations.for_path(str(path).replace(os.sep, "/"))
        except Exception:
            return []

    def boxes_for_phrase(self) -> Tuple[list, str]:
        """[(Box, label)] of the current phrase on the current image (rescaled to the image), and a note."""
        from elvis_core.io.annotations import rescale_boxes

        out, note = [], ""
        if not self.phrase.text or self.rad is None:
            return out, note
        want = " ".join(self.phrase.text.lower().split())
        for p in self.annotated_phrases():
            if " ".join(p.label_text.lower().split()) == want:
                bxs, n = rescale_boxes(p, self.rad.shape)
                note = n or note
                out += [(b, p.category or p.label_text) for b in bxs]
        return out, note

    def report_phrases(self) -> List[str]:
        """What a reader will likely click: the report's sentences and the image's annotated phrases."""
        out = []
        if self.report is not None:
            out += [" ".join(self.report.sentence_text(s).split()) for s in self.report.sentences]
        out += [" ".join(p.label_text.split()) for p in self.annotated_phrases()]
        return [p for p in out if p]

    # ------------------------------------------------------------------------------------------------- models
    def load_checkpoint(self, path: Optional[str], slot: int = 0, model=None, name: Optional[str] = None,
                        factory: Optional[Callable[[], Any]] = None) -> None:
        """Load a checkpoint directory (or wrap an in-memory ``model``, or ``factory()`` run in the worker) into
        slot 0 (main) or 1 (compare). torch is imported by the worker, never at start-up."""
        s = self.slots[slot]
        s.loading, s.error, s.engine, s.gmap, s.path = True, "", None, None, path
        s.name = name or (os.path.basename(os.path.normpath(path)) if path else "in-memory model")
        self.modelChanged.emit(slot)
        self.message.emit(f"Loading checkpoint {s.name} …", False)
        self.run(load_engine, path, model, factory, on_result=lambda e: self._on_engine(slot, e),
                 on_error=lambda e: self._on_engine_error(slot, e))

    def _on_engine(self, slot: int, engine) -> None:
        from elvis_viewer.session_tasks import limit_torch_threads

        limit_torch_threads()  # the GUI thread runs the cached matrix-vector products (try_ground_cached)
        s = self.slots[slot]
        s.engine, s.loading, s.hash = engine, False, str(engine.checkpoint_hash)
        self.modelChanged.emit(slot)
        self.message.emit(f"Checkpoint {s.name} ready ({s.hash[:12]})", False)
        self._update_provenance()
        self._prepare(slot)
        if self.rad is not None and self.phrase.text:
            self.ground_phrase(self.phrase.text, self.phrase.span)

    def _on_engine_error(self, slot: int, exc) -> None:
        s = self.slots[slot]
        s.loading, s.error = False, err_text(exc)
        self.modelChanged.emit(slot)
        self.problem(s.path or "checkpoint", s.error)

    def _prepare(self, slot: int) -> None:
        """Embed the current image and encode the report's phrases in the background (one batched call)."""
        eng = self.slots[slot].engine
        if eng is None or self.rad is None:
            return
        self.run(prepare_engine, eng, self.rad, self.report_phrases(),
                 on_error=lambda e: self.message.emit(err_text(e), False))

    def preencode(self, text: str) -> None:
        """Encode a phrase being typed, in the background (the line edit calls this after a short pause), so that
        Enter finds it cached. At most one such task runs; the latest text wins."""
        text = " ".join(str(text).split())
        if not text or self.rad is None:
            return
        self._typed = text
        if getattr(self, "_typing_task", False):
            return
        engines = [self.slots[k].engine for k in self.active_slots()]
        engines = [e for e in engines if not e.has_phrase(text)]
        if not engines:
            return
        self._typing_task = True

        def done(*_):
            self._typing_task = False
            if self._typed != text:
                self.preencode(self._typed)
        self.run(encode_typed, engines, text, on_result=done, on_error=done)

    def active_slots(self) -> List[int]:
        return [k for k in (0, 1) if self.slots[k].engine is not None and (k == 0 or self.compare)]

    def set_compare(self, on: bool) -> None:
        on = bool(on)
        if on == self.compare:
            return
        self.compare = on
        self.compareChanged.emit(on)
        self._update_provenance()  # the compare model's provenance counts only while it is shown
        if on and self.slots[1].engine is None and not self.slots[1].loading:
            self.message.emit("Compare mode: open a second checkpoint (File → Open compare checkpoint, or "
                              "--compare DIR)", False)
        if on and self.phrase.text:
            self.ground_phrase(self.phrase.text, self.phrase.span)

    def set_token_mode(self, on: bool) -> None:
        self.token_mode = bool(on)
        if self.phrase.text:
            self.ground_phrase(self.phrase.text, self.phrase.span)

    def _update_provenance(self) -> None:
        from elvis_core.grounding.provenance import provenance_warning

        texts = []
        for k in (0, 1):
            s = self.slots[k]
            if s.engine is not None and (k == 0 or self.compare):
                t = provenance_warning(s.provenance, self.rad, s.name)
                if t:
                    texts.append(t)
        text = " ".join(texts)
        if text != self.provenance_text:
            self.provenance_text = text
            self.provenanceChanged.emit(text)

    # ---------------------------------------------------------------------------------------------- grounding
    def ground_phrase(self, phrase: str, span: Optional[Tuple[int, int]] = None) -> None:
        """Ground ``phrase`` on the current image with every active model (the newest request wins)."""
        from elvis_core.io.negation import assertion_of, phrase_assertion

        text = " ".join(str(phrase).split())
        if not text:
            return
        if span is not None and self.report is not None:
            assertion = assertion_of(self.report.text, *span)
        else:
            assertion = phrase_assertion(text, self.report.text if self.report is not None else None)
        self.phrase = PhraseState(text=text, span=span, assertion=assertion, t0=time.perf_counter())
        self.phraseChanged.emit(text)
        if self.rad is None:
            self.message.emit("Open an image first", False)
            return
        active = self.active_slots()
        if not active:
            if not any(s.loading for s in self.slots):
                self.message.emit("No checkpoint loaded: File → Open checkpoint (or --checkpoint DIR) to see maps",
                                  False)
            return
        gen = self._ground_gen.next()
        rad, tokens = self.rad, self.token_mode
        for k in active:
            eng = self.slots[k].engine
            if not tokens:
                gm = eng.try_ground_cached(rad, text)  # a matrix-vector product when both are cached
                if gm is not None:
                    self._on_map(gen, k, gm)
                    continue
            self.run(ground, eng, rad, text, tokens, on_result=lambda g, k=k: self._on_map(gen, k, g),
                     on_error=lambda e: self._ground_gen.is_current(gen) and self.message.emit(err_text(e), False))

    def _on_map(self, gen: int, slot: int, gmap) -> None:
        if not self._ground_gen.is_current(gen):
            return  # superseded by a newer selection
        self.slots[slot].gmap = gmap
        self.last_latency_s = float(gmap.latency_s)
        self.last_wall_s = time.perf_counter() - self.phrase.t0
        if gmap.warnings:
            self.message.emit("; ".join(gmap.warnings), False)
        self.mapReady.emit(slot)

    def shared_levels(self) -> Optional[Tuple[float, float]]:
        """±max |similarity| over the maps on screen (compare mode's shared scale)."""
        import numpy as np

        maps = [self.slots[k].gmap for k in self.active_slots() if self.slots[k].gmap is not None]
        if not maps:
            return None
        m = max(float(np.nanmax(np.abs(np.asarray(g.similarity)))) for g in maps)
        m = max(m, 1e-6)
        return -m, m


