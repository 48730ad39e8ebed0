"""opero's logging goes through loguru and stays silent until the host enables it.

loguru's convention for libraries is ``logger.disable("opero")`` at import; the host opts
in with ``logger.enable("opero")``. Importing loguru costs more than the whole
`import opero` budget, so it is imported when opero first has something to say (on a
failure), or at `import opero` if the host already imported it. The disable is applied
only when the host has not yet said anything about "opero" (or a parent of it), so a host
that enabled opero's messages before the first one keeps them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loguru import Logger

LOGGER_NAME = "opero"

_logger: Logger | None = None


def log() -> Logger:
    """The loguru logger, with opero's messages disabled unless the host enabled them."""
    global _logger  # noqa: PLW0603 - one lazily imported module-wide logger
    if _logger is None:
        from loguru import logger

        if not _host_decided(logger):
            logger.disable(LOGGER_NAME)
        _logger = logger
    return _logger


def disable_if_loguru_loaded() -> None:
    """At `import opero`: follow loguru's convention at once when loguru is already loaded."""
    if "loguru" in sys.modules:
        log()


def _host_decided(logger: Logger) -> bool:
    # loguru keeps enable()/disable() calls as (name + ".", enabled) pairs in its core.
    # This is private state; tests/test_logging.py pins it, so a loguru change that
    # moves it shows up as a failing test rather than as lost host settings.
    core = getattr(logger, "_core", None)
    decisions = getattr(core, "activation_list", None)
    if decisions is None:
        return False
    ours = LOGGER_NAME + "."
    return any(ours.startswith(name) or name.startswith(ours) for name, _ in decisions if name)
