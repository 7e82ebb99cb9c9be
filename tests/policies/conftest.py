from __future__ import annotations

from collections.abc import Iterator

import pytest

from asgi_resilience.policies import reset_policies


@pytest.fixture(autouse=True)
def fresh_registries() -> Iterator[None]:
    """Named policies and per-origin state are process-wide by design; every test starts clean."""
    reset_policies()
    yield
    reset_policies()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async policy test runs on asyncio and on trio."""
    return str(request.param)
