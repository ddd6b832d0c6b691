"""Typed errors of the core.

Every error that a user can cause names the file (or input) and what is wrong with it, and never contains
patient identifiers. The CLI and the viewer show ``str(err)``; tracebacks are for bugs only.
"""

from __future__ import annotations

import os
from typing import Optional


class ElvisError(Exception):
    """Base class of all user-facing errors. ``str()`` is a one-line message fit for a user."""

    def __init__(self, problem: str, path: Optional[os.PathLike | str] = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class DicomReadError(ElvisError):
    """A file is not a readable DICOM image (not DICOM, truncated, no pixel data, undecodable, absurd tags)."""


class UnsupportedDicomError(DicomReadError):
    """The file is DICOM but holds something we cannot display (SR, presentation state, unsupported syntax)."""


class ReportReadError(ElvisError):
    """A report file is empty, binary or unreadable."""


class StudyScanError(ElvisError):
    """A folder cannot be scanned (missing, unreadable)."""


class AnnotationError(ElvisError):
    """An annotation file (MS-CXR CSV / JSON) is malformed."""


class ConfigError(ElvisError):
    """A training / model config has unknown keys, wrong types or impossible values."""


class CheckpointError(ElvisError):
    """A checkpoint directory is missing files or does not match the architecture."""


class GroundingError(ElvisError):
    """A grounding request is invalid (empty phrase, no image set)."""


class ModelImportError(ElvisError):
    """Published model files cannot be imported (missing, truncated, not plain tensors, mismatched shapes)."""
