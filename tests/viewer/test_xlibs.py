"""The launcher names the X libraries Qt's xcb plugin needs (and their Debian packages) before Qt starts, in one
line, instead of Qt's abort."""

import pytest

from elvis_viewer import app, xlibs


def test_missing_libraries_named_in_one_line():
    gone = {"libxcb-cursor.so.0", "libxcb-icccm.so.4"}
    line = xlibs.check_x11({"DISPLAY": ":0"}, finder=lambda so: so not in gone, platform="linux")
    assert line is not None and "\n" not in line
    assert "libxcb-cursor.so.0, libxcb-icccm.so.4" in line
    assert "apt-get install libxcb-cursor0 libxcb-icccm4" in line
    assert "keysyms" not in line  # only what is missing


def test_nothing_said_when_all_there_or_not_x11():
    everything = lambda so: True  # noqa: E731
    nothing = lambda so: False  # noqa: E731
    assert xlibs.check_x11({"DISPLAY": ":0"}, finder=everything, platform="linux") is None
    assert xlibs.check_x11({"QT_QPA_PLATFORM": "offscreen", "DISPLAY": ":0"}, finder=nothing, platform="linux") is None
    assert xlibs.check_x11({"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}, finder=nothing, platform="linux") is None
    assert xlibs.check_x11({"DISPLAY": ":0"}, finder=nothing, platform="darwin") is None
    assert xlibs.check_x11({"QT_QPA_PLATFORM": "xcb"}, finder=nothing, platform="linux") is not None


def test_no_display_said_in_one_line():
    line = xlibs.check_x11({}, finder=lambda so: True, platform="linux")
    assert line is not None and "DISPLAY" in line and "\n" not in line
    assert xlibs.check_x11({}, finder=lambda so: True, platform="darwin") is None


def test_real_finder_sees_a_library_that_exists_and_not_one_that_does_not():
    assert xlibs.can_load("libc.so.6")
    assert not xlibs.can_load("libelvis-no-such-library.so.9")


def test_launcher_stops_before_qt_with_the_line(monkeypatch, capsys):
    import elvis_viewer.main_window as mw

    monkeypatch.setattr(xlibs, "can_load", lambda so: so != "libxcb-cursor.so.0")
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr(mw, "MainWindow", lambda *a, **k: pytest.fail("the window was built"))
    assert app.main(["--size", "800x600"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "libxcb-cursor.so.0" in err[0] and "libxcb-cursor0" in err[0]
