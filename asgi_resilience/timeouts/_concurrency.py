"""ConcurrencyLimitMiddleware: a bulkhead with a bounded wait queue and optional adaptive limit.

* At most ``max_concurrent`` requests run in the app at once. Up to ``max_queue`` more wait (FIFO,
  or LIFO while the queue is at least half full with ``lifo_on_overload=True``) for at most
  ``queue_timeout`` seconds. Anything else is answered 503 problem+json (type ``overloaded``) with
  ``Retry-After``, before the app is called: the request body is not read.
* A slot is held until the final body message is sent, the client disconnects, the app fails or
  the request is cancelled, whichever comes first; a streaming response holds its slot.
* ``partitions={"/admin/*": 0.1}`` reserves a share of the slots (and a queue of its own) for
  matching paths, so a flood on other paths cannot starve them (and they cannot take more than
  their share). ``max_queue`` and ``queue_timeout`` apply to each partition.
* ``adaptive=True`` moves the limit between ``min_concurrent`` and ``max_concurrent`` with
  :class:`~asgi_resilience.timeouts._adaptive.AdaptiveLimit` (latency against the minimum latency).
* WebSocket and lifespan scopes, and ``exempt`` paths, pass through without a slot.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import anyio

from asgi_resilience._asgi import send_error
from asgi_resilience._clock import Clock
from asgi_resilience.errors import ConfigurationError, Overloaded
from asgi_resilience.observability import NOOP, Telemetry, resolve_telemetry
from asgi_resilience.observability._telemetry import Series
from asgi_resilience.timeouts._adaptive import AdaptiveLimit, Algorithm
from asgi_resilience.timeouts._rules import PathRules, seconds
from asgi_resilience.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ConcurrencyLimitMiddleware"]

DEFAULT_PARTITION = "default"
_SHED_MESSAGE = "Too many requests in progress; try again later."


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class _Pool:
    """The slots and wait queue of one partition."""

    __slots__ = ("active", "active_series", "attributes", "limit", "name", "share", "waiters")

    def __init__(self, name: str, share: float) -> None:
        self.name = name
        self.share = share
        self.limit = 1
        self.active = 0
        self.waiters: deque[_Waiter] = deque()
        self.attributes = {"partition": name}
        self.active_series: Series = NOOP.instrument("asgi_resilience.concurrency.active").bind()


class ConcurrencyLimitMiddleware:
    """Bound the requests running in the app; queue a few, shed the rest with 503.

    Args:
        app: the ASGI app to protect.
        max_concurrent: the most requests in the app at once (the ceiling when ``adaptive``).
        max_queue: how many requests may wait for a slot (per partition); 0 sheds at once.
        queue_timeout: the longest a request waits for a slot before it gets a 503.
        lifo_on_overload: serve the newest waiter first while the queue is at least half full
            (the oldest waiters are the likeliest to have been abandoned by their clients).
        exempt: path patterns (``*`` wildcard) that pass without taking a slot (health checks).
        partitions: path pattern -> share of the slots reserved for it (``{"/admin/*": 0.1}``).
        adaptive: adapt the limit to the measured latency (see ``algorithm``).
        min_concurrent: the floor of the adaptive limit.
        algorithm: ``"gradient"`` (Envoy-style, default) or ``"aimd"``.
        window: seconds of samples per adaptive update.
        retry_after: the ``Retry-After`` (seconds) sent with a 503.
        clock: monotonic clock used for latency samples (inject a ManualClock in tests).
        telemetry: the :class:`Telemetry` to record ``asgi_resilience.concurrency.*`` with.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrent: int = 100,
        max_queue: int = 0,
        queue_timeout: float | timedelta = 1.0,
        lifo_on_overload: bool = False,
        exempt: Sequence[str] = (),
        partitions: Mapping[str, float] | None = None,
        adaptive: bool = False,
        min_concurrent: int = 1,
        algorithm: Algorithm = "gradient",
        window: float | timedelta = 1.0,
        retry_after: float | timedelta = 1.0,
        clock: Clock = time.monotonic,
        telemetry: Telemetry | bool = True,
    ) -> None:
        self.app = app
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ConfigurationError(f"max_concurrent must be an integer >= 1, got {max_concurrent!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise ConfigurationError(f"max_queue must be an integer >= 0, got {max_queue!r}")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = seconds(queue_timeout, "queue_timeout", allow_zero=True)
        self.lifo_on_overload = lifo_on_overload
        self.retry_after = seconds(retry_after, "retry_after", allow_zero=True)
        if isinstance(exempt, str):
            raise ConfigurationError(f"exempt must be a list of path patterns, not a single string: use [{exempt!r}]")
        self._exempt: PathRules[bool] = PathRules((pattern, True) for pattern in exempt)
        self._controller: AdaptiveLimit | None = None
        if adaptive:
            self._controller = AdaptiveLimit(
                min_limit=min_concurrent,
                max_limit=max_concurrent,
                algorithm=algorithm,
                window=seconds(window, "window", allow_zero=True),
            )
        self._clock = clock
        reserved = 0.0
        pools: list[_Pool] = []
        for pattern, share in (partitions or {}).items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
                raise ConfigurationError(
                    f"partitions[{pattern!r}] must be a share of the slots between 0 and 1 (e.g. 0.1), got {share!r}"
                )
            reserved += share
            pools.append(_Pool(pattern, float(share)))
        if reserved >= 1:
            raise ConfigurationError(
                f"partition shares add up to {reserved:g}; they must leave a share below 1 for the other paths"
            )
        self._partitions: PathRules[_Pool] = PathRules((pool.name, pool) for pool in pools)
        self._has_exempt = bool(self._exempt)  # plain attributes: PathRules.__bool__ is a Python call
        self._has_partitions = bool(self._partitions)
        self._default = _Pool(DEFAULT_PARTITION, 1.0 - reserved)
        self._pools = [*pools, self._default]
        self.limit = 0
        telemetry = resolve_telemetry(telemetry)
        self._active = telemetry.instrument("asgi_resilience.concurrency.active")
        self._queued = telemetry.instrument("asgi_resilience.concurrency.queued")
        self._rejected = telemetry.instrument("asgi_resilience.concurrency.rejected")
        self._limit_gauge = telemetry.instrument("asgi_resilience.concurrency.limit")
        self._queue_duration = telemetry.instrument("asgi_resilience.concurrency.queue.duration")
        for pool in self._pools:
            pool.active_series = self._active.bind(pool.attributes)
        self._set_limit(self._controller.limit if self._controller is not None else max_concurrent)
        telemetry.register_snapshot("concurrency", self.snapshot)

    # -- state ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Live state for the dashboard: limit, slots in use and requests queued, per partition."""
        return {
            "limit": self.limit,
            "in_use": sum(pool.active for pool in self._pools),
            "queued": sum(len(pool.waiters) for pool in self._pools),
            "adaptive": self._controller is not None,
            "partitions": {
                pool.name: {"limit": pool.limit, "in_use": pool.active, "queued": len(pool.waiters)}
                for pool in self._pools
            },
        }

    def _set_limit(self, limit: int) -> None:
        if limit == self.limit:
            return
        self.limit = limit
        reserved = 0
        for pool in self._pools:
            if pool is not self._default:
                pool.limit = max(1, math.floor(pool.share * limit))
                reserved += pool.limit
        self._default.limit = max(1, limit - reserved)
        self._limit_gauge.record(limit, {"partition": "all"})
        for pool in self._pools:
            self._limit_gauge.record(pool.limit, pool.attributes)
            while pool.waiters and pool.active < pool.limit:  # a raised limit admits waiters
                pool.active += 1
                self._grant(pool)

    def _grant(self, pool: _Pool) -> None:
        waiters = pool.waiters
        if self.lifo_on_overload and len(waiters) * 2 >= max(self.max_queue, 1):
            waiter = waiters.pop()
        else:
            waiter = waiters.popleft()
        waiter.granted = True
        waiter.event.set()

    def _release(self, pool: _Pool) -> None:
        pool.active_series.add(-1)
        if pool.waiters and pool.active <= pool.limit:
            self._grant(pool)  # the slot passes straight to a waiter (which counts itself active)
            return
        pool.active -= 1

    # -- requests ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self._has_exempt and self._exempt.match(path)[0]:
            await self.app(scope, receive, send)
            return
        pool = self._default
        if self._has_partitions:
            matched, found = self._partitions.match(path)
            if matched and found is not None:
                pool = found
        if pool.active < pool.limit and not pool.waiters:
            pool.active += 1
            pool.active_series.add(1)
        elif not await self._wait(pool):
            try:
                await send_error(
                    send,
                    Overloaded(_SHED_MESSAGE, retry_after=self.retry_after),
                    head=scope.get("method") == "HEAD",
                )
            except OSError:
                pass  # the client is gone
            return
        slot = _Slot(self, pool, receive, send)
        failed = True
        try:
            await self.app(scope, slot.receive, slot.send)
            failed = False
        finally:
            slot.release(failed=failed)

    async def _wait(self, pool: _Pool) -> bool:
        """Queue for a slot; True when one was handed over, False when the request must be shed."""
        if len(pool.waiters) >= self.max_queue or self.queue_timeout == 0:
            self._rejected.add(1, {"partition": pool.name, "reason": "queue_full"})
            return False
        waiter = _Waiter()
        pool.waiters.append(waiter)
        self._queued.add(1, pool.attributes)
        started = self._clock()
        try:
            with anyio.move_on_after(self.queue_timeout):
                await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self._active.add(1, pool.attributes)
                self._release(pool)  # cancelled just as a slot arrived: pass it on
            raise
        finally:
            self._queued.add(-1, pool.attributes)
            self._queue_duration.record(max(0.0, self._clock() - started), pool.attributes)
            if not waiter.granted:
                try:
                    pool.waiters.remove(waiter)
                except ValueError:  # pragma: no cover - defensive: only _grant removes granted waiters
                    pass
        if waiter.granted:
            self._active.add(1, pool.attributes)
            return True
        self._rejected.add(1, {"partition": pool.name, "reason": "queue_timeout"})
        return False

    def _finished(self, pool: _Pool, admitted: float, status: int | None, failed: bool) -> None:
        """Give the slot back and, when adaptive, feed the latency sample to the controller."""
        self._release(pool)
        controller = self._controller
        if controller is not None:
            now = self._clock()
            dropped = failed or status in (503, 504)
            self._set_limit(controller.sample(now - admitted, now, dropped=dropped))


class _Slot:
    """One admitted request: releases its slot exactly once, on the first of the exit paths."""

    __slots__ = ("_admitted", "_mw", "_pool", "_receive", "_send", "held", "status")

    def __init__(self, mw: ConcurrencyLimitMiddleware, pool: _Pool, receive: Receive, send: Send) -> None:
        self._mw = mw
        self._pool = pool
        self._receive = receive
        self._send = send
        self.held = True
        self.status: int | None = None
        self._admitted = mw._clock() if mw._controller is not None else 0.0

    def release(self, *, failed: bool = False) -> None:
        if self.held:
            self.held = False
            mw = self._mw
            if mw._controller is None:
                mw._release(self._pool)
            else:
                mw._finished(self._pool, self._admitted, self.status, failed)

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.release()
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif (kind == "http.response.body" and not message.get("more_body", False)) or kind == "http.response.pathsend":
            try:
                await self._send(message)
            finally:
                self.release()
            return
        await self._send(message)
