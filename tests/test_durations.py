"""One duration validator for every layer: the same shapes are accepted and refused everywhere."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from asgi_resilience import (
    CacheMiddleware,
    CacheRule,
    ConfigurationError,
    RateLimitMiddleware,
    ResilienceStack,
    TimeoutMiddleware,
)
from asgi_resilience._durations import seconds
from asgi_resilience.policies import BreakerPolicy, RetryPolicy
from asgi_resilience.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
    pass


# each builds a layer with one duration option set to the value given
OPTIONS: dict[str, Callable[[Any], object]] = {
    "TimeoutMiddleware timeout": lambda v: TimeoutMiddleware(app, timeout=v),
    "TimeoutMiddleware idle_timeout": lambda v: TimeoutMiddleware(app, idle_timeout=v),
    "CacheMiddleware lock_timeout": lambda v: CacheMiddleware(app, lock_timeout=v),
    "CacheMiddleware stale_if_error": lambda v: CacheMiddleware(app, stale_if_error=v),
    "CacheRule ttl": lambda v: CacheRule(path="/x", ttl=v),
    "RateLimitMiddleware store_timeout": lambda v: RateLimitMiddleware(app, store_timeout=v),
    "RateLimitMiddleware store_cooldown": lambda v: RateLimitMiddleware(app, store_cooldown=v),
    "ResilienceStack timeout": lambda v: ResilienceStack(timeout=v),
    "RetryPolicy backoff_max": lambda v: RetryPolicy(backoff_max=v),
    "BreakerPolicy probe_timeout": lambda v: BreakerPolicy(probe_timeout=v),
}


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("bad", [True, "10", "1s", float("nan"), float("inf"), -1, -0.5, None, [1.0]])
def test_every_duration_option_refuses_the_same_bad_values(option: str, bad: Any) -> None:
    build = OPTIONS[option]
    if bad is None and option.startswith(("TimeoutMiddleware", "CacheRule", "ResilienceStack")):
        pytest.skip("None is meaningful here (no limit / no default)")
    if bad is True and option.startswith("ResilienceStack"):
        pytest.skip("True turns the layer on with its defaults")
    with pytest.raises(ConfigurationError, match="number of seconds"):
        build(bad)


@pytest.mark.parametrize("option", OPTIONS)
def test_every_duration_option_accepts_seconds_and_timedelta(option: str) -> None:
    build = OPTIONS[option]
    build(2)
    build(1.5)
    build(timedelta(milliseconds=1500))


def test_the_validator() -> None:
    assert seconds(timedelta(minutes=1), "t") == 60.0
    assert seconds(0, "t", allow_zero=True) == 0.0
    assert isinstance(seconds(3, "t"), float)
    with pytest.raises(ConfigurationError, match="t must be a positive number of seconds, got 0"):
        seconds(0, "t")
    with pytest.raises(ConfigurationError, match=r"at most 30"):
        seconds(31, "t", maximum=30)
    with pytest.raises(ConfigurationError, match="non-negative"):
        seconds(-1, "t", allow_zero=True)
