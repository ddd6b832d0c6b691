"""ONNX export + the ONNX Runtime engine (issue 25): the same maps as torch, no torch imported, idempotent export,
stale or broken exports refused (the viewer then uses torch)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from elvis_core.errors import GroundingError
from elvis_core.grounding.onnx_engine import OnnxGroundingEngine, load_fast_engine, onnx_problem
from elvis_core.model.onnx_export import MIN_PEARSON, export_onnx, fidelity_cases, pearson
from elvis_core.resources import demo_model

REPO = Path(__file__).resolve().parents[2]
PHRASES = ["right lower lobe opacity", "small left pleural effusion", "cardiomegaly", "no pneumothorax",
           "Left apical pneumothorax."]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A copy of the demo model WITHOUT its shipped export, exported here (with an int8 text tower, forced)."""
    d = tmp_path_factory.mktemp("onnx") / "model"
    shutil.copytree(demo_model(), d, ignore=shutil.ignore_patterns("onnx"))
    assert onnx_problem(d).startswith("no ONNX export")
    manifest = export_onnx(d, int8=True)
    return d, manifest


@pytest.fixture(scope="module")
def torch_engine(exported):
    from elvis_core.grounding.engine import GroundingEngine

    return GroundingEngine(exported[0], device="cpu")


@pytest.fixture(scope="module")
def rad():
    rads, _ = fidelity_cases(size=384, seeds=(5,))
    return rads[0]


def test_export_passes_its_fidelity_check_and_records_what_it_was_made_from(exported):
    d, m = exported
    fid = m["fidelity"]
    assert fid["passed"] and fid["min_r"] >= MIN_PEARSON and fid["n_maps"] >= 20, fid
    assert fid["max_abs_diff"] < 1e-3
    for name in ("image.onnx", "text.onnx", "manifest.json"):
        assert (d / "onnx" / name).is_file()
    assert json.loads((d / "onnx" / "manifest.json").read_text())["weights_hash"] == m["weights_hash"]
    q = m["text_int8"]
    assert q["min_r"] >= MIN_PEARSON if q["passed"] else q["min_r"] < MIN_PEARSON
    assert onnx_problem(d) is None


@pytest.mark.parametrize("kw", [{}, {"mirror_average": True}, {"phrase_map": "token-mean", "smoothing_sigma": 1.5}])
def test_onnx_maps_equal_torch_maps(exported, rad, kw):
    from elvis_core.grounding.engine import GroundingEngine

    d, _ = exported
    ref = GroundingEngine(d, device="cpu", **kw)
    eng = OnnxGroundingEngine(d, use_int8=False, **kw)
    ref.set_image(rad)
    eng.embed(rad)
    for a, b in zip(ref.ground_many(PHRASES), eng.ground_many(PHRASES)):
        assert pearson(a.raw_similarity, b.raw_similarity) >= 0.9999
        np.testing.assert_allclose(b.similarity, a.similarity, atol=1e-4)
        np.testing.assert_allclose(b.grid_to_image, a.grid_to_image)
        assert b.seen_region == a.seen_region and b.image_shape == a.image_shape and b.phrase == a.phrase


def test_tokens_truncation_and_cached_path_match_torch(exported, torch_engine, rad):
    d, _ = exported
    eng = OnnxGroundingEngine(d, use_int8=False)
    a = torch_engine.ground_image(rad, "left basal atelectasis", tokens=True)
    b = eng.ground_image(rad, "left basal atelectasis", tokens=True)
    assert b.tokens == a.tokens and len(b.tokens) >= 2
    np.testing.assert_allclose(b.token_maps, a.token_maps, atol=1e-4)
    long = " ".join(["opacity"] * 300)
    wa, wb = torch_engine.ground_image(rad, long).warnings, eng.ground_image(rad, long).warnings
    assert wa == wb and any("truncated" in w for w in wb)
    # try_ground_cached: None until the phrase is encoded, then the map without an encoder call
    assert eng.try_ground_cached(rad, "a phrase never seen") is None
    assert eng.encode_phrases(["a phrase never seen", "  ", "cardiomegaly"]) >= 1
    m = eng.try_ground_cached(rad, "a phrase never seen")
    assert m is not None and m.similarity.shape == a.similarity.shape
    assert eng.has_image(rad) and eng.image_encode_count == 1
    with pytest.raises(GroundingError, match="empty"):
        eng.ground("   ")


def test_int8_text_tower_is_used_only_when_checked(exported, torch_engine, rad):
    d, m = exported
    eng = OnnxGroundingEngine(d)  # use_int8 default True
    assert ("int8" in eng.backend) == bool(m["text_int8"]["passed"])
    if m["text_int8"]["passed"]:
        torch_engine.set_image(rad)
        eng.embed(rad)
        for p in PHRASES:
            assert pearson(torch_engine.ground(p).raw_similarity, eng.ground(p).raw_similarity) >= MIN_PEARSON


def test_engine_loads_without_torch_or_transformers(exported):
    d, _ = exported
    code = ("import sys; from elvis_core.grounding.onnx_engine import load_fast_engine\n"
            "from elvis_core.model.onnx_export import fidelity_cases\n"
            f"e = load_fast_engine({str(d)!r}); rad = fidelity_cases(size=256, seeds=(3,))[0][0]\n"
            "m = e.ground_image(rad, 'cardiomegaly')\n"
            "print(type(e).__name__, m.similarity.shape, 'torch' in sys.modules, 'transformers' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["False", "False"], r.stdout
    assert r.stdout.startswith("OnnxGroundingEngine")


def test_export_is_idempotent_and_redone_when_forced(exported):
    d, m = exported
    before = (d / "onnx" / "image.onnx").stat().st_mtime_ns
    again = export_onnx(d)
    assert again["weights_hash"] == m["weights_hash"] and (d / "onnx" / "image.onnx").stat().st_mtime_ns == before


def test_stale_or_broken_exports_fall_back_to_torch(exported, tmp_path):
    d, _ = exported
    # weights changed after the export
    w = tmp_path / "weights"
    shutil.copytree(d, w)
    from safetensors.numpy import load_file, save_file

    state = load_file(str(w / "model.safetensors"))
    k = next(k for k, v in state.items() if v.dtype == np.float32 and v.size > 10)
    state[k] = state[k] + 0.01
    save_file(state, str(w / "model.safetensors"))
    assert "other weights" in onnx_problem(w)
    assert load_fast_engine(w) is None
    # no export at all: decided from the file system, onnxruntime is not even imported (a GUI stall otherwise)
    code = ("import sys; from elvis_core.grounding.onnx_engine import load_fast_engine\n"
            f"print(load_fast_engine({str(demo_model().parent / 'demo')!r}), 'onnxruntime' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert r.stdout.split() == ["None", "False"], r.stdout + r.stderr[-1000:]
    # config changed (the graph bakes the architecture and pooling in)
    c = tmp_path / "config"
    shutil.copytree(d, c)
    cfg = json.loads((c / "config.json").read_text())
    cfg["model"]["text"]["pooling"] = "mean"
    (c / "config.json").write_text(json.dumps(cfg))
    assert "another config.json" in onnx_problem(c)
    assert load_fast_engine(c) is None
    # a truncated graph: ONNX Runtime cannot read it; the loader says so and returns None (no exception)
    b = tmp_path / "broken"
    shutil.copytree(d, b)
    data = (b / "onnx" / "image.onnx").read_bytes()
    (b / "onnx" / "image.onnx").write_bytes(data[: len(data) // 3])
    assert load_fast_engine(b) is None
    # a failed check is never used
    f = tmp_path / "failed"
    shutil.copytree(d, f)
    man = json.loads((f / "onnx" / "manifest.json").read_text())
    man["fidelity"]["passed"] = False
    (f / "onnx" / "manifest.json").write_text(json.dumps(man))
    assert "failed its fidelity check" in onnx_problem(f)
    with pytest.raises(GroundingError, match="failed its fidelity check"):
        OnnxGroundingEngine(f)


def test_writers_export_unless_told_not_to(exported, tmp_path, monkeypatch):
    from elvis_core.model.onnx_export import export_after_write

    d, m = exported
    said = []
    monkeypatch.setenv("ELVIS_ONNX_EXPORT", "1")
    assert export_after_write(d, say=said.append)["weights_hash"] == m["weights_hash"]  # up to date: kept
    assert export_after_write(d, enabled=False) is None  # --no-onnx
    monkeypatch.setenv("ELVIS_ONNX_EXPORT", "0")
    assert export_after_write(d) is None
    monkeypatch.setenv("ELVIS_ONNX_EXPORT", "1")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{")
    assert export_after_write(bad, say=said.append) is None  # a failed export warns, never fails the writer
    assert any("ONNX export failed" in s and "not valid JSON" in s for s in said), said


def test_cli_export_onnx_up_to_date_and_bad_folder(exported, tmp_path):
    d, _ = exported
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "elvis_core", "export-onnx", str(d)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "up to date" in r.stderr and "fidelity: passed" in r.stdout
    r = subprocess.run([sys.executable, "-m", "elvis_core", "export-onnx", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "checkpoint folder does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_shipped_demo_model_carries_a_current_export():
    """The viewer's --demo grounds with ONNX Runtime: the shipped export must match the shipped weights (after
    replacing resources/demo_model, run: python -m elvis_core export-onnx resources/demo_model)."""
    assert onnx_problem(demo_model()) is None


def test_trust_fields_come_from_the_same_function_as_torch(exported, torch_engine, rad):
    """With the map-trust module in the core (presence.attach_trust), the ONNX engine's maps carry the same peak,
    presence, threshold and unknown words as the torch engine's: one function, the same sources."""
    presence = pytest.importorskip("elvis_core.grounding.presence")
    if not hasattr(presence, "attach_trust"):
        pytest.skip("this core has no map-trust function yet")
    d, _ = exported
    eng = OnnxGroundingEngine(d, use_int8=False)
    for phrase in ("small left pleural effusion", "zzqx nodule in the left apex"):
        a, b = torch_engine.ground_image(rad, phrase), eng.ground_image(rad, phrase)
        assert b.unknown_words == a.unknown_words
        assert b.peak == pytest.approx(a.peak, abs=1e-5)
        assert (a.presence is None) == (b.presence is None)
        if a.presence is not None:
            assert b.presence == pytest.approx(a.presence, abs=1e-4)
        assert b.trust_line().split("peak")[0] == a.trust_line().split("peak")[0]
