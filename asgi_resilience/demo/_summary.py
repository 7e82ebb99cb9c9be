"""The demo's log: one summary line per interval instead of one line per refused or retried request.

Refusals are the stack doing its job, and they are counted: the demo turns those counts into one line
every ``interval`` seconds (nothing when nothing happened) and drops the per-request log records of
the same events, so a ``/hello`` loop or an open breaker does not flood the terminal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from asgi_resilience import Telemetry

__all__ = ["PerRequestFilter", "Summary", "configure_logging", "log_summaries"]

logger = logging.getLogger("asgi_resilience.demo")

Key = tuple[str, tuple[tuple[str, str], ...]]

# log records that repeat once per request; the summary counts them instead
_PER_REQUEST = {
    "asgi_resilience.errors": ("%s mapped to %d while serving %s",),
    "asgi_resilience.client": ("retrying %s %s%s after attempt %d (%s) in %.3f s", "giving up on %s %s%s after"),
}


class PerRequestFilter(logging.Filter):
    """Drops the per-request records the summary replaces (mapped rejections, retries, give-ups)."""

    def filter(self, record: logging.LogRecord) -> bool:
        prefixes = _PER_REQUEST.get(record.name)
        return not (prefixes and isinstance(record.msg, str) and record.msg.startswith(prefixes))


class Summary:
    """Counts since the previous :meth:`line`, from the telemetry's totals."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._sample: Callable[[], dict[Key, Any]] = telemetry.sample
        self._last = self._sample()

    def _delta(self, now: dict[Key, Any], name: str, **match: str) -> float:
        total = 0.0
        for (metric, attributes), value in now.items():
            if metric != name or any(dict(attributes).get(k) != v for k, v in match.items()):
                continue
            before = self._last.get((metric, attributes), 0)
            total += value - before
        return total

    def line(self) -> str | None:
        """What happened since the last call, as one line; None when nothing did."""
        now = self._sample()
        m = "asgi_resilience."
        counts = [
            ("allowed", self._delta(now, m + "rate_limit.requests", result="allowed")),
            ("rate-limited (429)", self._delta(now, m + "rate_limit.requests", result="limited")),
            ("cache hits", self._delta(now, m + "cache.requests", result="hit")),
            ("cache misses", self._delta(now, m + "cache.requests", result="miss")),
            ("timed out (504)", self._delta(now, m + "timeouts")),
            ("shed (503)", self._delta(now, m + "concurrency.rejected")),
            ("upstream attempts", self._delta(now, m + "client.attempts")),
            ("retries", self._delta(now, m + "client.retries")),
        ]
        parts = [f"{int(n)} {label}" for label, n in counts if n > 0]
        errors: dict[str, float] = {}
        for (metric, attributes), _ in now.items():
            if metric == m + "exceptions":
                error = dict(attributes).get("error.type", "?")
                errors[error] = errors.get(error, 0) + self._delta(now, metric, **dict(attributes))
        mapped = ", ".join(f"{int(n)} {name}" for name, n in sorted(errors.items()) if n > 0)
        if mapped:
            parts.append(f"mapped to problem responses: {mapped}")
        self._last = now
        return "; ".join(parts) if parts else None


def configure_logging() -> None:
    """Timestamped lines on stderr: warnings, the demo's summaries, no per-request records."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(PerRequestFilter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logger.setLevel(logging.INFO)


async def log_summaries(telemetry: Telemetry, interval: float) -> None:
    """Log :meth:`Summary.line` every ``interval`` seconds until cancelled."""
    summary = Summary(telemetry)
    while True:
        await asyncio.sleep(interval)
        line = summary.line()
        if line is not None:
            logger.info("last %g s: %s", interval, line)
