"""Write a checkpoint's ``known_words.json`` from the reports it was trained on (for checkpoints trained before the
trainer recorded it, e.g. the shipped demo model).

    python resources/make_known_words.py DATA_ROOT CHECKPOINT_DIR [--source TEXT]

Reads the image-report pairs under ``DATA_ROOT`` exactly as ``elvis train`` does (:func:`find_pairs`, PA/AP views,
FINDINGS + IMPRESSION text) and writes the sorted set of their words. For the demo model (docs/demo.md), rebuild its
training data first with the command in its ``config.json`` (``provenance.demo_build.command``)::

    elvis phantom --out phantom4k --studies 4000 --seed 11 --size 256 --splits 100/0/0
    python resources/make_known_words.py phantom4k resources/demo_model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_root")
    p.add_argument("checkpoint")
    p.add_argument("--source", default=None, help="what the words are (default: 'N training reports under ROOT')")
    a = p.parse_args(argv)
    from elvis_core.model.checkpoint import KNOWN_WORDS_NAME, read_checkpoint_config
    from elvis_core.model.vocab import known_words_from_texts
    from elvis_core.training.pairs import find_pairs

    read_checkpoint_config(a.checkpoint)  # a checkpoint folder, or a clear error
    pairs, stats = find_pairs(a.data_root)
    if not pairs:
        print(f"{a.data_root}: no image-report pairs", file=sys.stderr)
        return 2
    words = known_words_from_texts(pr.text for pr in pairs)
    source = a.source or f"{len(pairs)} training reports under {Path(a.data_root).name}"
    out = Path(a.checkpoint) / KNOWN_WORDS_NAME
    out.write_text(json.dumps({"source": source, "words": words}, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {len(words)} words from {len(pairs)} reports to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
