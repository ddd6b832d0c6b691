"""Review mode of the viewer (Qt skin over :mod:`elvis_core.review`): `ReviewView`, the editable box layer and
the reviewer-name / reject-reason dialogs."""

from elvis_viewer.review.box_layer import BoxLayer
from elvis_viewer.review.view import ReviewView

__all__ = ["BoxLayer", "ReviewView"]
