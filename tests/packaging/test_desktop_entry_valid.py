"""The desktop entry (issue 23): valid per desktop-file-validate (shipped template and the installed, rewritten
entry) and never registered for folders (``inode/directory`` would make the viewer a candidate default folder
opener in file managers)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from elvis_viewer.desktop_entry import install_desktop_entry

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "resources" / "elvis-viewer.desktop"
VALIDATOR = shutil.which("desktop-file-validate")
needs_validator = pytest.mark.skipif(VALIDATOR is None, reason="desktop-file-validate not installed "
                                     "(apt-get install desktop-file-utils; .ci/run does)")


def _entry(path: Path) -> dict:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str
    cp.read(path, encoding="utf-8")
    return dict(cp["Desktop Entry"])


def _validate(path: Path) -> str:
    r = subprocess.run([VALIDATOR, str(path)], capture_output=True, text=True, timeout=30)
    out = (r.stdout + r.stderr).strip()
    print(f"desktop-file-validate {path.name}: rc {r.returncode} {out or '(clean)'}")
    assert r.returncode == 0 and "error" not in out.lower(), out
    return out


def test_entry_claims_dicom_files_not_folders(tmp_path):
    exe = tmp_path / "bin" / "elvis-viewer"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    install_desktop_entry(tmp_path / "share", executable=str(exe))
    for path in (TEMPLATE, tmp_path / "share" / "applications" / "elvis-viewer.desktop"):
        mimes = [m for m in _entry(path)["MimeType"].split(";") if m]
        assert "inode/directory" not in mimes and mimes == ["application/dicom"], (path, mimes)


@needs_validator
def test_desktop_file_validate_shipped_and_installed(tmp_path):
    exe = tmp_path / "my venv" / "bin" / "elvis-viewer"  # a path with a space: Exec quoting is checked too
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    install_desktop_entry(tmp_path / "share", executable=str(exe))
    assert _validate(TEMPLATE) == ""  # not even a hint
    installed = tmp_path / "share" / "applications" / "elvis-viewer.desktop"
    assert _validate(installed) == ""
    assert str(exe) in _entry(installed)["Exec"]
