"""Box review core: import (CSV / JSON, bad input, rescaling), queue, decisions, undo/redo, persistence, figures,
exports."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from elvis_core.errors import AnnotationError, ElvisError
from elvis_core.grounding.types import GroundingMap
from elvis_core.review import (
    ReviewSession,
    ReviewStore,
    export_all,
    export_coco,
    import_annotations,
    item_figures,
    review_path_for,
    summarize,
)
from elvis_core.review.export import atomic_write_bytes
from elvis_core.review.importer import item_key
from elvis_core.review.sample import write_sample_set


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("review_sample")
    csv_path, images_root = write_sample_set(root, n_studies=4, seed=1, size=128)
    return csv_path, images_root


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_rows(path, rows, fields=None):
    fields = fields or list(rows[0].keys())
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _session(tmp_path, sample, **kw):
    """A session on a private copy of the sample CSV (so each test has its own review file)."""
    csv_path, root = sample
    own = tmp_path / "ann.csv"
    own.write_bytes(Path(csv_path).read_bytes())
    return ReviewSession.open(own, root, reviewer=kw.pop("reviewer", "tester"), **kw), own


# -- import ---------------------------------------------------------------------------------------------------------
def test_import_groups_rows_into_phrases(sample):
    csv_path, root = sample
    res = import_annotations(csv_path, root)
    rows = _rows(csv_path)
    keys = {item_key(r["path"], r["label_text"]) for r in rows}
    assert [p for p in res.problems] == []
    assert {it.key for it in res.items} == keys
    assert sum(len(it.boxes) for it in res.items) == len(rows)
    it = res.items[0]
    r0 = next(r for r in rows if item_key(r["path"], r["label_text"]) == it.key)
    assert it.boxes[0].xywh == tuple(float(r0[k]) for k in "xywh")
    assert it.boxes[0].original == it.boxes[0].xywh and it.boxes[0].status == "unreviewed"
    assert Path(it.image_path).is_file() and (it.image_width, it.image_height) == (128, 128)
    assert it.split == r0["split"]


def test_missing_columns_is_a_file_error(tmp_path, sample):
    rows = _rows(sample[0])
    bad = _write_rows(tmp_path / "bad.csv", rows, ["dicom_id", "label_text", "path", "x", "y", "w", "h"])
    with pytest.raises(AnnotationError) as ei:
        import_annotations(bad, sample[1])
    msg = str(ei.value)
    assert "bad.csv" in msg and "category_name" in msg and "image_width" in msg


def test_bad_rows_are_listed_and_the_rest_of_the_queue_works(tmp_path, sample):
    csv_path, root = sample
    rows = _rows(csv_path)
    good = [dict(r) for r in rows]
    base = dict(rows[0])
    bad = [
        dict(base, label_text="non numeric", x="abc"),               # line n+2
        dict(base, label_text="negative", x="-5"),
        dict(base, label_text="zero size", w="0"),
        dict(base, label_text="outside", x="500", y="10"),
        dict(base, label_text="partly outside", x="100", w="60"),     # kept, clipped
        dict(base, label_text="missing image", path="files/p10/p19999999/s59999999/nope.dcm"),
    ]
    path = _write_rows(tmp_path / "mixed.csv", good + bad)
    res = import_annotations(path, root)
    first_bad = len(good) + 2
    by_line = {p.line: p for p in res.problems}
    assert "not a number" in by_line[first_bad].reason and by_line[first_bad].severity == "skipped"
    assert "negative" in by_line[first_bad + 1].reason
    assert "> 0" in by_line[first_bad + 2].reason
    assert "outside" in by_line[first_bad + 3].reason
    assert "clipped" in by_line[first_bad + 4].reason and by_line[first_bad + 4].severity == "warning"
    assert "image not found" in by_line[first_bad + 5].reason and "nope.dcm" in by_line[first_bad + 5].reason
    assert all(str(p).startswith(str(path)) for p in res.problems)
    texts = {it.label_text for it in res.items}
    assert "partly outside" in texts
    assert not texts & {"non numeric", "negative", "zero size", "outside", "missing image"}
    clipped = next(it for it in res.items if it.label_text == "partly outside")
    assert clipped.boxes[0].xywh[0] == 100 and clipped.boxes[0].xywh[2] == pytest.approx(28)
    # the rest of the queue works: every good phrase is there and reviewable
    s = ReviewSession(res.items, ReviewStore(tmp_path / "r.sqlite"), reviewer="t", problems=res.problems)
    assert len(s.items) == len({item_key(r["path"], r["label_text"]) for r in good}) + 1
    s.accept(advance=True)
    assert s.items[0].status == "accepted"


def test_size_mismatch_rescales_only_when_agreed(tmp_path, sample):
    csv_path, root = sample
    rows = [dict(r, image_width="256", image_height="512") for r in _rows(csv_path)]
    path = _write_rows(tmp_path / "big.csv", rows)
    kept = import_annotations(path, root, rescale=False)
    assert len(kept.size_mismatch_keys) == len(kept.items) > 0
    assert any("NOT rescaled" in p.reason and p.severity == "warning" for p in kept.problems)
    resc = import_annotations(path, root, rescale=True)
    r0 = rows[0]
    it = next(i for i in resc.items if i.key == item_key(r0["path"], r0["label_text"]))
    assert it.rescaled and it.file_size == (256, 512)
    x, y, w, h = (float(r0[k]) for k in "xywh")
    assert it.boxes[0].xywh == pytest.approx((x * 0.5, y * 0.25, w * 0.5, h * 0.25))


def test_session_remembers_the_rescale_choice(tmp_path, sample):
    csv_path, root = sample
    rows = [dict(r, image_width="256", image_height="256") for r in _rows(csv_path)]
    path = _write_rows(tmp_path / "big.csv", rows)
    s = ReviewSession.open(path, root, rescale=True)
    s.close()
    s2 = ReviewSession.open(path, root)  # rescale=None: the stored choice
    assert all(it.rescaled for it in s2.items)
    s2.close()


def test_coco_json_roundtrip_import(tmp_path, sample):
    csv_path, root = sample
    res = import_annotations(csv_path, root)
    out = export_coco(res.items, tmp_path / "ann.json")
    back = import_annotations(out, root)
    assert back.problems == []
    a = {it.key: [b.xywh for b in it.boxes] for it in res.items}
    b = {it.key: [b.xywh for b in it.boxes] for it in back.items}
    assert a == b
    assert {it.category for it in back.items} == {it.category for it in res.items}


def test_bad_json_is_a_file_error(tmp_path, sample):
    p = tmp_path / "x.json"
    p.write_text('{"images": 3}')
    with pytest.raises(AnnotationError, match="x.json"):
        import_annotations(p, sample[1])
    p.write_text("{nope")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        import_annotations(p, sample[1])


# -- queue and decisions --------------------------------------------------------------------------------------------
def test_navigation_filters_and_counts(tmp_path, sample):
    s, _ = _session(tmp_path, sample)
    n = len(s.items)
    assert s.current == 0
    s.next()
    assert s.current == 1
    s.previous(); s.previous()
    assert s.current == 0
    cat = s.items[-1].category
    s.set_filter(category=cat)
    vis = s.visible()
    assert vis and all(s.items[i].category == cat for i in vis)
    assert s.counts()["category"][cat] == len(vis)
    assert s.counts()["total"]["visible"] == len(vis)
    s.set_filter()
    s.accept()  # item 0 accepted, stays
    assert s.counts()["status"]["accepted"] == 1 and s.counts()["total"]["reviewed"] == 1
    s.set_filter(status="unreviewed")
    assert 0 not in s.visible() and len(s.visible()) == n - 1
    s.set_filter(status="reviewed")
    assert s.visible() == [0]
    s.set_filter()
    s.go_to(0)
    s.next_unreviewed()
    assert s.current == 1
    s.close()


def test_decisions_statuses_undo_redo(tmp_path, sample):
    s, _ = _session(tmp_path, sample, reviewer="ann")
    it = s.item
    b0 = it.boxes[0].box_id
    orig = it.boxes[0].xywh
    s.edit_box(b0, (orig[0] + 4, orig[1], orig[2], orig[3]))
    assert it.boxes[0].status == "edited" and it.boxes[0].original == orig
    assert it.boxes[0].reviewer == "ann" and it.boxes[0].timestamp.endswith("+00:00")
    added = s.add_box((1, 1, 10, 10))
    assert added.status == "added" and added.original is None
    s.delete_box(added.box_id)
    assert it.box(added.box_id) is None
    s.accept()
    assert it.status in ("edited", "accepted")
    assert all(b.status in ("edited", "accepted") for b in it.boxes)
    # undo: accept → delete → add → edit, each restoring the previous state
    s.undo()
    assert any(b.status == "unreviewed" for b in it.boxes) or len(it.boxes) == 1
    s.undo()
    assert it.box(added.box_id) is not None
    s.undo()
    assert it.box(added.box_id) is None
    s.undo()
    assert it.boxes[0].xywh == orig and it.boxes[0].status == "unreviewed"
    assert s.undo() is None
    s.redo()
    assert it.boxes[0].status == "edited"
    s.reject("wrong location", box_id=b0)
    assert it.boxes[0].status == "rejected" and it.boxes[0].reason == "wrong location"
    assert not s.can_redo  # a new decision clears the redo stack
    with pytest.raises(ElvisError, match="reason"):
        s.reject("  ")
    s.close()


def test_edit_is_clipped_to_the_image(tmp_path, sample):
    s, _ = _session(tmp_path, sample)
    b0 = s.item.boxes[0].box_id
    s.edit_box(b0, (-10, 120, 50, 50))
    assert s.item.boxes[0].xywh == (0.0, 120.0, 40.0, 8.0)
    s.close()


def test_every_decision_is_on_disk_before_the_queue_advances(tmp_path, sample):
    s, ann = _session(tmp_path, sample)
    seen = []
    real_save = s.store.save

    def spy(key, *a, **kw):
        seen.append((key, s.current))
        return real_save(key, *a, **kw)

    s.store.save = spy
    first = s.item.key
    s.accept(advance=True)
    assert seen == [(first, 0)] and s.current == 1  # saved while still on item 0, then advanced
    # reopen from disk: the decision and the position are there
    s.close()
    s2 = ReviewSession.open(ann, sample[1])
    assert s2.items[0].status == "accepted" and s2.current == 1
    s2.reject("phrase does not match image", advance=True)
    s2.close()
    s3 = ReviewSession.open(ann, sample[1])
    assert s3.items[1].status == "rejected" and s3.items[1].boxes[0].reason == "phrase does not match image"
    assert s3.current == 2
    log = s3.store.log()
    assert [e["action"] for e in log] == ["accept", "reject"]
    s3.close()


def test_a_failed_save_rolls_back_and_does_not_advance(tmp_path, sample):
    s, _ = _session(tmp_path, sample)

    def boom(*a, **kw):
        raise OSError("disk full")

    s.store.save = boom
    before = s.item.boxes_state()
    with pytest.raises(OSError):
        s.accept(advance=True)
    assert s.current == 0 and s.item.boxes_state() == before and not s.can_undo
    s.close()


def test_corrupt_review_file_is_a_clear_error(tmp_path, sample):
    csv_path, root = sample
    own = tmp_path / "ann.csv"
    own.write_bytes(Path(csv_path).read_bytes())
    review_path_for(own).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ElvisError, match="review.sqlite"):
        ReviewSession.open(own, root)


# -- figures --------------------------------------------------------------------------------------------------------
def _map_with_peak(shape, box):
    """A 16x16 grid map over the image, +0.8 on the cells inside ``box`` and -0.2 elsewhere."""
    rows, cols = shape
    g = 16
    sim = np.full((g, g), -0.2, np.float32)
    x, y, w, h = box
    j0, j1 = int(x / cols * g), int(np.ceil((x + w) / cols * g))
    i0, i1 = int(y / rows * g), int(np.ceil((y + h) / rows * g))
    sim[i0:i1, j0:j1] = 0.8
    a = np.array([[cols / g, 0, 0], [0, rows / g, 0], [0, 0, 1.0]])
    return GroundingMap(similarity=sim, grid_to_image=a, image_shape=shape, phrase="p")


def test_figures_iou_cnr_and_map_iou(tmp_path, sample):
    s, _ = _session(tmp_path, sample)
    it = s.item
    b = it.boxes[0]
    x, y, w, h = (32.0, 32.0, 32.0, 32.0)
    s.edit_box(b.box_id, (x, y, w, h))
    for other in it.boxes[1:]:
        s.reject("duplicate box", box_id=other.box_id)
    gmap = _map_with_peak((128, 128), (x, y, w, h))
    fig = item_figures(it.boxes, gmap)
    assert fig.map_iou > 0.8 and fig.cnr > 3  # < 1 only from bilinear blur at the edges
    s.edit_box(b.box_id, (x + 16, y, w, h))  # half-overlapping box: IoU with the map's region drops to 1/3
    fig2 = item_figures(it.boxes, gmap)
    assert 0.25 < fig2.map_iou < 0.45 and fig2.cnr < fig.cnr
    # IoU(original, edited) by hand: boxes (0,0,10,10) and (5,0,10,10) → 50 / 150
    s.edit_box(b.box_id, (b.original[0] + b.original[2] / 2, b.original[1], b.original[2], b.original[3]))
    f3 = item_figures(it.boxes)
    assert f3.iou_original[b.box_id] == pytest.approx(1 / 3, abs=0.02)
    assert f3.cnr is None and f3.map_iou is None
    s.close()


# -- export ---------------------------------------------------------------------------------------------------------
def test_exports_csv_coco_summary(tmp_path, sample):
    s, _ = _session(tmp_path, sample, reviewer="ann")
    s.accept(advance=True)                                     # item 0 accepted
    s.reject("wrong location", advance=True)                   # item 1 rejected
    b = s.item.boxes[0]
    s.edit_box(b.box_id, (b.x + b.w / 2, b.y, b.w, b.h))       # item 2: one box edited (IoU 1/3), rest accepted
    s.accept()
    items = s.items
    paths = export_all(items, tmp_path / "out")
    rows = _rows(paths["csv"])
    assert list(rows[0].keys())[:11] == ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                                         "image_width", "image_height", "split"]
    assert len(rows) == sum(len(it.boxes) for it in items)
    st = [r["review_status"] for r in rows]
    assert st.count("rejected") == len(items[1].boxes)
    edited = [r for r in rows if r["review_status"] == "edited"]
    assert len(edited) == 1 and float(edited[0]["iou_original"]) == pytest.approx(1 / 3, abs=0.02)
    assert float(edited[0]["orig_x"]) == pytest.approx(b.original[0])
    assert all(r["reviewer"] == "ann" for r in rows if r["review_status"] != "unreviewed")
    # the CSV is readable by the MS-CXR reader (review columns are extra)
    from elvis_core.io.annotations import read_ms_cxr_csv

    assert len(read_ms_cxr_csv(paths["csv"]).phrases) == len(items)
    coco = json.loads(Path(paths["coco"]).read_text())
    assert len(coco["annotations"]) == len(rows) - st.count("rejected")
    assert all(a["review_status"] != "rejected" for a in coco["annotations"])
    summ = json.loads(Path(paths["summary"]).read_text())
    o = summ["overall"]
    assert (o["reviewed"], o["accepted"], o["rejected"], o["edited"]) == (3, 1, 1, 1)
    assert o["mean_iou_change"] == pytest.approx(2 / 3, abs=0.02)
    assert sum(g["phrases"] for g in summ["categories"].values()) == len(items)
    assert summarize(items) == summ
    s.close()


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "out.csv"
    target.write_text("old")
    import elvis_core.review.export as ex

    def bad_replace(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ex.os, "replace", bad_replace)
    with pytest.raises(ElvisError, match="out.csv"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]  # no temp file left behind


def test_store_is_wal_with_full_sync(tmp_path):
    st = ReviewStore(tmp_path / "r.sqlite")
    assert st._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert st._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    st.save("k", "accept", [], "unreviewed", "r", "t", position="k")
    st.close()
    con = sqlite3.connect(str(tmp_path / "r.sqlite"))
    assert con.execute("SELECT count(*) FROM log").fetchone()[0] == 1
    con.close()


def test_bad_json_annotations_are_listed(tmp_path, sample):
    csv_path, root = sample
    res = import_annotations(csv_path, root)
    doc = json.loads(export_coco(res.items, tmp_path / "a.json").read_text())
    doc["annotations"][0]["bbox"] = [1, 2, 3]
    doc["annotations"][1]["image_id"] = 999
    doc["annotations"][2]["bbox"] = ["a", 1, 2, 3]
    p = tmp_path / "b.json"
    p.write_text(json.dumps(doc))
    back = import_annotations(p, root)
    reasons = {pr.line: pr.reason for pr in back.problems}
    assert "bbox must be [x, y, w, h]" in reasons[0]
    assert "image_id 999" in reasons[1]
    assert "not a number" in reasons[2]
    assert sum(len(it.boxes) for it in back.items) == len(doc["annotations"]) - 3


def test_cli_review_status_and_export(tmp_path, sample, capsys):
    from elvis_core.cli import main

    s, ann = _session(tmp_path, sample, reviewer="cli")
    s.accept(advance=True)
    s.reject("wrong location")
    s.close()
    assert main(["review", "status", str(ann), "--images", str(sample[1]), "--json"]) == 0
    summ = json.loads(capsys.readouterr().out)
    assert (summ["overall"]["accepted"], summ["overall"]["rejected"]) == (1, 1)
    out = tmp_path / "exp"
    assert main(["review", "export", str(ann), "--images", str(sample[1]), "--out", str(out)]) == 0
    rows = _rows(out / "ann.reviewed.csv")
    assert {r["review_status"] for r in rows} == {"accepted", "rejected", "unreviewed"}
    assert main(["review", "export", str(ann), "--images", str(sample[1])]) == 2
    assert "--out" in capsys.readouterr().err
    fresh = tmp_path / "fresh.csv"
    fresh.write_bytes(Path(sample[0]).read_bytes())
    assert main(["review", "status", str(fresh), "--images", str(sample[1])]) == 0
    assert not review_path_for(fresh).exists()  # reading does not create a review file
    assert main(["review", "status", str(tmp_path / "none.csv"), "--images", str(sample[1])]) == 2


def test_jpg_png_images_resolved_by_stem_and_rescaled(tmp_path, sample):
    """MIMIC-CXR-JPG style: the CSV says .dcm, the root has half-size .jpg/.png; sizes come from the headers."""
    import cv2

    from elvis_core.review.imaging import image_size

    csv_path, _ = sample
    rows = _rows(csv_path)
    paths = sorted({r["path"] for r in rows})
    for k, rel in enumerate(paths):
        dst = (tmp_path / "jpg" / rel).with_suffix(".jpg" if k % 2 == 0 else ".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(dst), np.full((64, 64), 100, np.uint8))
        assert image_size(dst) == (64, 64)
    res = import_annotations(csv_path, tmp_path / "jpg", rescale=True)
    assert res.problems == [] and len(res.size_mismatch_keys) == len(res.items) > 0
    r0 = rows[0]
    it = next(i for i in res.items if i.key == item_key(r0["path"], r0["label_text"]))
    assert it.image_path.endswith((".jpg", ".png")) and (it.image_width, it.image_height) == (64, 64)
    assert it.boxes[0].xywh == pytest.approx(tuple(float(r0[k]) / 2 for k in "xywh"))
    bad = tmp_path / "jpg" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(ElvisError, match="broken.jpg"):
        image_size(bad)
