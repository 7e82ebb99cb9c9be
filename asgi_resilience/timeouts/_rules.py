"""Per-path rules, durations and the ``@timeout`` endpoint decorator (no I/O)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar

from asgi_resilience._durations import seconds
from asgi_resilience._paths import path_regex
from asgi_resilience._routing import mark_endpoint

__all__ = ["PathRules", "TimeoutMark", "seconds", "timeout"]

T = TypeVar("T")
V = TypeVar("V")


class PathRules(Generic[V]):
    """Path patterns (the package's one pattern language, see :mod:`asgi_resilience._paths`) mapped to values.

    An exact path (no ``*``) wins over patterns; otherwise the first matching pattern in the order
    given. Lookups are cached per path (bounded).
    """

    __slots__ = ("_cache", "_exact", "_patterns")

    def __init__(self, rules: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
        self._exact: dict[str, V] = {}
        self._patterns: list[tuple[re.Pattern[str], V]] = []
        for pattern, value in items:
            compiled = path_regex(pattern)
            if "*" in pattern:
                self._patterns.append((compiled, value))
            else:
                self._exact[pattern] = value
        self._cache: dict[str, tuple[bool, V | None]] = {}

    def __bool__(self) -> bool:
        return bool(self._exact or self._patterns)

    def match(self, path: str) -> tuple[bool, V | None]:
        """``(True, value)`` for the rule that applies to ``path``, ``(False, None)`` when none does."""
        found = self._cache.get(path)
        if found is not None:
            return found
        if path in self._exact:
            found = (True, self._exact[path])
        else:
            found = next(((True, value) for regex, value in self._patterns if regex.fullmatch(path)), (False, None))
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[path] = found
        return found


@dataclass(frozen=True, slots=True)
class TimeoutMark:
    """What ``@timeout`` records on an endpoint: its limit in seconds, or None (exempt)."""

    seconds: float | None


def timeout(seconds_: float | timedelta | None, /) -> Callable[[T], T]:
    """Give one endpoint its own limit for :class:`TimeoutMiddleware`; ``None`` exempts it.

    The endpoint is returned unchanged (decorator order does not matter)::

        @app.get("/report")
        @timeout(60.0)
        async def report(): ...
    """
    limit = None if seconds_ is None else seconds(seconds_, "timeout")

    def decorate(endpoint: T) -> T:
        return mark_endpoint(endpoint, "timeout", TimeoutMark(limit))

    return decorate
