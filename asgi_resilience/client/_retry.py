"""Sans-io retry decisions: policy, backoff, ``Retry-After``, failure phase, retry budget.

Nothing here awaits, sleeps, reads a clock or imports httpx: the transports convert an httpx
outcome into an :class:`Outcome` and drive :meth:`RetryPolicy.decide` in a loop.

Sources:

* RFC 9110 section 9.2.2 (idempotent methods: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and section
  10.2.3 (``Retry-After``: ``delay-seconds`` or an ``HTTP-date``).
* RFC 6585 section 4 (429 may carry ``Retry-After``).
* gRPC proposal A6 (transparent retries of requests that never left the client; a bounded replay
  buffer past which a call is committed).
* Finagle ``RetryBudget`` / Envoy ``retry_budget`` (retries are a bounded fraction of requests).
* AWS "Exponential Backoff and Jitter" (full jitter: ``uniform(0, min(cap, base * 2 ** n))``).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Collection, Hashable
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Literal

from asgi_resilience.errors import ConfigurationError

__all__ = [
    "IDEMPOTENT_METHODS",
    "BudgetState",
    "Decision",
    "Outcome",
    "Phase",
    "RetryBudget",
    "RetryPolicy",
    "parse_retry_after",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

Jitter = Literal["full", "none"]


def _seconds(value: float | timedelta, name: str, *, allow_zero: bool = True) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ConfigurationError(f"{name} must be a finite number of seconds (or a timedelta), got {value!r}")
    if seconds < 0 or (not allow_zero and seconds == 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {bound} seconds, got {value!r}")
    return float(seconds)


class Phase(Enum):
    """How far a failed attempt got, which decides whether re-sending is safe."""

    NOT_SENT = "not_sent"
    """Nothing reached the origin (connect error, connect or pool timeout): any method may retry."""
    SENT = "sent"
    """The request was (maybe partly) sent but no response came: only idempotent requests retry."""
    RESPONSE = "response"
    """A response arrived: its status decides."""
    FATAL = "fatal"
    """An error that a retry cannot fix (unsupported protocol, invalid URL, decoding error)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result, as the core sees it."""

    phase: Phase
    status: int | None = None
    retry_after: str | None = None
    """The raw ``Retry-After`` header value of the response, if any."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after an attempt: retry after ``delay`` seconds, or stop for ``reason``.

    ``reason`` is None when the outcome was not a retryable one at all (a success, a 404, a fatal
    error); otherwise it names why a retryable outcome was not retried: ``"attempts"``,
    ``"deadline"``, ``"retry_after"``, ``"budget"``, ``"body"``, ``"method"`` or ``"disabled"``.
    """

    retry: bool
    delay: float = 0.0
    reason: str | None = None


def parse_retry_after(value: str | None, *, now_epoch: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 section 10.2.3), None if invalid.

    ``delay-seconds`` is a non-negative integer; an ``HTTP-date`` in the past means "now" (0).
    Garbage, negative numbers and fractions are invalid (None): the caller falls back to backoff.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(int(value))
    if value[0] in "+-" or value[0].isdigit():
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are always GMT; a zone-less parse is not an HTTP-date
        return None
    return max(0.0, when.timestamp() - now_epoch)


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retries per origin are at most ``ratio`` of recent requests, with a floor for low traffic.

    A retry is allowed while the retries of the last ``ttl`` seconds stay below ``ratio`` times the
    requests of that window, or while the retries of the last second stay below ``min_per_second``
    (so a quiet client can still retry). Under a storm where every call fails, the origin sees at
    most ``(1 + ratio)`` times the offered load once the offered load passes
    ``min_per_second / ratio`` requests per second. An exhausted budget returns the original
    outcome (response or error) and counts it.

    Args:
        ratio: the fraction of recent requests that may be retries (0.2 = 20 %).
        min_per_second: retries allowed every second whatever the ratio.
        ttl: how long a request counts as recent, in seconds.

    .. versionadded:: 0.1.0
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    ttl: float | timedelta = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio <= 10:
            raise ConfigurationError(f"RetryBudget ratio must be a number in [0, 10], got {self.ratio!r}")
        if (
            isinstance(self.min_per_second, bool)
            or not isinstance(self.min_per_second, (int, float))
            or not 0 <= self.min_per_second < math.inf
        ):
            raise ConfigurationError(f"RetryBudget min_per_second must be >= 0, got {self.min_per_second!r}")
        object.__setattr__(self, "ttl", _seconds(self.ttl, "RetryBudget ttl", allow_zero=False))


class BudgetState:
    """Live counters of one :class:`RetryBudget` for one origin (thread-safe, O(1) amortised)."""

    __slots__ = ("_lock", "_requests", "_retries", "budget", "exhausted", "total_requests", "total_retries")

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self.total_requests = 0
        self.total_retries = 0
        self.exhausted = 0

    def _trim(self, now: float) -> None:
        horizon = now - float(self.budget.ttl)  # type: ignore[arg-type]
        while self._requests and self._requests[0] <= horizon:
            self._requests.popleft()
        while self._retries and self._retries[0] <= horizon:
            self._retries.popleft()

    def record_request(self, now: float) -> None:
        """Count a logical call (its first attempt), before it is sent."""
        with self._lock:
            self._trim(now)
            self._requests.append(now)
            self.total_requests += 1

    def try_withdraw(self, now: float) -> bool:
        """Take one retry from the budget; False (and counted) when it is exhausted."""
        with self._lock:
            self._trim(now)
            retries = len(self._retries)
            allowed = retries < self.budget.ratio * len(self._requests)
            if not allowed and self.budget.min_per_second > 0:
                last_second = 0  # counted from the newest, stopping early: O(min_per_second)
                for t in reversed(self._retries):
                    if t <= now - 1.0 or last_second >= self.budget.min_per_second:
                        break
                    last_second += 1
                allowed = last_second < self.budget.min_per_second
            if allowed:
                self._retries.append(now)
                self.total_retries += 1
            else:
                self.exhausted += 1
            return allowed

    def snapshot(self) -> dict[str, int]:
        return {"requests": self.total_requests, "retries": self.total_retries, "budget_exhausted": self.exhausted}


class BudgetRegistry:
    """Budget state per (origin, budget), bounded LRU so dynamic hosts cannot grow it forever."""

    def __init__(self, max_size: int = 1024) -> None:
        self.max_size = max_size
        self._lock = threading.Lock()
        self._states: OrderedDict[Hashable, BudgetState] = OrderedDict()

    def get(self, origin: str, budget: RetryBudget) -> BudgetState:
        key = (origin, budget)
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = BudgetState(budget)
                while len(self._states) > self.max_size:
                    self._states.popitem(last=False)
            else:
                self._states.move_to_end(key)
            return state

    def items(self) -> list[tuple[str, BudgetState]]:
        with self._lock:
            return [(key[0], state) for key, state in self._states.items()]  # type: ignore[index]

    def clear(self) -> None:
        with self._lock:
            self._states.clear()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how an outbound call is re-sent.

    Safety follows how far the failed attempt got: a request that was never sent (connect error,
    connect or pool timeout) is retried whatever its method; one that was sent without an answer
    (read timeout before headers, connection reset) only when its method is in ``methods`` or it
    carries ``idempotency_header``; a response is retried when its status is in ``statuses`` and
    the method qualifies the same way.

    Backoff before retry ``n`` (1-based) is ``uniform(0, min(backoff_max, backoff_initial *
    backoff_multiplier ** (n - 1)))`` ("full jitter"); ``jitter="none"`` drops the randomness. A
    ``Retry-After`` header (seconds or HTTP-date) replaces the backoff, capped at
    ``retry_after_max``; if that wait does not fit before the deadline the call stops at once and
    the response is returned (never re-sent early, never a sleep past the deadline).

    Streaming request bodies are teed into a buffer while they are sent; past ``body_buffer``
    bytes the request is committed and not retried. ``bytes`` bodies always replay.

    Warning: ``attempts`` bounds the re-sends of one call; the ``budget`` bounds them across calls
    to one origin. Without a budget (``budget=None``) a failing origin sees ``attempts`` times the
    load.

    Args:
        attempts: total attempts including the first (1 disables retries).
        statuses: response statuses worth a retry.
        methods: methods that are safe to re-send once sent (RFC 9110 idempotent set by default).
        idempotency_header: a request header that makes any method safe to re-send (None: off).
        backoff_initial: the first backoff cap in seconds.
        backoff_max: the largest backoff in seconds.
        backoff_multiplier: growth of the backoff cap per retry.
        jitter: ``"full"`` (default) or ``"none"``.
        retry_after_max: the longest ``Retry-After`` honoured, in seconds.
        respect_retry_after: False ignores ``Retry-After`` and always uses the backoff.
        budget: a :class:`RetryBudget` per origin, or None for no budget.
        body_buffer: bytes of a streaming request body kept for replay (0: never replay a stream
            that was read).

    .. versionadded:: 0.1.0
    """

    attempts: int = 3
    statuses: Collection[int] = frozenset({429, 502, 503, 504})
    methods: Collection[str] = IDEMPOTENT_METHODS
    idempotency_header: str | None = "Idempotency-Key"
    backoff_initial: float | timedelta = 0.2
    backoff_max: float | timedelta = 5.0
    backoff_multiplier: float = 2.0
    jitter: Jitter = "full"
    retry_after_max: float | timedelta = 60.0
    respect_retry_after: bool = True
    budget: RetryBudget | None = field(default_factory=RetryBudget)
    body_buffer: int = 64 * 1024

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy attempts must be an int >= 1 (1 disables retries), got {self.attempts!r}"
            )
        try:
            statuses = frozenset(int(s) for s in self.statuses)
        except (TypeError, ValueError):
            raise ConfigurationError(f"RetryPolicy statuses must be HTTP status codes, got {self.statuses!r}") from None
        if any(not 100 <= s <= 599 for s in statuses):
            raise ConfigurationError(f"RetryPolicy statuses must be in 100..599, got {sorted(statuses)}")
        object.__setattr__(self, "statuses", statuses)
        if isinstance(self.methods, str):
            raise ConfigurationError("RetryPolicy methods must be a collection of method names, not one string")
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        if self.idempotency_header is not None:
            object.__setattr__(self, "idempotency_header", self.idempotency_header.lower())
        for name in ("backoff_initial", "backoff_max", "retry_after_max"):
            object.__setattr__(self, name, _seconds(getattr(self, name), f"RetryPolicy {name}"))
        if not isinstance(self.backoff_multiplier, (int, float)) or not 1 <= self.backoff_multiplier < math.inf:
            raise ConfigurationError(f"RetryPolicy backoff_multiplier must be >= 1, got {self.backoff_multiplier!r}")
        if self.jitter not in ("full", "none"):
            raise ConfigurationError(f"RetryPolicy jitter must be 'full' or 'none', got {self.jitter!r}")
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise ConfigurationError(f"RetryPolicy budget must be a RetryBudget or None, got {self.budget!r}")
        if isinstance(self.body_buffer, bool) or not isinstance(self.body_buffer, int) or self.body_buffer < 0:
            raise ConfigurationError(
                f"RetryPolicy body_buffer must be a number of bytes >= 0, got {self.body_buffer!r}"
            )

    def backoff(self, retry: int, random: float) -> float:
        """Seconds to wait before retry number ``retry`` (1-based); ``random`` is uniform in [0, 1)."""
        initial = float(self.backoff_initial)  # type: ignore[arg-type]
        cap = float(self.backoff_max)  # type: ignore[arg-type]
        exponent = min(retry - 1, 64)
        ceiling = min(cap, initial * self.backoff_multiplier**exponent)
        return ceiling * random if self.jitter == "full" else ceiling

    def may_resend(self, method: str, has_idempotency_key: bool) -> bool:
        """Whether a request that may have reached the origin can be sent again."""
        return method.upper() in self.methods or (has_idempotency_key and self.idempotency_header is not None)

    def decide(
        self,
        outcome: Outcome,
        *,
        method: str,
        has_idempotency_key: bool,
        attempt: int,
        remaining: float,
        random: float,
        now_epoch: float,
        body_replayable: bool = True,
        max_attempts: int | None = None,
    ) -> Decision:
        """Retry or stop after attempt number ``attempt`` (1-based) ended with ``outcome``.

        ``remaining`` is the time left before the call's deadline; the budget is not consulted
        here (the transport withdraws from it only when this says retry).
        """
        if outcome.phase is Phase.FATAL:
            return Decision(False)
        if outcome.phase is Phase.RESPONSE:
            if outcome.status not in self.statuses:
                return Decision(False)
            if not self.may_resend(method, has_idempotency_key):
                return Decision(False, reason="method")
        elif outcome.phase is Phase.SENT and not self.may_resend(method, has_idempotency_key):
            return Decision(False, reason="method")
        limit = self.attempts if max_attempts is None else min(self.attempts, max_attempts)
        if attempt >= limit:
            return Decision(False, reason="attempts")
        if not body_replayable:
            return Decision(False, reason="body")
        delay: float | None = None
        if outcome.phase is Phase.RESPONSE and self.respect_retry_after:
            asked = parse_retry_after(outcome.retry_after, now_epoch=now_epoch)
            if asked is not None:
                delay = min(asked, float(self.retry_after_max))  # type: ignore[arg-type]
                if delay > remaining:
                    return Decision(False, delay=delay, reason="retry_after")
        if delay is None:
            delay = self.backoff(attempt, random)
        if delay >= remaining:
            return Decision(False, delay=delay, reason="deadline")
        return Decision(True, delay=delay)
