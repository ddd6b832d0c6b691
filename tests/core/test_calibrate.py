"""`elvis calibrate`: presence calibration fitted on films vs their finding-free twins, written into config.json
atomically, then used by `elvis eval` (ECE on other data)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("elvis_core.grounding.presence")  # helper h21a's module (the shared contract); on main soon


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from elvis_core.phantom import generate

    root = tmp_path_factory.mktemp("cal")
    generate(root / "val", 10, seed=31, size=256, splits=(0, 100, 0), twins=True)
    generate(root / "test", 8, seed=42, size=256, splits=(0, 0, 100), twins=True)
    return root


def test_calibrate_writes_the_calibration_and_eval_uses_it(sets, tmp_path, capsys):
    from elvis_core.cli import main
    from elvis_core.model.checkpoint import load_checkpoint
    from elvis_core.resources import demo_model

    ck = tmp_path / "ck"
    shutil.copytree(demo_model(), ck)
    before = json.loads((ck / "config.json").read_text())
    before.pop("presence_calibration", None)  # the shipped demo model is calibrated: start from an uncalibrated copy
    (ck / "config.json").write_text(json.dumps(before, indent=1))
    rc = main(["calibrate", "--checkpoint", str(ck), "--annotations", str(sets / "val" / "ms_cxr.csv"),
               "--images", str(sets / "val"), "--twins", str(sets / "val" / "twins"), "--split", "val"])
    out = capsys.readouterr().out
    assert rc == 0 and "wrote presence_calibration" in out
    doc = json.loads((ck / "config.json").read_text())
    cal = doc["presence_calibration"]
    assert cal["kind"] == "logistic" and cal["feature"] == "peak" and cal["a"] > 0  # a higher peak: more present
    assert cal["n_present"] == cal["n_absent"] >= 10 and "ms_cxr.csv split val" in cal["calibrated_on"]
    assert {k: v for k, v in doc.items() if k != "presence_calibration"} == before  # nothing else changed
    assert not list(ck.glob("*.tmp")) and load_checkpoint(ck) is not None
    # held-out: eval reports the calibration, ECE and the presence of twins
    rc = main(["eval", "--checkpoint", str(ck), "--annotations", str(sets / "test" / "ms_cxr.csv"),
               "--images", str(sets / "test"), "--twins", str(sets / "test" / "twins"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "presence calibration: threshold 0.50, calibrated on" in out and "ECE (present + twins" in out


def test_calibrate_bad_inputs_are_one_line(sets, tmp_path, capsys):
    from elvis_core.cli import main

    rc = main(["calibrate", "--checkpoint", str(tmp_path), "--annotations", str(sets / "val" / "ms_cxr.csv"),
               "--images", str(sets / "val"), "--twins", str(sets / "val" / "twins")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a checkpoint folder" in err and len(err.strip().splitlines()) == 1
