"""The inverted-film rule (elvis_core.io.inversion) on a real chest CR and on phantom films of both photometrics."""

import dataclasses
import glob
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from elvis_core.io.dicom import read_radiograph
from elvis_core.io.inversion import THRESHOLD, inversion_contrast, inversion_warning
from elvis_core.io.radiograph import Radiograph

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"


def _inverted(r: Radiograph) -> Radiograph:
    """What a reader gives when the photometric tag is wrong: the same file read the other way round."""
    lo, hi = float(r.pixels.min()), float(r.pixels.max())
    return dataclasses.replace(r, pixels=(lo + hi - r.pixels).astype(np.float32), windows=[], voi_lut=None)


def test_real_chest_cr_read_correctly_passes_and_inverted_is_flagged():
    r = read_radiograph(get_testdata_file("RG1_UNCI.dcm"))
    assert r.meta["PhotometricInterpretation"] == "MONOCHROME1"
    assert inversion_warning(r) is None
    assert inversion_contrast(r.pixels) > 0.2
    w = inversion_warning(_inverted(r))
    assert w is not None and "looks inverted" in w and "MONOCHROME1" in w
    assert inversion_contrast(_inverted(r).pixels) < THRESHOLD


def test_phantom_films_of_both_photometrics():
    files = sorted(glob.glob(str(DEMO / "files" / "**" / "*.dcm"), recursive=True))
    seen = set()
    for f in files:
        r = read_radiograph(f)
        seen.add(r.meta["PhotometricInterpretation"])
        assert inversion_warning(r) is None, f
        assert inversion_warning(_inverted(r)) is not None, f
    assert seen == {"MONOCHROME1", "MONOCHROME2"}


def test_generated_phantoms_at_training_size(tmp_path):
    from elvis_core.phantom.generate import generate

    generate(tmp_path / "ph", 6, seed=5, size=256)
    for f in sorted((tmp_path / "ph").rglob("*.dcm")):
        r = read_radiograph(f)
        assert inversion_warning(r) is None
        assert inversion_warning(_inverted(r)) is not None


def test_one_sided_white_out_is_not_called_inverted():
    r = read_radiograph(get_testdata_file("RG1_UNCI.dcm"))
    px = r.pixels.copy()
    h, w = px.shape
    px[: int(0.8 * h), : w // 2] = np.percentile(px, 99.5)  # a whole hemithorax white (large effusion / collapse)
    assert inversion_warning(dataclasses.replace(r, pixels=px)) is None


def test_no_claim_where_the_rule_does_not_apply():
    r = read_radiograph(get_testdata_file("RG1_UNCI.dcm"))
    inv = _inverted(r)
    assert inversion_warning(dataclasses.replace(inv, meta={**inv.meta, "BodyPartExamined": "HAND"})) is None
    assert inversion_warning(dataclasses.replace(inv, meta={**inv.meta, "ViewPosition": "LL"})) is None
    assert inversion_warning(Radiograph(pixels=np.zeros((10, 10), np.float32))) is None
    assert inversion_warning(Radiograph(pixels=np.full((100, 100), 7.0, np.float32))) is None
    nan = np.full((64, 64), np.nan, np.float32)
    assert inversion_warning(Radiograph(pixels=nan)) is None
    assert inversion_warning(None) is None
