"""`StudyBrowser` (left dock: one row per image under a header row per study, plus the Problems list) and
`ThumbnailStrip` (a flat horizontal strip under the image, as in OHIF/Weasis). Both render the session's flat
image list; moving the current row (click, Up/Down, Home/End) opens that image. While patient identifiers are hidden
(the default) every DICOM UID in a label or tooltip (a study key, a PACS cache's folder and file names) is shown as
its pseudonym (:mod:`elvis_viewer.masking`)."""

from __future__ import annotations

from typing import Dict

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from elvis_viewer.masking import Masking

ROLE = QtCore.Qt.ItemDataRole.UserRole


def _icon(arr: np.ndarray) -> QtGui.QIcon:
    h, w = arr.shape
    img = QtGui.QImage(np.ascontiguousarray(arr).data, w, h, w, QtGui.QImage.Format.Format_Grayscale8).copy()
    return QtGui.QIcon(QtGui.QPixmap.fromImage(img))


class _EntryList(Masking, QtWidgets.QListWidget):
    """A list of the session's images; the current row follows the session and opens images."""

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.rows: Dict[str, QtWidgets.QListWidgetItem] = {}
        self.icons: Dict[str, QtGui.QIcon] = {}  # kept across rebuilds (opening more files rebuilds the list)
        self._syncing = False
        self.currentItemChanged.connect(self._on_current)
        session.imageChanged.connect(self.follow)
        session.displayChanged.connect(self._follow_display)  # the item being read, or whose read failed
        session.thumbnailReady.connect(self.set_thumbnail)

    def _follow_display(self) -> None:
        d = self.session.display
        key = d.pending or d.key
        if key is not None:
            self.follow(key.image)

    def _on_current(self, cur, _prev) -> None:
        if self._syncing or cur is None:
            return
        path = cur.data(ROLE)
        if path and path != self.session.rad_path:
            self.session.select_image(path)

    def follow(self, path: str) -> None:
        item = self.rows.get(path)
        if item is not None and self.currentItem() is not item:
            self._syncing = True
            self.setCurrentItem(item)
            self.scrollToItem(item)
            self._syncing = False

    def set_thumbnail(self, path: str, arr) -> None:
        self.icons[path] = _icon(arr)
        self._apply_icon(path)

    def _apply_icon(self, path: str) -> None:
        item, icon = self.rows.get(path), self.icons.get(path)
        if item is not None and icon is not None:
            item.setIcon(icon)
            item.setData(ROLE + 1, True)

    def rebuild(self) -> None:  # the owner fills the list
        pass

    def image_paths(self):
        return [self.item(i).data(ROLE) for i in range(self.count()) if self.item(i).data(ROLE)]


class StudyBrowser(Masking, QtWidgets.QWidget):
    """Studies → images as one list (a bold header per study, then its images), and the Problems list."""

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.problems = []  # (path, message) as they came; shown masked
        self.list = _EntryList(session)
        session.studiesChanged.connect(self.rebuild)
        self.list.setIconSize(QtCore.QSize(40, 40))
        self.list.setUniformItemSizes(False)
        self.list.setWordWrap(False)
        self.list.setTextElideMode(QtCore.Qt.TextElideMode.ElideMiddle)
        self.list.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.problem_title = QtWidgets.QLabel("Problems (0)")
        self.problem_list = QtWidgets.QListWidget()
        self.problem_list.setWordWrap(True)
        split = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        split.addWidget(self.list)
        box = QtWidgets.QWidget()
        bl = QtWidgets.QVBoxLayout(box)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(self.problem_title)
        bl.addWidget(self.problem_list)
        split.addWidget(box)
        split.setSizes([600, 120])
        self.problem_list.setVisible(False)  # shown with the first problem; the title always says how many
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)
        session.problemAdded.connect(self.add_problem)

    def rebuild(self) -> None:
        lst = self.list
        lst._syncing = True
        lst.clear()
        lst.rows = {}
        last_study = None
        bold = QtGui.QFont()
        bold.setBold(True)
        for e in self.session.entries:
            if e.study_key != last_study:
                last_study = e.study_key
                head = QtWidgets.QListWidgetItem(self.shown(e.study_label or e.study_key))
                head.setFlags(QtCore.Qt.ItemFlag.NoItemFlags)  # keyboard navigation skips it
                head.setFont(bold)
                head.setForeground(QtGui.QColor("#9fc3ff"))
                head.setToolTip(self.shown(e.study_key + ("\nreport: " + e.report_path if e.report_path
                                                          else "\nno report")))
                lst.addItem(head)
            item = QtWidgets.QListWidgetItem("   " + self.shown(e.label))
            item.setData(ROLE, e.path)
            item.setToolTip(self.shown(e.path))
            lst.addItem(item)
            lst.rows[e.path] = item
            lst._apply_icon(e.path)
        lst._syncing = False
        if self.session.rad_path:
            lst.follow(self.session.rad_path)

    def set_reveal(self, on: bool) -> None:
        if bool(on) != self.reveal:
            self.reveal = bool(on)
            self.rebuild()
            self.problem_list.clear()
            problems, self.problems = self.problems, []
            for p, m in problems:
                self.add_problem(p, m)

    def add_problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))
        item = QtWidgets.QListWidgetItem(self.shown(message))
        item.setForeground(QtGui.QColor("#ff8a80"))
        item.setToolTip(self.shown(message))
        self.problem_list.addItem(item)
        self.problem_list.setVisible(True)
        self.problem_title.setText(f"Problems ({self.problem_list.count()})")


class ThumbnailStrip(_EntryList):
    """Every image of the session left to right, thumbnails with short labels; the current one highlighted."""

    def __init__(self, session, parent=None):
        super().__init__(session, parent)
        self.setViewMode(QtWidgets.QListView.ViewMode.IconMode)
        self.setFlow(QtWidgets.QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QtWidgets.QListView.Movement.Static)
        self.setIconSize(QtCore.QSize(72, 72))
        self.setGridSize(QtCore.QSize(96, 100))
        self.setFixedHeight(118)
        self.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setTextElideMode(QtCore.Qt.TextElideMode.ElideMiddle)
        self.wanted = True  # View → Panels → Thumbnail strip; shown only once there are images
        self.setVisible(False)
        session.studiesChanged.connect(self.rebuild)

    def set_wanted(self, on: bool) -> None:
        self.wanted = bool(on)
        self.setVisible(self.wanted and self.count() > 0)

    def rebuild(self) -> None:
        self._syncing = True
        self.clear()
        self.rows = {}
        for k, e in enumerate(self.session.entries):
            item = QtWidgets.QListWidgetItem(f"{k + 1}. {self.shown(e.label.split()[0])}")
            item.setData(ROLE, e.path)
            item.setToolTip(self.shown(f"{e.study_label or e.study_key}\n{e.label}"))
            item.setTextAlignment(QtCore.Qt.AlignmentFlag.AlignHCenter)
            self.addItem(item)
            self.rows[e.path] = item
            self._apply_icon(e.path)
        self._syncing = False
        self.setVisible(self.wanted and self.count() > 0)
        if self.session.rad_path:
            self.follow(self.session.rad_path)
