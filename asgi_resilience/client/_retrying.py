"""The retry driver of the httpx transports: one :class:`Call` per logical request drives the
sans-io :class:`~asgi_resilience.policies.RetryPolicy` and the shared retry budget; the transports
only send, sleep, close and call hooks.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, replace
from typing import Any

import httpx

from asgi_resilience._deadline import remaining_time
from asgi_resilience.client._body import AsyncBody, SyncBody
from asgi_resilience.client._hooks import Hook, check_hooks, log_give_up, log_retry
from asgi_resilience.client._http import AttemptRecord, RetryEvent, origin_of, phase_of
from asgi_resilience.client._tee import Tee, TeeView
from asgi_resilience.errors import CircuitOpenError, ConfigurationError, RetriesExhausted
from asgi_resilience.observability import Telemetry, resolve_telemetry
from asgi_resilience.policies._breaker import BreakerPolicy
from asgi_resilience.policies._budget import BudgetState, RetryBudget
from asgi_resilience.policies._config import testing_attempts, testing_enabled
from asgi_resilience.policies._hedge import HedgeEngine, HedgePolicy
from asgi_resilience.policies._registry import BUDGETS, origin_stats, register_snapshots
from asgi_resilience.policies._retry import Decision, Outcome, Phase, RetryPolicy

__all__ = ["Call", "RetryCore", "Step", "check_resilient", "check_timeouts", "limit_wait", "no_retry", "shrink_total"]

_MISSING = object()
_PHASES = ("connect", "read", "write", "pool")


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


def no_retry() -> RetryPolicy:
    return RetryPolicy(attempts=1, budget=None)


def check_resilient(
    total_timeout: float, attempt_timeout: float, max_concurrent: int | None, retry: Any, breaker: Any, hedge: Any
) -> None:
    if total_timeout is None:
        raise ConfigurationError("total_timeout must be a number of seconds; the standard pipeline always has one")
    check_timeouts(total_timeout, attempt_timeout)
    if max_concurrent is not None and (
        isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1
    ):
        raise ConfigurationError(f"max_concurrent must be an int >= 1 or None, got {max_concurrent!r}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigurationError(f"retry must be a RetryPolicy or None (no retries), got {retry!r}")
    if breaker is not None and not isinstance(breaker, BreakerPolicy):
        raise ConfigurationError(f"breaker must be a BreakerPolicy or None (no breaker), got {breaker!r}")
    check_hedge(hedge)


def check_hedge(hedge: Any) -> None:
    if hedge is not None and not isinstance(hedge, HedgePolicy):
        raise ConfigurationError(f"hedge must be a HedgePolicy or None (no hedging), got {hedge!r}")


def limit_wait(request: httpx.Request, total_timeout: float) -> float:
    total = request.extensions.get("total_timeout", total_timeout)
    inbound = remaining_time()
    return min(t for t in (total, inbound, math.inf) if t is not None)


def shrink_total(request: httpx.Request, total_timeout: float, waited: float) -> None:
    if waited > 0:
        total = request.extensions.get("total_timeout", total_timeout)
        request.extensions["total_timeout"] = max(1e-6, total - waited)


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
        hedge: HedgePolicy | None = None,
    ) -> None:
        if not isinstance(policy, RetryPolicy):
            raise ConfigurationError(f"policy must be a RetryPolicy, got {policy!r}")
        check_timeouts(total_timeout, attempt_timeout)
        check_hedge(hedge)
        if hedge is not None and not asynchronous:
            raise ConfigurationError(
                "hedge= needs an async transport: hedged attempts run concurrently and the losers are cancelled, "
                "which a synchronous transport could only do with a thread per attempt that cannot be cancelled"
            )
        self.hedge = hedge
        self._hedgers: dict[str, HedgeEngine[httpx.Response]] = {}
        check_hooks(asynchronous, on_retry=on_retry, on_give_up=on_give_up)
        self.policy = policy
        self.total_timeout = total_timeout
        self.attempt_timeout = attempt_timeout
        self.raise_on_exhaustion = bool(raise_on_exhaustion)
        self.on_retry: Hook = on_retry if on_retry is not None else log_retry
        self.on_give_up: Hook = on_give_up if on_give_up is not None else log_give_up
        self.asynchronous = asynchronous
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

    def hedger(self, origin: str) -> HedgeEngine[httpx.Response]:
        """The hedge engine of ``origin`` (its own latencies for an adaptive delay), memoised."""
        found = self._hedgers.get(origin)
        if found is None:
            hedge = self.hedge
            assert hedge is not None  # only asked for when hedging is on
            if len(self._hedgers) >= 256:
                self._hedgers.clear()
            found = self._hedgers[origin] = HedgeEngine(
                delay=hedge.delay, max_hedges=hedge.max_hedges, telemetry=self.telemetry, label=origin
            )
        return found

    def stats(self, origin: str) -> list[int]:
        found = self._stats.get(origin)
        if found is None:
            if len(self._stats) >= 256:
                self._stats.clear()
            found = self._stats[origin] = origin_stats(origin)
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
        "hedger",
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
            self.tee: Tee | None = Tee(request.stream, policy.body_buffer)
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
        self.hedger: HedgeEngine[httpx.Response] | None = None
        hedge = core.hedge
        if (
            hedge is not None
            and self.method in hedge.methods
            and self.tee is None  # a streaming body can be sent once at a time: never hedged
            and extensions.get("hedge", True) is not False
        ):
            self.hedger = core.hedger(self.origin)

    def accepts(self, response: httpx.Response) -> bool:
        """Whether a hedged attempt's response wins the race (one the retry policy would not retry)."""
        return response.status_code not in self.policy.statuses

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
            request.stream = TeeView(self.tee)
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

    def body(self, stream: Any) -> AsyncBody | SyncBody:
        """The returned response's body, cut at the call's deadline (the transport's flavour)."""
        if self.core.asynchronous:
            return AsyncBody(stream, deadline=self.deadline, read_timeout=self.read_timeout)
        return SyncBody(stream, deadline=self.deadline)

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
