"""Test data: a radiology report stored as an Enhanced SR in an image's study (what a PACS holds), copies of
an image as several instances of one series (for multi-instance fetches), and a stand-in grounding map for the heat
map Secondary Capture. Built with highdicom / pydicom."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import highdicom as hd
import pydicom
from pydicom.sr.coding import Code


def report_sr(image_path, sections: Dict[str, str], out: Path) -> Path:
    """An Enhanced SR in the image's study: root 'Diagnostic imaging report' with one CONTAINER per section
    (Findings / Impressions, TID 2000 style), each holding one TEXT item."""
    src = pydicom.dcmread(str(image_path), stop_before_pixels=True)
    names = {"FINDINGS": (Code("121070", "DCM", "Findings"), Code("121071", "DCM", "Finding")),
             "IMPRESSION": (Code("121072", "DCM", "Impressions"), Code("121073", "DCM", "Impression"))}
    children = []
    for head, text in sections.items():
        cont_code, text_code = names[head]
        c = hd.sr.ContainerContentItem(name=cont_code, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        c.ContentSequence = [hd.sr.TextContentItem(name=text_code, value=text,
                                                   relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)]
        children.append(c)
    root = hd.sr.ContainerContentItem(name=Code("18748-4", "LN", "Diagnostic imaging report"), template_id="2000")
    root.ContentSequence = children
    sr = hd.sr.EnhancedSR(evidence=[src], content=root, series_instance_uid=hd.UID(), series_number=100,
                          sop_instance_uid=hd.UID(), instance_number=1, manufacturer="Test RIS", is_complete=True,
                          is_final=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(str(out), enforce_file_format=True)
    return out


class StandInMap:
    """A stand-in GroundingMap exposing what the heat-map SC needs: phrase, fully_seen, to_image and trust_line (as
    h21a's contract says), the trust line given."""

    def __init__(self, sim, phrase, trust_line):
        self.phrase, self._sim, self._trust_line, self.fully_seen = phrase, sim, trust_line, True

    def to_image(self, shape=None):
        import cv2

        return self._sim if shape is None or tuple(shape) == self._sim.shape else \
            cv2.resize(self._sim, (shape[1], shape[0]))

    def trust_line(self):
        return self._trust_line


def series_copies(image_path, n: int, out_dir: Path) -> List[Path]:
    """``n`` instances of one new series of a new study, made from one image (new UIDs, same pixels)."""
    src = pydicom.dcmread(str(image_path))
    study, series = hd.UID(), hd.UID()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        ds = src.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = hd.UID()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.PatientID = "MULTI0001"
        p = out_dir / f"{k}.dcm"
        ds.save_as(str(p), enforce_file_format=True)
        paths.append(p)
    return paths
