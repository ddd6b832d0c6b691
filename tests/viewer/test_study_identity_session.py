"""One study on screen at a time (issue 20): a failed read clears the screen, a loose report goes with no study, a
phrase belongs to its study (unless pinned), a report opened onto an image stays with that image."""

import os
import shutil

import pytest
from pydicom.data import get_testdata_file

from elvis_viewer import workers
from elvis_viewer.display_record import CARRIED_NOTE, FAILED, SHOWN, violations
from elvis_viewer.session import ViewerSession

from .helpers import copy_testdata

EDEMA = "FINDINGS:\nMild bilateral perihilar edema. Small left effusion.\n"
NO_EDEMA = "FINDINGS:\nNo evidence of pulmonary edema. Heart size is normal.\n"


@pytest.fixture
def session(qtbot):
    s = ViewerSession()
    yield s
    workers.wait_all(30000)


def _short_pixel_data(path):
    """RG1 whose header claims twice its rows: the folder scan lists it (the file is whole, its header reads), the
    pixel read fails ("truncated pixel data"). A file cut short is caught by the scan and never listed."""
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm"))
    ds.Rows = 2 * ds.Rows
    ds.save_as(path)


def _idle(qtbot, s, timeout=30000):
    qtbot.waitUntil(lambda: not s.busy(), timeout=timeout)


def _mimic_two_studies(root):
    """Two MIMIC studies of one patient, each with its report: s1 (RG1, edema) and s2 (CT_small, no edema)."""
    import pydicom

    out = []
    for sid, src, text in (("s50000001", "RG1_UNCI.dcm", EDEMA), ("s50000002", "CT_small.dcm", NO_EDEMA)):
        d = root / "files" / "p10" / "p10000001" / sid
        d.mkdir(parents=True)
        ds = pydicom.dcmread(get_testdata_file(src))
        ds.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[sid])
        ds.save_as(d / "img.dcm")
        (d.parent / f"{sid}.txt").write_text(text)
        out.append(str(d / "img.dcm"))
    return out


def test_a_failed_read_clears_the_image_and_says_why(qtbot, session, tmp_path):
    """RG1 on screen, then a DICOM whose pixel data is truncated (its header scans fine, so it is listed): the
    screen used to keep RG1's film under the new file's name."""
    shutil.copy(get_testdata_file("RG1_UNCI.dcm"), tmp_path / "a_rg1.dcm")
    _short_pixel_data(tmp_path / "b_trunc.dcm")
    (tmp_path / "loose.txt").write_text("Large left pneumothorax.\n")
    with qtbot.waitSignal(session.imageChanged, timeout=30000):
        session.open_folder(str(tmp_path))
    _idle(qtbot, session)
    assert session.rad is not None and os.path.basename(session.rad_path) == "a_rg1.dcm"
    assert session.report is None  # the loose note belongs to no study
    assert any("loose.txt" in m and "unpaired" in m for _, m in session.problems)
    trunc = next(e.path for e in session.entries if e.path.endswith("b_trunc.dcm"))
    msgs = []
    session.message.connect(lambda t, banner: msgs.append((t, banner)))
    session.select_image(trunc)
    _idle(qtbot, session)
    d = session.display
    assert d.state == FAILED and d.key.image == trunc
    assert session.rad is None and session.rad_path is None and session.report is None
    assert d.error.startswith("cannot display b_trunc.dcm: ") and "b_trunc.dcm" in d.title()
    assert (d.error, True) in msgs  # said in the banner
    assert violations(session) == []
    assert session.step_image(-1) is not None  # navigation goes on from the failed item
    _idle(qtbot, session)
    assert session.display.state == SHOWN and session.rad_path.endswith("a_rg1.dcm")


def test_the_phrase_belongs_to_its_study_unless_pinned(qtbot, session, tmp_path):
    a, b = _mimic_two_studies(tmp_path)
    with qtbot.waitSignal(session.imageChanged, timeout=30000):
        session.open_folder(str(tmp_path))
    _idle(qtbot, session)
    assert session.rad_path == a and "perihilar edema" in session.report.text
    assert session.display.pairing == "MIMIC layout"
    span = session.report.find("Mild bilateral perihilar edema.")
    session.ground_phrase(session.report.text[span[0]:span[1]], span)
    assert session.phrase.text and session.phrase.key.image == a
    session.step_study(+1)  # Down / PageDown to the next patient
    _idle(qtbot, session)
    assert session.rad_path == b and session.phrase.text == "" and violations(session) == []
    # pinned: kept as typed text, negation checked against THIS report
    session.select_image(a)
    _idle(qtbot, session)
    session.ground_phrase(session.report.text[span[0]:span[1]], span)
    session.set_phrase_pinned(True)
    session.step_study(+1)
    _idle(qtbot, session)
    p = session.phrase
    assert session.rad_path == b and p.text == "Mild bilateral perihilar edema." and p.span is None
    assert p.carried and p.origin_note == CARRIED_NOTE and p.key.image == b
    assert p.assertion.kind == "negated" and p.assertion.cue == "No evidence of"
    assert violations(session) == []


def test_a_report_opened_with_images_of_two_studies_goes_with_neither(qtbot, session, tmp_path):
    a, b = _mimic_two_studies(tmp_path / "m")
    os.remove(os.path.join(os.path.dirname(os.path.dirname(a)), "s50000001.txt"))
    os.remove(os.path.join(os.path.dirname(os.path.dirname(b)), "s50000002.txt"))
    rep = tmp_path / "r.txt"
    rep.write_text(EDEMA)
    session.open_paths([a, b, str(rep)])
    _idle(qtbot, session)
    assert session.report is None and any("r.txt" in m and "unpaired" in m for _, m in session.problems)
    session.select_image(a)
    _idle(qtbot, session)
    assert session.report is None
    s2 = ViewerSession()  # one image and its report: explicit pairing, said in the header
    s2.open_paths([a], report_path=str(rep))
    _idle(qtbot, s2)
    assert s2.report is not None and s2.display.pairing == "explicit"
    assert s2.display.report_header() == "Report — r.txt (paired: explicit)"
    workers.wait_all(30000)


def test_a_map_of_the_previous_item_never_lands_on_the_next(qtbot, session, tmp_path):
    """A grounding result that arrives after the image changed is dropped (key check), whatever its generation."""
    a, b = _mimic_two_studies(tmp_path)
    with qtbot.waitSignal(session.imageChanged, timeout=30000):
        session.open_folder(str(tmp_path))
    _idle(qtbot, session)

    class Late:
        phrase = "edema"
        latency_s = 0.0
        warnings = []
    key_a = session.display.key
    session.ground_phrase("edema")
    session.select_image(b)
    _idle(qtbot, session)
    session._on_map(session._ground_gen.current, 0, Late(), key_a, "")
    assert session.slots[0].gmap is None and violations(session) == []


def test_the_window_clears_a_failed_read_and_dims_while_loading(qtbot, tmp_path, monkeypatch):
    import threading

    from PySide6 import QtCore

    import elvis_viewer.session as session_mod
    from elvis_viewer.main_window import MainWindow

    shutil.copy(get_testdata_file("RG1_UNCI.dcm"), tmp_path / "a_rg1.dcm")
    _short_pixel_data(tmp_path / "b_trunc.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "c_ct.dcm")
    (tmp_path / "loose.txt").write_text("Large left pneumothorax.\n")
    win = MainWindow(settings=QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.resize(1280, 720)
    win.show()
    s = win.session
    with qtbot.waitSignal(s.imageChanged, timeout=30000):
        win.open_folder(str(tmp_path))
    _idle(qtbot, s)
    first = s.rad_path
    assert win.image_view.rad is s.rad and win.windowTitle() == "ELVIS Viewer — " + os.path.basename(first)
    assert win.report_title.text() == "Report — none paired with this study" and win.report_view.report is None
    trunc = next(e.path for e in s.entries if e.path.endswith("b_trunc.dcm"))
    assert win.add_measurement("ruler") is not None and win.image_view.measure.tools
    s.select_image(trunc)
    _idle(qtbot, s)
    assert not win.image_view.measure.tools  # the ruler belonged to the film that is gone
    assert win.image_view.rad is None and win.image_view.image_item.image is None  # RG1's film is gone
    assert win.windowTitle().startswith("ELVIS Viewer — cannot display b_trunc.dcm: ")
    assert win.display_binding.label.isVisible() and win.display_binding.label.text() == s.display.error
    assert win.message_label.isVisible() and win.message_label.text() == s.display.error
    assert win.report_title.text() == "Report — none (the image could not be read)"
    assert win.export_png(str(tmp_path / "x.png")) is None and not (tmp_path / "x.png").exists()
    # a slow read: the item on screen is dimmed and labelled, not presented as current
    release = threading.Event()
    real = session_mod.image_and_report

    def slow(path, report_path):
        release.wait(10)
        return real(path, report_path)
    monkeypatch.setattr(session_mod, "image_and_report", slow)
    s._cache.clear()
    s.select_image(first)
    release.set()
    _idle(qtbot, s)
    assert s.rad_path == first and not win.display_binding.dimmed
    c = next(e.path for e in s.entries if e.path not in (first, trunc))
    name = os.path.basename(c)
    release.clear()
    s._cache.clear()
    s.select_image(c)
    assert win.display_binding.dimmed and f"loading {name}" in win.windowTitle()
    assert win.display_binding.label.text().startswith(f"Loading {name}")
    assert not win.report_view.isEnabled()  # the previous report cannot be clicked meanwhile
    assert win.export_png(str(tmp_path / "y.png")) is None  # nor exported as if it were the item asked for
    assert "is still loading" in win.statusBar().currentMessage()
    release.set()
    _idle(qtbot, s)
    assert not win.display_binding.dimmed and not win.display_binding.label.isVisible()
    assert win.image_view.rad is s.rad and s.rad_path == c, (s.rad_path, c)
    assert win.windowTitle() == "ELVIS Viewer — " + name
    workers.wait_all(30000)


def test_cli_report_pairs_explicitly_and_the_header_says_how(qtbot, tmp_path):
    from PySide6 import QtCore

    from elvis_viewer import app as app_mod
    from elvis_viewer.main_window import MainWindow

    img = copy_testdata("RG1_UNCI.dcm", tmp_path / "img" / "chest.dcm")
    rep = tmp_path / "notes" / "r.txt"
    rep.parent.mkdir()
    rep.write_text(EDEMA)
    win = MainWindow(settings=QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    app_mod.open_from_args(win, app_mod.build_parser().parse_args([str(img), "--report", str(rep)]))
    qtbot.waitUntil(lambda: win.session.rad is not None and not win.busy(), timeout=30000)
    assert win.report_title.text() == "Report — r.txt (paired: explicit)"
    assert "perihilar edema" in win.report_view.toPlainText()
    a, _b = _mimic_two_studies(tmp_path / "m")
    win.open_paths([a])
    qtbot.waitUntil(lambda: win.session.rad_path == a and not win.busy(), timeout=30000)
    assert win.report_title.text() == "Report — s50000001.txt (paired: MIMIC layout)"
    workers.wait_all(30000)


def test_the_phrase_stays_on_another_view_of_the_same_study(qtbot, session, tmp_path):
    """PA then lateral of one study (the lateral read in a worker, not from the cache): the report phrase stays,
    with its span, and is grounded again; a read that fails drops it (nothing is shown to ground it on)."""
    a, _b = _mimic_two_studies(tmp_path)
    lat = os.path.join(os.path.dirname(a), "lat.dcm")
    shutil.copy(a, lat)
    with qtbot.waitSignal(session.imageChanged, timeout=30000):
        session.open_folder(str(tmp_path))
    _idle(qtbot, session)
    session.select_image(a)
    _idle(qtbot, session)
    span = session.report.find("Small left effusion.")
    session.ground_phrase("Small left effusion.", span)
    session._cache.clear()
    session.select_image(lat)
    assert session.display.state == "loading"
    _idle(qtbot, session)
    assert session.rad_path == lat and session.phrase.text == "Small left effusion." and session.phrase.span == span
    assert not session.phrase.carried and violations(session) == []
    with open(lat, "r+b") as f:  # the lateral becomes unreadable: its next read fails
        f.truncate(400)
    session._cache.clear()
    session.select_image(a)
    _idle(qtbot, session)
    session.select_image(lat)
    _idle(qtbot, session)
    assert session.display.state == FAILED and session.phrase.text == "" and violations(session) == []


def test_a_phrase_typed_before_any_image_is_the_first_images(qtbot, session, tmp_path):
    a, _b = _mimic_two_studies(tmp_path)
    session.ground_phrase("no pneumothorax")  # typed into an empty window
    assert session.phrase.key is None
    session.open_paths([a])
    _idle(qtbot, session)
    p = session.phrase
    assert p.text == "no pneumothorax" and p.key.image == a and not p.carried and violations(session) == []


def test_no_grounding_indicator_is_left_after_a_study_change_or_failed_read(make_window, qtbot, tmp_path):
    """The status bar said "grounding…" for ever after the phrase was cleared by a study change (nothing was being
    grounded), and under a film that failed to read."""
    from pathlib import Path

    demo_model = Path(__file__).resolve().parents[2] / "resources" / "demo_model"
    shutil.copy(get_testdata_file("RG1_UNCI.dcm"), tmp_path / "a_rg1.dcm")
    _short_pixel_data(tmp_path / "b_trunc.dcm")
    win = make_window(size=(1280, 720))
    s = win.session
    win.load_checkpoint(str(demo_model), 0)
    qtbot.waitUntil(lambda: s.slots[0].engine is not None, timeout=60000)
    with qtbot.waitSignal(s.imageChanged, timeout=30000):
        win.open_folder(str(tmp_path))
    _idle(qtbot, s)
    with qtbot.waitSignal(s.mapReady, timeout=30000):
        s.ground_phrase("left pleural effusion")
    assert win.latency_label.text().startswith("phrase: ")
    s.select_image(next(e.path for e in s.entries if e.path.endswith("b_trunc.dcm")))
    _idle(qtbot, s)
    assert s.display.state == FAILED and s.phrase.text == ""
    assert win.latency_label.text() == ""  # neither "grounding…" nor the previous phrase's latency
