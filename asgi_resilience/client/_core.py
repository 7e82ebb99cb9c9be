"""The synchronous core shared by the sync and async transports (STYLE rule 10).

Everything that is not I/O lives here: turning httpx requests and outcomes into the sans-io
policies' inputs (and back), the per-call retry state, the replay buffer of streaming request
bodies, metrics, the response extensions, and event construction. The transports in
``_transports.py`` only send, sleep, close and call hooks, each in its own flavour.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Optional

import anyio
import httpx

from asgi_resilience._deadline import remaining_time
from asgi_resilience.client._breaker import (
    Admission,
    BreakerPolicy,
    BreakerRegistry,
    BreakerTransition,
    CircuitBreaker,
    Result,
    State,
)
from asgi_resilience.client._config import testing_attempts, testing_enabled
from asgi_resilience.client._retry import (
    BudgetRegistry,
    BudgetState,
    Decision,
    Outcome,
    Phase,
    RetryBudget,
    RetryPolicy,
)
from asgi_resilience.client._shared import SharedState
from asgi_resilience.errors import CircuitOpenError, ConfigurationError, RetriesExhausted
from asgi_resilience.observability import Telemetry, resolve_telemetry

__all__ = ["AttemptRecord", "Hook", "RetryEvent"]

logger = logging.getLogger("asgi_resilience.client")

Hook = Callable[[Any], "None | Awaitable[None]"]

BREAKERS = BreakerRegistry()
BUDGETS = BudgetRegistry()
_PRIVATE_REGISTRIES: weakref.WeakSet[BreakerRegistry] = weakref.WeakSet()
_STATS_LOCK = threading.Lock()
_STATS: OrderedDict[str, list[int]] = OrderedDict()  # origin -> [calls, retries, gave_up, budget_exhausted]
_MISSING = object()
_PHASES = ("connect", "read", "write", "pool")
_ORIGINS: dict[tuple[str, str, int | None], str] = {}


class AttemptRecord(NamedTuple):
    """One attempt of a call, listed in ``response.extensions["resilience"]``.

    Attributes:
        attempt: 1 for the first attempt.
        outcome: ``success``, ``failure`` (a retryable status, a 5xx or a network error),
            ``timeout`` or ``rejected`` (refused by an open circuit breaker).
        duration: seconds until the response headers (or the error).
        delay: seconds waited before the next attempt (0 for the last one).
        status: the response status, None after an error.
        error: the exception class name, None after a response.

    Items are also readable as ``record["outcome"]``.
    """

    attempt: int
    outcome: str
    duration: float
    delay: float
    status: int | None = None
    error: str | None = None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if key not in self._fields:
                raise KeyError(key)
            return getattr(self, key)
        return tuple.__getitem__(self, key)


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Passed to ``on_retry`` (``kind="retry"``) and ``on_give_up`` (``kind="give_up"``) hooks.

    ``reason`` is what failed (``"status 503"``, ``"ConnectError"``) for a retry, and why the call
    stopped for a give-up: ``attempts``, ``budget``, ``deadline``, ``retry_after`` or ``body``.
    ``origin`` is ``scheme://host:port``; the URL's query string is never included.
    """

    kind: str
    origin: str
    method: str
    path: str
    attempt: int
    delay: float
    reason: str
    status: int | None = None
    error: BaseException | None = None


def origin_of(url: httpx.URL) -> str:
    """``scheme://host:port`` (default port filled in), the key of breakers and budgets."""
    scheme = url.scheme
    host = url.host
    port = url.port
    key = (scheme, host, port)
    found = _ORIGINS.get(key)
    if found is None:
        bracketed = f"[{host}]" if ":" in host else host
        found = f"{scheme}://{bracketed}:{port or (443 if scheme == 'https' else 80)}"
        if len(_ORIGINS) >= 4096:
            _ORIGINS.clear()
        _ORIGINS[key] = found
    return found


def check_timeouts(total_timeout: float | None, attempt_timeout: float | None) -> None:
    for name, value in (("total_timeout", total_timeout), ("attempt_timeout", attempt_timeout)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf
        ):
            raise ConfigurationError(f"{name} must be a number of seconds > 0 or None, got {value!r}")
    if total_timeout is not None and attempt_timeout is not None and attempt_timeout > total_timeout:
        raise ConfigurationError(
            f"attempt_timeout ({attempt_timeout}) must be <= total_timeout ({total_timeout}): every attempt runs "
            "inside the total deadline; lower attempt_timeout or raise total_timeout"
        )


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


def log_give_up(event: RetryEvent) -> None:
    logger.warning(
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


def _stats(origin: str) -> list[int]:
    with _STATS_LOCK:
        found = _STATS.get(origin)
        if found is None:
            found = _STATS[origin] = [0, 0, 0, 0]
            while len(_STATS) > 1024:
                _STATS.popitem(last=False)
        return found


def retries_snapshot() -> dict[str, dict[str, int]]:
    with _STATS_LOCK:
        return {
            origin: {"calls": s[0], "retries": s[1], "gave_up": s[2], "budget_exhausted": s[3]}
            for origin, s in _STATS.items()
        }


def breakers_snapshot() -> list[dict[str, Any]]:
    now = time.monotonic()
    registries = [BREAKERS, *list(_PRIVATE_REGISTRIES)]
    return [breaker.snapshot(now) for registry in registries for breaker in registry.breakers()]


def register_snapshots(telemetry: Telemetry) -> None:
    telemetry.register_snapshot("circuit_breakers", breakers_snapshot)
    telemetry.register_snapshot("client_retries", retries_snapshot)


def phase_of(exc: BaseException) -> Phase:
    """How far the request got before ``exc`` (outbound.md C1)."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return Phase.NOT_SENT
    if isinstance(exc, CircuitOpenError):
        return Phase.FATAL  # our own refusal: retrying at once cannot succeed
    if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return Phase.SENT
    return Phase.FATAL


def breaker_result(exc: BaseException | None, status: int | None, policy: BreakerPolicy) -> Result:
    """Whether an outcome counts against the origin (transport errors and 5xx, by default)."""
    if exc is None:
        return policy.classify_status(status) if status is not None else Result.SUCCESS
    if isinstance(exc, (httpx.PoolTimeout, CircuitOpenError, httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return Result.IGNORED  # local overload or our own mistake, not the origin's health
    if isinstance(exc, httpx.TransportError):
        return Result.FAILURE
    return Result.IGNORED  # cancellation, GeneratorExit, bugs in user code


# -- request bodies ------------------------------------------------------------------------------


class _Tee:
    """Keeps the chunks of a streaming request body (up to ``cap`` bytes) while they are sent."""

    __slots__ = ("cap", "chunks", "done", "overflow", "size", "source", "sync_it", "async_it")

    def __init__(self, source: Any, cap: int) -> None:
        self.source = source
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.done = False
        self.sync_it: Iterator[bytes] | None = None
        self.async_it: AsyncIterator[bytes] | None = None

    @property
    def replayable(self) -> bool:
        return not self.overflow

    def take(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.overflow:
            return
        if self.size > self.cap:
            self.overflow = True  # committed: this attempt goes on, no later one can replay
            self.chunks = []
        else:
            self.chunks.append(chunk)


class _TeeView(httpx.SyncByteStream, httpx.AsyncByteStream):
    """One attempt's view of a teed body: the buffered prefix, then the rest of the source."""

    def __init__(self, tee: _Tee) -> None:
        self._tee = tee

    def __iter__(self) -> Iterator[bytes]:
        tee = self._tee
        yield from list(tee.chunks)
        if tee.done:
            return
        if tee.sync_it is None:
            tee.sync_it = iter(tee.source)
        for chunk in tee.sync_it:
            tee.take(chunk)
            yield chunk
        tee.done = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        tee = self._tee
        for chunk in list(tee.chunks):
            yield chunk
        if tee.done:
            return
        if tee.async_it is None:
            tee.async_it = tee.source.__aiter__()
        async for chunk in tee.async_it:
            tee.take(chunk)
            yield chunk
        tee.done = True


# -- response bodies -----------------------------------------------------------------------------

BodyError = Optional[BaseException]  # noqa: UP045 - a runtime alias must work on Python 3.10


def body_complete(response: httpx.Response) -> bool:
    """Whether the whole body is already in memory, so the call is over when the response arrives.

    True for a response read before it was returned (``httpx.Response(503)`` from a
    ``MockTransport``, a cache) and for an in-memory ``httpx.ByteStream`` body, also behind the
    default transport's stream adapter (respx's default mocker hands httpcore a ``ByteStream``).
    Such a body can neither fail nor take time to read, and the caller may never read or close
    it, so its outcome must be counted at once rather than when the stream is closed.
    """
    if response.is_closed:
        return True
    stream = response.stream
    if isinstance(stream, httpx.ByteStream):
        return True
    # httpx's Async/SyncResponseStream keep the httpcore stream here; the check fails safe (False)
    return isinstance(getattr(stream, "_httpcore_stream", None), httpx.ByteStream)


class SyncBody(httpx.SyncByteStream):
    """Wraps a response body: enforces the call's deadline between chunks and reports at close.

    ``read_timeout`` is accepted for symmetry with :class:`AsyncBody`: without cancellation a
    blocked read is bounded by httpx's own read timeout (already capped by the deadline).
    """

    def __init__(
        self,
        stream: Any,
        *,
        deadline: float = math.inf,
        read_timeout: float | None = None,
        on_close: Callable[[BodyError], None] | None = None,
    ):
        self._stream = stream
        self._deadline = deadline
        self._on_close = on_close
        self._error: BodyError = None
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._stream:
                if time.monotonic() >= self._deadline:
                    raise httpx.ReadTimeout("the call's total deadline passed while reading the response body")
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._error = exc
            raise

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            if not self._closed:
                self._closed = True
                if self._on_close is not None:
                    self._on_close(self._error)


class AsyncBody(httpx.AsyncByteStream):
    """Async twin of :class:`SyncBody`; a chunk that could outlast the deadline is cut exactly at it."""

    def __init__(
        self,
        stream: Any,
        *,
        deadline: float = math.inf,
        read_timeout: float | None = None,
        on_close: Callable[[BodyError], Awaitable[None]] | None = None,
    ):
        self._stream = stream
        self._deadline = deadline
        self._read_timeout = math.inf if read_timeout is None else read_timeout
        self._on_close = on_close
        self._error: BodyError = None
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        iterator = self._stream.__aiter__()
        try:
            while True:
                left = self._deadline - time.monotonic()
                try:
                    if left > self._read_timeout or left == math.inf:  # httpx's read timeout fires first
                        chunk = await iterator.__anext__()
                    else:
                        with anyio.fail_after(max(left, 0.0)):
                            chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise httpx.ReadTimeout(
                        "the call's total deadline passed while reading the response body"
                    ) from None
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._error = exc
            raise

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if not self._closed:
                self._closed = True
                if self._on_close is not None:
                    await self._on_close(self._error)


# -- retry ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Step:
    """What the transport does next: ``retry`` (close ``response``, sleep), ``return``, ``raise``."""

    kind: str
    delay: float = 0.0
    response: httpx.Response | None = None
    error: BaseException | None = None
    event: RetryEvent | None = None


class RetryCore:
    """Options and instruments of one retry transport; :meth:`start` begins one call."""

    def __init__(
        self,
        *,
        policy: RetryPolicy,
        total_timeout: float | None,
        attempt_timeout: float | None,
        raise_on_exhaustion: bool,
        on_retry: Hook | None,
        on_give_up: Hook | None,
        telemetry: Telemetry | bool,
        asynchronous: bool,
    ) -> None:
        if not isinstance(policy, RetryPolicy):
            raise ConfigurationError(f"policy must be a RetryPolicy, got {policy!r}")
        check_timeouts(total_timeout, attempt_timeout)
        check_hooks(asynchronous, on_retry=on_retry, on_give_up=on_give_up)
        self.policy = policy
        self.total_timeout = total_timeout
        self.attempt_timeout = attempt_timeout
        self.raise_on_exhaustion = bool(raise_on_exhaustion)
        self.on_retry: Hook = on_retry if on_retry is not None else log_retry
        self.on_give_up: Hook = on_give_up if on_give_up is not None else log_give_up
        self.telemetry = resolve_telemetry(telemetry)
        self.attempts = self.telemetry.instrument("asgi_resilience.client.attempts")
        self.retries = self.telemetry.instrument("asgi_resilience.client.retries")
        self.duration = self.telemetry.instrument("asgi_resilience.client.attempt.duration")
        register_snapshots(self.telemetry)
        self._budgets: dict[tuple[str, RetryBudget], BudgetState] = {}
        self._stats: dict[str, list[int]] = {}

    def start(self, request: httpx.Request) -> Call:
        return Call(self, request)

    def budget_state(self, origin: str, budget: RetryBudget) -> BudgetState:
        """The shared budget state of ``origin``, memoised per transport (the registry is shared)."""
        key = (origin, budget)
        state = self._budgets.get(key)
        if state is None:
            if len(self._budgets) >= 256:
                self._budgets.clear()
            state = self._budgets[key] = BUDGETS.get(origin, budget)
        return state

    def stats(self, origin: str) -> list[int]:
        found = self._stats.get(origin)
        if found is None:
            if len(self._stats) >= 256:
                self._stats.clear()
            found = self._stats[origin] = _stats(origin)
        return found


class Call:
    """The state of one logical call through a retry transport (never shared between calls)."""

    __slots__ = (
        "attempt",
        "base_timeout",
        "budget",
        "core",
        "deadline",
        "has_key",
        "max_attempts",
        "method",
        "origin",
        "attempt_timeout",
        "policy",
        "read_timeout",
        "records",
        "request",
        "started",
        "stats",
        "tee",
        "worst_case",
    )

    def __init__(self, core: RetryCore, request: httpx.Request) -> None:
        self.core = core
        self.request = request
        extensions = request.extensions
        policy = core.policy
        max_attempts = testing_attempts()
        override = extensions.get("retry", _MISSING)
        if override is not _MISSING:
            if override is None or override is False:
                max_attempts = 1
            elif isinstance(override, RetryPolicy):
                policy = override
            elif isinstance(override, int) and not isinstance(override, bool) and override >= 1:
                policy = replace(policy, attempts=override)
            else:
                raise ConfigurationError(
                    f'request.extensions["retry"] must be a RetryPolicy, a number of attempts >= 1, or False; '
                    f"got {override!r}"
                )
        self.policy = policy
        self.max_attempts = max_attempts
        total = extensions.get("total_timeout", core.total_timeout)
        self.attempt_timeout = extensions.get("attempt_timeout", core.attempt_timeout)
        if total is not core.total_timeout or self.attempt_timeout is not core.attempt_timeout:
            check_timeouts(total, None)  # per request, an attempt is simply cut at the deadline
            check_timeouts(None, self.attempt_timeout)
        now = time.monotonic()
        inbound = remaining_time()
        limits = [t for t in (total, inbound) if t is not None]
        self.deadline = now + min(limits) if limits else math.inf
        self.base_timeout: dict[str, float | None] = extensions.get("timeout") or {}
        self.worst_case = math.inf
        self.read_timeout: float | None = None
        self.method = request.method
        self.origin = origin_of(request.url)
        header = policy.idempotency_header
        self.has_key = header is not None and header in request.headers
        try:
            request.content  # noqa: B018 - raises RequestNotRead for a streaming body
        except httpx.RequestNotRead:
            self.tee: _Tee | None = _Tee(request.stream, policy.body_buffer)
        else:
            self.tee = None
        self.attempt = 0
        self.started = now
        self.records: list[AttemptRecord] = []
        self.budget: BudgetState | None = None
        if policy.budget is not None:
            self.budget = core.budget_state(self.origin, policy.budget)
            self.budget.record_request(now)
        self.stats = core.stats(self.origin)
        self.stats[0] += 1

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def hard_limit(self) -> float | None:
        """Seconds after which the async transport cancels the attempt, or None.

        Every httpx phase timeout is already capped by the time left; only when the phases
        together could outlast the deadline is a cancel scope (about 15 us on asyncio) needed.
        """
        if self.deadline == math.inf:
            return None
        remaining = self.deadline - time.monotonic()
        return max(0.0, remaining) if self.worst_case > remaining else None

    def next_request(self) -> httpx.Request:
        remaining = self.remaining()
        if remaining <= 0:
            raise httpx.ConnectTimeout(
                "the call's deadline passed before the request could be sent (nothing was sent)", request=self.request
            )
        self.attempt += 1
        request = self.request
        cap = min(remaining, self.attempt_timeout if self.attempt_timeout is not None else math.inf)
        if cap != math.inf:
            # the caller's request object is ours for this call: set this attempt's timeouts on it
            base = self.base_timeout
            timeouts: dict[str, float] = {}
            for key in _PHASES:
                given = base.get(key)
                timeouts[key] = cap if given is None else min(cap, given)
            request.extensions = {**request.extensions, "timeout": timeouts}
            self.worst_case = sum(timeouts.values())
            self.read_timeout = timeouts["read"]
        else:
            self.worst_case = math.inf
            self.read_timeout = self.base_timeout.get("read")
        if self.attempt > 1:
            self.core.telemetry.span_attributes({"http.request.resend_count": self.attempt - 1})
        if self.tee is not None:
            request.stream = _TeeView(self.tee)
        self.started = time.monotonic()
        return request

    def after(self, response: httpx.Response | None, error: BaseException | None) -> Step:
        now = time.monotonic()
        duration = now - self.started
        policy = self.policy
        core = self.core
        status: int | None = None
        if response is not None:
            status = response.status_code
            if status not in policy.statuses:  # the common case: nothing to decide
                name = "failure" if status >= 500 else "success"
                attributes = {"origin": self.origin, "outcome": name}
                core.attempts.add(1, attributes)
                core.duration.record(duration, attributes)
                self.records.append(AttemptRecord(self.attempt, name, duration, 0.0, status, None))
                return Step("return", response=response)
            outcome = Outcome(Phase.RESPONSE, status, response.headers.get("retry-after"))
            name = "failure"
        else:
            outcome = Outcome(phase_of(error))  # type: ignore[arg-type]
            if isinstance(error, CircuitOpenError):
                name = "rejected"
            elif isinstance(error, httpx.TimeoutException):
                name = "timeout"
            else:
                name = "failure"
        attributes = {"origin": self.origin, "outcome": name}
        core.attempts.add(1, attributes)
        core.duration.record(duration, attributes)
        decision = policy.decide(
            outcome,
            method=self.method,
            has_idempotency_key=self.has_key,
            attempt=self.attempt,
            remaining=self.remaining(),
            random=random.random(),
            now_epoch=time.time(),
            body_replayable=self.tee is None or self.tee.replayable,
            max_attempts=self.max_attempts,
        )
        if decision.retry and self.budget is not None and not self.budget.try_withdraw(now):
            self.stats[3] += 1
            decision = Decision(False, reason="budget")
        self.records.append(
            AttemptRecord(
                self.attempt,
                name,
                duration,
                decision.delay if decision.retry else 0.0,
                status,
                type(error).__name__ if error is not None else None,
            )
        )
        path = self.request.url.path
        if decision.retry:
            self.stats[1] += 1
            core.retries.add(1, {"origin": self.origin})
            reason = f"status {status}" if status is not None else type(error).__name__
            retry = RetryEvent(
                "retry", self.origin, self.method, path, self.attempt, decision.delay, reason, status, error
            )
            return Step("retry", 0.0 if testing_enabled() else decision.delay, response, event=retry)
        event: RetryEvent | None = None
        single = self.attempt == 1 and decision.reason == "attempts"  # retries were off: nothing given up
        if decision.reason is not None and decision.reason != "method" and not single:
            self.stats[2] += 1
            event = RetryEvent(
                "give_up", self.origin, self.method, path, self.attempt, decision.delay, decision.reason, status, error
            )
            if core.raise_on_exhaustion:
                return Step("exhausted", response=response, error=error, event=event)
        if error is not None:
            return Step("raise", error=error, event=event)
        return Step("return", response=response, event=event)

    def finish(self, response: httpx.Response) -> httpx.Response:
        response.extensions = {**response.extensions, "resilience": list(self.records)}
        return response

    def exhausted(self, step: Step) -> RetriesExhausted:
        reason = step.event.reason if step.event is not None else "attempts"
        exc = RetriesExhausted(
            f"{self.method} {self.origin}{self.request.url.path} failed after {self.attempt} attempt(s) ({reason})",
            attempts=self.attempt,
            response=self.finish(step.response) if step.response is not None else None,
            request=self.request,
        )
        if step.error is None and step.response is not None:
            exc.__cause__ = httpx.HTTPStatusError(
                f"the last attempt answered {step.response.status_code}", request=self.request, response=step.response
            )
        else:
            exc.__cause__ = step.error
        return exc


# -- circuit breaker -----------------------------------------------------------------------------


class BreakerCore:
    """Options, registry and instruments of one breaker transport."""

    def __init__(
        self,
        *,
        policy: BreakerPolicy,
        state: str | Any | None,
        shared: bool,
        on_transition: Hook | None,
        telemetry: Telemetry | bool,
        asynchronous: bool,
    ) -> None:
        if not isinstance(policy, BreakerPolicy):
            raise ConfigurationError(f"policy must be a BreakerPolicy, got {policy!r}")
        check_hooks(asynchronous, on_transition=on_transition)
        self.policy = policy
        if shared:
            self.registry = BREAKERS
        else:
            self.registry = BreakerRegistry()
            _PRIVATE_REGISTRIES.add(self.registry)
        self.shared_state = SharedState(state, asynchronous=asynchronous) if state is not None else None
        self._local: dict[str, CircuitBreaker] = {}
        self.on_transition: Hook = on_transition if on_transition is not None else log_transition
        self.telemetry = resolve_telemetry(telemetry)
        self.state_metric = self.telemetry.instrument("asgi_resilience.circuit_breaker.state")
        self.transitions = self.telemetry.instrument("asgi_resilience.circuit_breaker.transitions")
        register_snapshots(self.telemetry)

    def breaker(self, request: httpx.Request) -> CircuitBreaker:
        origin = origin_of(request.url)
        breaker = self._local.get(origin)
        if breaker is not None:
            return breaker  # fast path; the registry keeps the shared, bounded truth
        breaker, created = self.registry.get(self.policy, origin)
        if created:
            self.state_metric.add(1, {"origin": breaker.origin, "state": State.CLOSED.value})
        if len(self._local) >= 256:
            self._local.clear()
        self._local[origin] = breaker
        return breaker

    def count(self, transitions: tuple[BreakerTransition, ...]) -> None:
        for t in transitions:
            self.state_metric.add(-1, {"origin": t.origin, "state": t.from_state.value})
            self.state_metric.add(1, {"origin": t.origin, "state": t.to_state.value})
            self.transitions.add(1, {"origin": t.origin, "from": t.from_state.value, "to": t.to_state.value})
            self.telemetry.span_event(
                "circuit_breaker.transition", {"origin": t.origin, "from": t.from_state.value, "to": t.to_state.value}
            )

    def rejection(self, admission: Admission, breaker: CircuitBreaker, request: httpx.Request) -> CircuitOpenError:
        state = "half-open, a probe is in flight" if admission.state is State.HALF_OPEN else "open"
        return CircuitOpenError(
            f"circuit breaker for {breaker.origin} is {state} (see retry_after)",
            retry_after=max(0.0, admission.retry_after),
            origin=breaker.origin,
            request=request,
        )

    def shared_ops(
        self, breaker: CircuitBreaker, transitions: tuple[BreakerTransition, ...], probe_epoch: float
    ) -> list[tuple[str, float]]:
        """The shared-state writes a set of transitions asks for: ``("open", seconds)`` / ``("close", epoch)``."""
        if self.shared_state is None:
            return []
        ops: list[tuple[str, float]] = []
        for t in transitions:
            if t.to_state is State.OPEN and t.reason != "shared":
                ops.append(("open", breaker.open_remaining(time.monotonic())))
            elif t.to_state is State.CLOSED:
                ops.append(("close", probe_epoch))
        return ops
