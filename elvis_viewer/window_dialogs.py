"""Privacy toggle and the main window's dialogs (file pickers, tag inspector, shortcut sheet, export), a mixin of
:class:`elvis_viewer.main_window.MainWindow`. Patient identifiers are shown only in the tag inspector and the corner
text, only while the privacy toggle is on (off by default, never saved); while it is off, DICOM UIDs in the window
title, the study list, the thumbnails, the Problems list, the report title, the image pane's "Loading FILE …" /
"cannot display FILE" text, banners, the status bar and the Review tab (a PACS cache names folders and files by UID)
are shown as their pseudonym (:mod:`elvis_viewer.masking`), and the tag inspector shows the PS3.15 pseudonym of every
UID of the profile."""

from __future__ import annotations


from typing import Any, Callable

from PySide6 import QtWidgets

from elvis_viewer import dialogs
from elvis_viewer.masking import shown_text


class WindowDialogsMixin:
    def set_reveal_identifiers(self, on: bool) -> None:
        """The privacy toggle (off by default, never saved): identifiers in the tag inspector and the corner text,
        DICOM UIDs everywhere else; every text that can hold a file name is rendered again."""
        self.reveal_identifiers = bool(on)
        act = self.actions_by_id["view.privacy"]
        if act.isChecked() != self.reveal_identifiers:
            act.setChecked(self.reveal_identifiers)
        self._update_identity()
        for lst in (self.study_browser, self.thumb_strip, getattr(self, "review_view", None)):
            if lst is not None and hasattr(lst, "set_reveal"):
                lst.set_reveal(self.reveal_identifiers)
        self._update_titles()
        self._refresh_recent()  # File → Open recent: a PACS study's folder is its UID
        if self.message_label.isVisible():
            self.message_label.setText(self.mask_text(getattr(self, "_banner_raw", "")))
        raw, timeout = getattr(self, "_status_raw", ("", 0))
        if raw and self.statusBar().currentMessage():
            self.statusBar().showMessage(self.mask_text(raw), timeout)

    def mask_text(self, text: str) -> str:
        """``text`` as the window shows it: DICOM UIDs pseudonymised unless the privacy toggle is on
        (:func:`elvis_viewer.masking.shown_text`, the one rule of every list, banner and message)."""
        return shown_text(text, getattr(self, "reveal_identifiers", False))

    def show_status(self, text: str, timeout: int = 0) -> None:
        """A status-bar message, masked like every other text and shown again when the privacy toggle flips."""
        self._status_raw = (text or "", timeout)
        if text:
            self.statusBar().showMessage(self.mask_text(text), timeout)
        else:
            self.statusBar().clearMessage()

    def _update_titles(self) -> None:
        """Window title, the image pane's loading / failed text and the report header from the display record,
        names masked (:meth:`elvis_viewer.display_binding.DisplayBinding.render_text`)."""
        binding = getattr(self, "display_binding", None)
        if binding is not None:
            binding.render_text()

    @property
    def privacy_act(self):
        return self.actions_by_id["view.privacy"]

    @property
    def overlay_act(self):
        return self.actions_by_id["overlay.show"]

    def _update_identity(self) -> None:
        text = dialogs.identity_text(self.session.rad_path) if self.reveal_identifiers else ""
        for iv in self.views():
            iv.set_identity_text(text)

    def show_tag_inspector(self):
        if not self.session.rad_path:
            self.show_message("Open a DICOM image first", banner=False)
            return None
        self.tag_dialog = dialogs.tag_inspector(self, self.session.rad_path, self.reveal_identifiers)
        return self.tag_dialog

    def show_shortcuts(self):
        self.shortcut_dialog = dialogs.shortcut_sheet(self)
        return self.shortcut_dialog

    def show_about(self) -> None:
        QtWidgets.QMessageBox.about(self, "ELVIS Viewer",
                                    "ELVIS Viewer — chest X-ray studies and phrase grounding (arXiv 2304.05303).")

    def _ask(self, fn: Callable[..., Any], *a, **kw) -> str:
        res = fn(self, *a, **kw)
        return res[0] if isinstance(res, tuple) else res

    def open_file_dialog(self):
        p = self._ask(QtWidgets.QFileDialog.getOpenFileName, "Open DICOM, image, report or annotation file")
        if p:
            self.open_paths([p])

    def open_folder_dialog(self):
        p = self._ask(QtWidgets.QFileDialog.getExistingDirectory, "Open study folder")
        if p:
            self.open_paths([p])

    def open_checkpoint_dialog(self, slot: int = 0):
        p = self._ask(QtWidgets.QFileDialog.getExistingDirectory, "Open checkpoint directory")
        if p:
            self.load_checkpoint(p, slot)
            if slot == 1:
                self.set_compare_mode(True)

    def open_annotations_dialog(self):
        p = self._ask(QtWidgets.QFileDialog.getOpenFileName, "Open MS-CXR annotations", filter="CSV (*.csv)")
        if p:
            self.load_annotations(p)

    def export_dialog(self):
        from elvis_viewer.export import default_name, safe_stem

        s = self.session
        e = s.entry(s.rad_path) if s.rad_path else None
        study = safe_stem(e.study_key) if e else "image"  # a StudyInstanceUID never names an export
        p = self._ask(QtWidgets.QFileDialog.getSaveFileName, "Export view", default_name(study, s.phrase.text),
                      "PNG (*.png)")
        if p:
            self.export_png(p)
