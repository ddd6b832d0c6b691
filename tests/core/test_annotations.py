"""MS-CXR CSV reading, grouping, rescaling, patient ids and atomic writing."""

import os

import pytest

from elvis_core.errors import AnnotationError
from elvis_core.io.annotations import (Box, patient_ids, read_ms_cxr_csv, rescale_boxes, write_ms_cxr_csv)

HEADER_V11 = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split\n"
HEADER_V10 = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
P1 = "files/p10/p10000032/s50414267/d1.jpg"
P2 = "files/p11/p11000011/s51111111/d2.jpg"


def _write(tmp_path, text, name="ms_cxr.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_v11_groups_rows_into_phrases_in_file_order(tmp_path):
    p = _write(tmp_path, HEADER_V11
               + f"d1,Pneumonia,right lower lobe opacity,{P1},10,20,30,40,2000,2500,test\n"
               + f"d2,Pleural effusion,small left effusion,{P2},1.5,2.5,3,4,1000,1000,train\n"
               + f"d1,Pneumonia,right lower lobe opacity,{P1},100,200,50,60,2000,2500,test\n")
    aset = read_ms_cxr_csv(p)
    assert aset.version == "v1.1.0"
    assert aset.errors == []
    assert [ph.label_text for ph in aset.phrases] == ["right lower lobe opacity", "small left effusion"]
    ph = aset.phrases[0]
    assert ph.key == (P1, "right lower lobe opacity")
    assert ph.boxes == [Box(10, 20, 30, 40), Box(100, 200, 50, 60)]
    assert ph.rows == [2, 4]
    assert (ph.image_width, ph.image_height, ph.split, ph.category) == (2000, 2500, "test", "Pneumonia")
    assert aset.phrases[1].boxes == [Box(1.5, 2.5, 3, 4)]
    assert [p.label_text for p in aset.filter_split("train").phrases] == ["small left effusion"]
    assert aset.categories() == ["Pneumonia", "Pleural effusion"]


def test_v10_has_no_split_and_refuses_split_filter(tmp_path):
    p = _write(tmp_path, HEADER_V10 + f"d1,Edema,edema,{P1},1,2,3,4,10,10\n")
    aset = read_ms_cxr_csv(p)
    assert aset.version == "v1.0.0"
    assert aset.phrases[0].split is None
    assert aset.filter_split(None) is aset
    with pytest.raises(AnnotationError, match="split"):
        aset.filter_split("test")


def test_missing_columns_named_with_file(tmp_path):
    p = _write(tmp_path, "dicom_id,category_name,label_text,path,x,y,image_width,image_height\n"
               f"d1,Edema,edema,{P1},1,2,10,10\n")
    with pytest.raises(AnnotationError) as ei:
        read_ms_cxr_csv(p)
    msg = str(ei.value)
    assert str(p) in msg and "w, h" in msg


def test_bad_rows_listed_with_line_numbers_rest_kept(tmp_path):
    p = _write(tmp_path, HEADER_V11
               + f"d1,Edema,ok one,{P1},1,2,3,4,10,10,test\n"          # line 2 ok
               + f"d1,Edema,bad x,{P1},abc,2,3,4,10,10,test\n"         # line 3 non-numeric
               + f"d1,Edema,neg w,{P1},1,2,-3,4,10,10,test\n"          # line 4 negative w
               + f"d1,Edema,nan h,{P1},1,2,3,nan,10,10,test\n"         # line 5 NaN
               + f"d1,Edema,short,{P1},1,2\n"                          # line 6 too few fields
               + f"d1,Edema,ok two,{P2},5,6,7,8,10,10,test\n")         # line 7 ok
    aset = read_ms_cxr_csv(p)
    assert [ph.label_text for ph in aset.phrases] == ["ok one", "ok two"]
    lines = [ln for ln, _ in aset.errors]
    assert lines == [3, 4, 5, 6]
    msgs = dict(aset.errors)
    assert "'x'" in msgs[3] and "> 0" in msgs[4] and "'h'" in msgs[5]


def test_empty_missing_binary_files(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        read_ms_cxr_csv(tmp_path / "nope.csv")
    with pytest.raises(AnnotationError, match="empty"):
        read_ms_cxr_csv(_write(tmp_path, "", "empty.csv"))
    b = tmp_path / "bin.csv"
    b.write_bytes(b"\x00\x01\x02\xff\xfe")
    with pytest.raises(AnnotationError):
        read_ms_cxr_csv(b)


def test_rescale_boxes_when_sizes_differ(tmp_path):
    p = _write(tmp_path, HEADER_V10 + f"d1,Edema,edema,{P1},100,200,50,40,1000,2000\n")
    ph = read_ms_cxr_csv(p).phrases[0]
    same, note = rescale_boxes(ph, (2000, 1000))
    assert same == [Box(100, 200, 50, 40)] and note is None
    boxes, note = rescale_boxes(ph, (500, 250))  # rows=500, cols=250 -> factor 0.25 both
    assert boxes == [Box(25, 50, 12.5, 10)]
    assert note is not None and "1000x2000" in note and "250x500" in note


def test_patient_ids_from_mimic_paths(tmp_path):
    p = _write(tmp_path, HEADER_V10 + f"d1,Edema,a,{P1},1,2,3,4,10,10\n" + f"d2,Edema,b,{P2},1,2,3,4,10,10\n"
               + "d3,Edema,c,other/x.png,1,2,3,4,10,10\n")
    assert patient_ids(read_ms_cxr_csv(p)) == {"p10000032", "p11000011"}


def test_write_roundtrip_atomic(tmp_path):
    src = _write(tmp_path, HEADER_V11 + f"d1,Pneumonia,\"opacity, right\",{P1},10.5,20,30,40,2000,2500,test\n"
                 + f"d1,Pneumonia,\"opacity, right\",{P1},1,2,3,4,2000,2500,test\n")
    aset = read_ms_cxr_csv(src)
    out = tmp_path / "out.csv"
    write_ms_cxr_csv(out, aset.phrases)
    again = read_ms_cxr_csv(out)
    assert [(p.key, p.boxes, p.split) for p in again.phrases] == [(p.key, p.boxes, p.split) for p in aset.phrases]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    # dict rows, v1.0.0 columns when no split
    out2 = tmp_path / "out2.csv"
    write_ms_cxr_csv(out2, [{"dicom_id": "d", "category_name": "c", "label_text": "l", "path": "a.png", "x": 1,
                             "y": 2, "w": 3, "h": 4, "image_width": 5, "image_height": 6}])
    assert out2.read_text().splitlines()[0] == HEADER_V10.strip()
    with pytest.raises(AnnotationError):
        write_ms_cxr_csv(tmp_path / "missing_dir" / "x.csv", [])


def test_atomic_writes_keep_normal_permissions_and_leave_no_temp_files(tmp_path):
    import os
    import stat

    from elvis_core.atomic import atomic_write_text

    target = tmp_path / "out.csv"
    atomic_write_text(target, "a\n")
    atomic_write_text(target, "b\n")
    assert target.read_text() == "b\n"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
