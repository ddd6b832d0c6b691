"""Phantom studies in memory (:func:`render_study`) and on disk in the MIMIC-CXR / MS-CXR layout (:func:`generate`).

Honesty rules (so a model must look at the image to ground a phrase):
- box positions come from the per-patient anatomy plus a random position inside the named zone;
- identifiers (patient/study numbers, dicom_id, UIDs) come from their own RNG stream, independent of the content;
- the CSV is sorted by path, i.e. by random identifiers, not by content; the boxes of a phrase in random order;
- the only text hints to a box's position are the side, zone and size words of the phrase.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from elvis_core.errors import ElvisError
from elvis_core.phantom.anatomy import Anatomy, postprocess, render_anatomy, sample_anatomy
from elvis_core.phantom.anatomy_boxes import ANATOMY_REGIONS, anatomy_boxes
from elvis_core.phantom.dicom_writer import Encoding, random_uid, sample_encoding, write_dicom
from elvis_core.phantom.findings import CATEGORIES, Finding, draw_finding, sample_finding_spec, shuffled_categories
from elvis_core.phantom.reports import write_report

CSV_COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width",
               "image_height", "split")
#: columns of ``anatomy.csv`` (one row per region and image; region names as Chest ImaGenome's ``bbox_name``)
ANATOMY_CSV_COLUMNS = ("dicom_id", "path", "bbox_name", "x", "y", "w", "h", "image_width", "image_height", "split")
MIN_SIZE, MAX_SIZE = 64, 4096
#: folder (inside the output) of the finding-free twins, at the same relative paths as the images
TWINS_DIR = "twins"
#: the generator versions (1: the original; 2: :mod:`elvis_core.phantom.v2`) and the default for new data
GENERATOR_VERSIONS = (1, 2)
GENERATOR_VERSION = 2
#: probabilities of 0, 1, 2, 3 findings per study
N_FINDINGS_P = (0.25, 0.35, 0.25, 0.15)


@dataclass
class PhantomStudy:
    """One rendered study, in memory.

    ``image`` / ``clean``: float32 (height, width) in [0, 1], higher = brighter; ``clean`` is the same patient,
    noise and exposure without any finding (``None`` when not asked for). Boxes are ``(x, y, w, h)`` in ``image``
    pixels. ``report`` is the full report text; every finding's ``label_text`` occurs in it verbatim.
    """

    image: np.ndarray
    clean: Optional[np.ndarray]
    findings: List[Finding]
    report: str
    view: str
    anatomy: Anatomy
    #: per-finding density layer on the working canvas (same order as ``findings``); for tests and debugging
    layers: List[np.ndarray] = field(default_factory=list, repr=False)
    #: anatomy region name (``ANATOMY_REGIONS``) -> (x, y, w, h) in ``image`` pixels
    anatomy_boxes: Dict[str, Tuple[int, int, int, int]] = field(default_factory=dict)
    #: report sentences of the support devices drawn on the film (generator v2; on the twin too, never boxed)
    devices: List[str] = field(default_factory=list)
    #: generator version that drew the study
    version: int = 1

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def midline_x(self) -> float:
        """x (pixels) of the patient's midline; the patient's right is at smaller x."""
        return self.anatomy.cx * self.width

    @property
    def phrases(self) -> List[Tuple[str, str, List[Tuple[int, int, int, int]]]]:
        """``(label_text, category_name, boxes)`` per finding."""
        return [(f.label_text, f.category, list(f.boxes)) for f in self.findings]


def _as_rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _choose_findings(rng: np.random.Generator, n: int, categories: Optional[Sequence[str]]) -> List[Finding]:
    order = shuffled_categories(rng, categories, CATEGORIES)
    chosen: List[Finding] = []
    used: set = set()
    for cat in order:
        if len(chosen) >= n:
            break
        if cat == "Pneumonia" and any(f.category == "Consolidation" for f in chosen):
            continue
        if cat == "Consolidation" and any(f.category == "Pneumonia" for f in chosen):
            continue
        spec = sample_finding_spec(rng, cat, used)
        if spec is None:
            continue
        side, zone, size = spec
        chosen.append(Finding(cat, side, zone, size))
        sides = ("right", "left") if side in ("bilateral", "none") else (side,)
        for s in sides:
            used.add((s, zone))
            if zone == "basal":
                used.add((s, "lower"))
            if zone == "lower":
                used.add((s, "basal"))
            if zone in ("apical", "upper"):  # a pneumothorax and an upper-zone opacity would overlap
                used.update({(s, "apical"), (s, "upper")})
    return chosen


def study_frame(rng: np.random.Generator, size: int, anatomy: Optional[Anatomy], view: Optional[str],
                n_findings: Optional[int], n_findings_p: Sequence[float]) -> Tuple[Anatomy, int, int, str, int]:
    """(anatomy, height, width, view, number of findings): the draws every generator version starts a study with,
    in this order (generator v1's byte-identical output depends on it)."""
    a = anatomy if anatomy is not None else sample_anatomy(rng)
    height = int(size)
    width = int(round(height * a.aspect / 2.0)) * 2
    if view is None:
        view = "PA" if rng.random() < 0.8 else "AP"
    if n_findings is None:
        n_findings = int(rng.choice(4, p=n_findings_p))
    if not (0 <= n_findings <= 3):
        raise ElvisError(f"a phantom study has 0-3 findings, got {n_findings}")
    if view == "AP":  # the heart is further from the detector: magnified (normal CTR up to ~0.51)
        a = dataclasses.replace(a, ctr=a.ctr * 1.08)
    return a, height, width, view, n_findings


def draw_and_expose(rng: np.random.Generator, g, a: Anatomy, findings: Sequence[Finding], draw: Callable,
                    height: int, width: int, with_clean: bool
                    ) -> Tuple[List[Finding], List[np.ndarray], np.ndarray, Optional[np.ndarray]]:
    """(kept findings, their layers, image, clean twin or None) of a ``height`` x ``width`` film: each finding drawn
    with ``draw(rng, g, f, height, width)`` on the anatomy ``g``, then one noise draw shared by film and twin."""
    layers, kept = [], []
    total = np.zeros_like(g.density)
    for f in findings:
        layer = draw(rng, g, f, height, width)
        if not f.boxes:  # nothing visible was drawn (should not happen); drop rather than lie
            continue
        kept.append(f)
        layers.append(layer)
        total += layer
    noise = rng.standard_normal((height, width), dtype=np.float32)
    density = g.density
    image = postprocess(density + total, height, width, a, noise)
    clean = postprocess(density, height, width, a, noise) if with_clean else None
    return kept, layers, image, clean


def shuffle_boxes(rng: np.random.Generator, kept: Sequence[Finding]) -> None:
    """Boxes of a phrase in random order: the drawing order (right lung first) must not tell the side."""
    for f in kept:
        f.boxes = [f.boxes[i] for i in rng.permutation(len(f.boxes))]


def render_study(rng_or_seed, size: int = 1024, anatomy: Optional[Anatomy] = None, n_findings: Optional[int] = None,
                 categories: Optional[Sequence[str]] = None, view: Optional[str] = None,
                 with_clean: bool = True, version: int = GENERATOR_VERSION) -> PhantomStudy:
    """Render one study in memory.

    ``rng_or_seed``: a ``numpy.random.Generator`` or an int seed. ``size``: image height in pixels (the width is
    ``size * anatomy.aspect``, 0.82-1.0). ``anatomy``: reuse a patient's anatomy (else sampled). ``n_findings``: 0-3
    (else random: 25 % normal studies in v1, 20 % in v2). ``categories``: restrict the finding categories.
    ``view``: "PA" or "AP". ``version``: the generator (1: the original, reproducible by seed; 2: nodules/masses,
    devices, two findings of a kind, unlocated phrases, heart-silhouette cardiomegaly boxes; :mod:`.v2`).
    """
    if not (MIN_SIZE <= int(size) <= MAX_SIZE):
        raise ElvisError(f"phantom size must be {MIN_SIZE}..{MAX_SIZE} pixels, got {size}")
    if version not in GENERATOR_VERSIONS:
        raise ElvisError(f"phantom generator version must be one of {GENERATOR_VERSIONS}, got {version!r}")
    rng = _as_rng(rng_or_seed)
    if version == 2:
        from elvis_core.phantom.v2 import render_study_v2

        return render_study_v2(rng, size, anatomy, n_findings, categories, view, with_clean)
    a, height, width, view, n_findings = study_frame(rng, size, anatomy, view, n_findings, N_FINDINGS_P)
    g = render_anatomy(a, height, width)
    findings = _choose_findings(rng, n_findings, categories)
    kept, layers, image, clean = draw_and_expose(rng, g, a, findings, draw_finding, height, width, with_clean)
    report = write_report(rng, kept, view=view, sex=a.sex)
    shuffle_boxes(rng, kept)
    return PhantomStudy(image=image, clean=clean, findings=kept, report=report, view=view, anatomy=a, layers=layers,
                        anatomy_boxes=anatomy_boxes(g, height, width))


# ------------------------------------------------------------------------------------------------------ on disk
@dataclass
class PhantomSummary:
    out_dir: str
    csv_path: str
    n_patients: int
    n_studies: int
    n_images: int
    n_phrases: int
    n_boxes: int
    n_normal: int
    category_counts: Dict[str, int]
    split_counts: Dict[str, int]  # studies per split
    syntax_counts: Dict[str, int]
    seconds: float
    version: int = 1
    n_twins: int = 0

    def lines(self) -> List[str]:
        cats = ", ".join(f"{k}: {v}" for k, v in sorted(self.category_counts.items()))
        return [f"wrote {self.n_studies} studies of {self.n_patients} patients to {self.out_dir} "
                f"in {self.seconds:.1f} s ({self.n_studies / max(self.seconds, 1e-9):.1f} studies/s)",
                f"{self.n_phrases} phrases with {self.n_boxes} boxes in {self.csv_path}; {self.n_normal} normal studies",
                f"phrases per category: {cats}",
                "studies per split: " + ", ".join(f"{k}: {v}" for k, v in self.split_counts.items()),
                "transfer syntaxes: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.syntax_counts.items())),
                f"generator version {self.version}"
                + (f"; {self.n_twins} finding-free twins under {TWINS_DIR}/" if self.n_twins else "")]


@dataclass
class _Job:
    seed: int
    index: int
    patient: int
    size: int
    rel_dcm: str
    rel_txt: str
    dicom_id: str
    ids: Dict[str, str]
    split: str
    version: int = GENERATOR_VERSION
    twins: bool = False


def _seq(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _plan(n_studies: int, seed: int, size: int, splits: Tuple[float, float, float]) -> List[_Job]:
    plan_rng = _seq(seed, 5)
    counts: List[int] = []
    while sum(counts) < n_studies:
        counts.append(min(int(plan_rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1])), n_studies - sum(counts)))
    n_pat = len(counts)
    id_rng = _seq(seed, 0)
    subjects: List[int] = []
    seen = set()
    while len(subjects) < n_pat:
        s = int(id_rng.integers(10_000_000, 20_000_000))
        if s not in seen:
            seen.add(s)
            subjects.append(s)
    split_rng = _seq(seed, 1)
    perm = split_rng.permutation(n_pat)
    total = float(sum(splits))
    n_train = int(round(n_pat * splits[0] / total))
    n_val = int(round(n_pat * splits[1] / total))
    split_of = {}
    for rank, p in enumerate(perm):
        split_of[int(p)] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    jobs: List[_Job] = []
    studies_seen = set()
    k = 0
    for p, c in enumerate(counts):
        subj = subjects[p]
        for _ in range(c):
            while True:
                st = int(id_rng.integers(50_000_000, 60_000_000))
                if st not in studies_seen:
                    studies_seen.add(st)
                    break
            dicom_id = "-".join(f"{int(x):08x}" for x in id_rng.integers(0, 2**32, size=5, dtype=np.uint64))
            ids = {"patient_id": f"PHANTOM{subj}", "patient_name": f"PHANTOM^{subj}",
                   "study_uid": random_uid(id_rng), "series_uid": random_uid(id_rng), "sop_uid": random_uid(id_rng),
                   "study_date": f"{int(id_rng.integers(2110, 2200))}{int(id_rng.integers(1, 13)):02d}"
                                 f"{int(id_rng.integers(1, 29)):02d}",
                   "study_id": str(st), "accession": f"{int(id_rng.integers(0, 10**8)):08d}"}
            folder = f"files/p{str(subj)[:2]}/p{subj}/s{st}"
            jobs.append(_Job(seed=seed, index=k, patient=p, size=size, rel_dcm=f"{folder}/{dicom_id}.dcm",
                             rel_txt=f"files/p{str(subj)[:2]}/p{subj}/s{st}.txt", dicom_id=dicom_id, ids=ids,
                             split=split_of[p]))
            k += 1
    return jobs


def _run_job(job: _Job, out_dir: str) -> Tuple[List[Dict[str, object]], str, int, List[str]]:
    anatomy = sample_anatomy(_seq(job.seed, 2, job.patient))
    study = render_study(_seq(job.seed, 3, job.index), size=job.size, anatomy=anatomy, with_clean=job.twins,
                         version=job.version)
    enc: Encoding = sample_encoding(_seq(job.seed, 4, job.index))
    dcm = os.path.join(out_dir, job.rel_dcm)
    os.makedirs(os.path.dirname(dcm), exist_ok=True)
    write_dicom(dcm, study.image, enc, job.ids, view=study.view, sex=anatomy.sex)
    if job.twins:  # the finding-free twin: same patient, exposure, noise and encoding; its own SOP instance UID
        twin = os.path.join(out_dir, TWINS_DIR, job.rel_dcm)
        os.makedirs(os.path.dirname(twin), exist_ok=True)
        ids = dict(job.ids, sop_uid=random_uid(_seq(job.seed, 6, job.index)))
        write_dicom(twin, study.clean, enc, ids, view=study.view, sex=anatomy.sex)
    with open(os.path.join(out_dir, job.rel_txt), "w", encoding="utf-8", newline="\n") as fh:
        fh.write(study.report)
    rows = []
    for f in study.findings:
        for (x, y, w, h) in f.boxes:
            rows.append({"dicom_id": job.dicom_id, "category_name": f.category, "label_text": f.label_text,
                         "path": job.rel_dcm, "x": x, "y": y, "w": w, "h": h, "image_width": study.width,
                         "image_height": study.height, "split": job.split})
    arows = [{"dicom_id": job.dicom_id, "path": job.rel_dcm, "bbox_name": name, "x": b[0], "y": b[1], "w": b[2],
              "h": b[3], "image_width": study.width, "image_height": study.height, "split": job.split}
             for name, b in ((n, study.anatomy_boxes[n]) for n in ANATOMY_REGIONS if n in study.anatomy_boxes)]
    return rows, enc.syntax, len(study.findings), [f.category for f in study.findings], arows


def _run_chunk(args) -> List:
    jobs, out_dir = args
    return [_run_job(j, out_dir) for j in jobs]


def parse_splits(text: str) -> Tuple[float, float, float]:
    """"70/15/15" -> (70.0, 15.0, 15.0); raises ElvisError on anything else."""
    parts = text.replace(",", "/").split("/")
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        raise ElvisError(f"--splits must look like 70/15/15 (train/val/test), got {text!r}") from None
    return _check_splits(vals)


def _check_splits(splits) -> Tuple[float, float, float]:
    vals = tuple(float(s) for s in splits)
    if len(vals) != 3 or any(v < 0 or not np.isfinite(v) for v in vals) or sum(vals) <= 0:
        raise ElvisError(f"splits must be three non-negative numbers train/val/test with a positive sum, "
                         f"got {splits!r}")
    return vals  # type: ignore[return-value]


def generate(out_dir: os.PathLike | str, n_studies: int, seed: int, size: int = 1024,
             splits: Sequence[float] = (70, 15, 15), progress: Optional[Callable[[int, int], None]] = None,
             workers: int = 1, version: int = GENERATOR_VERSION, twins: bool = False) -> PhantomSummary:
    """Write ``n_studies`` phantom studies under ``out_dir`` (must be missing or empty).

    Layout: ``files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.dcm``, the report ``files/pXX/pXXXXXXXX/sYYYYYYYY.txt``,
    ``ms_cxr.csv`` (MS-CXR v1.1.0 columns, one row per box, sorted by path; split by patient into
    train/val/test) and ``anatomy.csv`` (one row per anatomy region and image: ``ANATOMY_CSV_COLUMNS``). Identical bytes for the same arguments, whatever ``workers``.
    ``version``: the generator (see :func:`render_study`; 1 reproduces the original generator's files byte for
    byte). ``twins``: also write each image's finding-free twin at ``twins/<same relative path>``.
    ``progress(done, total)`` is called after each study.
    """
    t0 = time.perf_counter()
    out = os.fspath(out_dir)
    if int(n_studies) < 1:
        raise ElvisError(f"need at least 1 study, got {n_studies}")
    if not (MIN_SIZE <= int(size) <= MAX_SIZE):
        raise ElvisError(f"phantom size must be {MIN_SIZE}..{MAX_SIZE} pixels, got {size}")
    if int(workers) < 1:
        raise ElvisError(f"workers must be >= 1, got {workers}")
    sp = _check_splits(splits)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise ElvisError("output exists and is not a folder", out)
        if os.listdir(out):
            raise ElvisError("output folder is not empty; choose a new or empty folder", out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise ElvisError(f"cannot create output folder: {err.strerror}", out) from None
    if version not in GENERATOR_VERSIONS:
        raise ElvisError(f"phantom generator version must be one of {GENERATOR_VERSIONS}, got {version!r}")
    jobs = [dataclasses.replace(j, version=int(version), twins=bool(twins))
            for j in _plan(int(n_studies), int(seed), int(size), sp)]
    results: List = [None] * len(jobs)
    done = 0
    if workers == 1:
        for j in jobs:
            results[j.index] = _run_job(j, out)
            done += 1
            if progress:
                progress(done, len(jobs))
    else:
        chunk = 4
        chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
        with ProcessPoolExecutor(max_workers=int(workers)) as ex:
            for cj, res in zip(chunks, ex.map(_run_chunk, [(c, out) for c in chunks])):
                for j, r in zip(cj, res):
                    results[j.index] = r
                    done += 1
                    if progress:
                        progress(done, len(jobs))
    rows = [r for res in results for r in res[0]]
    rows.sort(key=lambda r: (r["path"], r["label_text"]))  # stable: boxes of a phrase keep their random order
    csv_path = os.path.join(out, "ms_cxr.csv")
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
        wr.writeheader()
        wr.writerows(rows)
    arows = [r for res in results for r in res[4]]
    arows.sort(key=lambda r: (r["path"], ANATOMY_REGIONS.index(r["bbox_name"])))
    with open(os.path.join(out, "anatomy.csv"), "w", encoding="utf-8", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=ANATOMY_CSV_COLUMNS, lineterminator="\n")
        wr.writeheader()
        wr.writerows(arows)
    cat_counts: Dict[str, int] = {}
    for res in results:
        for c in res[3]:
            cat_counts[c] = cat_counts.get(c, 0) + 1
    syn: Dict[str, int] = {}
    for res in results:
        syn[res[1]] = syn.get(res[1], 0) + 1
    split_counts = {s: sum(1 for j in jobs if j.split == s) for s in ("train", "val", "test")}
    return PhantomSummary(
        out_dir=out, csv_path=csv_path, n_patients=len({j.patient for j in jobs}), n_studies=len(jobs),
        n_images=len(jobs), n_phrases=sum(res[2] for res in results), n_boxes=len(rows),
        n_normal=sum(1 for res in results if res[2] == 0), category_counts=cat_counts, split_counts=split_counts,
        syntax_counts=syn, seconds=time.perf_counter() - t0, version=int(version),
        n_twins=len(jobs) if twins else 0)
