#!/usr/bin/env python3
"""Bootstrap for newcomers and CI: needs only python3 (3.11+) and access to PyPI.

    python3 dev.py demo    # run the demo (python -m opero demo)
    python3 dev.py test    # run the whole test suite (what CI runs)
    python3 dev.py lint    # ruff check, ruff format --check, mypy --strict
    python3 dev.py bench   # the benchmarks in benchmarks/

On first use it creates .venv/ beside this file and installs opero with its dev extras
into it; it reinstalls only when pyproject.toml changes. Extra arguments are passed on
(e.g. `python3 dev.py test -k fallback`).
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


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be started by an older python3
        sys.exit(f"opero needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV.name}/ ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    digest = _requirements_digest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("dev.py: installing opero and its dev tools into .venv/ ...", file=sys.stderr)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-qq"]
    for step in (["install", "--upgrade", "pip"], ["install", "-e", f"{ROOT}[dev]"]):
        if subprocess.run([*pip, *step], check=False).returncode != 0:
            sys.exit(f"dev.py: 'pip {' '.join(step)}' failed; see its output above")
    STAMP.write_text(digest)


def run(*argv: str) -> int:
    return subprocess.run([str(PYTHON), *argv], cwd=ROOT, check=False).returncode


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
    }
    if command not in commands:
        print(f"dev.py: unknown command {command!r}; try: {', '.join(commands)}", file=sys.stderr)
        return 2
    ensure_venv()
    return commands[command]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
