"""`@opmap(mode="process")` under every start method: fork, forkserver and spawn.

The contract tests of tests/test_opmap.py run once per start method; these cover what
differs between them: the option, the default, what must travel pickled and the errors
when it cannot, the parent's state that workers need (testing mode, hooks), and workers
that outlive a killed parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from helpers import live_processes, start_methods, start_session
from opero import OpmapError, opero, opmap
from opero._maps import start

POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sessions")
FAST = {"retries": 0, "progress": False, "cache": False}


@pytest.fixture(autouse=True)
def no_child_left() -> Any:
    before = live_processes(parent=os.getpid())
    yield
    deadline = time.monotonic() + 2
    while live_processes(parent=os.getpid()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live_processes(parent=os.getpid()) - before == set()


def square(x: int) -> int:
    return x * x


# --- the option -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"start_method": "threads"}, ValueError, "start_method must be one of fork"),
        ({"start_method": 1}, TypeError, "start_method must be a str"),
        ({"start_method": "spawn", "mode": "thread"}, ValueError, "applies to mode='process'"),
        ({"start_method": "fork", "mode": "async"}, ValueError, "applies to mode='process'"),
    ],
)
def test_bad_start_methods_fail_at_decoration(
    options: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        opmap(**options)


def test_a_start_method_the_platform_lacks_names_the_ones_it_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(start, "available_start_methods", lambda: ["spawn"])  # Windows
    with pytest.raises(ValueError, match="does not offer; it offers spawn"):
        opmap(start_method="fork")


def test_the_environment_variable_sets_the_default_and_is_checked_at_decoration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPERO_START_METHOD", "sideways")
    with pytest.raises(ValueError, match="OPERO_START_METHOD must be one of"):
        opmap(square)
    opmap(mode="thread")(square)  # it is about process mode only
    monkeypatch.setenv("OPERO_START_METHOD", "spawn")
    assert _method_used(opmap(workers=1, **FAST)(square)) == "spawn"
    explicit = start_methods()[0]  # an explicit start method wins over the variable
    assert _method_used(opmap(workers=1, start_method=explicit, **FAST)(square)) == explicit


def _method_used(mapped: Any) -> str:
    from opero._maps import pool

    used: list[str] = []
    original = pool.ProcessEngine.__init__

    def spy(self: Any, begin: Any, workers: int, kind: str, method: str) -> None:
        used.append(method)
        original(self, begin, workers, kind, method)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pool.ProcessEngine, "__init__", spy)
        assert mapped([3]) == [9]
    return used[0]


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("linux", "forkserver"), ("darwin", "spawn"), ("win32", "spawn"), ("freebsd14", "forkserver")],
)
def test_the_default_start_method_per_platform(
    monkeypatch: pytest.MonkeyPatch, platform: str, expected: str
) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.delenv("OPERO_START_METHOD", raising=False)
    assert start.default_start_method() == expected


def test_the_default_is_used_when_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPERO_START_METHOD", raising=False)
    assert _method_used(opmap(workers=1, **FAST)(square)) == start.default_start_method()


# --- what travels, and what cannot ------------------------------------------------------


@pytest.mark.parametrize("method", [m for m in start_methods() if m != "fork"])
def test_an_unpicklable_function_fails_the_map_at_once_naming_it(method: str) -> None:
    lock = threading.Lock()

    def locked(x: int) -> int:
        with lock:
            return x

    mapped = opmap(workers=2, start_method=method, **FAST)(locked)
    started = time.monotonic()
    with pytest.raises(TypeError) as caught:
        mapped(range(4))
    assert time.monotonic() - started < 1  # before any worker started
    message = str(caught.value)
    assert "the function " in message
    assert "the function of" not in message
    assert "locked" in message
    assert "cannot pickle '_thread.lock' object" in message
    assert "start_method='fork'" in message
    if "fork" in start_methods():  # fork inherits the closure: nothing is pickled
        assert opmap(workers=2, start_method="fork", **FAST)(locked)(range(4)) == [0, 1, 2, 3]


@pytest.mark.parametrize("method", [m for m in start_methods() if m != "fork"])
def test_unpicklable_extra_arguments_are_named(method: str) -> None:
    def add(x: int, extra: Any = None, *, other: Any = None) -> int:
        return x

    mapped = opmap(workers=1, start_method=method, **FAST)(add)
    with pytest.raises(TypeError, match=r"extra argument 1 \(after the item\)"):
        mapped([1], threading.Lock())
    with pytest.raises(TypeError, match="keyword argument 'other'"):
        mapped([1], other=threading.Lock())


@pytest.mark.parametrize("mode", [*start_methods(), "thread"])
def test_an_unpicklable_item_fails_alone(mode: str) -> None:
    options = {"mode": "thread"} if mode == "thread" else {"start_method": mode}
    mapped = opmap(workers=2, return_exceptions=True, **options, **FAST)(lambda x: 1)
    items = [1, (i for i in []), 3, 4, 5, 6, 7, 8]
    results = mapped(items)
    if mode == "thread":  # nothing is pickled in threads
        assert results == [1] * 8
        return
    assert results[:1] + results[2:] == [1] * 7
    failure = results[1]
    assert isinstance(failure, TypeError)
    assert "item 1 (builtins.generator) cannot be sent to a worker process" in str(failure)
    assert "cannot pickle 'generator' object" in str(failure)
    stream = opmap(workers=2, start_method=mode, **FAST)(lambda x: 1).imap(iter(items))
    with pytest.raises(OpmapError) as caught:
        list(stream)
    assert list(caught.value.failures) == [1]


@opero(retries=0, cache=False)
def _decorated_module_function(x: int) -> int:
    return x + 1


def test_opero_functions_travel_whether_importable_or_not(start_method: str) -> None:
    @opero(retries=1, min_delay=0, cache=False, on_event=lambda event: None)
    def local(x: int) -> int:  # a closure, with a hook: decorated again in the worker
        return x * 2

    def item(x: int) -> int:
        return local(x) + _decorated_module_function(x)

    results = opmap(workers=2, start_method=start_method, **FAST)(item)(range(4))
    assert results == [3 * x + 1 for x in range(4)]


MODULE = """
import threading
from opero import opmap

LOCK = threading.Lock()  # a module global that cannot be pickled


@opmap(mode="process", workers=2, start_method={method!r}, cache=False, progress=False)
def double(x: int) -> int:
    with LOCK:
        return 2 * x
"""


def test_a_module_level_mapper_travels_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_method: str
) -> None:
    # Its module's name for the function holds the mapper: by value, the function
    # would take LOCK along. The folder joins sys.path after any fork server started.
    name = f"usermod_{start_method}"
    (tmp_path / f"{name}.py").write_text(MODULE.format(method=start_method))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    try:
        assert module.double([1, 2, 3]) == [2, 4, 6]
    finally:
        sys.modules.pop(name, None)


def test_the_attributes_a_decorated_function_carries_are_listed_in_one_place() -> None:
    from opero._pipeline.build import ATTACHED

    decorated = opero(cache=False)(square)
    ours = set(vars(decorated)) - {"__wrapped__"}
    assert ours == set(ATTACHED)  # what a user's functools.wraps copies, left behind


def test_a_users_wrapper_over_an_opero_function_is_kept(start_method: str) -> None:
    import functools

    attempts: list[int] = []

    @opero(retries=2, min_delay=0, cache=False)
    def flaky(x: int) -> int:
        attempts.append(x)
        raise ValueError(x)

    @functools.wraps(flaky)  # copies opero's attributes: still the user's own wrapper
    def tagged(x: int) -> tuple[str, int]:
        try:
            return ("tagged", flaky(x))
        except ValueError:
            return ("tagged", len(attempts))

    results = opmap(workers=1, start_method=start_method, **FAST)(tagged)([10])
    assert results == [("tagged", 3)]  # 3 attempts, not 9: opero applied once


def test_workers_see_the_parents_environment_of_now(
    monkeypatch: pytest.MonkeyPatch, start_method: str
) -> None:
    def read(name: str) -> str | None:
        return os.environ.get(name)

    mapped = opmap(workers=1, start_method=start_method, **FAST)(read)
    monkeypatch.delenv("OPERO_TEST_SETTING", raising=False)
    assert mapped(["OPERO_TEST_SETTING"]) == [None]  # the fork server starts (if not yet)
    monkeypatch.setenv("OPERO_TEST_SETTING", "set since")
    assert mapped(["OPERO_TEST_SETTING"]) == ["set since"]


def test_testing_mode_reaches_the_workers(start_method: str) -> None:
    from opero.testing import no_waits

    attempts: dict[int, int] = {}

    def flaky(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1  # the worker's own count
        if attempts[x] < 3:
            raise ConnectionError(x)
        return x

    mapped = opmap(
        workers=2, start_method=start_method, retries=5, min_delay=5, progress=False, cache=False
    )(flaky)
    begin = time.monotonic()
    with no_waits():
        assert mapped(range(4)) == [0, 1, 2, 3]
    assert time.monotonic() - begin < 5  # two 5 s waits per item without it


def test_global_hooks_of_the_parent_see_the_workers_events(start_method: str) -> None:
    from opero import add_hook

    kinds: list[str] = []
    remove = add_hook(lambda event: kinds.append(event.kind))
    try:
        assert opmap(workers=2, start_method=start_method, **FAST)(square)(range(3)) == [0, 1, 4]
    finally:
        remove()
    assert kinds.count("call_succeeded") == 3


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python 3.12 added the warning")
def test_the_default_never_forks_a_threaded_parent() -> None:
    # Python 3.12+ warns (DeprecationWarning) when a process with threads forks.
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait, daemon=True)
    helper.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert opmap(workers=2, **FAST)(square)(range(6)) == [x * x for x in range(6)]
    finally:
        stop.set()
        helper.join()
    assert [str(w.message) for w in caught if "fork" in str(w.message)] == []


# --- scripts, as users run them ---------------------------------------------------------


SCRIPT = """
import multiprocess, multiprocessing, sys
multiprocess.set_start_method({global_method!r}, force=True)
multiprocessing.set_start_method({global_method!r}, force=True)
from opero import opmap

def sq(x):
    return x * x

if __name__ == "__main__":
    mapped = opmap(mode="process", workers=2, cache=False, progress=False{extra})(sq)
    print(mapped(range(10)))
    base = 3
    print(opmap(mode="process", workers=2, progress=False{extra})(lambda x: x + base)([1, 2]))
"""


@pytest.mark.parametrize("method", [m for m in start_methods() if m != "fork"])
@pytest.mark.parametrize("explicit", [False, True])
def test_the_issue_script_maps_under_spawn_and_forkserver(
    tmp_path: Path, method: str, explicit: bool
) -> None:
    extra = f", start_method={method!r}" if explicit else ""
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT.format(global_method=method, extra=extra))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]", "[4, 5]"]


def test_what_items_print_in_workers_is_not_lost(start_method: str) -> None:
    # The pool is terminated once every answer is in: workers flush after each chunk.
    code = textwrap.dedent(
        f"""
        from opero import opmap

        def shout(x):
            print(f"item {{x}}")  # block-buffered: stdout is a pipe
            return x

        if __name__ == "__main__":
            opmap(mode="process", start_method={start_method!r}, workers=2, cache=False,
                  progress=False)(shout)(range(20))
        """
    )
    # Block-buffered, as a pipe is by default: unbuffered writers interleave mid-line.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert sorted(done.stdout.splitlines()) == sorted(f"item {x}" for x in range(20))


@pytest.mark.parametrize("method", [m for m in start_methods() if m != "fork"])
def test_a_script_without_the_main_guard_fails_clearly_instead_of_hanging(
    tmp_path: Path, method: str
) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from opero import opmap\n"
        "def sq(x):\n"
        "    return x * x\n"
        f"print(opmap(mode='process', workers=2, start_method={method!r}, cache=False,"
        " progress=False)(sq)(range(4)))\n"
    )
    begin = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert time.monotonic() - begin < 30  # it looped forever, restarting workers
    assert done.returncode != 0
    # Workers that exit while starting, or (Python 3.13, forkserver) a fork server that
    # died importing the script: either way the message says what to do.
    assert "opmap(): " in done.stderr
    assert 'guard the script\'s top level with `if __name__ == "__main__":`' in done.stderr


def test_a_job_that_does_not_load_in_the_workers_fails_clearly_instead_of_hanging(
    tmp_path: Path,
) -> None:
    (tmp_path / "refuses.py").write_text(
        "import os\n"
        "if os.environ['MAIN_PID'] != str(os.getpid()):\n"
        "    raise ImportError('refuses to load in a worker')\n"
        "def sq(x):\n"
        "    return x * x\n"
    )
    (tmp_path / "main.py").write_text(
        "import os\n"
        "from opero import opmap\n"
        "if __name__ == '__main__':\n"
        "    os.environ['MAIN_PID'] = str(os.getpid())\n"
        "    from refuses import sq\n"
        "    print(opmap(mode='process', workers=2, start_method='spawn', cache=False,"
        " progress=False)(sq)(range(4)))\n"
    )
    begin = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(tmp_path / "main.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert time.monotonic() - begin < 30  # the pool replaced the dying workers forever
    assert done.returncode != 0
    assert "exited while starting" in done.stderr
    assert "refuses to load in a worker" in done.stderr  # the workers' own error, too


# --- a killed parent --------------------------------------------------------------------


@POSIX_ONLY
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_workers_of_a_killed_parent_exit_on_their_own(start_method: str, how: str) -> None:
    code = textwrap.dedent(
        f"""
        import os, time
        from opero import opmap

        def slow(x):
            os.write(1, f"worker {{os.getpid()}}\\n".encode())
            time.sleep(60)
            return x

        if __name__ == "__main__":
            opmap(mode="process", start_method={start_method!r}, workers=2, chunksize=1,
                  cache=False, progress=False)(slow)(range(4))
        """
    )
    parent = start_session(code, stderr=subprocess.DEVNULL)
    assert parent.stdout is not None
    try:
        workers = {int(parent.stdout.readline().split()[1]) for _ in range(2)}
        parent.send_signal(getattr(signal, how))
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while live_processes(group=parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = live_processes(group=parent.pid)
    finally:
        parent.stdout.close()
        for pid in live_processes(group=parent.pid):
            os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert workers
    assert left == set()  # the workers, the fork server and the resource tracker are gone


PRELOADED = """
import os
with open(os.environ["IMPORTS_LOG"], "a") as log:  # one line per process importing it
    log.write(f"{os.getpid()}\\n")


def triple(x):
    return 3 * x
"""

PRELOAD_SCRIPT = """
import os, sys
import multiprocess
multiprocess.set_forkserver_preload(["__main__", "decimal"])  # the application's own
from opero import opmap
import preloaded

if __name__ == "__main__":
    mapped = opmap(mode="process", workers=4, start_method="forkserver", cache=False,
                   progress=False)(preloaded.triple)
    print(mapped(range(40)))
    from multiprocess import forkserver
    print(" ".join(forkserver._forkserver._preload_modules))
    print(os.getpid())
"""


@pytest.mark.skipif("forkserver" not in start_methods(), reason="no fork server here")
def test_the_fork_server_imports_the_workers_modules_once_for_all_of_them(
    tmp_path: Path,
) -> None:
    """The function's module and opero's worker modules are imported in the fork
    server, which forks every worker: not again in each of the 4 workers."""
    (tmp_path / "preloaded.py").write_text(PRELOADED)
    script = tmp_path / "script.py"
    script.write_text(PRELOAD_SCRIPT)
    log = tmp_path / "imports.log"
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "IMPORTS_LOG": str(log), "PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    results, preload, parent = done.stdout.splitlines()
    assert results == str([3 * x for x in range(40)])
    modules = preload.split()
    assert modules[:2] == ["__main__", "decimal"]  # the application's list is kept
    assert {"preloaded", "opero._maps.worker", "multiprocess.pool"} <= set(modules)
    importers = log.read_text().split()
    assert importers[0] == parent
    assert len(importers) == 2  # the parent, and the fork server: no worker imported it
