"""MIMIC-CXR-like free-text reports for phantom studies.

Sections EXAMINATION, INDICATION, (TECHNIQUE,) COMPARISON, FINDINGS, IMPRESSION; lines wrapped at 79 columns with a
leading space as in MIMIC-CXR; ``___`` for removed identifiers. Positive findings name side, zone and size (the only
text hints to where a box is); absent categories may get negatives ("No pneumothorax."); some sentences hedge; each
finding is mentioned in FINDINGS and again in IMPRESSION. Side-specific negatives teach laterality and negation:
a one-sided finding often gets the opposite side denied ("Small right pleural effusion.  No left pleural
effusion."), and an absent pneumothorax or effusion is sometimes denied for one side only ("No left pneumothorax."). A finding's phrase never wraps across lines, so its
``label_text`` occurs verbatim in the report text.
"""

from __future__ import annotations

import textwrap
from typing import List, Sequence

import numpy as np

from elvis_core.phantom.findings import Finding

WRAP = 79
_NBSP = "\u00a0"  # textwrap only breaks at ASCII whitespace: phrases are kept on one line


def _c(rng, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _loc(rng, side: str, zone: str) -> tuple[str, str]:
    """(adjectival, prepositional) location expressions for a side and zone."""
    if zone == "apical":
        return _c(rng, [f"{side} apical"]), _c(rng, [f"at the {side} apex", f"in the {side} apex",
                                                    f"at the {side} lung apex"])
    if zone == "upper":
        z = _c(rng, ["upper lobe", "upper zone", "upper lung"])
        return f"{side} {z}", _c(rng, [f"in the {side} {z}", f"within the {side} {z}"])
    if zone == "middle":
        zs = ["mid lung", "mid zone", "middle lobe"] if side == "right" else ["mid lung", "mid zone", "lingular"]
        z = _c(rng, zs)
        if z == "lingular":
            return "left lingular", _c(rng, ["in the lingula", "in the left lingula"])
        return f"{side} {z}", _c(rng, [f"in the {side} {z}", f"within the {side} {z}"])
    if zone == "lower":
        z = _c(rng, ["lower lobe", "lower zone", "lower lung"])
        return f"{side} {z}", _c(rng, [f"in the {side} {z}", f"within the {side} {z}", f"at the {side} {z}"])
    if zone == "basal":
        return f"{side} basilar", _c(rng, [f"at the {side} lung base", f"at the {side} base",
                                           f"in the {side} base"])
    if zone == "retrocardiac":
        return _c(rng, ["retrocardiac", "left retrocardiac"]), _c(rng, ["in the retrocardiac region",
                                                                       "behind the heart"])
    if zone == "perihilar":
        return f"{side} perihilar", _c(rng, [f"in the {side} perihilar region", f"in the {side} hilar region"])
    raise ValueError(zone)


_OPACITY_NOUNS = {
    "Atelectasis": ["atelectasis", "subsegmental atelectasis", "plate-like atelectasis", "linear atelectasis",
                    "minor atelectasis"],
    "Consolidation": ["consolidation", "airspace consolidation", "focal consolidation", "dense consolidation"],
    "Lung Opacity": ["opacity", "opacification", "airspace opacity", "hazy opacity", "patchy opacity",
                     "ill-defined opacity"],
    "Pneumonia": ["pneumonia", "opacity concerning for pneumonia", "consolidation compatible with pneumonia",
                  "airspace disease consistent with pneumonia"],
}
_SIZE_OPACITY = {"small": ["small", "small", "minimal"], "moderate": ["moderate", "moderate-sized"],
                 "large": ["large", "extensive"]}
_SEVERITY = {"small": ["mild", "mild"], "moderate": ["moderate"], "large": ["severe", "marked"]}
_SEVERITY_ADV = {"small": "mildly", "moderate": "moderately", "large": "markedly"}


MAX_PHRASE = 60


def phrase_for(rng: np.random.Generator, f: Finding) -> str:
    """One noun phrase naming the finding (lower case; the caller capitalises at a sentence start), at most
    ``MAX_PHRASE`` characters so that it always fits on one wrapped line with its sentence punctuation."""
    for _ in range(50):
        p = _phrase_once(rng, f)
        if len(p) <= MAX_PHRASE:
            return p
    raise AssertionError(f"no phrase of <= {MAX_PHRASE} characters for {f}")


def _phrase_once(rng: np.random.Generator, f: Finding) -> str:
    cat, side, zone, size = f.category, f.side, f.zone, f.size
    if cat in _V2_NOUNS or not f.located:  # generator v2 only: v1 never draws these (its random stream is unchanged)
        return _phrase_v2(rng, f)
    if cat in _OPACITY_NOUNS:
        noun = _c(rng, _OPACITY_NOUNS[cat])
        adj, pp = _loc(rng, side, zone)
        sz = _c(rng, _SIZE_OPACITY[size]) + " " if rng.random() < 0.5 else ""
        form = int(rng.integers(3))
        if form == 0:
            return f"{sz}{adj} {noun}"
        if form == 1:
            return f"{sz}{noun} {pp}"
        return f"{adj} {noun}" if not sz else f"{sz}{noun} {pp}"
    if cat == "Pleural Effusion":
        sz = _c(rng, {"small": ["small", "small", "trace"], "moderate": ["moderate", "moderate-sized"],
                      "large": ["large", "large"]}[size])
        if side == "bilateral":
            return _c(rng, [f"{sz} bilateral pleural effusions", f"bilateral {sz} pleural effusions",
                            "bilateral pleural effusions", f"{sz} pleural effusions bilaterally"])
        opts = [f"{sz} {side} pleural effusion", f"{sz} {side} effusion", f"{side} pleural effusion",
                f"{sz} {side}-sided pleural effusion", f"{sz} {side} basilar pleural effusion"]
        if size == "small":
            opts.append(f"blunting of the {side} costophrenic angle")
        return _c(rng, opts)
    if cat == "Pneumothorax":
        sz = _c(rng, {"small": ["small", "tiny", "small"], "moderate": ["moderate", "moderate-sized"],
                      "large": ["large", "large"]}[size])
        return _c(rng, [f"{sz} {side} apical pneumothorax", f"{sz} {side} pneumothorax", f"{side} apical pneumothorax",
                        f"{sz} {side}-sided pneumothorax", f"{sz} pneumothorax at the {side} apex"])
    if cat == "Edema":
        sev = _c(rng, _SEVERITY[size])
        return _c(rng, [f"{sev} pulmonary edema", f"{sev} perihilar edema", f"{sev} interstitial edema",
                        f"{sev} bilateral perihilar edema", "pulmonary edema",
                        f"bilateral perihilar opacities consistent with {sev} pulmonary edema"])
    if cat == "Cardiomegaly":
        sev = _c(rng, _SEVERITY[size])
        return _c(rng, [f"{sev} cardiomegaly", "cardiomegaly", "enlarged cardiac silhouette",
                        f"{sev} enlargement of the cardiac silhouette", f"{_SEVERITY_ADV[size]} enlarged heart"])
    raise ValueError(cat)


_V2_NOUNS = {"Nodule": ["nodule", "pulmonary nodule", "nodular opacity", "rounded nodule", "well-defined nodule"],
             "Mass": ["mass", "pulmonary mass", "mass-like opacity", "lobulated mass"]}
_V2_SIZE = {"Nodule": {"small": ["small", "6 mm", "8 mm"], "moderate": ["1 cm", "12 mm"],
                       "large": ["large", "2 cm"]},
            "Mass": {"small": ["3 cm"], "moderate": ["4 cm", "moderate-sized"], "large": ["large", "6 cm"]}}


def _phrase_v2(rng: np.random.Generator, f: Finding) -> str:
    """Phrases of generator v2: nodules and masses, and findings named without any location word."""
    if f.category in _V2_NOUNS:
        noun = _c(rng, _V2_NOUNS[f.category])
        sz = _c(rng, _V2_SIZE[f.category][f.size]) + " " if rng.random() < 0.6 else ""
    else:
        noun = _c(rng, _OPACITY_NOUNS[f.category])
        sz = _c(rng, _SIZE_OPACITY[f.size]) + " " if rng.random() < 0.5 else ""
    if not f.located:
        return f"{sz}{noun}"
    adj, pp = _loc(rng, f.side, f.zone)
    return f"{sz}{adj} {noun}" if rng.random() < 0.5 else f"{sz}{noun} {pp}"


_POSITIVE = ["There is {p}.", "{P} is seen.", "{P} is present.", "{P} is noted.", "{P} is again demonstrated.",
             "New {p}.", "Interval development of {p}.", "Redemonstration of {p}.", "Findings include {p}.",
             "{P} is unchanged from the prior study.", "There is {p}, new since the prior exam.", "{P}."]
_HEDGED = ["Possible {p}.", "Probable {p}.", "There may be {p}.", "{P} is likely present.",
           "{P} cannot be excluded.", "Findings are suspicious for {p}.", "There is likely {p}."]
_IMPRESSION = ["{P}.", "{P}.", "{P}.", "Interval development of {p}.", "Findings consistent with {p}.",
               "{P}, as above."]

_NEG = {
    "Pneumothorax": ["No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax.",
                     "No pneumothorax is seen."],
    "Pleural Effusion": ["No pleural effusion.", "There is no pleural effusion.", "No large pleural effusion.",
                         "No pleural effusions are seen."],
    "Consolidation": ["No focal consolidation.", "There is no focal consolidation.",
                      "No focal consolidation to suggest pneumonia."],
    "Edema": ["No pulmonary edema.", "There is no pulmonary vascular congestion or edema.",
              "No evidence of pulmonary edema."],
    "Cardiomegaly": ["Heart size is normal.", "The cardiac silhouette is within normal limits.",
                     "Normal heart size.", "The heart is normal in size."],
}
#: category -> templates denying it on one side ({o}: "right" / "left"); used for the side opposite a one-sided finding
_NEG_SIDE = {
    "Pneumothorax": ["No {o} pneumothorax.", "No {o}-sided pneumothorax.", "There is no {o} pneumothorax."],
    "Pleural Effusion": ["No {o} pleural effusion.", "No {o} effusion.", "There is no {o} pleural effusion.",
                         "The {o} costophrenic angle is sharp."],
    "Consolidation": ["No {o} consolidation.", "No consolidation in the {o} lung.", "The {o} lung is clear."],
    "Pneumonia": ["No {o} pneumonia.", "No {o}-sided pneumonia.", "The {o} lung is clear."],
    "Atelectasis": ["No {o} atelectasis.", "The {o} lung is clear."],
    "Lung Opacity": ["No {o} opacity.", "No opacity in the {o} lung.", "The {o} lung is clear."],
}
_NORMAL_LUNGS = ["The lungs are clear.", "Lungs are well expanded and clear.", "The lungs are clear bilaterally.",
                 "Lungs are clear without focal consolidation."]
_OTHER = ["The mediastinal contours are normal.", "Hilar contours are unremarkable.",
          "No acute osseous abnormalities.", "Osseous structures are intact.",
          "Mild degenerative changes are noted in the thoracic spine.", "The mediastinal and hilar contours are "
          "within normal limits.", "Mediastinal contours are stable.", "There is no free air below the diaphragm.",
          "Surgical clips are noted in the upper abdomen."]
_INDICATION = ["___-year-old {sex} with {sx}.  Evaluate for {q}.", "History: ___{s1} with {sx}",
               "___ {sex} with {sx}, ?{q}", "{sx}.  Assess for {q}.", "___-year-old {sex} with {sx}.",
               "___{s1} with {sx}  // ?{q}"]
_SYMPTOMS = ["cough", "shortness of breath", "fever", "chest pain", "hypoxia", "dyspnea", "weakness",
             "productive cough and fever", "increasing oxygen requirement", "tachypnea", "fall"]
_QUESTIONS = ["pneumonia", "acute process", "effusion", "edema", "pneumothorax", "infiltrate",
              "acute cardiopulmonary process"]


def _wrap(paragraph: str) -> List[str]:
    return [ln.replace(_NBSP, " ") for ln in textwrap.wrap(
        paragraph, width=WRAP, initial_indent=" ", subsequent_indent=" ", break_long_words=False,
        break_on_hyphens=False)]


def _protect(p: str) -> str:
    return p.replace(" ", _NBSP)


_NEG_V2 = {"Nodule": ["No suspicious pulmonary nodules.", "No pulmonary nodules are seen."],
           "Mass": ["No lung mass is identified.", "No mass."]}


def write_report(rng: np.random.Generator, findings: List[Finding], view: str = "PA", sex: str = "F",
                 extra: Sequence[str] = (), version: int = 1) -> str:
    """Build the report text and set ``label_text`` on every finding (exact substring of the returned text).

    ``extra``: sentences added to FINDINGS (support devices); ``version`` 2 may also deny absent nodules/masses.
    """
    present = {f.category for f in findings}
    # FINDINGS: one sentence per finding (some hedged), negatives for absent categories, a few normal statements
    sentences: List[str] = []
    impression: List[str] = []
    for f in findings:
        p1 = phrase_for(rng, f)
        p2 = phrase_for(rng, f)
        tpl = _c(rng, _HEDGED if rng.random() < 0.2 else _POSITIVE)
        starts = tpl.startswith("{P}")
        shown1 = _cap(p1) if starts else p1
        sentences.append(tpl.replace("{P}", _protect(shown1)).replace("{p}", _protect(shown1)))
        tpl2 = _c(rng, _IMPRESSION)
        shown2 = _cap(p2) if tpl2.startswith("{P}") else p2
        impression.append(tpl2.replace("{P}", _protect(shown2)).replace("{p}", _protect(shown2)))
        f.label_text = shown1 if rng.random() < 0.75 else shown2
        f.mentions = [shown1, shown2]
    lung_findings = present - {"Cardiomegaly"}
    negs: List[str] = []
    if not lung_findings and rng.random() < 0.8:
        negs.append(_c(rng, _NORMAL_LUNGS))
    absent = [c for c in _NEG if c not in present and not (c == "Consolidation" and "Pneumonia" in present)]
    if {"Consolidation", "Pleural Effusion", "Pneumothorax"} <= set(absent) and rng.random() < 0.5:
        negs.append("No focal consolidation, pleural effusion, or pneumothorax.")
        absent = [c for c in absent if c not in ("Consolidation", "Pleural Effusion", "Pneumothorax")]
    for c in absent:
        if rng.random() < 0.6:
            if c in ("Pneumothorax", "Pleural Effusion") and rng.random() < 0.3:
                negs.append(_c(rng, _NEG_SIDE[c]).format(o=_c(rng, ["right", "left"])))
            else:
                negs.append(_c(rng, _NEG[c]))
    for f in findings:  # deny the finding on the other side
        if f.side in ("right", "left") and f.category in _NEG_SIDE and rng.random() < 0.5:
            other = "left" if f.side == "right" else "right"
            neg = _c(rng, _NEG_SIDE[f.category]).format(o=other)
            if ("clear" in neg or version >= 2) and any(g.side in (other, "bilateral") and
                                                       g.category != "Cardiomegaly" for g in findings):
                continue  # that lung is not clear (v2: nothing is denied on a side that has a finding)
            if neg not in negs:
                negs.append(neg)
    if version >= 2:
        for c, opts in _NEG_V2.items():
            if c not in present and rng.random() < 0.3:
                negs.append(_c(rng, opts))
    negs.extend(extra)
    for _ in range(int(rng.integers(0, 3))):
        o = _c(rng, _OTHER)
        if o not in negs:
            negs.append(o)
    body = sentences + negs
    order = rng.permutation(len(body))
    findings_text = "  ".join(body[i] for i in order) if body else "No acute findings."
    if not findings:
        imp = _c(rng, ["No acute cardiopulmonary process.", "No acute intrathoracic abnormality.",
                       "No evidence of acute disease.", "Normal chest radiograph."])
        imp_lines = _wrap(imp)
    else:
        imp_order = rng.permutation(len(impression))
        if len(impression) > 1 and rng.random() < 0.5:
            imp_lines = []
            for k, i in enumerate(imp_order):
                imp_lines += _wrap(f"{k + 1}. {impression[i]}")
        else:
            imp_lines = _wrap("  ".join(impression[i] for i in imp_order))

    sx = _c(rng, _SYMPTOMS)
    indication = _c(rng, _INDICATION).format(sex="woman" if sex == "F" else "man", s1=sex, sx=sx,
                                              q=_c(rng, _QUESTIONS))
    exam = _c(rng, ["CHEST (PA AND LAT)", "CHEST (PA AND LAT)", "CHEST PA AND LATERAL", "CHEST (PA ONLY)"]) \
        if view == "PA" else _c(rng, ["CHEST (PORTABLE AP)", "PORTABLE CHEST"])
    comparison = _c(rng, ["___.", "None.", "Chest radiograph from ___.", "Prior chest radiographs from ___ and ___.",
                          "___ chest radiograph."])
    lines = ["                                 FINAL REPORT"]
    lines += _wrap(f"EXAMINATION:  {exam}") + [" "]
    lines += _wrap(f"INDICATION:  {indication}") + [" "]
    if rng.random() < 0.4:
        tech = "PA and lateral views of the chest." if view == "PA" else "Portable AP view of the chest."
        lines += _wrap(f"TECHNIQUE:  {tech}") + [" "]
    lines += _wrap(f"COMPARISON:  {comparison}") + [" "]
    lines += [" FINDINGS:", " "] + _wrap(findings_text) + [" "]
    lines += [" IMPRESSION:", " "] + imp_lines
    text = "\n".join(lines) + "\n"
    for f in findings:
        if f.label_text not in text:  # defensive: must never happen (phrases are protected from wrapping)
            raise AssertionError(f"phrase not verbatim in report: {f.label_text!r}")
    return text
