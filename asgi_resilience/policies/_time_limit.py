"""``time_limit``: a call, or a block, gets at most N seconds.

Async code is cancelled at the limit (an anyio cancel scope: asyncio and trio) and the caller
gets :class:`TimeLimitExceeded` (a ``TimeoutError``, 504 as a problem). The limit is also
published as the deadline (:func:`~asgi_resilience.remaining_time`), so retries inside never
wait past it and the httpx transports cap their calls by it.

Synchronous code cannot be interrupted from outside: the limit is published as the deadline (so
cooperative code, our transports included, respects it), the call runs to its end, and
:class:`TimeLimitExceeded` is raised if it overran. ``thread=True`` runs a sync function in a
worker thread instead and stops *waiting* at the limit; the thread itself runs on (Python cannot
kill it) and its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from contextvars import ContextVar
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar

import anyio

from asgi_resilience._deadline import deadline_scope
from asgi_resilience.errors import ConfigurationError, TimeLimitExceeded
from asgi_resilience.policies import _agen_run
from asgi_resilience.policies._base import AsyncFn, Policy, SyncFn
from asgi_resilience.policies._durations import seconds
from asgi_resilience.policies._named import configured, mark_created

__all__ = ["TimeLimit", "time_limit"]

_asyncio_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+


class TimeLimit(Policy):
    """A time limit; see :func:`time_limit`."""

    kind: ClassVar[str] = "time_limit"
    rank: ClassVar[int] = 1  # a pipeline moves it to 6 when it comes after the breaker (per attempt)

    def __init__(self, limit: float, *, name: str | None, thread: bool) -> None:
        self.seconds = limit
        self.name = name
        self.thread = bool(thread)
        # the blocks this object guards in the current task or thread, innermost last
        self._scopes: ContextVar[tuple[tuple[Any, Any], ...]] = ContextVar("asgi_resilience_time_limit", default=())

    def _push(self, item: tuple[Any, Any]) -> None:
        self._scopes.set((*self._scopes.get(), item))

    def _pop(self) -> tuple[Any, Any]:
        stack = self._scopes.get()
        self._scopes.set(stack[:-1])
        return stack[-1]

    def _expired(self) -> TimeLimitExceeded:
        what = f"time limit {self.name!r}" if self.name else "time limit"
        return TimeLimitExceeded(f"{what} of {self.seconds:g} s exceeded")

    def bind_async(self, inner: AsyncFn) -> AsyncFn:
        limit = self.seconds

        async def call(*args: Any, **kwargs: Any) -> Any:
            with deadline_scope(time.monotonic() + limit):
                if _asyncio_timeout is not None and asyncio._get_running_loop() is not None:
                    # asyncio's own timeout costs a fraction of a portable cancel scope
                    timer = _asyncio_timeout(limit)
                    try:
                        async with timer:
                            return await inner(*args, **kwargs)
                    except TimeoutError:
                        if timer.expired():
                            raise self._expired() from None
                        raise
                with anyio.move_on_after(limit) as scope:  # trio (and asyncio before 3.11)
                    return await inner(*args, **kwargs)
            if scope.cancelled_caught:
                raise self._expired()
            raise AssertionError("unreachable: the scope returned or was cancelled")  # pragma: no cover

        return call

    def bind_asyncgen(self, inner: _agen_run.AsyncGenFn) -> _agen_run.AsyncGenFn:
        return _agen_run.bind_time_limit(self, inner)

    def bind_sync(self, inner: SyncFn) -> SyncFn:
        limit = self.seconds
        if self.thread:
            return self._threaded(inner)

        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            with deadline_scope(started + limit):
                result = inner(*args, **kwargs)
            if time.monotonic() - started > limit:
                raise self._expired()
            return result

        return call

    def _threaded(self, inner: SyncFn) -> SyncFn:
        limit = self.seconds

        def call(*args: Any, **kwargs: Any) -> Any:
            box: list[Any] = []
            context = contextvars.copy_context()
            deadline = time.monotonic() + limit

            def run() -> None:
                with deadline_scope(deadline):
                    try:
                        box.append((True, inner(*args, **kwargs)))
                    except BaseException as exc:
                        box.append((False, exc))

            worker = threading.Thread(target=context.run, args=(run,), daemon=True, name="asgi-resilience-time-limit")
            worker.start()
            worker.join(limit)
            if not box:
                raise self._expired()
            ok, value = box[0]
            if ok:
                return value
            raise value

        return call

    # -- context manager -----------------------------------------------------------------------
    async def __aenter__(self) -> TimeLimit:
        deadline = deadline_scope(time.monotonic() + self.seconds)
        deadline.__enter__()
        scope = anyio.fail_after(self.seconds)
        scope.__enter__()
        self._push((deadline, scope))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        deadline, scope = self._pop()
        try:
            scope.__exit__(exc_type, exc, tb)
        except TimeoutError:
            raise self._expired() from None
        finally:
            deadline.__exit__(None, None, None)
        return False

    def __enter__(self) -> TimeLimit:
        started = time.monotonic()
        deadline = deadline_scope(started + self.seconds)
        deadline.__enter__()
        self._push((deadline, started))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        deadline, started = self._pop()
        deadline.__exit__(None, None, None)
        if exc is None and time.monotonic() - started > self.seconds:
            raise self._expired()


def time_limit(limit: float | timedelta | str, /, *, thread: bool = False) -> TimeLimit:
    """At most ``limit`` seconds for a call (a decorator) or a block (``async with`` / ``with``).

    ``limit`` is seconds, or a name whose seconds come from :func:`configure_policies`
    (``{"time_limit": {"llm": 30}}``) or ``ASGI_RESILIENCE__TIME_LIMIT__LLM=30``: timeouts per
    operation type are configuration, not code. ``thread=True`` runs a sync function in a worker
    thread and stops waiting at the limit (see the module notes: the thread is not killed).

    This is the per-call time limit for any function. The route decorator
    :func:`asgi_resilience.timeout` is a different thing: it sets the deadline of an HTTP route
    for :class:`~asgi_resilience.TimeoutMiddleware`.
    """
    name: str | None = None
    if isinstance(limit, str):
        name = limit
        options = configured("time_limit", name, {})
        if "seconds" not in options:
            raise ConfigurationError(
                f"time_limit {name!r} is not configured: configure_policies({{'time_limit': {{{name!r}: seconds}}}}) "
                f"or set ASGI_RESILIENCE__TIME_LIMIT__{name.upper()}"
            )
        mark_created("time_limit", name)
        limit = options["seconds"]
    return TimeLimit(seconds(limit, "time_limit", allow_zero=False), name=name, thread=thread)  # type: ignore[arg-type]
