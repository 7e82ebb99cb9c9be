"""TimeoutMiddleware: a per-request deadline enforced inside the request's own task.

How it behaves (each point is a test in ``tests/timeout/test_middleware.py``):

* The app runs in the request's own task (no extra task: contextvars the app sets stay visible to
  outer middlewares). At the deadline the app is cancelled (its ``finally`` blocks run) and, if no
  ``http.response.start`` was sent, one 504 problem+json (type slug ``timeout``) is sent. On
  asyncio (Python 3.11+) this is what ``asyncio.timeout`` does: one ``loop.call_at`` timer that
  calls ``Task.cancel()``, and ``Task.uncancel()`` to tell our cancellation from one that comes from
  outside; elsewhere (trio, Python 3.10) an anyio cancel scope.
* After the response started there is never a second start. ``mode="first_byte"`` (default) stops
  the clock at the response start; ``mode="complete"`` keeps it running to the final body message
  and then aborts the stream by raising :class:`DeadlineExceeded` (the server closes the connection;
  no fake final body is sent). ``idle_timeout`` bounds the gap between body messages.
* The clock always stops at the final body message, so background tasks run to completion.
* Only our own deadline produces a 504: a cancellation from outside propagates untouched.
* Sync (threaded) endpoints cannot be killed: a thread runs to its end. On asyncio the 504 is
  still sent on time (by a short-lived task started only when the app does not react to the
  cancellation); the app's late response is dropped and the request's task (and any concurrency
  slot held outside) ends when the thread does. On trio the 504 waits for the thread.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

import anyio
import anyio.lowlevel

from asgi_resilience._asgi import ARRIVAL, send_error
from asgi_resilience._deadline import _DEADLINE
from asgi_resilience._proxy import TrustedProxies
from asgi_resilience._routing import EndpointOptions
from asgi_resilience.errors import ConfigurationError, DeadlineExceeded
from asgi_resilience.observability import Telemetry, resolve_telemetry
from asgi_resilience.timeouts._headers import _PARSERS, DEADLINE_HEADERS, client_timeout
from asgi_resilience.timeouts._rules import PathRules, TimeoutMark, seconds
from asgi_resilience.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["TimeoutMiddleware"]

Mode = Literal["first_byte", "complete"]
_DEADLINE_SLACK = 0.001  # seconds: a failure this close to the deadline was caused by it
_ANYIO_TASKS: Any
try:  # which anyio cancel scope a task is in: the native path must respect shielded ones
    from anyio._backends._asyncio import _task_states as _ANYIO_TASKS
except ImportError:  # pragma: no cover - another anyio layout: the anyio path everywhere
    _ANYIO_TASKS = None
# Python 3.11+ (Task.uncancel): the asyncio.timeout mechanism
_NATIVE = hasattr(asyncio.Task, "uncancel") and _ANYIO_TASKS is not None
_SHIELD_RETRY = 0.002  # while the app is in a shielded anyio scope, the cancellation waits and retries
_FALLBACK_GRACE = 0.02  # how long a cancelled app may take to react before the 504 is sent for it


class TimeoutMiddleware:
    """Cancel requests that run past their deadline and answer 504 when nothing was sent yet.

    Args:
        app: the ASGI app to protect.
        timeout: default limit in seconds (or a timedelta); None means no limit unless a rule or
            ``@timeout`` gives one.
        rules: path patterns to limits, ``{"/reports/*": 60.0, "/events": None}``; None exempts.
            An exact path wins over patterns, then the first matching pattern. ``@timeout(...)``
            on the endpoint wins over both.
        mode: ``"first_byte"`` (clock stops at the response start) or ``"complete"`` (clock runs to
            the final body message).
        idle_timeout: longest gap allowed between body messages once the response started.
        status: 504 (default) or 503. 408 is refused: it tells the client that *it* was slow.
        exempt_event_streams: stop the clock when the app starts a ``text/event-stream`` (SSE)
            response, unless a rule or ``@timeout`` names the route. The decision is made from the
            response's ``Content-Type`` at its start, never from a request header: everything before
            the response starts (reading the request body included) is always timed. To leave a
            streaming route entirely untimed, declare it: ``rules={"/events": None}`` or
            ``@timeout(None)``. WebSocket and lifespan scopes always pass through.
        trusted_proxies: peers whose deadline headers are honoured (CIDRs/addresses, a hop count
            meaning every peer, or a :class:`TrustedProxies`). None (default) ignores the headers.
        deadline_headers: which of ``grpc-timeout``, ``connect-timeout-ms`` and
            ``x-request-timeout`` to read. A header can only shorten the limit, never extend it,
            and applies only to requests that have a limit.
        telemetry: the :class:`Telemetry` to record ``asgi_resilience.timeouts`` with.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        timeout: float | timedelta | None = 10.0,
        rules: Mapping[str, float | timedelta | None] | None = None,
        mode: Mode = "first_byte",
        idle_timeout: float | timedelta | None = None,
        status: int = 504,
        exempt_event_streams: bool = True,
        trusted_proxies: Sequence[str] | int | TrustedProxies | None = None,
        deadline_headers: Sequence[str] = DEADLINE_HEADERS,
        telemetry: Telemetry | bool = True,
    ) -> None:
        self.app = app
        self.timeout = None if timeout is None else seconds(timeout, "timeout")
        self.rules: PathRules[float | None] = PathRules(
            {
                pattern: None if value is None else seconds(value, f"rules[{pattern!r}]")
                for pattern, value in (rules or {}).items()
            }
        )
        if mode not in ("first_byte", "complete"):
            raise ConfigurationError(f"mode must be 'first_byte' or 'complete', got {mode!r}")
        self.mode: Mode = mode
        self.idle_timeout = None if idle_timeout is None else seconds(idle_timeout, "idle_timeout")
        if status == 408:
            raise ConfigurationError(
                "status=408 means the client was too slow to send its request; a server-side timeout is "
                "504 (default) or 503"
            )
        if status not in (503, 504):
            raise ConfigurationError(f"status must be 504 (default) or 503, got {status!r}")
        self.status = status
        self.exempt_event_streams = exempt_event_streams
        if isinstance(trusted_proxies, TrustedProxies) or trusted_proxies is None:
            self._trusted = trusted_proxies
        else:
            self._trusted = TrustedProxies(trusted_proxies)
        if isinstance(deadline_headers, str):
            raise ConfigurationError(f"deadline_headers must be a list of header names, not {deadline_headers!r}")
        names = frozenset(name.lower().encode("latin-1") for name in deadline_headers)
        unknown = names - _PARSERS.keys()
        if unknown:
            raise ConfigurationError(
                f"unknown deadline header(s) {sorted(n.decode() for n in unknown)}; supported: {list(DEADLINE_HEADERS)}"
            )
        self._header_names = names
        self._endpoints = EndpointOptions("timeout", app)
        self._telemetry = resolve_telemetry(telemetry)
        self._timeouts = self._telemetry.instrument("asgi_resilience.timeouts")
        self._queue: _DeadlineQueue | None = None

    def _deadline_queue(self, loop: asyncio.AbstractEventLoop) -> _DeadlineQueue:
        queue = self._queue
        if queue is None or queue.loop is not loop:
            queue = self._queue = _DeadlineQueue(loop)  # a new loop (tests, a restarted server)
        return queue

    def limit_for(self, scope: Scope) -> float | None:
        """The limit (seconds) that applies to an HTTP request, before deadline headers; None = untimed.

        Only the route decides (``@timeout``, then ``rules``, then ``timeout``): no request header
        can exempt a request.
        """
        return self._resolve(scope)[0]

    def _resolve(self, scope: Scope) -> tuple[float | None, bool]:
        """(limit, declared): declared is True when ``@timeout`` or a rule named the route."""
        mark = self._endpoints.lookup(scope)
        if isinstance(mark, TimeoutMark):
            return mark.seconds, True
        if self.rules:
            matched, value = self.rules.match(scope.get("path", ""))
            if matched:
                return value, True
        return self.timeout, False

    def _client_limit(self, scope: Scope) -> float | None:
        trusted = self._trusted
        if trusted is None or not self._header_names:
            return None
        client = scope.get("client")
        if not trusted.is_trusted(str(client[0]) if client and client[0] else None):
            return None
        return client_timeout(scope.get("headers", ()), self._header_names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, declared = self._resolve(scope)
        if limit is None:
            await self.app(scope, receive, send)
            return
        hint = self._client_limit(scope)
        if hint is not None and hint < limit:
            limit = hint
        timed = _TimedRequest(self, send, limit, scope.get("method") == "HEAD")
        timed.stream_exempt = self.exempt_event_streams and not declared
        await timed.run(scope, receive)


class _DeadlineQueue:
    """One loop timer for the first deadlines of many requests (a TimerHandle each costs ~1 µs).

    Requests with the same limit arrive in deadline order, so a FIFO holds them sorted: the timer
    is armed for the oldest deadline, a request that ends only marks itself (``_queued = False``) and
    the finished ones at the head are dropped. A deadline earlier than the newest queued one (a
    shorter rule, a client's deadline header) gets a timer of its own instead.
    """

    __slots__ = ("armed_at", "handle", "loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: deque[tuple[float, _TimedRequest]] = deque()
        self.handle: asyncio.TimerHandle | None = None
        self.armed_at = math.inf

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed_at = when
        self.handle = self.loop.call_at(when, self._fire)

    def add(self, request: _TimedRequest, when: float) -> bool:
        queue = self.queue
        if queue and queue[-1][0] > when:
            return False
        queue.append((when, request))
        request._queued = True
        if when < self.armed_at:  # the timer waits for a deadline that finished requests no longer need
            self._arm(when)
        return True

    def trim(self) -> None:
        queue = self.queue
        while queue and not queue[0][1]._queued:
            queue.popleft()

    def _fire(self) -> None:
        self.handle = None
        self.armed_at = math.inf
        queue = self.queue
        now = self.loop.time()
        while queue:
            when, request = queue[0]
            if not request._queued:
                queue.popleft()
            elif when <= now:
                queue.popleft()
                request._queued = False
                request._expire()
            else:
                self._arm(when)
                return


class _TimedRequest:
    """The state of one timed request (never shared between requests).

    On asyncio the deadline is our own loop timer that cancels the anyio cancel scope (one timer per
    request; the fallback timer is armed only when the deadline fires). On other backends (trio)
    the cancel scope's own deadline is used and there is no fallback.
    """

    __slots__ = (
        "_fallback",
        "_fallback_task",
        "_handle",
        "_head",
        "_idle_fired",
        "_loop",
        "_mw",
        "_outer",
        "_send",
        "_stopped",
        "_entry_scope",
        "_queued",
        "_requested",
        "_task",
        "_uncancelled",
        "cancel_called",
        "cancel_scope",
        "done",
        "finished",
        "limit",
        "loop_deadline",
        "responded",
        "started",
        "stream_exempt",
    )

    def __init__(self, mw: TimeoutMiddleware, send: Send, limit: float, head: bool = False) -> None:
        self._mw = mw
        self._head = head
        self._send = send
        self.limit = limit
        self.started = False
        self.finished = False
        self.responded = False  # the fallback task answered for an app that ignored its cancellation
        self.done = False
        self.stream_exempt = False  # an event-stream response stops the clock at its start
        self._idle_fired = False
        self._stopped = False
        self._fallback_task: asyncio.Task[None] | None = None
        self._fallback: asyncio.TimerHandle | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._outer: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.loop_deadline = math.inf
        self.cancel_called = False  # our deadline cancelled (or is cancelling) the app
        self.cancel_scope: anyio.CancelScope | None = None  # the anyio path only
        self._task: Any = None  # the native asyncio path only (Task.uncancel is Python 3.11+)
        self._uncancelled = False
        self._requested = False  # Task.cancel() was called (and needs one uncancel())
        self._entry_scope: object = None  # the anyio scope the request entered in (native path)
        self._queued = False  # the first deadline waits in the middleware's _DeadlineQueue

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else anyio.current_time()

    def _set_deadline(self, when: float, *, idle: bool = False) -> None:
        """Move the moment the app is cancelled (loop clock); ``math.inf`` stops the clock."""
        self._idle_fired = idle
        self._stopped = when == math.inf
        self._queued = False  # leaves the shared queue (lazily: the queue drops it later)
        loop = self._loop
        if loop is None:
            if self.cancel_scope is not None:  # the anyio path keeps the time itself
                self.cancel_scope.deadline = when
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if when != math.inf:
            self._handle = loop.call_at(when, self._expire)

    def _cancel(self) -> None:
        """Cancel the app now (it sees the cancellation at its next await)."""
        self.cancel_called = True
        if self._task is None:
            if self.cancel_scope is not None:
                self.cancel_scope.cancel()
            return
        if self._requested or self.done:
            return  # one native request is enough: a second would need a second uncancel()
        if self._shielded():
            # as anyio does: a shielded scope (a thread's wait, cleanup) is not interrupted; retry
            if self._handle is None and self._loop is not None:
                self._handle = self._loop.call_later(_SHIELD_RETRY, self._retry)
            return
        self._requested = True
        self._task.cancel()

    def _retry(self) -> None:
        self._handle = None
        self._cancel()

    def _shielded(self) -> bool:
        """True while the task is inside a shielded anyio cancel scope entered within the app."""
        state = _ANYIO_TASKS.get(self._task) if _ANYIO_TASKS is not None else None
        scope = getattr(state, "cancel_scope", None)
        while scope is not None and scope is not self._entry_scope:
            if getattr(scope, "_shield", False):
                return True
            scope = getattr(scope, "_parent_scope", None)
        return False

    def _expire(self) -> None:
        self._handle = None
        self._cancel()
        if not self.started and self._loop is not None:
            self._fallback = self._loop.call_later(_FALLBACK_GRACE, self._fire)

    async def run(self, scope: Scope, receive: Receive) -> None:
        mw = self._mw
        try:
            self._loop = asyncio.get_running_loop()  # None under trio: the cancel scope keeps the time
        except RuntimeError:
            self._loop = None
        now = self._now()
        # the deadline counts from when the request entered our outermost layer (see _asgi.ARRIVAL)
        arrived = scope.get(ARRIVAL)
        spent = max(0.0, time.monotonic() - arrived) if isinstance(arrived, float) else 0.0
        self.loop_deadline = now + self.limit - spent
        outer = self._outer = _DEADLINE.get()
        deadline = time.monotonic() + self.limit - spent
        token = _DEADLINE.set(deadline if outer is None or deadline < outer else outer)
        task = asyncio.current_task() if self._loop is not None and _NATIVE else None
        try:
            if task is not None and hasattr(task, "uncancel"):
                self._task = task
                self._entry_scope = getattr(
                    _ANYIO_TASKS.get(task) if _ANYIO_TASKS is not None else None, "cancel_scope", None
                )
                queue = mw._deadline_queue(task.get_loop())
                if not queue.add(self, self.loop_deadline):
                    self._set_deadline(self.loop_deadline)
                try:
                    await mw.app(scope, receive, self.send)
                except asyncio.CancelledError:
                    # ours only if no other cancellation is pending (as asyncio.timeout decides)
                    if not self._requested or task.uncancel() > 0:
                        raise
                    self._uncancelled = True
                except Exception:
                    if not self._caused_by_deadline():
                        raise
                    self.cancel_called = True
            else:
                cancel_scope = self.cancel_scope = anyio.CancelScope()
                with cancel_scope:
                    self._set_deadline(self.loop_deadline)
                    try:
                        await mw.app(scope, receive, self.send)
                    except Exception:
                        if not self._caused_by_deadline():
                            raise
                        cancel_scope.cancel()
                self.cancel_called = cancel_scope.cancel_called
        finally:
            _DEADLINE.reset(token)
            self.done = True
            if self._task is not None:
                self._queued = False
                mw._deadline_queue(self._task.get_loop()).trim()
            if self._handle is not None:
                self._handle.cancel()
            if self._fallback is not None:
                self._fallback.cancel()
        if self._requested and not self._uncancelled:
            await self._withdraw()
        if self._fallback_task is not None:
            await self._fallback_task
            return
        if not self.cancel_called or self.finished:
            return
        if not self.started:
            mw._timeouts.add(1, {"phase": "before_start"})
            mw._telemetry.span_event("asgi_resilience.timeout", {"phase": "before_start"})
            mw._telemetry.span_attributes({"asgi_resilience.timeout.phase": "before_start"})
            await self._answer()
            return
        mw._timeouts.add(1, {"phase": "after_start"})
        mw._telemetry.span_event("asgi_resilience.timeout", {"phase": "after_start"})
        mw._telemetry.span_attributes({"asgi_resilience.timeout.phase": "after_start"})
        what = f"idle timeout of {mw.idle_timeout:g} s" if self._idle_fired else f"timeout of {self.limit:g} s"
        raise DeadlineExceeded(f"the response did not complete within its {what}; the stream was aborted")

    def _caused_by_deadline(self) -> bool:
        """A failure the deadline itself caused (an outbound call capped by this same deadline can fail
        a moment before our cancellation lands) is a timeout, answered as one."""
        return not self.started and self._now() >= self.loop_deadline - _DEADLINE_SLACK

    async def _withdraw(self) -> None:
        """The app returned before our cancellation reached it: take the request back (else the
        task's next await, outside this middleware, would raise it)."""
        task = self._task  # set: only the native path withdraws
        self._uncancelled = True
        if task.uncancel() > 0:
            return  # a cancellation from outside is pending too: it stays
        try:
            await asyncio.sleep(0)  # delivers a still-armed request (Python < 3.13 keeps it armed)
        except asyncio.CancelledError:
            if task.cancelling() > 0:
                raise  # one from outside arrived meanwhile

    async def _answer(self) -> None:
        exc = DeadlineExceeded(f"The request did not complete within {self.limit:g} seconds.")
        if self._mw.status == 503:
            exc.status = 503
            exc.title = "Service Unavailable"
        try:
            await send_error(self._send, exc, head=self._head)
        except OSError:
            pass  # the client is gone (ASGI spec >= 2.4 servers raise on send): nobody to tell

    def _fire(self) -> None:
        """The app ignored its cancellation (a thread, a shielded wait): answer for it now."""
        self._fallback = None
        if self.started or self.done or self.responded or self._loop is None:
            return
        self.responded = True
        self._mw._timeouts.add(1, {"phase": "before_start"})
        self._fallback_task = self._loop.create_task(self._answer())

    def _stop_clock(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._set_deadline(math.inf)
        if self._outer != _DEADLINE.get():
            _DEADLINE.set(self._outer)

    async def send(self, message: Message) -> None:
        if self.responded:
            return  # a late response of an app we already answered for: dropped
        kind = message["type"]
        if kind == "http.response.start":
            if self._cancel_requested() or self._now() >= self.loop_deadline:
                self._cancel()
                await anyio.lowlevel.checkpoint()  # raises the cancellation: too late for this response
            self.started = True
            idle = self._mw.idle_timeout
            if self.stream_exempt and _is_event_stream(message):
                self._stop_clock()  # an SSE stream may stay open: it is decided by its own response
            elif self._mw.mode == "first_byte":
                if idle is None:
                    self._stop_clock()
                else:
                    self._set_deadline(self._now() + idle, idle=True)
                    _DEADLINE.set(self._outer)
            elif idle is not None:
                self._arm_idle(idle)
        elif kind == "http.response.body" or kind == "http.response.pathsend":
            if self._cancel_requested():
                await anyio.lowlevel.checkpoint()
            if not message.get("more_body", False):
                if self.started:
                    self.finished = True
                    self._stop_clock()
            elif self._mw.idle_timeout is not None and not self._stopped:
                self._arm_idle(self._mw.idle_timeout)
        await self._send(message)

    def _cancel_requested(self) -> bool:
        scope = self.cancel_scope
        return self.cancel_called or (scope is not None and scope.cancel_called)

    def _arm_idle(self, idle: float) -> None:
        idle_deadline = self._now() + idle
        if self._mw.mode == "complete" and self.loop_deadline <= idle_deadline:
            self._set_deadline(self.loop_deadline)
        else:
            self._set_deadline(idle_deadline, idle=True)


def _is_event_stream(message: Message) -> bool:
    """True when an ``http.response.start`` message declares ``Content-Type: text/event-stream``."""
    for name, value in message.get("headers", ()):
        if name.lower() == b"content-type":
            return bytes(value).split(b";", 1)[0].strip().lower() == b"text/event-stream"
    return False
