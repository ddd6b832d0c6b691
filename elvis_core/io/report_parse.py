"""Free-text radiology report → :class:`~elvis_core.io.report.Report` with exact character spans.

Rules (MIMIC-CXR style, documented in docs/foundation.md):

- A **header** is an all-caps name at the start of a line ending in ``:`` (``FINDINGS:``, ``EXAMINATION:``,
  ``PA AND LATERAL VIEWS OF THE CHEST:``), or a common section name in any case (``Findings:``, ``Impression:``);
  its name is upper-cased. Text may follow on the same line and belongs to that section's body.
  Text before the first header (or a whole report without headers) is a section named ``""``.
- **Sentences** never cross a section boundary. They end at ``.``, ``!`` or ``?`` followed by whitespace/end, but not
  after common abbreviations (``e.g.``, ``i.e.``, ``Dr.``, ``vs.``, ``approx.``...), nor when the next word starts in
  lower case; decimals (``3.5 cm``) never split (no whitespace after the point). A blank line, and the start of a
  numbered (``1. ``, ``2) ``) or bulleted (``- ``) list item, also end a sentence; the list marker itself is not part of
  the sentence span. Wrapped lines (79 columns) are joined: a sentence span may contain newlines.
- ``___`` (de-identification placeholders) are ordinary words.
- Spans are half-open offsets into the original text, stripped of surrounding whitespace.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

from elvis_core.errors import ReportReadError
from elvis_core.io.report_types import Report, Section, Sentence

_HEADER_RE = re.compile(r"(?m)^[ \t]*(?P<name>[A-Z][A-Z0-9 /&(),'\-]*?[A-Z)])[ \t]*:")
_LIST_RE = re.compile(r"(?m)^[ \t]*(?:\d{1,2}[.)]|[-*\u2022])[ \t]+")
_MARKER_AT_RE = re.compile(r"(?:\d{1,2}[.)]|[-*\u2022])[ \t]+")
_INLINE_MARKER_RE = re.compile(r"\d{1,2}[.)]")
_BLANK_RE = re.compile(r"\n[ \t]*\n")
# a run of terminal punctuation is matched only from its first character (the look-behind) and possessively, so a
# run that is not followed by whitespace fails once, not once per start position (100 kB of dots: linear, not n^2)
_END_RE = re.compile(r"(?<![.!?])[.!?]++(?=[\s\"')\]]|$)")
_ABBREVIATIONS = {
    "e.g", "i.e", "eg", "ie", "dr", "mr", "mrs", "ms", "vs", "approx", "cf", "fig", "al", "resp", "incl", "esp",
    "viz", "a.m", "p.m", "etc.",
}
_WORD_BEFORE_RE = re.compile(r"([A-Za-z](?:[A-Za-z.]*[A-Za-z])?)$")
_MAX_HEADER_WORDS = 8
#: section names recognised in any letter case (MIMIC uses all caps; other sources write "Findings:")
_KNOWN_HEADERS = (
    "findings", "impression", "impressions", "indication", "indications", "comparison", "comparisons", "technique",
    "history", "clinical history", "clinical information", "examination", "exam", "conclusion", "conclusions",
    "recommendation", "recommendations", "notification", "reason for exam", "final report", "addendum",
)
_KNOWN_HEADER_RE = re.compile(
    r"(?mi)^[ \t]*(?P<name>" + "|".join(re.escape(h).replace(r"\ ", r"[ \t]+") for h in
                                          sorted(_KNOWN_HEADERS, key=len, reverse=True)) + r")[ \t]*:"
)


def _headers(text: str) -> List[Tuple[int, int, int, str]]:
    """(line-start of name, name start, end incl. colon, NAME) of each header."""
    found = {}
    for m in _HEADER_RE.finditer(text):
        name = " ".join(m.group("name").split())
        letters = [c for c in name if c.isalpha()]
        if len(letters) < 2 or len(name.split()) > _MAX_HEADER_WORDS:
            continue
        found[m.start()] = (m.start(), m.start("name"), m.end(), name)
    for m in _KNOWN_HEADER_RE.finditer(text):  # "Findings:", "Impression:" in reports that are not all caps
        if m.start() not in found:
            found[m.start()] = (m.start(), m.start("name"), m.end(), " ".join(m.group("name").upper().split()))
    return [found[k] for k in sorted(found)]


def _strip_span(text: str, start: int, end: int) -> Tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _is_abbreviation(text: str, chunk_start: int, dot: int) -> bool:
    """True when the '.' at ``dot`` closes an abbreviation such as 'e.g.' or 'Dr.'."""
    if text[dot] != ".":
        return False
    m = _WORD_BEFORE_RE.search(text, max(chunk_start, dot - 12), dot)
    if not m:
        return False
    word = m.group(1).lower()
    return word in _ABBREVIATIONS


def _has_word(text: str, s: int, e: int) -> bool:
    return any(c.isalnum() or c == "_" for c in text[s:e])


def _split_chunk(text: str, start: int, end: int, section: str) -> List[Sentence]:
    out: List[Sentence] = []
    pos = start
    for m in _END_RE.finditer(text, start, end):
        stop = m.end()
        if m.group(0) == "." and _is_abbreviation(text, start, m.start()):
            continue
        # next word starts in lower case → not a sentence end ("approx. 3 cm", "3 cm. below")
        k = stop
        while k < end and text[k] in " \t\r\n\"')]":
            k += 1
        if k < end and (text[k].islower()):
            continue
        s, e = _strip_span(text, pos, stop)
        if _INLINE_MARKER_RE.fullmatch(text, s, e):
            # an inline list marker ("... bar. 2. Baz"): not a sentence, and not part of the next one
            pos = stop
            continue
        if e > s and _has_word(text, s, e):
            out.append(Sentence(s, e, section))
        pos = stop
    s, e = _strip_span(text, pos, end)
    if e > s and _has_word(text, s, e):
        out.append(Sentence(s, e, section))
    return out


def _sentences(text: str, start: int, end: int, section: str) -> List[Sentence]:
    # hard breaks: blank lines, list item starts (the marker is excluded from the sentence)
    cuts: List[Tuple[int, int]] = []  # (cut position, resume position)
    for m in _BLANK_RE.finditer(text, start, end):
        cuts.append((m.start(), m.end()))
    line_start = text.rfind("\n", 0, start) + 1
    for m in _LIST_RE.finditer(text, line_start, end):
        if m.end() > start:
            cuts.append((max(m.start(), start), m.end()))
    m = _MARKER_AT_RE.match(text, start, end)  # "IMPRESSION: 1. ..." (marker right after the header)
    if m and not any(c[0] == start for c in cuts):
        cuts.append((start, m.end()))
    cuts.sort()
    out: List[Sentence] = []
    pos = start
    for cut, resume in cuts:
        if cut < pos:
            pos = max(pos, resume)
            continue
        out.extend(_split_chunk(text, pos, cut, section))
        pos = resume
    out.extend(_split_chunk(text, pos, end, section))
    return out


def parse_report(text: str, source_path: Optional[os.PathLike | str] = None) -> Report:
    """Parse report text into sections and sentences (spans into ``text``, which is kept exactly)."""
    src = None if source_path is None else os.fspath(source_path)
    if not isinstance(text, str):
        raise ReportReadError("report text must be a str", src)
    if not text.strip():
        raise ReportReadError("empty report", src)
    headers = _headers(text)
    sections: List[Section] = []
    sentences: List[Sentence] = []
    first = headers[0][0] if headers else len(text)
    s0, e0 = _strip_span(text, 0, first)
    if e0 > s0:
        sections.append(Section("", s0, s0, s0, e0))
        sentences.extend(_sentences(text, s0, e0, ""))
    for i, (_line, hstart, hend, name) in enumerate(headers):
        nxt = headers[i + 1][0] if i + 1 < len(headers) else len(text)
        bs, be = _strip_span(text, hend, nxt)
        if be <= bs:
            bs = be = hend
        sections.append(Section(name, hstart, hend, bs, be))
        if be > bs:
            sentences.extend(_sentences(text, bs, be, name))
    return Report(text=text, sections=sections, sentences=sentences, source_path=src)


def _looks_binary(text: str) -> bool:
    sample = text[:65536]
    if not sample:
        return False
    if "\x00" in sample:
        return True
    bad = sum(1 for c in sample if (c < "\t") or ("\r" < c < " ") or c == "\x7f" or ("\x80" <= c <= "\x9f"))
    return bad / len(sample) > 0.05


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def decode_report_bytes(data: bytes, path: Optional[str] = None) -> Tuple[str, List[str]]:
    """Bytes of a report file → (text, warnings). A byte-order mark selects UTF-8 / UTF-16 / UTF-32; else UTF-8;
    else Windows-1252 / latin-1 **only when the result reads as text** (mostly ASCII, letters for the high bytes):
    random high bytes or binary are a :class:`ReportReadError`, not a report."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(enc), []
            except UnicodeDecodeError:
                raise ReportReadError(f"starts with a {enc.upper()} byte-order mark but is not valid {enc.upper()}",
                                      path) from None
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    if b"\x00" in data[:65536]:
        raise ReportReadError("binary file, not a text report (NUL bytes)", path)
    high = sum(1 for b in data[:65536] if b >= 0x80)
    n = min(len(data), 65536)
    if n and high / n > 0.3:
        raise ReportReadError(f"not text in a known encoding ({100 * high // n}% of bytes are non-ASCII and not "
                              "valid UTF-8)", path)
    for enc in ("cp1252", "latin-1"):
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        odd = sum(1 for c in text[:65536] if ord(c) >= 0x80 and not (c.isalpha() or c in "°±µ·×÷–—‘’“”„•…€£§©®¼½¾²³"))
        if high and odd / high > 0.5:
            raise ReportReadError("not text in a known encoding (its non-ASCII bytes are not letters in UTF-8, "
                                  "Windows-1252 or latin-1)", path)
        return text, [f"not valid UTF-8: read as {'Windows-1252 (latin-1 superset)' if enc == 'cp1252' else 'latin-1'}"]
    raise ReportReadError("not text in a known encoding", path)  # pragma: no cover - latin-1 decodes anything


def read_report(path: os.PathLike | str) -> Report:
    """Read and parse a report file: a BOM's encoding, else UTF-8, else Windows-1252/latin-1 with a warning when it
    reads as text. Raises :class:`ReportReadError` for a missing, unreadable, empty, binary or too large file
    (``limits().max_report_bytes``, checked before reading)."""
    from elvis_core.io.limits import limits, mib

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ReportReadError("no such file", path)
    if os.path.isdir(path):
        raise ReportReadError("is a folder, not a report", path)
    from elvis_core.io.paths import require_regular_file

    require_regular_file(path, ReportReadError, "report file")
    limit = limits().max_report_bytes
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if head[128:132] == b"DICM":  # a report stored as a DICOM SR (Basic Text / Enhanced / Comprehensive)
            from elvis_core.io.sr_report import read_sr_report

            return read_sr_report(path)
        size = os.path.getsize(path)
        if size > limit:
            raise ReportReadError(f"is {mib(size)}, larger than the report limit of {mib(limit)} "
                                  "(ELVIS_MAX_REPORT_MB): not a radiology report?", path)
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise ReportReadError(f"cannot read ({err.strerror or type(err).__name__})", path) from None
    if len(data) > limit:
        raise ReportReadError(f"is larger than the report limit of {mib(limit)} (ELVIS_MAX_REPORT_MB)", path)
    if not data.strip():
        raise ReportReadError("empty report", path)
    text, warnings = decode_report_bytes(data, path)
    if not text.strip():
        raise ReportReadError("empty report", path)
    if _looks_binary(text):
        raise ReportReadError("binary file, not a text report (NUL bytes or mostly non-printable)", path)
    report = parse_report(text, path)
    report.warnings.extend(warnings)
    return report
