"""Box review for annotators: import MS-CXR CSV / COCO JSON, a filterable queue, decisions with undo/redo,
crash-safe persistence (SQLite WAL, synchronous=FULL), live figures and export (CSV, COCO JSON, summary).

Headless: the viewer's ``elvis_viewer.review`` is a thin skin over :class:`ReviewSession`.
"""

from elvis_core.review.export import export_all, export_coco, export_csv, export_summary, summarize, summary_table
from elvis_core.review.figures import ItemFigures, box_iou, item_figures
from elvis_core.review.importer import ImportProblem, ImportResult, import_annotations
from elvis_core.review.model import BOX_STATUSES, ITEM_STATUSES, ReviewBox, ReviewItem
from elvis_core.review.session import REJECT_REASONS, ReviewSession, find_report
from elvis_core.review.store import ReviewInUseError, ReviewStore, ReviewStoreError, review_path_for

__all__ = [
    "BOX_STATUSES", "ITEM_STATUSES", "ImportProblem", "ImportResult", "ItemFigures", "REJECT_REASONS", "ReviewBox",
    "ReviewInUseError", "ReviewItem", "ReviewSession", "ReviewStore", "ReviewStoreError", "box_iou", "export_all", "export_coco",
    "export_csv", "export_summary", "find_report", "import_annotations", "item_figures", "review_path_for",
    "summarize", "summary_table",
]
