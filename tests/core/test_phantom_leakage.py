"""No shortcut: text, file names, identifiers and ordering must not tell where a box is beyond the phrase's own
side / zone / size words. A model that sees everything but the image (report bag-of-words, phrase words, path and
UID / date / accession digits, CSV order, image width) is compared with a baseline that knows only the category and those hint words."""

from __future__ import annotations

import csv
import re
from collections import defaultdict

import numpy as np
import pydicom
import pytest

from elvis_core.phantom import generate

HINT_WORDS = {
    # side
    "right", "left", "bilateral", "bilaterally", "right-sided", "left-sided",
    # zone
    "apical", "apex", "upper", "mid", "middle", "lower", "basilar", "base", "retrocardiac", "behind", "perihilar",
    "hilar", "lingula", "lingular", "costophrenic",
    # size / severity
    "small", "trace", "tiny", "minimal", "minor", "moderate", "moderate-sized", "large", "extensive", "mild", "severe",
    "marked", "mildly", "moderately", "markedly",
}


def _words(text: str):
    return re.findall(r"[a-z][a-z\-]*", text.lower())


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("leak") / "ph"
    generate(out, 320, seed=5, size=64)
    with open(out / "ms_cxr.csv", newline="", encoding="utf-8") as fh:
        rs = list(csv.DictReader(fh))
    reports, uids, rank = {}, {}, defaultdict(int)
    for i, r in enumerate(rs):
        p = out / r["path"]
        key = str(p.parent)
        if key not in reports:
            reports[key] = (p.parent.parent / (p.parent.name + ".txt")).read_text(encoding="utf-8")
            ds = pydicom.dcmread(p, stop_before_pixels=True,
                                 specific_tags=["SOPInstanceUID", "StudyInstanceUID", "StudyDate", "AccessionNumber"])
            uids[key] = (str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.StudyDate), str(ds.AccessionNumber))
        r["report"] = reports[key]
        r["uids"] = uids[key]
        r["rank_in_study"] = rank[key]
        rank[key] += 1
        r["row_index"] = i
        x, y, w, h = (float(r[k]) for k in "xywh")
        r["target"] = ((x + w / 2) / float(r["image_width"]), (y + h / 2) / float(r["image_height"]))
        r["patient"] = r["path"].split("/")[2]
    return rs


def _hint_key(r):
    return r["category_name"], tuple(sorted(set(_words(r["label_text"])) & HINT_WORDS))


def _baseline(train, test):
    """Mean target per (category, hint words); falls back to the category mean, then the global mean."""
    by_key, by_cat = defaultdict(list), defaultdict(list)
    for r in train:
        by_key[_hint_key(r)].append(r["target"])
        by_cat[r["category_name"]].append(r["target"])
    glob = np.mean([r["target"] for r in train], 0)
    out = []
    for r in test:
        k = _hint_key(r)
        if k in by_key:
            out.append(np.mean(by_key[k], 0))
        elif r["category_name"] in by_cat:
            out.append(np.mean(by_cat[r["category_name"]], 0))
        else:
            out.append(glob)
    return np.array(out)


def _tokens(r, leak: bool):
    toks = [f"lt:{w}" for w in _words(r["label_text"])]
    toks += [f"rep:{w}" for w in set(_words(r["report"]))]
    toks += [f"cat:{r['category_name']}"]
    for i, group in enumerate(r["dicom_id"].split("-")):  # identifier characters
        toks += [f"id{i}:{group[0]}", f"id{i}e:{group[-1]}"]
    parts = r["path"].split("/")
    toks += [f"p{i}:{c}" for i, c in enumerate(parts[2][1:])]  # patient digits
    toks += [f"s{i}:{c}" for i, c in enumerate(parts[3][1:])]  # study digits
    for i, uid in enumerate(r["uids"]):  # DICOM UIDs, study date, accession number: last digits
        toks += [f"u{i}a:{uid[-1]}", f"u{i}b:{uid[-2:]}"]
    toks += [f"row:{r['row_index'] * 10 // 10000}", f"rowmod:{r['row_index'] % 7}", f"split:{r['split']}",
             f"rank:{r['rank_in_study']}", f"width:{int(r['image_width']) // 8}"]
    if leak:  # positive control: a token that does give the position away
        tx, ty = r["target"]
        toks += [f"leak:{int(tx * 4)}{int(ty * 4)}"]
    return toks


def _design(rows, leak):
    """Binary bag-of-tokens matrix (the vocabulary uses no labels, so it is built on all rows)."""
    toks = [_tokens(r, leak) for r in rows]
    vocab = {}
    for ts in toks:
        for t in ts:
            vocab.setdefault(t, len(vocab))
    X = np.zeros((len(rows), len(vocab)))
    for i, ts in enumerate(toks):
        X[i, [vocab[t] for t in ts]] = 1.0
    return X


def _cv(rows, leak):
    """5-fold cross-validation grouped by patient. Returns MSE of: the training mean, the hint-word baseline, and
    the baseline plus a kernel ridge on all tokens (its regularisation picked on the test folds: optimistic)."""
    X = _design(rows, leak)
    Y = np.array([r["target"] for r in rows])
    patients = sorted({r["patient"] for r in rows})
    rng = np.random.default_rng(0)
    fold_of = {p: int(f) for p, f in zip(patients, rng.permutation(len(patients)) % 5)}
    folds = np.array([fold_of[r["patient"]] for r in rows])
    lams = (0.3, 1.0, 3.0, 10.0, 30.0)
    err_base = err_const = 0.0
    err_full = {lam: 0.0 for lam in lams}
    for k in range(5):
        tr, te = np.nonzero(folds != k)[0], np.nonzero(folds == k)[0]
        train, test = [rows[i] for i in tr], [rows[i] for i in te]
        b_te, b_tr = _baseline(train, test), _baseline(train, train)
        err_base += ((b_te - Y[te]) ** 2).sum()
        err_const += ((Y[tr].mean(0) - Y[te]) ** 2).sum()
        K = X[tr] @ X[tr].T
        evals, evecs = np.linalg.eigh(K)
        proj = evecs.T @ (Y[tr] - b_tr)
        Kte = X[te] @ X[tr].T
        for lam in lams:
            alpha = evecs @ (proj / (evals + lam)[:, None])
            err_full[lam] += ((b_te + Kte @ alpha - Y[te]) ** 2).sum()
    n = len(rows)
    return err_const / n, err_base / n, min(err_full.values()) / n


def test_text_ids_and_order_do_not_leak_box_positions(rows):
    assert len(rows) > 300
    const, base, full = _cv(rows, leak=False)
    # the hint words carry real information (the test has power) ...
    assert base < 0.7 * const, (const, base)
    # ... and everything else the text side can see adds nothing beyond them
    assert full > 0.97 * base, (base, full)
    print(f"box-centre MSE: training mean {const:.5f}, hint words {base:.5f}, everything but the image {full:.5f}")


def test_leak_detector_catches_a_planted_leak(rows):
    _const, base, full = _cv(rows, leak=True)
    assert full < 0.8 * base, (base, full)


