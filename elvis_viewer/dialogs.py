"""Dialogs of the main window: the DICOM tag inspector (searchable, identifiers masked unless the privacy toggle
is on) and the keyboard-shortcut sheet (built from the actions table)."""

from __future__ import annotations

from typing import Optional

from PySide6 import QtCore, QtWidgets

from elvis_core.errors import ElvisError
from elvis_viewer.actions import shortcut_rows


IDENTITY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate")


def identity_text(path: Optional[str]) -> str:
    """The patient identifiers of a DICOM file for the corner text; called ONLY while the privacy toggle is on."""
    if not path:
        return ""
    from elvis_core.io.privacy import dicom_tag_rows

    try:
        vals = {kw: v for _t, kw, _vr, v in dicom_tag_rows(path, reveal_identifiers=True)
                if kw in IDENTITY_KEYWORDS and v}
    except ElvisError:
        return ""  # not DICOM (JPG/PNG): nothing to show
    return "  ".join(vals[k] for k in IDENTITY_KEYWORDS if k in vals)


def tag_inspector(parent, path: str, reveal: bool) -> Optional[QtWidgets.QDialog]:
    from elvis_core.io.privacy import UID_TAGS, dicom_tag_rows

    try:
        rows = dicom_tag_rows(path, reveal_identifiers=reveal)
    except ElvisError as e:
        parent.show_message(str(e))
        return None
    if not reveal:  # a pseudonymised UID says so (PS3.15 action U: it is not the file's UID)
        rows = [(t, kw, vr, v + "  (pseudonym)" if v and int(t[1:5] + t[6:10], 16) in UID_TAGS else v)
                for t, kw, vr, v in rows]
    dlg = QtWidgets.QDialog(parent)
    dlg.setWindowTitle("DICOM tags — " + ("identifiers SHOWN" if reveal else "identifiers masked"))
    table = QtWidgets.QTableWidget(len(rows), 4)
    table.setHorizontalHeaderLabels(["Tag", "Keyword", "VR", "Value"])
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            item = QtWidgets.QTableWidgetItem(str(v))
            item.setToolTip(str(v))
            table.setItem(i, j, item)
    table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
    table.resizeColumnsToContents()
    table.horizontalHeader().setStretchLastSection(True)
    table.setWordWrap(False)
    search = QtWidgets.QLineEdit()
    search.setPlaceholderText("Search tags, keywords or values…")
    search.setClearButtonEnabled(True)

    def filt(text: str) -> None:
        t = text.strip().lower()
        for i in range(table.rowCount()):
            hit = not t or any(t in (table.item(i, j).text().lower()) for j in range(4))
            table.setRowHidden(i, not hit)
    search.textChanged.connect(filt)
    lay = QtWidgets.QVBoxLayout(dlg)
    lay.addWidget(QtWidgets.QLabel("Patient identifiers are SHOWN." if reveal else
                                   "Patient identifiers are masked (View → Show patient identifiers)."))
    lay.addWidget(search)
    lay.addWidget(table)
    dlg.resize(900, 640)
    dlg.table, dlg.search = table, search
    dlg.show()
    return dlg


def shortcut_sheet(parent) -> QtWidgets.QDialog:
    dlg = QtWidgets.QDialog(parent)
    dlg.setWindowTitle("Keyboard shortcuts")
    rows = shortcut_rows()
    html = "<table cellpadding='3'>" + "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows) \
        + "</table>"
    lab = QtWidgets.QLabel(html)
    lab.setTextFormat(QtCore.Qt.TextFormat.RichText)
    area = QtWidgets.QScrollArea()
    area.setWidget(lab)
    lay = QtWidgets.QVBoxLayout(dlg)
    lay.addWidget(area)
    dlg.resize(560, 640)
    dlg.show()
    return dlg
