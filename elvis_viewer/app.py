"""Entry point of ``elvis-viewer`` (placeholder window until the viewer issue lands)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="elvis-viewer")
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--demo", action="store_true")
    parser.add_argument("--screenshot")
    args = parser.parse_args(argv)
    from PySide6.QtWidgets import QApplication, QMainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    win = QMainWindow()
    win.setWindowTitle("ELVIS Viewer")
    win.resize(1200, 800)
    win.show()
    if args.screenshot:
        app.processEvents()
        win.grab().save(args.screenshot)
        return 0
    return app.exec()
