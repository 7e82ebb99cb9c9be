"""Deadline header parsing, path rules and durations (sans-io)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from asgi_resilience import ConfigurationError
from asgi_resilience.timeouts import client_timeout, parse_grpc_timeout, parse_timeout_ms
from asgi_resilience.timeouts._rules import PathRules, seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"250m", 0.25),
        (b"99999999u", 99.999999),
        (b" 5S ", 5.0),
        (b"1s", None),
        (b"0m", None),
        (b"123456789m", None),
        (b"m", None),
        (b"", None),
        (b"1.5S", None),
    ],
)
def test_parse_grpc_timeout(value: bytes, expected: float | None) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(expected) if expected else parse_grpc_timeout(value) is None


def test_parse_timeout_ms_and_smallest_wins() -> None:
    assert parse_timeout_ms(b"1500") == 1.5
    assert parse_timeout_ms(b"0") is None
    assert parse_timeout_ms(b"+15") is None
    headers = [(b"x-request-timeout", b"900"), (b"grpc-timeout", b"2S"), (b"connect-timeout-ms", b"bad")]
    names = frozenset({b"x-request-timeout", b"grpc-timeout", b"connect-timeout-ms"})
    assert client_timeout(headers, names) == 0.9
    assert client_timeout(headers, frozenset({b"grpc-timeout"})) == 2.0
    assert client_timeout([], names) is None


def test_path_rules_exact_first_then_patterns_in_order_and_cache() -> None:
    rules: PathRules[int] = PathRules({"/a/*": 1, "/a/b/*": 2, "/a/b/c": 3, "/x.y": 4})
    assert rules.match("/a/b/c") == (True, 3)
    assert rules.match("/a/b/d") == (True, 1)  # first matching pattern wins
    assert rules.match("/xzy") == (False, None)  # '.' is literal
    assert rules.match("/x.y") == (True, 4)
    assert rules.match("/a/b/d") == (True, 1)  # cached
    assert not PathRules({})


def test_seconds() -> None:
    assert seconds(timedelta(milliseconds=1500), "t") == 1.5
    assert seconds(0, "t", allow_zero=True) == 0.0
    for bad in (0, -1, float("inf"), True, "1"):
        with pytest.raises(ConfigurationError):
            seconds(bad, "t")  # type: ignore[arg-type]
