"""Structure rules of the viewer: small files, the engine's lock private to elvis_core/grounding, torch not needed
to show a window and a DICOM."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_viewer_file_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "elvis_viewer").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, long


def test_engine_lock_is_private_to_grounding():
    pat = re.compile(r"engine\._lock|\._lock\b.*engine|_warm_up\(")
    offenders = []
    for pkg in ("elvis_viewer", "elvis_core"):
        for p in (ROOT / pkg).rglob("*.py"):
            if "grounding" in p.parts:
                continue
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if pat.search(line):
                    offenders.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_window_and_dicom_without_torch(tmp_path):
    """A fresh process shows the window and paints a DICOM; torch and transformers are never imported."""
    from pydicom.data import get_testdata_file

    code = (
        "import sys, time\n"
        "from PySide6 import QtCore, QtWidgets\n"
        "app = QtWidgets.QApplication([])\n"
        "from elvis_viewer.main_window import MainWindow\n"
        f"w = MainWindow(settings=QtCore.QSettings({str(tmp_path / 's.ini')!r}, QtCore.QSettings.Format.IniFormat))\n"
        "w.show()\n"
        f"w.open_paths([{get_testdata_file('CT_small.dcm')!r}])\n"
        "t = time.time() + 60\n"
        "while (w.session.rad is None or w.busy()) and time.time() < t:\n"
        "    app.processEvents(); time.sleep(0.01)\n"
        "w.grab()\n"
        "print('painted', w.session.rad is not None, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "painted True False False" in p.stdout, p.stdout + p.stderr[-2000:]
