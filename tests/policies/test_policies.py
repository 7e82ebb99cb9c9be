"""Each policy alone: retry, circuit_breaker, bulkhead, time_limit, fallback, hedge (asyncio and trio)."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from asgi_resilience import CircuitOpenError, ConfigurationError, DependencyUnavailable, Overloaded, TimeLimitExceeded
from asgi_resilience._deadline import deadline_scope
from asgi_resilience.observability import Telemetry
from asgi_resilience.policies import (
    bulkhead,
    circuit_breaker,
    configure_policies,
    fail_closed,
    fail_open,
    fallback,
    hedge,
    last_good,
    retry,
    time_limit,
)
from asgi_resilience.policies._registry import breakers_snapshot
from asgi_resilience.testing import ManualClock, set_testing

pytestmark = pytest.mark.anyio


class Flaky(Exception):
    pass


# -- retry ---------------------------------------------------------------------------------------


async def test_retry_reruns_until_success_and_keeps_the_function() -> None:
    calls = 0

    @retry(on=Flaky, attempts=3, wait_initial=0.001, wait_max=0.001)
    async def fetch(x: int) -> int:
        """Doc."""
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Flaky
        return x * 2

    assert await fetch(21) == 42 and calls == 3
    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Doc."


async def test_retry_gives_up_after_attempts_and_raises_the_last_error() -> None:
    calls = 0

    @retry(on=Flaky, attempts=2, wait_initial=0, budget=None)
    async def fetch() -> None:
        nonlocal calls
        calls += 1
        raise Flaky(calls)

    with pytest.raises(Flaky) as info:
        await fetch()
    assert calls == 2 and info.value.args == (2,)


async def test_retry_ignores_what_on_does_not_name() -> None:
    calls = 0

    @retry(on=Flaky, attempts=5, wait_initial=0)
    async def fetch() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("a bug is not retried")

    with pytest.raises(KeyError):
        await fetch()
    assert calls == 1


async def test_retry_default_honours_retryable_and_retry_after() -> None:
    slept: list[float] = []
    calls = 0

    @retry(attempts=2, budget=None)
    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Overloaded("busy", retry_after=0.05)
        return "ok"

    started = time.monotonic()
    assert await fetch() == "ok"
    slept.append(time.monotonic() - started)
    assert 0.04 <= slept[0] < 1.0  # waited the refusal's own Retry-After, not the backoff

    @retry(attempts=5)
    async def config() -> None:
        raise ConfigurationError("not retryable")

    with pytest.raises(ConfigurationError):
        await config()


async def test_retry_predicate_may_return_the_delay() -> None:
    calls = 0

    @retry(on=lambda exc: 0.0 if isinstance(exc, Flaky) else False, attempts=3, wait_initial=10)
    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Flaky
        return "ok"

    with anyio.fail_after(2):  # the 10 s backoff was replaced by the predicate's 0 s
        assert await fetch() == "ok"


async def test_retry_never_sleeps_past_the_inbound_deadline() -> None:
    calls = 0

    @retry(on=Flaky, attempts=10, wait_initial=5.0, jitter="none")
    async def fetch() -> None:
        nonlocal calls
        calls += 1
        raise Flaky

    started = time.monotonic()
    with deadline_scope(time.monotonic() + 1.0):
        with pytest.raises(Flaky):
            await fetch()
    assert calls == 1 and time.monotonic() - started < 0.5  # a 5 s wait cannot fit in 1 s: no sleep at all


async def test_retry_total_timeout_bounds_the_waits() -> None:
    calls = 0

    @retry(on=Flaky, attempts=100, wait_initial=0.05, wait_max=0.05, jitter="none", timeout=0.2, budget=None)
    async def fetch() -> None:
        nonlocal calls
        calls += 1
        raise Flaky

    started = time.monotonic()
    with pytest.raises(Flaky):
        await fetch()
    assert time.monotonic() - started < 0.5 and 2 <= calls <= 5


async def test_testing_mode_skips_waits_and_caps_attempts() -> None:
    calls = 0

    @retry(on=Flaky, attempts=10, wait_initial=30, budget=None)
    async def fetch() -> None:
        nonlocal calls
        calls += 1
        raise Flaky

    with set_testing(attempts=3), anyio.fail_after(2):
        with pytest.raises(Flaky):
            await fetch()
    assert calls == 3


async def test_retry_budget_bounds_retries_across_calls() -> None:
    from asgi_resilience.policies import RetryBudget

    calls = 0

    @retry(on=Flaky, attempts=3, wait_initial=0, name="tight", budget=RetryBudget(ratio=0.0, min_per_second=2))
    async def fetch() -> None:
        nonlocal calls
        calls += 1
        raise Flaky

    for _ in range(10):
        with pytest.raises(Flaky):
            await fetch()
    assert calls == 10 + 2  # ten first attempts, two retries in the second allowed by the budget


def test_retry_sync_function() -> None:
    calls = 0

    @retry(on=Flaky, attempts=3, wait_initial=0)
    def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls < 2:
            raise Flaky
        return "ok"

    assert fetch() == "ok" and calls == 2


def test_retry_refuses_sync_generators_and_bad_options() -> None:
    with pytest.raises(ConfigurationError, match="generator"):

        @retry(on=Flaky)
        def stream() -> Any:
            yield 1

    with pytest.raises(ConfigurationError):
        retry(on="nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        retry(attempts=0)


# -- circuit breaker -----------------------------------------------------------------------------


async def test_named_breaker_is_shared_and_opens() -> None:
    clock = ManualClock()
    breaker = circuit_breaker("svc", consecutive_failures=2, minimum_calls=10, break_duration=5, clock=clock)
    assert circuit_breaker("svc").breaker is breaker.breaker

    @circuit_breaker("svc")
    async def call(fail: bool) -> str:
        if fail:
            raise Flaky
        return "ok"

    for _ in range(2):
        with pytest.raises(Flaky):
            await call(True)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError) as info:
        await call(False)
    assert info.value.retry_after == pytest.approx(5.0) and info.value.origin == "svc"
    clock.advance(5)
    assert await call(False) == "ok" and breaker.state == "closed"


async def test_conflicting_options_for_a_name_raise() -> None:
    circuit_breaker("one", failure_rate=0.5)
    circuit_breaker("one", failure_rate=0.5)
    with pytest.raises(ConfigurationError, match="already exists"):
        circuit_breaker("one", failure_rate=0.9)


@pytest.mark.parametrize("probes", [1, 3])
async def test_exactly_n_half_open_probes_under_100_concurrent_callers(probes: int) -> None:
    clock = ManualClock()
    breaker = circuit_breaker(
        f"probe{probes}", consecutive_failures=1, minimum_calls=1, half_open_probes=probes, clock=clock
    )
    gate = anyio.Event()
    entered = 0
    refused = 0

    @breaker
    async def call() -> None:
        nonlocal entered
        entered += 1
        await gate.wait()

    with pytest.raises(Flaky):
        async with breaker:
            raise Flaky
    assert breaker.state == "open"
    clock.advance(60)

    async def caller() -> None:
        nonlocal refused
        try:
            await call()
        except CircuitOpenError:
            refused += 1

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(caller)
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        assert entered == probes and breaker.state == "half_open"
        gate.set()
    assert refused == 100 - probes and breaker.state == "closed"


async def test_cancelled_probe_frees_its_permit_without_a_verdict() -> None:
    clock = ManualClock()
    breaker = circuit_breaker("cancel", consecutive_failures=1, minimum_calls=1, clock=clock)
    started = anyio.Event()

    @breaker
    async def call() -> str:
        started.set()
        await anyio.sleep(10)
        return "late"

    with pytest.raises(Flaky):
        async with breaker:
            raise Flaky
    clock.advance(60)
    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await started.wait()
        tg.cancel_scope.cancel()
    assert breaker.state == "half_open"
    assert breaker.breaker.snapshot(clock())["probes_in_flight"] == 0


async def test_breaker_fallback_fails_open_and_listener_errors_are_contained() -> None:
    clock = ManualClock()
    transitions: list[str] = []
    breaker = circuit_breaker("authz", consecutive_failures=1, minimum_calls=1, clock=clock)
    breaker.add_listener(lambda t: transitions.append(t.to_state.value))
    breaker.add_listener(lambda t: 1 / 0)

    @circuit_breaker("authz", fallback=lambda *a, **k: True)
    async def can_read(user: str, doc: str) -> bool:
        raise ConnectionError("authz is down")

    assert await can_read("ann", "d1") is True  # the failure itself falls back
    assert await can_read("ann", "d1") is True  # and so does the refusal while open
    assert transitions == ["open"]
    breaker.reset()
    assert breaker.state == "closed"


def test_breaker_sync_and_context_manager() -> None:
    breaker = circuit_breaker("sync", consecutive_failures=1, minimum_calls=1, break_duration=30)

    @breaker
    def call() -> int:
        raise Flaky

    with pytest.raises(Flaky):
        call()
    with pytest.raises(CircuitOpenError):
        with breaker:
            pass


async def test_every_refusal_is_counted_by_policy_name() -> None:
    telemetry = Telemetry()
    refused = telemetry.instrument("asgi_resilience.circuit_breaker.refused")
    breaker = circuit_breaker(
        "counted", consecutive_failures=1, minimum_calls=1, break_duration=30, telemetry=telemetry
    )

    @breaker
    async def call() -> None:
        raise Flaky

    @circuit_breaker("counted", fallback=lambda: None)
    def sync_call() -> None:
        raise AssertionError("never called while open")

    with pytest.raises(Flaky):
        await call()  # the failure that opens it is a call, not a refusal
    assert refused.totals == {(("policy", "counted"),): 0}
    with pytest.raises(CircuitOpenError):
        await call()
    assert sync_call() is None  # refused, then fallen back: still a refusal
    with pytest.raises(CircuitOpenError):
        async with breaker:
            pass
    assert refused.totals == {(("policy", "counted"),): 3}
    assert [b["refused"] for b in breakers_snapshot() if b["kind"] == "named"] == [3]


def test_unnamed_breaker_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        circuit_breaker("")


# -- bulkhead ------------------------------------------------------------------------------------


async def test_bulkhead_caps_concurrency_and_queues() -> None:
    limit = bulkhead("db", 2, max_queue=10)
    running = peak = 0

    @limit
    async def query() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(query)
    assert peak == 2 and limit.active == 0 and limit.queued == 0


async def test_bulkhead_refuses_when_the_queue_is_full() -> None:
    limit = bulkhead("full", max_concurrent=1, max_queue=1, retry_after=2)
    gate = anyio.Event()
    results: list[str] = []

    async def hold() -> None:
        async with limit:
            await gate.wait()
        results.append("ran")

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        tg.start_soon(hold)
        await anyio.sleep(0.05)
        with pytest.raises(Overloaded) as info:
            async with limit:
                pass
        gate.set()
    assert info.value.retry_after == 2 and info.value.status == 503
    assert results == ["ran", "ran"] and limit.snapshot()["rejected"] == 1


async def test_bulkhead_queue_timeout() -> None:
    limit = bulkhead("slow", 1, max_queue=5, queue_timeout=0.05)
    gate = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def hold() -> None:
            async with limit:
                await gate.wait()

        tg.start_soon(hold)
        await anyio.sleep(0.01)
        with pytest.raises(Overloaded, match="in time"):
            await limit.acquire()
        assert limit.queued == 0
        gate.set()


async def test_cancellation_reaches_the_call_and_releases_slots() -> None:
    limit = bulkhead("cancel", 1, max_queue=5)
    inside = anyio.Event()
    seen: list[str] = []

    @limit
    async def work() -> None:
        inside.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        await inside.wait()
        tg.start_soon(work)  # queued behind the first
        await anyio.sleep(0.01)
        assert limit.active == 1 and limit.queued == 1
        tg.cancel_scope.cancel()
    assert seen == ["cancelled"] and limit.active == 0 and limit.queued == 0
    async with limit:  # the slot is really free
        assert limit.active == 1


def test_bulkhead_in_threads() -> None:
    limit = bulkhead("threads", 3, max_queue=100)
    running = peak = 0
    lock = threading.Lock()

    @limit
    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 3 and limit.active == 0


def test_bulkhead_names_and_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_policies({"bulkhead": {"db": {"max_concurrent": 20, "max_queue": 50}}})
    monkeypatch.setenv("ASGI_RESILIENCE__BULKHEAD__REDIS__MAX_CONCURRENT", "100")
    assert bulkhead("db").max_concurrent == 20 and bulkhead("db").max_queue == 50
    assert bulkhead("redis").max_concurrent == 100
    assert bulkhead("db") is bulkhead("db")
    with pytest.raises(ConfigurationError, match="already exist"):
        configure_policies({"bulkhead": {"db": {"max_concurrent": 1}}})
    with pytest.raises(ConfigurationError, match="max_concurrent"):
        bulkhead("unsized")
    with pytest.raises(ConfigurationError, match="unknown policy kind"):
        configure_policies({"bulkheads": {}})


# -- time limit ----------------------------------------------------------------------------------


async def test_time_limit_cancels_the_call() -> None:
    seen: list[str] = []

    @time_limit(0.05)
    async def slow() -> None:
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    with anyio.fail_after(2), pytest.raises(TimeLimitExceeded) as info:
        await slow()
    assert seen == ["cancelled"] and isinstance(info.value, TimeoutError) and info.value.status == 504


async def test_time_limit_publishes_the_deadline_and_works_as_a_block() -> None:
    from asgi_resilience import remaining_time

    async with time_limit(5):
        left = remaining_time()
        assert left is not None and 4 < left <= 5
    with pytest.raises(TimeLimitExceeded):
        async with time_limit(0.02):
            await anyio.sleep(5)


def test_time_limit_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_policies({"time_limit": {"auth": 5}})
    monkeypatch.setenv("ASGI_RESILIENCE__TIME_LIMIT__KV", "2")
    assert time_limit("auth").seconds == 5 and time_limit("kv").seconds == 2
    with pytest.raises(ConfigurationError, match="not configured"):
        time_limit("nothing")


def test_sync_time_limit_reports_an_overrun_and_thread_mode_stops_waiting() -> None:
    @time_limit(0.01)
    def slow() -> str:
        time.sleep(0.05)
        return "late"

    with pytest.raises(TimeLimitExceeded):
        slow()

    release = threading.Event()

    @time_limit(0.05, thread=True)
    def stuck() -> str:
        release.wait(5)
        return "late"

    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        stuck()
    assert time.monotonic() - started < 1
    release.set()

    @time_limit(1, thread=True)
    def quick(x: int) -> int:
        return x + 1

    assert quick(1) == 2


# -- fallback ------------------------------------------------------------------------------------


async def test_fallback_value_and_call() -> None:
    telemetry = Telemetry()

    @fallback(0, on=Flaky)
    async def count() -> int:
        raise Flaky

    @fallback(call=lambda user: f"guest:{user}")
    async def name(user: str) -> str:
        raise ConnectionError

    assert await count() == 0 and await name("ann") == "guest:ann"
    del telemetry


async def test_fallback_does_not_catch_what_on_excludes() -> None:
    @fallback(0, on=Flaky)
    async def count() -> int:
        raise KeyError

    with pytest.raises(KeyError):
        await count()


async def test_last_good_serves_stale_while_down_bounded_by_age() -> None:
    down = False

    @last_good(max_entries=2, max_age=0.2)
    async def price(item: str) -> int:
        if down:
            raise ConnectionError
        return len(item)

    assert await price("apple") == 5
    down = True
    assert await price("apple") == 5  # served stale
    with pytest.raises(ConnectionError):
        await price("pear")  # never seen: nothing to serve
    await anyio.sleep(0.25)
    with pytest.raises(ConnectionError):
        await price("apple")  # too old


async def test_fail_open_and_fail_closed() -> None:
    @fail_open(True)
    async def can_read(user: str) -> bool:
        raise ConnectionError

    @fail_closed
    async def is_admin(user: str) -> bool:
        raise ConnectionError("authz down at 10.0.0.7")

    assert await can_read("ann") is True
    with pytest.raises(DependencyUnavailable) as info:
        await is_admin("ann")
    assert info.value.status == 503 and "10.0.0.7" not in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_fail_closed_sync_with_options() -> None:
    @fail_closed(on=ConnectionError)
    def is_admin(user: str) -> bool:
        raise ConnectionError

    with pytest.raises(DependencyUnavailable):
        is_admin("x")


# -- hedge ---------------------------------------------------------------------------------------


async def test_hedge_takes_the_first_success_and_cancels_the_losers() -> None:
    in_flight = 0
    peak = 0
    calls = 0

    @hedge(idempotent=True, delay=0.02, max_hedges=2, budget=None)
    async def read() -> int:
        nonlocal in_flight, peak, calls
        calls += 1
        me = calls
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await anyio.sleep(10 if me < 3 else 0.01)  # the first two hang, the third is quick
            return me
        finally:
            in_flight -= 1

    with anyio.fail_after(2):
        assert await read() == 3
    assert peak == 3 and in_flight == 0  # the two losers were cancelled before the call returned


async def test_hedge_never_hedges_a_non_idempotent_call() -> None:
    calls = 0

    def idempotent(method: str) -> bool:
        return method == "GET"

    @hedge(idempotent=idempotent, delay=0.01, budget=None)
    async def send(method: str) -> str:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.1)
        return method

    assert await send("POST") == "POST" and calls == 1
    assert await send("GET") == "GET" and calls == 3


async def test_hedge_launches_at_once_after_a_failure_and_raises_when_all_fail() -> None:
    calls = 0

    @hedge(idempotent=True, delay=10, max_hedges=2, budget=None)
    async def read() -> None:
        nonlocal calls
        calls += 1
        raise Flaky(calls)

    with anyio.fail_after(2), pytest.raises(Flaky):
        await read()
    assert calls == 3


def test_hedge_needs_an_async_function() -> None:
    with pytest.raises(ConfigurationError, match="async"):

        @hedge(idempotent=True)
        def read() -> None:
            pass


async def test_the_open_refusal_is_a_complete_circuit_open_error() -> None:
    """The refusal path builds its error without the __init__ chain: it must be the same error."""
    import httpx

    clock = ManualClock()
    breaker = circuit_breaker("quick-refusal", consecutive_failures=1, minimum_calls=1, window=10, clock=clock)

    @breaker
    async def call() -> None:
        raise Flaky

    with pytest.raises(Flaky):
        await call()
    clock.advance(2)
    with pytest.raises(CircuitOpenError) as info:
        await call()
    error = info.value
    assert str(error) == "circuit breaker 'quick-refusal' is open" and error.args == (str(error),)
    assert error.retry_after == pytest.approx(3.0) and error.origin == "quick-refusal"
    assert error.status == 503 and error.retryable and isinstance(error, httpx.TransportError)
    assert error.headers["Retry-After"] == "3"
    with pytest.raises(RuntimeError):
        error.request  # noqa: B018 - like any httpx error raised without a request
