#!/usr/bin/env python3
"""Bootstrap for newcomers and CI: needs only python3 (3.11+) and access to PyPI.

    python3 dev.py demo    # run the demo (python -m opero demo)
    python3 dev.py test    # run the whole test suite (what CI runs)
    python3 dev.py lint    # ruff, mypy --strict, pyright, the import contract
    python3 dev.py bench   # the benchmarks in benchmarks/
    python3 dev.py docs    # build the docs site strictly (--serve: serve it locally)

On first use it creates .venv/ beside this file. `demo` installs opero and its runtime
dependencies only; the other commands add the dev tools (test, lint, bench and docs
tools, the peers the benchmarks compare with). It reinstalls only when pyproject.toml
changes. Extra arguments are passed on (e.g. `python3 dev.py test -k fallback`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".opero-install-stamp"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _requirements_digest() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv(*, dev_tools: bool) -> None:
    """.venv/ with opero installed (editable), and the dev tools if asked for. The stamp
    records what was installed for which pyproject.toml: the dev install covers both."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be started by an older python3
        sys.exit(f"opero needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV.name}/ ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    digest = _requirements_digest()
    installed = STAMP.read_text() if STAMP.exists() else ""
    enough = {f"{digest} dev"} if dev_tools else {f"{digest} dev", f"{digest} runtime"}
    if installed in enough:
        return
    what = "opero and its dev tools" if dev_tools else "opero"
    print(f"dev.py: installing {what} into {VENV.name}/ ...", file=sys.stderr)
    target = f"{ROOT}[dev]" if dev_tools else str(ROOT)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-qq"]
    for step in (["install", "--upgrade", "pip"], ["install", "-e", target]):
        if subprocess.run([*pip, *step], check=False).returncode != 0:
            sys.exit(f"dev.py: 'pip {' '.join(step)}' failed; see its output above")
    STAMP.write_text(f"{digest} {'dev' if dev_tools else 'runtime'}")


def run(*argv: str) -> int:
    # Material for MkDocs prints a banner about its successor on every build: not ours.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([str(PYTHON), *argv], cwd=ROOT, check=False, env=env).returncode


DOC_BLOCKS = ROOT / "build" / "doc-blocks"


def doc_blocks() -> Path:
    """Every ```python block of the README and the docs, one module each, for the type
    checkers: what users copy must type-check too, not only src/."""
    shutil.rmtree(DOC_BLOCKS, ignore_errors=True)
    DOC_BLOCKS.mkdir(parents=True)
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for source in sources:
        stem = re.sub(r"\W", "_", str(source.relative_to(ROOT).with_suffix("")))
        blocks = re.findall(r"```python\n(.*?)```", source.read_text(), flags=re.DOTALL)
        for index, block in enumerate(blocks):
            (DOC_BLOCKS / f"{stem}_{index}.py").write_text(block)
    return DOC_BLOCKS


def lint() -> int:
    blocks = str(doc_blocks().relative_to(ROOT))
    steps = [
        ("-m", "ruff", "check", "src", "tests", "benchmarks", "dev.py"),
        ("-m", "ruff", "format", "--check", "src", "tests", "benchmarks", "dev.py"),
        ("-m", "mypy", "--strict"),
        # The GitHub matrix runs on macOS and Windows; CI here is Linux: check them too.
        ("-m", "mypy", "--strict", "--platform", "win32"),
        ("-m", "mypy", "--strict", "--platform", "darwin"),
        # The API as users see it: tests/typing and every example in the docs.
        ("-m", "mypy", "--strict", blocks),
        ("-m", "pyright", "tests/typing", blocks),
        # Arrows point down (pyproject's [tool.importlinter]).
        ("-c", "from importlinter.cli import lint_imports_command as c; c()"),
    ]
    worst = 0
    for step in steps:
        print("dev.py lint:", " ".join(step[1:]), file=sys.stderr, flush=True)
        worst = max(worst, run(*step))
    return worst


def docs(rest: list[str]) -> int:
    """Build the site under site/ with every warning an error, or serve it (--serve)."""
    if "--serve" in rest:
        others = [arg for arg in rest if arg != "--serve"]
        return run("-m", "mkdocs", "serve", "--strict", *others)
    return run("-m", "mkdocs", "build", "--strict", *rest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    commands = {
        "demo": lambda: run("-m", "opero", "demo", *rest),
        "test": lambda: run("-m", "pytest", *rest),
        "lint": lint,
        "bench": lambda: run("benchmarks/run_all.py", *rest),
        "docs": lambda: docs(rest),
    }
    if command not in commands:
        print(f"dev.py: unknown command {command!r}; try: {', '.join(commands)}", file=sys.stderr)
        return 2
    # The demo is a newcomer's first run: the package alone, no dev tools to wait for.
    ensure_venv(dev_tools=command != "demo")
    return commands[command]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
