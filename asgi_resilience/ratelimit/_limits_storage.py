"""Any storage the ``limits`` package supports (memcached, MongoDB, ...), decided by its async strategies.

``memory://`` and Redis URLs keep our own storages (one synchronous call, or one Lua round trip, per
request for all of its limits, atomically). Every other URL ``limits`` knows goes through
:class:`LimitsStorage`: ``memcached://``, ``mongodb://``, ``mongodb+srv://`` and the ``async+...``
spelling of any ``limits`` storage (``async+memory://``, ``async+redis://`` for limits' own Redis
code). What that path guarantees is what ``limits`` guarantees:

* each limit's hit is atomic in the backend (an ``incr`` or the backend's own script), but a
  request's limits are not decided together: with several limits, every one is tested first and the
  request is hit only if each enforced limit has room, so two racing requests can both pass the test
  and the later hit then rejects one of them after it consumed quota of the limits hit before;
* 2 round trips per limit for a request with one limit (hit, window stats for the headers), 3 per
  limit with several (test, hit, stats);
* strategies: ``fixed-window`` and ``sliding-window`` (``limits``' sliding-window counter) on every
  backend, ``moving-window`` where the backend supports it (not memcached); ``gcra`` only on our own
  storages. An unsupported combination is refused when the middleware is built;
* time is the backend's or the process's (``limits`` reads ``time.time``): ``clock=`` is not used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from asgi_resilience.errors import ConfigurationError, StorageError
from asgi_resilience.ratelimit._policy import Decision
from asgi_resilience.ratelimit._storage import Check, RateLimitStorage

__all__ = ["LIMITS_STRATEGIES", "LimitsStorage", "is_limits_url"]

LIMITS_STRATEGIES = {
    "fixed-window": "FixedWindowRateLimiter",
    "sliding-window": "SlidingWindowCounterRateLimiter",
    "moving-window": "MovingWindowRateLimiter",
}
"""Our strategy names and the ``limits.aio.strategies`` class that implements each."""


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _async_schemes() -> set[str]:
    """The URL schemes of every ``limits.aio`` storage class (``async+memcached``, ...)."""
    from limits.aio import storage

    found: set[str] = set()
    for name in storage.__all__:
        found.update(getattr(getattr(storage, name, None), "STORAGE_SCHEME", None) or ())
    return found


def is_limits_url(url: str) -> bool:
    """Whether ``url`` names a storage of the ``limits`` package (sync names map to their async twin)."""
    scheme = _scheme(url)
    return bool(scheme) and (scheme if scheme.startswith("async+") else "async+" + scheme) in _async_schemes()


class LimitsStorage(RateLimitStorage):
    """A ``limits.aio`` storage behind our storage interface (see the module docstring for guarantees).

    Args:
        url: a ``limits`` storage URL; ``memcached://host:11211`` is used as ``async+memcached://...``.
        prefix: the first part of every key.
        options: passed to the ``limits`` storage constructor (e.g. ``implementation=``).
    """

    def __init__(self, url: str, *, prefix: str = "asgi_rl", **options: Any) -> None:
        from limits.errors import ConfigurationError as LimitsConfigurationError
        from limits.storage import storage_from_string

        scheme = _scheme(url)
        if not is_limits_url(url):
            raise ConfigurationError(f"{url!r} is not a storage URL the limits package knows")
        async_url = url if scheme.startswith("async+") else "async+" + url
        try:
            self.backend: Any = storage_from_string(async_url, **options)
        except (LimitsConfigurationError, ValueError) as exc:  # a missing client library, a bad URL
            raise ConfigurationError(f"storage {_redacted(url)!r} cannot be used through limits: {exc}") from exc
        self.name = "limits:" + scheme.removeprefix("async+")
        self.prefix = prefix
        self._limiters: dict[str, Any] = {}

    def check_strategy(self, strategy: str) -> None:
        """Refuse, at construction, a strategy this backend cannot run."""
        self._limiter(strategy)

    def _limiter(self, strategy: str) -> Any:
        found = self._limiters.get(strategy)
        if found is not None:
            return found
        cls_name = LIMITS_STRATEGIES.get(strategy)
        if cls_name is None:
            raise ConfigurationError(
                f"strategy {strategy!r} needs the memory:// or a Redis storage; through limits ({self.name}) "
                f"use one of {', '.join(LIMITS_STRATEGIES)}"
            )
        from limits.aio import strategies

        try:
            limiter = getattr(strategies, cls_name)(self.backend)
        except NotImplementedError as exc:
            raise ConfigurationError(
                f"the {self.name} storage does not support strategy {strategy!r}; use 'fixed-window' or "
                "'sliding-window'"
            ) from exc
        self._limiters[strategy] = limiter
        return limiter

    async def hit(self, strategy: str, checks: Sequence[Check]) -> list[Decision]:
        from limits import RateLimitItemPerSecond

        limiter = self._limiter(strategy)
        items = [RateLimitItemPerSecond(check.limit, max(1, check.period_ms // 1000)) for check in checks]
        keys = [(self.prefix, check.counter or check.rule, str(check.nth), check.partition) for check in checks]
        try:
            if len(checks) == 1:
                allowed = [await limiter.hit(items[0], *keys[0], cost=checks[0].cost)]
            else:
                room = [
                    await limiter.test(item, *key, cost=check.cost)
                    for item, key, check in zip(items, keys, checks, strict=True)
                ]
                if all(ok or not check.enforce for ok, check in zip(room, checks, strict=True)):
                    allowed = [
                        await limiter.hit(item, *key, cost=check.cost) if ok else False
                        for item, key, check, ok in zip(items, keys, checks, room, strict=True)
                    ]
                else:
                    allowed = [False if not ok else None for ok in room]  # None: had room, not consumed
            stats = [await limiter.get_window_stats(item, *key) for item, key in zip(items, keys, strict=True)]
        except ConfigurationError:
            raise
        except Exception as exc:
            raise StorageError(f"{self.name} rate-limit call failed: {type(exc).__name__}: {exc}") from exc
        now = time.time()
        decisions = []
        for check, ok, (reset_at, remaining) in zip(checks, allowed, stats, strict=True):
            reset_after = max(0.0, float(reset_at) - now)
            if ok is None:
                decisions.append(Decision(True, check.limit, max(0, int(remaining)), reset_after, None))
            elif ok:
                decisions.append(Decision(True, check.limit, max(0, int(remaining)), reset_after, None))
            else:
                decisions.append(Decision(False, check.limit, 0, reset_after, max(reset_after, 0.001)))
        return decisions

    async def reset(self) -> None:
        try:
            await self.backend.reset()
        except NotImplementedError as exc:
            raise StorageError(f"the {self.name} storage of limits cannot be reset") from exc
        except Exception as exc:
            raise StorageError(f"{self.name} reset failed: {type(exc).__name__}: {exc}") from exc


def _redacted(url: str) -> str:
    """The URL without its password (it ends up in an exception message)."""
    head, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{head}{sep}{user}:***@{host}" if ":" in credentials else url
