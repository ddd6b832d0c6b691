"""``elvis-viewer --install-desktop-entry``: install the ``.desktop`` file and the icon for the current user.

Freedesktop paths under ``$XDG_DATA_HOME`` (default ``~/.local/share``):

- ``applications/elvis-viewer.desktop`` with ``Exec``/``TryExec`` set to the absolute path of this installation's
  ``elvis-viewer`` script (a launcher does not see a virtual environment's PATH);
- ``icons/hicolor/scalable/apps/elvis-viewer.svg`` and ``icons/hicolor/256x256/apps/elvis-viewer.png``.

No Qt here: plain file operations, each file written atomically.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from elvis_core.atomic import atomic_write_bytes
from elvis_core.errors import ElvisError
from elvis_core.resources import resource_path


def data_home() -> Path:
    env = os.environ.get("XDG_DATA_HOME", "").strip()
    return Path(env) if env and os.path.isabs(env) else Path.home() / ".local" / "share"


def viewer_executable() -> str:
    """Absolute path of the ``elvis-viewer`` script of this installation (beside the interpreter), else PATH's."""
    for cand in (Path(sys.executable).parent / "elvis-viewer", Path(sys.argv[0]) if sys.argv and sys.argv[0] else None):
        if cand is not None and cand.name == "elvis-viewer" and cand.is_file() and os.access(cand, os.X_OK):
            return str(cand.resolve())
    found = shutil.which("elvis-viewer")
    if found:
        return str(Path(found).resolve())
    return f"{Path(sys.executable).resolve()} -m elvis_viewer"


def _quote_exec(path: str) -> str:
    # Desktop Entry Spec: arguments with spaces or reserved characters are double-quoted, with \ " ` $ escaped
    if " -m " in path:
        exe, rest = path.split(" -m ", 1)
        return f"{_quote_exec(exe)} -m {rest}"
    if any(c in path for c in ' \t"\'\\><~|&;$*?#()`'):
        return '"' + "".join("\\" + c if c in '"`$\\' else c for c in path) + '"'
    return path


def desktop_entry_text(template: str, executable: str) -> str:
    """The shipped entry with Exec/TryExec pointing at ``executable``."""
    out: List[str] = []
    for line in template.splitlines():
        if line.startswith("Exec="):
            line = f"Exec={_quote_exec(executable)} %F"
        elif line.startswith("TryExec="):
            if " -m " in executable:
                continue  # TryExec takes a program only
            line = f"TryExec={executable}"
        out.append(line)
    return "\n".join(out) + "\n"


def install_desktop_entry(target: Optional[os.PathLike | str] = None, executable: Optional[str] = None) -> List[Path]:
    """Install the entry and icons under ``target`` (default: :func:`data_home`). Returns the files written."""
    root = Path(target) if target is not None else data_home()
    src_entry = resource_path("elvis-viewer.desktop")
    src_svg = resource_path("icons", "elvis-viewer.svg")
    src_png = resource_path("icons", "elvis-viewer.png")
    for p in (src_entry, src_svg, src_png):
        if not p.is_file():
            raise ElvisError("shipped resource missing (broken installation?)", p)
    exe = executable or viewer_executable()
    plan = [
        (root / "applications" / "elvis-viewer.desktop",
         desktop_entry_text(src_entry.read_text(encoding="utf-8"), exe).encode("utf-8")),
        (root / "icons" / "hicolor" / "scalable" / "apps" / "elvis-viewer.svg", src_svg.read_bytes()),
        (root / "icons" / "hicolor" / "256x256" / "apps" / "elvis-viewer.png", src_png.read_bytes()),
    ]
    written = []
    for dest, data in plan:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dest, data)
        except OSError as err:
            raise ElvisError(f"cannot write ({err.strerror or type(err).__name__})", dest) from None
        written.append(dest)
    for tool, arg in (("update-desktop-database", root / "applications"),
                      ("gtk-update-icon-cache", root / "icons" / "hicolor")):
        if shutil.which(tool):  # optional refreshers; a missing or failing one changes nothing we wrote
            try:
                subprocess.run([tool, "-q", str(arg)] if tool == "update-desktop-database" else [tool, "-qtf", str(arg)],
                               check=False, timeout=20, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError):
                pass
    return written
