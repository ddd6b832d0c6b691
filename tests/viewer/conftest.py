"""Fixtures of the viewer tests; the set-up itself is in tests/viewer/helpers.py."""

import contextlib

import pytest

from .helpers import ini_settings, shown_window


@pytest.fixture
def make_window(qtbot, tmp_path):
    """Factory of shown MainWindows: ``make_window(size=(w, h), ini="s.ini", values={key: value})`` builds one on
    its own settings file under this test's tmp_path; the workers are drained at teardown."""
    with contextlib.ExitStack() as stack:
        def make(size=(1200, 800), ini="s.ini", values=None):
            return stack.enter_context(shown_window(qtbot, ini_settings(tmp_path / ini, values), size))

        yield make
