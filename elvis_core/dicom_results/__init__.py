"""Results as standard DICOM, built with highdicom (DESIGN.md, "where results go"); one module per object:

- :mod:`.sr` — reviewed boxes of one image → Comprehensive SR, TID 1500 (decisions incl. rejections, reviewer as
  verifying observer, model + software version as device observer); :mod:`.sr_read` reads it back;
- :mod:`.seg` — the maps of one image → one FRACTIONAL SEG, one segment per phrase, values kept;
- :mod:`.sc` — one map → an RGB Secondary Capture heat map with the viewer's caption (what PACS viewers display);
- :mod:`.common` — what they share, incl. :data:`~.common.FILING_ATTRIBUTES`: the only patient / study attributes a
  result carries (what a PACS needs to file it).

Identifiers: nothing here logs or prints them; file names are SOP Instance UIDs. :func:`dciodvfy` runs dicom3tools'
validator on a written file.
"""

from elvis_core.dicom_results.common import (CATEGORY_CODES, FILING_ATTRIBUTES, MANUFACTURER, MODEL_NAME,
                                             PRIVATE_SCHEME, QUALITATIVE_EVALUATIONS, DicomExportError, ModelInfo,
                                             category_code, dciodvfy, dciodvfy_available, keep_filing_attributes,
                                             person_name, read_source, write_dataset)
from elvis_core.dicom_results.sc import heatmap_sc
from elvis_core.dicom_results.seg import MapLayer, maps_seg, trust_line
from elvis_core.dicom_results.sr import (DECISION_CODES, REVIEW_DECISION, ExportResult, SrBox, boxes_from_items,
                                         export_review_sr, review_sr)
from elvis_core.dicom_results.sr_read import ReviewSr, find_review_srs, is_review_sr, read_review_sr

__all__ = [
    "CATEGORY_CODES", "FILING_ATTRIBUTES", "MANUFACTURER", "MODEL_NAME", "PRIVATE_SCHEME", "QUALITATIVE_EVALUATIONS",
    "DicomExportError", "ModelInfo", "category_code", "dciodvfy", "dciodvfy_available", "keep_filing_attributes",
    "person_name", "read_source", "write_dataset", "heatmap_sc", "MapLayer", "maps_seg", "trust_line",
    "DECISION_CODES", "REVIEW_DECISION", "ExportResult", "SrBox", "boxes_from_items", "export_review_sr",
    "review_sr", "ReviewSr", "find_review_srs", "is_review_sr", "read_review_sr",
]
