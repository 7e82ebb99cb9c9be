"""Opt-in breaker state shared through Redis (``state="redis://..."``): storage glue only.

Used by the httpx breaker transports (one key per origin) and by named breakers
(``circuit_breaker(name, state=...)``, one key per name).

Advisory mode (outbound.md C12): when one process opens the breaker of an origin it publishes
"open for N ms" with an atomic Lua script; other processes read it (at most every
:data:`REFRESH` seconds per origin), open their local breaker for the time left and then probe
on their own. A successful probe clears the key unless another process re-opened it meanwhile.
Keys expire by themselves (PX), so nothing is left behind. Any Redis failure (down, slow,
refused) falls back to the local breaker and is retried after :data:`BACKOFF` seconds (the shared
storage-outage guard, :mod:`asgi_resilience._outage`); a call is
never failed because Redis is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, ClassVar

from asgi_resilience._optional import import_optional
from asgi_resilience._outage import OutageGuard
from asgi_resilience._redis import is_redis_url, redis_client
from asgi_resilience.errors import ConfigurationError

__all__ = ["SharedState"]


REFRESH = 0.25
BACKOFF = 1.0
PREFIX = "asgi_resilience:breaker:"


def _lua(name: str) -> str:
    return resources.files("asgi_resilience.policies").joinpath(name).read_text(encoding="utf-8")


class SharedState:
    """The Redis side of shared breakers, for a sync (``asynchronous=False``) or asyncio client."""

    log: ClassVar[logging.Logger] = logging.getLogger("asgi_resilience.policies")

    def __init__(
        self,
        target: str | Any,
        *,
        asynchronous: bool,
        socket_timeout: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(target, str) and not is_redis_url(target):
            raise ConfigurationError(
                f"state must be a redis://, rediss:// or unix:// URL or a Redis client, got {target!r}"
            )
        if not asynchronous and isinstance(target, str):
            redis = import_optional("redis", extra="redis", feature="Shared circuit breaker state")
            self.client: Any = redis.Redis.from_url(
                target, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
        else:
            self.client = redis_client(target, socket_timeout=socket_timeout)
        self._owns_client = isinstance(target, str)
        self._open = self.client.register_script(_lua("breaker_open.lua"))
        self._close = self.client.register_script(_lua("breaker_close.lua"))
        self._lock = threading.Lock()
        self._checked: dict[str, float] = {}
        self._outage = OutageGuard(cooldown=BACKOFF, clock=clock)
        self.errors = 0

    # -- bookkeeping shared by both flavours -----------------------------------------------------
    def refresh(self) -> float:
        """Seconds between two reads of one key (:data:`REFRESH`)."""
        return REFRESH

    def due(self, origin: str, now: float) -> bool:
        """Whether the shared state of ``origin`` should be read now (rate-limited per origin)."""
        refresh = self.refresh()
        with self._lock:
            if now - self._checked.get(origin, -refresh) < refresh:
                return False
            if not self._outage.admit():
                return False
            self._checked[origin] = now
            if len(self._checked) > 4096:
                self._checked.clear()
            return True

    def _failed(self, exc: BaseException, operation: str) -> None:
        self.errors += 1
        if self._outage.failed():  # once per outage, not once per call
            self.log.warning(
                "shared breaker state unavailable (%s: %s); using local state, retried every %.0f s",
                operation,
                type(exc).__name__,
                BACKOFF,
            )

    def _ok(self) -> None:
        if self._outage.succeeded():
            self.log.warning("shared breaker state available again")

    @staticmethod
    def _seconds(pttl: Any) -> float | None:
        value = int(pttl) if pttl is not None else -2
        return value / 1000.0 if value > 0 else None

    # -- synchronous -------------------------------------------------------------------------------
    def check(self, origin: str) -> float | None:
        """Seconds the shared breaker of ``origin`` stays open (None: not open); call after :meth:`due`."""
        try:
            value = self._seconds(self.client.pttl(PREFIX + origin))
        except Exception as exc:
            self._failed(exc, "read")
            return None
        self._ok()
        return value

    def opened(self, origin: str, seconds: float) -> None:
        if not self._outage.admit():
            return
        try:
            self._open(keys=[PREFIX + origin], args=[max(1, int(seconds * 1000)), int(time.time() * 1000)])
        except Exception as exc:
            self._failed(exc, "open")
            return
        self._ok()

    def closed(self, origin: str, since_epoch: float) -> None:
        if not self._outage.admit():
            return
        try:
            self._close(keys=[PREFIX + origin], args=[int(since_epoch * 1000)])
        except Exception as exc:
            self._failed(exc, "close")
            return
        self._ok()

    def close(self) -> None:
        if self._owns_client:
            try:
                self.client.close()
            except Exception as exc:  # closing a broken connection must not mask the caller's work
                self.log.debug("closing the shared state client failed: %r", exc)

    # -- asyncio -----------------------------------------------------------------------------------
    async def acheck(self, origin: str) -> float | None:
        try:
            value = self._seconds(await self.client.pttl(PREFIX + origin))
        except Exception as exc:
            self._failed(exc, "read")
            return None
        self._ok()
        return value

    async def aopened(self, origin: str, seconds: float) -> None:
        if not self._outage.admit():
            return
        try:
            await self._open(keys=[PREFIX + origin], args=[max(1, int(seconds * 1000)), int(time.time() * 1000)])
        except Exception as exc:
            self._failed(exc, "open")
            return
        self._ok()

    async def aclosed(self, origin: str, since_epoch: float) -> None:
        if not self._outage.admit():
            return
        try:
            await self._close(keys=[PREFIX + origin], args=[int(since_epoch * 1000)])
        except Exception as exc:
            self._failed(exc, "close")
            return
        self._ok()

    async def aclose(self) -> None:
        if self._owns_client:
            try:
                await self.client.aclose()
            except Exception as exc:
                self.log.debug("closing the shared state client failed: %r", exc)
