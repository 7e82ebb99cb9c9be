"""The sans-io strategies against independent reference models, with a manual clock."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.ratelimit import Decision, MemoryStorage, Rule
from asgi_resilience.ratelimit._policy import Limit, decide, parse_limits, strategy_function
from asgi_resilience.ratelimit._storage import Check
from asgi_resilience.testing import ManualClock

# ---------------------------------------------------------------------------------------------
# reference models: written from the definitions, sharing no code with the implementation


class FixedRef:
    def __init__(self, limit: int, period_ms: int) -> None:
        self.limit, self.period, self.hits = limit, period_ms, []  # type: ignore[var-annotated]

    def allows(self, now: int, cost: int) -> bool:
        window = now // self.period
        used = sum(c for t, c in self.hits if t // self.period == window)
        return used + cost <= self.limit

    def remaining(self, now: int) -> int:
        window = now // self.period
        return self.limit - sum(c for t, c in self.hits if t // self.period == window)


class SlidingRef(FixedRef):
    def weighted(self, now: int) -> Fraction:
        window = now // self.period
        elapsed = now - window * self.period
        prev = sum(c for t, c in self.hits if t // self.period == window - 1)
        curr = sum(c for t, c in self.hits if t // self.period == window)
        return Fraction(prev * (self.period - elapsed), self.period) + curr

    def allows(self, now: int, cost: int) -> bool:
        return self.weighted(now) + cost <= self.limit

    def remaining(self, now: int) -> int:
        return max(0, int((self.limit - self.weighted(now)) // 1))


class MovingRef(FixedRef):
    def used(self, now: int) -> int:
        return sum(c for t, c in self.hits if t > now - self.period)

    def allows(self, now: int, cost: int) -> bool:
        return self.used(now) + cost <= self.limit

    def remaining(self, now: int) -> int:
        return self.limit - self.used(now)


class BucketRef(FixedRef):
    """A token bucket of ``limit`` tokens refilled continuously at limit/period (exact fractions)."""

    def tokens(self, now: int) -> Fraction:
        tokens, last = Fraction(self.limit), 0
        for t, c in self.hits:
            tokens = min(Fraction(self.limit), tokens + Fraction(self.limit * (t - last), self.period)) - c
            last = t
        return min(Fraction(self.limit), tokens + Fraction(self.limit * (now - last), self.period))

    def allows(self, now: int, cost: int) -> bool:
        return self.tokens(now) >= cost

    def remaining(self, now: int) -> int:
        return int(self.tokens(now) // 1)


REFS: dict[str, Callable[[int, int], FixedRef]] = {
    "fixed-window": FixedRef,
    "sliding-window": SlidingRef,
    "moving-window": MovingRef,
    "gcra": BucketRef,
}

steps = st.lists(
    st.tuples(st.sampled_from([0, 0, 1, 7, 50, 125, 250, 333, 500, 999, 1000, 2500]), st.sampled_from([1, 1, 1, 2, 3])),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("strategy", list(REFS))
@settings(max_examples=60, deadline=None)
@given(steps=steps)
def test_strategy_matches_reference_model(strategy: str, steps: list[tuple[int, int]]) -> None:
    limit, period = 4, 1000  # period divisible by limit: GCRA is then exactly a token bucket
    ref = REFS[strategy](limit, period)
    state = None
    now = 10_000
    for advance, cost in steps:
        now += advance
        decision, new_state, ttl = decide(strategy, state, now / 1000, limit, period, cost)
        expected = ref.allows(now, cost)
        assert decision.allowed is expected, (strategy, now, cost, ref.hits)
        assert ttl > 0
        if decision.allowed:
            ref.hits.append((now, cost))
            state = new_state
            assert decision.retry_after is None
            assert decision.remaining == ref.remaining(now)
        else:
            assert new_state is None
            assert decision.remaining == ref.remaining(now)
            wait_ms = round(decision.retry_after * 1000)  # type: ignore[operator]
            assert wait_ms > 0
            # retrying after retry_after succeeds; a millisecond earlier still fails (exact retry time)
            assert ref.allows(now + wait_ms, cost), (strategy, now, wait_ms)
            assert not ref.allows(now + wait_ms - 1, cost), (strategy, now, wait_ms)


@pytest.mark.parametrize("strategy", list(REFS))
def test_burst_admits_exactly_the_limit_then_retry_after_is_honest(strategy: str) -> None:
    clock = ManualClock(1000.5)
    storage = MemoryStorage(clock=clock)
    check = Check("r", 0, "k", 10, 60_000, 1, True)
    outcomes = [storage.hit_now(strategy, [check])[0] for _ in range(25)]
    assert sum(d.allowed for d in outcomes) == 10
    assert [d.remaining for d in outcomes[:10]] == list(range(9, -1, -1))
    rejected = outcomes[10]
    assert rejected.retry_after is not None and rejected.retry_after > 0
    clock.set(1000.5 + rejected.retry_after - 0.002)
    assert not storage.hit_now(strategy, [check])[0].allowed
    clock.set(1000.5 + rejected.retry_after)
    assert storage.hit_now(strategy, [check])[0].allowed


@pytest.mark.parametrize("strategy", list(REFS))
def test_rejected_request_consumes_no_quota_on_other_checks(strategy: str) -> None:
    clock = ManualClock(500.0)
    storage = MemoryStorage(clock=clock)
    tight = Check("tight", 0, "k", 1, 1000, 1, True)
    loose = Check("loose", 0, "k", 100, 60_000, 1, True)
    first = storage.hit_now(strategy, [tight, loose])
    assert [d.allowed for d in first] == [True, True] and first[1].remaining == 99
    second = storage.hit_now(strategy, [tight, loose])
    assert [d.allowed for d in second] == [False, True]
    assert second[1].remaining == 99  # reported as it is: nothing was consumed
    assert storage.hit_now(strategy, [loose])[0].remaining == 98


def test_shadow_check_does_not_block_but_is_not_committed_when_over() -> None:
    storage = MemoryStorage(clock=ManualClock(5.0))
    shadow = Check("s", 0, "k", 1, 1000, 1, False)
    assert storage.hit_now("fixed-window", [shadow])[0].allowed
    assert not storage.hit_now("fixed-window", [shadow])[0].allowed  # would reject
    real = Check("r", 0, "k", 5, 1000, 1, True)
    out = storage.hit_now("fixed-window", [shadow, real])
    assert not out[0].allowed and out[1].allowed and out[1].remaining == 4


def test_cost_larger_than_limit_is_always_rejected_with_a_wait() -> None:
    for strategy in REFS:
        decision, state, _ = decide(strategy, None, 1.0, 3, 1000, 5)
        assert not decision.allowed and state is None
        assert decision.retry_after is not None and decision.retry_after >= 1.0


def test_zero_cost_peeks() -> None:
    for strategy in REFS:
        decision, _, ttl = decide(strategy, None, 1.0, 3, 1000, 0)
        assert decision.allowed and decision.remaining == 3 and ttl >= 0


def test_sliding_window_weights_the_previous_window() -> None:
    storage = MemoryStorage(clock=(clock := ManualClock(0.0)))
    check = Check("r", 0, "k", 10, 1000, 1, True)
    for _ in range(10):
        assert storage.hit_now("sliding-window", [check])[0].allowed
    clock.set(1.5)  # half of the previous window still weighs: 5 used
    out = [storage.hit_now("sliding-window", [check])[0].allowed for _ in range(10)]
    assert sum(out) == 5


def test_memory_sweep_drops_expired_counters() -> None:
    clock = ManualClock(0.0)
    storage = MemoryStorage(clock=clock)
    for i in range(50):
        storage.hit_now("fixed-window", [Check("r", 0, f"k{i}", 5, 1000, 1, True)])
    assert len(storage) == 50
    clock.advance(2.0)
    storage.sweep()
    assert len(storage) == 0


def test_memory_sweep_runs_periodically() -> None:
    clock = ManualClock(0.0)
    storage = MemoryStorage(clock=clock)
    for i in range(100):
        storage.hit_now("fixed-window", [Check("r", 0, f"k{i}", 5, 1000, 1, True)])
    clock.advance(2.0)
    for _ in range(10_000):
        storage.hit_now("fixed-window", [Check("r", 0, "hot", 10**6, 1000, 1, True)])
    assert len(storage) == 1  # the 100 expired counters were swept without an explicit call


def test_parse_limits() -> None:
    assert parse_limits("5/second;60/minute") == (Limit(5, 1000), Limit(60, 60_000))
    assert parse_limits("10 per 2 hours") == (Limit(10, 7_200_000),)
    assert Limit(5, 1500).window == 2
    with pytest.raises(ConfigurationError, match="100/minute"):
        parse_limits("lots")
    with pytest.raises(ConfigurationError, match="at least one"):
        parse_limits("0/second")


def test_unknown_strategy() -> None:
    with pytest.raises(ConfigurationError, match="sliding-window"):
        strategy_function("leaky")


def test_decision_is_frozen() -> None:
    decision = Decision(True, 5, 4, 1.0, None)
    with pytest.raises(AttributeError):
        decision.allowed = False  # type: ignore[misc]


def test_rule_validation_and_matching() -> None:
    rule = Rule("5/second", path=["/api/*", "/v2/*"], methods=["post"])
    assert rule.name == "5/second" and rule.limits == (Limit(5, 1000),)
    assert rule.matches("POST", "/api/x/y") and rule.matches("POST", "/v2/z")
    assert not rule.matches("GET", "/api/x") and not rule.matches("POST", "/other")
    assert Rule("1/second").matches(None, "/ws")
    assert "5/second" in repr(rule)

    def tier(scope: object) -> str:
        return "1/second"

    assert Rule(tier).name == "tier" and Rule(tier).limits is None
    for bad, match in [
        ({"limit": 5}, "rate string or a callable"),
        ({"limit": "x/y"}, "cannot parse"),
        ({"limit": "1/second", "key": "cookie"}, "header:<Name>"),
        ({"limit": "1/second", "key": 3}, "callable"),
        ({"limit": "1/second", "cost": -1}, "cost"),
        ({"limit": "1/second", "cost": "2"}, "cost"),
        ({"limit": "1/second", "methods": "GET"}, "list"),
        ({"limit": "1/second", "name": ""}, "name"),
        ({"limit": "1/second", "name": "é"}, "name"),
    ]:
        with pytest.raises(ConfigurationError, match=match):
            Rule(**bad)  # type: ignore[arg-type]


def test_memory_is_bounded_by_max_keys() -> None:
    clock = ManualClock(0.0)
    storage = MemoryStorage(clock=clock, max_keys=100)
    for i in range(1000):
        storage.hit_now("fixed-window", [Check("r", 0, f"k{i}", 5, 60_000, 1, True)])
    assert len(storage) <= 100
    # the newest counters survive: k999 has used its hit
    assert storage.hit_now("fixed-window", [Check("r", 0, "k999", 5, 60_000, 1, True)])[0].remaining == 3
    with pytest.raises(ConfigurationError, match="max_keys"):
        MemoryStorage(max_keys=0)
