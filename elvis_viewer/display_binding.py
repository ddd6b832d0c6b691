"""Renders the state of the session's :class:`~elvis_viewer.display_record.DisplayRecord` on the main window.

- **loading**: the previous item stays on screen only dimmed, under "Loading NAME …" (never presented as current),
  and its report cannot be clicked;
- **failed**: the image pane, report and boxes are cleared and the pane says "cannot display FILE: reason" (the
  window title too);
- the report header says how the report was paired ("paired: MIMIC layout", …);
- the pin toggle under the phrase field keeps a phrase across studies; a carried phrase is labelled "typed, not
  from this report".

The main window's own handlers draw the parts (image, report, phrase, maps); :func:`map_is_current` is the check
they make before drawing a map.
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from elvis_viewer.display_record import FAILED, LOADING

PIN_TEXT = "Pin phrase"


def map_is_current(session, slot: int) -> bool:
    """True when slot ``slot``'s map belongs to the item, phrase and checkpoint on screen."""
    s = session.slots[slot]
    return (s.gmap is not None and s.map_key == session.display.key and s.gmap.phrase == session.phrase.text
            and s.map_hash == s.hash)


def phrase_note(session) -> str:
    """The warning line of the phrase: its origin when carried from another study, and how THIS report asserts it."""
    p = session.phrase
    a = p.assertion
    parts = [p.origin_note] if p.origin_note else []
    if a is not None and a.marked:
        parts.append(a.label())
    return " · ".join(parts)


class DisplayBinding(QtCore.QObject):
    def __init__(self, win):
        super().__init__(win)
        self.win = win
        s = win.session
        self.label = QtWidgets.QLabel("", win.view_stack)
        self.label.setWordWrap(True)
        self.label.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.label.setAttribute(QtCore.Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.label.hide()
        self.pin = QtWidgets.QCheckBox(PIN_TEXT)
        self.pin.setToolTip("Off: changing study clears the phrase and its maps. On: the phrase is kept and grounded "
                            "on the next study as typed text, its negation checked against that study's report.")
        self.pin.setFocusPolicy(QtCore.Qt.FocusPolicy.ClickFocus)
        win.report_title.setWordWrap(True)  # "Report — NAME (paired: …)" never widens the panel
        lay = win.phrase_edit.parentWidget().layout()
        lay.insertWidget(lay.indexOf(win.phrase_edit) + 1, self.pin)
        self.pin.toggled.connect(s.set_phrase_pinned)
        self._dimmed = False
        s.displayChanged.connect(self.render)
        win.view_stack.installEventFilter(self)

    def eventFilter(self, obj, ev) -> bool:
        if obj is self.win.view_stack and ev.type() == QtCore.QEvent.Type.Resize and self.label.isVisible():
            self._place()
        return False

    def _place(self) -> None:
        area = self.win.view_stack.rect()
        w = min(area.width() - 40, 640)
        self.label.setFixedWidth(max(w, 100))
        self.label.adjustSize()
        self.label.move((area.width() - self.label.width()) // 2, (area.height() - self.label.height()) // 2)
        self.label.raise_()

    def _say(self, text: str, colour: str) -> None:
        self.label.setText(text)
        self.label.setStyleSheet(f"QLabel {{ background: rgba(16,18,20,210); color:{colour}; padding:14px; "
                                 "font-size:15px; border-radius:6px; }")
        self.label.setVisible(bool(text))
        if text:
            self._place()

    def _dim(self, on: bool) -> None:
        if on == self._dimmed:
            return
        self._dimmed = on
        for iv in self.win.views():
            if on:
                eff = QtWidgets.QGraphicsOpacityEffect(iv)
                eff.setOpacity(0.3)
                iv.setGraphicsEffect(eff)
            else:
                iv.setGraphicsEffect(None)
        self.win.report_view.setEnabled(not on)

    @property
    def dimmed(self) -> bool:
        return self._dimmed

    def render(self) -> None:
        w, d = self.win, self.win.session.display
        self._dim(d.state == LOADING)
        if d.state == FAILED:
            for iv in w.views():
                iv.clear()
                iv.measure.clear()  # rulers and angles belong to the film that is gone
            w.current_boxes = []
            w.view_stack.setCurrentWidget(w.view_splitter)
            w.preset_combo.clear()
        self.render_text()

    def render_text(self) -> None:
        """Title, "Loading NAME …" / "cannot display FILE: reason" and the report header, every file name masked
        like the rest of the window (a UID while identifiers are hidden); called again when the privacy toggle
        flips."""
        w, d = self.win, self.win.session.display
        mask = getattr(w, "mask_text", str)
        w.setWindowTitle(d.title(mask))
        if d.state == LOADING:
            self._say(f"Loading {mask(d.pending.name)} …" + ("\n(the dimmed film is the previous item)"
                                                           if d.rad is not None else ""), "#e8e8e8")
        elif d.state == FAILED:
            self._say(mask(d.error), "#ff8a80")
        else:
            self._say("", "")
        w.report_title.setText(d.report_header(mask))
