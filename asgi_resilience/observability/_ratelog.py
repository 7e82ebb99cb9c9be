"""Log repeated, expected events at most once per interval per cause, with a count.

Our own rejections (429, 503 overloaded or circuit open, 504, a refused retry) are the stack doing
its job: they are counted in telemetry, and a storm of them must not flood the logs (a 10 s origin
outage used to log one line per request). :class:`RateLimitedLog` writes the first event of a cause
at once, drops the repeats for ``interval`` seconds, and the next line of that cause says how many
were dropped. Unexpected exceptions are not logged through it: each keeps its own record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """A logger wrapper that writes each cause at most once per ``interval`` seconds.

    Args:
        logger: where the lines go.
        interval: seconds between two lines of the same cause (default 10).
        clock: monotonic seconds; tests pass a ManualClock.
        max_causes: causes remembered at once; past that the memory is cleared (a flood of distinct
            causes then logs once per cause again rather than growing without bound).
    """

    __slots__ = ("_clock", "_lock", "_seen", "interval", "logger", "max_causes")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_causes: int = 1024,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_causes = max_causes
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[Hashable, list[float]] = {}  # cause -> [last line at, events dropped since]

    def log(
        self, level: int, cause: Hashable, msg: str, *args: object, exc_info: BaseException | bool | None = None
    ) -> bool:
        """Log ``msg % args`` unless ``cause`` was logged within the interval; True if a line was written.

        A line written after some were dropped ends with ``(N more like this in the last S s)``.
        """
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        with self._lock:
            seen = self._seen.get(cause)
            if seen is not None and now - seen[0] < self.interval:
                seen[1] += 1
                return False
            dropped = 0 if seen is None else int(seen[1])
            since = 0.0 if seen is None else now - seen[0]
            if seen is None and len(self._seen) >= self.max_causes:
                self._seen.clear()
            self._seen[cause] = [now, 0]
        if dropped:
            msg += " (%d more like this in the last %.0f s)"
            args = (*args, dropped, since)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True
