"""Fuzz kinds for the newer input surfaces (issue 24): a hostile DICOMweb server, hostile model folders for
``elvis import``, corrupted review databases, and special files (FIFOs, devices, sockets) where a file is expected.

Each ``make_*`` writes one case from a seed; :func:`run_surface` feeds it to every reader and command of its kind
through fuzzlib's runner (ok / clean ElvisError / traceback). Extra checks turn a silent failure into a traceback
outcome: an identifier of the hostile server in any message, or a cached instance that is not complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import sqlite3
import struct
import zipfile
from pathlib import Path

SURFACE_KINDS = ("pacs", "import", "review", "special")


def _fresh_dir(d: Path) -> Path:
    """``d`` with whatever an earlier case left there removed (not created)."""
    if d.exists():
        shutil.rmtree(d)
    return d


# ------------------------------------------------------------------------------------------------------- pacs
def make_pacs(seeds, seed: int, out_dir: Path):
    from tests.fuzz.fuzzlib import Case
    from tests.fuzz.hostile_pacs import SCENARIOS

    r = random.Random(seed)
    sc = r.choice(SCENARIOS)
    target = r.choice(["studies", "series", "instances", "instance"])
    cache = out_dir / f"pacs_{seed}"
    if sc in ("gzip_bomb", "deflate_bomb"):  # built here (seconds), so a forked runner inherits it
        from tests.fuzz.hostile_pacs import _bomb

        _bomb(sc)
    return Case("pacs", seed, cache, f"hostile server: {sc} on {target}", {"scenario": sc, "target": target})


def _run_pacs(case, run) -> None:
    import pydicom

    from elvis_core.pacs import PacsClient
    from tests.fuzz.hostile_pacs import ACCESSION, PATIENT_ID, STUDY_UID, HostilePacs

    with HostilePacs(case.extra["scenario"], seed=case.seed, target=case.extra["target"], drip_s=0.05) as srv:
        client = run.call("client", PacsClient, srv.url, cache_dir=str(case.path), timeout=2)
        if client is None:
            return
        hits = run.call("search_studies", client.search_studies, patient_id=PATIENT_ID, accession=ACCESSION)
        for h in hits or []:
            if "\x1b" in h.description or "\n" in h.description or "\t" in h.description:
                run.status, run.detail = "traceback", f"unsanitised server text: {h.description[:80]!r}"
        run.call("fetch_study", client.fetch_study, STUDY_UID)
        run.call("cli search", _cli, "pacs", "search", "--url", srv.url, "--cache", str(case.path),
                 "--timeout", "2", "--patient-id", PATIENT_ID)
    if PATIENT_ID in run.detail or ACCESSION in run.detail:
        run.status, run.detail = "traceback", f"identifier in a message: {run.detail[:200]}"
    for p in Path(case.path).rglob("*"):  # only complete instances with their own UID reach the cache
        if p.is_file():
            try:
                ds = pydicom.dcmread(p)
                good = p.suffix == ".dcm" and str(ds.SOPInstanceUID) == p.stem and "PixelData" in ds and \
                    len(ds.PixelData) >= ds.Rows * ds.Columns * ds.BitsAllocated // 8
            except Exception:  # noqa: BLE001
                good = False
            if not good:
                run.status, run.detail = "traceback", f"incomplete or foreign file cached: {p.name}"


# ----------------------------------------------------------------------------------------------------- import
def _import_base(seeds) -> Path:
    """A small BioViL-layout download (a narrow ResNet + a 2-layer CXR-BERT), made once per seeds folder."""
    base = Path(seeds.root) / "import_base"
    if not (base / "text" / "pytorch_model.bin").exists():
        import torch

        from tests.core import biovil_reference as ref

        base.mkdir(parents=True, exist_ok=True)
        model = ref.randomise(ref.ImageModel(multi=False, layers=(1, 1, 1, 1), widths=(8, 8, 8, 8), stem=8), seed=1)
        torch.save(model.state_dict(), base / "image.pt")
        ref.make_cxr_bert_folder(base / "text", hidden=16, layers=2, heads=2)
    return base


def _zip_bomb(path: Path, r: random.Random) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("archive/data/0", b"\0" * (r.choice([80, 200, 600]) << 20))


def make_import(seeds, seed: int, out_dir: Path):
    import torch

    from tests.fuzz.fuzzlib import Case, flip_bits, mutate_json, truncate

    r = random.Random(seed)
    base = _import_base(seeds)
    d = _fresh_dir(out_dir / f"import_{seed}")
    shutil.copytree(base, d)
    img, text = d / "image.pt", d / "text"
    m = r.randrange(14)
    if m == 0:
        img.write_bytes(truncate(img.read_bytes(), r))
        what = "image .pt truncated"
    elif m == 1:
        img.write_bytes(flip_bits(img.read_bytes(), r))
        what = "image .pt bit flips"
    elif m == 2:
        st = torch.load(img, weights_only=True)
        st[r.choice(["encoder.encoder.layer1.99999.conv1.weight", "encoder.encoder.layer9.0.conv1.weight",
                     "encoder.encoder.layer2.7.bn1.weight"])] = torch.zeros(1)
        torch.save(st, img)
        what = "stray tensor"
    elif m == 3:
        st = torch.load(img, weights_only=True)
        k = r.choice([k for k, v in st.items() if v.dtype.is_floating_point])
        st[k] = st[k].clone().view(-1).index_fill_(0, torch.tensor([0]), r.choice([float("nan"), float("inf")])) \
            .view(st[k].shape)
        torch.save(st, img)
        what = f"non-finite value in {k}"
    elif m == 4:
        st = torch.load(img, weights_only=True)
        k = r.choice(list(st))
        st[k] = torch.zeros([r.choice([1, 3, 999]) for _ in range(r.randint(0, 4))])
        torch.save(st, img)
        what = f"wrong shape for {k}"
    elif m == 5:
        _zip_bomb(img, r)
        what = "deflate bomb .pt"
    elif m in (6, 7):
        conf = json.loads((text / "config.json").read_text())
        conf, what = mutate_json(conf, r)
        try:
            raw = json.dumps(conf)
        except (RecursionError, ValueError):  # the nesting the mutation made: written by hand
            raw = '{"hidden_size": ' + "[" * 100000 + "]" * 100000 + "}"
            what += " (as raw nesting)"
        (text / "config.json").write_text(raw)
        what = "text config: " + what
    elif m == 8:
        conf = json.loads((text / "config.json").read_text())
        conf[r.choice(["num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads",
                       "max_position_embeddings"])] = r.choice([10 ** 6, 10 ** 9, 0, -1, 65536, 1.5, "12"])
        (text / "config.json").write_text(json.dumps(conf))
        what = "text config size"
    elif m == 9:
        name = r.choice(["config.json", "tokenizer_config.json"])
        (text / name).write_text(r.choice(["[" * 100000 + "]" * 100000, '{"a": ' + "9" * 100000 + "}",
                                           "\xff\xfe garbage", "[]", "null"]))
        what = f"{name} hostile JSON"
    elif m == 10:
        v = (text / "vocab.txt").read_text().splitlines()
        r.shuffle(v)
        (text / "vocab.txt").write_text("\n".join(v[: r.randrange(len(v))]))
        what = "vocab shuffled/cut"
    elif m == 11:  # safetensors text weights whose header lies
        from safetensors.torch import save_file

        st = torch.load(text / "pytorch_model.bin", weights_only=True)
        (text / "pytorch_model.bin").unlink()
        save_file({k: v.contiguous() for k, v in st.items()}, str(text / "model.safetensors"))
        data = bytearray((text / "model.safetensors").read_bytes())
        n = struct.unpack("<Q", data[:8])[0]
        hdr = json.loads(bytes(data[8:8 + n]))
        k = r.choice([k for k in hdr if k != "__metadata__"])
        what = r.randrange(4)
        if what == 0:
            hdr[k]["shape"] = [10 ** 10]
            hdr[k]["data_offsets"] = [0, 4 * 10 ** 10]
        elif what == 1:
            hdr[k]["data_offsets"] = [0, 10 ** 12]
        elif what == 2:
            hdr[k]["dtype"] = "Q99"
        else:
            data[:8] = struct.pack("<Q", 10 ** 15)
        if what != 3:
            raw = json.dumps(hdr).encode()
            data = bytearray(struct.pack("<Q", len(raw)) + raw + bytes(data[8 + n:]))
        (text / "model.safetensors").write_bytes(bytes(data))
        what = f"safetensors header lie {what} on {k}"
    elif m == 12:
        target = r.choice([text / "config.json", text / "vocab.txt", img])
        target.unlink()
        if r.random() < 0.5:
            os.mkfifo(target)
            what = f"{target.name} is a FIFO"
        else:
            target.symlink_to("/dev/zero")
            what = f"{target.name} links to /dev/zero"
    else:
        what = "unmutated"
    return Case("import", seed, d, what)


def _run_import(case, run) -> None:
    d = Path(case.path)
    # --no-onnx: the surface is the hostile model files; the ONNX export after a good import (10-20 s, ~0.5 GB for
    # the export's tracing) is the viewer's speed path, not an input parser, and is tested in test_onnx_engine
    run.call("cli import", _cli, "import", "biovil", "--image-weights", str(d / "image.pt"), "--text-model",
             str(d / "text"), "--out", str(d / "out"), "--no-onnx")


# ----------------------------------------------------------------------------------------------------- review
def _review_base(seeds) -> Path:
    base = Path(seeds.root) / "review_base"
    if not (base / "ann.csv.review.sqlite").exists():
        from elvis_core.review import ReviewSession

        base.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seeds.csv_path, base / "ann.csv")
        s = ReviewSession.open(base / "ann.csv", seeds.images_root, reviewer="fuzz")
        try:
            for k in range(min(3, len(s.items))):
                (s.accept if k % 2 == 0 else lambda advance: s.reject("wrong location", advance=advance))(
                    advance=True)
        finally:
            s.close()
    return base


_REVIEW_SQL = [
    "DROP TABLE items", "DROP TABLE log", "DROP TABLE meta", "ALTER TABLE items RENAME TO other",
    "UPDATE items SET state=NULL", "UPDATE items SET state=42", "UPDATE items SET state=X'DEADBEEF'",
    "UPDATE items SET state='{}'", "UPDATE items SET state='[1,2]'", "UPDATE items SET status='exploded'",
    "UPDATE items SET seq='x'", "UPDATE items SET key=NULL", "UPDATE items SET updated=3.5",
    "UPDATE items SET state='" + "[" * 50000 + "]" * 50000 + "'",
    "UPDATE items SET state='[{\"box_id\": 1, \"xywh\": [1,2,3]}]'",
    "UPDATE items SET state='[{\"box_id\": \"a\", \"xywh\": [1e999, 2, 3, 4]}]'",
    "UPDATE meta SET v='999' WHERE k='schema'", "UPDATE meta SET v='x' WHERE k='schema'",
    "DELETE FROM meta", "UPDATE meta SET v=randomblob(100000) WHERE k='position'", "DELETE FROM log",
    "UPDATE log SET state='nope'", "INSERT INTO items VALUES ('" + "k" * 5000 + "', '[]', 'accepted', 1, 'x')",
]


def make_review(seeds, seed: int, out_dir: Path):
    from tests.fuzz.fuzzlib import Case, flip_bits, truncate

    r = random.Random(seed)
    base = _review_base(seeds)
    d = _fresh_dir(out_dir / f"review_{seed}")
    d.mkdir(parents=True)
    shutil.copyfile(base / "ann.csv", d / "ann.csv")
    db = d / "ann.csv.review.sqlite"
    shutil.copyfile(base / "ann.csv.review.sqlite", db)
    m = r.random()
    if m < 0.55:
        sql = r.choice(_REVIEW_SQL)
        c = sqlite3.connect(str(db))
        c.execute("PRAGMA journal_mode=DELETE")
        try:
            c.executescript(sql)
            c.commit()
        except sqlite3.Error:
            pass
        c.close()
        what = f"SQL: {sql[:80]}"
    elif m < 0.75:
        data = db.read_bytes()
        db.write_bytes(flip_bits(data, r, lo=r.choice([0, 100, 1024, 4096])))
        what = "bit flips"
    elif m < 0.85:
        db.write_bytes(truncate(db.read_bytes(), r))
        what = "truncated"
    elif m < 0.92:
        data = bytearray(db.read_bytes())
        page = 4096
        k = r.randrange(max(1, len(data) // page))
        data[k * page:(k + 1) * page] = bytes(r.randrange(256) for _ in range(page))[: len(data) - k * page]
        db.write_bytes(bytes(data))
        what = f"page {k + 1} overwritten"
    else:
        (d / "ann.csv.review.sqlite-wal").write_bytes(bytes(r.randrange(256) for _ in range(r.choice([10, 5000]))))
        what = "garbage WAL beside it"
    return Case("review", seed, d / "ann.csv", what, {"images": str(seeds.images_root)})


def _run_review(case, run) -> None:
    from elvis_core.review import ReviewSession

    ann, images = str(case.path), case.extra["images"]
    s = run.call("open", ReviewSession.open, ann, images, reviewer="fuzz")
    if s is not None:
        try:
            run.call("next", s.next)
            if s.item is not None:
                run.call("accept", s.accept, advance=True)
        finally:
            run.call("close", s.close)
    run.call("cli review status", _cli, "review", "status", ann, "--images", images)
    run.call("cli review recover", _cli, "review", "recover", ann)
    s = run.call("reopen", ReviewSession.open, ann, images, reviewer="fuzz")
    if s is not None:
        run.call("close", s.close)


# ---------------------------------------------------------------------------------------------------- special
_SPECIAL_NAMES = ("x.dcm", "report.txt", "ann.csv", "ann.json", "review.sqlite", "weights.pt", "img.png")


def make_special(seeds, seed: int, out_dir: Path):
    from tests.fuzz.fuzzlib import Case

    r = random.Random(seed)
    d = _fresh_dir(out_dir / f"special_{seed}")
    d.mkdir(parents=True)
    name = r.choice(_SPECIAL_NAMES)
    p = d / name
    kind = r.choice(["fifo", "zero", "null", "socket", "fifo-link", "dir"])
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "zero":
        p.symlink_to("/dev/zero")
    elif kind == "null":
        p.symlink_to("/dev/null")
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()  # the socket file stays
    elif kind == "fifo-link":
        os.mkfifo(d / "pipe")
        p.symlink_to(d / "pipe")
    else:
        p.mkdir()
    return Case("special", seed, p, f"{name} is a {kind}", {"images": str(d)})


def _run_special(case, run) -> None:
    from elvis_core.io.annotations import read_ms_cxr_csv
    from elvis_core.io.dicom import read_header
    from elvis_core.io.images import read_image
    from elvis_core.io.report import read_report
    from elvis_core.model.import_weights import read_weights
    from elvis_core.review.importer import import_annotations
    from elvis_core.review.store import ReviewStore

    p = str(case.path)
    run.call("read_header", read_header, p)
    run.call("read_image", read_image, p)
    run.call("read_report", read_report, p)
    run.call("read_ms_cxr_csv", read_ms_cxr_csv, p)
    run.call("import_annotations", import_annotations, p, case.extra["images"])
    run.call("read_weights", read_weights, p)
    st = run.call("ReviewStore read-only", ReviewStore, p, read_only=True)
    if st is not None:
        st.close()
    run.call("cli inspect", _cli, "inspect", p)
    run.call("cli review status", _cli, "review", "status", p, "--images", case.extra["images"])


def _cli(*argv):
    from elvis_core.cli import main

    return main(list(argv))


MAKERS = {"pacs": make_pacs, "import": make_import, "review": make_review, "special": make_special}
RUNNERS = {"pacs": _run_pacs, "import": _run_import, "review": _run_review, "special": _run_special}
