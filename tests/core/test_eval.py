"""evaluate() with the transparent stand-in model, and the `elvis eval` / `elvis ground` CLIs with a real (tiny,
random) checkpoint saved by the model package."""

import json
import math

import cv2
import numpy as np
import pytest

from elvis_core.cli import main
from elvis_core.grounding.engine import GroundingEngine
from elvis_core.grounding.evaluate import evaluate
from elvis_core.grounding.figure import colorize, render_overlay
from elvis_core.io.annotations import read_ms_cxr_csv
from elvis_core.io.radiograph import Radiograph
from tests.core.test_grounding import StandInModel, bright_ramp_map

HEADER = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split\n"


def _png(path, bright_box, shape=(96, 160)):
    img = np.full(shape, 40, np.uint8)
    x, y, w, h = bright_box
    img[y:y + h, x:x + w] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "images"
    _png(root / "files/p10/p10000001/s1/a.png", (100, 20, 60, 60))
    _png(root / "files/p10/p10000002/s2/b.png", (0, 30, 64, 64))
    csv = tmp_path / "ms_cxr.csv"
    csv.write_text(HEADER
                   + "a,Bright,bright,files/p10/p10000001/s1/a.png,100,20,60,60,160,96,test\n"
                   + "a,Dark,dark,files/p10/p10000001/s1/a.png,100,20,60,60,160,96,test\n"
                   # b's annotation was made on a 2x larger image: boxes must be rescaled
                   + "b,Bright,bright,files/p10/p10000002/s2/b.png,0,60,128,128,320,192,test\n"
                   + "c,Bright,bright,files/p10/p10000003/s3/missing.png,1,1,5,5,160,96,test\n"
                   + "d,Bright,bright,files/p10/p10000001/s1/a.png,1,1,5,5,160,96,train\n"
                   + "a,Bright,bad row,files/p10/p10000001/s1/a.png,x,1,5,5,160,96,test\n")
    return root, csv


def test_evaluate_per_category_macro_missing(dataset):
    root, csv = dataset
    aset = read_ms_cxr_csv(csv)
    assert aset.errors and aset.errors[0][0] == 7
    eng = GroundingEngine(StandInModel(), device="cpu")
    calls = []
    res = evaluate(eng, aset, root, split="test", progress=lambda d, t: calls.append((d, t)))
    assert res.n_evaluated == 3 and res.n_missing_phrases == 1
    assert res.missing[0][0].endswith("missing.png")
    assert calls[-1] == (4, 4)
    bright = res.per_category["Bright"]
    assert bright["n"] == 2 and bright["pointing"] == 1.0 and bright["cnr"] > 1.0 and bright["miou"] > 0
    dark = res.per_category["Dark"]
    assert dark["n"] == 1 and dark["pointing"] == 0.0
    assert bright["in_gt_out"] == 1.0 and dark["in_gt_out"] == 0.0  # "dark" is lower inside the bright box
    assert res.macro["pointing"] == pytest.approx(0.5)  # mean of categories, not of phrases
    assert res.overall["pointing"] == pytest.approx(2 / 3)
    rescaled = [r for r in res.rows if r["dicom_id"] == "b"][0]
    assert "rescaled" in rescaled["warnings"] and rescaled["pointing"]
    table = res.table()
    assert "macro" in table and "Bright" in table and "missing" in table
    doc = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert len(doc["phrases"]) == 3 and doc["n_missing_phrases"] == 1 and doc["csv_errors"][0]["line"] == 7


def test_render_overlay_shapes_and_colours():
    rad, gm = bright_ramp_map()
    fig0 = render_overlay(rad, gm, opacity=0.0, min_side=0, trust="")
    assert fig0.dtype == np.uint8 and fig0.ndim == 3 and fig0.shape[0] == 96 and fig0.shape[1] > 160
    assert (fig0[:, :160, 0] == fig0[:, :160, 1]).all()  # opacity 0: grey image only
    assert fig0[50, 0, 0] < fig0[50, 159, 0]  # the display window keeps the ramp
    fig = render_overlay(rad, gm, boxes=[(10, 10, 20, 20)], phrase="bright", footer="ckpt abc", opacity=1.0,
                         min_side=0)
    assert fig.shape[0] > 96  # phrase + footer bands
    big = render_overlay(rad, gm, opacity=1.0, trust="")  # small images are enlarged to 512 px on the long side
    assert big.shape[0] == 307 and big.shape[1] > 512
    # opacity 1: the bright right end (similarity ~ +0.9 for "bright") is red, the dark left end (~ 0) near white
    assert big[150, 500, 0] > 2 * big[150, 500, 2]
    assert min(big[150, 5]) > 200
    # fixed range: +1 is dark red, -1 dark blue in RdBu_r
    hi, lo = colorize(np.array([1.0]))[0], colorize(np.array([-1.0]))[0]
    assert hi[0] > hi[2] and lo[2] > lo[0]
    with pytest.raises(ValueError):
        colorize(np.zeros(2), cmap="nope")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from elvis_core.model import build_model, preset
    from elvis_core.model.checkpoint import save_checkpoint

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_model(preset("tiny"), texts=["bright opacity in the right lung", "dark left effusion"])
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "tiny")


def test_cli_eval_json(tiny_ckpt, dataset, tmp_path, capsys):
    root, csv = dataset
    out = tmp_path / "eval.json"
    code = main(["eval", "--checkpoint", str(tiny_ckpt), "--annotations", str(csv), "--images", str(root),
                 "--split", "test", "--json", str(out), "--no-progress"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "macro" in cap.out and "missing.png" in cap.err
    doc = json.loads(out.read_text())
    assert doc["provenance"]["checkpoint_hash"] and doc["provenance"]["code_version"]
    assert len(doc["phrases"]) == 3 and doc["settings"]["split"] == "test"
    assert all(set(("cnr", "miou", "pointing", "label_text")) <= set(p) for p in doc["phrases"])


def test_cli_eval_bad_inputs(tiny_ckpt, dataset, tmp_path, capsys):
    root, csv = dataset
    bad = tmp_path / "bad.csv"
    bad.write_text("dicom_id,path,x,y\n")
    code = main(["eval", "--checkpoint", str(tiny_ckpt), "--annotations", str(bad), "--images", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and "missing MS-CXR column" in err and str(bad) in err and "Traceback" not in err
    code = main(["eval", "--checkpoint", str(tmp_path / "nockpt"), "--annotations", str(csv), "--images",
                 str(root), "--no-progress"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("elvis eval: error:") and "nockpt" in last
    code = main(["eval", "--checkpoint", str(tiny_ckpt), "--annotations", str(csv), "--images", str(root),
                 "--split", "nosuchsplit"])
    assert code == 2 and "no phrases" in capsys.readouterr().err


def test_cli_ground_png_npy_and_boxes(tiny_ckpt, dataset, tmp_path, capsys):
    root, csv = dataset
    img = root / "files/p10/p10000001/s1/a.png"
    out = tmp_path / "fig.png"
    code = main(["ground", "--checkpoint", str(tiny_ckpt), str(img), "bright", "dark", "--out", str(out), "--npy",
                 "--annotations", str(csv), "--sigma", "1.5", "--opacity", "0.6"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    for k in (1, 2):
        png = tmp_path / f"fig_{k}.png"
        fig = cv2.imread(str(png))
        assert fig is not None and fig.shape[0] > 96
        m = np.load(tmp_path / f"fig_{k}.npy")
        assert m.shape == (96, 160) and m.dtype == np.float32 and np.all(np.abs(m) <= 1)
        grid = np.load(tmp_path / f"fig_{k}.grid.npz")
        assert grid["grid_to_image"].shape == (3, 3)
    assert "CNR" in cap.out and "pointing" in cap.out


def test_cli_ground_bad_inputs(tiny_ckpt, tmp_path, capsys):
    img = tmp_path / "x.png"
    _png(img, (0, 0, 10, 10))
    out = tmp_path / "o.png"
    assert main(["ground", "--checkpoint", str(tiny_ckpt), str(img), "   ", "--out", str(out)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["ground", "--checkpoint", str(tiny_ckpt), str(tmp_path / "nope.dcm"), "a", "--out",
                 str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["ground", "--checkpoint", str(tiny_ckpt), str(img), "a", "--out", str(out), "--opacity",
                 "2"]) == 2
    assert not out.exists()
    long = " ".join(["opacity"] * 200)
    assert main(["ground", "--checkpoint", str(tiny_ckpt), str(img), long, "--out", str(out)]) == 0
    assert "truncated" in capsys.readouterr().err and out.exists()


def test_engine_from_checkpoint_dir(tiny_ckpt):
    from elvis_core.model.checkpoint import checkpoint_hash

    eng = GroundingEngine(tiny_ckpt, device="cpu")
    assert eng.checkpoint_hash == checkpoint_hash(tiny_ckpt) and eng.checkpoint_name == "tiny"
    assert eng.device_name == "CPU"
    rad = Radiograph(pixels=np.random.default_rng(0).normal(0, 1, (70, 50)).astype(np.float32))
    eng.set_image(rad)
    gm = eng.ground("opacity")
    assert gm.similarity.shape == eng.model.grid_shape() and np.all(np.abs(gm.similarity) <= 1)
    assert gm.to_image().shape == (70, 50)


def test_eval_on_phantom_dicoms_with_missing_image(tiny_ckpt, tmp_path):
    from elvis_core.phantom.generate import generate

    root = tmp_path / "ph"
    generate(root, n_studies=4, seed=3, size=256)
    aset = read_ms_cxr_csv(root / "ms_cxr.csv")
    assert aset.phrases and all(p.path.endswith(".dcm") for p in aset.phrases)
    victim = root / aset.phrases[0].path
    victim.unlink()
    n_victim = sum(1 for p in aset.phrases if p.path == aset.phrases[0].path)
    res = evaluate(GroundingEngine(tiny_ckpt, device="cpu"), aset, root)
    assert res.n_missing_phrases == n_victim and res.n_evaluated == len(aset.phrases) - n_victim
    assert all(0.0 <= r["miou"] <= 1.0 and isinstance(r["pointing"], bool) for r in res.rows)


def test_cli_ground_on_real_dicom(tiny_ckpt, tmp_path, capsys):
    from pydicom.data import get_testdata_file

    dcm = get_testdata_file("MR_small.dcm")
    out = tmp_path / "mr.png"
    assert main(["ground", "--checkpoint", str(tiny_ckpt), dcm, "opacity", "--out", str(out), "--npy"]) == 0
    assert cv2.imread(str(out)) is not None
    assert np.load(tmp_path / "mr.npy").shape == (64, 64)
    import pydicom

    ds = pydicom.dcmread(dcm, stop_before_pixels=True)
    cap = capsys.readouterr()
    for ident in (str(ds.PatientName), str(ds.PatientID)):
        assert ident and ident not in cap.out and ident not in cap.err


def test_in_memory_resnet_model_hash():
    # ResNet BatchNorm layers hold 0-d num_batches_tracked tensors; the in-memory hash must cope
    import torch

    from elvis_core.model import build_model, preset

    torch.manual_seed(0)
    m = build_model(preset("tiny"), texts=["opacity"])
    h = GroundingEngine(m, device="cpu").checkpoint_hash
    assert len(h) == 12 and h == GroundingEngine(m, device="cpu").checkpoint_hash


def test_cli_eval_side_checks(tiny_ckpt, tmp_path, capsys):
    """--side-checks prints laterality and negation lines and puts them in the JSON."""
    import json

    from elvis_core.phantom.generate import generate

    root = tmp_path / "ph"
    generate(root, n_studies=10, seed=8, size=128)
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(tiny_ckpt), "--annotations", str(root / "ms_cxr.csv"), "--images",
                 str(root), "--side-checks", "--json", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "laterality: peak on the named side for" in text and "negation: median Pearson r" in text
    doc = json.loads(out.read_text())
    sc = doc["side_checks"]
    assert sc["n_one_sided"] == len(sc["rows"]) > 0 and 0.0 <= sc["laterality"] <= 1.0
