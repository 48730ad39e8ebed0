"""The pytest plugin opero installs (entry point ``pytest11``): the ``opero_no_waits``
fixture, which runs one test under `opero.testing.no_waits()`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from opero.testing import no_waits


@pytest.fixture
def opero_no_waits() -> Iterator[None]:
    """opero's retry delays and rate-limit waits are zero for this test."""
    with no_waits():
        yield
