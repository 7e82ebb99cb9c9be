"""The one storage-outage guard: after a backend failure, skip the backend for a cooldown.

The rate limiter's store, the cache backend and the circuit breaker's shared state all talk to a
backend (usually Redis) that may go away. They share this guard so an outage looks the same in all
three: the failing call costs one timeout; for ``cooldown`` seconds after it the backend is not
called at all (callers use their fallback at once); then one call probes it, and while that probe
is in flight the others keep using the fallback. A success ends the outage; a failure starts another
cooldown. At most one call per cooldown reaches a backend that stays down, and recovery takes at
most one cooldown once it is back.

The guard holds no lock and does no I/O: it is a few numbers read and written by the caller, safe in
one event loop and good enough across threads (a race lets at most one extra probe through).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["OutageGuard"]


class OutageGuard:
    """Whether a backend may be called now, given its recent failures.

    Args:
        cooldown: seconds the backend is skipped after a failure (and the most one probe may hold
            the others back before another call probes).
        clock: monotonic seconds; tests pass a :class:`~asgi_resilience.testing.ManualClock`.

    Use: ``if guard.admit(): try call; guard.succeeded() / except: guard.failed()``, else fall back.
    """

    __slots__ = ("_clock", "_until", "connected", "cooldown", "failures")

    def __init__(self, *, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self._clock = clock
        self._until = 0.0
        self.failures = 0  # consecutive failures of the current outage (0: healthy)
        # a call succeeded since the start or the last failure: the next one need not connect first
        self.connected = False

    def admit(self) -> bool:
        """True if a call may go to the backend now (during an outage: this call is the probe)."""
        if not self.failures:
            return True
        now = self._clock()
        if now < self._until:
            return False
        self._until = now + self.cooldown  # the probe holds the others back for one cooldown at most
        return True

    @property
    def available(self) -> bool:
        """False while the backend is being skipped (cooling down, or a probe is in flight)."""
        return not self.failures or self._clock() >= self._until

    @property
    def remaining(self) -> float:
        """Seconds until the next probe may be made (0 when the backend is not being skipped)."""
        return max(0.0, self._until - self._clock()) if self.failures else 0.0

    def failed(self) -> bool:
        """Record a failed call and start a cooldown; True if it starts an outage (log that one)."""
        self.failures += 1
        self.connected = False
        self._until = self._clock() + self.cooldown
        return self.failures == 1

    def succeeded(self) -> bool:
        """Record a successful call; True if it ends an outage (log that one)."""
        self.connected = True
        if not self.failures:
            return False
        self.failures = 0
        self._until = 0.0
        return True
