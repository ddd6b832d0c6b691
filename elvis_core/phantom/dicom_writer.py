"""Write a phantom image as a DICOM file (CR or DX; MONOCHROME1/2; BitsStored 10-15; rescale + window tags;
ImagerPixelSpacing; uncompressed, RLE Lossless or JPEG 2000 Lossless), with synthetic identifiers only.

Deterministic: every UID and date comes from the caller's RNG; nothing depends on the clock.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from elvis_core.errors import ElvisError

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
TRANSFER_SYNTAXES = {"explicit": ExplicitVRLittleEndian, "rle": RLELossless, "j2k": JPEG2000Lossless}


def random_uid(rng: np.random.Generator) -> str:
    """A ``2.25.<128-bit integer>`` UID (UUID-derived form, PS3.5 B.2) drawn from ``rng``."""
    n = 0
    for part in rng.integers(0, 2**32, size=4, dtype=np.uint64):
        n = (n << 32) | int(part)
    return f"2.25.{n}"


@dataclass
class Encoding:
    """How one image is stored (drawn per study by :func:`sample_encoding`)."""

    modality: str  # "CR" | "DX"
    photometric: str  # "MONOCHROME1" | "MONOCHROME2"
    bits_stored: int
    slope: float
    intercept: float
    syntax: str  # key of TRANSFER_SYNTAXES
    fov_mm: float  # physical height of the detector area imaged
    magnification: float | None
    fill: float  # fraction of the stored range the image uses
    offset: float


def sample_encoding(rng: np.random.Generator) -> Encoding:
    bits = int(rng.choice([10, 11, 12, 12, 13, 14, 15]))
    syntax = str(rng.choice(["explicit", "rle", "j2k"], p=[0.7, 0.22, 0.08]))
    slope, intercept = [(1.0, 0.0), (1.0, 0.0), (1.0, -1024.0), (0.5, 0.0), (2.0, 100.0)][int(rng.integers(5))]
    return Encoding(
        modality=str(rng.choice(["CR", "DX"])),
        photometric=str(rng.choice(["MONOCHROME1", "MONOCHROME2"], p=[0.4, 0.6])),
        bits_stored=bits, slope=slope, intercept=intercept, syntax=syntax,
        fov_mm=float(rng.uniform(350, 430)),
        magnification=float(rng.uniform(1.05, 1.15)) if rng.random() < 0.4 else None,
        fill=float(rng.uniform(0.75, 0.97)), offset=float(rng.uniform(0.0, 0.02)),
    )


def to_stored(image: np.ndarray, enc: Encoding) -> np.ndarray:
    """Image in [0, 1] (higher = brighter) -> stored uint16 values in the file's photometric sense."""
    top = (1 << enc.bits_stored) - 1
    bright = np.rint((enc.offset + enc.fill * image) * top)
    bright = np.clip(bright, 0, top).astype(np.uint16)
    return (top - bright).astype(np.uint16) if enc.photometric == "MONOCHROME1" else bright


def write_dicom(path: os.PathLike | str, image: np.ndarray, enc: Encoding, ids: Dict[str, str], view: str,
                sex: str) -> Tuple[int, int]:
    """Write ``image`` (float32 [0, 1], higher = brighter) to ``path``. ``ids``: patient_id, patient_name,
    study_uid, series_uid, sop_uid, study_date, study_id, accession. Returns (rows, cols)."""
    rows, cols = image.shape
    stored = to_stored(image, enc)
    top = (1 << enc.bits_stored) - 1
    # window in modality values of the file's own sense, spanning the 1st-99th percentile of the body
    lo_b, hi_b = np.percentile(image[:: max(1, rows // 256), :: max(1, cols // 256)], [1, 99.5])
    lo_s, hi_s = [(enc.offset + enc.fill * float(b)) * top for b in (lo_b, hi_b)]
    if enc.photometric == "MONOCHROME1":
        lo_s, hi_s = top - hi_s, top - lo_s
    center = enc.slope * (lo_s + hi_s) / 2 + enc.intercept
    width = max(1.0, enc.slope * (hi_s - lo_s))

    sop_class = CR_STORAGE if enc.modality == "CR" else DX_PRESENTATION
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ids["sop_uid"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationVersionName = "ELVIS_PHANTOM"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if enc.modality == "CR" else ["ORIGINAL", "PRIMARY", ""]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ids["sop_uid"]
    ds.StudyDate = ids["study_date"]
    ds.StudyTime = "000000"
    ds.AccessionNumber = ids["accession"]
    ds.Modality = enc.modality
    ds.Manufacturer = "ELVIS Phantom"
    ds.InstitutionName = "PHANTOM"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST (PA AND LAT)" if view == "PA" else "CHEST (PORTABLE AP)"
    ds.PatientName = ids["patient_name"]
    ds.PatientID = ids["patient_id"]
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = ids["study_uid"]
    ds.SeriesInstanceUID = ids["series_uid"]
    ds.StudyID = ids["study_id"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    if enc.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PresentationLUTShape = "INVERSE" if enc.photometric == "MONOCHROME1" else "IDENTITY"
    spacing = round(enc.fov_mm / rows, 4)
    ds.ImagerPixelSpacing = [spacing, spacing]
    if enc.magnification is not None:
        ds.EstimatedRadiographicMagnificationFactor = round(enc.magnification, 3)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = enc.photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = enc.bits_stored
    ds.HighBit = enc.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = enc.intercept
    ds.RescaleSlope = enc.slope
    ds.RescaleType = "US"
    ds.WindowCenter = round(center, 1)
    ds.WindowWidth = round(width, 1)
    ds.WindowCenterWidthExplanation = "PHANTOM"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    try:
        if enc.syntax != "explicit":
            quiet = [logging.getLogger(n) for n in ("openjpeg", "_openjpeg", "openjpeg.utils")]
            levels = [lg.level for lg in quiet]
            for lg in quiet:  # the JPEG 2000 encoder logs one INFO line per tile
                lg.setLevel(logging.WARNING)
            try:
                ds.compress(TRANSFER_SYNTAXES[enc.syntax], stored, generate_instance_uid=False)
            finally:
                for lg, lv in zip(quiet, levels):
                    lg.setLevel(lv)
        ds.save_as(path, enforce_file_format=True)
    except Exception as err:  # encoder missing / disk full: name the file and the cause
        raise ElvisError(f"cannot write phantom DICOM ({enc.syntax}): {type(err).__name__}: {err}", path) from err
    return rows, cols


__all__ = ["Encoding", "sample_encoding", "to_stored", "write_dicom", "random_uid", "pydicom"]
