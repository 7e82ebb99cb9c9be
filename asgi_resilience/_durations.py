"""The one duration validator: seconds or ``timedelta``, checked once at construction.

Every layer's duration option (timeouts, cooldowns, TTLs, retry waits) goes through :func:`seconds`,
so they all accept the same shapes and fail with the same kind of message.
"""

from __future__ import annotations

import math
from datetime import timedelta

from asgi_resilience.errors import ConfigurationError

__all__ = ["seconds"]


def seconds(
    value: float | timedelta,
    name: str,
    *,
    allow_zero: bool = False,
    maximum: float | None = None,
) -> float:
    """``value`` as a finite float of seconds, else :class:`ConfigurationError` naming ``name``.

    Accepts an ``int``, a ``float`` or a :class:`~datetime.timedelta`; refuses ``bool``, strings,
    NaN and infinities, negative values, zero unless ``allow_zero``, and values above ``maximum``.
    """
    kind = "a non-negative" if allow_zero else "a positive"
    most = "" if maximum is None else f" (at most {maximum:g})"
    result = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(result, bool) or not isinstance(result, (int, float)) or not math.isfinite(result):
        raise ConfigurationError(f"{name} must be {kind} number of seconds{most} or a timedelta, got {value!r}")
    result = float(result)
    if result < 0 or (result == 0 and not allow_zero) or (maximum is not None and result > maximum):
        raise ConfigurationError(f"{name} must be {kind} number of seconds{most}, got {value!r}")
    return result
