"""The full fuzz campaign: N mutated inputs over the five kinds, each run in its own forked child with its time and
peak memory measured, and the table of issue 13 printed.

    python benchmarks/fuzz.py --n 5000                 # 2 000 DICOM + 750 each of report, CSV, COCO, checkpoint
    python benchmarks/fuzz.py --n 200 --kinds dicom    # one kind
    python benchmarks/fuzz.py --n 5000 --json fuzz.json --show 5

How it measures: one worker process per kind imports what that kind needs (and builds the seeds, and for CSV the
grounding engine), then forks one child per input. The child runs :func:`tests.fuzz.fuzzlib.run_case` (every reader
and command of the kind) under an address-space guard (``RLIMIT_AS`` = the worker's size + ``--guard-gb``, so a
runaway allocation fails inside the child instead of taking the machine), and reports ok / clean / traceback. The
parent reads the child's peak RSS from ``wait4`` (``ru_maxrss``: includes the pages inherited from the worker, so it
is the honest process size while handling that input) and its wall time; a child still running after
``--timeout`` seconds is killed and counted as a hang. Inputs are made by the same seeds as the in-suite fuzzer
(``tests/fuzz``), at full size (100 kB of dots, 20 000-line reports, 200 k CSV fields, deflate bombs of 1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARES = {"dicom": 0.4, "report": 0.15, "csv": 0.15, "coco": 0.15, "checkpoint": 0.15,
          # issue 24's surfaces (a PACS case runs a loopback server and waits out drips: fewer of them)
          "pacs": 0.04, "import": 0.04, "review": 0.1, "special": 0.04}
ALL = ("pacs", "import", "review", "special", "dicom", "report", "csv", "coco", "checkpoint")  # new surfaces first


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def worker(kind: str, n: int, offset: int, timeout: float, guard_gb: float, work: Path) -> None:
    """Runs in its own process: seeds once, then one forked child per input; one JSON line per input on stdout."""
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)
    import logging

    logging.disable(logging.CRITICAL)
    import warnings

    warnings.simplefilter("ignore")
    from tests.fuzz import fuzzlib

    seeds = fuzzlib.Seeds(work / "seeds")
    # import everything the kind's code paths use before forking, so children do not pay for imports
    import elvis_core.cli.inspect_cmd  # noqa: F401
    import elvis_core.cli.review_cmd  # noqa: F401
    import elvis_core.io.dicom  # noqa: F401
    import elvis_core.io.privacy  # noqa: F401
    import elvis_core.io.studies  # noqa: F401
    import elvis_core.review.importer  # noqa: F401

    if kind in ("csv", "checkpoint", "import"):
        import torch

        torch.set_num_threads(1)
        import elvis_core.grounding.engine  # noqa: F401
        import elvis_core.model.checkpoint  # noqa: F401

        if kind == "csv":
            fuzzlib._engine(seeds)  # built once, inherited by every child
    # warm up: run the unmutated seeds once here, so that lazily imported decoders (SimpleITK, the pylibjpeg
    # plugins, OpenCV) and transformers' model modules are loaded before forking and not timed per input
    from elvis_core.errors import ElvisError

    warm = []
    if kind == "dicom":
        warm = [fuzzlib.Case("dicom", -1, p, "seed") for p in seeds.dicoms]
    elif kind == "checkpoint":
        warm = [fuzzlib.Case("checkpoint", -1, seeds.make_checkpoint(), "seed")]
    elif kind in ("csv", "coco"):
        warm = [fuzzlib.Case("csv", -1, seeds.csv_path, "seed", {"images": str(seeds.images_root)})]
    elif kind in ("pacs", "import", "review", "special"):  # their seeds are built on first use: build them here
        warm = [fuzzlib.make_case(kind, seeds, -1 - k, work / "warm" / kind) for k in range(2)]
    else:
        p = work / "warm.txt"
        p.write_text(seeds.reports[0])
        warm = [fuzzlib.Case("report", -1, p, "seed")]
    for c in warm:
        try:
            fuzzlib.run_case(c, seeds)
        except (ElvisError, Exception):  # noqa: BLE001 - warm-up only
            pass
    import elvis_core

    print(json.dumps({"code": os.path.dirname(elvis_core.__file__)}), flush=True)
    cases_dir = work / "cases" / kind
    for seed in range(offset, offset + n):
        case = fuzzlib.make_case(kind, seeds, seed, cases_dir, big=True)
        base_kb = _rss_kb()
        r, w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r)
            try:
                limit = _vm_bytes() + int(guard_gb * (1 << 30))
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                out = fuzzlib.run_case(case, seeds)
                msg = {"status": out.status, "detail": out.detail[:2000]}
            except BaseException as err:  # noqa: BLE001 - the harness itself must report, not die silently
                msg = {"status": "traceback", "detail": f"harness: {type(err).__name__}: {str(err)[:300]}"}
            os.write(w, json.dumps(msg).encode()[:60000])
            os.close(w)
            os._exit(0)
        os.close(w)
        status, usage, hung = None, None, False
        while True:
            wpid, wstatus, ru = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                status, usage = wstatus, ru
                break
            if time.perf_counter() - t0 > timeout:
                os.kill(pid, signal.SIGKILL)
                _, status, usage = os.wait4(pid, 0)
                hung = True
                break
            time.sleep(0.005)
        dt = time.perf_counter() - t0
        data = b""
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
        os.close(r)
        try:
            res = json.loads(data) if data else {"status": "traceback", "detail": f"child died (status {status})"}
        except ValueError:
            res = {"status": "traceback", "detail": "unreadable child report"}
        if hung:
            res = {"status": "hang", "detail": f"killed after {timeout:g} s"}
        res.update(kind=kind, seed=seed, what=case.what[:200], time_s=round(dt, 4), maxrss_kb=int(usage.ru_maxrss),
                   base_kb=base_kb)
        print(json.dumps(res), flush=True)
        _cleanup(case)


def _cleanup(case) -> None:
    import shutil

    p = Path(case.path)
    try:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
            d = p.parent / (p.name + ".d")
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)
    except OSError:
        pass


def _table(rows, kinds, hang_s: float) -> str:
    head = (f"{'kind':<11} {'inputs':>6} {'ok':>6} {'clean':>6} {'tracebacks':>10} {'hangs>' + str(int(hang_s)) + 's':>9} "
            f"{'child peak RSS MB':>17} {'worker MB':>9} {'bound MB':>8} {'max time s':>10} {'median s':>9}")
    lines = [head, "-" * len(head)]
    for kind in kinds:
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        c = {s: sum(1 for r in rs if r["status"] == s) for s in ("ok", "clean", "traceback", "hang")}
        slow = sum(1 for r in rs if r["time_s"] > hang_s and r["status"] != "hang") + c["hang"]
        peak = max(r["maxrss_kb"] for r in rs) / 1024
        base = max(r["base_kb"] for r in rs) / 1024
        bound = max(r["maxrss_kb"] + r["base_kb"] for r in rs) / 1024
        lines.append(f"{kind:<11} {len(rs):>6} {c['ok']:>6} {c['clean']:>6} {c['traceback']:>10} {slow:>9} "
                     f"{peak:>17.0f} {base:>9.0f} {bound:>8.0f} "
                     f"{max(r['time_s'] for r in rs):>10.2f} {statistics.median(r['time_s'] for r in rs):>9.3f}")
    lines.append("child peak RSS = the child's ru_maxrss (what it touched while handling one input); worker = the "
                 "forking worker's RSS; bound = their sum (an upper bound of the process size for any one input)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="inputs in all, shared over the kinds (default 5000)")
    ap.add_argument("--kinds", default="dicom,report,csv,coco,checkpoint",
                    help="comma-separated kinds, or 'all' (adds pacs, import, review, special)")
    ap.add_argument("--offset", type=int, default=0, help="first seed")
    ap.add_argument("--timeout", type=float, default=30.0, help="kill a child after this many seconds (hang)")
    ap.add_argument("--hang", type=float, default=10.0, help="an input slower than this counts as a hang")
    ap.add_argument("--guard-gb", type=float, default=3.0, help="RLIMIT_AS headroom per child, GB")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="write every input's outcome here (JSON lines)")
    ap.add_argument("--show", type=int, default=3, help="print this many tracebacks / hangs per kind")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="elvis-fuzz-"))
    if args.worker:
        worker(args.worker, args.n, args.offset, args.timeout, args.guard_gb, work)
        return 0
    kinds = list(ALL) if args.kinds.strip() == "all" else [k.strip() for k in args.kinds.split(",") if k.strip()]
    share = sum(SHARES[k] for k in kinds)
    counts = {k: max(1, round(args.n * SHARES[k] / share)) for k in kinds}
    rows = []
    codes = set()
    out = open(args.json, "w") if args.json else None
    t0 = time.time()
    for kind in kinds:
        t1 = time.time()
        cmd = [sys.executable, __file__, "--worker", kind, "--n", str(counts[kind]), "--offset", str(args.offset),
               "--timeout", str(args.timeout), "--guard-gb", str(args.guard_gb), "--work", str(work)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
        for line in proc.stdout:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "code" in r:
                codes.add(r["code"])
                continue
            rows.append(r)
            if out:
                out.write(line)
        proc.wait()
        got = sum(1 for r in rows if r["kind"] == kind)
        print(f"{kind}: {got}/{counts[kind]} inputs in {time.time() - t1:.0f} s", file=sys.stderr, flush=True)
        if got < counts[kind]:
            print(f"WARNING: the {kind} worker stopped after {got} of {counts[kind]} inputs (exit {proc.returncode})")
    if out:
        out.close()
    print(f"fuzz campaign: {len(rows)} inputs, {time.time() - t0:.0f} s, seeds {args.offset}..; machine: "
          f"{os.cpu_count()} CPUs; code: {', '.join(sorted(codes))}")
    print(_table(rows, kinds, args.hang))
    for kind in kinds:
        bad = [r for r in rows if r["kind"] == kind and (r["status"] in ("traceback", "hang")
                                                         or r["time_s"] > args.hang)]
        for r in bad[: args.show]:
            print(f"  {kind} seed {r['seed']} [{r['status']}, {r['time_s']:.1f} s] {r['what']}: {r['detail'][:400]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
