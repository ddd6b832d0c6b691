"""Review tab, rapid J/K: the header never names one item over another item's film or map, and a decision key
pressed before the item is on screen is refused (never saved on an item the annotator did not see)."""

from __future__ import annotations

import threading

from PySide6 import QtCore

import elvis_viewer.review.view as view_mod
from elvis_viewer.workers import wait_all
from tests.viewer.test_review_view import (CentreEngine, _press, _view, _wait_item, annotations,  # noqa: F401
                                           phantom, settings)

Key = QtCore.Qt.Key


def test_rapid_j_never_shows_one_item_under_anothers_header(qtbot, annotations, settings, monkeypatch):  # noqa: F811
    ann, root = annotations
    v = _view(qtbot, settings, CentreEngine())
    assert v.load(ann, root)
    _wait_item(qtbot, v, with_map=True)
    release = threading.Event()
    real = view_mod._load_item_data

    def slow(key, image_path, report_path):
        release.wait(10)
        return real(key, image_path, report_path)
    monkeypatch.setattr(view_mod, "_load_item_data", slow)
    v._ahead.clear()
    monkeypatch.setattr(v, "_preload_next", lambda: None)  # every J reads its item (slow): no preloaded shortcut

    def consistent():
        it = v.session.item
        assert v.loaded_key in (None, it.key)
        if v.loaded_key is None:  # still loading: nothing of another item on screen
            assert v.image_view.rad is None and v.image_view.gmap is None and v.report_view.report is None
            assert not v.boxes.rois
        if v.image_view.gmap is not None:
            assert v.map_key == it.key and v.image_view.gmap.phrase == it.label_text
    first = v.session.item
    for _ in range(3):
        _press(qtbot, v, Key.Key_J)
        consistent()
    target = v.session.item
    assert target is not first and v.loaded_key is None
    before = target.boxes_state()
    _press(qtbot, v, Key.Key_A)  # pressed while the item is still loading: refused, nothing saved, no advance
    assert v.session.item is target and target.boxes_state() == before and not v.session.can_undo
    assert "not decided" in v.statusTip()
    release.set()
    qtbot.waitUntil(lambda: v.loaded_key == target.key, timeout=10000)
    consistent()
    _press(qtbot, v, Key.Key_A)  # now on screen: saved
    assert target.status == "accepted"
    v.close()
    wait_all()
