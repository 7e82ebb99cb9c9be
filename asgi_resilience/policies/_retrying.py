"""``retry``: re-run a failing function, inside the caller's deadline and the retry budget."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar

from asgi_resilience._deadline import remaining_time
from asgi_resilience.errors import ConfigurationError, ResilienceError
from asgi_resilience.observability import Telemetry, resolve_telemetry
from asgi_resilience.policies import _agen_run, _async_run, _sync_run
from asgi_resilience.policies._base import AsyncFn, Policy, SyncFn
from asgi_resilience.policies._budget import BudgetState, RetryBudget
from asgi_resilience.policies._config import testing_attempts, testing_enabled
from asgi_resilience.policies._durations import seconds
from asgi_resilience.policies._named import configured, mark_created
from asgi_resilience.policies._registry import BUDGETS
from asgi_resilience.policies._retry import Jitter, backoff_delay, schedule

__all__ = ["Retrying", "retry"]

logger = logging.getLogger("asgi_resilience.policies")

On = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], "bool | float | timedelta"]


def retryable(exc: BaseException) -> bool:
    """The default ``on=``: an asgi-resilience error that says a later try can succeed."""
    return isinstance(exc, ResilienceError) and exc.retryable


def _predicate(on: On) -> Callable[[BaseException], bool | float | timedelta]:
    if isinstance(on, type) and issubclass(on, BaseException):
        return lambda exc: isinstance(exc, on)
    if isinstance(on, tuple) and on and all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
        return lambda exc: isinstance(exc, on)
    if callable(on) and not isinstance(on, type):
        return on
    raise ConfigurationError(
        f"retry on= must be an exception class, a tuple of them, or a predicate (exc) -> bool | seconds; got {on!r}"
    )


class Retrying(Policy):
    """A retry policy; see :func:`retry`."""

    kind: ClassVar[str] = "retry"
    rank: ClassVar[int] = 2

    def __init__(
        self,
        *,
        on: On,
        attempts: int,
        timeout: float | timedelta | None,
        wait_initial: float | timedelta,
        wait_max: float | timedelta,
        wait_exp_base: float,
        jitter: Jitter,
        budget: RetryBudget | None,
        name: str | None,
        telemetry: Telemetry | bool,
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(f"retry attempts must be an int >= 1, got {attempts!r}")
        if jitter not in ("full", "none"):
            raise ConfigurationError(f"retry jitter must be 'full' or 'none', got {jitter!r}")
        if isinstance(wait_exp_base, bool) or not isinstance(wait_exp_base, (int, float)) or not wait_exp_base >= 1:
            raise ConfigurationError(f"retry wait_exp_base must be a number >= 1, got {wait_exp_base!r}")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError(f"retry budget must be a RetryBudget or None, got {budget!r}")
        self.on = on
        self._on = _predicate(on)
        self.attempts = attempts
        self.timeout = None if timeout is None else seconds(timeout, "retry timeout", allow_zero=False)
        self.wait_initial = seconds(wait_initial, "retry wait_initial", allow_zero=True)
        self.wait_max = seconds(wait_max, "retry wait_max", allow_zero=True)
        self.wait_exp_base = float(wait_exp_base)
        self.jitter = jitter
        self.name = name
        self.budget = budget
        self._budget: BudgetState | None = BUDGETS.get(f"retry:{name}", budget) if budget is not None else None
        self.telemetry = resolve_telemetry(telemetry)
        self._retries = self.telemetry.instrument("asgi_resilience.retries")
        self._label = {"policy": name or "anonymous"}

    def bind_async(self, inner: AsyncFn) -> AsyncFn:
        return _async_run.bind_retry(self, inner)

    def bind_sync(self, inner: SyncFn) -> SyncFn:
        return _sync_run.bind_retry(self, inner)

    def bind_asyncgen(self, inner: _agen_run.AsyncGenFn) -> _agen_run.AsyncGenFn:
        return _agen_run.bind_retry(self, inner)

    def begin(self) -> float:
        """Start one call: count it in the budget; returns its start time."""
        now = time.monotonic()
        if self._budget is not None:
            self._budget.record_request(now)
        return now

    def delay_after(self, exc: Exception, attempt: int, started: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to re-raise ``exc``."""
        verdict = self._on(exc)
        if verdict is False or verdict is None:
            return None
        if verdict is True:
            asked = exc.retry_after if isinstance(exc, ResilienceError) else None
            if asked is not None:
                delay = asked  # honour the refusal's own Retry-After (open breaker, full bulkhead)
            else:
                delay = backoff_delay(
                    attempt,
                    random.random(),
                    initial=self.wait_initial,
                    cap=self.wait_max,
                    multiplier=self.wait_exp_base,
                    jitter=self.jitter,
                )
        else:
            delay = seconds(verdict, "the delay returned by retry on=", allow_zero=True)
        now = time.monotonic()
        remaining = math.inf if self.timeout is None else self.timeout - (now - started)
        inbound = remaining_time()
        if inbound is not None:
            remaining = min(remaining, inbound)
        cap = testing_attempts()
        limit = self.attempts if cap is None else min(self.attempts, cap)
        decision = schedule(attempt=attempt, limit=limit, delay=delay, remaining=remaining)
        if not decision.retry:
            return None
        if self._budget is not None and not self._budget.try_withdraw(now):
            logger.debug("retry %s: budget exhausted, not retrying %s", self.name, type(exc).__name__)
            return None
        self._retries.add(1, self._label)
        return 0.0 if testing_enabled() else decision.delay


def retry(
    *,
    on: On = retryable,
    attempts: int = 3,
    timeout: float | timedelta | None = None,
    wait_initial: float | timedelta = 0.1,
    wait_max: float | timedelta = 5.0,
    wait_exp_base: float = 2.0,
    jitter: Jitter = "full",
    budget: RetryBudget | None = RetryBudget(),
    name: str | None = None,
    telemetry: Telemetry | bool = True,
) -> Retrying:
    """Re-run a failing call: ``@retry(on=LLMError, attempts=3)``.

    The wait before retry ``n`` is ``uniform(0, min(wait_max, wait_initial * wait_exp_base **
    (n - 1)))`` (full jitter; ``jitter="none"`` waits the ceiling). No wait ever reaches past the
    deadline: ``timeout`` (seconds for all attempts) or the deadline of the request being served
    (:func:`~asgi_resilience.remaining_time`), whichever is sooner; when the next wait would, the
    last error is raised at once.

    Args:
        on: what to retry: an exception class, a tuple of them, or a predicate ``(exc) -> bool``
            that may return seconds (a float or timedelta) to wait instead of the backoff. By
            default, an asgi-resilience error whose ``retryable`` is true, waiting its
            ``retry_after`` when it has one (an open breaker, a full bulkhead). Cancellation,
            ``KeyboardInterrupt`` and other non-``Exception`` errors are never retried.
        attempts: attempts including the first.
        timeout: seconds for the whole call, waits included (None: only the request's deadline).
        wait_initial, wait_max, wait_exp_base, jitter: the backoff (stamina's names).
        budget: a :class:`RetryBudget` shared by every call of this ``name``: retries stay a
            bounded fraction of calls, so a failing dependency is not hit ``attempts`` times
            harder. None: no budget.
        name: the policy's name in telemetry and configuration (``configure_policies``).
        telemetry: see :mod:`asgi_resilience.observability`.

    Testing mode (:func:`asgi_resilience.testing.set_testing`) skips the waits and can cap the
    attempts.
    """
    options: dict[str, Any] = {
        "on": on,
        "attempts": attempts,
        "timeout": timeout,
        "wait_initial": wait_initial,
        "wait_max": wait_max,
        "wait_exp_base": wait_exp_base,
        "jitter": jitter,
        "budget": budget,
    }
    if name is not None:
        options = configured("retry", name, options)
        mark_created("retry", name)
    try:
        return Retrying(**options, name=name, telemetry=telemetry)
    except TypeError as exc:
        raise ConfigurationError(f"retry {name!r}: {exc}") from None
