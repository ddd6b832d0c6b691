"""The system libraries Qt's X11 (xcb) platform plugin needs, checked before Qt starts.

On a bare Debian/Ubuntu machine ``pip install`` brings Qt but not these; Qt then aborts with a long message about
the "xcb" plugin. :func:`check_x11` names the missing ones and the packages that provide them in one line instead.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, List, Mapping, Optional, Tuple

#: (soname the xcb plugin or libQt6XcbQpa links, Debian/Ubuntu package that provides it)
X11_LIBRARIES: List[Tuple[str, str]] = [
    ("libxcb.so.1", "libxcb1"),
    ("libX11-xcb.so.1", "libx11-xcb1"),
    ("libxcb-cursor.so.0", "libxcb-cursor0"),
    ("libxcb-icccm.so.4", "libxcb-icccm4"),
    ("libxcb-keysyms.so.1", "libxcb-keysyms1"),
    ("libxcb-image.so.0", "libxcb-image0"),
    ("libxcb-render-util.so.0", "libxcb-render-util0"),
    ("libxcb-randr.so.0", "libxcb-randr0"),
    ("libxcb-shape.so.0", "libxcb-shape0"),
    ("libxcb-xkb.so.1", "libxcb-xkb1"),
    ("libxcb-xfixes.so.0", "libxcb-xfixes0"),
    ("libxcb-sync.so.1", "libxcb-sync1"),
    ("libxcb-shm.so.0", "libxcb-shm0"),
    ("libxcb-render.so.0", "libxcb-render0"),
    ("libxcb-util.so.1", "libxcb-util1"),
    ("libxkbcommon.so.0", "libxkbcommon0"),
    ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0"),
    ("libfontconfig.so.1", "libfontconfig1"),
    ("libGL.so.1", "libgl1"),
    ("libEGL.so.1", "libegl1"),
    ("libdbus-1.so.3", "libdbus-1-3"),
]


def can_load(soname: str) -> bool:
    """True when the dynamic linker finds ``soname`` (what Qt's plugin loader will ask it)."""
    import ctypes

    try:
        ctypes.CDLL(soname)
        return True
    except OSError:
        return False


def uses_x11(environ: Mapping[str, str], platform: str = sys.platform) -> bool:
    """Qt will start its xcb plugin: Linux, and QT_QPA_PLATFORM says xcb, or says nothing on an X display."""
    if not platform.startswith("linux"):
        return False
    qpa = (environ.get("QT_QPA_PLATFORM") or "").strip().lower()
    if qpa:
        return qpa.split(":")[0].split(";")[0] == "xcb"
    return bool(environ.get("DISPLAY")) and not environ.get("WAYLAND_DISPLAY")


def missing_x11_libraries(finder: Optional[Callable[[str], bool]] = None) -> List[Tuple[str, str]]:
    finder = finder or can_load
    return [(so, pkg) for so, pkg in X11_LIBRARIES if not finder(so)]


def check_x11(environ: Optional[Mapping[str, str]] = None, finder: Optional[Callable[[str], bool]] = None,
              platform: str = sys.platform) -> Optional[str]:
    """None when Qt can start here; else one line naming what is missing (a display, X libraries and the packages
    that provide them)."""
    environ = os.environ if environ is None else environ
    if platform.startswith("linux") and not (environ.get("QT_QPA_PLATFORM") or environ.get("DISPLAY")
                                             or environ.get("WAYLAND_DISPLAY")):
        return ("elvis-viewer: no display (DISPLAY is not set): run it in a desktop session, or with "
                "QT_QPA_PLATFORM=offscreen and --screenshot")
    if not uses_x11(environ, platform):
        return None
    missing = missing_x11_libraries(finder)
    if not missing:
        return None
    return ("elvis-viewer: Qt cannot start under X: missing system libraries " + ", ".join(so for so, _ in missing)
            + " (Debian/Ubuntu: sudo apt-get install " + " ".join(pkg for _, pkg in missing)
            + "; or QT_QPA_PLATFORM=offscreen with --screenshot)")
