"""Hooks (``on_retry``, ``on_give_up``, ``on_transition``) and the default ones, which log."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgi_resilience.client._http import RetryEvent
from asgi_resilience.errors import ConfigurationError
from asgi_resilience.observability._ratelog import RateLimitedLog
from asgi_resilience.policies._breaker import BreakerTransition, State

__all__ = ["Hook", "await_hook", "call_hook", "check_hooks", "log_give_up", "log_retry", "log_transition"]

logger = logging.getLogger("asgi_resilience.client")

Hook = Callable[[Any], "None | Awaitable[None]"]


def check_hooks(asynchronous: bool, **hooks: Hook | None) -> None:
    for name, hook in hooks.items():
        if hook is None:
            continue
        if not callable(hook):
            raise ConfigurationError(f"{name} must be a callable taking one event, got {hook!r}")
        if not asynchronous and inspect.iscoroutinefunction(hook):
            raise ConfigurationError(
                f"{name} is an async function but this transport is synchronous; pass a plain function "
                "or use the Async transport"
            )


def call_hook(hook: Hook, event: Any) -> Awaitable[None] | None:
    """Call a hook; its exceptions are logged, never raised into the caller's request."""
    try:
        result = hook(event)
    except Exception:
        logger.exception("asgi_resilience client hook %r failed", hook)
        return None
    return result if inspect.isawaitable(result) else None


async def await_hook(awaitable: Awaitable[None]) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("asgi_resilience client hook failed")


def log_retry(event: RetryEvent) -> None:
    logger.info(
        "retrying %s %s%s after attempt %d (%s) in %.3f s",
        event.method,
        event.origin,
        event.path,
        event.attempt,
        event.reason,
        event.delay,
    )


_give_ups = RateLimitedLog(logger)  # a refused retry is expected in an outage: once per interval per cause


def log_give_up(event: RetryEvent) -> None:
    _give_ups.log(
        logging.WARNING,
        (event.origin, event.reason),
        "giving up on %s %s%s after %d attempt(s): %s",
        event.method,
        event.origin,
        event.path,
        event.attempt,
        event.reason,
    )


def log_transition(transition: BreakerTransition) -> None:
    level = logging.WARNING if transition.to_state is State.OPEN else logging.INFO
    logger.log(
        level,
        "circuit breaker for %s: %s -> %s (%s)",
        transition.origin,
        transition.from_state.value,
        transition.to_state.value,
        transition.reason,
    )
