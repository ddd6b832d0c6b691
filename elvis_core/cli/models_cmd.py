"""`elvis models download`: BioViL / BioViL-T / CXR-BERT from the Hugging Face hub at a pinned revision, every file
checked (published MD5, the hub's SHA-256, size, git-lfs pointers), then imported as an ELVIS checkpoint."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  elvis models download biovil                      # -> models/biovil (checkpoint), models/downloads/biovil (files)
  elvis models download biovil-t --dir /opt/elvis/models
  elvis models download cxr-bert --revision v1.1    # the text model only (a text.path for training)
  elvis-viewer study/ --checkpoint models/biovil

Pinned revisions: biovil and cxr-bert = microsoft/BiomedVLP-CXR-BERT-specialized @ v1.1, biovil-t =
microsoft/BiomedVLP-BioViL-T @ v1.0 (the tags hi-ml-multimodal pins). HF_ENDPOINT (or --endpoint) selects a mirror;
HF_TOKEN a token. Offline, the command prints the URLs to fetch by hand and the `elvis import` line to run after.
See docs/models.md."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="download public models (pinned, hash-checked) and import them",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    acts = p.add_subparsers(dest="action", metavar="ACTION")
    acts.required = True
    d = acts.add_parser("download", help="download + check + import a public model", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("model", choices=("biovil", "biovil-t", "cxr-bert"))
    d.add_argument("--revision", help="another revision (tag, branch or commit) than the pinned one")
    d.add_argument("--dir", default="models", help="models folder (default ./models; created when missing)")
    d.add_argument("--endpoint", help="hub URL (default $HF_ENDPOINT or https://huggingface.co)")
    d.add_argument("--no-import", action="store_true", help="only download and check the files")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from elvis_core.model.download import MODELS, download_model

    m = MODELS[args.model]
    rev = args.revision or m.revision
    print(f"{m.repo_id} @ {rev}{'' if args.revision else ' (pinned)'}: {m.note}", file=sys.stderr)
    res = download_model(args.model, args.dir, revision=args.revision, hub_endpoint=args.endpoint,
                         do_import=not args.no_import, progress=lambda s: print(f"  {s}", file=sys.stderr))
    for line in res.checked:
        print(f"  checked {line}", file=sys.stderr)
    if res.checkpoint is not None:
        print(f"imported: elvis-viewer STUDY --checkpoint {res.checkpoint}", file=sys.stderr)
        print(res.checkpoint)
    else:
        print(res.text_folder)
    return 0
