"""Circuit breaker and resilient transports against the real loopback origin."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from asgi_resilience import (
    AsyncCircuitBreakerTransport,
    AsyncResilientTransport,
    BreakerPolicy,
    CircuitBreakerTransport,
    CircuitOpenError,
    ResilientTransport,
    RetryPolicy,
)
from asgi_resilience.client import BreakerTransition
from asgi_resilience.observability import Telemetry

from .conftest import Served, closed_port


def total(telemetry: Telemetry, metric: str, **attributes: str) -> float:
    """The recorded total of ``metric`` for exactly these attributes (whatever their order)."""
    wanted = sorted(attributes.items())
    found = [v for k, v in telemetry.instrument(metric).totals.items() if sorted(k) == wanted]
    return sum(found) if found else 0


SMALL = BreakerPolicy(minimum_calls=5, failure_rate=0.5, break_duration=0.2, max_break_duration=1.0)


async def test_opens_on_failure_rate_not_below_minimum_calls(origin: Served) -> None:
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(policy=SMALL), base_url=origin.url) as client:
        for _ in range(4):
            assert (await client.get("/status", params={"key": "b", "code": 500})).status_code == 500
        # 4 failures < minimum_calls: still closed, the fifth call reaches the origin
        assert (await client.get("/status", params={"key": "b", "code": 500})).status_code == 500
        assert origin.log.hits["b"] == 5
        started = time.perf_counter()
        with pytest.raises(CircuitOpenError) as info:
            await client.get("/status", params={"key": "b"})
        assert time.perf_counter() - started < 0.05
    assert origin.log.hits["b"] == 5  # refused without touching the network
    exc = info.value
    assert isinstance(exc, httpx.TransportError)
    assert exc.origin == f"http://127.0.0.1:{origin.port}"
    assert exc.retry_after is not None and 0 < exc.retry_after <= 0.2


async def test_rate_below_threshold_keeps_it_closed(origin: Served) -> None:
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(policy=SMALL), base_url=origin.url) as client:
        for i in range(20):
            path = "/status" if i % 3 == 0 else "/slow"
            await client.get(path, params={"key": "m", "ms": 0, "code": 500})
    assert origin.log.hits["m"] == 20


async def test_4xx_never_counts(origin: Served) -> None:
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(policy=SMALL), base_url=origin.url) as client:
        for _ in range(10):
            assert (await client.get("/status", params={"key": "4", "code": 404})).status_code == 404
    assert origin.log.hits["4"] == 10


async def open_breaker(client: httpx.AsyncClient, key: str = "open") -> None:
    for _ in range(SMALL.minimum_calls):
        await client.get("/status", params={"key": key, "code": 500})
    with pytest.raises(CircuitOpenError):
        await client.get("/status", params={"key": key})


async def test_single_probe_under_100_concurrent_callers_then_closes(origin: Served) -> None:
    transitions: list[BreakerTransition] = []
    transport = AsyncCircuitBreakerTransport(policy=SMALL, on_transition=transitions.append)
    async with httpx.AsyncClient(
        transport=transport, base_url=origin.url, limits=httpx.Limits(max_connections=200)
    ) as client:
        await open_breaker(client)
        await asyncio.sleep(0.25)  # break_duration elapses

        async def caller() -> int | str:
            try:
                response = await client.get("/slow", params={"key": "probe", "ms": 200})
            except CircuitOpenError:
                return "rejected"
            return response.status_code

        results = await asyncio.gather(*(caller() for _ in range(100)))
        assert results.count(200) == 1
        assert results.count("rejected") == 99
        assert origin.log.hits["probe"] == 1
        # the probe succeeded: closed again, traffic flows
        assert (await client.get("/slow", params={"key": "after", "ms": 0})).status_code == 200
    assert [(t.from_state.value, t.to_state.value) for t in transitions] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


async def test_failed_probe_reopens_with_doubled_break(origin: Served) -> None:
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(policy=SMALL), base_url=origin.url) as client:
        await open_breaker(client)
        await asyncio.sleep(0.25)
        assert (await client.get("/status", params={"key": "p", "code": 502})).status_code == 502
        with pytest.raises(CircuitOpenError) as info:
            await client.get("/status", params={"key": "p"})
    assert info.value.retry_after is not None and 0.2 < info.value.retry_after <= 0.4


async def test_per_origin_isolation(origin: Served) -> None:
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(policy=SMALL)) as client:
        for _ in range(5):
            await client.get(f"{origin.url}/status", params={"key": "iso", "code": 500})
        with pytest.raises(CircuitOpenError):
            await client.get(f"{origin.url}/slow", params={"ms": 0})
        other = await client.get(f"{origin.alias_url}/slow", params={"ms": 0, "key": "other"})
    assert other.status_code == 200


async def test_breakers_are_shared_by_clients_of_the_process_unless_private(origin: Served) -> None:
    first = httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(policy=SMALL), base_url=origin.url)
    second = httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(policy=SMALL), base_url=origin.url)
    private = httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(policy=SMALL, shared=False), base_url=origin.url)
    async with first, second, private:
        await open_breaker(first)
        with pytest.raises(CircuitOpenError):
            await second.get("/slow", params={"ms": 0})
        assert (await private.get("/slow", params={"ms": 0})).status_code == 200


async def test_connection_errors_count_as_failures() -> None:
    policy = BreakerPolicy(minimum_calls=2, break_duration=5.0)
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(policy=policy)) as client:
        url = f"http://127.0.0.1:{closed_port()}/"
        for _ in range(2):
            with pytest.raises(httpx.ConnectError):
                await client.get(url)
        with pytest.raises(CircuitOpenError):
            await client.get(url)


async def test_20_concurrent_slow_calls_are_not_serialised(origin: Served) -> None:
    transport = AsyncCircuitBreakerTransport(policy=SMALL)
    async with httpx.AsyncClient(transport=transport, base_url=origin.url) as client:
        started = time.monotonic()
        await client.get("/slow", params={"ms": 300})
        one = time.monotonic() - started
        started = time.monotonic()
        responses = await asyncio.gather(*(client.get("/slow", params={"ms": 300}) for _ in range(20)))
        twenty = time.monotonic() - started
    assert all(r.status_code == 200 for r in responses)
    assert twenty < 5 * one  # serialised would be 20x


def test_sync_breaker_from_many_threads_is_not_serialised(origin: Served) -> None:
    transport = CircuitBreakerTransport(policy=SMALL)
    with httpx.Client(transport=transport, base_url=origin.url) as client:
        started = time.monotonic()
        client.get("/slow", params={"ms": 300})
        one = time.monotonic() - started
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=20) as pool:
            codes = list(pool.map(lambda _: client.get("/slow", params={"ms": 300}).status_code, range(20)))
        twenty = time.monotonic() - started
    assert codes == [200] * 20
    assert twenty < 5 * one


def test_sync_resilient_client_from_many_threads(origin: Served) -> None:
    telemetry = Telemetry()
    transport = ResilientTransport(
        retry=RetryPolicy(backoff_initial=0.001, budget=None),
        # 20 threads fail their first attempts together: keep the breaker out of this test
        breaker=BreakerPolicy(minimum_calls=1000),
        telemetry=telemetry,
    )
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                response = client.get("/flaky", params={"key": f"t{n}-{i}", "fail": 1})
                assert response.status_code == 200
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    with httpx.Client(transport=transport, base_url=origin.url) as client:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == []
    assert sum(origin.log.hits.values()) == 200  # 100 calls, each failed once then succeeded
    origin_name = f"http://127.0.0.1:{origin.port}"
    assert total(telemetry, "asgi_resilience.client.attempts", origin=origin_name, outcome="failure") == 100
    assert total(telemetry, "asgi_resilience.client.attempts", origin=origin_name, outcome="success") == 100


async def test_resilient_transport_retries_then_breaker_rejects(origin: Served) -> None:
    telemetry = Telemetry()
    transport = AsyncResilientTransport(
        retry=RetryPolicy(attempts=3, backoff_initial=0.001, budget=None),
        breaker=BreakerPolicy(minimum_calls=4, break_duration=5.0),
        telemetry=telemetry,
    )
    async with httpx.AsyncClient(transport=transport, base_url=origin.url) as client:
        first = await client.get("/status", params={"key": "rb", "code": 503})
        assert first.status_code == 503 and origin.log.hits["rb"] == 3
        with pytest.raises(CircuitOpenError):
            await client.get("/status", params={"key": "rb", "code": 503})  # 4th failure opens, 5th refused
    assert origin.log.hits["rb"] == 4
    snapshot = telemetry.snapshot()
    name = f"http://127.0.0.1:{origin.port}"
    breakers = [b for b in snapshot["components"]["circuit_breakers"] if b["origin"] == name]
    assert breakers[0]["state"] == "open"
    assert breakers[0]["recent_transitions"][-1]["to"] == "open"
    assert snapshot["components"]["client_retries"][name]["retries"] >= 3
    assert total(telemetry, "asgi_resilience.circuit_breaker.state", origin=name, state="open") == 1
    assert total(telemetry, "asgi_resilience.circuit_breaker.state", origin=name, state="closed") == 0
    transitions = "asgi_resilience.circuit_breaker.transitions"
    assert total(telemetry, transitions, origin=name, **{"from": "closed", "to": "open"}) == 1
    assert total(telemetry, "asgi_resilience.client.attempts", origin=name, outcome="rejected") == 1


async def test_max_concurrent_limits_calls_in_flight(origin: Served) -> None:
    transport = AsyncResilientTransport(max_concurrent=3, breaker=None)
    async with httpx.AsyncClient(transport=transport, base_url=origin.url) as client:
        origin.log.max_in_flight = 0
        responses = await asyncio.gather(*(client.get("/slow", params={"ms": 50}) for _ in range(12)))
    assert all(r.status_code == 200 for r in responses)
    assert origin.log.max_in_flight <= 3


async def test_max_concurrent_wait_is_bounded_by_the_deadline(origin: Served) -> None:
    transport = AsyncResilientTransport(max_concurrent=1, breaker=None, total_timeout=0.3, attempt_timeout=0.3)
    async with httpx.AsyncClient(transport=transport, base_url=origin.url) as client:
        async with client.stream("GET", "/slow", params={"ms": 0}) as held:
            assert held.status_code == 200
            with pytest.raises(httpx.PoolTimeout):
                await client.get("/slow", params={"ms": 0})
        assert (await client.get("/slow", params={"ms": 0})).status_code == 200  # slot released at close


def test_sync_max_concurrent(origin: Served) -> None:
    transport = ResilientTransport(max_concurrent=2, breaker=None, total_timeout=0.3, attempt_timeout=0.3)
    with httpx.Client(transport=transport, base_url=origin.url) as client:
        with client.stream("GET", "/slow", params={"ms": 0}), client.stream("GET", "/slow", params={"ms": 0}):
            with pytest.raises(httpx.PoolTimeout):
                client.get("/slow", params={"ms": 0})
        assert client.get("/slow", params={"ms": 0}).status_code == 200
