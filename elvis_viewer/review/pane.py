"""What the Review tab shows around its queue, a mixin of :class:`~elvis_viewer.review.view.ReviewView`:

- with nothing loaded, a hint saying how to start a review (like the viewer's empty hint) instead of an empty pane,
  with a button that opens an annotations file and its images folder;
- the texts that can name files (the header, the import problems, the status message) go through the window's one
  masking rule (:mod:`elvis_viewer.masking`): while patient identifiers are hidden a PACS study's UID-named files
  show as ``uid~12345678``; the window calls :meth:`set_reveal` when its privacy toggle flips.
"""

from __future__ import annotations

from pathlib import Path

from PySide6 import QtCore, QtWidgets

from elvis_viewer.masking import Masking

REVIEW_HINT = (
    "<h2>Review</h2><p>Nothing to review yet. A review walks through the phrase boxes of an MS-CXR annotations file "
    "one phrase at a time, the model's map beside them (A accept, R reject, N add a box, J/K next/previous); every "
    "decision is saved as it is made, in a review file beside the annotations.</p>"
    "<p>Start one:</p><ul>"
    "<li><b>Open annotations CSV…</b> below (an MS-CXR CSV or COCO JSON, then the images folder its paths are "
    "relative to), or launch <code>elvis-viewer --annotations CSV --images ROOT --review</code>;</li>"
    "<li>or open a study fetched from a PACS (<b>File → Open from PACS…</b>) and choose <b>File → Resume review "
    "from the study's DICOM SR</b>: the review exported as DICOM SR reopens with every decision restored.</li></ul>")


class ReviewPaneMixin(Masking):
    _header_raw = ""
    _said_raw = ""

    def _build_hint(self, page: QtWidgets.QWidget) -> QtWidgets.QStackedWidget:
        """The hint page (shown while no review is open) stacked over ``page`` (the queue, image and report)."""
        box = QtWidgets.QWidget()
        lay = QtWidgets.QVBoxLayout(box)
        lay.setContentsMargins(60, 40, 60, 40)
        lay.addStretch(1)
        self.hint = QtWidgets.QLabel(REVIEW_HINT)
        self.hint.setWordWrap(True)
        self.hint.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.hint_error = QtWidgets.QLabel("")
        self.hint_error.setWordWrap(True)
        self.hint_error.setStyleSheet("QLabel { color:#d32f2f; font-weight:bold; }")
        self.hint_error.setVisible(False)
        self.open_button = QtWidgets.QPushButton("Open annotations CSV…")
        self.open_button.setFocusPolicy(QtCore.Qt.FocusPolicy.ClickFocus)
        self.open_button.clicked.connect(self.open_annotations_dialog)
        lay.addWidget(self.hint)
        lay.addWidget(self.hint_error)
        lay.addWidget(self.open_button, 0, QtCore.Qt.AlignmentFlag.AlignLeft)
        lay.addStretch(2)
        outer = QtWidgets.QWidget()  # a readable column in the middle of a wide tab
        ol = QtWidgets.QHBoxLayout(outer)
        ol.addStretch(1)
        ol.addWidget(box, 3)
        ol.addStretch(1)
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(outer)
        self.stack.addWidget(page)
        return self.stack

    def hint_shown(self) -> bool:
        return self.stack.currentIndex() == 0

    def _show_hint(self, on: bool) -> None:
        self.stack.setCurrentIndex(0 if on else 1)

    def open_annotations_dialog(self) -> bool:
        """The hint's button: an annotations file, then the folder its image paths are relative to; loads them."""
        ann = QtWidgets.QFileDialog.getOpenFileName(self, "Annotations to review", "",
                                                    "MS-CXR CSV or COCO JSON (*.csv *.json)")[0]
        if not ann:
            return False
        root = QtWidgets.QFileDialog.getExistingDirectory(self, "Images folder the annotation paths are relative to",
                                                          str(Path(ann).parent))
        return bool(root) and self.load(ann, root)

    # ---------------------------------------------------------------------------------- texts, masked
    def _set_header(self, raw: str) -> None:
        self._header_raw = raw
        self.header.setText(self.shown(raw))

    def _fill_problems(self) -> None:
        probs = self.session.problems if self.session is not None else []
        self.problems.clear()
        for p in probs:
            self.problems.addItem(self.shown(str(p)))
        self.problems_label.setText(f"Import problems ({len(probs)})")
        self.problems.setVisible(bool(probs))  # no empty box: the queue gets the room

    def _say(self, msg: str) -> None:
        """A one-line status: to the window's status bar (which masks it) and as this view's status tip."""
        self._said_raw = msg
        self.message.emit(msg)
        self.setStatusTip(self.shown(msg))

    def rebuild(self) -> None:
        """The privacy toggle flipped: every text that can name a file, again."""
        self._set_header(self._header_raw)
        self.setStatusTip(self.shown(self._said_raw))
        self.hint_error.setText(self.shown(f"Cannot load: {self.last_error}") if self.last_error else "")
        if self.session is not None:
            self._fill_problems()
