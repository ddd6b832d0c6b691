"""Small dialogs of the review mode: reviewer name (asked once, kept in QSettings), reject reason, rescale, a review
file in use, a damaged review file (recover what can be read); and opening a review with them
(:func:`open_review_session`)."""

from __future__ import annotations

from typing import Optional

from PySide6 import QtCore, QtWidgets

from elvis_core.review.session import REJECT_REASONS, ReviewSession
from elvis_core.review.store import ReviewDamagedError, ReviewInUseError

SETTINGS_KEY = "review/reviewer"


def settings_or_default(settings: Optional[QtCore.QSettings] = None) -> QtCore.QSettings:
    return settings if settings is not None else QtCore.QSettings("ELVIS", "ELVIS Viewer")


def ask_reviewer_name(parent: Optional[QtWidgets.QWidget], settings: QtCore.QSettings,
                      force: bool = False) -> Optional[str]:
    """The reviewer's name from settings; asked (and stored) only when missing or ``force``. None if cancelled."""
    name = str(settings.value(SETTINGS_KEY, "") or "").strip()
    if name and not force:
        return name
    text, ok = QtWidgets.QInputDialog.getText(parent, "Reviewer", "Your name or initials (stored with every "
                                              "decision):", QtWidgets.QLineEdit.EchoMode.Normal, name)
    text = (text or "").strip()
    if not ok or not text:
        return None
    settings.setValue(SETTINGS_KEY, text)
    settings.sync()
    return text


def ask_reject_reason(parent: Optional[QtWidgets.QWidget]) -> Optional[str]:
    """Pick a reason with the arrow keys (or type one) and press Enter; None if cancelled."""
    text, ok = QtWidgets.QInputDialog.getItem(parent, "Reject", "Reason:", list(REJECT_REASONS), 0, True)
    text = (text or "").strip()
    return text if ok and text else None


def ask_rescale(parent: Optional[QtWidgets.QWidget], n_items: int, example: str) -> bool:
    """Ask whether to rescale boxes whose annotation image size differs from the image's."""
    ans = QtWidgets.QMessageBox.question(
        parent, "Image size differs",
        f"{n_items} phrase(s) have boxes drawn for a different image size than the image files "
        f"(e.g. {getattr(parent, 'shown', str)(example)}).\n\nRescale their boxes to the images?",
        QtWidgets.QMessageBox.StandardButton.Yes | QtWidgets.QMessageBox.StandardButton.No,
        QtWidgets.QMessageBox.StandardButton.Yes)
    return ans == QtWidgets.QMessageBox.StandardButton.Yes


def _ask(parent: Optional[QtWidgets.QWidget], title: str, text: str, accept: str) -> bool:
    """A warning with an ``accept`` button (the default) and Cancel; True when ``accept`` was clicked."""
    box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Warning, title, text, parent=parent)
    ok = box.addButton(accept, QtWidgets.QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QtWidgets.QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(ok)
    box.exec()
    return box.clickedButton() is ok


def ask_open_read_only(parent: Optional[QtWidgets.QWidget], reason: str) -> bool:
    """The review file is being written by someone else: offer a read-only look (decisions are not saved)."""
    shown = getattr(parent, "shown", str)  # the Review tab's masking: a PACS study's files are named by UID
    return _ask(parent, "Review file in use", f"{shown(reason)}\n\nOpen it read-only? You can browse the phrases and "
                "their current decisions; nothing you do is saved.", "Open read-only")


def ask_recover(parent: Optional[QtWidgets.QWidget], err: ReviewDamagedError) -> bool:
    """The review file is damaged (it was not opened, not re-created): offer to rebuild it from what can be read."""
    shown = getattr(parent, "shown", str)
    kept = f" A copy of it as it is now is kept: {err.copy.name}." if err.copy is not None else ""
    return _ask(parent, "Review file damaged", f"{shown(err.problem)}{shown(kept)}\n\nRecover what can be read? "
                "Decisions are rebuilt from the file and its audit trail; what cannot be read is counted as lost (the "
                "same as 'elvis review recover').", "Recover")


def open_review_session(parent, annotations_path, images_root, rescale: Optional[bool], reviewer: str,
                        ask_read_only=ask_open_read_only, ask_rescale_fn=ask_rescale,
                        ask_recover_fn=ask_recover) -> ReviewSession:
    """Open the review beside ``annotations_path`` under a wait cursor. A review file another process is writing:
    ``ask_read_only(parent, reason)`` offers a read-only look (declined: the ``ReviewInUseError`` is raised). A
    damaged review file: ``ask_recover_fn(parent, err)`` offers to recover what can be read (declined: the
    ``ReviewDamagedError`` is raised; accepted: ``session.recovered`` is the :class:`RecoverResult`). Boxes drawn for
    another image size and no stored choice: ``ask_rescale_fn`` decides, and the review is reopened with it. Raises
    :class:`~elvis_core.errors.ElvisError` (one line) when it cannot open."""
    app = QtWidgets.QApplication
    app.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)
    recovered = None
    try:
        try:
            session = ReviewSession.open(annotations_path, images_root, rescale=rescale, reviewer=reviewer)
        except ReviewDamagedError as err:
            app.restoreOverrideCursor()
            agreed = ask_recover_fn(parent, err)
            app.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)
            if not agreed:
                raise
            from elvis_core.review.recover import recover_review

            recovered = recover_review(err.path)
            session = ReviewSession.open(annotations_path, images_root, rescale=rescale, reviewer=reviewer)
        except ReviewInUseError as err:
            app.restoreOverrideCursor()
            agreed = ask_read_only(parent, str(err))
            app.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)
            if not agreed:
                raise
            session = ReviewSession.open(annotations_path, images_root, rescale=rescale, reviewer=reviewer,
                                         read_only=True)
        res = session.import_result
        if rescale is None and res.size_mismatch_keys and session.store.get_meta("rescale") is None:
            it = next(i for i in res.items if i.key == res.size_mismatch_keys[0])
            ex = f"{it.file_size[0]}x{it.file_size[1]} vs {it.image_width}x{it.image_height}"
            app.restoreOverrideCursor()
            agreed = ask_rescale_fn(parent, len(res.size_mismatch_keys), ex)
            app.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)
            read_only = session.store.read_only
            session.close()
            session = ReviewSession.open(annotations_path, images_root, rescale=agreed, reviewer=reviewer,
                                         read_only=read_only)
        session.recovered = recovered
        return session
    finally:
        app.restoreOverrideCursor()
