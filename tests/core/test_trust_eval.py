"""Text prior, paired-bootstrap margins, presence AUC, word following, per-zone pointing and `elvis eval --twins`."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from elvis_core.grounding.text_prior import TextPrior, phrase_zone
from elvis_core.grounding.trust_eval import auc, bootstrap_margin
from elvis_core.grounding.word_following import (followed, map_peak_xy, phrase_band, summarize, swap_side, swap_zone,
                                                 word_following)

COLS = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height", "split"]


def _csv(path, rows):
    with open(path, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=COLS)
        wr.writeheader()
        for i, (cat, text, box, split) in enumerate(rows):
            wr.writerow({"dicom_id": f"d{i}", "category_name": cat, "label_text": text, "path": f"p{i}.dcm",
                         "x": box[0], "y": box[1], "w": box[2], "h": box[3], "image_width": 100,
                         "image_height": 200, "split": split})


def test_swaps():
    assert swap_side("Small left pleural effusion") == "Small right pleural effusion"
    assert swap_side("bilateral pleural effusions") is None and swap_side("left retrocardiac opacity") is None
    assert swap_zone("right upper lobe opacity") == ("right lower lobe opacity", "lower")
    assert swap_zone("opacity at the left base") == ("opacity at the left apex", "upper")
    assert swap_zone("Right apical pneumothorax") == ("Right basilar pneumothorax", "lower")
    assert swap_zone("patchy opacity") is None
    assert phrase_band("left mid zone opacity") == "middle"
    assert [phrase_zone(t) for t in ("left retrocardiac opacity", "right perihilar edema", "right apical x",
                                     "blunting of the left costophrenic angle", "opacity")] == \
        ["retrocardiac", "perihilar", "apical", "basal", None]


def test_followed_verdicts():
    boxes = [(10, 50, 20, 20)]  # a finding on the image's left = patient's right
    # peak still on the finding, no presence: failure; presence below threshold: success
    assert not followed((15, 55), None, None, "side", "left", boxes, 50, (20, 180))
    assert followed((15, 55), 0.2, 0.5, "side", "left", boxes, 50, (20, 180))
    assert not followed((15, 55), 0.8, 0.5, "side", "left", boxes, 50, (20, 180))
    # peak moved to the patient's left (image right) of the midline
    assert followed((80, 55), None, None, "side", "left", boxes, 50, (20, 180))
    assert not followed((40, 120), None, None, "side", "left", boxes, 50, (20, 180))
    # zone: the named band of the lung
    assert followed((15, 160), None, None, "zone", "lower", boxes, 50, (20, 180))
    assert not followed((15, 100), None, None, "zone", "lower", boxes, 50, (20, 180))


def test_word_following_with_a_map_that_follows_the_words():
    """A fake model whose map peaks where the phrase's words say: every swap is followed; a model that always
    peaks on the lesion follows none."""
    g2i = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 1]])  # 10 x 20 grid cells of 10 px over 100 x 200

    def fake_map(row, col):
        raw = np.zeros((20, 10), np.float32)
        raw[row, col] = 1.0
        return SimpleNamespace(raw_similarity=raw, similarity=raw, grid_to_image=g2i, image_shape=(200, 100))

    def wordy(text):
        t = text.lower()
        col = 7 if "left" in t else 2
        row = 15 if ("lower" in t or "bas" in t) else 4
        return fake_map(row, col)

    boxes = [(10, 30, 30, 30)]  # right upper: image left, top
    assert map_peak_xy(wordy("right upper lobe opacity")) == (25.0, 45.0)
    recs = word_following(wordy, "right upper lobe opacity", boxes, 50, (20, 180))
    assert [r["kind"] for r in recs] == ["side", "zone"] and all(r["followed"] for r in recs)
    stubborn = word_following(lambda t: fake_map(4, 2), "right upper lobe opacity", boxes, 50, (20, 180))
    assert not any(r["followed"] for r in stubborn)
    s = summarize(recs + stubborn)
    assert s["side"] == 0.5 and s["zone"] == 0.5 and s["n_side"] == 2


def test_text_prior_means_boxes_by_key(tmp_path):
    p = tmp_path / "train.csv"
    _csv(p, [("Lung Opacity", "right upper lobe opacity", (10, 20, 20, 20), "train"),
             ("Lung Opacity", "opacity in the right upper zone", (20, 40, 20, 20), "train"),
             ("Lung Opacity", "left lower lobe opacity", (60, 140, 20, 20), "train"),
             ("Lung Opacity", "right upper lobe opacity", (90, 190, 5, 5), "test")])  # not training: ignored
    prior = TextPrior.from_csv(str(p))
    boxes, key = prior.boxes_for("small right upper lobe opacity", "Lung Opacity")
    assert key == ("Lung Opacity", "right", "upper")
    assert np.allclose(boxes[0], (0.15, 0.15, 0.2, 0.1))
    # no training phrase with that zone: the category + side mean; unknown category: all phrases
    assert prior.boxes_for("right mid lung opacity", "Lung Opacity")[1] == ("Lung Opacity", "right")
    assert prior.boxes_for("cardiomegaly", "Cardiomegaly")[1] == ()
    m = prior.map_for("right upper lobe opacity", "Lung Opacity", (200, 100))
    iy, ix = np.unravel_index(np.argmax(m), m.shape)
    assert abs(ix - 25) <= 1 and abs(iy - 40) <= 1  # the mean box centre
    assert m[0, 99] == 0 and m[35, 20] > 0


def test_auc_and_bootstrap_margin():
    assert auc([3, 4, 5], [0, 1, 2]) == 1.0 and auc([0, 1], [2, 3]) == 0.0 and auc([1, 1], [1, 1]) == 0.5
    assert np.isnan(auc([], [1.0]))
    rows = [{"path": f"i{k // 2}", "category": "A" if k % 2 else "B", "pointing": True, "prior_pointing": False}
            for k in range(40)]
    d = bootstrap_margin(rows, "pointing", "prior_pointing", n_boot=200)
    assert d["margin"] == 1.0 and d["lo"] == 1.0 and d["hi"] == 1.0 and d["n"] == 40
    rng = np.random.default_rng(0)
    same = [{"path": f"i{k}", "category": "A", "pointing": bool(v), "prior_pointing": bool(v)}
            for k, v in enumerate(rng.random(50) < 0.5)]
    d = bootstrap_margin(same, "pointing", "prior_pointing", n_boot=200)
    assert d["margin"] == 0.0 and d["lo"] == 0.0 and d["hi"] == 0.0
    noisy = [{"path": f"i{k}", "category": "A", "pointing": bool(a), "prior_pointing": bool(b)}
             for k, (a, b) in enumerate(zip(rng.random(80) < 0.6, rng.random(80) < 0.5))]
    d = bootstrap_margin(noisy, "pointing", "prior_pointing", n_boot=500)
    assert d["lo"] < d["margin"] < d["hi"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from elvis_core.phantom import generate

    root = tmp_path_factory.mktemp("ph")
    generate(root / "train", 30, seed=5, size=256, splits=(100, 0, 0))
    generate(root / "val", 8, seed=6, size=256, splits=(0, 100, 0), twins=True)
    return root


def test_eval_cli_reports_prior_twins_words_zones(phantom, tmp_path, capsys):
    from elvis_core.cli import main
    from elvis_core.resources import demo_model as demo_model_dir

    out = tmp_path / "e.json"
    rc = main(["eval", "--checkpoint", str(demo_model_dir()), "--annotations", str(phantom / "val" / "ms_cxr.csv"),
               "--images", str(phantom / "val"), "--prior-annotations", str(phantom / "train" / "ms_cxr.csv"),
               "--twins", str(phantom / "val" / "twins"), "--word-following", "--no-progress", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    for needle in ("text prior (no image)", "margin over the text prior, pointing", "pointing on twins",
                   "presence AUC present vs twin", "word following: side swapped", "per-zone pointing"):
        assert needle in text, needle
    doc = json.loads(out.read_text())
    t = doc["trust"]
    assert 0 <= t["margin"]["pointing"]["model"] <= 1 and t["margin"]["pointing"]["lo"] <= t["margin"]["pointing"]["hi"]
    assert t["n_twins"] == doc["n_evaluated"] and 0 <= t["twin_pointing"] <= 1 and 0 <= t["presence_auc"] <= 1
    rows = doc["phrases"]
    assert all("twin_peak" in r and "prior_pointing" in r and "zone" in r for r in rows)
    assert any(r["word_following"] for r in rows)
    # the peak on the film with the finding is, on average, above the peak on its finding-free twin
    assert np.mean([r["peak"] for r in rows]) > np.mean([r["twin_peak"] for r in rows])


def test_eval_cli_bad_twins_folder_is_one_line(phantom, capsys):
    from elvis_core.cli import main
    from elvis_core.resources import demo_model as demo_model_dir

    rc = main(["eval", "--checkpoint", str(demo_model_dir()), "--annotations", str(phantom / "val" / "ms_cxr.csv"),
               "--images", str(phantom / "val"), "--twins", str(phantom / "nowhere"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "twins folder not found" in err and len(err.strip().splitlines()) == 1
