"""`elvis ground` and `elvis inspect` say how far to believe a map: trust lines, --json, unknown words, inverted film."""

import json
import math
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from elvis_core.cli import main

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo_model"
CAL = {"kind": "logistic", "feature": "peak", "a": 20.0, "b": -6.0, "threshold": 0.5,
       "calibrated_on": "synthetic test calibration", "ece": 0.01, "n_present": 10, "n_absent": 10}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck") / "cal"
    shutil.copytree(DEMO, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["presence_calibration"] = CAL
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def uncalibrated(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck") / "uncal"
    shutil.copytree(DEMO, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("presence_calibration", None)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def wrong_tag(tmp_path_factory):
    """RG1 (a real MONOCHROME1 chest CR) with its photometric tag rewritten as MONOCHROME2: read inverted."""
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME2"
    out = tmp_path_factory.mktemp("img") / "wrong_tag.dcm"
    ds.save_as(out)
    return out


def test_ground_json_records_presence_unknown_words_and_inversion(calibrated, wrong_tag, tmp_path, capsys):
    js = tmp_path / "maps.json"
    code = main(["ground", "--checkpoint", str(calibrated), str(wrong_tag), "left pleural effusion",
                 "zebra in the left lung", "--out", str(tmp_path / "m.png"), "--json", str(js)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "film looks inverted" in cap.err and "MONOCHROME2 probably wrong" in cap.err
    assert "zebra is unknown to this model" in cap.err
    assert cap.out.count("trust: presence ") == 2
    doc = json.loads(js.read_text())
    assert doc["image"] == "wrong_tag.dcm" and any("looks inverted" in w for w in doc["warnings"])
    assert doc["calibration"]["calibrated_on"] == "synthetic test calibration"
    eff, nod = doc["phrases"]
    assert eff["phrase"] == "left pleural effusion" and eff["unknown_words"] == []
    assert nod["unknown_words"] == ["zebra"] and "unknown to this model: zebra" in nod["trust"]
    for r in (eff, nod):
        assert r["presence"] == pytest.approx(1 / (1 + math.exp(-(20 * r["peak"] - 6))), abs=1e-5)
        assert r["confident"] == (r["presence"] >= 0.5)
        assert any("looks inverted" in w for w in r["warnings"])


def test_ground_json_uncalibrated_says_null(uncalibrated, tmp_path, capsys):
    js = tmp_path / "maps.json"
    img = get_testdata_file("RG1_UNCI.dcm")
    code = main(["ground", "--checkpoint", str(uncalibrated), img, "cardiomegaly", "--out", str(tmp_path / "m.png"),
                 "--json", str(js)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "looks inverted" not in cap.err and "trust: uncalibrated (peak " in cap.out
    doc = json.loads(js.read_text())
    assert doc["calibration"] is None and not any("inverted" in w for w in doc["warnings"])
    (rec,) = doc["phrases"]
    assert rec["presence"] is None and rec["confident"] is None and -1 <= rec["peak"] <= 1
    assert main(["ground", "--checkpoint", str(uncalibrated), img, "x", "--out", str(tmp_path / "m.png"),
                 "--json", str(tmp_path / "nope" / "m.json")]) == 2
    assert "output folder does not exist" in capsys.readouterr().err


def test_inspect_flags_an_inverted_film(wrong_tag, capsys):
    assert main(["inspect", str(wrong_tag)]) == 0
    assert "film looks inverted" in capsys.readouterr().out
    assert main(["inspect", get_testdata_file("RG1_UNCI.dcm"), "--json"]) == 0
    assert "inverted" not in json.loads(capsys.readouterr().out)["warnings"].__repr__()
