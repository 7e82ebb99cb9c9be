"""``bulkhead``: at most N calls at once per resource, a bounded queue, then :class:`Overloaded`.

One named bulkhead serves async code (asyncio and trio) and threads alike: the counters sit
behind one lock held for O(1) steps, a freed slot is handed directly to the oldest waiter (FIFO,
no barging), and a waiter that gives up (queue timeout, cancellation) leaves the queue or, if it
was handed a slot meanwhile, passes it on. Refusals raise :class:`Overloaded` with
``retry_after``, which :class:`~asgi_resilience.ProblemDetailsMiddleware` answers as a 503
problem with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar

import anyio

from asgi_resilience._deadline import remaining_time
from asgi_resilience.errors import ConfigurationError, Overloaded
from asgi_resilience.observability import Telemetry, resolve_telemetry
from asgi_resilience.policies import _agen_run
from asgi_resilience.policies._base import AsyncFn, Policy, SyncFn
from asgi_resilience.policies._durations import seconds
from asgi_resilience.policies._named import configured, mark_created
from asgi_resilience.policies._registry import NAMED, register_snapshots

__all__ = ["Bulkhead", "bulkhead"]


class _Waiter:
    __slots__ = ("granted", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.granted = False
        self.wake = wake


def _async_waker(event: anyio.Event) -> Callable[[], None]:
    """Set ``event`` from any thread: directly in the loop's own thread, else through the loop."""
    owner = threading.get_ident()
    far: Callable[[], None]
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio (anyio's other backend)
        import trio

        token = trio.lowlevel.current_trio_token()
        far = lambda: token.run_sync_soon(event.set)  # noqa: E731
    else:

        def far() -> None:
            loop.call_soon_threadsafe(event.set)

    def wake() -> None:
        if threading.get_ident() == owner:
            event.set()
        else:
            far()

    return wake


class Bulkhead(Policy):
    """A named bulkhead; see :func:`bulkhead`."""

    kind: ClassVar[str] = "bulkhead"
    rank: ClassVar[int] = 5

    def __init__(
        self,
        name: str,
        *,
        max_concurrent: int,
        max_queue: int,
        queue_timeout: float | None,
        retry_after: float,
        telemetry: Telemetry,
    ) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self.active = 0
        self._queue: deque[_Waiter] = deque()
        self.rejected = 0
        self._label = {"bulkhead": name}
        self._rejections = telemetry.instrument("asgi_resilience.bulkhead.rejected")
        self._queue_time = telemetry.instrument("asgi_resilience.bulkhead.queue.duration")
        self._held: ContextVar[int] = ContextVar(f"asgi_resilience_bulkhead_{name}", default=0)
        register_snapshots(telemetry)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "active": self.active,
            "queued": len(self._queue),
            "max_concurrent": self.max_concurrent,
            "max_queue": self.max_queue,
            "rejected": self.rejected,
        }

    # -- the counters (lock held for O(1) steps only) --------------------------------------------
    def _try_enter(self) -> bool:
        with self._lock:
            if self.active < self.max_concurrent and not self._queue:
                self.active += 1
                return True
            return False

    def _enqueue(self, waiter: _Waiter) -> bool:
        with self._lock:
            if self.active < self.max_concurrent and not self._queue:
                self.active += 1
                waiter.granted = True
                return True
            if len(self._queue) >= self.max_queue:
                return False
            self._queue.append(waiter)
            return True

    def release(self) -> None:
        """Free a slot: handed to the oldest waiter if any."""
        with self._lock:
            if self._queue:
                waiter = self._queue.popleft()
                waiter.granted = True  # the slot moves to it; active is unchanged
            else:
                self.active -= 1
                return
        waiter.wake()

    def _abandon(self, waiter: _Waiter) -> bool:
        """The waiter stops waiting; True when it had been handed a slot (it then holds it)."""
        with self._lock:
            if waiter.granted:
                return True
            self._queue.remove(waiter)
            return False

    def _refuse(self, reason: str) -> Overloaded:
        self.rejected += 1
        self._rejections.add(1, {"bulkhead": self.name, "reason": reason})
        what = "its queue is full" if reason == "queue_full" else "no slot freed up in time"
        return Overloaded(
            f"bulkhead {self.name!r} is full ({self.max_concurrent} running, {what})", retry_after=self.retry_after
        )

    def _wait_limit(self) -> float:
        limits = [t for t in (self.queue_timeout, remaining_time()) if t is not None]
        return min(limits) if limits else math.inf

    # -- acquiring, both flavours --------------------------------------------------------------
    async def acquire(self) -> None:
        if self._try_enter():
            return
        event = anyio.Event()
        waiter = _Waiter(_async_waker(event))
        if not self._enqueue(waiter):
            raise self._refuse("queue_full")
        if waiter.granted:
            return
        started = time.monotonic()
        try:
            with anyio.move_on_after(self._wait_limit()):
                await event.wait()
        except BaseException:  # cancelled while queued: never keep (or lose) a slot
            if self._abandon(waiter):
                self.release()
            raise
        if not waiter.granted and not self._abandon(waiter):
            raise self._refuse("queue_timeout")
        self._queue_time.record(time.monotonic() - started, self._label)

    def acquire_sync(self) -> None:
        if self._try_enter():
            return
        event = threading.Event()
        waiter = _Waiter(event.set)
        if not self._enqueue(waiter):
            raise self._refuse("queue_full")
        if waiter.granted:
            return
        started = time.monotonic()
        limit = self._wait_limit()
        try:
            event.wait(None if limit == math.inf else limit)
        except BaseException:
            if self._abandon(waiter):
                self.release()
            raise
        if not waiter.granted and not self._abandon(waiter):
            raise self._refuse("queue_timeout")
        self._queue_time.record(time.monotonic() - started, self._label)

    def bind_async(self, inner: AsyncFn) -> AsyncFn:
        async def call(*args: Any, **kwargs: Any) -> Any:
            await self.acquire()
            try:
                return await inner(*args, **kwargs)
            finally:
                self.release()

        return call

    def bind_asyncgen(self, inner: _agen_run.AsyncGenFn) -> _agen_run.AsyncGenFn:
        return _agen_run.bind_bulkhead(self, inner)

    def bind_sync(self, inner: SyncFn) -> SyncFn:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.acquire_sync()
            try:
                return inner(*args, **kwargs)
            finally:
                self.release()

        return call

    async def __aenter__(self) -> Bulkhead:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __enter__(self) -> Bulkhead:
        self.acquire_sync()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


_UNSET: Any = object()


def bulkhead(
    name: str,
    /,
    max_concurrent: int = _UNSET,
    *,
    max_queue: int = _UNSET,
    queue_timeout: float | timedelta | None = _UNSET,
    retry_after: float = _UNSET,
    telemetry: Telemetry | bool = True,
) -> Bulkhead:
    """The bulkhead called ``name``: at most ``max_concurrent`` calls at once, the same anywhere.

    ``bulkhead("llm", 10)`` as a decorator or pipeline step, ``async with bulkhead("db",
    max_concurrent=20, max_queue=50):`` around a block (``with`` in threads). A call that finds
    every slot taken waits in a FIFO queue of ``max_queue`` (0: no queue) for at most
    ``queue_timeout`` seconds (and never past the request's deadline); otherwise it is refused
    with :class:`Overloaded` (503 with ``Retry-After: retry_after`` through the problem
    middleware). Cancelling a waiting or running call always frees its place.

    The first use of a name (or :func:`configure_policies` / ``ASGI_RESILIENCE__BULKHEAD__<NAME>__
    MAX_CONCURRENT``) sets its size; later uses with other sizes raise :class:`ConfigurationError`.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"bulkhead needs a name (a non-empty str), got {name!r}")
    given = {
        key: value
        for key, value in {
            "max_concurrent": max_concurrent,
            "max_queue": max_queue,
            "queue_timeout": queue_timeout,
            "retry_after": retry_after,
        }.items()
        if value is not _UNSET
    }
    with NAMED.lock:
        existing: Bulkhead | None = NAMED.bulkheads.get(name)
        options = configured("bulkhead", name, given)
        if existing is not None:
            if given and _options(options) != _options(_settings(existing)):
                raise ConfigurationError(
                    f"bulkhead {name!r} already exists with other options ({_settings(existing)}); configure a name "
                    "once (configure_policies) and use bulkhead(name) elsewhere"
                )
            return existing
        unknown = sorted(set(options) - {"max_concurrent", "max_queue", "queue_timeout", "retry_after"})
        if unknown:
            raise ConfigurationError(f"bulkhead {name!r}: unknown options {unknown}")
        size = options.get("max_concurrent")
        if size is None:
            raise ConfigurationError(
                f"bulkhead {name!r} needs max_concurrent (in code, configure_policies or "
                f"ASGI_RESILIENCE__BULKHEAD__{name.upper()}__MAX_CONCURRENT)"
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"bulkhead {name!r} max_concurrent must be an int >= 1, got {size!r}")
        queue = options.get("max_queue", 0)
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 0:
            raise ConfigurationError(f"bulkhead {name!r} max_queue must be an int >= 0, got {queue!r}")
        wait = options.get("queue_timeout")
        created = Bulkhead(
            name,
            max_concurrent=size,
            max_queue=queue,
            queue_timeout=None if wait is None else seconds(wait, f"bulkhead {name!r} queue_timeout", allow_zero=True),
            retry_after=seconds(options.get("retry_after", 1.0), f"bulkhead {name!r} retry_after", allow_zero=True),
            telemetry=resolve_telemetry(telemetry),
        )
        NAMED.bulkheads[name] = created
        mark_created("bulkhead", name)
        return created


def _settings(b: Bulkhead) -> dict[str, Any]:
    return {
        "max_concurrent": b.max_concurrent,
        "max_queue": b.max_queue,
        "queue_timeout": b.queue_timeout,
        "retry_after": b.retry_after,
    }


def _options(options: dict[str, Any]) -> dict[str, Any]:
    defaults = {"max_queue": 0, "queue_timeout": None, "retry_after": 1.0}
    merged = {**defaults, **options}
    return {
        k: (float(v) if isinstance(v, (int, float)) and k != "max_concurrent" and k != "max_queue" else v)
        for k, v in merged.items()
    }
