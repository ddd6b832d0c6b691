"""Worker functions of the Review tab (thread pool; no Qt here)."""

from __future__ import annotations

from typing import Optional

from elvis_core.errors import ElvisError
from elvis_core.review.figures import map_on_grid
from elvis_core.review.imaging import load_image


def _load_item_data(key: str, image_path: str, report_path: Optional[str]):
    """Worker: the image and (when present) the study report."""
    rad = load_image(image_path)
    from elvis_viewer.view_items import prepare_display

    prepare_display(rad)  # pyramid, robust range, window, presets: off the GUI thread
    report = None
    if report_path:
        from elvis_core.io.report import read_report

        try:
            report = read_report(report_path)
        except ElvisError:
            report = None
    return key, rad, report


def _ground(key: str, engine, rad, phrase: str):
    """Worker: the phrase's map and its resampled values for live figures."""
    from elvis_viewer.session_tasks import limit_torch_threads

    limit_torch_threads()
    gmap = engine.ground_image(rad, phrase)
    return key, gmap, map_on_grid(gmap, rad.shape)


def _preload(key: str, image_path: str, report_path: Optional[str], engine, phrase: str):
    """Worker: the next item's image, report and (with a model) map, ready before the annotator moves on."""
    _k, rad, report = _load_item_data(key, image_path, report_path)
    mapped = None
    if engine is not None:
        try:
            mapped = _ground(key, engine, rad, phrase)[1:]
        except Exception:  # the real request will report it
            mapped = None
    return key, (key, rad, report), mapped, engine
