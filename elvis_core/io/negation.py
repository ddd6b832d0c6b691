"""Negated and uncertain findings in report text (NegEx / pyConText style, rule-based, linear in the text length).

A grounding model maps "no pneumothorax" to the same place as "pneumothorax": the text encoder barely sees the
"no". So the viewer marks phrases the report states as absent or uncertain, and says so next to their maps.

Rules:

- **Cues** (case-insensitive, whole words, longest match first so "cannot be excluded" wins over "not"):
  *negation before* the finding ("no", "not", "without", "free of", "negative for", "absence of", "no evidence
  of", "resolution of", "clear of", …), *negation after* it ("resolved", "has cleared", "is absent", "not seen",
  "ruled out", …), *uncertainty before* ("possible", "probable", "may represent", "suspicious for", "concerning
  for", "question of", "versus", "rule out", …) and *after* ("cannot be excluded", "is not excluded", "cannot be
  ruled out", "is possible", "is suspected", …).
- **Pseudo-cues** are not cues: "no change", "no significant change", "not only", "no interval change", "without
  change", "not necessarily", "no increase/decrease" (they say nothing about the finding's presence).
- **Scope**: a forward cue covers the text after it, a backward cue the text before it, up to the sentence end
  (``.``, ``;``, ``?``, ``!``, a blank line) or a **terminator** ("but", "however", "although", "though", "except",
  "aside from", "apart from", "which", "with the exception of", "otherwise", "remains", "persists", "there is",
  "there are", "new").
- A phrase is **negated** / **uncertain** when a scope of that kind overlaps it or its own text holds a cue
  (the typed phrase "no pneumothorax"); when both kinds apply, uncertainty wins (it is the safer reading).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

NEGATED, UNCERTAIN, AFFIRMED = "negated", "uncertain", "affirmed"

_NEG_PRE = (
    "no", "not", "without", "free of", "negative for", "absence of", "absent", "no evidence of", "no signs of",
    "no sign of", "no findings of", "no finding of", "resolution of", "resolved", "clear of", "denies", "never",
    "neither", "nor", "no longer", "lack of", "no definite", "no convincing", "no radiographic evidence of",
    "ruled out", "no new",
)
_NEG_POST = (
    "resolved", "has resolved", "have resolved", "has cleared", "have cleared", "cleared", "is absent", "are absent",
    "not seen", "is not seen", "are not seen", "not present", "is not present", "are not present", "not identified",
    "not visualized", "not appreciated", "ruled out", "has been ruled out", "is gone", "are gone", "no longer seen",
    "no longer present", "not evident",
)
_UNC_PRE = (
    "possible", "possibly", "probable", "probably", "may", "might", "could", "may represent", "may reflect",
    "questionable", "question of", "suspicious for", "suspected", "suspect", "suspicion of", "concerning for",
    "concern for", "likely", "cannot exclude", "can not exclude", "cannot rule out", "can not rule out",
    "versus", "vs", "differential", "differential diagnosis", "equivocal", "rule out", "r/o", "to exclude",
    "evaluate for", "assess for", "presumed", "suggestive of", "suggests", "worrisome for", "borderline",
    "indeterminate", "could represent", "compatible with", "consistent with possible",
)
_UNC_POST = (
    "cannot be excluded", "can not be excluded", "cannot be ruled out", "can not be ruled out", "not excluded",
    "is not excluded", "are not excluded", "not ruled out", "is possible", "are possible", "is suspected",
    "are suspected", "is questionable", "is likely", "are likely", "is not entirely excluded", "may be present",
    "is probable", "not entirely excluded", "less likely", "is considered", "difficult to exclude",
)
_PSEUDO = (
    "no change", "no significant change", "no interval change", "no substantial change", "not only",
    "without change", "not necessarily", "no increase", "no decrease", "no significant interval change",
    "not change", "no other", "not significantly changed", "no further", "without interval change",
    "not been changed", "may be related to", "gram negative", "no change in", "not well",
)
_TERMINATORS = (
    "but", "however", "although", "though", "except", "aside from", "apart from", "which", "with the exception of",
    "otherwise", "remains", "remain", "persists", "persist", "there is", "there are", "new", "whereas", "while",
    "yet", "still",
)



def _cue_table():
    """Every cue, longest first: (words, kind, direction); direction "pre" covers what follows, "post" what
    precedes, "both" (a cue in both lists, e.g. "resolved") both sides; pseudo-cues and terminators come first
    among equal lengths so they shadow a shorter cue inside them."""
    table = {}
    for kind, pre, post in ((NEGATED, _NEG_PRE, _NEG_POST), (UNCERTAIN, _UNC_PRE, _UNC_POST)):
        for c in pre:
            table.setdefault(c, (kind, "pre"))
        for c in post:
            k, d = table.get(c, (kind, "post"))
            table[c] = (k, "both" if (k == kind and d == "pre") else d)
    for c in _PSEUDO:
        table[c] = ("pseudo", "none")
    for c in _TERMINATORS:
        table.setdefault(c, ("term", "none"))
    return sorted(((c, k, d) for c, (k, d) in table.items()), key=lambda t: -len(t[0]))


_CUES = _cue_table()


def _pattern(phrase: str) -> str:
    return r"\s+".join(re.escape(w) for w in phrase.split())


# one alternation, longest first (regex alternation is ordered), whole words only
_CUE_RE = re.compile(r"(?<![\w/])(?:" + "|".join(f"(?P<c{i}>{_pattern(c)})" for i, (c, _, _) in enumerate(_CUES))
                     + r")(?![\w/])", re.IGNORECASE)
_SENT_END_RE = re.compile(r"[.;!?](?=\s|$)|\n[ \t]*\n")


@dataclass(frozen=True)
class Scope:
    """A cue and the text it covers; all offsets are half-open into the text given."""

    kind: str  # NEGATED | UNCERTAIN
    cue: str
    cue_start: int
    cue_end: int
    start: int
    end: int


@dataclass(frozen=True)
class Assertion:
    kind: str  # NEGATED | UNCERTAIN | AFFIRMED
    cue: str = ""
    cue_start: int = -1
    cue_end: int = -1
    source: str = "report"  # "report": read in the report; "typed": from the typed phrase's own words

    @property
    def marked(self) -> bool:
        return self.kind != AFFIRMED

    def label(self) -> str:
        """Short text for captions and exports: "" when affirmed; says where the cue was read (a typed phrase
        that is not in the report is "NEGATED (typed …)", never "in the report")."""
        if self.kind not in (NEGATED, UNCERTAIN):
            return ""
        kind = self.kind.upper()
        if self.source == "typed":
            return f"{kind} (typed: “{self.cue}”)" if self.cue else f"{kind} (typed)"
        return f"{kind} in the report (“{self.cue}”)" if self.cue else f"{kind} in the report"


def _sentences(text: str, start: int, end: int):
    """(start, end) clauses of text[start:end], split at sentence ends (linear)."""
    pos = start
    for m in _SENT_END_RE.finditer(text, start, end):
        yield pos, m.start()
        pos = m.end()
    if pos < end:
        yield pos, end


def cue_scopes(text: str, start: int = 0, end: Optional[int] = None) -> List[Scope]:
    """Every negation / uncertainty scope in ``text[start:end]`` (linear time: one regex pass per sentence)."""
    end = len(text) if end is None else min(end, len(text))
    out: List[Scope] = []
    for s0, s1 in _sentences(text, start, end):
        hits = []
        for m in _CUE_RE.finditer(text, s0, s1):
            idx = int(m.lastgroup[1:])
            cue, kind, direction = _CUES[idx]
            hits.append((m.start(), m.end(), cue, kind, direction))
        stops = [h for h in hits if h[3] in ("term",)]
        for i, (c0, c1, cue, kind, direction) in enumerate(hits):
            if kind not in (NEGATED, UNCERTAIN):
                continue
            nxt = [t0 for t0, *_ in stops if t0 >= c1]
            prv = [t1 for _t0, t1, *_ in stops if t1 <= c0]
            lo = max(prv) if prv else s0
            hi = min(nxt) if nxt else s1
            if direction == "pre":
                lo = c1
            elif direction == "post":
                hi = c0
            out.append(Scope(kind, text[c0:c1], c0, c1, lo, hi))
    return out


def assertion_of(text: str, start: int = 0, end: Optional[int] = None, scopes: Optional[List[Scope]] = None
                 ) -> Assertion:
    """How ``text`` states the finding at ``text[start:end]``: negated, uncertain or affirmed.

    Only the sentence(s) around the span are looked at; ``scopes`` (from :func:`cue_scopes` on the whole text) can be
    passed to reuse them across many phrases."""
    end = len(text) if end is None else end
    if scopes is None:
        # the enclosing sentences only
        s0 = max((m.end() for m in _SENT_END_RE.finditer(text, 0, start)), default=0)
        m1 = _SENT_END_RE.search(text, end)
        scopes = cue_scopes(text, s0, m1.start() if m1 else len(text))
    found = {}
    for sc in scopes:
        cue_inside = sc.cue_start >= start and sc.cue_end <= end
        overlaps = sc.start < end and sc.end > start and (sc.end - sc.start) > 0
        if cue_inside or overlaps:
            found.setdefault(sc.kind, sc)
    for kind in (UNCERTAIN, NEGATED):
        if kind in found:
            sc = found[kind]
            return Assertion(kind, sc.cue, sc.cue_start, sc.cue_end)
    return Assertion(AFFIRMED)


def phrase_assertion(phrase: str, report_text: Optional[str] = None) -> Assertion:
    """The assertion of a phrase: where it occurs in ``report_text`` (first occurrence, whitespace-tolerant), else
    from the phrase's own words ("no pneumothorax" typed by the user is negated)."""
    if report_text:
        words = phrase.split()
        if words:
            m = re.compile(_pattern(" ".join(words)), re.IGNORECASE).search(report_text)
            if m:
                return assertion_of(report_text, m.start(), m.end())
    import dataclasses

    return dataclasses.replace(assertion_of(phrase, 0, len(phrase)), source="typed")


#: words of a phrase that do not name the finding (a pinned phrase is checked against a new report by its others)
_MODIFIERS = frozenset("""a an the of in on at to and or with without is are there this that mild mildly moderate
moderately severe small large tiny trace minimal minor slight slightly new old left right bilateral both upper lower
middle mid basal base apical apex perihilar lobe lobar zone zones side sided focal diffuse patchy subtle likely
possible probable some area areas region regions increased decreased improved worsening worsened stable unchanged
interval""".split())


def pinned_phrase_assertion(phrase: str, report_text: Optional[str] = None) -> Assertion:
    """The assertion of a phrase carried (pinned) from another study onto ``report_text``: where the phrase occurs
    verbatim, there; else where the report speaks of the finding the phrase names ("Mild bilateral perihilar
    edema" on a report saying "No evidence of pulmonary edema" is NEGATED, cue "No evidence of"); else the phrase's
    own words. A finding word every mention of which the report negates (or doubts) marks the phrase."""
    own = phrase_assertion(phrase, report_text)
    if not report_text or own.marked:
        return own
    if re.search(_pattern(" ".join(phrase.split())), report_text, re.IGNORECASE):
        return own  # found verbatim and affirmed there
    scopes = cue_scopes(report_text)
    # what the report found, not why it was asked (INDICATION: "?edema") nor what it compared with
    headers = [(m.start(), m.group(1).strip().upper()) for m in _HEADER_RE.finditer(report_text)]

    def reading(pos: int) -> bool:
        before = [h for p, h in headers if p <= pos]
        return not before or before[-1] not in _NOT_READING

    for word in (w for w in re.findall(r"[a-z]+", phrase.lower()) if len(w) > 3 and w not in _MODIFIERS):
        stem = word[:-1] if word.endswith("s") else word
        found = [assertion_of(report_text, m.start(), m.end(), scopes)
                 for m in re.finditer(r"(?<!\w)" + re.escape(stem) + r"\w{0,3}", report_text, re.IGNORECASE)
                 if reading(m.start())]
        if found and all(a.marked for a in found):
            return found[0]
    return own


_HEADER_RE = re.compile(r"^[ \t]*([A-Z][A-Z /&-]{2,40}):", re.MULTILINE)
_NOT_READING = frozenset({"INDICATION", "HISTORY", "CLINICAL HISTORY", "COMPARISON", "EXAMINATION", "TECHNIQUE",
                          "REASON FOR EXAMINATION", "REASON FOR EXAM", "CLINICAL INFORMATION", "NOTIFICATION"})
