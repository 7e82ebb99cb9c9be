"""A short server-side history of every instrument, for the dashboard's charts and first paint.

A daemon thread samples :meth:`Telemetry.sample` every ``interval`` seconds into a ring (a few
minutes long), so the first snapshot a browser gets already carries rates, latency percentiles and
the series its charts draw; the page never waits for a second sample to show a rate. The thread only
reads instrument totals under their locks (never a component's live state), holds the history weakly
and stops with :meth:`History.close` or when the history is garbage-collected.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from asgi_resilience.observability._telemetry import LATENCY_BOUNDS

__all__ = ["History", "quantile"]

Key = tuple[str, tuple[tuple[str, str], ...]]
Sample = dict[Key, Any]

MAX_SAMPLES = 600
"""The ring never holds more samples than this, whatever the interval."""
RECENT_SECONDS = 30.0
"""Percentiles shown next to a chart are over this trailing window."""
_FIELDS = {"counter": ("rate",), "histogram": ("rate", "p50", "p99")}


def quantile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile of bucketed observations (linear within a bucket), or None without any."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            upper = LATENCY_BOUNDS[min(i, len(LATENCY_BOUNDS) - 1)]
            lower = LATENCY_BOUNDS[i - 1] if 0 < i <= len(LATENCY_BOUNDS) else 0.0
            if i >= len(LATENCY_BOUNDS):  # above the last bound: the best we can say is "at least"
                return upper
            return lower + (upper - lower) * max(0.0, min(1.0, (rank - seen) / n))
        seen += n
    return LATENCY_BOUNDS[-1]  # pragma: no cover - rank <= total always lands in a bucket


def _minus(now: list[int], before: list[int] | None) -> list[int]:
    if before is None:
        return list(now)
    return [max(0, a - b) for a, b in zip(now, before, strict=True)]


class History:
    """A ring of instrument samples, ``interval`` seconds apart, covering about ``seconds`` seconds."""

    def __init__(
        self,
        sample: Callable[[], Sample],
        kinds: Callable[[str], str],
        *,
        interval: float,
        seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sample = sample
        self._kinds = kinds
        self.interval = interval
        size = max(3, min(MAX_SAMPLES, math.ceil(seconds / interval) + 1))
        self._ring: deque[tuple[float, Sample]] = deque(maxlen=size)
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.take()

    def start(self) -> None:
        """Sample every ``interval`` seconds in a daemon thread until :meth:`close` (or garbage collection)."""
        thread = threading.Thread(
            target=_run,
            args=(weakref.ref(self), self._stop, self.interval),
            name="asgi-resilience-history",
            daemon=True,
        )
        thread.start()

    def close(self) -> None:
        self._stop.set()

    def take(self) -> None:
        """Add one sample now."""
        values = self._sample()
        now = self._clock()
        with self._lock:
            if self._ring and now <= self._ring[-1][0]:
                return
            self._ring.append((now, values))

    def take_if_due(self) -> None:
        """Add a sample unless the last one is less than an interval old (readers call this)."""
        with self._lock:
            last = self._ring[-1][0] if self._ring else -math.inf
        if self._clock() - last >= self.interval * 0.95:
            self.take()

    def series(self, since: float | None = None) -> dict[str, Any]:
        """The series between consecutive samples: rates, values and latency percentiles.

        ``times[i]`` ends the interval ``values[i]`` covers. With ``since``, only intervals that end
        after it (what a stream sends after its first event; ``since`` is echoed so a reader knows
        whether to replace or append). Each entry of ``series`` has ``name``,
        ``attributes``, ``kind`` and, by kind: counters ``rate`` (per second); gauges and up-down
        counters ``value``; histograms ``rate``, ``p50``, ``p99`` (seconds, None for an interval
        without observations) and ``recent`` (``count``, ``p50``, ``p99``, ``mean`` over the last
        :data:`RECENT_SECONDS`).
        """
        with self._lock:
            ring = list(self._ring)
        times: list[float] = []
        columns: dict[Key, dict[str, list[Any]]] = {}
        recent: dict[Key, list[Any]] = {}
        cutoff = ring[-1][0] - RECENT_SECONDS if ring else 0.0
        for index in range(1, len(ring)):
            (t0, before), (t1, now) = ring[index - 1], ring[index]
            if t1 > cutoff:  # the trailing window of every histogram, whatever ``since`` says
                for key, value in now.items():
                    if self._kinds(key[0]) == "histogram":
                        previous = before.get(key)
                        counts = _minus(value[2], previous[2] if previous is not None else None)
                        window = recent.setdefault(key, [0, 0.0, [0] * len(counts)])
                        window[0] += value[0] - (previous[0] if previous is not None else 0)
                        window[1] += value[1] - (previous[1] if previous is not None else 0.0)
                        window[2] = [a + b for a, b in zip(window[2], counts, strict=True)]
            if since is not None and round(t1, 3) <= since:  # ``since`` is a time this method gave out
                continue
            dt = t1 - t0
            column = len(times)
            times.append(round(t1, 3))
            for key, value in now.items():
                kind = self._kinds(key[0])
                entry = columns.get(key)
                if entry is None:
                    fields = _FIELDS.get(kind, ("value",))
                    entry = columns[key] = {name: [_fill(name)] * column for name in fields}
                previous = before.get(key)
                if kind == "counter":
                    entry["rate"].append(round(max(0.0, value - (previous or 0)) / dt, 4))
                elif kind == "histogram":
                    counts = _minus(value[2], previous[2] if previous is not None else None)
                    entry["rate"].append(round(sum(counts) / dt, 4))
                    entry["p50"].append(_round(quantile(counts, 0.5)))
                    entry["p99"].append(_round(quantile(counts, 0.99)))
                else:
                    entry["value"].append(value)
            for entry in columns.values():  # a key not in this sample
                for field, values in entry.items():
                    if len(values) < len(times):
                        values.append(_fill(field))
        out = []
        for (name, attributes), entry in sorted(columns.items()):
            item: dict[str, Any] = {"name": name, "attributes": dict(attributes), "kind": self._kinds(name), **entry}
            if item["kind"] == "histogram":
                count, total, counts = recent.get((name, attributes), (0, 0.0, []))
                item["recent"] = {
                    "count": count,
                    "mean": _round(total / count) if count else None,
                    "p50": _round(quantile(counts, 0.5)),
                    "p99": _round(quantile(counts, 0.99)),
                }
            out.append(item)
        span = round(self.interval * ((self._ring.maxlen or 1) - 1), 1)
        return {"interval": self.interval, "window": span, "since": since, "times": times, "series": out}


def _fill(field: str) -> float | None:
    """What an interval without a key shows: no hits is a rate of 0, a value or percentile is unknown."""
    return 0.0 if field == "rate" else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 7)


def _run(ref: weakref.ref[History], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        history = ref()
        if history is None:
            return
        try:
            history.take()
        except Exception:  # pragma: no cover - sampling reads plain dicts; never kill the thread
            pass
        del history
