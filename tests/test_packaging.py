"""What a user meets first: import cost, the demo, the README, the benchmarks."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_python

ROOT = Path(__file__).resolve().parent.parent


def test_import_prints_nothing_and_stays_light() -> None:
    result = run_python(
        """
        import sys
        import opero
        heavy = sorted({"loguru", "tenacity", "asyncio", "importlib.metadata"} & set(sys.modules))
        print(heavy)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == "[]\n"


def test_version_comes_from_the_installed_metadata() -> None:
    from importlib.metadata import version

    import opero

    assert opero.__version__ == version("opero")


def test_demo_runs_all_three_scenarios() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "opero", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(3 calls in" in out
    assert "models called, in order: ['a', 'a', 'b', 'b']" in out
    assert "AllFailedError: " in out
    assert "value 2: ConnectionError" in out
    assert "attempt 1 failed with ConnectionError" in out
    assert "cache_info: hits=1 misses=1 size=1" in out
    assert "second call: [a] answer to 'What is cached?'" in out
    assert "OpmapError: 1 of 300 items" in out
    assert "results kept: 299 of 300; results[10] = 20" in out
    assert "failed: item 137: LookupError" in out
    assert "items that needed a retry: 44;" in out  # 43 multiples of 7, and item 137
    events = out.split("7. The event stream")[1]
    for kind in ("call_started", "retry_scheduled", "fallback_switched", "call_succeeded"):
        assert kind in events
    assert "delay=20ms" in events
    assert "Stats(calls=1, successes=1, failures=0, retries=2, fallbacks_used=1" in events
    offsets = [
        float(x) for x in out.split("8 calls started at (ms): ")[1].split("\n")[0].split(", ")
    ]
    assert offsets[0] == 0
    assert offsets[-1] >= 700 - 10  # 8 calls at 10/s: the last one 0.7 s after the first


def test_cli_without_a_command_shows_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "opero"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "demo" in result.stdout


def blocks_of(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def readme_blocks() -> list[str]:
    return blocks_of(ROOT / "README.md")


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def all_blocks() -> list[tuple[str, int]]:
    return [
        (str(page.relative_to(ROOT)), index)
        for page in doc_pages()
        for index in range(len(blocks_of(page)))
    ]


def test_readme_is_a_front_page_with_an_example_per_decorator() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = readme_blocks()
    assert any("@opero(" in block for block in blocks)
    assert any("@opmap(" in block for block in blocks)
    assert len(readme.splitlines()) <= 250
    # Every docs page it links to exists (the site's own links are checked by mkdocs).
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target


@pytest.mark.parametrize(("page", "index"), all_blocks(), ids=[f"{p}-{i}" for p, i in all_blocks()])
def test_doc_code_block_runs(page: str, index: int, tmp_path: Path) -> None:
    # Every python block of the README and of the docs site runs as written.
    code = blocks_of(ROOT / page)[index]
    name = re.sub(r"\W", "_", f"{page}_{index}")
    if 'if __name__ == "__main__":' in code:
        # A script (its workers import it as __main__): run it as one.
        script = tmp_path / f"{name}.py"
        script.write_text(code)
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=180, check=False
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return
    namespace: dict[str, object] = {"__name__": name}
    exec(compile(code, f"{page} block {index}", "exec"), namespace)
    assert asyncio.get_event_loop_policy() is not None


def test_the_docs_home_page_is_the_readme() -> None:
    # One text, two places: GitHub shows README.md, the site shows docs/index.md (its
    # links relative to docs/). Regenerate with: sed 's#](docs/#](#g' README.md
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "index.md").read_text() == readme.replace("](docs/", "](")


def test_readme_quick_start_matches_ci() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 dev.py demo" in readme
    assert "python3 dev.py test" in readme
    assert "python3 dev.py test" in ci


@pytest.mark.parametrize(
    ("script", "names"),
    [
        ("bench_overhead.py", ("opero", "tenacity", "stamina", "backoff")),
        (
            "bench_cache.py",
            ("opero by keyword", "opero cache_ttl", "functools.lru_cache", "diskcache memoize"),
        ),
        ("bench_rate_limit.py", ("8 threads", "50 tasks", "2 processes", "rate_limit=1e6/s")),
        ("bench_opmap.py", ("multiprocessing.Pool.map", "joblib", "mpire", "ThreadPoolExecutor")),
        ("bench_policies.py", ("opero policies", "pyresilience", "tenacity+pybreaker")),
        ("bench_resume.py", ("without resume", "with resume (recording)", "resumed, all done")),
        (
            "prove_resume.py",
            ("journal held", "results equal an uninterrupted map's, in order: True"),
        ),
        ("bench_hedge.py", ("plain fallback", "hedge_after=0.03", "p99")),
        ("bench_cluster.py", ("dask, running cluster", "ray, running runtime", "process")),
    ],
)
def test_benchmark_runs(script: str, names: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in names:
        assert name in result.stdout
