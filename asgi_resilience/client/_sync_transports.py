# Generated from _async_transports.py by .ci/unasync.py: do not edit (edit the source, then run the script).
"""httpx transports: retry, circuit breaker and the standard pipeline (generated synchronous twin).

The transports only do I/O (send, sleep, close, hooks); every decision is in the drivers
(``_retrying``, ``_breaking``) and the sans-io engines of :mod:`asgi_resilience.policies`.
What differs between the flavours beyond the async words (cancel scopes, semaphores, awaiting
hooks) is in the per-flavour helper module imported below.
"""

# The synchronous twin, _sync_transports.py, is generated from this file by .ci/unasync.py (CI
# checks that it is up to date): edit this file, then run the script.

from __future__ import annotations

import math
import time
from typing import Any

import httpx

from asgi_resilience.client import _sio
from asgi_resilience.client._body import SyncBody, BodyError, body_complete
from asgi_resilience.client._breaking import BreakerCore
from asgi_resilience.client._hooks import Hook
from asgi_resilience.client._http import breaker_result
from asgi_resilience.client._retrying import Call, RetryCore, check_resilient, limit_wait, no_retry, shrink_total
from asgi_resilience.observability import Telemetry
from asgi_resilience.policies._breaker import BreakerPolicy, BreakerTransition, CircuitBreaker
from asgi_resilience.policies._hedge import HedgePolicy
from asgi_resilience.policies._retry import RetryPolicy

__all__ = ["CircuitBreakerTransport", "ResilientTransport", "RetryTransport"]


class RetryTransport(httpx.BaseTransport):
    """Re-sends failed calls by :class:`RetryPolicy`, inside one deadline (threads).

    The deadline of a call is ``min(total_timeout, asgi_resilience.remaining_time())``; every
    attempt gets ``min(attempt_timeout, time left)`` as its httpx timeouts, sleeps never pass the
    deadline, and the deadline also bounds reading the response body. Per request,
    ``extensions={"retry": False}`` (or a number of attempts, or a :class:`RetryPolicy`),
    ``"total_timeout"`` and ``"attempt_timeout"`` override the transport's settings.

    Args:
        transport: the transport to wrap (a new ``httpx.HTTPTransport()`` when None).
        policy: the :class:`RetryPolicy`.
        total_timeout: seconds for the whole call, all attempts and waits included (None: only
            the inbound request's deadline, if any).
        attempt_timeout: seconds per attempt (None: the client's timeouts).
        raise_on_exhaustion: raise :class:`RetriesExhausted` instead of returning the last
            response (or raising the last error) when retries run out.
        on_retry: hook called with a :class:`RetryEvent` before each retry (logs by default).
        on_give_up: hook called when a retryable outcome is not retried (logs by default).
        hedge: a :class:`HedgePolicy` to hedge idempotent requests (a copy is sent when the
            first is slow, the first good response wins, the others are cancelled and closed;
            hedges are taken from the retry budget). Async transports only: a synchronous
            transport raises :class:`ConfigurationError`. ``extensions={"hedge": False}`` turns
            it off for one request.
        telemetry: see :mod:`asgi_resilience.observability`.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        policy: RetryPolicy = RetryPolicy(),
        total_timeout: float | None = None,
        attempt_timeout: float | None = None,
        raise_on_exhaustion: bool = False,
        on_retry: Hook | None = None,
        on_give_up: Hook | None = None,
        hedge: HedgePolicy | None = None,
        telemetry: Telemetry | bool = True,
    ) -> None:
        self._transport = transport if transport is not None else httpx.HTTPTransport()
        self._core = RetryCore(
            policy=policy,
            total_timeout=total_timeout,
            attempt_timeout=attempt_timeout,
            raise_on_exhaustion=raise_on_exhaustion,
            on_retry=on_retry,
            on_give_up=on_give_up,
            telemetry=telemetry,
            asynchronous=False,
            hedge=hedge,
        )

    @property
    def policy(self) -> RetryPolicy:
        return self._core.policy

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = self._core.start(request)
        while True:
            attempt = call.next_request()
            try:
                response = self._send(attempt, call)
            except Exception as exc:
                step = call.after(None, exc)
            else:
                try:
                    step = call.after(response, None)
                except BaseException:  # never leak the pooled connection of a response we drop
                    response.close()
                    raise
            if step.kind == "retry":
                if step.response is not None:
                    step.response.close()
                self._hook(self._core.on_retry, step.event)
                if step.delay > 0:
                    time.sleep(step.delay)
                continue
            if step.event is not None:
                self._hook(self._core.on_give_up, step.event)
            if step.kind == "exhausted":
                if step.response is not None:
                    try:
                        step.response.read()
                    except Exception:
                        step.response.close()
                raise call.exhausted(step)
            if step.kind == "raise":
                raise step.error  # type: ignore[misc]
            response = call.finish(step.response)  # type: ignore[arg-type]
            if call.deadline != math.inf and not response.is_closed:
                response.stream = call.body(response.stream)
            return response

    def _send(self, request: httpx.Request, call: Call) -> httpx.Response:
        if call.hedger is not None:
            return _sio.send_hedged(self._transport, request, call.hard_limit(), call)
        return _sio.send(self._transport, request, call.hard_limit())

    @staticmethod
    def _hook(hook: Hook, event: Any) -> None:
        _sio.run_hook(hook, event)

    def close(self) -> None:
        self._transport.close()


class CircuitBreakerTransport(httpx.BaseTransport):
    """Refuses calls to an origin whose breaker is open, without touching the network.

    One breaker per origin (``scheme://host:port``) and policy, shared by every transport of the
    process (``shared=False`` keeps them to this transport). Refusals raise
    :class:`CircuitOpenError` (an ``httpx.TransportError``) with ``retry_after`` and ``origin``.
    A response counts exactly once: at once when its body is already in memory (pre-read, as
    from ``httpx.MockTransport`` or respx, or an ``httpx.ByteStream``), otherwise when its body
    is closed, so a failure while reading it counts too. Slow calls are measured to the response
    headers, so a caller that holds a streaming body open does not make the call slow.
    ``extensions={"circuit_breaker": False}`` bypasses the breaker for one request.

    Args:
        transport: the transport to wrap (a new ``httpx.HTTPTransport()`` when None).
        policy: the :class:`BreakerPolicy`.
        state: ``"redis://..."`` (or a ``redis.asyncio.Redis``) to share open/close transitions
            between processes; a Redis failure falls back to local state. None: local only.
        shared: share breakers with the other transports of the process.
        on_transition: hook called with a :class:`BreakerTransition` (logs by default).
        telemetry: see :mod:`asgi_resilience.observability`.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        policy: BreakerPolicy = BreakerPolicy(),
        state: str | Any | None = None,
        shared: bool = True,
        on_transition: Hook | None = None,
        telemetry: Telemetry | bool = True,
    ) -> None:
        self._transport = transport if transport is not None else httpx.HTTPTransport()
        self._core = BreakerCore(
            policy=policy,
            state=state,
            shared=shared,
            on_transition=on_transition,
            telemetry=telemetry,
            asynchronous=False,
        )

    @property
    def policy(self) -> BreakerPolicy:
        return self._core.policy

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.extensions.get("circuit_breaker") is False:
            return self._transport.handle_request(request)
        core = self._core
        breaker = core.breaker(request)
        shared = core.shared_state
        if shared is not None and shared.due(breaker.origin, time.monotonic()):
            seconds = shared.check(breaker.origin)
            if seconds:
                forced = breaker.force_open(time.monotonic(), seconds, "shared")
                if forced is not None:
                    self._emit(breaker, (forced,), 0.0)
        admission = breaker.admit(time.monotonic())
        if admission.transitions:
            self._emit(breaker, admission.transitions, 0.0)
        if not admission.allowed:
            raise core.rejection(admission, breaker, request)
        started = time.monotonic()
        try:
            response = self._transport.handle_request(request)
        except BaseException as exc:
            now = time.monotonic()
            transitions = breaker.record(admission, breaker_result(exc, None, core.policy), now - started, now)
            if transitions:
                self._emit(breaker, transitions, time.time() - (now - started))
            raise
        status = response.status_code
        duration = time.monotonic() - started  # to the headers: a caller holding the body open is not a slow call

        def finish(error: BodyError) -> None:
            now = time.monotonic()
            result = breaker_result(error, status, core.policy)
            transitions = breaker.record(admission, result, duration, now)
            if transitions:
                self._emit(breaker, transitions, time.time() - (now - started))

        if body_complete(response):  # in memory (MockTransport, respx, a cache): the call is over, count it now
            finish(None)
        else:  # streaming: counted once at close, so an error while reading the body counts too
            response.stream = SyncBody(response.stream, on_close=finish)
        return response

    def _emit(self, breaker: CircuitBreaker, transitions: tuple[BreakerTransition, ...], epoch: float) -> None:
        core = self._core
        core.count(transitions)
        for op, value in core.shared_ops(breaker, transitions, epoch):
            if op == "open":
                core.shared_state.opened(breaker.origin, value)  # type: ignore[union-attr]
            else:
                core.shared_state.closed(breaker.origin, value)  # type: ignore[union-attr]
        for transition in transitions:
            RetryTransport._hook(core.on_transition, transition)

    def close(self) -> None:
        try:
            self._transport.close()
        finally:
            if self._core.shared_state is not None:
                self._core.shared_state.close()


class ResilientTransport(httpx.BaseTransport):
    """The standard pipeline: concurrency limit -> total deadline -> retry (+budget) -> hedge
    -> breaker -> attempt timeout, with validated settings (the .NET standard resilience handler, in Python).

    Args:
        transport: the transport to wrap (a new ``httpx.HTTPTransport()`` when None).
        retry: the :class:`RetryPolicy`, or None for no retries.
        breaker: the :class:`BreakerPolicy`, or None for no circuit breaker.
        total_timeout: seconds for the whole call (capped by the inbound request's deadline).
        attempt_timeout: seconds per attempt; must be <= ``total_timeout``.
        max_concurrent: calls in flight at once through this transport (None: unlimited); a
            call that cannot get a slot before its deadline raises ``httpx.PoolTimeout``. The
            slot is held until the response body is closed.
        hedge: a :class:`HedgePolicy`, or None (the default) for no hedging; see
            :class:`RetryTransport`. Each hedged attempt passes the breaker on its own.
        raise_on_exhaustion, on_retry, on_give_up: see :class:`RetryTransport`.
        state, shared, on_transition: see :class:`CircuitBreakerTransport`.
        telemetry: see :mod:`asgi_resilience.observability`.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        retry: RetryPolicy | None = RetryPolicy(),
        breaker: BreakerPolicy | None = BreakerPolicy(),
        hedge: HedgePolicy | None = None,
        total_timeout: float = 30.0,
        attempt_timeout: float = 10.0,
        max_concurrent: int | None = None,
        raise_on_exhaustion: bool = False,
        state: str | Any | None = None,
        shared: bool = True,
        on_retry: Hook | None = None,
        on_give_up: Hook | None = None,
        on_transition: Hook | None = None,
        telemetry: Telemetry | bool = True,
    ) -> None:
        check_resilient(total_timeout, attempt_timeout, max_concurrent, retry, breaker, hedge)
        inner = transport if transport is not None else httpx.HTTPTransport()
        if breaker is not None:
            inner = CircuitBreakerTransport(
                inner, policy=breaker, state=state, shared=shared, on_transition=on_transition, telemetry=telemetry
            )
        self._transport = RetryTransport(
            inner,
            policy=retry if retry is not None else no_retry(),
            total_timeout=total_timeout,
            attempt_timeout=attempt_timeout,
            raise_on_exhaustion=raise_on_exhaustion,
            on_retry=on_retry,
            on_give_up=on_give_up,
            hedge=hedge,
            telemetry=telemetry,
        )
        self.total_timeout = total_timeout
        self.max_concurrent = max_concurrent
        self._semaphore = _sio.Slots(max_concurrent) if max_concurrent is not None else None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.max_concurrent is None:
            return self._transport.handle_request(request)
        semaphore = self._slots()
        started = time.monotonic()
        if not self._acquire(semaphore, limit_wait(request, self.total_timeout)):
            raise httpx.PoolTimeout(
                f"no free slot among max_concurrent={self.max_concurrent} before the call's deadline", request=request
            )
        shrink_total(request, self.total_timeout, time.monotonic() - started)
        try:
            response = self._transport.handle_request(request)
        except BaseException:
            semaphore.release()
            raise

        def release(error: BodyError) -> None:
            semaphore.release()

        if body_complete(response):
            semaphore.release()
        else:
            response.stream = SyncBody(response.stream, on_close=release)
        return response

    def _slots(self) -> _sio.Slots:
        assert self._semaphore is not None  # only called when max_concurrent is set
        return self._semaphore

    @staticmethod
    def _acquire(semaphore: _sio.Slots, wait: float) -> bool:
        return semaphore.acquire(wait)

    def close(self) -> None:
        self._transport.close()
