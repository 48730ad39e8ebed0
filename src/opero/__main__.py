"""Command line: ``python -m opero demo`` and ``python -m opero cache list|clear``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opero",
        description="opero's command line: a demo, and its disk caches (list, clear).",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("demo", help="run opero against a simulated flaky service")
    from opero._cache_cli import add_parser

    add_parser(commands)
    args = parser.parse_args(argv)
    if args.version:
        import opero

        print(opero.__version__)
        return 0
    if args.command == "demo":
        from opero._demo import run_demo

        return run_demo()
    if args.command == "cache":
        from opero._cache_cli import run

        return run(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
