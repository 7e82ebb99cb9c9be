"""Injectable clocks.

Every stateful policy object takes ``clock: Clock = time.monotonic`` so that tests can move time by
hand instead of sleeping (the price limits' own tests pay).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "ManualClock", "monotonic"]

Clock = Callable[[], float]
monotonic: Clock = time.monotonic


class ManualClock:
    """A clock that only moves when told to.

    ``clock = ManualClock(); clock.advance(1.5); clock()  # -> 1.5``
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("ManualClock cannot move backwards; pass a positive number of seconds")
        self._now += seconds

    def set(self, now: float) -> None:
        """Jump to the absolute time ``now`` (never backwards)."""
        if now < self._now:
            raise ValueError("ManualClock cannot move backwards")
        self._now = float(now)
