"""Shared checks for produced DICOM objects: dciodvfy (dicom3tools) with its output in the test log."""

from __future__ import annotations

import shutil

import pytest

from elvis_core.dicom_results import dciodvfy

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                    reason="dciodvfy not installed (apt-get install dicom3tools; .ci/run does)")


def assert_dciodvfy_clean(path, capsys=None) -> str:
    """Run dciodvfy, print its full output to the test log (outside pytest's capture), fail on any Error line."""
    ok, text = dciodvfy(path)
    block = f"\n----- dciodvfy {path.name if hasattr(path, 'name') else path} -----\n{text}\n-----"
    if capsys is not None:
        with capsys.disabled():
            print(block)
    else:
        print(block)
    assert ok, block
    return text
