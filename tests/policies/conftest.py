from __future__ import annotations

from collections.abc import Iterator

import pytest

from asgi_resilience.policies._registry import reset_registries


@pytest.fixture(autouse=True)
def fresh_registries() -> Iterator[None]:
    """Named policies and per-origin state are process-wide by design; every test starts clean."""
    reset_registries()
    yield
    reset_registries()
