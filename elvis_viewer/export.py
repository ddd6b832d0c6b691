"""Export = what the screen shows: the visible view(s) (both compare views), with the orientation markers,
colours, fade, boxes and measurements as drawn, plus a header with the phrase and its report mark (negated /
uncertain) and a footer with the checkpoint(s), hash, W/L, opacity and range. Text is drawn by Qt (full Unicode).
The PNG is written atomically (``elvis_core.atomic``); the default name comes from the study and the phrase.

An export never carries a patient identifier, whatever the privacy toggle says: the views are grabbed with the
identity corner text cleared, and a DICOM UID used as a study or file name is replaced by its PS3.15 pseudonym
(:func:`elvis_core.io.privacy.mask_uid_text`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional

from PySide6 import QtCore, QtGui

from elvis_core.atomic import atomic_write_bytes


def default_name(study: str, phrase: str) -> str:
    """``<study>_<phrase>.png`` with only letters, digits and dashes (Unicode letters kept), at most ~80 chars."""
    def slug(s: str, n: int) -> str:
        s = re.sub(r"[^\w]+", "-", s, flags=re.UNICODE).strip("-_")
        return s[:n].strip("-") or ""
    parts = [p for p in (slug(study, 40), slug(phrase, 40)) if p]
    return ("_".join(parts) or "elvis_view") + ".png"


def safe_stem(path_or_key: str) -> str:
    """A study key or file name fit for an export: its base name (extension dropped), a UID as its pseudonym."""
    from elvis_core.io.privacy import mask_uid_text

    base = os.path.basename(str(path_or_key or "").rstrip("/\\"))
    stem, ext = os.path.splitext(base)
    if ext.lower() in (".dcm", ".dicom", ".png", ".jpg", ".jpeg"):
        base = stem
    return mask_uid_text(base)


def grab_views(win) -> List[QtGui.QImage]:
    """The visible views as drawn, with the identity corner text (shown while the privacy toggle is on) cleared for
    the grab and put back after."""
    views = [iv for iv in win.views() if iv.isVisible() and iv.rad is not None] or [win.image_view]
    for iv in win.views():
        iv.set_identity_text("")
    try:
        return [iv.grab_view() for iv in views]
    finally:
        win._update_identity()


def compose(views: List[QtGui.QImage], header: List[tuple], footer: str, scale: float = 1.0) -> QtGui.QImage:
    """Views side by side with a header (lines of (text, colour)) and a footer line."""
    w = sum(v.width() for v in views) + 4 * (len(views) - 1)
    h_img = max(v.height() for v in views)
    font = QtGui.QFont("DejaVu Sans")
    font.setPixelSize(max(12, int(15 * scale)))
    fm = QtGui.QFontMetrics(font)
    line = fm.height() + 4
    head_h = line * len(header) + 8
    foot_font = QtGui.QFont(font)
    foot_font.setPixelSize(max(10, int(12 * scale)))
    ffm = QtGui.QFontMetrics(foot_font)
    foot_lines = _wrap(footer, ffm, w - 16)
    foot_h = (ffm.height() + 2) * len(foot_lines) + 8
    out = QtGui.QImage(w, head_h + h_img + foot_h, QtGui.QImage.Format.Format_RGB888)
    out.fill(QtGui.QColor("#101214"))
    p = QtGui.QPainter(out)
    p.setRenderHint(QtGui.QPainter.RenderHint.TextAntialiasing)
    p.setFont(font)
    y = 4
    for text, colour in header:
        p.setPen(QtGui.QColor(colour))
        p.drawText(QtCore.QRect(8, y, w - 16, line), QtCore.Qt.AlignmentFlag.AlignVCenter,
                   fm.elidedText(text, QtCore.Qt.TextElideMode.ElideRight, w - 16))
        y += line
    x = 0
    for v in views:
        p.drawImage(x, head_h, v)
        x += v.width() + 4
    p.setFont(foot_font)
    p.setPen(QtGui.QColor("#b0b4ba"))
    y = head_h + h_img + 4
    for ln in foot_lines:
        p.drawText(8, y + ffm.ascent(), ln)
        y += ffm.height() + 2
    p.end()
    return out


def _wrap(text: str, fm: QtGui.QFontMetrics, width: int) -> List[str]:
    lines, cur = [], ""
    for part in text.split(" | "):
        cand = part if not cur else cur + " | " + part
        if fm.horizontalAdvance(cand) <= width or not cur:
            cur = cand
        else:
            lines.append(cur)
            cur = part
    return lines + ([cur] if cur else [])


def trust_header(win) -> List[tuple]:
    """Header lines saying how far to believe what is exported: each visible map's trust line (prefixed with its
    checkpoint in compare mode; amber unless calibrated, confident and every word known), the words the model does
    not know, and an inverted-film warning."""
    from elvis_viewer.view_items import inversion_text, trust_texts

    out = []
    views = [iv for iv in win.views() if iv.isVisible() and iv.rad is not None] or [win.image_view]
    if views[0].rad is not None and inversion_text(views[0].rad):
        out.append(("⚠ " + inversion_text(views[0].rad), "#ff6e6e"))
    for iv in views:
        g = iv.gmap
        lines = trust_texts(g)
        if not lines:
            continue
        ok = g.confident is True and not g.unknown_words
        who = f"{iv._caption}: " if len(views) > 1 and iv._caption else ""
        out.append((who + lines[0], "#d8dce0" if ok else "#ffc04d"))
        out += [(ln, "#ffc04d") for ln in lines[1:]]
    return out


def export_window(win, path: str) -> Optional[Path]:
    """Write the main window's current viewer picture to ``path`` (PNG); returns the path or None (message shown)."""
    from elvis_viewer.display_binding import phrase_note

    s = win.session
    d = s.display
    if s.rad is None or not d.current:  # never the previous item while the next one loads or failed to read
        why = (f"{d.pending.name} is still loading" if d.pending is not None else d.error or "open an image first")
        win.show_message("Nothing to export: " + why)
        return None
    views = grab_views(win)
    header = []
    if s.phrase.text:
        header.append((f"“{s.phrase.text}”", "#ffffff"))
        a, note = s.phrase.assertion, phrase_note(s)  # a pinned phrase carried here says so, as on screen
        if note:
            header.append(("⚠ " + note + ": the map shows where the words point, not that it is present",
                           "#ff6e6e" if a is not None and a.kind == "negated" else "#ffc04d"))
    header += trust_header(win)
    if s.provenance_text:
        header.append(("⚠ " + s.provenance_text, "#ffc04d"))
    if not header:
        header.append((safe_stem(s.rad_path or ""), "#ffffff"))
    c, w = win.image_view.window()
    ov = win.overlay_panel.settings()
    foot = []
    for k in s.active_slots():
        sl = s.slots[k]
        foot.append(f"{'left' if k == 0 else 'right'}: {sl.name} {sl.hash[:12]}"
                    + (f" σ {sl.engine.smoothing_sigma:g}" if sl.engine is not None else ""))
    foot += [f"W {w:.4g} L {c:.4g}" + (" inverted" if win.image_view.inverted() else ""),
             f"opacity {ov.opacity:.2f}", f"range {ov.range}" + (" shared" if s.compare and ov.shared_scale else ""),
             "fade" if ov.fade else "no fade", ov.colormap]
    foot += win.image_view.measure.summary()
    img = compose(views, header, " | ".join(foot))
    buf = QtCore.QBuffer()
    buf.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
    if not img.save(buf, "PNG"):
        win.show_message(f"{path}: export failed: could not encode PNG")
        return None
    try:
        out = atomic_write_bytes(path, bytes(buf.data()))
    except OSError as e:
        win.show_message(f"{path}: export failed: {e}")
        return None
    win.show_status(f"Exported {out}", 8000)
    return Path(out)
