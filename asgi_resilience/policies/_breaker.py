"""Sans-io circuit breaker: policy, state machine and the per-origin registry.

The state machine takes ``now`` from its caller and never performs I/O. Its lock guards O(1)
critical sections only (an admission check, recording one result), so concurrent calls through a
closed breaker run fully in parallel: the lock is never held while a request is in flight (the
pybreaker regression, danielfm/pybreaker#3).

States and transitions (resilience4j ``CircuitBreakerStateMachine``, Polly v8 circuit breaker):

* ``closed``: calls pass; results fill a sliding window (time buckets or the last N calls). Once
  the window holds ``minimum_calls`` results and the failure rate (or slow-call rate) reaches its
  threshold, or ``consecutive_failures`` failures arrive in a row, the breaker opens.
* ``open``: calls are refused without touching the network, with ``retry_after`` = time left.
  After the break duration the next caller moves it to half-open. Each re-open doubles the break
  duration up to ``max_break_duration``; closing resets it.
* ``half_open``: exactly ``half_open_probes`` callers are admitted at once, whatever the
  concurrency; every other caller is refused. All probes succeeding closes the breaker, one
  failure re-opens it. A probe that reports nothing within ``probe_timeout`` counts as failed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any, NamedTuple

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.policies._durations import seconds as _seconds

__all__ = ["Admission", "BreakerPolicy", "BreakerRegistry", "BreakerTransition", "CircuitBreaker", "Result", "State"]

_BUCKETS = 10
_HISTORY = 10


class State(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Result(Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"
    """Not the origin's fault (4xx is a success; cancellation, pool timeout, our own rejection)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerPolicy:
    """When a per-origin circuit breaker opens, how long it stays open and how it probes.

    Args:
        window: the sliding window: a float (or timedelta) is a time window in seconds, an int is
            a count of the most recent calls.
        minimum_calls: results the window must hold before a rate can open the breaker.
        failure_rate: the failure fraction (0..1] that opens the breaker.
        slow_call_duration: calls at least this long (seconds) are slow; None disables. A call lasts
            until its response headers arrive (or its error).
        slow_call_rate: the slow fraction (0..1] that opens the breaker.
        consecutive_failures: open after this many failures in a row whatever the rate (a mode
            for low-traffic origins); None disables.
        break_duration: seconds the breaker stays open the first time.
        max_break_duration: the cap of the doubling break duration.
        half_open_probes: callers admitted at once while half-open.
        probe_timeout: seconds after which a silent probe counts as failed (re-opens).
        failure_statuses: response statuses that count as failures (5xx by default).

    .. versionadded:: 0.1.0
    """

    window: float | int | timedelta = 30.0
    minimum_calls: int = 20
    failure_rate: float = 0.5
    slow_call_duration: float | timedelta | None = None
    slow_call_rate: float = 1.0
    consecutive_failures: int | None = None
    break_duration: float | timedelta = 5.0
    max_break_duration: float | timedelta = 60.0
    half_open_probes: int = 1
    probe_timeout: float | timedelta = 30.0
    failure_statuses: Collection[int] = frozenset(range(500, 600))

    def __post_init__(self) -> None:
        window = self.window
        if isinstance(window, int) and not isinstance(window, bool):
            if window < 1:
                raise ConfigurationError(f"BreakerPolicy window as a call count must be >= 1, got {window!r}")
        else:
            object.__setattr__(self, "window", _seconds(window, "BreakerPolicy window", allow_zero=False))
        for name in ("minimum_calls", "half_open_probes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"BreakerPolicy {name} must be an int >= 1, got {value!r}")
        if isinstance(self.window, int) and self.window < self.minimum_calls:
            raise ConfigurationError(
                f"BreakerPolicy window={self.window} is a count of calls and can never hold "
                f"minimum_calls={self.minimum_calls}: pass window={float(self.window)} for seconds, "
                "or lower minimum_calls"
            )
        if self.consecutive_failures is not None and (
            isinstance(self.consecutive_failures, bool)
            or not isinstance(self.consecutive_failures, int)
            or self.consecutive_failures < 1
        ):
            raise ConfigurationError(
                f"BreakerPolicy consecutive_failures must be an int >= 1 or None, got {self.consecutive_failures!r}"
            )
        for name in ("failure_rate", "slow_call_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ConfigurationError(f"BreakerPolicy {name} must be a fraction in (0, 1], got {value!r}")
        if self.slow_call_duration is not None:
            object.__setattr__(
                self,
                "slow_call_duration",
                _seconds(self.slow_call_duration, "BreakerPolicy slow_call_duration", allow_zero=False),
            )
        for name in ("break_duration", "max_break_duration", "probe_timeout"):
            object.__setattr__(self, name, _seconds(getattr(self, name), f"BreakerPolicy {name}", allow_zero=False))
        if self.max_break_duration < self.break_duration:  # type: ignore[operator]
            raise ConfigurationError(
                f"BreakerPolicy max_break_duration ({self.max_break_duration}) must be >= break_duration "
                f"({self.break_duration})"
            )
        try:
            statuses = frozenset(int(s) for s in self.failure_statuses)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"BreakerPolicy failure_statuses must be HTTP status codes, got {self.failure_statuses!r}"
            ) from None
        object.__setattr__(self, "failure_statuses", statuses)

    @property
    def time_based(self) -> bool:
        return isinstance(self.window, float)

    def classify_status(self, status: int) -> Result:
        return Result.FAILURE if status in self.failure_statuses else Result.SUCCESS


class Admission(NamedTuple):
    """The answer to "may I call?": a permit (``allowed``) or a refusal with ``retry_after``."""

    allowed: bool
    state: State
    retry_after: float = 0.0
    probe: int = 0
    """Non-zero for a half-open probe: the generation to hand back to :meth:`CircuitBreaker.record`."""
    transitions: tuple[BreakerTransition, ...] = ()


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """A state change of the breaker of ``origin``, passed to ``on_transition`` hooks."""

    origin: str
    from_state: State
    to_state: State
    at: float
    reason: str


_CLOSED = Admission(True, State.CLOSED)


class _Window:
    """Failure and slow counts over the last N calls or the last T seconds (bucketed), with running
    totals so that recording a call is O(1)."""

    __slots__ = ("_buckets", "_calls", "_size", "_span", "calls", "consecutive", "failures", "slow")

    def __init__(self, window: float | int) -> None:
        self._calls: deque[tuple[bool, bool]] = deque()
        self._buckets: deque[list[float]] = deque()  # [start, calls, failures, slow]
        self._size = window if isinstance(window, int) else 0
        self._span = float(window) / _BUCKETS if isinstance(window, float) else 0.0
        self.consecutive = 0
        self.calls = self.failures = self.slow = 0

    def add(self, now: float, failed: bool, slow: bool) -> None:
        self.consecutive = self.consecutive + 1 if failed else 0
        self.calls += 1
        self.failures += failed
        self.slow += slow
        if self._size:
            self._calls.append((failed, slow))
            if len(self._calls) > self._size:
                old_failed, old_slow = self._calls.popleft()
                self.calls -= 1
                self.failures -= old_failed
                self.slow -= old_slow
            return
        self._expire(now)
        start = now - (now % self._span)
        if not self._buckets or self._buckets[-1][0] != start:
            self._buckets.append([start, 0, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        bucket[3] += slow

    def _expire(self, now: float) -> None:
        horizon = now - self._span * _BUCKETS
        while self._buckets and self._buckets[0][0] + self._span <= horizon:
            _, calls, failures, slow = self._buckets.popleft()
            self.calls -= int(calls)
            self.failures -= int(failures)
            self.slow -= int(slow)

    def counts(self, now: float) -> tuple[int, int, int]:
        if not self._size:
            self._expire(now)
        return self.calls, self.failures, self.slow

    def reset(self) -> None:
        self._calls.clear()
        self._buckets.clear()
        self.consecutive = 0
        self.calls = self.failures = self.slow = 0


class CircuitBreaker:
    """The breaker of one origin. Thread-safe; every method is O(1) and takes ``now``."""

    def __init__(self, policy: BreakerPolicy, origin: str) -> None:
        self.policy = policy
        self.origin = origin
        self._lock = threading.Lock()
        self.state = State.CLOSED
        self._window = _Window(policy.window)  # type: ignore[arg-type]
        self._open_until = 0.0
        self._opens = 0  # consecutive opens without a close: the break duration doubles with each
        self._generation = 0
        self._probes: dict[int, float] = {}  # probe id -> start time (current generation only)
        self._probe_ids = 0
        self._probe_successes = 0
        self.history: deque[BreakerTransition] = deque(maxlen=_HISTORY)
        self.on_evicted: Callable[[CircuitBreaker], None] | None = None
        """Set by whoever counted this breaker in the state metric, to uncount it on eviction."""

    # -- transitions (lock held) -------------------------------------------------------------
    def _move(self, to: State, now: float, reason: str) -> BreakerTransition:
        transition = BreakerTransition(self.origin, self.state, to, now, reason)
        self.state = to
        self.history.append(transition)
        if to is State.OPEN:
            duration = min(
                float(self.policy.break_duration) * 2.0 ** min(self._opens, 32),  # type: ignore[arg-type]
                float(self.policy.max_break_duration),  # type: ignore[arg-type]
            )
            self._opens += 1
            self._open_until = now + duration
            self._generation += 1
            self._probes.clear()
        elif to is State.HALF_OPEN:
            self._generation += 1
            self._probes.clear()
            self._probe_successes = 0
        else:
            self._opens = 0
            self._window.reset()
            self._generation += 1
            self._probes.clear()
        return transition

    def _open_for(self, now: float, seconds: float, reason: str) -> BreakerTransition | None:
        """Open (or extend the open state) until ``now + seconds``; used by shared state."""
        if self.state is State.OPEN:
            self._open_until = max(self._open_until, now + seconds)
            return None
        transition = self._move(State.OPEN, now, reason)
        self._open_until = now + seconds
        return transition

    # -- public operations -------------------------------------------------------------------
    def admit(self, now: float) -> Admission:
        """May a call go out now? A half-open permit must be handed back to :meth:`record`."""
        state = self.state
        if state is State.CLOSED:
            return _CLOSED  # nothing to decide or to remember: no lock on the hot path
        if state is State.OPEN:
            until = self._open_until
            if now < until:  # a refusal changes nothing either: no lock while open
                return Admission(False, State.OPEN, until - now)
        with self._lock:
            transitions: list[BreakerTransition] = []
            if self.state is State.OPEN:
                if now < self._open_until:
                    return Admission(False, State.OPEN, retry_after=self._open_until - now)
                transitions.append(self._move(State.HALF_OPEN, now, "break_elapsed"))
            if self.state is State.HALF_OPEN:
                timeout = float(self.policy.probe_timeout)  # type: ignore[arg-type]
                if self._probes and now - min(self._probes.values()) >= timeout:
                    transitions.append(self._move(State.OPEN, now, "probe_timeout"))
                    return Admission(
                        False, State.OPEN, retry_after=self._open_until - now, transitions=tuple(transitions)
                    )
                if len(self._probes) >= self.policy.half_open_probes:
                    oldest = min(self._probes.values())
                    return Admission(
                        False,
                        State.HALF_OPEN,
                        retry_after=max(0.0, oldest + timeout - now),
                        transitions=tuple(transitions),
                    )
                self._probe_ids += 1
                self._probes[self._probe_ids] = now
                return Admission(True, State.HALF_OPEN, probe=self._probe_ids, transitions=tuple(transitions))
            return Admission(True, State.CLOSED, transitions=tuple(transitions))

    def record(
        self, admission: Admission, result: Result, duration: float, now: float
    ) -> tuple[BreakerTransition, ...]:
        """Report the result of an admitted call; returns the transitions it caused."""
        with self._lock:
            if admission.probe:
                if self._probes.pop(admission.probe, None) is None or self.state is not State.HALF_OPEN:
                    return ()  # a late probe from an earlier generation: its verdict is stale
                if result is Result.IGNORED:
                    return ()  # the slot is free again for another probe
                if result is Result.FAILURE or self._is_slow(duration):
                    return (self._move(State.OPEN, now, "probe_failed"),)
                self._probe_successes += 1
                if self._probe_successes >= self.policy.half_open_probes:
                    return (self._move(State.CLOSED, now, "probe_succeeded"),)
                return ()
            if result is Result.IGNORED or self.state is not State.CLOSED:
                return ()
            failed = result is Result.FAILURE
            slow = self._is_slow(duration)
            window = self._window
            window.add(now, failed, slow)
            if not (failed or slow or window.failures or window.slow):
                return ()  # no failure and no slow call in the window: no rate can be reached
            reason = self._should_open(now)
            if reason is not None:
                return (self._move(State.OPEN, now, reason),)
            return ()

    def _is_slow(self, duration: float) -> bool:
        threshold = self.policy.slow_call_duration
        return threshold is not None and duration >= threshold  # type: ignore[operator]

    def _should_open(self, now: float) -> str | None:
        policy = self.policy
        if policy.consecutive_failures is not None and self._window.consecutive >= policy.consecutive_failures:
            return "consecutive_failures"
        calls, failures, slow = self._window.counts(now)
        if calls < policy.minimum_calls:
            return None
        if failures / calls >= policy.failure_rate:
            return "failure_rate"
        if policy.slow_call_duration is not None and slow / calls >= policy.slow_call_rate:
            return "slow_call_rate"
        return None

    def force_open(self, now: float, seconds: float, reason: str) -> BreakerTransition | None:
        """Open now for ``seconds`` (another process opened the shared breaker)."""
        with self._lock:
            return self._open_for(now, seconds, reason)

    def open_remaining(self, now: float) -> float:
        """Seconds the breaker stays open (0 unless open)."""
        with self._lock:
            return max(0.0, self._open_until - now) if self.state is State.OPEN else 0.0

    def snapshot(self, now: float) -> dict[str, Any]:
        with self._lock:
            calls, failures, slow = self._window.counts(now)
            return {
                "origin": self.origin,
                "state": self.state.value,
                "calls": calls,
                "failure_rate": round(failures / calls, 4) if calls else 0.0,
                "slow_call_rate": round(slow / calls, 4) if calls else 0.0,
                "open_for": round(max(0.0, self._open_until - now), 3) if self.state is State.OPEN else 0.0,
                "probes_in_flight": len(self._probes),
                "recent_transitions": [
                    {
                        "from": t.from_state.value,
                        "to": t.to_state.value,
                        "reason": t.reason,
                        "ago": round(now - t.at, 3),
                    }
                    for t in self.history
                ],
            }


class BreakerRegistry:
    """Breakers per (policy, origin), bounded: dynamic hosts cannot grow it without limit.

    When full, the least recently used *closed* breaker is evicted first; an open or half-open
    breaker is only evicted when every breaker is, so 1,024 healthy origins cannot make the
    process forget that a failing one is open. ``on_evict`` hears of each eviction (the state
    metric is decremented there). An evicted breaker that is still referenced keeps working:
    transports memoise their lookups (for speed), so a transport keeps the breaker it found while
    a new one starts fresh.
    """

    def __init__(self, max_size: int = 1024, *, on_evict: Callable[[CircuitBreaker], None] | None = None) -> None:
        if max_size < 1:
            raise ConfigurationError(f"BreakerRegistry max_size must be >= 1, got {max_size!r}")
        self.max_size = max_size
        self.on_evict = on_evict
        self._lock = threading.Lock()
        self._breakers: OrderedDict[Hashable, CircuitBreaker] = OrderedDict()

    def get(self, policy: BreakerPolicy, origin: str) -> tuple[CircuitBreaker, bool]:
        """The breaker for ``origin`` under ``policy`` and whether it was just created."""
        key = (policy, origin)
        evicted: list[CircuitBreaker] = []
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is not None:
                self._breakers.move_to_end(key)
                return breaker, False
            breaker = self._breakers[key] = CircuitBreaker(policy, origin)
            while len(self._breakers) > self.max_size:
                evicted.append(self._evict_one(key))
        if self.on_evict is not None:
            for old in evicted:
                self.on_evict(old)
        return breaker, True

    def _evict_one(self, keep: Hashable) -> CircuitBreaker:
        for key, candidate in self._breakers.items():  # oldest first; never the one just added
            if candidate.state is State.CLOSED and key != keep:
                del self._breakers[key]
                return candidate
        return self._breakers.popitem(last=False)[1]

    def breakers(self) -> list[CircuitBreaker]:
        with self._lock:
            return list(self._breakers.values())

    def clear(self) -> None:
        with self._lock:
            self._breakers.clear()
