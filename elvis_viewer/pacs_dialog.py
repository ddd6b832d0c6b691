"""File → Open from PACS… (DICOMweb) and the DICOM exports (File → Export reviewed boxes as DICOM SR… /
Export map as DICOM SEG…), with optional STOW-RS back to the server a study came from.

The dialog only wires widgets to :mod:`elvis_core.pacs`; searches, fetches, exports and stores run in workers.
The server URL, the user name and the auth kind are saved in the settings; a password or token lives only in this
dialog (memory) for the session: never in the settings, a log or a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from PySide6 import QtCore, QtWidgets

from elvis_viewer import workers

AUTH_KINDS = ("None", "User + password", "Bearer token")


def _err(exc: BaseException) -> str:
    from elvis_core.errors import ElvisError

    return str(exc) if isinstance(exc, ElvisError) else f"{type(exc).__name__}: {exc}"


class PacsDialog(QtWidgets.QDialog):
    """Search a DICOMweb server, fetch a study into the cache and open it in the window's study browser."""

    fetched = QtCore.Signal(str)  # the study's cache folder
    searched = QtCore.Signal(int)  # number of hits

    def __init__(self, window, settings: Optional[QtCore.QSettings] = None):
        super().__init__(window)
        self.window_ = window
        self.settings = settings or getattr(window, "settings", None) or QtCore.QSettings("ELVIS", "elvis-viewer")
        self.setWindowTitle("Open from PACS (DICOMweb)")
        self.resize(900, 560)
        self.client = None
        self.hits: list = []
        self._task: Optional[workers.Task] = None
        self.last_folder: Optional[str] = None
        self.last_error = ""
        self._build()
        self._load_settings()

    # ------------------------------------------------------------------------------------------------ widgets
    def _build(self) -> None:
        lay = QtWidgets.QVBoxLayout(self)
        server = QtWidgets.QGroupBox("Server")
        f = QtWidgets.QFormLayout(server)
        self.url_edit = QtWidgets.QLineEdit()
        self.url_edit.setPlaceholderText("http://pacs.example.org:8042/dicom-web")
        self.auth_combo = QtWidgets.QComboBox()
        self.auth_combo.addItems(AUTH_KINDS)
        self.user_edit = QtWidgets.QLineEdit()
        self.secret_edit = QtWidgets.QLineEdit()
        self.secret_edit.setEchoMode(QtWidgets.QLineEdit.EchoMode.Password)
        self.secret_edit.setPlaceholderText("kept in memory for this session only, never saved")
        f.addRow("DICOMweb URL", self.url_edit)
        f.addRow("Authentication", self.auth_combo)
        f.addRow("User", self.user_edit)
        f.addRow("Password / token", self.secret_edit)
        self.auth_combo.currentIndexChanged.connect(self._auth_changed)
        lay.addWidget(server)

        search = QtWidgets.QGroupBox("Search (QIDO-RS)")
        g = QtWidgets.QGridLayout(search)
        self.pid_edit = QtWidgets.QLineEdit()
        self.acc_edit = QtWidgets.QLineEdit()
        self.from_edit = QtWidgets.QLineEdit()
        self.to_edit = QtWidgets.QLineEdit()
        for e in (self.from_edit, self.to_edit):
            e.setPlaceholderText("YYYY-MM-DD")
        self.cr_check = QtWidgets.QCheckBox("CR")
        self.dx_check = QtWidgets.QCheckBox("DX")
        self.cr_check.setChecked(True)
        self.dx_check.setChecked(True)
        self.search_button = QtWidgets.QPushButton("Search")
        self.search_button.setDefault(True)
        self.search_button.clicked.connect(self.search)
        g.addWidget(QtWidgets.QLabel("Patient ID"), 0, 0)
        g.addWidget(self.pid_edit, 0, 1)
        g.addWidget(QtWidgets.QLabel("Accession"), 0, 2)
        g.addWidget(self.acc_edit, 0, 3)
        g.addWidget(QtWidgets.QLabel("Date from"), 1, 0)
        g.addWidget(self.from_edit, 1, 1)
        g.addWidget(QtWidgets.QLabel("to"), 1, 2)
        g.addWidget(self.to_edit, 1, 3)
        mods = QtWidgets.QHBoxLayout()
        mods.addWidget(QtWidgets.QLabel("Modality"))
        mods.addWidget(self.cr_check)
        mods.addWidget(self.dx_check)
        mods.addStretch(1)
        mods.addWidget(self.search_button)
        g.addLayout(mods, 2, 0, 1, 4)
        lay.addWidget(search)

        self.table = QtWidgets.QTableWidget(0, 6)
        self.table.setHorizontalHeaderLabels(["Date", "Patient ID", "Accession", "Modalities", "Description",
                                              "Series / instances"])
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.doubleClicked.connect(lambda *_: self.fetch_selected())
        lay.addWidget(self.table, 1)

        bottom = QtWidgets.QHBoxLayout()
        self.status_label = QtWidgets.QLabel("")
        self.status_label.setWordWrap(True)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setVisible(False)
        self.fetch_button = QtWidgets.QPushButton("Fetch and open")
        self.fetch_button.clicked.connect(self.fetch_selected)
        self.cancel_button = QtWidgets.QPushButton("Cancel fetch")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        close = QtWidgets.QPushButton("Close")
        close.clicked.connect(self.hide)
        bottom.addWidget(self.status_label, 1)
        bottom.addWidget(self.progress)
        bottom.addWidget(self.fetch_button)
        bottom.addWidget(self.cancel_button)
        bottom.addWidget(close)
        lay.addLayout(bottom)

    def _auth_changed(self, i: int) -> None:
        self.user_edit.setEnabled(i == 1)
        self.secret_edit.setEnabled(i in (1, 2))

    def _load_settings(self) -> None:
        s = self.settings
        self.url_edit.setText(str(s.value("pacs/url", "") or ""))
        self.user_edit.setText(str(s.value("pacs/user", "") or ""))
        try:
            self.auth_combo.setCurrentIndex(int(s.value("pacs/auth", 0) or 0))
        except (TypeError, ValueError):
            self.auth_combo.setCurrentIndex(0)
        self._auth_changed(self.auth_combo.currentIndex())

    def _save_settings(self) -> None:
        from elvis_core.pacs import redact_url

        self.settings.setValue("pacs/url", redact_url(self.url_edit.text().strip()))  # never credentials
        self.settings.setValue("pacs/user", self.user_edit.text().strip())
        self.settings.setValue("pacs/auth", self.auth_combo.currentIndex())
        self.settings.sync()

    # ------------------------------------------------------------------------------------------------- actions
    def make_client(self):
        from elvis_core.pacs import PacsClient

        kind = self.auth_combo.currentIndex()
        secret = self.secret_edit.text()
        client = PacsClient(self.url_edit.text().strip(),
                            username=self.user_edit.text().strip() if kind == 1 else None,
                            password=secret if kind == 1 else None,
                            token=secret if kind == 2 and secret else None,
                            cache_dir=os.environ.get("ELVIS_PACS_CACHE") or None)
        self._save_settings()
        return client

    def _set_busy(self, busy: bool, fetching: bool = False) -> None:
        self.search_button.setEnabled(not busy)
        self.fetch_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy and fetching)
        self.progress.setVisible(busy and fetching)

    def _fail(self, exc: BaseException) -> None:
        self._task = None
        self._set_busy(False)
        self.last_error = _err(exc)
        self.status_label.setText(getattr(self.window_, "mask_text", str)(self.last_error))  # a study UID, masked

    def search(self) -> None:
        try:
            self.client = self.make_client()
        except Exception as exc:  # noqa: BLE001 - shown in the dialog
            self._fail(exc)
            return
        mods = [m for m, c in (("CR", self.cr_check), ("DX", self.dx_check)) if c.isChecked()] or ["CR", "DX"]
        self.status_label.setText("searching…")
        self.last_error = ""
        self._set_busy(True)
        client = self.client
        from elvis_core.pacs.search import search_page

        self._task = workers.run_task(
            search_page, client, patient_id=self.pid_edit.text(), accession=self.acc_edit.text(), limit=200,
            date_from=self.from_edit.text(), date_to=self.to_edit.text(), modalities=mods,
            on_result=self._on_hits, on_error=self._fail)

    def _on_hits(self, page) -> None:
        self._task = None
        self._set_busy(False)
        self.hits = list(page.hits)
        reveal = bool(getattr(self.window_, "reveal_identifiers", False))
        self.table.setRowCount(len(self.hits))
        for r, h in enumerate(self.hits):
            date = f"{h.study_date[:4]}-{h.study_date[4:6]}-{h.study_date[6:]}" if len(h.study_date) == 8 else \
                h.study_date
            # PatientID, AccessionNumber and StudyDescription identify a patient (PS3.15): shown with the toggle only
            vals = [date, h.patient_id if reveal else "•••", h.accession if reveal else "•••", "/".join(h.modalities),
                    h.description if reveal else "•••", f"{h.n_series} / {h.n_instances}"]
            for c, v in enumerate(vals):
                it = QtWidgets.QTableWidgetItem(v)
                if c in (1, 2, 4) and not reveal:
                    it.setToolTip("patient identifiers are hidden (View → Show patient identifiers)")
                self.table.setItem(r, c, it)
        if self.hits:
            self.table.selectRow(0)
        self.table.resizeColumnsToContents()
        self.status_label.setText(page.summary().split(" (next page")[0])
        self.searched.emit(len(self.hits))

    def fetch_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows or self.client is None:
            self.status_label.setText("search, then choose a study")
            return
        hit = self.hits[rows[0].row()]
        self.fetch(hit.study_uid)

    def fetch(self, study_uid: str) -> None:
        client = self.client
        self._set_busy(True, fetching=True)
        self.progress.setRange(0, 0)
        self.status_label.setText("fetching…")
        self.last_error = ""

        def job(progress, cancel):
            return client.fetch_study(study_uid, progress=lambda d, t: progress(d, t, ""), cancel=cancel)

        self._task = workers.run_task(job, wants_progress=True, on_result=self._on_fetched, on_error=self._fail,
                                      on_progress=self._on_progress)

    def _on_progress(self, done: int, total: int, _text: str = "") -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.status_label.setText(f"fetched {done} of {total} instances")

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _on_fetched(self, res) -> None:
        self._task = None
        self._set_busy(False)
        self.last_folder = str(res.folder)
        self.status_label.setText(f"{res.downloaded} downloaded, {res.cached} already cached"
                                  + (" · this study holds a review SR: File → Resume review from the study's DICOM SR"
                                     if _has_review_sr(res.files) else ""))
        self.window_.pacs_client = self.client  # exports can be stored back to this server
        self.window_.session.open_paths([self.last_folder])
        self.fetched.emit(self.last_folder)


def _has_review_sr(files, limit: int = 50) -> bool:
    """Whether a fetched study holds one of our review SRs (header reads of a small study only)."""
    import pydicom

    from elvis_core.dicom_results.sr_read import is_review_sr

    if len(files) > limit:
        return False
    for p in files:
        try:
            head = pydicom.dcmread(str(p), stop_before_pixels=True, specific_tags=[
                "SOPClassUID", "ContentTemplateSequence", "CodingSchemeIdentificationSequence"])
        except Exception:  # noqa: BLE001 - a hint only
            continue
        if is_review_sr(head):
            return True
    return False


def open_pacs_dialog(window) -> PacsDialog:
    dlg = getattr(window, "pacs_dialog", None)
    if dlg is None:
        dlg = window.pacs_dialog = PacsDialog(window)
    dlg.show()
    dlg.raise_()
    return dlg


# ------------------------------------------------------------------------------------------------- exports #

def _from_pacs(window, path: str) -> bool:
    client = getattr(window, "pacs_client", None)
    if client is None or not path:
        return False
    try:
        return Path(path).resolve().is_relative_to((client.cache_dir / client.server_key).resolve())
    except OSError:
        return False


def _ask_folder(window, title: str) -> Optional[str]:
    start = str(window.settings.value("export/dicom_dir", "") or os.path.expanduser("~"))
    d = QtWidgets.QFileDialog.getExistingDirectory(window, title, start)
    if d:
        window.settings.setValue("export/dicom_dir", d)
    return d or None


def _ask_stow(window, n: int) -> bool:
    client = getattr(window, "pacs_client", None)
    return QtWidgets.QMessageBox.question(
        window, "Store on the PACS?", f"Also send the {n} object(s) to {client.url} (STOW-RS)?"
    ) == QtWidgets.QMessageBox.StandardButton.Yes


def store_on_pacs(window, paths: List[str], on_done=None) -> None:
    client = getattr(window, "pacs_client", None)
    if client is None:
        window.show_message("No PACS server: open a study with File → Open from PACS first")
        return

    def ok(n):
        window.show_message(f"Stored {n} object(s) on {client.url}", banner=False)
        if on_done:
            on_done(n)

    window.session.run(client.store, paths, on_result=ok,
                       on_error=lambda e: window.show_message(f"PACS: {_err(e)}"))


def export_review_sr(window, out_dir: Optional[str] = None, stow: Optional[bool] = None, on_done=None) -> None:
    """File → Export reviewed boxes as DICOM SR…: one TID 1500 SR per image of the open review."""
    rv = getattr(window, "review_view", None)
    rs = getattr(rv, "session", None) if rv is not None else None
    if rs is None or not getattr(rs, "items", None):
        window.show_message("Open a review first (Review tab, or --annotations with --review)")
        return
    out_dir = out_dir or _ask_folder(window, "Folder for the DICOM SR files")
    if not out_dir:
        return
    from elvis_core.dicom_results import export_review_sr as core_export

    items = list(rs.items)

    def done(res):
        for p in res.problems:
            window.session.problem("", p, banner=False)
        window.show_message(f"{len(res.written)} DICOM SR file(s) written to {out_dir}"
                            + (f"; {len(res.problems)} image(s) skipped (see Problems)" if res.problems else ""))
        paths = [str(p) for p in res.written]
        send = stow
        if send is None:
            send = bool(paths) and any(_from_pacs(window, it.image_path) for it in items) and \
                _ask_stow(window, len(paths))
        if send and paths:
            store_on_pacs(window, paths, on_done=lambda n: on_done and on_done(res, n))
        elif on_done:
            on_done(res, 0)

    from elvis_core.dicom_results import ModelInfo

    eng = window.session.slots[0].engine
    model = ModelInfo.from_engine(eng) if eng is not None else None
    window.session.run(core_export, items, out_dir, model=model, on_result=done,
                       on_error=lambda e: window.show_message(f"DICOM SR export: {_err(e)}"))


def _seg_job(path, rad, gmap, phrase, engine, out_dir, extra=()):
    """The map as DICOM: a FRACTIONAL SEG (values kept) + an RGB Secondary Capture with the viewer's caption."""
    import highdicom as hd

    from elvis_core.dicom_results import MapLayer, ModelInfo, heatmap_sc, maps_seg, read_source, write_dataset

    src = read_source(path)
    model = ModelInfo.from_engine(engine)
    seg = maps_seg(src, [MapLayer(phrase, gmap.to_image(), _trust(gmap))], model)
    sc = heatmap_sc(src, rad, gmap, model, extra_caption=extra, series_uid=hd.UID())
    k = 1
    while (Path(out_dir) / f"{src.SOPInstanceUID}.{k}.seg.dcm").exists():
        k += 1
    return [write_dataset(seg, Path(out_dir) / f"{src.SOPInstanceUID}.{k}.seg.dcm"),
            write_dataset(sc, Path(out_dir) / f"{src.SOPInstanceUID}.{k}.sc.dcm")]


def _trust(gmap) -> str:
    from elvis_core.dicom_results import trust_line

    return trust_line(gmap)


def export_map_seg(window, out_dir: Optional[str] = None, stow: Optional[bool] = None, on_done=None) -> None:
    """File → Export map as DICOM SEG…: the current phrase's map (main checkpoint) on the current DICOM image."""
    s = window.session
    slot = s.slots[0]
    path = getattr(s, "rad_path", None)
    if slot.gmap is None or not path:
        window.show_message("Ground a phrase first: the SEG holds the current phrase's map")
        return
    from elvis_core.io.dicom_open import is_dicom_file

    if not is_dicom_file(path):
        window.show_message(f"{os.path.basename(path)}: not a DICOM image; a SEG must reference a DICOM source")
        return
    out_dir = out_dir or _ask_folder(window, "Folder for the DICOM SEG file")
    if not out_dir:
        return
    a = s.phrase.assertion
    extra = [a.label() + ": the map shows where the words point, not that it is present"] \
        if a is not None and a.marked else []
    if s.provenance_text:
        extra.append(s.provenance_text)

    def done(dests):
        window.show_message(f"SEG (fractional) + heat map written: {dests[0]}, {dests[1].name}", banner=False)
        send = stow if stow is not None else (_from_pacs(window, path) and _ask_stow(window, len(dests)))
        if send:
            store_on_pacs(window, [str(d) for d in dests], on_done=lambda n: on_done and on_done(dests[0], n))
        elif on_done:
            on_done(dests[0], 0)

    s.run(_seg_job, path, s.rad, slot.gmap, slot.gmap.phrase or s.phrase.text, slot.engine, out_dir, extra,
          on_result=done, on_error=lambda e: window.show_message(f"DICOM SEG export: {_err(e)}"))


def study_folder_of(path: str) -> Path:
    """The study folder of an image: ``<StudyUID>/<SeriesUID>/<SOP>.dcm`` (a PACS cache) → ``<StudyUID>``."""
    p = Path(path)
    return p.parent.parent if p.parent.parent.name.replace(".", "").isdigit() else p.parent


def review_from_pacs_sr(window, folder: Optional[str] = None, on_done=None) -> None:
    """File → Resume review from the study's DICOM SR: the open study's review SRs (fetched with it from the PACS)
    become a review with every decision restored, opened in the Review tab; export it again to write it back."""
    path = getattr(window.session, "rad_path", None)
    if folder is None and not path:
        window.show_message("Open a study first (File → Open from PACS…): its review SR is read from the study")
        return
    study = Path(folder) if folder else study_folder_of(path)
    from elvis_core.review.from_sr import review_from_study

    def done(res):
        ok = window.review_view is not None and window.review_view.load(res.annotations, study)
        window.show_message(f"Review resumed from {res.n_srs} DICOM SR(s): {res.n_decisions} decision(s) restored"
                            if ok else "Review from the SR: the review could not be opened (see the Review tab)",
                            banner=False)
        if ok and hasattr(window, "tabs"):
            window.tabs.setCurrentWidget(window.review_view)
        if on_done:
            on_done(res if ok else None)

    window.session.run(review_from_study, study, on_result=done,
                       on_error=lambda e: window.show_message(f"Review from the SR: {_err(e)}"))
