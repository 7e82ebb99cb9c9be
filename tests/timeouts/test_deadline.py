"""The published request deadline (contextvar)."""

from __future__ import annotations

import time

import anyio

from asgi_resilience import current_deadline, remaining_time
from asgi_resilience.timeouts import deadline_scope


def test_none_outside_a_timed_request() -> None:
    assert current_deadline() is None
    assert remaining_time() is None


def test_scope_publishes_and_nested_scope_only_shortens() -> None:
    now = time.monotonic()
    with deadline_scope(now + 10) as outer:
        assert current_deadline() == outer == now + 10
        remaining = remaining_time()
        assert remaining is not None and 9 < remaining <= 10
        with deadline_scope(now + 60) as inner:
            assert inner == now + 10  # a longer inner deadline never extends the outer one
        with deadline_scope(now + 1) as inner:
            assert inner == now + 1 == current_deadline()
        with deadline_scope(None) as inner:
            assert inner == now + 10
        assert current_deadline() == now + 10
    assert current_deadline() is None


def test_remaining_time_never_negative() -> None:
    with deadline_scope(time.monotonic() - 5):
        assert remaining_time() == 0.0


async def test_visible_in_child_tasks() -> None:
    seen: list[float | None] = []

    async def child() -> None:
        seen.append(current_deadline())

    with deadline_scope(time.monotonic() + 5) as deadline:
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
    assert seen == [deadline]
