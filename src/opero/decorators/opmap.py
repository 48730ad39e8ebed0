"""`@opmap` is part of the public contract but not built yet (see TODO.md).

The name is exported now so that it never moves; using it raises `NotImplementedError`
with a clear message instead of doing something half right.
"""

from __future__ import annotations

from typing import Any, NoReturn


def opmap(*args: Any, **options: Any) -> NoReturn:
    """Map a resilient function over many items (not available yet)."""
    raise NotImplementedError(
        "opero.opmap is not available in this release yet; "
        "use @opero on the function and map it yourself for now"
    )
