"""The memory store drops expired counters a few at a time, never the whole table in one request."""

from __future__ import annotations

import tracemalloc

from asgi_resilience.ratelimit._storage import Check, MemoryStorage
from asgi_resilience.testing import ManualClock


def check(partition: str) -> list[Check]:
    return [Check("r", 0, partition, 5, 60_000, 1, True, "r", False)]


def fill(storage: MemoryStorage, n: int) -> None:
    for i in range(n):
        storage.hit_now("sliding-window", check(f"ip:10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"))


def test_no_decision_sweeps_more_than_a_few_counters() -> None:
    clock = ManualClock(1000.0)
    storage = MemoryStorage(clock=clock)
    fill(storage, 30_000)
    clock.advance(120)  # every counter expired
    sizes = [len(storage)]
    for _ in range(30_000):
        storage.hit_now("sliding-window", check("ip:192.0.2.1"))
        sizes.append(len(storage))
    largest_drop = max(before - after for before, after in zip(sizes, sizes[1:], strict=False))
    assert largest_drop <= 16  # the old sweep dropped all 30,000 inside one request
    assert len(storage) <= 2  # and yet the expired counters are gone after one pass


def test_live_counters_survive_a_pass_and_the_key_bound_still_holds() -> None:
    clock = ManualClock(1000.0)
    storage = MemoryStorage(clock=clock, max_keys=1_000)
    fill(storage, 500)
    for _ in range(12_000):
        storage.hit_now("sliding-window", check("ip:192.0.2.1"))
    assert len(storage) == 501  # nothing live was dropped
    fill(storage, 5_000)
    assert len(storage) <= 1_000


def test_bytes_per_counter() -> None:
    clock = ManualClock(1000.0)
    tracemalloc.start()
    try:
        storage = MemoryStorage(clock=clock)
        before = tracemalloc.get_traced_memory()[0]
        fill(storage, 100_000)
        per_key = (tracemalloc.get_traced_memory()[0] - before) / len(storage)
    finally:
        tracemalloc.stop()
    assert 100 < per_key < 400, per_key  # about 330 bytes measured at 1,000,000 keys
