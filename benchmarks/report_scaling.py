"""Report parsing is linear in the text length: a size-doubling check on pathological reports.

    python benchmarks/report_scaling.py

For each kind of hostile text the parser (``parse_report``) and the text ``elvis inspect`` output run on n, 2n and
4n units; the ratio of the times for 4n vs 2n stays near 2 for linear work (a quadratic parser shows ~4). Best of
5 runs each (the fastest: least disturbed by other load).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = {
    "runs of dots": lambda n: "." * (n * 5) + "x",
    "header lines": lambda n: "\n".join(f"FINDING {i}: Line {i}. Next {i}." for i in range(n // 4)),
    "caps line + spaces": lambda n: "A" * (n * 2) + ":" + " " * (n * 2) + "B.",
    "list markers": lambda n: "1. " * n,
    "abbreviations": lambda n: "e.g. " * n,
    "blank lines": lambda n: "\n\n \n" * n + "x.",
    "punctuation": lambda n: "?! " * n,
    "MIMIC-like text": lambda n: ("FINDINGS: Heart size is normal. No effusion, e.g. none. 1. Lungs clear.\n"
                                  " 2. No pneumothorax.\n\n") * (n // 25),
}


def _time(fn, reps: int = 5) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)  # the least disturbed run (the machine is shared)


def main() -> int:
    from elvis_core.cli.inspect_cmd import _print_text
    from elvis_core.io.report_parse import parse_report

    sizes = (20_000, 40_000, 80_000)
    print(f"{'text':<20} {'chars at 4n':>11} " + " ".join(f"{'parse ' + str(s // 1000) + 'k':>10}" for s in sizes)
          + f" {'ratio 4n/2n':>11} {'inspect 4n/2n':>13}")
    for name, make in CASES.items():
        ts, its = [], []
        for n in sizes:
            text = make(n)
            ts.append(_time(lambda: parse_report(text)))
            rep = parse_report(text)
            info = {"kind": "report", "path": "x", "n_chars": len(text), "warnings": [],
                    "sections": [{"name": s.name, "header": [s.header_start, s.header_end], "body": [s.start, s.end]}
                                 for s in rep.sections],
                    "sentences": [{"section": s.section, "start": s.start, "end": s.end,
                                   "text": text[s.start:s.end]} for s in rep.sentences]}

            def show():
                with contextlib.redirect_stdout(io.StringIO()):
                    _print_text(info)

            its.append(_time(show))
        print(f"{name:<20} {len(make(sizes[-1])):>11,} " + " ".join(f"{t * 1000:>8.1f}ms" for t in ts)
              + f" {ts[2] / max(ts[1], 1e-9):>11.2f} {its[2] / max(its[1], 1e-9):>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
