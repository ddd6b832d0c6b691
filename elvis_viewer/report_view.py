"""`ReportView`: the report text, read-only, with styled section headers; selecting text or clicking a sentence
emits the exact character span of :class:`elvis_core.io.report.Report` (``Report.text[start:end]``).

Qt counts positions in UTF-16 units and turns ``\\r\\n`` / ``\\r`` into one paragraph break, so spans are mapped
through :class:`SpanMap` in both directions; a test checks the mapping on text with CRLF and non-BMP characters.
"""

from __future__ import annotations

import bisect
from typing import Iterable, List, Optional, Tuple

from PySide6 import QtCore, QtGui, QtWidgets


class SpanMap:
    """Python string offsets <-> QTextDocument positions for a text shown with ``setPlainText``."""

    def __init__(self, text: str):
        self.py_to_qt: List[int] = []
        q = 0
        n = len(text)
        for i, ch in enumerate(text):
            self.py_to_qt.append(q)
            if ch == "\r" and i + 1 < n and text[i + 1] == "\n":
                continue  # CRLF is one paragraph break in Qt: the '\r' takes no position
            q += 2 if ord(ch) > 0xFFFF else 1
        self.py_to_qt.append(q)

    def to_qt(self, offset: int) -> int:
        return self.py_to_qt[max(0, min(offset, len(self.py_to_qt) - 1))]

    def to_py(self, pos: int) -> int:
        """The first Python offset whose Qt position is >= ``pos``."""
        return bisect.bisect_left(self.py_to_qt, pos)


class ReportView(QtWidgets.QTextEdit):
    #: start, end (Python offsets into Report.text), exact text
    phraseSelected = QtCore.Signal(int, int, str)

    HEADER_COLOR = "#7fb8ff"
    UNDERLINE_COLOR = "#ffb347"
    SENTENCE_BG = "#33415c"

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None):
        super().__init__(parent)
        self.setReadOnly(True)
        self.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse
                                     | QtCore.Qt.TextInteractionFlag.TextSelectableByKeyboard)
        f = QtGui.QFont("DejaVu Sans Mono")
        f.setStyleHint(QtGui.QFont.StyleHint.Monospace)
        f.setPointSize(10)
        self.setFont(f)
        self.setWordWrapMode(QtGui.QTextOption.WrapMode.WordWrap)  # never break a word in a narrow pane
        self.report = None
        self.spans = SpanMap("")
        self.current: Optional[Tuple[int, int]] = None
        self.annotated: List[Tuple[int, int, str]] = []
        self.marks: list = []
        self.setPlaceholderText("No report for this image.")

    # ------------------------------------------------------------------------------------------------- content
    def set_report(self, report, annotated_phrases: Iterable[str] = ()) -> None:
        self.report = report
        self.current = None
        self.setExtraSelections([])
        if report is None:
            self.spans = SpanMap("")
            self.setPlainText("")
            self.annotated = []
            return
        self.spans = SpanMap(report.text)
        # setPlainText inserts with the text cursor's current format: after a phrase inside a negated / uncertain
        # scope was selected, that is the scope's underline, and it would spill over the whole new report
        self.setCurrentCharFormat(QtGui.QTextCharFormat())
        self.setPlainText(report.text)
        cur = QtGui.QTextCursor(self.document())
        hdr = QtGui.QTextCharFormat()
        hdr.setFontWeight(QtGui.QFont.Weight.Bold)
        hdr.setForeground(QtGui.QColor(self.HEADER_COLOR))
        for sec in report.sections:
            if sec.header_end > sec.header_start:
                self._format_span(cur, sec.header_start, sec.header_end, hdr)
        self.mark_assertions()
        self.set_annotated_phrases(annotated_phrases)
        self.moveCursor(QtGui.QTextCursor.MoveOperation.Start)

    NEGATED_COLOR = "#ff6e6e"
    UNCERTAIN_COLOR = "#ffc04d"

    def mark_assertions(self) -> None:
        """Negated / uncertain findings (:mod:`elvis_core.io.negation`): the cue in bold red / amber and its scope
        with a dotted (negated) or wavy (uncertain) underline of that colour; the tooltip says which."""
        from elvis_core.io.negation import NEGATED, cue_scopes

        self.marks = []
        if self.report is None:
            return
        cur = QtGui.QTextCursor(self.document())
        for sc in cue_scopes(self.report.text):
            color = QtGui.QColor(self.NEGATED_COLOR if sc.kind == NEGATED else self.UNCERTAIN_COLOR)
            scope = QtGui.QTextCharFormat()
            scope.setUnderlineColor(color)
            scope.setUnderlineStyle(QtGui.QTextCharFormat.UnderlineStyle.DotLine if sc.kind == NEGATED
                                    else QtGui.QTextCharFormat.UnderlineStyle.WaveUnderline)
            scope.setToolTip(f"{sc.kind} in the report (“{sc.cue}”): a map of these words shows where they point, "
                             "not that the finding is present")
            if sc.end > sc.start:
                self._format_span(cur, sc.start, sc.end, scope)
            cue = QtGui.QTextCharFormat()
            cue.setForeground(color)
            cue.setFontWeight(QtGui.QFont.Weight.Bold)
            self._format_span(cur, sc.cue_start, sc.cue_end, cue)
            self.marks.append(sc)

    def clear_current(self) -> None:
        """Drop the highlighted span (a typed phrase replaced it)."""
        self.current = None
        self.setExtraSelections([])

    def set_annotated_phrases(self, phrases: Iterable[str]) -> None:
        """Underline every phrase (found tolerant of line wrapping) that has annotation boxes."""
        self.annotated = []
        if self.report is None:
            return
        cur = QtGui.QTextCursor(self.document())
        fmt = QtGui.QTextCharFormat()
        fmt.setFontUnderline(True)
        fmt.setUnderlineColor(QtGui.QColor(self.UNDERLINE_COLOR))
        fmt.setUnderlineStyle(QtGui.QTextCharFormat.UnderlineStyle.SingleUnderline)
        for phrase in phrases:
            span = self.report.find(phrase)
            if span is None:
                span = _find_casefold(self.report.text, phrase)
            if span is not None:
                self.annotated.append((span[0], span[1], phrase))
                self._format_span(cur, span[0], span[1], fmt)

    def _format_span(self, cur: QtGui.QTextCursor, start: int, end: int, fmt: QtGui.QTextCharFormat) -> None:
        cur.setPosition(self.spans.to_qt(start))
        cur.setPosition(self.spans.to_qt(end), QtGui.QTextCursor.MoveMode.KeepAnchor)
        cur.mergeCharFormat(fmt)

    def is_underlined(self, offset: int) -> bool:
        cur = QtGui.QTextCursor(self.document())
        cur.setPosition(self.spans.to_qt(offset) + 1)
        return cur.charFormat().fontUnderline()

    # ---------------------------------------------------------------------------------------------- selection
    def select_span(self, start: int, end: int, emit: bool = True) -> None:
        """Highlight ``[start, end)`` and (by default) ground it."""
        if self.report is None or end <= start:
            return
        self.current = (start, end)
        sel = QtWidgets.QTextEdit.ExtraSelection()
        sel.cursor = QtGui.QTextCursor(self.document())
        sel.cursor.setPosition(self.spans.to_qt(start))
        sel.cursor.setPosition(self.spans.to_qt(end), QtGui.QTextCursor.MoveMode.KeepAnchor)
        sel.format.setBackground(QtGui.QColor(self.SENTENCE_BG))
        self.setExtraSelections([sel])
        c = self.textCursor()
        c.setPosition(self.spans.to_qt(start))
        self.setTextCursor(c)
        self.ensureCursorVisible()
        if emit:
            self.phraseSelected.emit(start, end, self.report.text[start:end])

    def select_sentence(self, index: int) -> None:
        if self.report is None or not self.report.sentences:
            return
        index = max(0, min(index, len(self.report.sentences) - 1))
        s = self.report.sentences[index]
        self.select_span(s.start, s.end)

    def current_sentence_index(self) -> int:
        if self.report is None or self.current is None:
            return -1
        for i, s in enumerate(self.report.sentences):
            if s.start <= self.current[0] < s.end:
                return i
        # between sentences: the last one starting before the current span
        starts = [s.start for s in self.report.sentences]
        return bisect.bisect_right(starts, self.current[0]) - 1

    def mouseReleaseEvent(self, ev: QtGui.QMouseEvent) -> None:
        super().mouseReleaseEvent(ev)
        if ev.button() != QtCore.Qt.MouseButton.LeftButton or self.report is None:
            return
        cur = self.textCursor()
        if cur.hasSelection():
            start = self.spans.to_py(cur.selectionStart())
            end = self.spans.to_py(cur.selectionEnd())
            # trim surrounding whitespace so a sloppy drag still grounds the words
            text = self.report.text
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if end > start:
                self.select_span(start, end)
            return
        off = self.spans.to_py(self.cursorForPosition(ev.position().toPoint()).position())
        for a, b, _phrase in self.annotated:  # a click on an underlined (annotated) phrase grounds that phrase
            if a <= off < b:
                self.select_span(a, b)
                return
        sent = self.report.sentence_at(off)
        if sent is not None:
            self.select_span(sent.start, sent.end)

    def readable_sentences(self) -> list:
        """The report's sentences without placeholders: a sentence with no word left once the de-identification
        blanks ("___") are removed is skipped by Up/Down."""
        import re

        if self.report is None:
            return []
        text = self.report.text
        return [st for st in self.report.sentences
                if re.search(r"[^\W\d_]{2,}", text[st.start:st.end].replace("___", " "))]

    def step(self, delta: int) -> None:
        """Down (+1) / Up (-1): the next sentence after / the last one before the current phrase (a sentence, a
        selection or an annotated phrase); from nothing, the first sentence."""
        sents = self.readable_sentences()
        if not sents:
            return
        if self.current is None:
            nxt = sents[0]
        elif delta > 0:
            nxt = next((st for st in sents if st.start >= self.current[1]), None)
        else:
            nxt = next((st for st in reversed(sents) if st.end <= self.current[0]), None)
        if nxt is not None:
            self.select_span(nxt.start, nxt.end)

    def keyPressEvent(self, ev: QtGui.QKeyEvent) -> None:
        if self.report is not None and ev.key() in (QtCore.Qt.Key.Key_Down, QtCore.Qt.Key.Key_Up) \
                and self.report.sentences:
            self.step(+1 if ev.key() == QtCore.Qt.Key.Key_Down else -1)
            return
        super().keyPressEvent(ev)


def _find_casefold(text: str, phrase: str) -> Optional[Tuple[int, int]]:
    import re

    words = phrase.split()
    if not words:
        return None
    m = re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE).search(text)
    return (m.start(), m.end()) if m else None
