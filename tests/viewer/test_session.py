"""`ViewerSession` driven headless (no widgets): the state and work of the viewer, tested without a window."""

import os
import shutil

import pytest
from pydicom.data import get_testdata_file

from elvis_viewer import workers
from elvis_viewer.session import ViewerSession

from .helpers import copy_testdata

REPORT = ("FINDINGS:\nThere is a small left basal opacity. No pneumothorax.\n\n"
          "IMPRESSION:\nLeft basal opacity,\npossibly atelectasis.\n")


@pytest.fixture
def two_studies(tmp_path):
    """MIMIC layout, two studies: s1 = {a_ct, b_mr, c_broken} + report, s2 = {d_ct}."""
    s1 = tmp_path / "files" / "p10" / "p10000001" / "s50000001"
    s2 = tmp_path / "files" / "p10" / "p10000001" / "s50000002"
    s1.mkdir(parents=True)
    s2.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), s1 / "a_ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), s1 / "b_mr.dcm")
    (s1 / "c_broken.dcm").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read()[:300])
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["elvis-test-study-2"])
    ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["elvis-test-series-2"])
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["elvis-test-sop-2"])
    ds.save_as(s2 / "d_ct.dcm")
    (s1.parent / "s50000001.txt").write_text(REPORT)
    return tmp_path


@pytest.fixture
def session(qtbot):
    s = ViewerSession()
    yield s
    workers.wait_all(30000)


def _idle(qtbot, s, timeout=30000):
    qtbot.waitUntil(lambda: not s.busy(), timeout=timeout)


def _model(provenance=None):
    import torch

    from elvis_core.model import build_model
    from elvis_core.model.config import preset

    torch.manual_seed(0)
    m = build_model(preset("demo"))
    if provenance is not None:
        m.provenance = provenance
    return m


def test_scan_browse_by_image_and_by_study(qtbot, session, two_studies):
    with qtbot.waitSignal(session.imageChanged, timeout=30000):
        session.open_folder(str(two_studies))
    _idle(qtbot, session)
    names = sorted(os.path.basename(e.path) for e in session.entries)
    assert names == ["a_ct.dcm", "b_mr.dcm", "d_ct.dcm"]  # the broken file is a problem, not a study entry
    assert any("c_broken.dcm" in m for _, m in session.problems)
    # two studies (s1: CT + MR with a report, s2: a CT of another StudyInstanceUID), each one contiguous
    keys = [e.study_key for e in session.entries]
    assert len(set(keys)) == 2 and keys == sorted(keys, key=keys.index)  # each study's images are contiguous
    first = session.entries[0]
    assert session.rad_path == first.path
    with qtbot.waitSignal(session.imageChanged, timeout=10000):
        assert session.step_image(+1) == session.entries[1].path
    other = next(e for e in session.entries if e.study_key != first.study_key)
    session.select_image(first.path)
    _idle(qtbot, session)
    with qtbot.waitSignal(session.imageChanged, timeout=10000):
        assert session.step_study(+1) == other.path
    assert session.step_study(+1) is None  # no study after the last one: stays
    last = session.entries[-1]
    session.select_image(last.path)
    _idle(qtbot, session)
    assert session.step_image(+1) is None
    with qtbot.waitSignal(session.imageChanged, timeout=10000):
        # from the last image: the FIRST image of the previous study
        prev_key = next(e.study_key for e in reversed(session.entries) if e.study_key != last.study_key)
        assert session.step_study(-1) == next(e.path for e in session.entries if e.study_key == prev_key)


def test_reopening_never_duplicates_and_broken_files_are_not_listed(qtbot, session, two_studies):
    a = two_studies / "files/p10/p10000001/s50000001/a_ct.dcm"
    with qtbot.waitSignal(session.imageChanged, timeout=10000):
        session.open_file(str(a))
    _idle(qtbot, session)
    with qtbot.waitSignal(session.imageChanged, timeout=10000):
        session.open_file(os.path.join(str(a.parent), "..", a.parent.name, "a_ct.dcm"))  # another spelling
    _idle(qtbot, session)
    assert len(session.entries) == 1
    session.open_file(str(a.parent / "c_broken.dcm"))
    _idle(qtbot, session)
    assert len(session.entries) == 1 and any("c_broken.dcm" in m for _, m in session.problems)
    with qtbot.waitSignal(session.scanFinished, timeout=30000):
        session.open_folder(str(two_studies))
    _idle(qtbot, session)
    assert sorted(os.path.basename(e.path) for e in session.entries) == ["a_ct.dcm", "b_mr.dcm", "d_ct.dcm"]


def test_report_phrases_are_encoded_in_the_background_then_grounded_without_a_worker(qtbot, session, two_studies):
    with qtbot.waitSignal(session.imageChanged, timeout=30000):
        session.open_folder(str(two_studies))
    session.load_checkpoint(None, 0, model=_model(), name="m")
    qtbot.waitUntil(lambda: session.slots[0].engine is not None, timeout=60000)
    _idle(qtbot, session)
    eng = session.slots[0].engine
    sentences = session.report_phrases()
    assert sentences and all(eng.has_phrase(p) for p in sentences) and eng.has_image(session.rad)
    got = []
    session.mapReady.connect(got.append)
    span = session.report.find("There is a small left basal opacity.")
    session.ground_phrase(session.report.text[span[0]:span[1]], span)
    assert got == [0]  # delivered synchronously: a matrix-vector product on the GUI thread, no worker round trip
    assert session.slots[0].gmap.phrase == "There is a small left basal opacity."
    assert session.phrase.assertion.kind == "affirmed"


def test_negated_and_uncertain_phrases_are_marked(qtbot, session, two_studies):
    with qtbot.waitSignal(session.imageChanged, timeout=30000):
        session.open_folder(str(two_studies))
    _idle(qtbot, session)
    span = session.report.find("pneumothorax")
    session.ground_phrase("pneumothorax", span)
    assert session.phrase.assertion.kind == "negated" and session.phrase.assertion.cue == "No"
    session.ground_phrase("atelectasis", session.report.find("atelectasis"))
    assert session.phrase.assertion.kind == "uncertain"
    session.ground_phrase("no effusion")  # typed, not in the report: its own words
    assert session.phrase.assertion.kind == "negated"


def test_provenance_banner_for_a_phantom_trained_model_on_a_real_image(qtbot, session, two_studies):
    texts = []
    session.provenanceChanged.connect(texts.append)
    with qtbot.waitSignal(session.imageChanged, timeout=30000):
        session.open_folder(str(two_studies))
    session.load_checkpoint(None, 0, model=_model({"data": {"root": "/ph", "source": "phantom"}}), name="ph-model")
    qtbot.waitUntil(lambda: session.slots[0].engine is not None, timeout=60000)
    assert texts and "ph-model" in texts[-1] and "phantom" in texts[-1]  # CT_small is not a phantom image
    session.load_checkpoint(None, 0, model=_model({"data": {"root": "/mimic"}}), name="real-model")
    qtbot.waitUntil(lambda: session.slots[0].engine is not None, timeout=60000)
    assert texts[-1] == "" and session.provenance_text == ""


def test_shared_scale_over_both_maps(qtbot, session, two_studies):
    import numpy as np

    with qtbot.waitSignal(session.imageChanged, timeout=30000):
        session.open_folder(str(two_studies))
    session.load_checkpoint(None, 0, model=_model(), name="a")
    m2 = _model()
    with __import__("torch").no_grad():
        for p in m2.parameters():
            p.mul_(0.5).add_(0.01)
    session.load_checkpoint(None, 1, model=m2, name="b")
    session.set_compare(True)
    qtbot.waitUntil(lambda: all(s.engine is not None for s in session.slots), timeout=60000)
    session.ground_phrase("left basal opacity")
    qtbot.waitUntil(lambda: all(s.gmap is not None for s in session.slots), timeout=30000)
    lo, hi = session.shared_levels()
    m = max(float(np.abs(s.gmap.similarity).max()) for s in session.slots)
    assert lo == -hi and hi == pytest.approx(m)


def test_a_phrase_being_typed_is_encoded_ahead(qtbot, session, two_studies):
    with qtbot.waitSignal(session.imageChanged, timeout=30000):
        session.open_folder(str(two_studies))
    session.load_checkpoint(None, 0, model=_model(), name="m")
    qtbot.waitUntil(lambda: session.slots[0].engine is not None, timeout=60000)
    _idle(qtbot, session)
    eng = session.slots[0].engine
    session.preencode("right  upper lobe")
    session.preencode("right upper lobe mass")  # typed on while the first pass runs: the latest text wins
    _idle(qtbot, session)
    assert eng.has_phrase("right upper lobe mass")
    got = []
    session.mapReady.connect(got.append)
    session.ground_phrase("right upper lobe mass")
    assert got == [0]  # Enter: already encoded, the map is drawn without a worker


def test_several_files_opened_at_once_are_all_listed(qtbot, session, two_studies, tmp_path):
    """`elvis-viewer a.dcm b.dcm`, a multi-file drop or File → Open: every file that reads is listed (each read used
    to be superseded by the next one, so only the last file appeared) and a broken one is reported."""
    s1 = two_studies / "files" / "p10" / "p10000001" / "s50000001"
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom file at all")
    paths = [str(s1 / "a_ct.dcm"), str(bad), str(s1 / "b_mr.dcm")]
    session.open_paths(paths)
    qtbot.waitUntil(lambda: len(session.entries) == 2 and any("bad.dcm" in m for _, m in session.problems),
                    timeout=30000)
    _idle(qtbot, session)
    assert sorted(os.path.basename(e.path) for e in session.entries) == ["a_ct.dcm", "b_mr.dcm"]
    assert session.rad_path == paths[-1]  # the last one opened is shown


def test_an_image_opened_with_its_report_file_shows_that_report(qtbot, session, tmp_path):
    """`elvis-viewer image.dcm report.txt` (either order, or both dropped together): the report belongs to the image
    (the image's read used to replace it with "no report"), and stays with it when the image is opened again."""
    img = copy_testdata("CT_small.dcm", tmp_path / "a" / "img.dcm")
    other = copy_testdata("MR_small.dcm", tmp_path / "b" / "other.dcm")
    rep = tmp_path / "notes" / "report.txt"
    rep.parent.mkdir()
    rep.write_text(REPORT)
    for order in ([img, rep], [rep, img]):
        s = ViewerSession()
        s.open_paths([str(p) for p in order])
        _idle(qtbot, s)
        assert s.rad_path == str(img)
        assert s.report is not None and "left basal opacity" in s.report.text, order
        s.open_paths([str(other)])
        _idle(qtbot, s)
        assert s.report is None  # another image: its own (no) report
        s.select_image(str(img))
        _idle(qtbot, s)
        assert s.report is not None and "left basal opacity" in s.report.text
    # a report opened on its own still becomes the current image's report
    s = ViewerSession()
    s.open_paths([str(other)])
    _idle(qtbot, s)
    s.open_paths([str(rep)])
    _idle(qtbot, s)
    assert s.report is not None and s.rad_path == str(other)
    workers.wait_all(30000)


def test_a_file_opened_on_its_own_is_labelled_like_a_scanned_one(qtbot, session, tmp_path):
    """View, name and size in the list, modality in the study header, as for the images of a scanned folder."""
    img = copy_testdata("RG1_UNCI.dcm", tmp_path / "rg1" / "chest.dcm")
    session.open_paths([str(img)])
    _idle(qtbot, session)
    (e,) = session.entries
    assert e.label == f"PA chest.dcm {session.rad.cols}x{session.rad.rows}"
    assert e.study_label == "rg1 [CR]"


def test_a_result_arriving_after_the_session_is_deleted_is_dropped(qtbot):
    """A worker that finishes while the window closes must not call into the deleted session (it raised
    'Signal source has been deleted' from the event loop)."""
    import shiboken6
    import threading

    release = threading.Event()
    s = ViewerSession()
    got = []

    def slow():
        release.wait(5)
        return 1

    s.run(slow, on_result=lambda v: (got.append(v), s.message.emit("late", False)))
    shiboken6.delete(s)  # the window closed: the C++ object is gone while the task still runs
    release.set()
    assert workers.wait_all()
    qtbot.wait(50)  # deliver the queued result; an emit on the deleted session would fail the test here
    assert got == []
    live = ViewerSession()
    live.run(lambda: 2, on_result=got.append)
    qtbot.waitUntil(lambda: got == [2])
