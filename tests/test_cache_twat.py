"""The optional twat backend, run in subprocesses: importing twat_cache changes loguru."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = """
import sys, warnings
from loguru import logger

logger.remove()
mine = logger.add(sys.stdout, format="HOST {message}")
warnings.simplefilter("always")
from opero import opero

calls = []

with warnings.catch_warnings(record=True) as caught:
    @opero(cache_backend="twat", cache_namespace="t1")
    def f(x, y=1):
        calls.append(x)
        return {"x": x, "y": y} if x else None

print("warned", [str(w.message)[:40] for w in caught if w.category is RuntimeWarning])
print("handlers", len(logger._core.handlers))
print("values", f(1), f(x=1), f(0), f(0))
print("calls", calls)

failures = []
@opero(cache_backend="twat", cache_namespace="t1", retries=0)
def g(x):
    failures.append(x)
    raise ValueError(x)
for _ in range(2):
    try:
        g(3)
    except ValueError:
        pass
print("failures", failures)
"""


def run(tmp_path: Path, code: str) -> list[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_twat_backend_caches_and_reports_what_its_import_did(tmp_path: Path) -> None:
    pytest.importorskip("twat_cache", reason="twat-cache is an optional extra")
    first = run(tmp_path, SCRIPT)
    assert first[0] == "warned ['importing twat_cache removed 1 loguru ha']"
    assert first[1] == "handlers 0"  # twat_cache's own handler was removed too
    assert first[2] == "values {'x': 1, 'y': 1} {'x': 1, 'y': 1} None None"
    assert first[3] == "calls [1, 0]"
    assert first[4] == "failures [3, 3]"  # exceptions are never cached
    second = run(tmp_path, SCRIPT)
    assert second[3] == "calls []"  # a second process finds both entries on disk
    assert (tmp_path / "xdg" / "twat_cache" / "opero-t1").is_dir()
