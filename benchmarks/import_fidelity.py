"""How closely an imported BioViL / BioViL-T checkpoint reproduces hi-ml's forward pass (prints a table).

Random weights in the published layouts (BatchNorm statistics randomised) are written as hi-ml would load them,
converted with ``elvis import``'s code, and grounded by :class:`GroundingEngine` on 8-bit PNGs whose short side is
512 (no resampling: square, landscape, portrait); the reference is ``tests/core/biovil_reference.py`` (hi-ml's
architecture written out with plain torch modules). Columns: max |difference| of the cosine grid over 4 phrases, and
of the L2-normalised text embeddings.

    python benchmarks/import_fidelity.py            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from elvis_core.grounding.engine import GroundingEngine  # noqa: E402
from elvis_core.io.images import read_image  # noqa: E402
from elvis_core.model.importers import import_biovil  # noqa: E402
from tests.core import biovil_reference as ref  # noqa: E402

PHRASES = ["Right lower lobe opacity.", "small left pleural effusion", "no pneumothorax!",
           "Moderate cardiomegaly, increasing (12 cm)"]


def main() -> None:
    print(f"{'model':9} {'image (rows x cols)':20} {'grid':7} {'max |d cos|':>12} {'max |d text|':>13}")
    for variant, crop, multi in (("biovil", 480, False), ("biovil-t", 448, True)):
        d = Path(tempfile.mkdtemp())
        im = ref.randomise(ref.ImageModel(multi=multi), seed=11)
        torch.save(im.state_dict(), d / "w.pt")
        mlm, head = ref.make_cxr_bert_folder(d / "text")
        ck = import_biovil(variant, d / "w.pt", d / "text", d / "ckpt")
        t_ref = ref.reference_text_embedding(d / "text", mlm, head, PHRASES)
        for shape in ((512, 512), (512, 640), (700, 512)):
            png = d / "x.png"
            cv2.imwrite(str(png), ref.sample_image(*shape, seed=2))
            eng = GroundingEngine(str(ck), device="cpu")
            eng.set_image(read_image(png))
            maps = eng.ground_many(PHRASES)
            ours_t = torch.stack([v for v, _ in eng._text_globals(PHRASES)])
            grid = im.patch_grid(ref.reference_input(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), crop))[0]
            d_cos = max(float(np.abs(m.similarity - (grid @ t_ref[i]).numpy()).max()) for i, m in enumerate(maps))
            d_txt = float((ours_t - t_ref).abs().max())
            g = maps[0].similarity.shape
            print(f"{variant:9} {f'{shape[0]} x {shape[1]}':20} {f'{g[0]}x{g[1]}':7} {d_cos:12.2e} {d_txt:13.2e}")


if __name__ == "__main__":
    main()
