"""`python -m opero cache`: list disk cache namespaces, clear one or all."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from opero._cache.backends import cache_root
from opero._pipeline.options import check_cache_namespace


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = commands.add_parser("cache", help="inspect and clear opero's disk caches")
    actions = cache.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list namespaces with entry counts and sizes")
    clear = actions.add_parser("clear", help="clear one namespace, or all with --all")
    clear.add_argument("namespace", nargs="?", help="the cache_namespace to clear")
    clear.add_argument("--all", action="store_true", help="clear every namespace")
    clear.add_argument("--yes", action="store_true", help="confirm: entries are deleted")


def namespaces(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "cache.db").is_file())


def _open(folder: Path) -> Any:
    import diskcache

    return diskcache.Cache(str(folder))


def run(args: argparse.Namespace) -> int:
    root = cache_root()
    if args.action == "list":
        return _list(root)
    if args.all == bool(args.namespace):
        print("opero cache clear: give one namespace, or --all")
        return 2
    if args.namespace:
        try:
            check_cache_namespace("namespace", args.namespace)
        except ValueError as exc:
            print(f"opero cache clear: {exc}")
            return 2
    targets = namespaces(root) if args.all else [root / args.namespace]
    if args.namespace and not (targets[0] / "cache.db").is_file():
        print(f"opero cache clear: no namespace {args.namespace!r} under {root}")
        return 1
    if not args.yes:
        names = ", ".join(t.name for t in targets) or "(none)"
        print(f"Would clear: {names}. Add --yes to delete their entries.")
        return 1
    for folder in targets:
        with _open(folder) as cache:
            removed = cache.clear(retry=True)
        print(f"cleared {folder.name}: {removed} {'entry' if removed == 1 else 'entries'}")
    return 0


def _list(root: Path) -> int:
    found = namespaces(root)
    print(f"disk caches under {root}")
    if not found:
        print("  (none)")
        return 0
    print(f"  {'namespace':<24} {'entries':>8} {'size':>12}")
    for folder in found:
        with _open(folder) as cache:
            entries, size = len(cache), cache.volume()
        print(f"  {folder.name:<24} {entries:>8} {_human(size):>12}")
    return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
