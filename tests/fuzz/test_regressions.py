"""One minimal input per bug the fuzzer (and issue 13) found, each asserting the clean behaviour that replaced the
traceback / the memory blow-up / the silent wrong answer."""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from elvis_core.errors import AnnotationError, CheckpointError, DicomReadError, ElvisError, ReportReadError
from elvis_core.io import limits as io_limits
from elvis_core.io.dicom import read_header, read_radiograph, scrub
from elvis_core.io.images import read_image
from elvis_core.io.privacy import BASIC_PROFILE, IDENTIFYING_KEYWORDS, MASK, dicom_tag_rows, pseudonym_uid
from elvis_core.io.report import read_report

DATA = Path(__file__).parent / "data"


def _dicom(path, rows=16, cols=20, ts=ExplicitVRLittleEndian, pixel_bytes=None, raw=None, **tags):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Secret^Person"
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixel_bytes if pixel_bytes is not None else (np.arange(rows * cols, dtype=np.uint16) % 4096
                                                                ).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    for kw in raw or {}:
        if kw not in ds:
            setattr(ds, kw, "1" if pydicom.datadict.dictionary_VR(kw) in ("IS", "DS") else
                    (1 if pydicom.datadict.dictionary_VR(kw) in ("US", "SS") else "X"))
    ds.save_as(path, enforce_file_format=False)
    for kw, (vr, value) in (raw or {}).items():  # patched in the file's bytes: no writer validates them away
        _patch(path, kw, vr, value)
    return str(path)


def _patch(path, kw, vr, value):
    """Replace one explicit-VR-LE short element (tag, VR, 2-byte length, value) of a written file."""
    tag = pydicom.datadict.tag_for_keyword(kw)
    data = Path(path).read_bytes()
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    i = data.find(head, 132 + 12)
    assert i > 0, kw
    old_len = struct.unpack("<H", data[i + 6:i + 8])[0]
    new = head + vr.encode() + struct.pack("<H", len(value)) + value
    Path(path).write_bytes(data[:i] + new + data[i + 8 + old_len:])


# --------------------------------------------------------------------------------------------------- DICOM header


@pytest.mark.parametrize("kw,vr,value,needle", [
    ("Columns", "LO", b"YBR_FULL", "(0028,0011) Columns"),  # text where a US belongs
    ("Rows", "DS", b"NaN ", "(0028,0010) Rows"),
    ("Rows", "US", b"\x01", "(0028,0010) Rows"),  # a US of one byte
    ("RescaleSlope", "DS", b"abc ", "(0028,1053) RescaleSlope"),
    ("RescaleSlope", "DS", b"1e308 ", "RescaleSlope"),  # past float32 through the stored range
    ("PixelRepresentation", "US", b"\x05\x00", "(0028,0103) PixelRepresentation"),
    ("BitsStored", "US", b"\x40\x00", "BitsStored"),  # 64 > BitsAllocated 16
    ("NumberOfFrames", "IS", b"1\\2 ", "NumberOfFrames"),  # two values
    ("Rows", "XX", b"16", "(0028,0010) Rows"),  # unknown VR
])
def test_bad_header_values_name_the_tag(tmp_path, kw, vr, value, needle):
    p = _dicom(tmp_path / "bad.dcm", raw={kw: (vr, value)})
    with pytest.raises(DicomReadError) as exc:
        read_radiograph(p)
    msg = str(exc.value)
    assert needle in msg and p in msg and "Secret" not in msg and "\n" not in msg


def test_unknown_vr_in_an_optional_element_is_dropped_with_a_warning(tmp_path):
    p = _dicom(tmp_path / "vr.dcm", raw={"Modality": ("XX", b"CR"), "SeriesNumber": ("US", b"\x01\x00\x02")})
    r = read_radiograph(p)
    assert r.shape == (16, 20)
    assert any("(0008,0060) Modality" in w for w in r.warnings)
    rows = dicom_tag_rows(p)  # the tag listing survives it too
    assert any(t == "(0008,0060)" for t, *_ in rows)
    assert read_header(p)["Rows"] == 16


def test_rust_panic_in_the_rle_decoder_is_a_clean_error():
    """pylibjpeg-rle raises pyo3's PanicException (a BaseException) on this bit-flipped RLE stream."""
    p = str(DATA / "rle_panic.dcm")
    with pytest.raises(DicomReadError) as exc:
        read_image(p)
    assert "PanicException" in str(exc.value) or "cannot decode" in str(exc.value)


def test_rust_panic_output_is_swallowed_even_with_a_backtrace():
    """With RUST_BACKTRACE=1 the panic printed 124 lines on stderr before our line: now one line only."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, RUST_BACKTRACE="1", PYTHONPATH=str(repo))
    r = subprocess.run([sys.executable, "-m", "elvis_core", "inspect", str(DATA / "rle_panic.dcm")],
                       capture_output=True, text=True, env=env, cwd=str(repo), timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "rle_panic.dcm" in lines[0], r.stderr[-2000:]
    assert "panicked" not in r.stderr and "stack backtrace" not in r.stderr


def test_keyboard_interrupt_in_a_decoder_is_not_swallowed(tmp_path, monkeypatch):
    import elvis_core.io.dicom as dicom_mod

    p = _dicom(tmp_path / "ok.dcm")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(dicom_mod, "_decode_pydicom", boom)
    with pytest.raises(KeyboardInterrupt):
        read_radiograph(p)


def test_size_bomb_refused_before_decoding(tmp_path):
    p = _dicom(tmp_path / "bomb.dcm", rows=16, cols=20)
    ds = pydicom.dcmread(p, force=True)
    ds.Rows = ds.Columns = 65535
    ds.save_as(p, enforce_file_format=False)
    with pytest.raises(DicomReadError, match="larger than the limit"):
        read_radiograph(p)


def test_limit_is_configurable(tmp_path):
    p = _dicom(tmp_path / "small.dcm", rows=16, cols=20)
    old = io_limits.set_limits(max_frame_pixels=100)
    try:
        with pytest.raises(DicomReadError, match="ELVIS_MAX_FRAME_PIXELS"):
            read_radiograph(p)
    finally:
        io_limits.set_limits(**old.__dict__)
    assert read_radiograph(p).shape == (16, 20)


def test_jpeg2000_codestream_claiming_a_huge_image_is_refused_before_decoding(tmp_path):
    """A 3 KB J2K file whose SIZ marker claims 65535 rows decoded to 4.4 GB."""
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("JPEG2000.dcm")).read_bytes()
    i = src.find(b"\xff\x4f\xff\x51")
    b = bytearray(src)
    b[i + 8:i + 16] = struct.pack(">II", 65535, 65535)
    p = tmp_path / "j2k_bomb.dcm"
    p.write_bytes(bytes(b))
    with pytest.raises(DicomReadError, match="JPEG 2000 frame header"):
        read_radiograph(str(p))


def test_jpeg2000_codestream_size_must_match_the_header(tmp_path):
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("JPEG2000.dcm")).read_bytes()
    i = src.find(b"\xff\x4f\xff\x51")
    b = bytearray(src)
    b[i + 8:i + 16] = struct.pack(">II", 100, 100)
    p = tmp_path / "j2k_mismatch.dcm"
    p.write_bytes(bytes(b))
    with pytest.raises(DicomReadError, match="corrupt file"):
        read_radiograph(str(p))


def test_deflate_bomb_refused_without_inflating_it_all(tmp_path):
    """A small Deflated Explicit VR LE file whose data set inflates past the decoded-size limit."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "2.25.1"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta.ImplementationClassUID = "2.25.2"
    from pydicom.filewriter import write_file_meta_info

    buf = io.BytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    n = 40 << 20
    body = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\x00\x00" + struct.pack("<I", n)
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = c.compress(body) + b"".join(c.compress(bytes(1 << 20)) for _ in range(40)) + c.flush()
    p = tmp_path / "dfl.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + data)
    assert p.stat().st_size < 100_000
    old = io_limits.set_limits(max_decoded_bytes=16 << 20)
    try:
        for fn in (read_radiograph, read_header, dicom_tag_rows):
            with pytest.raises(DicomReadError, match="inflates to more than"):
                fn(str(p))
        # the readers outside io/dicom.py that open DICOM files themselves refuse it too (the campaign saw 2.1 GB
        # when `elvis inspect` asked whether the file was a report SR)
        from elvis_core.io.sr_report import is_text_report_sr, read_sr_report

        assert is_text_report_sr(p) is None  # refused, not inflated and found "not an SR"
        with pytest.raises(ReportReadError, match="inflates to more than"):
            read_sr_report(p)
        from elvis_core.dicom_results import DicomExportError, read_source

        with pytest.raises(DicomExportError, match="inflates to more than"):
            read_source(p)
    finally:
        io_limits.set_limits(**old.__dict__)


def test_deflate_bomb_just_over_the_default_limit_and_real_deflate_file(tmp_path):
    """The measuring loop once stopped while zlib still held output (the whole bomb fits in one read): a 64 MiB +
    header bomb went through to pydicom (30 s, 300 MB). And a real deflated file still reads."""
    import random

    from pydicom.data import get_testdata_file

    from tests.fuzz.fuzzlib import _deflate_bomb

    p = tmp_path / "b.dcm"
    r = random.Random(0)
    r.choice = lambda seq: 64  # the 64 MiB bomb
    _deflate_bomb(p, r)
    with pytest.raises(DicomReadError, match="ELVIS_MAX_INFLATED_MB"):
        read_radiograph(str(p))
    assert read_radiograph(get_testdata_file("image_dfl.dcm")).pixels.size > 0


def test_png_header_claiming_a_huge_image_is_refused_before_decoding(tmp_path):
    import zlib as _z

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", _z.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 65535, 65535, 16, 0, 0, 0, 0)) + \
        chunk(b"IDAT", _z.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    p = tmp_path / "bomb.png"
    p.write_bytes(png)
    with pytest.raises(DicomReadError, match="larger than the limit"):
        read_image(str(p))


def test_a_sequence_where_a_header_value_belongs_does_not_break_read_header():
    """Fuzz seed 679: a header keyword's VR became SQ; printing its items met an unknown VR."""
    p = str(DATA / "sequence_header.dcm")
    hdr = read_header(p)
    assert hdr["SOPInstanceUID"] and any(v == "<sequence of 1 item(s)>" or v == "<unreadable>" for v in hdr.values())


def test_a_damaged_length_that_swallows_the_patient_name_is_masked():
    """Fuzz seed 832: Manufacturer's length was overwritten, so its value holds the following elements, the
    patient's name among them."""
    rows = dicom_tag_rows(str(DATA / "swallowed_name.dcm"))
    assert "FUZZ^SEED" not in repr(rows)
    assert any(v == MASK + " (damaged value)" for _t, kw, _vr, v in rows if kw == "Manufacturer")


def test_simpleitk_fallback_runs_under_a_memory_cap():
    """Fuzz seed 448: GDCM allocated 860 MB trying a bit-flipped 256 x 1024 12-bit JPEG. The fallback now runs in a
    child process with a capped address space: a clean error, and the child stays small."""
    import subprocess
    import sys

    code = ("import resource\nfrom elvis_core.io.images import read_image\nfrom elvis_core.errors import ElvisError\n"
            f"try:\n    read_image({str(DATA / 'gdcm_memory.dcm')!r})\n    print('READ')\n"
            "except ElvisError as e:\n    print('CLEAN')\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).resolve().parents[2]))
    lines = out.stdout.split()
    assert lines[0] == "CLEAN", out.stderr[-500:]
    assert int(lines[1]) < 700, f"the SimpleITK child took {lines[1]} MB"


def test_simpleitk_fallback_still_decodes_12_bit_jpeg():
    from pydicom.data import get_testdata_file

    r = read_image(get_testdata_file("JPEG-lossy.dcm"))
    assert r.meta["Decoder"] == "SimpleITK" and r.shape == (1024, 256)


def test_simpleitk_build_paths_are_scrubbed():
    msg = ("Exception thrown in SimpleITK ImageFileReader_Execute: /tmp/SimpleITK-build/ITK/Modules/IO/GDCM/src/"
           "itkGDCMImageIO.cxx:361: ITK ERROR: GDCMImageIO(0x55): Cannot read /data/x.dcm")
    out = scrub(msg, 400, "/data/x.dcm")
    assert "SimpleITK-build" not in out and ".cxx" not in out and "/data/x.dcm" in out


# --------------------------------------------------------------------------------------------------- privacy


def test_basic_profile_masks_admission_id_private_tags_and_pseudonymises_uids(tmp_path):
    p = _dicom(tmp_path / "ids.dcm", AdmissionID="ADM-7788", StudyDescription="CHEST Secret", OtherPatientIDs="X1")
    ds = pydicom.dcmread(p, force=True)
    ds.add_new(0x00091010, "LO", "PRIVATE-VALUE-42")
    ds.save_as(p, enforce_file_format=False)
    rows = dicom_tag_rows(p)
    text = repr(rows)
    for secret in ("ADM-7788", "CHEST Secret", "PRIVATE-VALUE-42", "Secret^Person", "X1"):
        assert secret not in text
    by_kw = {kw: v for _t, kw, _vr, v in rows}
    assert by_kw["AdmissionID"] == MASK and by_kw["StudyDescription"] == MASK
    assert by_kw["SOPInstanceUID"] == pseudonym_uid(ds.SOPInstanceUID) != ds.SOPInstanceUID
    assert by_kw["Rows"] == "16"  # non-identifying values are shown
    assert {v for t, _kw, _vr, v in rows if t == "(0009,1010)"} == {MASK}
    # the table is the standard's (hundreds of attributes), not a hand list
    assert len(BASIC_PROFILE) > 500 and "AdmissionID" in IDENTIFYING_KEYWORDS
    assert BASIC_PROFILE[0x00100010] == "Z"  # PatientName: Z in Table E.1-1


def test_inspect_summary_masks_profile_values(tmp_path, capsys):
    from elvis_core.cli import main

    p = _dicom(tmp_path / "s.dcm", SeriesDescription="Secret series")
    assert main(["inspect", p, "--json"]) == 0
    out = capsys.readouterr().out
    ds = pydicom.dcmread(p, force=True)
    assert "Secret series" not in out and str(ds.SOPInstanceUID) not in out
    assert pseudonym_uid(ds.SOPInstanceUID) in out


@pytest.mark.parametrize("seed", [216, 833, 1272])
def test_inspect_survives_a_damaged_sop_class_uid(tmp_path, seed):
    """`elvis inspect` asks whether a DICOM file is a report SR; a SOPClassUID of an unknown VR or holding a broken
    sequence raised from pydicom's lazy conversion there (the campaign's DICOM seeds 216, 518, 833, 901, 1272; these
    are the fuzzer's own files, rebuilt from their seeds)."""
    from tests.fuzz.fuzzlib import Seeds, make_case, run_case

    seeds = Seeds(tmp_path / "seeds")
    case = make_case("dicom", seeds, seed, tmp_path / "case")
    assert "SOPClassUID" in case.what
    outcome = run_case(case, seeds)
    assert outcome.status != "traceback", outcome.detail


# --------------------------------------------------------------------------------------------------- reports


def test_utf16_report_with_bom_is_read(tmp_path):
    p = tmp_path / "r.txt"
    p.write_bytes("FINDINGS: No effusion. Heart normal.\n".encode("utf-16"))
    rep = read_report(p)
    assert [rep.text[s.start:s.end] for s in rep.sentences] == ["No effusion.", "Heart normal."]


def test_random_high_bytes_are_not_a_report(tmp_path):
    p = tmp_path / "r.txt"
    p.write_bytes(bytes(range(0x80, 0x100)) * 20)
    with pytest.raises(ReportReadError, match="not text"):
        read_report(p)


def test_latin1_report_still_reads_with_a_warning(tmp_path):
    p = tmp_path / "r.txt"
    p.write_bytes("IMPRESSION: Épanchement pleural à droite.\n".encode("latin-1"))
    rep = read_report(p)
    assert "Épanchement" in rep.text and rep.warnings


def test_oversized_report_refused_before_reading(tmp_path):
    p = tmp_path / "big.txt"
    with open(p, "wb") as f:
        f.truncate((1 << 20) + 10)
    with pytest.raises(ReportReadError, match="larger than the report limit"):
        read_report(p)


def test_sentence_end_regex_is_linear_on_runs_of_dots():
    """The old pattern backtracked once per start position in a run of dots not followed by a space (100 kB of
    dots: > 60 s). Counted without timing: the possessive, anchored pattern tries each run once."""
    from elvis_core.io.report_parse import _END_RE

    assert _END_RE.pattern.startswith("(?<![.!?])") and "++" in _END_RE.pattern
    assert [m.group(0) for m in _END_RE.finditer("a... b. c.x d!? ")] == ["...", ".", "!?"]


# --------------------------------------------------------------------------------------------------- annotations

_HEADER = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"


@pytest.mark.parametrize("cells,needle", [
    ("1,2,3,4,0.4,0.4", "image_width/image_height"),  # rounds to 0: was ZeroDivisionError
    ("1,2,3,4,1e308,100", "image_width/image_height"),
    ("1e308,2,3,4,100,100", "beyond"),
    ("1,2,3,4,100," + "9" * 200_000, "not valid CSV"),  # a 200 k field: was a csv.Error traceback
])
def test_csv_bad_sizes_are_row_errors(tmp_path, cells, needle):
    from elvis_core.io.annotations import read_ms_cxr_csv

    p = tmp_path / "a.csv"
    p.write_text(_HEADER + f"d,Pneumonia,opacity,img.dcm,{cells}\n" + "d,Pneumonia,ok,img.dcm,1,2,3,4,100,100\n")
    aset = read_ms_cxr_csv(p)
    assert len(aset.phrases) == 1 and aset.phrases[0].label_text == "ok"
    assert needle in aset.errors[0][1]


def test_paths_outside_images_are_refused_unless_allowed(tmp_path):
    from elvis_core.io.annotations import OutsideImagesError, resolve_annotation_image

    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "in.png").write_bytes(b"x")
    assert resolve_annotation_image(root, "in.png") == root / "in.png"
    for bad in ("../secret.png", str(tmp_path / "secret.png"), "a/../../secret.png"):
        with pytest.raises(OutsideImagesError, match="outside the images folder"):
            resolve_annotation_image(root, bad)
    assert resolve_annotation_image(root, "../secret.png", allow_outside=True) == root / ".." / "secret.png"


def test_review_import_lists_outside_paths_and_goes_on(tmp_path):
    from elvis_core.review.importer import import_annotations
    from elvis_core.review.sample import write_sample_set

    ann, root = write_sample_set(tmp_path / "set", n_studies=2, seed=1, size=64)
    text = ann.read_text().splitlines()
    hdr = text[0].split(",")
    row = text[1].split(",")
    row[hdr.index("path")] = "../../../etc/hostname"
    (tmp_path / "bad.csv").write_text("\n".join([text[0], ",".join(row)] + text[2:]) + "\n")
    res = import_annotations(tmp_path / "bad.csv", root)
    assert res.items and any("outside the images folder" in p.reason for p in res.problems)


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["annotations"][0].__setitem__("image_id", [1, 2]), "not in 'images'"),
    (lambda d: d["categories"][0].__setitem__("id", {"a": 1}), "categories[0]"),
    (lambda d: d["images"][0].__setitem__("id", [1]), "images[0]"),
])
def test_coco_values_of_the_wrong_type_are_listed(tmp_path, mutate, needle):
    from elvis_core.review.importer import import_annotations

    root = tmp_path / "img"
    root.mkdir()
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "label_text": "x"}],
           "categories": [{"id": 1, "name": "Pneumonia"}]}
    mutate(doc)
    p = tmp_path / "c.json"
    p.write_text(json.dumps(doc))
    res = import_annotations(p, root)
    assert any(needle in pr.reason for pr in res.problems), [str(x) for x in res.problems]


def test_deeply_nested_coco_is_a_clean_error(tmp_path):
    from elvis_core.review.importer import import_annotations

    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AnnotationError, match="nested too deeply"):
        import_annotations(p, tmp_path)


def test_eval_reports_boxes_outside_the_image_and_goes_on(tmp_path):
    from elvis_core.grounding.evaluate import evaluate
    from elvis_core.io.annotations import read_ms_cxr_csv
    from elvis_core.review.sample import write_sample_set

    ann, root = write_sample_set(tmp_path / "set", n_studies=2, seed=3, size=64)
    lines = ann.read_text().splitlines()
    hdr = lines[0].split(",")
    row = lines[1].split(",")
    row[hdr.index("x")] = "5000"
    row[hdr.index("label_text")] = "far away"
    out = tmp_path / "e.csv"
    out.write_text("\n".join(lines + [",".join(row)]) + "\n")

    class Engine:  # a stand-in that returns a constant map: only the batch behaviour is under test
        def set_image(self, rad):
            self.shape = rad.shape

        def ground_many(self, phrases):
            from elvis_core.grounding.types import GroundingMap

            return [_const_map(self.shape) for _ in phrases]

    res = evaluate(Engine(), read_ms_cxr_csv(out), root)
    assert res.n_evaluated == len(read_ms_cxr_csv(ann).phrases)  # every other phrase still scored
    assert [t for _p, t, _m in res.unscored] == ["far away"]
    assert "outside the" in res.unscored[0][2] and res.n_not_scored == 1
    assert "phrases not scored: 1" in res.table()


def _const_map(shape):
    class M:
        warnings: list = []

        def to_image(self):
            m = np.zeros(shape, np.float32)
            m[: shape[0] // 2] = 0.5
            return m

    return M()


# --------------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    import torch

    from elvis_core.model.checkpoint import save_checkpoint
    from elvis_core.model.config import preset
    from elvis_core.model.elvis import build_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(build_model(preset("tiny"), texts=["no effusion", "left lower lobe opacity"] * 5), d)
    return d


def _copy_ckpt(src, dst, edit=None):
    import shutil

    shutil.copytree(src, dst)
    if edit:
        cfg = json.loads((dst / "config.json").read_text())
        edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c.__setitem__("format_version", None), "format_version must be an integer"),
    (lambda c: c["model"]["text"]["hf_config"].__setitem__("num_attention_heads", 0), "num_attention_heads is 0"),
    (lambda c: c["model"]["image"]["resnet"].__setitem__("depths", []), "depths has 0 entries"),
    (lambda c: c["model"]["text"]["hf_config"].__setitem__("num_hidden_layers", 10**6), "num_hidden_layers"),
    (lambda c: c["model"]["preprocessing"].__setitem__("size", 65536), "preprocessing.size is 65536"),
    (lambda c: c["model"]["text"]["hf_config"].__setitem__("hidden_size", "x"), "hidden_size must be an integer"),
    (lambda c: c["model"]["preprocessing"].__setitem__("mean", {}), "preprocessing.mean must be a finite number"),
    (lambda c: c["model"]["text"]["hf_config"].__setitem__("pad_token_id", [0]), "cannot be built"),  # fuzz 407
    (lambda c: c["model"]["text"]["hf_config"].__setitem__("intermediate_size", 200000),
     "model.safetensors holds only"),  # a config much larger than its weights
    # a finer grid from the same weights: activation memory grows 4x per dilated stage, so the grid is bounded
    (lambda c: (c["model"]["image"].__setitem__("dilate_stages", 2), c["model"]["preprocessing"].__setitem__(
        "size", 2048)), "patch grid"),
    (lambda c: c["model"]["image"].__setitem__("dilate_stages", 9), "dilate_stages is 9"),
])
def test_checkpoint_config_limits_before_building(tmp_path, tiny_ckpt, edit, needle):
    from elvis_core.model.checkpoint import load_checkpoint

    d = _copy_ckpt(tiny_ckpt, tmp_path / "c", edit)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(d)
    assert needle in str(exc.value)


def test_nan_weights_are_refused(tmp_path, tiny_ckpt):
    from safetensors.torch import load_file, save_file

    from elvis_core.model.checkpoint import load_checkpoint

    d = _copy_ckpt(tiny_ckpt, tmp_path / "c")
    st = load_file(str(d / "model.safetensors"))
    name = sorted(k for k, v in st.items() if v.is_floating_point())[0]
    st[name].fill_(float("nan"))
    save_file(st, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(d)


def test_huge_sigma_is_a_clean_cli_error(tmp_path, tiny_ckpt, capsys):
    from elvis_core.cli import main

    p = _dicom(tmp_path / "x.dcm")
    assert main(["ground", "--checkpoint", str(tiny_ckpt), p, "opacity", "--out", str(tmp_path / "o.png"),
                 "--sigma", "1e9"]) == 2
    assert "--sigma must be 0..64" in capsys.readouterr().err
    assert main(["ground", "--checkpoint", str(tiny_ckpt), p, "opacity", "--out", str(tmp_path / "o.png"),
                 "--sigma", "nan"]) == 2


def test_model_limits_estimate_is_close_for_the_presets():
    from elvis_core.model.config import preset
    from elvis_core.model.elvis import build_model
    from elvis_core.model.limits import estimate_parameters

    cfg = preset("tiny")
    real = sum(v.numel() for v in build_model(cfg, texts=["a b"] * 3).state_dict().values())
    est = estimate_parameters(cfg)
    assert real <= est <= 1.5 * real
    assert math.isfinite(est)


def test_elvis_error_is_the_only_error_type_for_users():
    assert issubclass(CheckpointError, ElvisError) and issubclass(AnnotationError, ElvisError)


def test_jpeg_marker_bytes_inside_a_jpeg2000_file_are_not_read_as_a_jpeg_header(tmp_path):
    """A JPEG 2000 file is checked against its SIZ header only: bytes after its codestream that look like a JPEG SOF
    claiming a 65535 x 65535 image must not get a valid file refused (only the transfer syntax's codec is parsed)."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    from elvis_core.io.dicom import read_radiograph

    src = next(p for p in sorted(Path(__file__).resolve().parents[2].glob("resources/demo/files/**/*.dcm"))
               if pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID.endswith(".4.90"))
    ds = pydicom.dcmread(src)
    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    fake_sof = b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x01\x01\x11\x00"
    ds.PixelData = encapsulate([frame + fake_sof + b"\x00"])
    out = tmp_path / "j2k_with_marker_bytes.dcm"
    ds.save_as(out, enforce_file_format=True)
    ref = read_radiograph(src)
    rg = read_radiograph(out)
    assert rg.pixels.shape == ref.pixels.shape
    assert np.array_equal(rg.pixels, ref.pixels)


def test_coco_with_a_100000_digit_number_is_a_clean_error(tmp_path):
    """json.loads raises a plain ValueError past Python's 4 300-digit integer limit (it escaped as a traceback)."""
    from elvis_core.errors import AnnotationError
    from elvis_core.review.importer import import_annotations

    p = tmp_path / "big.json"
    p.write_text('{"images": [{"id": ' + "9" * 100000 + ', "file_name": "a.png"}], "annotations": []}')
    with pytest.raises(AnnotationError) as e:
        import_annotations(p, tmp_path)
    assert "too many digits" in str(e.value) and "\n" not in str(e.value) and str(p) in str(e.value)
