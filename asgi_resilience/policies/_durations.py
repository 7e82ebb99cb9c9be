"""Durations given as seconds or ``timedelta``, validated once at construction."""

from __future__ import annotations

import math
from datetime import timedelta

from asgi_resilience.errors import ConfigurationError

__all__ = ["seconds"]


def seconds(value: float | timedelta, name: str, *, allow_zero: bool = True) -> float:
    """``value`` as a finite float of seconds (``>= 0``, or ``> 0`` without ``allow_zero``)."""
    result = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(result, bool) or not isinstance(result, (int, float)) or not math.isfinite(result):
        raise ConfigurationError(f"{name} must be a finite number of seconds (or a timedelta), got {value!r}")
    if result < 0 or (not allow_zero and result == 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {bound} seconds, got {value!r}")
    return float(result)
