"""What opened files become in a :class:`~elvis_viewer.session.ViewerSession`: images (listed once they read),
reports (paired with a study BY RULE, elvis_core.io.report_pairing; never shown with another study) and MS-CXR
annotations (boxes of the phrase on screen). A mixin of the session: it uses the session's record, signals and
workers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from elvis_core.errors import ElvisError
from elvis_core.io import report_pairing
from elvis_viewer.display_record import SHOWN, StudyKey
from elvis_viewer.session_tasks import read_report


def err_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ElvisError) else f"{type(exc).__name__}: {exc}"


@dataclass
class ImageEntry:
    path: str
    label: str
    study_key: str
    report_path: Optional[str] = None
    study_label: str = ""
    #: how report_path was paired with the study (elvis_core.io.report_pairing), "" without one
    pairing: str = ""

    def key(self) -> StudyKey:
        return StudyKey(self.path, self.study_key)


def _is_report_file(path: str) -> bool:
    """A .txt report or a report stored as a DICOM SR (header-only check)."""
    if path.lower().endswith(".txt"):
        return True
    from elvis_core.io.sr_report import is_text_report_sr

    return bool(is_text_report_sr(path))


class FilesMixin:
    """Opening files and folders, pairing reports, annotations (part of ViewerSession)."""

    def open_paths(self, paths: Sequence[str], report_path: Optional[str] = None) -> None:
        """Open files and folders. A report opened together with images (``--report TXT``, both dropped, both on the
        command line) is theirs when they are of ONE study (explicit pairing); otherwise it is listed as unpaired and
        shown with no study. A report opened on its own goes with the image on screen."""
        paths = [os.fspath(p) for p in paths]
        files = [p for p in paths if os.path.isfile(p) and not p.lower().endswith(".csv")]
        reports = [p for p in files if _is_report_file(p)] + ([os.fspath(report_path)] if report_path else [])
        images = [p for p in files if p not in reports]
        alone = not report_path and len(reports) == 1 and paths == reports  # a report opened onto the screen
        pairs: Dict[str, report_pairing.Pairing] = {}
        if len(reports) == 1 and not alone:
            pairs, err = report_pairing.explicit_pairing(images, reports[0])
            if err:
                self.problem(reports[0], err)
        elif len(reports) > 1:
            for r in reports:
                self.problem(r, f"{r}: {report_pairing.UNPAIRED}")
        for p in paths:
            if os.path.isdir(p):
                self.open_folder(p)
            elif p in reports:
                if alone:
                    self.open_file(p)
            elif os.path.exists(p):
                self.open_file(p, pairing=pairs.get(p))
            else:
                self.problem(p, f"{p}: no such file or folder")

    def open_file(self, path: str, report_path: Optional[str] = None,
                  pairing: Optional[report_pairing.Pairing] = None) -> None:
        """Open one file: annotations (.csv), a report (.txt or a report SR: paired explicitly with the image on
        screen), or an image (listed once it reads), whose report is ``pairing`` (explicit), else the one its
        layout or file stem gives (report_pairing.pair_single_file)."""
        path = os.fspath(path)
        if path.lower().endswith(".csv"):
            self.load_annotations(path)
            return
        if _is_report_file(path):
            self._open_report_onto_screen(path)
            return
        if pairing is None and report_path:
            pairing = report_pairing.Pairing(os.fspath(report_path), report_pairing.EXPLICIT)
        known = self._find_abs(os.path.abspath(path))
        if known is not None:  # already listed: just show it (with the report it was opened with, if any)
            e = self.entries[known]
            if pairing is not None:
                e.report_path, e.pairing = pairing.path, pairing.how
            self.select_image(e.path)
            return
        pairing = pairing or report_pairing.pair_single_file(path)
        # listed only once it reads: a broken file goes to Problems, never into the study list
        self.select_image(path, entry=ImageEntry(path=path, label=os.path.basename(path), study_key=path,
                                                 report_path=pairing.path if pairing else None,
                                                 study_label=os.path.basename(os.path.dirname(path)),
                                                 pairing=pairing.how if pairing else ""))

    def _open_report_onto_screen(self, path: str) -> None:
        """A report opened on its own: paired explicitly with the image on screen (it stays with that image)."""
        d = self.display
        if d.state != SHOWN or d.key is None:
            self.problem(path, f"{path}: unpaired report: no image on screen to pair it with (open the image and "
                               "the report together, or elvis-viewer IMAGE --report TXT)")
            return
        key = d.key
        self.run(read_report, path, on_result=lambda rep: self._set_report(key, path, rep),
                 on_error=lambda e: self.problem(path, err_text(e)))

    def _set_report(self, key: StudyKey, path: str, report) -> None:
        """A report opened onto the image ``key`` (explicit pairing): it stays with that image only."""
        e = self.entry(key.image)
        if e is not None:
            e.report_path, e.pairing = path, report_pairing.EXPLICIT
        if self.display.key != key or self.display.state != SHOWN:
            self.message.emit(f"{os.path.basename(path)} paired with {key.name} (not on screen now)", False)
            return
        self.display.set_report(report, report_pairing.EXPLICIT)
        self._remember((key.image, path), (self.display.rad, report, None))
        self._ground_gen.next()
        for s in self.slots:  # a phrase (and its maps) of the previous report text: gone, unless pinned
            s.gmap, s.map_key = None, None
        self._retarget_phrase(key, same_study=False)  # its span was in the previous report text
        self.reportChanged.emit()
        self.phraseChanged.emit(self.phrase.text)
        for k in (0, 1):
            self._prepare(k)
        if self.phrase.text:
            self.ground_phrase(self.phrase.text, None, carried=True)

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
        path = path or self.rad_path  # the image on screen
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
        if not self.phrase.text or self.rad is None or self.phrase.key != self.display.key:
            return out, note
        want = " ".join(self.phrase.text.lower().split())
        for p in self.annotated_phrases():
            if " ".join(p.label_text.lower().split()) == want:
                bxs, n = rescale_boxes(p, self.rad.shape)
                note = n or note
                out += [(b, p.category or p.label_text) for b in bxs]
        return out, note
