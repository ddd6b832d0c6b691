"""parse_report / read_report: sections and sentence spans on MIMIC-CXR-style text, and bad report files."""

import pytest

from elvis_core.errors import ReportReadError
from elvis_core.io.report import parse_report, read_report

MIMIC = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___F with cough, e.g. productive, r/o pna.  Temp 38.5 C.
 
 TECHNIQUE:  Chest PA and lateral
 
 COMPARISON:  ___.
 
 FINDINGS: 
 
 There is a 3.5 cm opacity in the right lower lobe, approximately 2 cm from the
 right hilum.  No pleural effusion or pneumothorax is seen.  Heart size is
 normal.  Dr. ___ was notified of the findings at 3 p.m. on ___.
 
 IMPRESSION: 
 
 1. Right lower lobe pneumonia.
 2. No effusion
"""


def _texts(rep, section=None):
    return [rep.text[s.start:s.end] for s in rep.sentences if section is None or s.section == section]


def test_sections_and_header_spans():
    rep = parse_report(MIMIC)
    names = [s.name for s in rep.sections]
    assert names == ["", "EXAMINATION", "INDICATION", "TECHNIQUE", "COMPARISON", "FINDINGS", "IMPRESSION"]
    for s in rep.sections[1:]:
        assert MIMIC[s.header_start:s.header_end] == s.name + ":"
    assert MIMIC[rep.section("examination").start:rep.section("examination").end] == "CHEST (PA AND LAT)"
    assert rep.section("").header_start == rep.section("").header_end  # no header for the title part
    assert MIMIC[rep.sections[0].start:rep.sections[0].end] == "FINAL REPORT"


def test_sentences_exact_spans_and_never_cross_sections():
    rep = parse_report(MIMIC)
    assert rep.text is MIMIC
    bodies = {s.name: (s.start, s.end) for s in rep.sections}
    for s in rep.sentences:
        a, b = bodies[s.section]
        assert a <= s.start < s.end <= b
        t = MIMIC[s.start:s.end]
        assert t == t.strip() and t
    starts = [s.start for s in rep.sentences]
    assert starts == sorted(starts)


def test_decimals_abbreviations_and_placeholders_do_not_split():
    rep = parse_report(MIMIC)
    assert _texts(rep, "INDICATION") == ["___F with cough, e.g. productive, r/o pna.", "Temp 38.5 C."]
    assert _texts(rep, "COMPARISON") == ["___."]
    findings = _texts(rep, "FINDINGS")
    assert findings[0] == ("There is a 3.5 cm opacity in the right lower lobe, approximately 2 cm from the\n"
                           " right hilum.")  # a wrapped line stays one sentence, newline kept in the span
    assert findings[1] == "No pleural effusion or pneumothorax is seen."
    assert findings[2] == "Heart size is\n normal."
    assert findings[3] == "Dr. ___ was notified of the findings at 3 p.m. on ___."
    assert len(findings) == 4


def test_numbered_list_items_are_sentences_without_marker():
    rep = parse_report(MIMIC)
    assert _texts(rep, "IMPRESSION") == ["Right lower lobe pneumonia.", "No effusion"]
    inline = parse_report("IMPRESSION: 1. Small effusion. 2. No pneumothorax\n")
    assert _texts(inline) == ["Small effusion.", "No pneumothorax"]
    bullets = parse_report("FINDINGS:\n- Lines and tubes unchanged\n- Lungs clear\n")
    assert _texts(bullets) == ["Lines and tubes unchanged", "Lungs clear"]


def test_report_without_headers():
    text = "Heart size normal. Lungs are clear.\n\nNo acute process"
    rep = parse_report(text)
    assert [s.name for s in rep.sections] == [""]
    assert _texts(rep) == ["Heart size normal.", "Lungs are clear.", "No acute process"]
    assert all(s.section == "" for s in rep.sentences)


def test_blank_line_ends_sentence_and_header_text_same_line():
    rep = parse_report("FINDINGS: Opacity at the left base\n\nmild edema. IMPRESSION: Pneumonia.")
    # the all-caps header must start a line: a mid-line "IMPRESSION:" is text
    assert [s.name for s in rep.sections] == ["FINDINGS"]
    assert _texts(rep)[0] == "Opacity at the left base"


def test_sentence_at_and_find_through_wrapping():
    rep = parse_report(MIMIC)
    span = rep.find("approximately 2 cm from the right hilum")
    assert span is not None and "\n" in MIMIC[span[0]:span[1]]
    s = rep.sentence_at(span[0])
    assert s.section == "FINDINGS" and MIMIC[s.start:s.end].startswith("There is a 3.5 cm")


def test_read_report_utf8_latin1_bom(tmp_path):
    p = tmp_path / "s1.txt"
    p.write_bytes("FINDINGS: Opacité résolue. Rien.\n".encode("utf-8"))
    rep = read_report(p)
    assert rep.warnings == [] and _texts(rep) == ["Opacité résolue.", "Rien."]
    p.write_bytes("FINDINGS: Opacité résolue. Rien.\n".encode("latin-1"))
    rep = read_report(p)
    assert any("latin-1" in w for w in rep.warnings) and _texts(rep)[0] == "Opacité résolue."
    p.write_bytes(b"\xef\xbb\xbfIMPRESSION: Clear.")
    rep = read_report(p)
    assert rep.sections[0].name == "IMPRESSION" and rep.source_path == str(p)


def test_bad_report_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(ReportReadError, match="empty") as ei:
        read_report(empty)
    assert str(empty) in str(ei.value)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\x00\x01\x02PNG\x00" * 50)
    with pytest.raises(ReportReadError, match="binary"):
        read_report(binary)
    noise = tmp_path / "noise.txt"
    noise.write_bytes(bytes(range(1, 9)) * 100 + b"FINDINGS: x")
    with pytest.raises(ReportReadError, match="binary"):
        read_report(noise)
    with pytest.raises(ReportReadError, match="no such file"):
        read_report(tmp_path / "missing.txt")
    with pytest.raises(ReportReadError, match="folder"):
        read_report(tmp_path)
    with pytest.raises(ReportReadError, match="empty"):
        parse_report("")


def test_title_case_known_headers():
    text = "Indication: cough.\nFindings: The lungs are clear. No effusion.\nImpression: Normal chest.\nNote: text."
    rep = parse_report(text)
    assert [s.name for s in rep.sections] == ["INDICATION", "FINDINGS", "IMPRESSION"]  # "Note" is not a known name
    assert text[rep.sections[1].header_start:rep.sections[1].header_end] == "Findings:"
    assert _texts(rep, "FINDINGS") == ["The lungs are clear.", "No effusion."]
    assert _texts(rep, "IMPRESSION") == ["Normal chest.", "Note: text."]
