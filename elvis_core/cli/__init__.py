"""The ``elvis`` command line: one subcommand per module of this package.

Each subcommand module defines ``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking
the parsed ``argparse.Namespace`` and returning an exit code). User errors are raised as
:class:`elvis_core.errors.ElvisError` and printed as one line, with exit code 2; never a traceback.

A command whose output names files by DICOM UID (DICOM results are named ``<SOPInstanceUID>.*.dcm``, a PACS cache
``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``) sets ``mask_uids`` and prints through :func:`say`: every UID in its
output and error lines is printed as its short pseudonym ``uid~12345678`` unless ``--show-identifiers``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from elvis_core.errors import ElvisError

#: subcommand modules, in the order ``elvis --help`` lists them
SUBCOMMANDS = ("inspect", "render", "phantom", "prepare", "train", "eval", "calibrate", "ground", "review", "import",
               "models", "pacs", "export_onnx")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elvis",
        description="ELVIS core: inspect DICOM/reports/studies, render, make phantom studies, train, evaluate, ground.",
        epilog="Run 'elvis COMMAND --help' for each command's options and an example.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"elvis_core.cli.{name}_cmd")
        module.register(sub)
    return parser


def shown(args: argparse.Namespace, text) -> str:
    """``text`` as the command prints it: UIDs masked when the command asks for it (``mask_uids``) and
    ``--show-identifiers`` is not given."""
    if getattr(args, "mask_uids", False) and not getattr(args, "show_identifiers", False):
        from elvis_core.io.uid_mask import mask_uids_in_text

        return mask_uids_in_text(text)
    return str(text)


def say(args: argparse.Namespace, text, file=None) -> None:
    """Print one line of a command's output (stdout, or ``file``), UIDs masked as :func:`shown` says."""
    print(shown(args, text), file=file)


def add_show_identifiers(parser: argparse.ArgumentParser, what: str) -> None:
    """``--show-identifiers`` of a command that masks UIDs in what it prints (``mask_uids``)."""
    parser.add_argument("--show-identifiers", action="store_true",
                        help=f"print {what} with their DICOM UIDs (default: each UID as its pseudonym uid~12345678)")
    parser.set_defaults(mask_uids=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not args.verbose:  # torch's own INFO lines (e.g. FakeTensor cache stats printed at exit after an ONNX export)
        logging.getLogger("torch").setLevel(logging.WARNING)
    try:
        code = args.func(args)
    except ElvisError as err:
        print(f"elvis {args.command}: error: {shown(args, err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"elvis {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
