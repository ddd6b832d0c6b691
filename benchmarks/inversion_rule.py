"""How well the inverted-film rule (elvis_core/io/inversion.py) separates films read correctly from films read the
other way round (a wrong photometric tag), and what it costs.

    python benchmarks/inversion_rule.py --studies 300 [--size 256] [--phantom DIR]

Films: RG1_UNCI (pydicom-data, a real MONOCHROME1 chest CR), the phantom studies of ``--phantom DIR`` or ``--studies``
new ones (seed 7, a temporary folder), and the demo studies. Each is scored as read and inverted (``lo + hi - v``,
what a reader gives when the tag is wrong). Prints, per set, the contrast statistic (mediastinum - brighter lung, in
units of the 1-99 % range) read correctly and inverted, the false alarms and the misses at the threshold, and the
time per film.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _inv(r):
    lo, hi = float(r.pixels.min()), float(r.pixels.max())
    return dataclasses.replace(r, pixels=(lo + hi - r.pixels).astype(np.float32), windows=[], voi_lut=None)


def _score(files):
    from elvis_core.io.dicom import read_radiograph
    from elvis_core.io.inversion import inversion_contrast, inversion_warning

    ok, bad, fa, miss, ms, photo = [], [], 0, 0, [], {}
    for f in files:
        r = read_radiograph(f)
        pi = r.meta.get("PhotometricInterpretation", "?")
        photo[pi] = photo.get(pi, 0) + 1
        t0 = time.perf_counter()
        w = inversion_warning(r)
        ms.append((time.perf_counter() - t0) * 1000)
        ri = _inv(r)
        ok.append(inversion_contrast(r.pixels))
        bad.append(inversion_contrast(ri.pixels))
        fa += w is not None
        miss += inversion_warning(ri) is None
    return np.array(ok), np.array(bad), fa, miss, float(np.median(ms)), photo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=300)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--phantom", default=None, help="an existing phantom folder instead of generating one")
    a = p.parse_args(argv)
    from pydicom.data import get_testdata_file

    from elvis_core.io.inversion import THRESHOLD
    from elvis_core.phantom.generate import generate

    sets = [("RG1_UNCI (real CR)", [get_testdata_file("RG1_UNCI.dcm")])]
    root = Path(a.phantom) if a.phantom else Path(tempfile.mkdtemp(prefix="inv_")) / "ph"
    if not a.phantom:
        generate(root, a.studies, seed=7, size=a.size)
    sets.append((f"phantom ({root.name})", sorted(root.rglob("*.dcm"))[: a.studies]))
    sets.append(("demo studies (640 px)", sorted((REPO / "resources" / "demo").rglob("*.dcm"))))
    print(f"threshold: contrast < {THRESHOLD:+.2f} -> 'film looks inverted'")
    print(f"{'set':<26} {'n':>4} {'photometric':<22} {'read: min':>9} {'median':>7} {'inverted: max':>13} "
          f"{'median':>7} {'false alarms':>12} {'misses':>6} {'ms/film':>7}")
    for name, files in sets:
        ok, bad, fa, miss, ms, photo = _score(files)
        ph = ", ".join(f"{k[-1]}:{v}" for k, v in sorted(photo.items()))
        print(f"{name:<26} {len(files):>4} {ph:<22} {ok.min():>+9.2f} {np.median(ok):>+7.2f} {bad.max():>+13.2f} "
              f"{np.median(bad):>+7.2f} {fa:>12} {miss:>6} {ms:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
