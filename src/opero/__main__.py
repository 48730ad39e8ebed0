"""Command line: ``python -m opero demo`` (more commands arrive with later features)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opero", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("demo", help="run opero against a simulated flaky service")
    args = parser.parse_args(argv)
    if args.version:
        import opero

        print(opero.__version__)
        return 0
    if args.command == "demo":
        from opero._demo import run_demo

        return run_demo()
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
