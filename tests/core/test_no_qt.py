"""elvis_core must never import Qt: statically (source scan) and dynamically (import every module)."""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import elvis_core

QT_ROOTS = {"PySide6", "PySide2", "PyQt5", "PyQt6", "pyqtgraph", "shiboken6", "qtpy"}


def test_no_qt_import_in_core_sources():
    root = Path(elvis_core.__file__).parent
    offenders = []
    for py in root.rglob("*.py"):
        tree = ast.parse(py.read_text(encoding="utf-8"), filename=str(py))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{py.relative_to(root)}: {n}" for n in names if n.split(".")[0] in QT_ROOTS]
    assert offenders == []


def test_importing_all_core_modules_loads_no_qt():
    code = (
        "import importlib, pkgutil, sys, elvis_core\n"
        "for m in pkgutil.walk_packages(elvis_core.__path__, 'elvis_core.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {sorted(QT_ROOTS)!r})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
