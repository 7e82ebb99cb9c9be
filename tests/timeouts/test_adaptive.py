"""The adaptive limit controller (sans-io): deterministic, driven by explicit ``now`` values."""

from __future__ import annotations

from typing import Any

import pytest

from asgi_resilience import ConfigurationError
from asgi_resilience.timeouts import AdaptiveLimit


def feed(limit: AdaptiveLimit, rtt: float, now: float, *, dropped: bool = False) -> float:
    """Exactly one window: ``min_samples`` samples (the limits below use window=0, min_samples=5)."""
    for _ in range(limit.min_samples):
        limit.sample(rtt, now, dropped=dropped)
        now += 0.1
    return now


def test_nothing_changes_inside_a_window_or_below_min_samples() -> None:
    limit = AdaptiveLimit(min_limit=1, max_limit=50, initial=20, window=1.0, min_samples=5)
    for i in range(20):
        assert limit.sample(0.01, i * 0.01) == 20  # 0.2 s elapsed: still one window
    limit = AdaptiveLimit(min_limit=1, max_limit=50, initial=20, window=0.0, min_samples=5)
    for _ in range(4):
        assert limit.sample(0.5, 10.0) == 20  # only 4 samples


def test_gradient_shrinks_under_rising_latency_and_recovers() -> None:
    limit = AdaptiveLimit(min_limit=2, max_limit=64, initial=32, window=0.0, min_samples=5)
    now = feed(limit, 0.010, 0.0)
    assert limit.min_rtt == 0.010
    assert limit.limit > 32  # at the baseline the limit probes upwards
    grown = limit.limit
    now = feed(limit, 0.040, now)  # 4x the baseline: gradient clamps at 0.5
    assert limit.limit == int(0.5 * grown + grown**0.5)
    for _ in range(10):
        now = feed(limit, 0.040, now)
    assert limit.limit <= 5
    assert limit.min_rtt == 0.010  # the baseline is the minimum ever seen
    for _ in range(10):
        now = feed(limit, 0.010, now)
    assert limit.limit == 64


def test_gradient_with_mild_latency_inside_the_tolerance_still_grows() -> None:
    limit = AdaptiveLimit(min_limit=1, max_limit=1000, initial=100, window=0.0, min_samples=5, tolerance=0.5)
    now = feed(limit, 0.010, 0.0)
    before = limit.limit
    feed(limit, 0.012, now)  # +20 %: within 50 % tolerance
    assert limit.limit > before


def test_aimd_backs_off_multiplicatively_and_grows_by_one() -> None:
    limit = AdaptiveLimit(min_limit=1, max_limit=100, initial=50, algorithm="aimd", window=0.0, min_samples=5)
    now = feed(limit, 0.01, 0.0)
    assert limit.limit == 51
    now = feed(limit, 0.05, now)
    assert limit.limit == int(51 * 0.9)
    limit.sample(0.01, now, dropped=True)  # a drop alone means overload (one update per window)
    assert limit.limit == int(int(51 * 0.9) * 0.9)
    feed(limit, 0.01, now)
    assert limit.limit == int(int(51 * 0.9) * 0.9) + 1


def test_drops_before_any_latency_back_off_and_gradient_caps_on_drop() -> None:
    limit = AdaptiveLimit(min_limit=1, max_limit=100, window=0.0, min_samples=5)
    limit.sample(0.0, 0.0, dropped=True)
    assert limit.limit == 90
    now = feed(limit, 0.01, 1.0)
    before = limit.limit
    limit.sample(0.01, now, dropped=True)
    assert limit.limit == int(before * 0.9)


def test_zero_latency_and_bad_samples() -> None:
    limit = AdaptiveLimit(min_limit=1, max_limit=10, initial=4, window=0.0, min_samples=1)
    assert limit.sample(0.0, 0.0) == min(10, int(2.0 * 4 + 2))
    assert limit.sample(float("nan"), 1.0) == limit.limit  # ignored


@pytest.mark.parametrize(
    "options",
    [
        {"min_limit": 0, "max_limit": 1},
        {"min_limit": 5, "max_limit": 4},
        {"min_limit": 1, "max_limit": 2, "algorithm": "vegas"},
        {"min_limit": 1, "max_limit": 2, "window": -1},
        {"min_limit": 1, "max_limit": 2, "min_samples": 0},
        {"min_limit": 1, "max_limit": 2, "tolerance": -0.1},
        {"min_limit": 1, "max_limit": 2, "backoff": 1.0},
        {"min_limit": 1, "max_limit": 2, "percentile": 0},
    ],
)
def test_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        AdaptiveLimit(**options)
