"""The `Report` data type: exact original text plus sections and sentences as character spans.

Parsing lives in :func:`parse_report` / :func:`read_report` (implemented by the foundation issue).
Spans are half-open ``[start, end)`` offsets into ``Report.text``; ``text[start:end]`` is the exact original
substring (wrapping newlines included), so a phrase selected in a viewer maps back to the file byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass(frozen=True)
class Section:
    #: upper-case header without the colon ("FINDINGS"), or "" for text outside any header
    name: str
    #: span of the header line incl. colon (start == end when there is no header)
    header_start: int
    header_end: int
    #: span of the body (stripped of surrounding whitespace)
    start: int
    end: int


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    #: name of the section the sentence lies in ("" when none)
    section: str = ""


@dataclass
class Report:
    text: str
    sections: List[Section] = field(default_factory=list)
    sentences: List[Sentence] = field(default_factory=list)
    source_path: Optional[str] = None
    warnings: List[str] = field(default_factory=list)

    def span_text(self, start: int, end: int) -> str:
        return self.text[start:end]

    def sentence_text(self, sentence: Sentence) -> str:
        return self.text[sentence.start:sentence.end]

    def sentence_at(self, offset: int) -> Optional[Sentence]:
        for s in self.sentences:
            if s.start <= offset < s.end:
                return s
        return None

    def section(self, name: str) -> Optional[Section]:
        for s in self.sections:
            if s.name == name.upper():
                return s
        return None

    def find(self, phrase: str, start: int = 0) -> Optional[tuple]:
        """Span of ``phrase`` in the text, tolerant of line wrapping (any whitespace run matches any other)."""
        import re

        words = phrase.split()
        if not words:
            return None
        pattern = r"\s+".join(re.escape(w) for w in words)
        m = re.compile(pattern).search(self.text, start)
        return (m.start(), m.end()) if m else None


def parse_report(text: str, source_path=None) -> Report:
    """Parse report text into sections and sentences; see :mod:`elvis_core.io.report_parse` for the rules."""
    from elvis_core.io.report_parse import parse_report as _parse

    return _parse(text, source_path)


def read_report(path) -> Report:
    """Read a report file (UTF-8, else latin-1 with a warning) and parse it; ``ReportReadError`` when empty/binary."""
    from elvis_core.io.report_parse import read_report as _read

    return _read(path)
