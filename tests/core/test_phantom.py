"""Phantom studies: content (boxes on what was drawn, laterality, phrases verbatim), layout, determinism, DICOM
read-back through the project's reader, and no leakage of box positions through text, file names or ordering."""

from __future__ import annotations

import csv
import filecmp
import os
import re

import numpy as np
import pydicom
import pytest

from elvis_core.errors import ElvisError
from elvis_core.phantom import CATEGORIES, CATEGORIES_V2, CSV_COLUMNS, generate, parse_splits, render_study
from elvis_core.phantom.anatomy import sample_anatomy
from elvis_core.phantom.generate import _seq

SIZE = 256


def _box_mean(img, box):
    x, y, w, h = box
    return float(img[y:y + h, x:x + w].mean())


@pytest.fixture(scope="module")
def forced_studies():
    """Every category several times (3 findings per study), rendered in memory at 256 px."""
    out = []
    for i in range(24):
        cats = [CATEGORIES[(i + k) % 8] for k in range(3)]
        out.append(render_study(1000 + i, size=SIZE, n_findings=3, categories=cats))
    return out


def test_render_study_shapes_and_report(forced_studies):
    seen = set()
    for st in forced_studies:
        assert st.image.dtype == np.float32 and st.clean.dtype == np.float32
        assert st.image.shape == st.clean.shape == (SIZE, st.width)
        assert 0.8 * SIZE <= st.width <= SIZE
        assert st.image.min() >= 0 and st.image.max() <= 1
        assert 1 <= len(st.findings) <= 3
        for f in st.findings:
            seen.add(f.category)
            assert f.label_text and f.label_text in st.report, f.label_text
            for (x, y, w, h) in f.boxes:
                assert 0 <= x and 0 <= y and w > 1 and h > 1
                assert x + w <= st.width and y + h <= st.height
        for line in st.report.splitlines():
            assert len(line) <= 79, line
        for header in ("EXAMINATION:", "INDICATION:", "COMPARISON:", "FINDINGS:", "IMPRESSION:"):
            assert header in st.report
    assert seen == set(CATEGORIES)


def test_report_mentions_findings_twice_and_never_negates_them(forced_studies):
    from elvis_core.io.report_parse import parse_report
    from elvis_core.phantom.reports import _HEDGED, _NEG

    hedges = 0
    for st in forced_studies:
        rep = parse_report(st.report)
        findings_sec, impression_sec = rep.section("FINDINGS"), rep.section("IMPRESSION")
        assert findings_sec is not None and impression_sec is not None
        f_text = st.report[findings_sec.start:findings_sec.end]
        i_text = st.report[impression_sec.start:impression_sec.end]
        for f in st.findings:
            assert len(f.mentions) == 2 and f.label_text in f.mentions
            assert rep.find(f.mentions[0], findings_sec.start) is not None and f.mentions[0] in f_text
            assert f.mentions[1] in i_text
            for neg in _NEG.get(f.category, []):
                assert neg not in st.report, (f.category, neg)
            if f.category == "Pneumonia":
                assert "No focal consolidation" not in st.report
            if f.category in ("Consolidation", "Pleural Effusion", "Pneumothorax"):
                assert "No focal consolidation, pleural effusion, or pneumothorax." not in st.report
            if f.category != "Cardiomegaly":
                assert "lungs are clear" not in st.report.lower() and "and clear." not in st.report
        stems = [h.replace("{p}", "").replace("{P}", "").strip(" .,") for h in _HEDGED]
        hedges += any(stem and stem in st.report for stem in stems)
    assert hedges >= 1
    normal = render_study(3, size=SIZE, n_findings=0)
    assert not normal.findings and "IMPRESSION:" in normal.report


def test_boxes_lie_on_the_drawn_finding(forced_studies):
    """Inside each box the image differs from the finding-free rendering of the same patient and noise."""
    def overlaps(a, b):
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]

    n_signed = 0
    for st in forced_studies:
        for f, layer in zip(st.findings, st.layers):
            others = [b for g in st.findings if g is not f for b in g.boxes]
            sy, sx = layer.shape[0] / st.height, layer.shape[1] / st.width
            inside = np.zeros(layer.shape, bool)
            for (x, y, w, h) in f.boxes:
                inside[int(y * sy):int(np.ceil((y + h) * sy)), int(x * sx):int(np.ceil((x + w) * sx))] = True
            # most of the finding's own drawn change lies inside its boxes
            assert np.abs(layer)[inside].sum() > 0.5 * np.abs(layer).sum(), f
            for box in f.boxes:
                if any(overlaps(box, o) for o in others):
                    continue  # another finding may add or cancel here; the image check needs a clean box
                diff = _box_mean(st.image, box) - _box_mean(st.clean, box)
                n_signed += 1
                if f.category == "Pneumothorax":
                    assert diff < -0.005, (f, diff)  # air without lung markings: darker
                else:
                    assert diff > 0.004, (f, diff)  # opacities, fluid, a bigger heart: brighter
    assert n_signed >= 20
    # and outside all boxes the two renderings are nearly identical
    st = forced_studies[0]
    mask = np.ones(st.image.shape, bool)
    for f in st.findings:
        for (x, y, w, h) in f.boxes:
            mask[max(0, y - 8):y + h + 8, max(0, x - 8):x + w + 8] = False
    assert np.abs(st.image - st.clean)[mask].mean() < 0.005


def test_laterality_patient_left_is_image_right(forced_studies):
    n_checked = 0
    for st in forced_studies:
        mid = st.midline_x
        for f, layer in zip(st.findings, st.layers):
            text = f.label_text.lower()
            # where the drawn change is (centre of mass of the layer), in output pixels
            wgt = np.abs(layer)
            com_x = float((wgt.sum(0) * (np.arange(layer.shape[1]) + 0.5)).sum() / wgt.sum()) * st.width / layer.shape[1]
            if f.side in ("right", "left"):
                n_checked += 1
                assert len(f.boxes) == 1
                x, y, w, h = f.boxes[0]
                if f.side == "right":
                    assert x + w / 2 < mid and com_x < mid
                    assert "right" in text or not f.located  # v2: "patchy opacity" names no side
                else:
                    assert x + w / 2 > mid and com_x > mid
                    assert not f.located or "left" in text or "retrocardiac" in text or "behind the heart" in text or "lingul" in text
                assert not ("right" in text and "left" in text)
            elif f.side == "bilateral":
                assert len(f.boxes) == 2
                centres = sorted(x + w / 2 for (x, y, w, h) in f.boxes)
                assert centres[0] < mid < centres[1]
                assert "right" not in text and "left" not in text
    assert n_checked >= 20


def test_anatomy_varies_per_patient():
    a = [sample_anatomy(np.random.default_rng(s)) for s in range(20)]
    for field in ("cx", "thorax_hw", "apex_y", "dome_y_right", "ctr", "aspect"):
        vals = np.array([getattr(x, field) for x in a])
        assert vals.std() > 0.005, field
    # the same kind of finding lands at different places in different patients
    centres = []
    for seed in range(12):
        st = render_study(300 + seed, size=SIZE, n_findings=1, categories=["Pneumonia"])
        x, y, w, h = st.findings[0].boxes[0]
        side = st.findings[0].side
        centres.append(((x + w / 2) / st.width if side == "right" else 1 - (x + w / 2) / st.width, (y + h / 2) / SIZE,
                        st.findings[0].zone))
    for zone in {c[2] for c in centres}:
        same = np.array([c[:2] for c in centres if c[2] == zone])
        if len(same) >= 3:
            assert same.std(0).max() > 0.01, zone
    # same seed -> same study
    s1, s2 = render_study(7, size=SIZE), render_study(7, size=SIZE)
    assert np.array_equal(s1.image, s2.image) and s1.report == s2.report


def test_bad_arguments_raise_elvis_errors(tmp_path):
    with pytest.raises(ElvisError, match="size"):
        render_study(1, size=10)
    with pytest.raises(ElvisError, match="unknown finding category"):
        render_study(1, size=SIZE, n_findings=1, categories=["Fracture"])
    with pytest.raises(ElvisError, match="splits"):
        parse_splits("70/abc/15")
    with pytest.raises(ElvisError, match="splits"):
        parse_splits("70/30")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ElvisError, match="not empty") as err:
        generate(tmp_path / "full", 2, seed=1, size=SIZE)
    assert "full" in str(err.value)


# ------------------------------------------------------------------------------------------------------ on disk
def test_side_negatives_deny_only_the_other_side(forced_studies):
    """"No left pneumothorax." appears beside a right pneumothorax, never beside a left one; "The left lung is
    clear." never when the left lung holds a lung finding."""
    from elvis_core.phantom.reports import _NEG_SIDE

    denied_other = 0
    for st in forced_studies + [render_study(2000 + i, size=SIZE, n_findings=2) for i in range(40)]:
        low = st.report.lower().replace("\n", " ")
        for f in st.findings:
            if f.side not in ("right", "left") or f.category not in _NEG_SIDE:
                continue
            other = "left" if f.side == "right" else "right"
            for tpl in _NEG_SIDE[f.category]:
                assert tpl.format(o=f.side).lower() not in low, (f.category, f.side, st.report)
                denied_other += tpl.format(o=other).lower() in low
        for side in ("right", "left"):
            if any(f.side in (side, "bilateral") and f.category != "Cardiomegaly" for f in st.findings):
                assert f"the {side} lung is clear" not in low
    assert denied_other >= 5


def test_anatomy_boxes_follow_the_drawn_anatomy(forced_studies):
    from elvis_core.phantom.anatomy_boxes import ANATOMY_REGIONS

    for st in forced_studies[:8]:
        b = st.anatomy_boxes
        assert set(b) == set(ANATOMY_REGIONS)
        for name, (x, y, w, h) in b.items():
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= st.width and y + h <= st.height, name
        cx = lambda k: b[k][0] + b[k][2] / 2  # noqa: E731
        cy = lambda k: b[k][1] + b[k][3] / 2  # noqa: E731
        # the patient's right lung is on the image's left; the heart sits low, bulging to the image right
        assert cx("right lung") < st.midline_x < cx("left lung")
        for side in ("right", "left"):
            assert cy(f"{side} upper lung zone") < cy(f"{side} mid lung zone") < cy(f"{side} lower lung zone")
            assert b[f"{side} apical zone"][1] == b[f"{side} lung"][1]
            lx, ly, lw, lh = b[f"{side} lung"]
            for zone in ("upper lung zone", "mid lung zone", "lower lung zone", "costophrenic angle"):
                zx, zy, zw, zh = b[f"{side} {zone}"]
                assert lx <= zx and zx + zw <= lx + lw + 1 and ly <= zy and zy + zh <= ly + lh + 1, zone
        assert cy("cardiac silhouette") > cy("mediastinum")
        assert b["cardiac silhouette"][0] < st.midline_x < b["cardiac silhouette"][0] + b["cardiac silhouette"][2]
        # a pneumothorax / effusion box overlaps its named side's apical zone / costophrenic angle region
        for f in st.findings:
            if f.category == "Pneumothorax":
                ax, ay, aw, ah = b[f"{f.side} lung"]
                for (x, y, w, h) in f.boxes:
                    assert ax - 2 <= x + w / 2 <= ax + aw + 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "a"
    summary = generate(out, 24, seed=11, size=SIZE)
    with open(out / "ms_cxr.csv", newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    with open(out / "ms_cxr.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return out, summary, header, rows


def _all_files(root):
    out = []
    for dirpath, _d, files in os.walk(root):
        for f in files:
            out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


def test_determinism_identical_bytes(dataset, tmp_path):
    out, _s, _h, _r = dataset
    again = tmp_path / "b"
    generate(again, 24, seed=11, size=SIZE, workers=2)  # also: output does not depend on the worker count
    files_a, files_b = _all_files(out), _all_files(again)
    assert files_a == files_b and len(files_a) == 24 * 2 + 2  # + ms_cxr.csv, anatomy.csv
    for f in files_a:
        assert filecmp.cmp(out / f, again / f, shallow=False), f
    other = tmp_path / "c"
    generate(other, 3, seed=12, size=SIZE)
    assert not {f for f in _all_files(other) if f.startswith("files")} & set(files_a)


def test_layout_and_csv(dataset):
    out, summary, header, rows = dataset
    from elvis_core.phantom.anatomy_boxes import ANATOMY_REGIONS
    from elvis_core.phantom.generate import ANATOMY_CSV_COLUMNS

    with open(out / "anatomy.csv", newline="", encoding="utf-8") as fh:
        arows = list(csv.DictReader(fh))
    assert tuple(arows[0].keys()) == ANATOMY_CSV_COLUMNS
    assert len(arows) == summary.n_images * len(ANATOMY_REGIONS)
    assert {r["path"] for r in arows} >= {r["path"] for r in rows}
    for r in arows:
        assert 0 <= int(r["x"]) and int(r["x"]) + int(r["w"]) <= int(r["image_width"])
    assert tuple(header) == CSV_COLUMNS
    assert summary.n_studies == 24 and summary.n_boxes == len(rows)
    dcms = [f for f in _all_files(out) if f.endswith(".dcm")]
    assert len(dcms) == 24
    for f in dcms:
        m = re.fullmatch(r"files/p(\d\d)/p(\d{8})/s(\d{8})/([0-9a-f]{8}(-[0-9a-f]{8}){4})\.dcm", f.replace(os.sep, "/"))
        assert m and m.group(2).startswith(m.group(1)), f
        report = out / "files" / f"p{m.group(1)}" / f"p{m.group(2)}" / f"s{m.group(3)}.txt"
        assert report.is_file()
    split_of_patient = {}
    for r in rows:
        path = out / r["path"]
        assert path.is_file() and r["path"].endswith(r["dicom_id"] + ".dcm")
        report = (path.parent.parent / (path.parent.name + ".txt")).read_text(encoding="utf-8")
        assert r["label_text"] in report
        assert r["category_name"] in CATEGORIES_V2
        x, y, w, h = (int(r[k]) for k in "xywh")
        iw, ih = int(r["image_width"]), int(r["image_height"])
        assert 0 <= x and 0 <= y and x + w <= iw and y + h <= ih
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (ds.Rows, ds.Columns) == (ih, iw)
        patient = r["path"].split("/")[2]
        assert split_of_patient.setdefault(patient, r["split"]) == r["split"]
        assert r["split"] in ("train", "val", "test")
    # the project's MS-CXR reader takes the CSV without complaint and groups the same phrases
    from elvis_core.io.annotations import read_ms_cxr_csv

    aset = read_ms_cxr_csv(out / "ms_cxr.csv")
    assert aset.version == "v1.1.0" and not aset.errors
    assert len(aset.phrases) == summary.n_phrases == len({(r["path"], r["label_text"]) for r in rows})
    # the project's report parser finds the phrase inside FINDINGS or IMPRESSION
    from elvis_core.io.report_parse import parse_report

    r = rows[0]
    path = out / r["path"]
    rep = parse_report((path.parent.parent / (path.parent.name + ".txt")).read_text(encoding="utf-8"))
    span = rep.find(r["label_text"])
    assert span is not None
    names = {s.name for s in rep.sections if s.start <= span[0] < s.end}
    assert names & {"FINDINGS", "IMPRESSION"}


def test_dicom_variety_and_synthetic_identifiers(dataset):
    out, summary, _h, _r = dataset
    seen = {"pi": set(), "mod": set(), "ts": set(), "bits": set()}
    for f in _all_files(out):
        if not f.endswith(".dcm"):
            continue
        ds = pydicom.dcmread(out / f, stop_before_pixels=True)
        seen["pi"].add(ds.PhotometricInterpretation)
        seen["mod"].add(ds.Modality)
        seen["ts"].add(ds.file_meta.TransferSyntaxUID.name)
        seen["bits"].add(int(ds.BitsStored))
        assert 10 <= ds.BitsStored <= 15
        assert str(ds.PatientName).startswith("PHANTOM^") and ds.PatientID.startswith("PHANTOM")
        assert ds.PatientBirthDate == ""
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert len(ds.ImagerPixelSpacing) == 2 and 0.1 < float(ds.ImagerPixelSpacing[0]) < 2.5
        assert ds.ViewPosition in ("PA", "AP")
        for tag in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
            assert tag in ds
    assert seen["pi"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["mod"] == {"CR", "DX"}
    assert len(seen["ts"]) >= 2 and len(seen["bits"]) >= 2


def test_read_back_through_project_reader(dataset):
    """read_radiograph gives the rendered image back (an increasing affine map of it, to one quantisation step),
    for MONOCHROME1 and 2, every transfer syntax, rescale slope/intercept."""
    from elvis_core.io.dicom import read_radiograph

    out, _s, _h, _r = dataset
    from elvis_core.phantom.generate import _plan

    jobs = _plan(24, 11, SIZE, (70, 15, 15))
    kinds = set()
    for job in jobs:
        st = render_study(_seq(11, 3, job.index), size=SIZE, anatomy=sample_anatomy(_seq(11, 2, job.patient)),
                          with_clean=False)
        rad = read_radiograph(out / job.rel_dcm)
        ds = pydicom.dcmread(out / job.rel_dcm)
        kinds.add((ds.PhotometricInterpretation, ds.file_meta.TransferSyntaxUID.name))
        assert rad.pixels.shape == st.image.shape
        # pydicom's decoded stored values agree with the reader (after rescale and, for MONOCHROME1, inversion)
        modality = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        expect = -modality if ds.PhotometricInterpretation == "MONOCHROME1" else modality
        d = rad.pixels.astype(np.float64) - expect
        assert d.std() < 1e-3
        # and the pixels are the rendered image: fit pixels = a * image + b with a > 0
        A = np.stack([st.image.ravel().astype(np.float64), np.ones(st.image.size)], 1)
        (a, b), *_ = np.linalg.lstsq(A, rad.pixels.ravel().astype(np.float64), rcond=None)
        step = abs(float(ds.RescaleSlope))
        resid = rad.pixels.astype(np.float64) - (a * st.image + b)
        assert a > 0 and np.abs(resid).max() <= 1.01 * step, (job.rel_dcm, np.abs(resid).max(), step)
        assert rad.pixel_spacing is not None
        # the SimpleITK decoder path gives the same pixels (SimpleITK inverts MONOCHROME1 itself)
        sitk = read_radiograph(out / job.rel_dcm, decoder="SimpleITK")
        assert np.array_equal(sitk.pixels, rad.pixels)
    assert {k[0] for k in kinds} == {"MONOCHROME1", "MONOCHROME2"}


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_writes_studies_and_a_contact_sheet(tmp_path, capsys):
    from elvis_core.cli import main

    out = tmp_path / "ph"
    sheet = tmp_path / "sheet.png"
    code = main(["phantom", "--out", str(out), "--studies", "5", "--seed", "3", "--size", "256",
                 "--splits", "60/20/20", "--contact-sheet", str(sheet), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "wrote 5 studies" in text and "contact sheet" in text
    import cv2

    img = cv2.imread(str(sheet))
    assert img is not None and img.shape[0] >= 400 and img.shape[1] == 4 * 400
    assert img.std() > 20  # not blank
    assert len([f for f in _all_files(out) if f.endswith(".dcm")]) == 5


@pytest.mark.parametrize("argv, message", [
    (["--studies", "0"], "--studies must be >= 1"),
    (["--studies", "2", "--splits", "70-30"], "--splits must look like"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    from elvis_core.cli import main

    code = main(["phantom", "--out", str(tmp_path / "o"), "--seed", "1", "--size", "256", "--no-progress"] + argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_non_empty_folder_and_bad_size(tmp_path, capsys):
    from elvis_core.cli import main

    (tmp_path / "keep.txt").write_text("mine")
    code = main(["phantom", "--out", str(tmp_path), "--studies", "1", "--seed", "1", "--size", "256",
                 "--no-progress"])
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit) as ex:
        main(["phantom", "--out", str(tmp_path / "x"), "--studies", "1", "--seed", "1", "--size", "99999"])
    assert ex.value.code == 2 and "--size must be 256..2500" in capsys.readouterr().err


def test_cli_help_has_an_example(capsys):
    from elvis_core.cli import main

    with pytest.raises(SystemExit):
        main(["phantom", "--help"])
    out = capsys.readouterr().out
    assert "example:" in out and "elvis phantom --out" in out
