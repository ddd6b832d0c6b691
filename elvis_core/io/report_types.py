"""The report data types (`Report`, `Section`, `Sentence`), with no import of the parser.

:mod:`elvis_core.io.report_parse` builds them; :mod:`elvis_core.io.report` re-exports them next to
``parse_report`` / ``read_report``. Types here, parser there, facade on top: no import circle.
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

