"""The sync transports are the async ones with the async words taken out (STYLE rule 10).

Like ``unasync --check``: every method pair below must match after the fixed substitutions, so a
change to one twin that is not made to the other fails here. What differs on purpose (cancel
scopes, semaphores, hook awaiting) lives in small helpers outside the compared methods.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from asgi_resilience.client import _transports as t

SUBSTITUTIONS = [
    ("async def ", "def "),
    ("handle_async_request", "handle_request"),
    ("await ", ""),
    (".aclose()", ".close()"),
    (".aread()", ".read()"),
    ("anyio.sleep", "time.sleep"),
    ("AsyncBody", "SyncBody"),
    (".acheck(", ".check("),
    (".aopened(", ".opened("),
    (".aclosed(", ".closed("),
    ("AsyncRetryTransport", "RetryTransport"),
]

PAIRS: list[tuple[Callable[..., Any], Callable[..., Any]]] = [
    (t.AsyncRetryTransport.handle_async_request, t.RetryTransport.handle_request),
    (t.AsyncCircuitBreakerTransport.handle_async_request, t.CircuitBreakerTransport.handle_request),
    (t.AsyncCircuitBreakerTransport._emit, t.CircuitBreakerTransport._emit),
    (t.AsyncResilientTransport.handle_async_request, t.ResilientTransport.handle_request),
]


def unasync(source: str) -> str:
    for old, new in SUBSTITUTIONS:
        source = source.replace(old, new)
    return source


@pytest.mark.parametrize(("async_method", "sync_method"), PAIRS, ids=lambda m: m.__qualname__)
def test_sync_twin_matches_the_async_source(async_method: Callable[..., Any], sync_method: Callable[..., Any]) -> None:
    assert unasync(inspect.getsource(async_method)) == inspect.getsource(sync_method)
