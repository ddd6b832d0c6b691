"""The project's fuzzer: hostile and broken inputs made from fixed seeds, and the code paths they are fed to.

Five input kinds, each made by mutating real seed files (pydicom-data test files and phantom studies):

- ``dicom``: bit flips, truncations, header values of the wrong type (NaN, lists, text, sequences), size bombs
  (Rows/Columns/NumberOfFrames, a JPEG 2000 codestream claiming 65535 rows, a deflate bomb), unknown VRs;
- ``report``: pathological text (runs of dots, 20 000 lines, huge reports, UTF-16, random high bytes, controls);
- ``csv``: MS-CXR CSVs with hostile cells (0.4, 1e308, NaN, 200 k fields, absolute and ``../`` paths), dropped
  columns, byte flips, other encodings;
- ``coco``: MS-CXR/COCO JSON with values of the wrong type at a random place, deep nesting, byte damage;
- ``checkpoint``: a tiny checkpoint whose ``config.json`` gets hostile values (null, 0 heads, empty depths, 10^6
  layers, 65536 px input) or whose weights are damaged (NaN, truncation, bit flips).

:func:`make_case` writes one mutated input for ``(kind, seed)``; :func:`run_case` feeds it to every reader and
command that takes that kind and classifies the outcome: ``ok`` (accepted), ``clean`` (every failure was an
:class:`~elvis_core.errors.ElvisError`, i.e. a one-line message) or ``traceback`` (any other exception, including
``BaseException`` subclasses such as a Rust ``PanicException``). Deterministic: a case depends only on its seed.

Used by ``tests/fuzz/test_fuzz.py`` (a few hundred cases in the normal test run) and ``benchmarks/fuzz.py`` (the full
campaign, every case in a forked child with its RSS and time measured).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import struct
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

KINDS = ("dicom", "report", "csv", "coco", "checkpoint", "pacs", "import", "review", "special")

#: small pydicom / pydicom-data files (every codec the reader handles, colour, big endian, deflate, multi-frame, RT)
DICOM_SEEDS = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "image_dfl.dcm", "JPEG-lossy.dcm",
    "rtplan.dcm", "MR_small_bigendian.dcm", "SC_rgb_small_odd.dcm", "MR_small_implicit.dcm",
    "SC_jpeg_no_color_transform.dcm", "emri_small_RLE.dcm",
)

HOSTILE_NUMBERS = ("NaN", "nan", "inf", "-inf", "-1", "0", "0.4", "1e308", "-1e308", "65535", "4294967295",
                   "99999999999999999999", "1e-320", "abc", "", " ", "1\\2", "3.5.6", "0x10", "١٢")


@dataclass
class Case:
    kind: str
    seed: int
    path: Path  # the file (or checkpoint folder) to feed
    what: str  # the mutation, in words
    extra: Dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    status: str  # "ok" | "clean" | "traceback"
    detail: str = ""  # the first traceback's last lines, or the first clean message


# ---------------------------------------------------------------------------------------------------------------- #
# seeds (made once per work folder)
# ---------------------------------------------------------------------------------------------------------------- #


class Seeds:
    """Seed files for every kind, written under ``root`` once (phantom DICOMs, reports, CSV, COCO, checkpoint)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.dicoms: List[Path] = []
        self.reports: List[str] = []
        self.csv_text = ""
        self.coco: dict = {}
        self.images_root = self.root / "images"
        self.checkpoint = self.root / "ckpt"
        self._make()

    def _make(self) -> None:
        from pydicom.data import get_testdata_file

        for name in DICOM_SEEDS:
            p = get_testdata_file(name)
            if p:
                self.dicoms.append(Path(p))
        # phantom DICOMs: CR/DX, MONOCHROME1/2, RLE and JPEG 2000 (the encodings real CXRs use)
        import numpy as np

        from elvis_core.phantom.dicom_writer import Encoding, write_dicom
        from elvis_core.phantom.generate import render_study

        ph = self.root / "phantom"
        ph.mkdir(exist_ok=True)
        study = render_study(7, size=128)
        img = study.image
        for i, (syntax, photo) in enumerate((("explicit", "MONOCHROME1"), ("rle", "MONOCHROME2"),
                                             ("j2k", "MONOCHROME1"), ("explicit", "MONOCHROME2"))):
            enc = Encoding(modality="CR", photometric=photo, bits_stored=12, slope=1.0, intercept=0.0, syntax=syntax,
                           fov_mm=400.0, magnification=1.1, fill=0.9, offset=0.01)
            p = ph / f"ph{i}_{syntax}.dcm"
            if not p.exists():
                ids = {"patient_name": "FUZZ^SEED", "patient_id": f"P{i}", "study_uid": f"2.25.{100 + i}",
                       "series_uid": f"2.25.{200 + i}", "sop_uid": f"2.25.{300 + i}", "study_date": "20200101",
                       "study_id": "1", "accession": f"A{i}"}
                write_dicom(p, img, enc, ids, "PA", "F")
            self.dicoms.append(p)
        # reports
        from elvis_core.phantom.reports import write_report

        self.reports.append(study.report)
        for i in range(3):
            self.reports.append(write_report(np.random.default_rng(i), list(study.findings)))
        self.reports.append("FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  ___ with cough.\n\n"
                            " FINDINGS:  Heart size is normal. No effusion, e.g. none. 1. Lungs clear.\n"
                            " 2. No pneumothorax.\n\n IMPRESSION:  No acute process. Dr. ___ notified at 3 p.m.\n")
        # a small review set (DICOM images + MS-CXR CSV) for the CSV / COCO / eval paths
        from elvis_core.review.sample import write_sample_set

        if not (self.root / "set").exists():
            write_sample_set(self.root / "set", n_studies=2, seed=5, size=64)
        set_dir = self.root / "set"
        csvs = sorted(set_dir.rglob("*.csv"))
        self.csv_path = csvs[0]
        self.csv_text = self.csv_path.read_text(encoding="utf-8")
        self.images_root = _images_root_of(set_dir, self.csv_text)
        self.coco = _csv_to_coco(self.csv_text)
    def make_checkpoint(self) -> Path:
        """A tiny checkpoint (built on first use: it needs torch)."""
        if not (self.checkpoint / "config.json").exists():
            from elvis_core.model.checkpoint import save_checkpoint
            from elvis_core.model.config import preset
            from elvis_core.model.elvis import build_model
            import torch

            torch.manual_seed(0)
            model = build_model(preset("tiny"), texts=self.reports)
            save_checkpoint(model, self.checkpoint)
        return self.checkpoint


def _images_root_of(set_dir: Path, csv_text: str) -> Path:
    import csv as _csv

    rows = list(_csv.DictReader(io.StringIO(csv_text)))
    rel = rows[0]["path"]
    for cand in [set_dir] + [p for p in set_dir.rglob("*") if p.is_dir()]:
        if (cand / rel).exists():
            return cand
    return set_dir


def _csv_to_coco(csv_text: str) -> dict:
    import csv as _csv

    rows = list(_csv.DictReader(io.StringIO(csv_text)))
    images, anns, cats = {}, [], {}
    for i, r in enumerate(rows):
        if r["path"] not in images:
            images[r["path"]] = {"id": len(images) + 1, "file_name": r["path"], "width": int(float(r["image_width"])),
                                 "height": int(float(r["image_height"])), "dicom_id": r["dicom_id"]}
        cid = cats.setdefault(r["category_name"], len(cats) + 1)
        anns.append({"id": i + 1, "image_id": images[r["path"]]["id"], "category_id": cid,
                     "bbox": [float(r["x"]), float(r["y"]), float(r["w"]), float(r["h"])],
                     "label_text": r["label_text"], "split": r.get("split", "")})
    return {"images": list(images.values()), "annotations": anns,
            "categories": [{"id": v, "name": k} for k, v in cats.items()]}


# ---------------------------------------------------------------------------------------------------------------- #
# byte-level mutators
# ---------------------------------------------------------------------------------------------------------------- #


def flip_bits(data: bytes, r: random.Random, n: Optional[int] = None, lo: int = 0, hi: Optional[int] = None) -> bytes:
    b = bytearray(data)
    hi = len(b) if hi is None else min(hi, len(b))
    if hi <= lo:
        return bytes(b)
    for _ in range(n or r.randint(1, 8)):
        i = r.randrange(lo, hi)
        b[i] ^= 1 << r.randrange(8)
    return bytes(b)


def set_bytes(data: bytes, r: random.Random, lo: int = 0, hi: Optional[int] = None) -> bytes:
    b = bytearray(data)
    hi = len(b) if hi is None else min(hi, len(b))
    for _ in range(r.randint(1, 4)):
        if hi - lo < 4:
            break
        i = r.randrange(lo, hi - 4)
        b[i:i + 4] = r.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\x00\x00", b"\x00\x00\xff\x7f",
                               struct.pack("<I", r.randrange(1 << 32))])
    return bytes(b)


def truncate(data: bytes, r: random.Random) -> bytes:
    return data[: r.randrange(0, max(1, len(data)))]


# ---------------------------------------------------------------------------------------------------------------- #
# DICOM mutations
# ---------------------------------------------------------------------------------------------------------------- #

_DICOM_FIELDS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
                 "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth",
                 "PhotometricInterpretation", "PixelSpacing", "ImagerPixelSpacing", "PlanarConfiguration",
                 "EstimatedRadiographicMagnificationFactor", "PresentationLUTShape", "SOPClassUID", "Modality",
                 "StudyInstanceUID", "SeriesNumber", "InstanceNumber", "ViewPosition", "SeriesDescription")


def _dicom_header_mutation(src: Path, out: Path, r: random.Random) -> str:
    """Rewrite one or more header elements with values of the wrong type or range (raw bytes, so pydicom's writer
    does not validate them away)."""
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(str(src), force=True)
    whats = []
    for _ in range(r.randint(1, 3)):
        kw = r.choice(_DICOM_FIELDS)
        tag = Tag(pydicom.datadict.tag_for_keyword(kw))
        choice = r.random()
        if choice < 0.55:
            text = r.choice(HOSTILE_NUMBERS + ("MONOCHROME3", "YBR_FULL", "PALETTE COLOR", "A" * 300, "\\".join(
                ["1"] * 50)))
            raw = text.encode("latin-1", "replace")
            if len(raw) % 2:
                raw += b" "
            vr = r.choice([pydicom.datadict.dictionary_VR(tag), "DS", "IS", "LO", "UN", "US", "SQ", "XX"])
            ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
            whats.append(f"{kw}={text[:20]!r} as {vr}")
        elif choice < 0.8:
            # binary US / SS values of the wrong size or range
            raw = r.choice([b"\xff\xff", b"\x00\x00", b"\x00\x80", b"\x01", b"\xff\xff\xff\xff", b"\x00" * 6])
            ds[tag] = RawDataElement(tag, "US", len(raw), raw, 0, False, True)
            whats.append(f"{kw}=raw {raw.hex()}")
        else:
            # a sequence where a number belongs
            from pydicom.dataset import Dataset
            from pydicom.sequence import Sequence

            item = Dataset()
            item.CodeValue = "1"
            ds.add_new(tag, "SQ", Sequence([item]))
            whats.append(f"{kw}=sequence")
    ds.save_as(str(out), enforce_file_format=False)
    return "header: " + ", ".join(whats)


def _size_bomb(src: Path, out: Path, r: random.Random) -> str:
    import pydicom

    ds = pydicom.dcmread(str(src), force=True)
    which = r.choice(["rows", "frames", "both"])
    if which in ("rows", "both"):
        ds.Rows = 65535
        ds.Columns = r.choice([65535, 30000, 8192])
    if which in ("frames", "both"):
        ds.NumberOfFrames = r.choice([100000, 2**31 - 1, 10**6])
    ds.save_as(str(out), enforce_file_format=False)
    return f"size bomb ({which})"


def _j2k_bomb(src: Path, out: Path, r: random.Random) -> str:
    """Rewrite the SIZ marker of a JPEG 2000 codestream to claim a huge image (the header keeps its own size)."""
    data = src.read_bytes()
    i = data.find(b"\xff\x4f\xff\x51")  # SOC + SIZ
    if i < 0:
        return _size_bomb(src, out, r)
    b = bytearray(data)
    siz = i + 4 + 2 + 2  # marker, Lsiz, Rsiz
    xs, ys = r.choice([(65535, 65535), (40000, 65535), (20000, 20000)])
    b[siz:siz + 8] = struct.pack(">II", xs, ys)
    out.write_bytes(bytes(b))
    return f"JPEG 2000 codestream claims {xs}x{ys}"


def _deflate_bomb(out: Path, r: random.Random) -> str:
    """A Deflated Explicit VR Little Endian file whose data set inflates to hundreds of MB."""
    from pydicom.dataset import FileMetaDataset

    n_mb = r.choice([64, 256, 1024])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "2.25.1"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta.ImplementationClassUID = "2.25.2"
    buf = io.BytesIO()
    from pydicom.filewriter import write_file_meta_info

    write_file_meta_info(buf, meta, enforce_standard=True)
    # data set: Rows/Columns then a huge OB pixel data of zeros
    body = bytearray()
    for tag, vr, val in (((0x0028, 0x0010), b"US", struct.pack("<H", 4096)),
                         ((0x0028, 0x0011), b"US", struct.pack("<H", 4096))):
        body += struct.pack("<HH", *tag) + vr + struct.pack("<H", len(val)) + val
    n = n_mb << 20
    body += struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\x00\x00" + struct.pack("<I", n)
    comp = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [comp.compress(bytes(body))]
    zero = bytes(1 << 20)
    for _ in range(n_mb):
        chunks.append(comp.compress(zero))
    chunks.append(comp.flush())
    out.write_bytes(b"\x00" * 128 + b"DICM" + buf.getvalue() + b"".join(chunks))
    return f"deflate bomb ({n_mb} MB inflated)"


def _unknown_vr(src: Path, out: Path, r: random.Random) -> str:
    data = bytearray(src.read_bytes())
    # replace a few explicit VRs after the file meta with unknown ones
    start = 132
    idxs = [i for i in range(start, min(len(data) - 2, 4096)) if bytes(data[i:i + 2]) in
            (b"US", b"DS", b"IS", b"CS", b"LO", b"UI", b"SH", b"DA", b"PN")]
    if not idxs:
        return _dicom_header_mutation(src, out, r)
    for i in r.sample(idxs, min(len(idxs), r.randint(1, 3))):
        data[i:i + 2] = r.choice([b"XX", b"\x00\x00", b"ob", b"UN", b"SQ", b"OW"])
    out.write_bytes(bytes(data))
    return "unknown VRs"


def make_dicom(seeds: Seeds, seed: int, out_dir: Path) -> Case:
    r = random.Random(seed)
    src = r.choice(seeds.dicoms)
    out = out_dir / f"fuzz_{seed}.dcm"
    data = src.read_bytes()
    m = r.random()
    if m < 0.25:
        out.write_bytes(flip_bits(data, r, lo=r.choice([0, 132, len(data) // 2])))
        what = "bit flips"
    elif m < 0.35:
        out.write_bytes(set_bytes(data, r, lo=132, hi=min(len(data), 2048)))
        what = "header bytes overwritten"
    elif m < 0.5:
        out.write_bytes(truncate(data, r))
        what = "truncated"
    elif m < 0.75:
        what = _dicom_header_mutation(src, out, r)
    elif m < 0.82:
        what = _size_bomb(src, out, r)
    elif m < 0.88:
        j2k = [p for p in seeds.dicoms if "j2k" in p.name.lower() or "JPEG2000" in p.name or "jp2k" in p.name]
        what = _j2k_bomb(r.choice(j2k) if j2k else src, out, r)
    elif m < 0.91:
        what = _deflate_bomb(out, r)
    elif m < 0.96:
        what = _unknown_vr(src, out, r)
    else:
        # pixel data bit flips only (decoder robustness: RLE / JPEG / J2K streams)
        rle = [p for p in seeds.dicoms if "rle" in p.name.lower() or "j2k" in p.name.lower() or "jpeg" in p.name.lower()]
        s2 = r.choice(rle) if rle else src
        d2 = s2.read_bytes()
        out.write_bytes(flip_bits(d2, r, lo=max(132, len(d2) - 4000)))
        what = f"pixel-data bit flips ({s2.name})"
    return Case("dicom", seed, out, f"{src.name}: {what}")


# ---------------------------------------------------------------------------------------------------------------- #
# reports
# ---------------------------------------------------------------------------------------------------------------- #


def make_report(seeds: Seeds, seed: int, out_dir: Path, big: bool = True) -> Case:
    r = random.Random(seed)
    base = r.choice(seeds.reports)
    out = out_dir / f"fuzz_{seed}.txt"
    m = r.randrange(14)
    scale = 1 if big else 0.05
    if m == 0:
        data = ("." * int(100_000 * scale) + "x").encode()
        what = "run of dots"
    elif m == 1:
        data = "\n".join(f"FINDING {i}: Line {i}. Next {i}." for i in range(int(20_000 * scale))).encode()
        what = "many header lines"
    elif m == 2:
        data = (base * int(max(1, 3000 * scale))).encode()
        what = "long report"
    elif m == 3:
        data = base.encode("utf-16")
        what = "UTF-16 with BOM"
    elif m == 4:
        data = bytes(r.randrange(128, 256) for _ in range(r.randint(10, 5000)))
        what = "random high bytes"
    elif m == 5:
        data = flip_bits(base.encode(), r, n=r.randint(1, 50))
        what = "bit flips"
    elif m == 6:
        data = truncate(base.encode("utf-8"), r) or b" "
        what = "truncated"
    elif m == 7:
        data = ("A" * int(50_000 * scale) + ":" + " " * int(50_000 * scale) + "B.").encode()
        what = "huge header-like line"
    elif m == 8:
        data = ("1. " * int(30_000 * scale) + "\n- " * int(10_000 * scale)).encode()
        what = "list markers"
    elif m == 9:
        data = ("e.g. " * int(40_000 * scale) + "Dr. " * int(10_000 * scale)).encode()
        what = "abbreviations"
    elif m == 10:
        data = ("\n\n \n" * int(30_000 * scale) + "No effusion.").encode()
        what = "blank lines"
    elif m == 11:
        data = (b"\xef\xbb\xbf" + ("?! " * int(40_000 * scale)).encode())
        what = "punctuation runs"
    elif m == 12:
        data = ("".join(chr(r.randrange(1, 0x2FFF)) for _ in range(r.randint(10, int(20_000 * scale) + 10)))
                .encode("utf-8", "surrogatepass"))
        what = "random unicode"
    else:
        data = ("FINDINGS:" + ("  " * int(20_000 * scale)) + ("IMPRESSION:" * int(5_000 * scale))).encode()
        what = "header runs"
    out.write_bytes(data)
    return Case("report", seed, out, what)


# ---------------------------------------------------------------------------------------------------------------- #
# CSV / COCO
# ---------------------------------------------------------------------------------------------------------------- #

_CELL_VALUES = HOSTILE_NUMBERS + ("/etc/passwd", "../../../../etc/passwd", "..", "/", "C:\\Windows\\win.ini",
                                  "files/../../x.dcm", "\x00", "\"", "a\nb", "=cmd|' /C calc'!A0", "ü" * 10)


def make_csv(seeds: Seeds, seed: int, out_dir: Path, big: bool = True) -> Case:
    import csv as _csv

    r = random.Random(seed)
    rows = list(_csv.reader(io.StringIO(seeds.csv_text)))
    header, body = rows[0], rows[1:]
    out = out_dir / f"fuzz_{seed}.csv"
    m = r.randrange(9)
    what = ""
    if m <= 3:
        for _ in range(r.randint(1, 4)):
            row = r.choice(body)
            j = r.randrange(len(header))
            v = r.choice(_CELL_VALUES)
            if r.random() < 0.1:
                v = "x" * (200_000 if big else 140_000)
            row[j] = v
            what += f"{header[j]}={v[:20]!r} "
    elif m == 4:
        j = r.randrange(len(header))
        header = header[:j] + header[j + 1:]
        body = [b[:j] + b[j + 1:] for b in body]
        what = "column dropped"
    elif m == 5:
        body = body * r.choice([2, 50])
        what = "rows duplicated"
    elif m == 6:
        for row in body:
            row[header.index("path")] = r.choice(["/etc/hostname", "../" * 8 + "etc/hostname",
                                                  os.path.abspath(str(seeds.images_root / row[header.index("path")]))])
        what = "paths outside --images"
    elif m == 7:
        for row in body:
            row[header.index("x")] = str(r.choice([100000, -50, 1e9]))
        what = "boxes outside the image"
    buf = io.StringIO()
    _csv.writer(buf, lineterminator="\n").writerows([header] + body)
    data = buf.getvalue().encode("utf-8")
    if m == 8:
        k = r.randrange(3)
        data = [flip_bits(data, r, n=r.randint(1, 20)), truncate(data, r), buf.getvalue().encode("utf-16")][k]
        what = ["bit flips", "truncated", "UTF-16"][k]
    out.write_bytes(data)
    return Case("csv", seed, out, what.strip(), {"images": str(seeds.images_root)})


_JSON_VALUES: Tuple = (None, -1, 0, 0.4, 1e308, -1e308, 10**30, "x", "", [], {}, [[]], True, [1, 2], {"a": 1},
                       "../../etc/passwd", "/etc/hostname", float("nan"))


def _json_paths(obj, prefix=()) -> List[tuple]:
    out = [prefix]
    if len(prefix) > 8:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(_json_paths(v, prefix + (k,)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:6]):
            out.extend(_json_paths(v, prefix + (i,)))
    return out


def _json_set(obj, path, value):
    if not path:
        return value
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return obj


def _json_del(obj, path):
    if not path:
        return obj
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    if isinstance(cur, dict):
        cur.pop(path[-1], None)
    elif isinstance(cur, list) and cur:
        cur.pop(path[-1] if isinstance(path[-1], int) and path[-1] < len(cur) else 0)
    return obj


def mutate_json(obj, r: random.Random, values=_JSON_VALUES) -> Tuple[object, str]:
    import copy

    obj = copy.deepcopy(obj)
    whats = []
    for _ in range(r.randint(1, 3)):
        paths = _json_paths(obj)
        path = r.choice(paths)
        m = r.random()
        if m < 0.7:
            v = r.choice(values)
            obj = _json_set(obj, path, copy.deepcopy(v))
            whats.append(f"{'.'.join(map(str, path)) or '<root>'}={v!r:.20}")
        elif m < 0.9:
            obj = _json_del(obj, path)
            whats.append(f"del {'.'.join(map(str, path))}")
        else:
            deep = 0
            for _ in range(r.choice([50, 5000, 100000])):
                deep = [deep]
            obj = _json_set(obj, path, deep)
            whats.append(f"{'.'.join(map(str, path))}=deep nesting")
    return obj, "; ".join(whats)


def make_coco(seeds: Seeds, seed: int, out_dir: Path) -> Case:
    r = random.Random(seed)
    out = out_dir / f"fuzz_{seed}.json"
    obj, what = mutate_json(seeds.coco, r)
    try:
        text = json.dumps(obj)
    except (RecursionError, ValueError):
        text = "[" * 100000
        what += " (as raw nesting)"
    data = text.encode("utf-8")
    if r.random() < 0.2:
        data = flip_bits(data, r, n=r.randint(1, 10))
        what += "; bit flips"
    out.write_bytes(data)
    return Case("coco", seed, out, what, {"images": str(seeds.images_root)})


# ---------------------------------------------------------------------------------------------------------------- #
# checkpoints
# ---------------------------------------------------------------------------------------------------------------- #

_CKPT_TARGETS = (
    ("format_version",), ("model", "image", "resnet", "depths"), ("model", "image", "resnet", "hidden_sizes"),
    ("model", "image", "resnet", "embedding_size"), ("model", "text", "hf_config", "num_attention_heads"),
    ("model", "text", "hf_config", "num_hidden_layers"), ("model", "text", "hf_config", "hidden_size"),
    ("model", "text", "hf_config", "intermediate_size"), ("model", "text", "hf_config", "vocab_size"),
    ("model", "text", "hf_config", "max_position_embeddings"), ("model", "text", "max_length"),
    ("model", "preprocessing", "size"), ("model", "preprocessing", "std"), ("model", "preprocessing", "percentiles"),
    ("model", "projection", "dim"), ("model", "projection", "hidden"), ("model", "text", "pooling"),
    ("model", "text", "tokenizer", "vocab_size"), ("model",), ("format",),
)
_CKPT_VALUES = (None, 0, -1, 1, 10**6, 10**9, 65536, 1e308, float("nan"), "x", [], [0], [10**6], {}, True, 0.5,
                [1, 2, 3, 4, 5, 6, 7, 8])


def make_checkpoint(seeds: Seeds, seed: int, out_dir: Path) -> Case:
    r = random.Random(seed)
    out = out_dir / f"fuzz_{seed}_ckpt"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(seeds.make_checkpoint(), out)
    cfg = json.loads((out / "config.json").read_text())
    m = r.random()
    if m < 0.6:
        whats = []
        for _ in range(r.randint(1, 2)):
            path = r.choice(_CKPT_TARGETS)
            v = r.choice(_CKPT_VALUES)
            try:
                cfg = _json_set(cfg, path, v)
            except (KeyError, TypeError, IndexError):
                pass
            whats.append(f"{'.'.join(path)}={v!r:.20}")
        text = json.dumps(cfg)
        what = "config: " + ", ".join(whats)
    elif m < 0.75:
        cfg, what = mutate_json(cfg, r, _CKPT_VALUES)
        try:
            text = json.dumps(cfg)
        except (RecursionError, ValueError):
            text = "{" * 10000
        what = "config: " + what
    else:
        text = json.dumps(cfg)
        w = out / "model.safetensors"
        data = w.read_bytes()
        k = r.randrange(4)
        if k == 0:
            from safetensors.torch import load_file, save_file

            st = load_file(str(w))
            for name in r.sample(sorted(st), min(len(st), r.randint(1, len(st)))):
                if st[name].is_floating_point():
                    st[name].fill_(float("nan"))
            save_file(st, str(w))
            what = "weights: NaN tensors"
        elif k == 1:
            w.write_bytes(truncate(data, r))
            what = "weights: truncated"
        elif k == 2:
            w.write_bytes(flip_bits(data, r, lo=0, hi=min(len(data), 2000)))
            what = "weights: header bit flips"
        else:
            n = struct.unpack("<Q", data[:8])[0]
            hdr = json.loads(data[8:8 + n])
            name = r.choice([k for k in hdr if k != "__metadata__"])
            hdr[name]["shape"] = [r.choice([10**6, 0, 3])] + hdr[name]["shape"][1:]
            h = json.dumps(hdr).encode()
            w.write_bytes(struct.pack("<Q", len(h)) + h + data[8 + n:])
            what = f"weights: shape of {name} changed"
    if r.random() < 0.1:
        text = text[: r.randrange(len(text))]
        what += "; config truncated"
    (out / "config.json").write_text(text)
    return Case("checkpoint", seed, out, what)


MAKERS: Dict[str, Callable] = {"dicom": make_dicom, "report": make_report, "csv": make_csv, "coco": make_coco,
                               "checkpoint": make_checkpoint}


def make_case(kind: str, seeds: Seeds, seed: int, out_dir: Path, big: bool = True) -> Case:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from tests.fuzz.fuzz_surfaces import MAKERS as SURFACE_MAKERS

    if kind in SURFACE_MAKERS:  # issue 24's surfaces: hostile server, model folders, review files, special files
        return SURFACE_MAKERS[kind](seeds, seed, out_dir)
    try:
        if kind in ("report", "csv"):
            return MAKERS[kind](seeds, seed, out_dir, big=big)
        return MAKERS[kind](seeds, seed, out_dir)
    except Exception as err:  # noqa: BLE001 - a structured mutation pydicom cannot write: flip bits instead
        if kind != "dicom":
            raise
        r = random.Random(seed)
        src = r.choice(seeds.dicoms)
        out = out_dir / f"fuzz_{seed}.dcm"
        out.write_bytes(flip_bits(src.read_bytes(), r, lo=132))
        return Case("dicom", seed, out, f"{src.name}: bit flips (structured mutation failed: {type(err).__name__})")


# ---------------------------------------------------------------------------------------------------------------- #
# running a case
# ---------------------------------------------------------------------------------------------------------------- #


class _Runner:
    def __init__(self):
        self.status = "ok"
        self.detail = ""

    def call(self, label: str, fn: Callable, *args, **kwargs):
        from elvis_core.errors import ElvisError

        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                out = fn(*args, **kwargs)
        except ElvisError as e:
            if self.status == "ok":
                self.status, self.detail = "clean", f"{label}: {e}"
            _check_message(label, str(e), self)
            return None
        except (KeyboardInterrupt, SystemExit) as e:
            if isinstance(e, SystemExit) and e.code in (0, 1, 2, None):
                # argparse / CLI exit with a code (the CLI's own error path) is clean; check what it printed
                self._cli_stderr(label, err.getvalue())
                return None
            raise
        except BaseException as e:  # noqa: BLE001 - PanicException is a BaseException
            self.status = "traceback"
            tb = traceback.format_exception(type(e), e, e.__traceback__)
            self.detail = f"{label}: {type(e).__name__}: {str(e)[:200]} | " + " ".join(
                line.strip() for line in tb[-4:-1])[-600:]
            return None
        if isinstance(out, int) and label.startswith("cli"):
            self._cli_stderr(label, err.getvalue())
            if out == 2 and self.status == "ok":
                self.status, self.detail = "clean", f"{label}: exit 2"
        return out

    def _cli_stderr(self, label: str, text: str) -> None:
        if "Traceback (most recent call last)" in text:
            self.status = "traceback"
            self.detail = f"{label}: traceback printed: {text[-400:]}"
        else:
            _check_message(label, text, self)


#: things a user-facing message must not contain: library internals and build paths
_FORBIDDEN_IN_MESSAGES = ("site-packages", "SimpleITK-build", "/tmp/SimpleITK", "Traceback", "\\src\\", ".cxx",
                          "FUZZ^SEED")


def _check_message(label: str, text: str, runner: "_Runner") -> None:
    for bad in _FORBIDDEN_IN_MESSAGES:
        if bad in text:
            runner.status = "traceback"
            runner.detail = f"{label}: message contains {bad!r}: {text[:300]}"
            return
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if any(len(ln) > 2000 for ln in lines):
        runner.status = "traceback"
        runner.detail = f"{label}: a message line of {max(len(x) for x in lines)} characters"


def _cli(*argv):
    from elvis_core.cli import main

    return main(list(argv))


_ENGINE = {}


def _engine(seeds: Seeds):
    if "e" not in _ENGINE:
        from elvis_core.grounding.engine import GroundingEngine

        _ENGINE["e"] = GroundingEngine(str(seeds.make_checkpoint()), device="cpu")
    return _ENGINE["e"]


def run_case(case: Case, seeds: Seeds) -> Outcome:
    """Feed a case to every reader and command of its kind; the worst outcome wins."""
    run = _Runner()
    p = str(case.path)
    if case.kind == "dicom":
        from elvis_core.io.dicom import read_header
        from elvis_core.io.display import to_uint8
        from elvis_core.io.images import read_image
        from elvis_core.io.privacy import dicom_tag_rows
        from elvis_core.io.studies import scan_folder
        from elvis_core.review.imaging import image_size

        run.call("read_header", read_header, p)
        rad = run.call("read_image", read_image, p)
        if rad is not None:
            run.call("to_uint8", to_uint8, rad)
            run.call("default_window", rad.default_window)
        rows = run.call("dicom_tag_rows", dicom_tag_rows, p)
        if rows:
            for _tag, _kw, _vr, value in rows:
                if "FUZZ^SEED" in value:
                    run.status, run.detail = "traceback", "dicom_tag_rows: patient name in clear"
        run.call("image_size", image_size, p)
        res = run.call("scan_folder", scan_folder, str(case.path.parent / case.path.name)
                       if False else _single_dir(case.path))
        del res
        run.call("cli inspect", _cli, "inspect", p)
        run.call("cli inspect --tags", _cli, "inspect", p, "--tags")
    elif case.kind == "report":
        from elvis_core.io.report import read_report

        rep = run.call("read_report", read_report, p)
        if rep is not None:
            for s in rep.sentences[:50]:
                if not (0 <= s.start <= s.end <= len(rep.text)):
                    run.status, run.detail = "traceback", f"bad span {s}"
        run.call("cli inspect", _cli, "inspect", p)
        run.call("cli inspect --json", _cli, "inspect", p, "--json")
    elif case.kind == "csv":
        from elvis_core.grounding.evaluate import evaluate
        from elvis_core.io.annotations import read_ms_cxr_csv
        from elvis_core.review.importer import import_annotations

        images = case.extra["images"]
        aset = run.call("read_ms_cxr_csv", read_ms_cxr_csv, p)
        run.call("import_annotations", import_annotations, p, images)
        if aset is not None and len(aset.phrases) <= 20:
            run.call("evaluate", evaluate, _engine(seeds), aset, images)
        run.call("cli review status", _cli, "review", "status", p, "--images", images)
    elif case.kind == "coco":
        from elvis_core.review.importer import import_annotations

        images = case.extra["images"]
        run.call("import_annotations", import_annotations, p, images)
        run.call("cli review status", _cli, "review", "status", p, "--images", images)
    elif case.kind == "checkpoint":
        from elvis_core.grounding.engine import GroundingEngine
        from elvis_core.model.checkpoint import load_checkpoint

        model = run.call("load_checkpoint", load_checkpoint, p)
        if model is not None:
            eng = run.call("engine", GroundingEngine, model, device="cpu")
            if eng is not None:
                from elvis_core.io.images import read_image

                rad = read_image(str(seeds.dicoms[-1]))
                run.call("ground", eng.ground_image, rad, "left lower lobe opacity")
    else:
        from tests.fuzz.fuzz_surfaces import RUNNERS

        RUNNERS[case.kind](case, run)
    return Outcome(run.status, run.detail)


def _single_dir(path: Path) -> str:
    """A folder holding only this file (the scan walks folders)."""
    d = path.parent / (path.name + ".d")
    d.mkdir(exist_ok=True)
    link = d / path.name
    if not link.exists():
        try:
            os.link(path, link)
        except OSError:
            shutil.copy(path, link)
    return str(d)
