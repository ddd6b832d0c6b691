"""Phantom chest X-ray studies: procedurally drawn PA radiographs with MS-CXR-style findings, boxes and reports.

Public API:
- :func:`render_study` — one study in memory (:class:`PhantomStudy`: image, finding-free image, findings with boxes,
  report text, phrases).
- :func:`generate` — N studies on disk in the MIMIC-CXR tree plus ``ms_cxr.csv`` (:class:`PhantomSummary`).
- :func:`make_contact_sheet` — a PNG grid of 16 studies with their boxes and phrases.
"""

from elvis_core.phantom.anatomy import Anatomy, sample_anatomy
from elvis_core.phantom.findings import CATEGORIES, Finding
from elvis_core.phantom.v2 import CATEGORIES_V2
from elvis_core.phantom.generate import CSV_COLUMNS, GENERATOR_VERSION, TWINS_DIR, PhantomStudy, PhantomSummary, generate, parse_splits, render_study

__all__ = ["Anatomy", "sample_anatomy", "CATEGORIES", "CATEGORIES_V2", "GENERATOR_VERSION", "TWINS_DIR", "Finding", "CSV_COLUMNS", "PhantomStudy", "PhantomSummary",
           "generate", "parse_splits", "render_study", "make_contact_sheet"]


def make_contact_sheet(*args, **kwargs):
    """See :func:`elvis_core.phantom.contact_sheet.make_contact_sheet`."""
    from elvis_core.phantom.contact_sheet import make_contact_sheet as _m

    return _m(*args, **kwargs)
