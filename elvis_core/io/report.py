"""The `Report` data type: exact original text plus sections and sentences as character spans.

Spans are half-open ``[start, end)`` offsets into ``Report.text``; ``text[start:end]`` is the exact original
substring (wrapping newlines included), so a phrase selected in a viewer maps back to the file byte for byte.

Layout (no import circle): the types live in :mod:`elvis_core.io.report_types`, the parser in
:mod:`elvis_core.io.report_parse` (which imports only the types), and this module re-exports both.
"""

from __future__ import annotations

from elvis_core.io.report_parse import parse_report, read_report
from elvis_core.io.report_types import Report, Section, Sentence

__all__ = ["Report", "Section", "Sentence", "parse_report", "read_report"]
