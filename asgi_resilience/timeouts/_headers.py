"""Inbound deadline headers (sans-io): what a caller says it will wait, in seconds.

Formats read (the smallest valid value wins; malformed values are ignored, never an error):

* ``grpc-timeout`` (gRPC over HTTP/2): 1 to 8 digits and a case-sensitive unit, ``H`` hours,
  ``M`` minutes, ``S`` seconds, ``m`` milliseconds, ``u`` microseconds, ``n`` nanoseconds.
* ``connect-timeout-ms`` (Connect protocol): a positive integer of milliseconds, at most 10 digits.
* ``x-request-timeout``: the same, in milliseconds.

The middleware honours them only from trusted peers and only to *shorten* its own limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["DEADLINE_HEADERS", "client_timeout", "parse_grpc_timeout", "parse_timeout_ms"]

DEADLINE_HEADERS: tuple[str, ...] = ("grpc-timeout", "connect-timeout-ms", "x-request-timeout")

_GRPC_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def parse_grpc_timeout(value: bytes) -> float | None:
    """Seconds from a ``grpc-timeout`` value (``b"250m"`` -> 0.25), or None when malformed or zero."""
    value = value.strip()
    if not 2 <= len(value) <= 9:
        return None
    digits, unit = value[:-1], _GRPC_UNITS.get(value[-1])
    if unit is None or not digits.isdigit() or not digits.isascii():
        return None
    amount = int(digits)
    return amount * unit if amount > 0 else None


def parse_timeout_ms(value: bytes) -> float | None:
    """Seconds from a positive integer of milliseconds (``b"1500"`` -> 1.5), or None when malformed."""
    value = value.strip()
    if not 1 <= len(value) <= 10 or not value.isdigit() or not value.isascii():
        return None
    amount = int(value)
    return amount / 1000.0 if amount > 0 else None


_PARSERS = {
    b"grpc-timeout": parse_grpc_timeout,
    b"connect-timeout-ms": parse_timeout_ms,
    b"x-request-timeout": parse_timeout_ms,
}


def client_timeout(headers: Iterable[tuple[bytes, bytes]], names: Sequence[bytes] | frozenset[bytes]) -> float | None:
    """The smallest valid timeout among the request headers called ``names`` (lower-case), or None."""
    found: float | None = None
    for key, value in headers:
        if key in names:
            seconds = _PARSERS[key](value)
            if seconds is not None and (found is None or seconds < found):
                found = seconds
    return found
