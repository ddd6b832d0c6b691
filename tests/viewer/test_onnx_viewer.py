"""The viewer grounds with the checkpoint's ONNX export when it has a current one (issue 25): the first map of
``elvis-viewer --demo`` is drawn without importing torch or transformers; without an export (or with
``ELVIS_NO_ONNX=1``) the torch engine draws it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from elvis_viewer import app

REPO = Path(__file__).resolve().parents[2]


def _first_map(tmp_path, extra_env=None, args=("--demo",)):
    env = dict(os.environ, PYTHONPATH=str(REPO), QT_QPA_PLATFORM="offscreen", ELVIS_VIEWER_TIMING="map",
               ELVIS_VIEWER_GAPS="1", ELVIS_VIEWER_SETTINGS=str(tmp_path / "s.ini"), **(extra_env or {}))
    r = subprocess.run([sys.executable, "-m", "elvis_viewer", *args], capture_output=True, text=True, env=env,
                       cwd=str(tmp_path), timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("elvis-timing mapped")]
    assert lines, r.stderr[-3000:]
    return dict(kv.split("=", 1) for kv in lines[0].split()[3:])


def test_demo_first_map_without_torch(tmp_path):
    info = _first_map(tmp_path)
    assert info["engine"] == "OnnxGroundingEngine" and info["torch_loaded"] == "False", info
    assert float(info["gap_ms"]) >= 0


def test_checkpoint_without_export_falls_back_to_torch(tmp_path):
    ckpt = tmp_path / "model"
    shutil.copytree(app.DEMO_MODEL, ckpt, ignore=shutil.ignore_patterns("onnx"))
    info = _first_map(tmp_path, args=("--demo", "--checkpoint", str(ckpt)))
    assert info["engine"] == "GroundingEngine" and info["torch_loaded"] == "True", info
    info = _first_map(tmp_path, extra_env={"ELVIS_NO_ONNX": "1"})
    assert info["engine"] == "GroundingEngine", info


def test_warm_import_only_for_checkpoints_with_an_export(tmp_path, monkeypatch):
    monkeypatch.delenv("ELVIS_NO_ONNX", raising=False)
    t = app.warm_inference_imports(app.build_parser().parse_args(["--demo"]))
    assert t is not None
    t.join(30)
    assert not t.is_alive()
    (tmp_path / "bare").mkdir()
    assert app.warm_inference_imports(app.build_parser().parse_args(["--checkpoint", str(tmp_path / "bare")])) is None
    assert app.warm_inference_imports(app.build_parser().parse_args([])) is None
