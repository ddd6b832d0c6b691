"""One image-suffix list and one ``resolve_image`` for the whole core (annotation paths → files on disk), and
:func:`require_regular_file`, the check every reader makes before it opens a path it was given."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Optional

from elvis_core.errors import AnnotationError, ElvisError
from elvis_core.io.images import IMAGE_EXTENSIONS

#: raster images read by PIL (JPG/PNG); DICOM files may have any name
RASTER_SUFFIXES = tuple(IMAGE_EXTENSIONS)
#: suffixes tried, in order, when an annotation path does not exist as written (MIMIC-CXR .dcm vs MIMIC-CXR-JPG)
IMAGE_SUFFIXES = (".dcm",) + RASTER_SUFFIXES


class OutsideImagesError(AnnotationError):
    """An annotation path points outside the images folder."""


def resolve_image(images_root: os.PathLike | str, rel_path: str, allow_outside: bool = False,
                  suffixes=IMAGE_SUFFIXES) -> Optional[Path]:
    """``images_root / rel_path``, else the same path with another image suffix (:data:`IMAGE_SUFFIXES`); None when
    no such file exists.

    ``rel_path`` must stay under ``images_root``: an absolute path, a drive letter or ``..`` that climbs out raises
    :class:`OutsideImagesError` unless ``allow_outside`` (the user's explicit choice, CLI
    ``--allow-paths-outside-images``). The check is on the path as written (lexical), so a data tree that is itself
    reached through symbolic links keeps working.
    """
    text = str(rel_path).strip().replace("\\", "/")
    if not text:
        return None
    is_abs = text.startswith("/") or re.match(r"^[A-Za-z]:", text) is not None
    norm = os.path.normpath(text)
    escapes = is_abs or norm == ".." or norm.startswith("../")
    if escapes and not allow_outside:
        raise OutsideImagesError(f"path {text[:200]!r} points outside the images folder (absolute or '..'); "
                                 "pass --allow-paths-outside-images to allow it", None)
    p = Path(text) if is_abs else Path(images_root) / norm
    try:
        if p.is_file():
            return p
        for suf in suffixes:
            q = p.with_suffix(suf)
            if q.is_file():
                return q
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return None
    return None


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def special_kind(mode: int) -> Optional[str]:
    """What a non-regular file is ("a named pipe (FIFO)", ...), None for a regular file."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def require_regular_file(path: os.PathLike | str, error=ElvisError, what: str = "file") -> os.stat_result:
    """``os.stat`` the path (following links) and refuse anything but a regular file **before** anyone opens it:
    opening a FIFO blocks for ever, ``/dev/zero`` (or a link to it) reads without end, a socket or a device is
    never a radiograph, report, annotation, checkpoint or review file. Raises ``error`` (an :class:`ElvisError`
    class) naming the path; returns the stat result (size, for the caller's limits)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"no such {what}", path) from None
    except (OSError, ValueError) as err:  # permission, a name too long, a NUL byte
        raise error(f"cannot read ({getattr(err, 'strerror', None) or type(err).__name__})", path) from None
    kind = special_kind(st.st_mode)
    if kind is not None:
        raise error(f"is {kind}, not a regular {what}: refused", path)
    return st


def is_regular_file(path: os.PathLike | str) -> bool:
    """True for a regular file (following links); False for FIFOs, devices, sockets, folders, missing paths."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
