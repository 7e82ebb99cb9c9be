"""The adaptive concurrency limit (sans-io): latency in, limit out.

Modelled on Envoy's adaptive concurrency filter and Netflix concurrency-limits. Latency samples
(seconds from admission to the final body message) are grouped in windows of ``window`` seconds
(and at least ``min_samples`` samples). At the end of each window the window's latency is its
``percentile`` (p90 by default) and the minimum window latency seen so far is the baseline.

* ``"gradient"`` (Envoy): ``gradient = clamp(min_rtt * (1 + tolerance) / sample_rtt, 0.5, 2.0)``,
  ``limit = gradient * limit + sqrt(limit)`` (the square root is the headroom that lets the limit
  probe upwards while latency stays near the baseline).
* ``"aimd"``: latency above ``min_rtt * (1 + tolerance)`` (or a dropped request in the window)
  multiplies the limit by ``backoff``; otherwise it grows by one.

In both, a dropped request (the app answered 503/504 or failed with a timeout) counts as overload.
The limit stays within ``[min_limit, max_limit]``. Nothing here reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import math
from typing import Literal

from asgi_resilience.errors import ConfigurationError

__all__ = ["AdaptiveLimit", "Algorithm"]

Algorithm = Literal["gradient", "aimd"]


class AdaptiveLimit:
    """The limit controller. ``sample(rtt, now)`` after each request; read ``limit``."""

    __slots__ = (
        "_dropped",
        "_samples",
        "_window_start",
        "algorithm",
        "backoff",
        "limit",
        "max_limit",
        "min_limit",
        "min_rtt",
        "min_samples",
        "percentile",
        "sample_rtt",
        "tolerance",
        "window",
    )

    def __init__(
        self,
        *,
        min_limit: int,
        max_limit: int,
        initial: int | None = None,
        algorithm: Algorithm = "gradient",
        window: float = 1.0,
        min_samples: int = 10,
        tolerance: float = 0.25,
        backoff: float = 0.9,
        percentile: float = 0.9,
    ) -> None:
        if isinstance(min_limit, bool) or not isinstance(min_limit, int) or min_limit < 1:
            raise ConfigurationError(f"min_concurrent must be an integer >= 1, got {min_limit!r}")
        if isinstance(max_limit, bool) or not isinstance(max_limit, int) or max_limit < min_limit:
            raise ConfigurationError(
                f"max_concurrent ({max_limit!r}) must be an integer >= min_concurrent ({min_limit!r})"
            )
        if algorithm not in ("gradient", "aimd"):
            raise ConfigurationError(f"algorithm must be 'gradient' or 'aimd', got {algorithm!r}")
        if not (math.isfinite(window) and window >= 0):
            raise ConfigurationError(f"window must be a finite number of seconds >= 0, got {window!r}")
        if not (isinstance(min_samples, int) and min_samples >= 1):
            raise ConfigurationError(f"min_samples must be an integer >= 1, got {min_samples!r}")
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ConfigurationError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
        if not 0 < backoff < 1:
            raise ConfigurationError(f"backoff must be between 0 and 1 (exclusive), got {backoff!r}")
        if not 0 < percentile <= 1:
            raise ConfigurationError(f"percentile must be in (0, 1], got {percentile!r}")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.limit = max(min_limit, min(max_limit, initial if initial is not None else max_limit))
        self.algorithm: Algorithm = algorithm
        self.window = window
        self.min_samples = min_samples
        self.tolerance = tolerance
        self.backoff = backoff
        self.percentile = percentile
        self.min_rtt: float | None = None
        self.sample_rtt: float | None = None
        self._samples: list[float] = []
        self._dropped = False
        self._window_start: float | None = None

    def sample(self, rtt: float, now: float, *, dropped: bool = False) -> int:
        """Record one request's latency (seconds) finished at ``now``; returns the (maybe new) limit."""
        if self._window_start is None:
            self._window_start = now
        if dropped:
            self._dropped = True
        elif rtt >= 0 and math.isfinite(rtt):
            self._samples.append(rtt)
        if now - self._window_start >= self.window and (len(self._samples) >= self.min_samples or self._dropped):
            self._update()
            self._window_start = now
        return self.limit

    def _update(self) -> None:
        samples = sorted(self._samples)
        dropped = self._dropped
        self._samples = []
        self._dropped = False
        if samples:
            index = min(len(samples) - 1, max(0, math.ceil(self.percentile * len(samples)) - 1))
            self.sample_rtt = samples[index]
            if self.min_rtt is None or self.sample_rtt < self.min_rtt:
                self.min_rtt = self.sample_rtt
        limit = float(self.limit)
        if self.sample_rtt is None or self.min_rtt is None:
            new = limit * self.backoff  # only drops so far: nothing healthy to compare with
        elif self.algorithm == "gradient":
            if self.sample_rtt <= 0:
                gradient = 2.0
            else:
                gradient = max(0.5, min(2.0, self.min_rtt * (1 + self.tolerance) / self.sample_rtt))
            if dropped:
                gradient = min(gradient, self.backoff)
                new = gradient * limit
            else:
                new = gradient * limit + math.sqrt(limit)
        else:
            overloaded = dropped or self.sample_rtt > self.min_rtt * (1 + self.tolerance)
            new = limit * self.backoff if overloaded else limit + 1
        self.limit = max(self.min_limit, min(self.max_limit, int(new)))
