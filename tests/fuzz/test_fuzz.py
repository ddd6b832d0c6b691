"""The fuzzer in the normal test run: a few hundred mutated inputs of every kind (fixed seeds), each fed to every
reader and command of its kind in this process. Not one may end in anything but success or a one-line ElvisError.

The full campaign (5 000 inputs, each in a forked child with its memory and time measured) is
``python benchmarks/fuzz.py --n 5000``; its table is in docs/hardening.md.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.fuzz.fuzzlib import KINDS, Seeds, make_case, run_case

#: cases per kind in the normal run (seeds differ from the benchmark's first ones only in count)
N_CASES = {"dicom": 110, "report": 50, "csv": 50, "coco": 50, "checkpoint": 40, "pacs": 16, "import": 12,
           "review": 30, "special": 20}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return Seeds(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.fixture(scope="module", autouse=True)
def small_limits():
    """Bombs are refused at lower limits here so that the in-suite run stays fast (the seeds are far below them);
    the benchmark runs with the shipped defaults."""
    from elvis_core.io import limits

    old = limits.set_limits(max_decoded_bytes=24 << 20, max_frame_pixels=4_000_000)
    yield
    limits.set_limits(**old.__dict__)


@pytest.mark.parametrize("kind", KINDS)
def test_fuzz_kind_gives_no_traceback(kind, seeds, tmp_path):
    counts: Counter = Counter()
    failures = []
    for seed in range(N_CASES[kind]):
        case = make_case(kind, seeds, seed, tmp_path / kind, big=False)
        outcome = run_case(case, seeds)
        counts[outcome.status] += 1
        if outcome.status == "traceback":
            failures.append(f"seed {seed} ({case.what}): {outcome.detail}")
    assert not failures, f"{len(failures)} of {N_CASES[kind]} {kind} inputs crashed:\n" + "\n".join(failures[:5])
    # the mutations reach both sides: some inputs survive, some are refused with a clean message
    assert counts["clean"] > 0
    if kind not in ("checkpoint", "special", "review"):  # a special file or a damaged review file is never ok
        assert counts["ok"] > 0
