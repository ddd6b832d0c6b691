"""`ViewerSession`: the viewer's state and work, headless (a QObject without widgets; napari's ``ViewerModel``).

It holds the study list, the display record (image, report and how it was paired, keyed by the item it belongs to:
:mod:`elvis_viewer.display_record`), the phrase (and how the report asserts it), the two model slots (each map keyed
by its item and checkpoint) and the request generations; it runs every slow call on the thread pool and emits
signals. Files and reports are opened by :mod:`elvis_viewer.session_files`. Widgets render it
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
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from PySide6 import QtCore

from elvis_core.errors import ElvisError
from elvis_viewer import workers
from elvis_viewer.display_record import (FAILED, DisplayRecord, PhraseState, StudyKey,
                                         carried_phrase)
from elvis_viewer.session_files import FilesMixin, ImageEntry, _is_report_file, err_text  # noqa: F401 (re-exported)
from elvis_viewer.session_tasks import (encode_typed, ground, image_and_report, load_engine, prepare_engine,
                                        scan_folder, thumbnail_of, thumbnails)


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
    #: the item and checkpoint the map on screen was made for (the display invariant)
    map_key: Optional[StudyKey] = None
    map_hash: str = ""
    load_gen: int = 0  # the latest load into this slot (an older load finishing later is dropped)

    @property
    def provenance(self) -> dict:
        return getattr(self.engine, "provenance", None) or {}


class ViewerSession(FilesMixin, QtCore.QObject):
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
    displayChanged = QtCore.Signal()  # the display record's state: loading / shown / failed (display.title())

    def __init__(self, parent=None):
        super().__init__(parent)
        self.entries: List[ImageEntry] = []
        self._index: Dict[str, int] = {}
        self._abs: Dict[str, int] = {}  # absolute path -> index: one entry per file however it was opened
        self.problems: List[Tuple[str, str]] = []
        self.display = DisplayRecord()  # image, report, pairing: one record keyed by its item (display_record.py)
        self.phrase_pinned = False  # the pin toggle: keep the phrase when the study changes
        self._target: Optional[str] = None  # the image last asked for (navigation steps from it while it loads)
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
        # (path, report path) -> (rad, report, report_err): preloaded
        self._cache: "OrderedDict[tuple, tuple]" = OrderedDict()
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
        for path, msg in errors:  # unreadable files and unpaired reports
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
        if self.display.key is None and self._target is None and self.entries:
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
    @property
    def rad(self):
        return self.display.rad

    @property
    def rad_path(self) -> Optional[str]:
        """The image on screen (None while nothing is, or its read failed)."""
        return self.display.key.image if self.display.rad is not None else None

    @property
    def report(self):
        return self.display.report

    def current_index(self) -> int:
        """The item asked for last (being read, shown or failed): navigation steps from it."""
        path = self._target or (self.display.key.image if self.display.key else None)
        return self._index.get(path, -1) if path else -1

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
        self._ground_gen.next()  # a map still computing for the item on screen is not wanted any more
        e = entry or self.entry(path)
        key = e.key() if e else StudyKey(path, path)
        self._target = path
        ck = (path, e.report_path if e else None)
        if ck in self._cache:  # preloaded: no worker round trip
            self._cache.move_to_end(ck)
            self._on_read(gen, path, entry, self._cache[ck])
            return
        self.display.start_loading(key)  # the item on screen is dimmed and labelled "loading", not shown as current
        self.displayChanged.emit()
        self.message.emit(f"Reading {os.path.basename(path)} …", False)
        self.run(image_and_report, path, ck[1], on_result=lambda r: self._on_read(gen, path, entry, r),
                 on_error=lambda exc: self._on_read_error(gen, path, entry, exc))

    def _on_read_error(self, gen, path, entry, exc) -> None:
        """A failed read: listed in Problems; when it was the item asked for, the screen is cleared and says
        "cannot display FILE: reason" (never the previous patient's film under the new name)."""
        current = self._image_gen.is_current(gen)
        msg = err_text(exc)
        if entry is not None or current:
            self.problem(path, msg, banner=False)
        if not current:
            return
        e = self.entry(path) or entry
        key = e.key() if e else StudyKey(path, path)
        for sl in self.slots:
            sl.gmap, sl.map_key = None, None
        reason = exc.problem if isinstance(exc, ElvisError) else msg
        self.display.fail(key, f"cannot display {os.path.basename(path)}: {reason}")
        self._retarget_phrase(key, same_study=False)  # after fail(): a pinned phrase is checked against no report
        self._target = None
        self.message.emit(self.display.error, True)
        self._update_provenance()
        self.reportChanged.emit()
        self.phraseChanged.emit(self.phrase.text)
        self.displayChanged.emit()

    def _on_read(self, gen, path, entry, result) -> None:
        current = self._image_gen.is_current(gen)
        if not current and entry is None:
            return
        e0 = self.entry(path) or entry
        self._remember((path, e0.report_path if e0 else None), result)
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
        e = self.entry(path) or entry
        key = e.key() if e else StudyKey(path, path)
        old, old_report = self.display.key, self.display.report
        # the phrase (a span of the report) stays only on another image of the same study with the same report
        same_study = (old is not None and old.study == key.study and self.display.rad is not None
                      and getattr(old_report, "source_path", None) == getattr(report, "source_path", None))
        for s in self.slots:
            s.gmap, s.map_key = None, None
        self.display.show(key, rad, report, e.pairing if e else "")
        self._target = None
        phrase_changed = self._retarget_phrase(key, same_study)
        if report_err:
            self.problem(path, report_err, banner=False)
        self.message.emit("; ".join(rad.warnings) if rad.warnings else "", False)
        self._update_provenance()
        self.reportChanged.emit()  # before imageChanged: listeners of imageChanged may select a report span
        self.imageChanged.emit(path)
        self.displayChanged.emit()
        if phrase_changed:
            self.phraseChanged.emit(self.phrase.text)
        for k in (0, 1):
            self._prepare(k)
        if self.phrase.text:
            self.ground_phrase(self.phrase.text, self.phrase.span, carried=self.phrase.carried)
        QtCore.QTimer.singleShot(150, self._preload_next)  # after this image is drawn (no GIL contention)

    def _retarget_phrase(self, key: StudyKey, same_study: bool) -> bool:
        """The phrase follows its study: kept (re-keyed) on another image of the same study; on another study it
        is cleared, unless pinned: then it is carried as "typed, not from this report", its negation checked
        against the new report. Returns True when the phrase changed."""
        p = self.phrase
        if same_study or not p.text:
            p.key = key
            return False
        if p.key is None and not p.origin:  # typed before any image was open: it is this first image's phrase
            from elvis_core.io.negation import phrase_assertion

            rep = self.display.report
            self.phrase = PhraseState(text=p.text, key=key, origin=key.study, pinned=p.pinned, t0=time.perf_counter(),
                                      assertion=phrase_assertion(p.text, rep.text if rep is not None else None))
            return True
        if self.phrase_pinned:
            self.phrase = carried_phrase(p.text, key, self.display.report, p.origin)
        else:
            self.phrase = PhraseState(key=key)
        return True

    def set_phrase_pinned(self, on: bool) -> None:
        """The pin toggle: keep the phrase (as typed text) when the study changes."""
        self.phrase_pinned = bool(on)
        self.phrase.pinned = self.phrase_pinned

    def _remember(self, ck, result) -> None:
        self._cache[ck] = result
        self._cache.move_to_end(ck)
        while len(self._cache) > 3:
            self._cache.popitem(last=False)

    def _preload_next(self) -> None:
        i = self.current_index()
        if 0 <= i < len(self.entries) - 1:
            nxt = self.entries[i + 1]
            ck = (nxt.path, nxt.report_path)
            if ck not in self._cache:
                self.run(image_and_report, nxt.path, nxt.report_path,
                         on_result=lambda r, ck=ck: self._remember(ck, r), on_error=lambda e: None)

    def _span_in_report(self, text: str) -> Optional[Tuple[int, int]]:
        return self.report.find(text) if self.report is not None else None

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
        s.loading, s.error, s.engine, s.gmap, s.map_key, s.path = True, "", None, None, None, path
        s.hash, s.load_gen = "", s.load_gen + 1
        s.name = name or (os.path.basename(os.path.normpath(path)) if path else "in-memory model")
        self.modelChanged.emit(slot)
        self.message.emit(f"Loading checkpoint {s.name} …", False)
        gen = s.load_gen
        self.run(load_engine, path, model, factory, on_result=lambda e: self._on_engine(slot, e, gen),
                 on_error=lambda e: self._on_engine_error(slot, e, gen))

    def _on_engine(self, slot: int, engine, gen: Optional[int] = None) -> None:
        from elvis_viewer.session_tasks import limit_torch_threads

        s = self.slots[slot]
        if gen is not None and gen != s.load_gen:
            return  # a newer load into this slot supersedes this one
        limit_torch_threads()  # the GUI thread runs the cached matrix-vector products (try_ground_cached)
        s.engine, s.loading, s.hash = engine, False, str(engine.checkpoint_hash)
        s.gmap, s.map_key = None, None  # a map of the previous checkpoint is not this one's
        self.modelChanged.emit(slot)
        self.message.emit(f"Checkpoint {s.name} ready ({s.hash[:12]})", False)
        self._update_provenance()
        self._prepare(slot)
        if self.rad is not None and self.phrase.text:
            self.ground_phrase(self.phrase.text, self.phrase.span, carried=self.phrase.carried)

    def _on_engine_error(self, slot: int, exc, gen: Optional[int] = None) -> None:
        s = self.slots[slot]
        if gen is not None and gen != s.load_gen:
            return
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
            self.ground_phrase(self.phrase.text, self.phrase.span, carried=self.phrase.carried)

    def set_token_mode(self, on: bool) -> None:
        self.token_mode = bool(on)
        if self.phrase.text:
            self.ground_phrase(self.phrase.text, self.phrase.span, carried=self.phrase.carried)

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
    def ground_phrase(self, phrase: str, span: Optional[Tuple[int, int]] = None, carried: bool = False) -> None:
        """Ground ``phrase`` on the current image with every active model (the newest request wins). The phrase is
        keyed to the item on screen; ``carried``: a pinned phrase from another study ("typed, not from this
        report", its negation checked against this report)."""
        from elvis_core.io.negation import assertion_of, phrase_assertion

        text = " ".join(str(phrase).split())
        if not text:
            return
        key, report = self.display.key, self.report
        if carried:
            self.phrase = carried_phrase(text, key, report, self.phrase.origin)
        else:
            if span is not None and report is not None:
                assertion = assertion_of(report.text, *span)
            else:
                assertion = phrase_assertion(text, report.text if report is not None else None)
            self.phrase = PhraseState(text=text, span=span, assertion=assertion, t0=time.perf_counter(), key=key,
                                      pinned=self.phrase_pinned, origin=key.study if key is not None else "")
        gen = self._ground_gen.next()
        for s in self.slots:  # a map of the previous phrase is not this phrase's map
            s.gmap, s.map_key = None, None
        self.phraseChanged.emit(text)
        if self.rad is None:
            self.message.emit("Open an image first" if self.display.state != FAILED else self.display.error, False)
            return
        active = self.active_slots()
        if not active:
            if not any(s.loading for s in self.slots):
                self.message.emit("No checkpoint loaded: File → Open checkpoint (or --checkpoint DIR) to see maps",
                                  False)
            return
        rad, tokens = self.rad, self.token_mode
        for k in active:
            eng = self.slots[k].engine
            h = self.slots[k].hash
            if not tokens:
                gm = eng.try_ground_cached(rad, text)  # a matrix-vector product when both are cached
                if gm is not None:
                    self._on_map(gen, k, gm, key, h)
                    continue
            self.run(ground, eng, rad, text, tokens, on_result=lambda g, k=k, h=h: self._on_map(gen, k, g, key, h),
                     on_error=lambda e: self._ground_gen.is_current(gen) and self.message.emit(err_text(e), False))

    def _on_map(self, gen: int, slot: int, gmap, key: Optional[StudyKey] = None, ckpt: str = "") -> None:
        s = self.slots[slot]
        if not self._ground_gen.is_current(gen) or key != self.display.key or ckpt != s.hash \
                or gmap.phrase != self.phrase.text or s.engine is None:
            return  # superseded: a newer selection, another item or another checkpoint
        s.gmap, s.map_key, s.map_hash = gmap, key, ckpt
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


