"""The one place the viewer decides how a text with file names in it is shown: while "Show patient identifiers" is
off (the default, never saved) every DICOM UID in it (a PACS cache names folders and files
``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``) is shown as its short pseudonym ``uid~12345678``
(:func:`elvis_core.io.uid_mask.mask_uids_in_text`); while it is on, the text as it is.

The main window's :meth:`~elvis_viewer.window_dialogs.WindowDialogsMixin.mask_text`, the study list, thumbnails,
Problems list and the Review tab all go through :func:`shown_text`; widgets that keep texts mix in :class:`Masking`
and re-render when the toggle flips (``set_reveal`` → ``rebuild``)."""

from __future__ import annotations


def shown_text(text, reveal: bool) -> str:
    """``text`` as the viewer shows it: DICOM UIDs pseudonymised unless ``reveal`` (the privacy toggle)."""
    if reveal:
        return "" if text is None else str(text)
    from elvis_core.io.uid_mask import mask_uids_in_text

    return mask_uids_in_text(text)


class Masking:
    """A widget that shows texts with file names: :meth:`shown` masks them; :meth:`set_reveal` re-renders."""

    reveal = False  # the window's privacy toggle

    def shown(self, text) -> str:
        return shown_text(text, self.reveal)

    def set_reveal(self, on: bool) -> None:
        if bool(on) != self.reveal:
            self.reveal = bool(on)
            self.rebuild()

    def rebuild(self) -> None:  # the widget re-renders its texts
        pass
