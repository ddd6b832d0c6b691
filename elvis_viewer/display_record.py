"""What the viewer displays, as ONE record keyed by the image and study it belongs to (DESIGN.md, "One study on
screen at a time").

:class:`ViewerSession` holds a :class:`DisplayRecord`: the image, the report (and how it was paired), the phrase,
the maps (with the checkpoint that made them) and, derived from them, the boxes. Each part carries the
:class:`StudyKey` of the item it was made for; :func:`violations` lists every part whose key differs from the
record's (the property test calls it at every signal the session emits, and views render a part only when its key
is the current one). Measurements live in the image view and are cleared with every new image.

States: ``empty`` (nothing open), ``loading`` (the next item is being read: the parts on screen are the previous
item's, which views dim and label "loading"), ``shown``, ``failed`` (the read failed: every part is cleared and
:attr:`DisplayRecord.error` says "cannot display FILE: reason").
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

EMPTY, LOADING, SHOWN, FAILED = "empty", "loading", "shown", "failed"
CARRIED_NOTE = "typed, not from this report"


@dataclass(frozen=True)
class StudyKey:
    """Which image (as listed) of which study a displayed part belongs to."""

    image: str
    study: str

    @property
    def name(self) -> str:
        return os.path.basename(self.image)


@dataclass
class PhraseState:
    """The phrase on screen. ``span``: where it is in the report (None = typed). ``pinned``: kept across studies
    (the pin toggle); ``carried``: it came from another study's report or typing, so it is shown as "typed, not from
    this report" with its negation checked against THIS report."""

    text: str = ""
    span: Optional[Tuple[int, int]] = None
    assertion: Any = None  # elvis_core.io.negation.Assertion
    t0: float = 0.0
    gens: Dict[int, int] = field(default_factory=dict)
    key: Optional[StudyKey] = None
    pinned: bool = False
    carried: bool = False
    #: the study the phrase was chosen on (its report, or typed there)
    origin: str = ""

    @property
    def origin_note(self) -> str:
        return CARRIED_NOTE if (self.text and self.carried) else ""


@dataclass
class DisplayRecord:
    key: Optional[StudyKey] = None
    state: str = EMPTY
    #: the item being read while ``state == LOADING`` (``key`` still names the one on screen, dimmed)
    pending: Optional[StudyKey] = None
    error: str = ""
    rad: Any = None
    rad_key: Optional[StudyKey] = None
    report: Any = None
    report_key: Optional[StudyKey] = None
    #: how the report was paired with the study (elvis_core.io.report_pairing: "MIMIC layout", ...)
    pairing: str = ""

    def start_loading(self, key: StudyKey) -> None:
        self.pending = key
        if self.state != EMPTY:
            self.state = LOADING

    def show(self, key: StudyKey, rad, report, pairing: str) -> None:
        self.key, self.state, self.pending, self.error = key, SHOWN, None, ""
        self.rad, self.rad_key = rad, key
        self.report, self.report_key = report, (key if report is not None else None)
        self.pairing = pairing if report is not None else ""

    def set_report(self, report, pairing: str) -> None:
        self.report, self.report_key, self.pairing = report, self.key, pairing

    def fail(self, key: StudyKey, error: str) -> None:
        self.key, self.state, self.pending, self.error = key, FAILED, None, error
        self.rad = self.rad_key = self.report = self.report_key = None
        self.pairing = ""

    def settle(self) -> None:
        """The pending read was superseded or dropped: back to what is on screen."""
        self.pending = None
        if self.state == LOADING:
            self.state = SHOWN if self.rad is not None else (FAILED if self.error else EMPTY)

    @property
    def current(self) -> bool:
        """True when the parts on screen are the item the user asked for (not loading, not failed)."""
        return self.state == SHOWN

    def title(self, mask: Callable[[str], str] = str) -> str:
        """The window title; ``mask`` masks file names (UIDs while identifiers are hidden), the error's included."""
        if self.state == FAILED and self.key is not None:
            return f"ELVIS Viewer — {mask(self.error)}"
        if self.state == LOADING and self.pending is not None:
            return f"ELVIS Viewer — loading {mask(self.pending.name)} …"
        if self.key is not None and self.rad is not None:
            return f"ELVIS Viewer — {mask(self.key.name)}"
        return "ELVIS Viewer"

    def report_header(self, mask: Callable[[str], str] = str) -> str:
        """"Report — s5001.txt (paired: MIMIC layout)", or why there is none."""
        if self.state == FAILED:
            return "Report — none (the image could not be read)"
        rep = self.report
        if rep is None:
            return "Report — none paired with this study" if self.key is not None else "Report"
        name = os.path.basename(rep.source_path) if getattr(rep, "source_path", None) else "report"
        return f"Report — {mask(name)} (paired: {self.pairing or 'unknown'})"


def carried_phrase(text: str, key: StudyKey, report, origin: str) -> PhraseState:
    """A pinned phrase taken to another study: typed text, its negation checked against the new report."""
    from elvis_core.io.negation import pinned_phrase_assertion

    return PhraseState(text=text, span=None, key=key, pinned=True, carried=True, t0=time.perf_counter(), origin=origin,
                       assertion=pinned_phrase_assertion(text, report.text if report is not None else None))


def violations(session) -> List[str]:
    """Every displayed part whose key differs from the current key (empty parts are fine). [] = invariant holds."""
    d = session.display
    out = []
    if d.rad is not None and d.rad_key != d.key:
        out.append(f"image of {d.rad_key} shown for {d.key}")
    if d.report is not None and d.report_key != d.key:
        out.append(f"report of {d.report_key} shown for {d.key}")
    if d.state in (EMPTY, FAILED) and (d.rad is not None or d.report is not None):
        out.append(f"{d.state} record still holds an image or report")
    if d.state == LOADING and d.pending is None:
        out.append("loading without a pending item")
    p = session.phrase
    if p.text and p.key != d.key:
        out.append(f"phrase {p.text!r} of {p.key} shown for {d.key}")
    if p.text and d.key is not None and p.origin != d.key.study and not p.carried:
        out.append(f"phrase {p.text!r} of study {p.origin!r} shown on study {d.key.study!r} as if from its report")
    for k, s in enumerate(session.slots):
        if s.gmap is None:
            continue
        if s.map_key != d.key:
            out.append(f"slot {k} map of {s.map_key} shown for {d.key}")
        if s.gmap.phrase != p.text:
            out.append(f"slot {k} map of phrase {s.gmap.phrase!r}, phrase on screen {p.text!r}")
        if s.engine is None or s.map_hash != s.hash:
            out.append(f"slot {k} map made by checkpoint {s.map_hash[:12]!r}, slot holds {s.hash[:12]!r}")
    boxes, _note = session.boxes_for_phrase()
    if boxes and (d.rad is None or p.key != d.key):
        out.append(f"boxes of {p.key} shown for {d.key} ({d.state})")
    return out
