"""The Review tab's decisions and queue moves (:class:`DecisionsMixin` of
:class:`~elvis_viewer.review.view.ReviewView`): every key press is one :class:`~elvis_core.review.ReviewSession` call
made for the item ON SCREEN (its key goes with it: the core refuses a decision for any other item), persisted before
the queue moves; a decision that could not be saved is said loudly and nothing advances."""

from __future__ import annotations

from PySide6 import QtWidgets

from elvis_core.errors import ElvisError
from elvis_core.review.store import ReviewStoreError


class DecisionsMixin:
    """Needs from the view: ``session``, ``loaded_key``, ``boxes``, ``reason_provider``, ``_say``, ``shown``,
    ``_show_current``."""

    def _on_screen(self) -> bool:
        """True when the queue's current item is the one on screen; else says why nothing is decided."""
        if self.session is None or self.session.item is None:
            return False
        if self.loaded_key != self.session.item.key:
            self._say("not decided: this phrase's image is not on screen yet (still loading, or unreadable)")
            return False
        return True

    def _decide(self, fn) -> bool:
        """Run a decision ``fn(session, key)`` for the item ON SCREEN (``key``: the core refuses it when the queue's
        current item differs, so a key pressed before the screen caught up never lands on an unseen item)."""
        if not self._on_screen():
            return False
        try:
            fn(self.session, self.loaded_key)
        except (OSError, ReviewStoreError) as err:  # the decision was NOT saved (and was rolled back): say so loudly
            self._say(f"NOT SAVED: {err}")
            QtWidgets.QMessageBox.critical(self, "Decision not saved",
                                           self.shown(f"The decision could not be saved: {err}"))
            return False
        except ElvisError as err:
            self._say(str(err))
            return False
        return True

    def next_item(self) -> None:
        if self.session:
            self.session.next()
            self._show_current()

    def previous_item(self) -> None:
        if self.session:
            self.session.previous()
            self._show_current()

    def next_unreviewed(self) -> None:
        if self.session:
            if self.session.next_unreviewed() is None:
                self._say("no unreviewed phrase left in this filter")
            self._show_current()

    def accept(self) -> None:
        if self._decide(lambda s, k: s.accept(advance=True, expected_key=k)):
            self._show_current()

    def reject(self) -> None:
        if not self._on_screen():  # before asking for a reason
            return
        reason = self.reason_provider(self)
        if not reason:
            return
        if self._decide(lambda s, k: s.reject(reason, advance=True, expected_key=k)):
            self._show_current()

    def add_box(self) -> None:
        out = {}
        if self._decide(lambda s, k: out.setdefault("b", s.add_box(expected_key=k))):
            self.boxes.selected = out["b"].box_id
            self._show_current()

    def delete_box(self) -> None:
        bid = self.boxes.selected
        if bid is None:
            self._say("select a box first (S, or click it)")
            return
        if self._decide(lambda s, k: s.delete_box(bid, expected_key=k)):
            self._show_current()

    def nudge_box(self, dx: float, dy: float, dw: float = 0.0, dh: float = 0.0) -> None:
        """Keyboard edit of the selected box (arrows / Shift / Ctrl): one saved decision per key press."""
        bid = self.boxes.selected
        it = self.session.item if self.session else None
        b = it.box(bid) if it is not None and bid else None
        if b is None:
            return
        if self._decide(lambda s, k: s.edit_box(bid, (b.x + dx, b.y + dy, max(1.0, b.w + dw), max(1.0, b.h + dh)),
                                                expected_key=k)):
            self._show_current()

    def undo(self) -> None:
        if self._decide(lambda s, k: s.undo()):
            self._show_current()

    def redo(self) -> None:
        if self._decide(lambda s, k: s.redo()):
            self._show_current()
