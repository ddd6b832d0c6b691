"""`elvis ground`: placeholder until its issue lands (it says so and exits 1)."""

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ground", help="(not built yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("elvis ground: not built yet", file=sys.stderr)
    return 1
