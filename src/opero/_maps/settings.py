"""`@opmap`'s own options (mode, workers, ordering, progress, ...), validated once."""

from __future__ import annotations

import os
import sys
from typing import Any, NamedTuple

MODES = ("process", "thread", "async", "dask", "ray")
# The most workers a map may ask for: more processes or threads than these fail to start
# on ordinary machines (a map never starts more workers than it has items).
MAX_CHUNKSIZE = 10**9  # items sent to a worker at once: more would never fit in memory
# Windows: a pool waits on its workers' handles with WaitForMultipleObjects, which takes
# at most 63 (CPython gh-89240; ProcessPoolExecutor stops at 61 there too).
MAX_PROCESSES = 61 if sys.platform == "win32" else 1024
MAX_WORKERS = {
    "process": MAX_PROCESSES,
    "thread": 4096,
    "async": 1_000_000,
    "dask": 4096,
    "ray": 4096,
}
CLUSTER_MODES = frozenset({"dask", "ray"})


class MapSettings(NamedTuple):
    """`@opmap`'s own options, validated."""

    mode: str = "process"
    workers: int | None = None
    ordered: bool = True
    progress: bool | str = True
    return_exceptions: bool = False
    chunksize: int | None = None
    client: Any = None  # mode="dask": a distributed.Client, or a scheduler address
    address: str | None = None  # mode="ray": the Ray cluster's address
    # mode="process": "fork", "forkserver" or "spawn"; None: OPERO_START_METHOD if set,
    # else opero's default for the platform (resolved per map, see _maps/start.py)
    start_method: str | None = None
    # A journal file of finished items (opero._maps.journal): a killed map, run again,
    # redoes none of them. Made absolute at decoration, so a later chdir changes nothing.
    resume: str | None = None


def map_settings(given: dict[str, Any]) -> MapSettings:
    settings = MapSettings(**given)
    mode, workers, chunksize = settings.mode, settings.workers, settings.chunksize
    if not isinstance(mode, str):
        raise TypeError(f"opmap(): mode must be a str, got {mode!r}")
    if mode not in MODES:
        raise ValueError(f"opmap(): mode must be one of {', '.join(MODES)}, got {mode!r}")
    _check_counts(mode, workers, chunksize)
    if chunksize is not None and mode == "async":
        raise ValueError("opmap(): chunksize applies to process and thread mode, not async")
    for name in ("ordered", "return_exceptions"):
        if not isinstance(getattr(settings, name), bool):
            raise TypeError(
                f"opmap(): {name} must be True or False, got {getattr(settings, name)!r}"
            )
    progress = settings.progress
    if not (isinstance(progress, bool) or progress == "always"):
        raise ValueError(f"opmap(): progress must be True, False or 'always', got {progress!r}")
    _check_cluster(mode, settings.client, settings.address)
    if settings.resume is not None:
        settings = settings._replace(resume=_check_resume(settings.resume))
    from opero._maps.start import check_start_method

    settings = settings._replace(
        start_method=check_start_method("opmap", settings.start_method, mode)
    )
    if workers is None:
        cpus = os.cpu_count() or 1
        workers = {
            "process": min(cpus, MAX_PROCESSES),
            "thread": min(32, cpus + 4),
            "async": 64,
            "dask": cpus,
            "ray": cpus,
        }[mode]
        settings = settings._replace(workers=workers)
    return settings


def _check_counts(mode: str, workers: object, chunksize: object) -> None:
    """`workers` and `chunksize`: ints from 1 to what can run (see MAX_WORKERS)."""
    most = {"workers": MAX_WORKERS[mode], "chunksize": MAX_CHUNKSIZE}
    for name, value in (("workers", workers), ("chunksize", chunksize)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"opmap(): {name} must be an int or None, got {value!r}")
        if value < 1:
            raise ValueError(f"opmap(): {name} must be >= 1, got {value!r}")
        if value > most[name]:
            what = "" if name == "chunksize" else f" in mode={mode!r}"
            raise ValueError(f"opmap(): {name} must be at most {most[name]:,}{what}, got {value!r}")


def _check_cluster(mode: str, client: Any, address: object) -> None:
    """`client` (Dask) and `address` (Ray) belong to their mode."""
    if client is not None:
        if mode != "dask":
            raise ValueError(f"opmap(): client is for mode='dask', not mode={mode!r}")
        if not (isinstance(client, str) or hasattr(client, "submit")):
            raise TypeError(
                "opmap(): client must be a distributed.Client or a scheduler address "
                f"such as 'tcp://scheduler:8786', got {client!r}"
            )
    if address is not None:
        if mode != "ray":
            raise ValueError(f"opmap(): address is for mode='ray', not mode={mode!r}")
        if not isinstance(address, str):
            raise TypeError(f"opmap(): address must be a str, got {address!r}")


def _check_resume(resume: object) -> str:
    """`resume`: a path to a journal file (str or os.PathLike), absolute from here on."""
    if isinstance(resume, bool) or not isinstance(resume, str | os.PathLike):
        raise TypeError(
            f"opmap(): resume must be a path (a str or os.PathLike) to a journal file, "
            f"got {resume!r}"
        )
    path = os.fspath(resume)
    if not isinstance(path, str):
        raise TypeError(f"opmap(): resume must be a str path, not bytes, got {resume!r}")
    if not path.strip() or "\0" in path:
        raise ValueError(f"opmap(): resume must name a file, got {resume!r}")
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        raise ValueError(f"opmap(): resume must name a file, and {resume!r} is a directory")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):  # created at the first map
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    if parent and not os.path.isdir(parent):
        raise ValueError(
            f"opmap(): resume={resume!r} cannot be created: {parent!r} is not a directory"
        )
    return path
