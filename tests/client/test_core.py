"""The sans-io core: retry decisions, Retry-After, budget, breaker state machine (no event loop)."""

from __future__ import annotations

import threading
from datetime import timedelta
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_resilience import BreakerPolicy, ConfigurationError, RetryBudget, RetryPolicy
from asgi_resilience.client._breaker import BreakerRegistry, CircuitBreaker, Result, State
from asgi_resilience.client._retry import BudgetRegistry, BudgetState, Outcome, Phase, parse_retry_after
from asgi_resilience.testing import ManualClock, set_testing

NOW = 1_700_000_000.0


def decide(policy: RetryPolicy, outcome: Outcome, **kw: object) -> tuple[bool, float, str | None]:
    args: dict[str, object] = {
        "method": "GET",
        "has_idempotency_key": False,
        "attempt": 1,
        "remaining": 100.0,
        "random": 0.5,
        "now_epoch": NOW,
    }
    args.update(kw)
    d = policy.decide(outcome, **args)  # type: ignore[arg-type]
    return d.retry, d.delay, d.reason


# -- Retry-After parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 0 ", 0.0),
        ("120", 120.0),
        ("-1", None),
        ("1.5", None),
        ("+3", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("Mon, 32 Foo 2020 99:99:99 GMT", None),
        ("2020-01-01", None),
        ("Tue, 14 Nov 2023 22:13:20", None),  # no zone: not an HTTP-date
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now_epoch=NOW) == expected


def test_parse_retry_after_http_dates() -> None:
    assert parse_retry_after(formatdate(NOW + 30, usegmt=True), now_epoch=NOW) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(NOW - 30, usegmt=True), now_epoch=NOW) == 0.0


# -- decisions -----------------------------------------------------------------------------------


def test_phase_rules() -> None:
    policy = RetryPolicy()
    assert decide(policy, Outcome(Phase.NOT_SENT), method="POST")[0]
    assert decide(policy, Outcome(Phase.SENT), method="POST") == (False, 0.0, "method")
    assert decide(policy, Outcome(Phase.SENT), method="POST", has_idempotency_key=True)[0]
    assert decide(policy, Outcome(Phase.SENT), method="put")[0]
    assert decide(policy, Outcome(Phase.FATAL)) == (False, 0.0, None)
    assert decide(policy, Outcome(Phase.RESPONSE, 200)) == (False, 0.0, None)
    assert decide(policy, Outcome(Phase.RESPONSE, 500)) == (False, 0.0, None)
    assert decide(policy, Outcome(Phase.RESPONSE, 503))[0]
    assert decide(policy, Outcome(Phase.RESPONSE, 503), method="POST") == (False, 0.0, "method")
    no_key = RetryPolicy(idempotency_header=None)
    assert not decide(no_key, Outcome(Phase.SENT), method="POST", has_idempotency_key=True)[0]


def test_attempts_deadline_body() -> None:
    policy = RetryPolicy(attempts=3)
    outcome = Outcome(Phase.RESPONSE, 503)
    assert decide(policy, outcome, attempt=2)[0]
    assert decide(policy, outcome, attempt=3)[2] == "attempts"
    assert decide(policy, outcome, max_attempts=1)[2] == "attempts"
    assert decide(policy, outcome, body_replayable=False)[2] == "body"
    assert decide(policy, outcome, remaining=0.01, random=0.99)[2] == "deadline"


def test_retry_after_rules() -> None:
    policy = RetryPolicy(retry_after_max=60)
    assert decide(policy, Outcome(Phase.RESPONSE, 429, "7")) == (True, 7.0, None)
    assert decide(policy, Outcome(Phase.RESPONSE, 429, "99999")) == (True, 60.0, None)
    assert decide(policy, Outcome(Phase.RESPONSE, 429, "50"), remaining=10.0) == (False, 50.0, "retry_after")
    retry, delay, _ = decide(policy, Outcome(Phase.RESPONSE, 429, "junk"))
    assert retry and delay == policy.backoff(1, 0.5)
    ignoring = RetryPolicy(respect_retry_after=False)
    assert decide(ignoring, Outcome(Phase.RESPONSE, 429, "50"))[1] == ignoring.backoff(1, 0.5)


def test_backoff_full_jitter_and_cap() -> None:
    policy = RetryPolicy(backoff_initial=0.2, backoff_max=5.0)
    assert policy.backoff(1, 0.999999) == pytest.approx(0.2, rel=1e-3)
    assert policy.backoff(3, 0.5) == pytest.approx(0.4)
    assert policy.backoff(30, 0.999999) == pytest.approx(5.0, rel=1e-3)
    assert policy.backoff(1000, 0.0) == 0.0
    fixed = RetryPolicy(jitter="none", backoff_initial=timedelta(milliseconds=100))
    assert fixed.backoff(2, 0.0) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"attempts": True},
        {"statuses": {99}},
        {"statuses": ["x"]},
        {"methods": "GET"},
        {"backoff_initial": -1},
        {"backoff_max": float("inf")},
        {"retry_after_max": "soon"},
        {"backoff_multiplier": 0.5},
        {"jitter": "decorrelated-ish"},
        {"budget": 0.2},
        {"body_buffer": -1},
    ],
)
def test_retry_policy_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="RetryPolicy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"ratio": -0.1}, {"ratio": True}, {"min_per_second": -1}, {"ttl": 0}, {"ttl": float("nan")}]
)
def test_budget_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="RetryBudget"):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


def test_policies_are_frozen_and_hashable() -> None:
    policy = RetryPolicy(statuses=[503], methods=["get"])
    assert policy.statuses == frozenset({503}) and policy.methods == frozenset({"GET"})
    assert hash(policy) == hash(RetryPolicy(statuses={503}, methods={"GET"}))
    with pytest.raises(AttributeError):
        policy.attempts = 5  # type: ignore[misc]


# -- budget --------------------------------------------------------------------------------------


def test_budget_ratio_and_floor() -> None:
    state = BudgetState(RetryBudget(ratio=0.2, min_per_second=0, ttl=10))
    for _ in range(10):
        state.record_request(0.0)
    assert [state.try_withdraw(0.0) for _ in range(3)] == [True, True, False]
    assert state.exhausted == 1
    # requests expire after ttl: no budget left without fresh traffic
    assert not state.try_withdraw(11.0)
    floor = BudgetState(RetryBudget(ratio=0.0, min_per_second=2, ttl=10))
    assert [floor.try_withdraw(0.0) for _ in range(3)] == [True, True, False]
    assert floor.try_withdraw(1.5)  # a new second, a fresh floor
    assert floor.snapshot() == {"requests": 0, "retries": 3, "budget_exhausted": 1}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(min_value=0, max_value=0.5)), min_size=1, max_size=300),
    st.floats(min_value=0.05, max_value=1.0),
)
def test_budget_invariant(events: list[tuple[bool, float]], ratio: float) -> None:
    """Within one ttl window, retries never exceed ratio x requests + the per-second floor."""
    budget = RetryBudget(ratio=ratio, min_per_second=3, ttl=1000)
    state = BudgetState(budget)
    now = 0.0
    for is_request, step in events:
        now += step
        if is_request:
            state.record_request(now)
        else:
            state.try_withdraw(now)
    seconds = int(now) + 1
    assert state.total_retries <= max(ratio * state.total_requests, 0) + 3 * seconds
    assert state.total_retries >= 0


def test_budget_registry_is_bounded() -> None:
    registry = BudgetRegistry(max_size=2)
    budget = RetryBudget()
    a = registry.get("http://a:80", budget)
    registry.get("http://b:80", budget)
    assert registry.get("http://a:80", budget) is a  # refreshed
    registry.get("http://c:80", budget)
    assert [origin for origin, _ in registry.items()] == ["http://a:80", "http://c:80"]


# -- breaker state machine -----------------------------------------------------------------------


def fail(breaker: CircuitBreaker, now: float, n: int = 1, duration: float = 0.01) -> None:
    for _ in range(n):
        admission = breaker.admit(now)
        assert admission.allowed
        breaker.record(admission, Result.FAILURE, duration, now)


def succeed(breaker: CircuitBreaker, now: float, n: int = 1, duration: float = 0.01) -> None:
    for _ in range(n):
        admission = breaker.admit(now)
        assert admission.allowed
        breaker.record(admission, Result.SUCCESS, duration, now)


def test_opens_on_rate_only_after_minimum_calls() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerPolicy(minimum_calls=10, failure_rate=0.5), "o")
    fail(breaker, clock(), 9)
    assert breaker.state is State.CLOSED
    fail(breaker, clock())
    assert breaker.state is State.OPEN
    rejected = breaker.admit(clock())
    assert not rejected.allowed and rejected.retry_after == 5.0


def test_rate_threshold_and_ignored_results() -> None:
    breaker = CircuitBreaker(BreakerPolicy(minimum_calls=10, failure_rate=0.5), "o")
    succeed(breaker, 0.0, 6)
    fail(breaker, 0.0, 4)
    for _ in range(20):
        admission = breaker.admit(0.0)
        breaker.record(admission, Result.IGNORED, 0.0, 0.0)
    assert breaker.state is State.CLOSED
    fail(breaker, 0.0, 2)  # 6/12 = 50 %
    assert breaker.state is State.OPEN


def test_time_window_forgets_old_failures() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerPolicy(window=10.0, minimum_calls=4), "o")
    fail(breaker, clock(), 3)
    clock.advance(11)
    fail(breaker, clock())
    assert breaker.state is State.CLOSED
    fail(breaker, clock(), 3)
    assert breaker.state is State.OPEN


def test_count_window() -> None:
    breaker = CircuitBreaker(BreakerPolicy(window=4, minimum_calls=4, failure_rate=0.75), "o")
    assert BreakerPolicy(window=20).window == 20
    fail(breaker, 0.0, 2)
    succeed(breaker, 0.0, 4)  # the failures slide out of the last 4 calls
    fail(breaker, 0.0, 2)
    assert breaker.state is State.CLOSED
    fail(breaker, 0.0)
    assert breaker.state is State.OPEN


def test_consecutive_failures_mode() -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=3), "o")
    fail(breaker, 0.0, 2)
    succeed(breaker, 0.0)
    fail(breaker, 0.0, 2)
    assert breaker.state is State.CLOSED
    fail(breaker, 0.0)
    assert breaker.state is State.OPEN
    assert breaker.history[-1].reason == "consecutive_failures"


def test_slow_calls() -> None:
    breaker = CircuitBreaker(BreakerPolicy(minimum_calls=4, slow_call_duration=1.0, slow_call_rate=0.5), "o")
    succeed(breaker, 0.0, 2, duration=2.0)
    succeed(breaker, 0.0, 1, duration=0.1)
    assert breaker.state is State.CLOSED
    succeed(breaker, 0.0, 1, duration=1.0)
    assert breaker.state is State.OPEN
    assert breaker.history[-1].reason == "slow_call_rate"


def test_half_open_single_probe_close_and_doubling() -> None:
    clock = ManualClock()
    policy = BreakerPolicy(minimum_calls=2, break_duration=5.0, max_break_duration=12.0)
    breaker = CircuitBreaker(policy, "o")
    fail(breaker, clock(), 2)
    clock.advance(5)
    probe = breaker.admit(clock())
    assert probe.allowed and probe.probe and breaker.state is State.HALF_OPEN
    assert [(t.from_state, t.to_state) for t in probe.transitions] == [(State.OPEN, State.HALF_OPEN)]
    assert not breaker.admit(clock()).allowed
    # the probe fails: open again for 2 x 5 s
    breaker.record(probe, Result.FAILURE, 0.1, clock())
    assert breaker.state is State.OPEN and breaker.admit(clock()).retry_after == 10.0
    clock.advance(10)
    probe = breaker.admit(clock())
    breaker.record(probe, Result.FAILURE, 0.1, clock())
    assert breaker.admit(clock()).retry_after == 12.0  # capped at max_break_duration
    clock.advance(12)
    probe = breaker.admit(clock())
    transitions = breaker.record(probe, Result.SUCCESS, 0.1, clock())
    assert [t.to_state for t in transitions] == [State.CLOSED]
    fail(breaker, clock(), 2)
    assert breaker.admit(clock()).retry_after == 5.0  # closing reset the doubling


def test_half_open_cancelled_probe_frees_the_slot_and_stale_probe_ignored() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerPolicy(minimum_calls=1, probe_timeout=3.0), "o")
    fail(breaker, clock())
    clock.advance(5)
    probe = breaker.admit(clock())
    breaker.record(probe, Result.IGNORED, 0.0, clock())
    second = breaker.admit(clock())
    assert second.allowed
    # a hanging probe: after probe_timeout the breaker re-opens, the late result is stale
    clock.advance(3)
    reopened = breaker.admit(clock())
    assert not reopened.allowed and breaker.state is State.OPEN
    assert reopened.transitions[-1].reason == "probe_timeout"
    assert breaker.record(second, Result.SUCCESS, 3.0, clock()) == ()
    assert breaker.state is State.OPEN


def test_half_open_with_several_probes() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerPolicy(minimum_calls=1, half_open_probes=2), "o")
    fail(breaker, clock())
    clock.advance(5)
    probes = [breaker.admit(clock()) for _ in range(3)]
    assert [p.allowed for p in probes] == [True, True, False]
    assert probes[2].state is State.HALF_OPEN and probes[2].retry_after > 0
    breaker.record(probes[0], Result.SUCCESS, 0.1, clock())
    assert breaker.state is State.HALF_OPEN
    breaker.record(probes[1], Result.SUCCESS, 0.1, clock())
    assert breaker.state is State.CLOSED


def test_results_recorded_while_open_are_ignored_and_force_open() -> None:
    breaker = CircuitBreaker(BreakerPolicy(minimum_calls=1), "o")
    admission = breaker.admit(0.0)
    fail(breaker, 0.0)
    assert breaker.record(admission, Result.FAILURE, 0.1, 0.0) == ()
    assert breaker.force_open(0.0, 30.0, "shared") is None
    assert breaker.open_remaining(0.0) == 30.0
    fresh = CircuitBreaker(BreakerPolicy(), "p")
    transition = fresh.force_open(0.0, 2.0, "shared")
    assert transition is not None and transition.reason == "shared"
    assert fresh.admit(1.0).retry_after == 1.0
    assert fresh.open_remaining(0.0) == 2.0 and CircuitBreaker(BreakerPolicy(), "q").open_remaining(0.0) == 0.0


def test_probes_are_exact_under_threads() -> None:
    breaker = CircuitBreaker(BreakerPolicy(minimum_calls=1, break_duration=1.0), "o")
    fail(breaker, 0.0)
    admitted: list[bool] = []
    barrier = threading.Barrier(50)

    def caller() -> None:
        barrier.wait()
        admitted.append(breaker.admit(2.0).allowed)

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted.count(True) == 1


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(["admit", "ok", "fail", "ignore", "tick"]), max_size=200))
def test_breaker_invariants(ops: list[str]) -> None:
    """Never more probes than allowed in flight; never opens by rate below minimum calls."""
    policy = BreakerPolicy(minimum_calls=5, half_open_probes=2, break_duration=1.0, probe_timeout=100.0)
    breaker = CircuitBreaker(policy, "o")
    clock = ManualClock()
    held = []
    for op in ops:
        if op == "tick":
            clock.advance(0.6)
        elif op == "admit":
            admission = breaker.admit(clock())
            if admission.allowed:
                held.append(admission)
        elif held:
            admission = held.pop(0)
            result = {"ok": Result.SUCCESS, "fail": Result.FAILURE, "ignore": Result.IGNORED}[op]
            breaker.record(admission, result, 0.0, clock())
        assert len(breaker._probes) <= policy.half_open_probes
        if breaker.state is State.OPEN and breaker.history and breaker.history[-1].reason == "failure_rate":
            assert breaker.history[-1].from_state is State.CLOSED


def test_snapshot_is_jsonable() -> None:
    import json

    breaker = CircuitBreaker(BreakerPolicy(minimum_calls=2), "http://a:80")
    fail(breaker, 0.0, 2)
    snap = breaker.snapshot(1.0)
    json.dumps(snap)
    assert snap["state"] == "open" and snap["failure_rate"] == 1.0 and snap["open_for"] == 4.0
    assert snap["recent_transitions"][0]["to"] == "open"


def test_breaker_registry_is_bounded_and_keyed_by_policy() -> None:
    registry = BreakerRegistry(max_size=2)
    a, created = registry.get(BreakerPolicy(), "http://a:80")
    assert created
    assert registry.get(BreakerPolicy(), "http://a:80") == (a, False)
    other, created = registry.get(BreakerPolicy(minimum_calls=3), "http://a:80")
    assert created and other is not a
    registry.get(BreakerPolicy(), "http://b:80")
    assert len(registry.breakers()) == 2
    with pytest.raises(ConfigurationError):
        BreakerRegistry(max_size=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 0},
        {"window": -1.0},
        {"minimum_calls": 0},
        {"half_open_probes": 0},
        {"consecutive_failures": 0},
        {"failure_rate": 0},
        {"failure_rate": 1.5},
        {"slow_call_rate": 0},
        {"slow_call_duration": 0},
        {"break_duration": 0},
        {"break_duration": 10.0, "max_break_duration": 5.0},
        {"failure_statuses": ["x"]},
        {"window": 10},  # a count window smaller than minimum_calls=20 could never open by rate
    ],
)
def test_breaker_policy_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="BreakerPolicy"):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


def test_breaker_policy_window_kinds() -> None:
    assert BreakerPolicy(window=30.0).time_based
    assert BreakerPolicy(window=timedelta(seconds=10)).window == 10.0
    assert not BreakerPolicy(window=100).time_based
    policy = BreakerPolicy(failure_statuses={500, 429})
    assert policy.classify_status(429) is Result.FAILURE and policy.classify_status(503) is Result.SUCCESS


def test_set_testing_switch() -> None:
    from asgi_resilience.client._config import testing_attempts, testing_enabled

    assert not testing_enabled()
    with set_testing(attempts=2):
        assert testing_enabled() and testing_attempts() == 2
        with set_testing(False):
            assert not testing_enabled() and testing_attempts() is None
        assert testing_enabled()
    assert not testing_enabled()
    with pytest.raises(ValueError):
        set_testing(attempts=0)
