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
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Literal

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.policies._budget import RetryBudget
from asgi_resilience.policies._durations import seconds

__all__ = [
    "IDEMPOTENT_METHODS",
    "Decision",
    "Jitter",
    "Outcome",
    "Phase",
    "RetryPolicy",
    "backoff_delay",
    "parse_retry_after",
    "schedule",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

Jitter = Literal["full", "none"]


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
    ``"deadline"``, ``"retry_after"``, ``"budget"``, ``"body"`` or ``"method"``.
    """

    retry: bool
    delay: float = 0.0
    reason: str | None = None


_MAX_DELAY_DIGITS = 12  # about 31,700 years: longer values are all "too long to wait"


def parse_retry_after(value: str | None, *, now_epoch: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 section 10.2.3), None if invalid.

    ``delay-seconds`` is ``1*DIGIT`` with RFC 5234 digits (ASCII ``0-9`` only: ``"²"`` or
    ``"٣"`` are invalid, not numbers); an ``HTTP-date`` in the past means "now" (0). Garbage,
    negative numbers and fractions are invalid (None) and the caller falls back to backoff. Never
    raises, whatever the input.
    """
    if value is None:
        return None
    value = value.strip(" \t")
    if not value or not value.isascii():
        return None
    if value.isdigit():
        if len(value) > _MAX_DELAY_DIGITS:
            return float(10**_MAX_DELAY_DIGITS)
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


def backoff_delay(retry: int, random: float, *, initial: float, cap: float, multiplier: float, jitter: Jitter) -> float:
    """Seconds before retry number ``retry`` (1-based): ``uniform(0, min(cap, initial * multiplier **
    (retry - 1)))`` with full jitter (``random`` is uniform in [0, 1)), the ceiling itself without."""
    ceiling = min(cap, initial * multiplier ** min(retry - 1, 64))
    return ceiling * random if jitter == "full" else ceiling


def schedule(*, attempt: int, limit: int, delay: float, remaining: float) -> Decision:
    """The retry engine's last word, shared by every retry in the package: retry after ``delay``
    unless attempt ``attempt`` was the last of ``limit`` or the wait would reach the deadline
    (``remaining`` seconds away). A retry never sleeps past the deadline."""
    if attempt >= limit:
        return Decision(False, reason="attempts")
    if delay >= remaining:
        return Decision(False, delay=delay, reason="deadline")
    return Decision(True, delay=delay)


@dataclass(frozen=True, slots=True, kw_only=True)
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
            object.__setattr__(self, name, seconds(getattr(self, name), f"RetryPolicy {name}", allow_zero=True))
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
        return backoff_delay(
            retry,
            random,
            initial=float(self.backoff_initial),  # type: ignore[arg-type]
            cap=float(self.backoff_max),  # type: ignore[arg-type]
            multiplier=self.backoff_multiplier,
            jitter=self.jitter,
        )

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
        if outcome.phase is Phase.RESPONSE and self.respect_retry_after:
            asked = parse_retry_after(outcome.retry_after, now_epoch=now_epoch)
            if asked is not None:
                delay = min(asked, float(self.retry_after_max))  # type: ignore[arg-type]
                if delay > remaining:
                    return Decision(False, delay=delay, reason="retry_after")
                return schedule(attempt=attempt, limit=limit, delay=delay, remaining=remaining)
        return schedule(attempt=attempt, limit=limit, delay=self.backoff(attempt, random), remaining=remaining)
