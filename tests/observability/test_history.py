"""The dashboard's server-side history: rates, values and percentiles between samples."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from asgi_resilience import Telemetry
from asgi_resilience.observability._history import MAX_SAMPLES, History, quantile
from asgi_resilience.observability._names import METRICS
from asgi_resilience.observability._telemetry import LATENCY_BOUNDS
from asgi_resilience.testing import ManualClock


def kind(name: str) -> str:
    return METRICS[name].kind


REQUESTS = "asgi_resilience.rate_limit.requests"
DURATION = "asgi_resilience.client.attempt.duration"
ACTIVE = "asgi_resilience.concurrency.active"


def build(telemetry: Telemetry, clock: ManualClock, *, interval: float = 1.0, seconds: float = 60.0) -> History:
    return History(telemetry.sample, kind, interval=interval, seconds=seconds, clock=clock)


def test_counter_rates_gauge_values_and_histogram_percentiles_per_interval() -> None:
    telemetry, clock = Telemetry(), ManualClock(1000.0)
    allowed = telemetry.instrument(REQUESTS)
    allowed.add(5, {"rule": "api", "result": "allowed"})  # before the first sample: not a rate
    history = build(telemetry, clock)
    clock.advance(1.0)
    allowed.add(3, {"rule": "api", "result": "allowed"})
    telemetry.instrument(ACTIVE).add(2, {"partition": "p"})
    for value in (0.010, 0.011, 0.012, 0.500):
        telemetry.instrument(DURATION).record(value, {"origin": "o", "outcome": "success"})
    history.take()
    clock.advance(2.0)
    allowed.add(4, {"result": "allowed", "rule": "api"})  # the same attributes in another order
    history.take()
    data = history.series()
    assert data["times"] == [1001.0, 1003.0] and data["interval"] == 1.0 and data["since"] is None
    by_name = {item["name"]: item for item in data["series"]}
    assert by_name[REQUESTS]["attributes"] == {"result": "allowed", "rule": "api"}
    assert by_name[REQUESTS]["rate"] == [3.0, 2.0]  # 3 in 1 s, then 4 in 2 s
    assert by_name[ACTIVE]["value"] == [2, 2]
    latency = by_name[DURATION]
    assert latency["rate"] == [4.0, 0.0]
    assert 0.009 < latency["p50"][0] < 0.013 and 0.35 < latency["p99"][0] < 0.6
    assert latency["p50"][1] is None  # no observation in that interval: unknown, not zero
    assert latency["recent"]["count"] == 4 and latency["recent"]["mean"] == pytest.approx(0.13325)
    # only what is new, for a stream that already sent the rest
    newer = history.series(since=1001.0)
    assert newer["times"] == [1003.0] and newer["since"] == 1001.0
    assert {item["name"]: item for item in newer["series"]}[REQUESTS]["rate"] == [2.0]


def test_a_key_seen_late_has_a_zero_rate_before_and_the_ring_is_bounded() -> None:
    telemetry, clock = Telemetry(), ManualClock(0.0)
    history = build(telemetry, clock, interval=1.0, seconds=3.0)
    for second in range(6):
        clock.advance(1.0)
        if second == 4:
            telemetry.instrument(REQUESTS).add(2, {"rule": "r", "result": "limited"})
        history.take()
    data = history.series()
    assert data["times"] == [4.0, 5.0, 6.0]  # 3 s of intervals: 4 samples kept
    (item,) = data["series"]
    assert item["rate"] == [0.0, 2.0, 0.0]
    history.take()  # the same instant twice: ignored
    assert history.series()["times"] == data["times"]
    huge = build(telemetry, clock, interval=0.001, seconds=3600)
    assert huge._ring.maxlen == MAX_SAMPLES


def test_quantile_interpolates_within_buckets() -> None:
    counts = [0] * (len(LATENCY_BOUNDS) + 1)
    assert quantile(counts, 0.5) is None
    counts[10] = 100  # all in one bucket: between its lower and upper bound
    p50 = quantile(counts, 0.5)
    assert p50 is not None and LATENCY_BOUNDS[9] < p50 < LATENCY_BOUNDS[10]
    counts[-1] = 1000  # mostly above the last bound: "at least" the last bound
    assert quantile(counts, 0.99) == LATENCY_BOUNDS[-1]


def test_the_sampler_thread_samples_and_stops_on_close_or_garbage_collection() -> None:
    telemetry = Telemetry()
    history = History(telemetry.sample, kind, interval=0.01, seconds=10)
    history.start()
    deadline = time.monotonic() + 5
    while len(history._ring) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(history._ring) >= 3
    history.close()
    time.sleep(0.05)
    settled = len(history._ring)
    time.sleep(0.05)
    assert len(history._ring) == settled

    def threads() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "asgi-resilience-history")

    before = threads()
    dropped = History(telemetry.sample, kind, interval=0.01, seconds=10)
    dropped.start()
    assert threads() == before + 1
    del dropped
    deadline = time.monotonic() + 5
    while threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threads() == before


def test_telemetry_sample_merges_attribute_orders_and_keeps_buckets() -> None:
    telemetry = Telemetry()
    histogram = telemetry.instrument(DURATION)
    histogram.record(0.001, {"origin": "o", "outcome": "success"})
    histogram.record(0.003, {"outcome": "success", "origin": "o"})
    telemetry.instrument(REQUESTS).add(1, {"rule": "a", "result": "allowed"})
    telemetry.instrument(REQUESTS).add(2, {"result": "allowed", "rule": "a"})
    sample: dict[Any, Any] = telemetry.sample()
    count, total, counts = sample[(DURATION, (("origin", "o"), ("outcome", "success")))]
    assert count == 2 and total == pytest.approx(0.004) and sum(counts) == 2
    assert sample[(REQUESTS, (("result", "allowed"), ("rule", "a")))] == 3
    assert Telemetry(enabled=False).sample() == {}
