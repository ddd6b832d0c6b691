"""A phrase pinned on one study and carried to the next is checked against the NEW report: the finding it names is
marked when the new report negates or doubts every mention of it in what it found (not in why it was asked)."""

from elvis_core.io.negation import pinned_phrase_assertion

NEW = ("INDICATION:  ___ woman with weakness, ?edema\n\nFINDINGS:\n\n No evidence of pulmonary edema.  No pleural\n"
       " effusions are seen.  Findings are suspicious for airspace consolidation.\n\nIMPRESSION:\n\n Mild "
       "cardiomegaly.\n")


def test_the_new_report_negates_the_carried_finding():
    a = pinned_phrase_assertion("Mild bilateral perihilar edema", NEW)  # the question in INDICATION does not count
    assert a.kind == "negated" and a.cue == "No evidence of"
    assert pinned_phrase_assertion("small pleural effusions", NEW).kind == "negated"
    assert pinned_phrase_assertion("right lower lobe consolidation", NEW).kind == "uncertain"


def test_affirmed_or_absent_findings_are_not_marked():
    assert pinned_phrase_assertion("mild cardiomegaly", NEW).kind == "affirmed"  # verbatim and affirmed
    assert pinned_phrase_assertion("perihilar edema", "INDICATION: no edema?\nFINDINGS: Moderate edema.").kind == "affirmed"
    assert pinned_phrase_assertion("pneumothorax", NEW).kind == "affirmed"  # not mentioned: its own words
    assert pinned_phrase_assertion("no pneumothorax", NEW).kind == "negated"  # its own words say so
    assert pinned_phrase_assertion("edema", None).kind == "affirmed"
