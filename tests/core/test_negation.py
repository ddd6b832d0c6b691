"""Negated and uncertain findings in report text (elvis_core.io.negation)."""

import time

import pytest

from elvis_core.io.negation import AFFIRMED, NEGATED, UNCERTAIN, assertion_of, cue_scopes, phrase_assertion
from elvis_core.io.report import parse_report

REPORT = """FINDINGS:
No focal consolidation, pleural effusion or pneumothorax. Mild cardiomegaly.
Possible left basal atelectasis. Pneumonia cannot be excluded. The right effusion has resolved.
No change in the right apical nodule, but a new left effusion is seen. Lungs are free of
consolidation. There is no evidence of pulmonary edema. Atelectasis versus scarring at the left base.

IMPRESSION:
1. Small left pleural effusion.
2. No pneumothorax.
"""


@pytest.mark.parametrize("phrase, kind, cue", [
    ("pneumothorax", NEGATED, "No"),
    ("pleural effusion or", NEGATED, "No"),
    ("Mild cardiomegaly", AFFIRMED, ""),
    ("left basal atelectasis", UNCERTAIN, "Possible"),
    ("Pneumonia", UNCERTAIN, "cannot be excluded"),
    ("right effusion", NEGATED, "has resolved"),
    ("right apical nodule", AFFIRMED, ""),  # "no change" is a pseudo-negation
    ("new left effusion", AFFIRMED, ""),  # "but" ends the scope
    ("pulmonary edema", NEGATED, "no evidence of"),
    ("scarring", UNCERTAIN, "versus"),
    ("Small left pleural effusion", AFFIRMED, ""),
])
def test_report_phrases(phrase, kind, cue):
    a = phrase_assertion(phrase, REPORT)
    assert a.kind == kind, (phrase, a)
    if cue:
        assert a.cue.lower().split() == cue.lower().split()
        assert REPORT[a.cue_start:a.cue_end] == a.cue


def test_wrapped_line_and_free_of():
    # "free of\nconsolidation" spans a line break (MIMIC wraps at 79 columns)
    start = REPORT.index("consolidation. There")
    assert assertion_of(REPORT, start, start + len("consolidation")).kind == NEGATED


def test_typed_phrases_without_a_report():
    assert phrase_assertion("no pneumothorax").kind == NEGATED
    assert phrase_assertion("pneumothorax").kind == AFFIRMED
    assert phrase_assertion("without effusion").kind == NEGATED
    assert phrase_assertion("possible consolidation").kind == UNCERTAIN
    assert phrase_assertion("no change in the nodule").kind == AFFIRMED
    assert phrase_assertion("knot").kind == AFFIRMED  # whole words only ("not" inside "knot" is no cue)


def test_scopes_do_not_cross_sentences():
    text = "No effusion. Large pneumothorax on the right."
    i = text.index("Large")
    assert assertion_of(text, i, i + len("Large pneumothorax")).kind == AFFIRMED
    scopes = cue_scopes(text)
    assert [(s.kind, s.cue) for s in scopes] == [(NEGATED, "No")]
    assert text[scopes[0].start:scopes[0].end].strip() == "effusion"


def test_impression_list_items():
    rep = parse_report(REPORT)
    s = rep.find("No pneumothorax")
    assert assertion_of(rep.text, *s).kind == NEGATED


def test_linear_time_on_a_long_report():
    long = ("No effusion, but mild edema. " * 4000)
    t = time.perf_counter()
    scopes = cue_scopes(long)
    assert time.perf_counter() - t < 2.0 and len(scopes) == 4000
