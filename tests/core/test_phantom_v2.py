"""Phantom generator v2: nodules/masses, support devices, two findings of a kind, unlocated phrases, heart-silhouette
cardiomegaly boxes, visible retrocardiac opacities, finding-free twins on disk; v1 stays reproducible by seed."""

from __future__ import annotations

import filecmp
import hashlib
import os
import re

import numpy as np
import pytest

from elvis_core.errors import ElvisError
from elvis_core.phantom import CATEGORIES, CATEGORIES_V2, generate, render_study

SIZE = 256


@pytest.fixture(scope="module")
def studies():
    return [render_study(500 + i, size=SIZE) for i in range(80)]


def test_v1_is_still_the_original_generator():
    """The v1 stream is untouched by v2: seed 7 gives the report and box it gave before v2 existed."""
    st = render_study(7, size=128, version=1)
    assert hashlib.sha256(st.report.encode()).hexdigest()[:16] == "1b50336887e91f97"
    assert [f.boxes for f in st.findings] == [[(21, 70, 11, 10)]]
    assert st.version == 1 and not st.devices
    v1 = [render_study(100 + i, size=128, version=1) for i in range(30)]
    assert {f.category for s in v1 for f in s.findings} <= set(CATEGORIES)
    with pytest.raises(ElvisError, match="version"):
        render_study(1, size=128, version=3)


def test_v2_is_deterministic_and_differs_from_v1():
    a, b = render_study(21, size=SIZE), render_study(21, size=SIZE)
    assert a.version == 2 and np.array_equal(a.image, b.image) and np.array_equal(a.clean, b.clean)
    assert a.report == b.report and [f.boxes for f in a.findings] == [f.boxes for f in b.findings]
    assert not np.array_equal(a.image, render_study(21, size=SIZE, version=1).image)


def test_v2_content_mix(studies):
    cats = [f.category for s in studies for f in s.findings]
    assert {"Nodule", "Mass"} <= set(cats) and set(cats) <= set(CATEGORIES_V2)
    # two findings of one category on one film: different places, different phrases that name them
    pairs = [(s, c) for s in studies for c in set(f.category for f in s.findings)
             if sum(f.category == c for f in s.findings) == 2]
    assert pairs
    for s, c in pairs:
        f1, f2 = [f for f in s.findings if f.category == c]
        assert (f1.side, f1.zone) != (f2.side, f2.zone) and f1.label_text != f2.label_text
        assert f1.located and f2.located
    # unlocated phrases name neither side nor zone, and only when the film has one finding of that kind
    unloc = [(s, f) for s in studies for f in s.findings if not f.located]
    assert unloc
    for s, f in unloc:
        assert not re.search(r"\b(left|right|upper|lower|mid|apical|apex|basilar|base|perihilar|lingul)",
                             f.label_text.lower()), f.label_text
        assert sum(g.category == f.category for g in s.findings) == 1
    # devices: named in the report with their sentences, never given a box
    with_dev = [s for s in studies if s.devices]
    assert with_dev
    for s in with_dev:
        for sentence in s.devices:
            assert sentence.split()[0].rstrip(",") in s.report.replace("\n ", " ")


def test_twin_differs_only_where_the_findings_are(studies):
    n = 0
    for s in studies:
        mask = np.ones(s.image.shape, bool)
        for f in s.findings:
            for (x, y, w, h) in f.boxes:
                mask[max(0, y - 10):y + h + 10, max(0, x - 10):x + w + 10] = False
        diff = np.abs(s.image - s.clean)
        if s.findings and s.findings[0].category != "Cardiomegaly":  # a bigger heart also moves its blurred rim
            assert diff[mask].mean() < 0.004
        if not s.findings:
            assert np.array_equal(s.image, s.clean)  # same patient, exposure, noise and devices
        for f in s.findings:
            if f.category in ("Pneumothorax",):
                continue
            for (x, y, w, h) in f.boxes:
                n += 1
                assert (s.image - s.clean)[y:y + h, x:x + w].mean() > 0.003, (f.category, f.zone)
    assert n > 50


def test_cardiomegaly_is_boxed_on_the_heart():
    for i in range(8):
        s = render_study(900 + i, size=SIZE, n_findings=1, categories=["Cardiomegaly"])
        (f,) = s.findings
        (x, y, w, h) = f.boxes[0]
        heart = s.anatomy_boxes["cardiac silhouette"]
        lung = s.anatomy_boxes["right lung"]
        # the enlarged heart contains the normal one and is not the clavicle-to-diaphragm change of v1
        assert x <= heart[0] + 2 and x + w >= heart[0] + heart[2] - 2
        assert y > lung[1] + 0.3 * lung[3] and h < 0.6 * lung[3]
        v1 = render_study(900 + i, size=SIZE, n_findings=1, categories=["Cardiomegaly"], version=1)
        assert h < v1.findings[0].boxes[0][3]


def test_retrocardiac_opacity_is_visible_behind_the_heart():
    n = 0
    for i in range(40):
        s = render_study(1200 + i, size=SIZE, n_findings=1, categories=["Atelectasis", "Pneumonia", "Consolidation"])
        for f in s.findings:
            if f.zone != "retrocardiac":
                continue
            n += 1
            (x, y, w, h) = f.boxes[0]
            heart = s.anatomy_boxes["cardiac silhouette"]
            assert x + w / 2 > s.midline_x  # patient's left = image right
            assert heart[0] < x + w / 2 < heart[0] + heart[2] and heart[1] < y + h / 2 < heart[1] + heart[3] + 10
            assert (s.image - s.clean)[y:y + h, x:x + w].mean() > 0.01
            if f.located:
                assert "retrocardiac" in f.label_text.lower() or "behind the heart" in f.label_text.lower()
    assert n >= 3


def test_generate_writes_twins_deterministically(tmp_path):
    import pydicom

    from elvis_core.io.dicom import read_radiograph

    out, again = tmp_path / "a", tmp_path / "b"
    summary = generate(out, 6, seed=3, size=128, twins=True)
    generate(again, 6, seed=3, size=128, twins=True, workers=2)
    assert summary.version == 2 and summary.n_twins == 6 and any("twins" in ln for ln in summary.lines())
    files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _s, fs in os.walk(out) for f in fs)
    twins = [f for f in files if f.startswith("twins" + os.sep)]
    images = [f for f in files if f.endswith(".dcm") and not f.startswith("twins")]
    assert len(twins) == len(images) == 6
    for f in files:
        assert filecmp.cmp(out / f, again / f, shallow=False), f
    for rel in images:
        a, t = pydicom.dcmread(out / rel), pydicom.dcmread(out / "twins" / rel)
        assert a.PatientID == t.PatientID and a.SOPInstanceUID != t.SOPInstanceUID
        assert read_radiograph(out / rel).shape == read_radiograph(out / "twins" / rel).shape
    v1 = generate(tmp_path / "v1", 3, seed=3, size=128, version=1)
    assert v1.version == 1 and not (tmp_path / "v1" / "twins").exists()


def test_cli_generator_version_and_twins(tmp_path, capsys):
    from elvis_core.cli import main

    assert main(["phantom", "--out", str(tmp_path / "p"), "--studies", "2", "--seed", "1", "--size", "256",
                 "--twins", "--no-progress"]) == 0
    assert "generator version 2; 2 finding-free twins under twins/" in capsys.readouterr().out
    assert (tmp_path / "p" / "twins" / "files").is_dir()
    with pytest.raises(SystemExit):
        main(["phantom", "--out", str(tmp_path / "q"), "--studies", "1", "--seed", "1", "--size", "256",
              "--generator-version", "3", "--no-progress"])
    assert "--generator-version" in capsys.readouterr().err
