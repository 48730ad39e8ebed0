"""The `@opmap` progress bar: tqdm on stderr, shown only on a terminal unless forced."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """Count, rate, ETA (when the length is known) and failures so far.

    `setting` is the `progress=` option: False (never), True (when stderr is a terminal)
    or "always". tqdm is imported only when a bar is shown.
    """

    __slots__ = ("bar", "failed")

    def __init__(self, setting: bool | str, total: int | None, description: str) -> None:
        self.failed = 0
        self.bar: Any = None
        if setting is False:
            return
        if setting != "always" and not _stderr_is_terminal():
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            desc=description,
            unit="item",
            file=sys.stderr,
            dynamic_ncols=True,
            postfix={"failed": 0},
        )

    def update(self, done: int, failed: int) -> None:
        bar = self.bar
        if bar is None:
            return
        if failed:
            self.failed += failed
            bar.set_postfix({"failed": self.failed}, refresh=False)
        bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
