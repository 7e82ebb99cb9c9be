"""RetryTransport / AsyncRetryTransport against a real flaky origin on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from asgi_resilience import (
    AsyncRetryTransport,
    RetriesExhausted,
    RetryBudget,
    RetryPolicy,
    RetryTransport,
)
from asgi_resilience.client import AttemptRecord, RetryEvent
from asgi_resilience.testing import set_testing

from .conftest import RawServer, Served, closed_port

FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.005)


def aclient(transport: httpx.AsyncBaseTransport, base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, base_url=base_url)


async def test_fail_then_succeed(origin: Served) -> None:
    async with aclient(AsyncRetryTransport(policy=FAST), origin.url) as client:
        response = await client.get("/flaky", params={"key": "a", "fail": 2})
    assert response.status_code == 200
    assert response.text == "/flaky 3"
    assert origin.log.hits["a"] == 3
    records = response.extensions["resilience"]
    assert [r.outcome for r in records] == ["failure", "failure", "success"]
    assert [r.status for r in records] == [503, 503, 200]
    assert isinstance(records[0], AttemptRecord) and records[0]["outcome"] == "failure"
    assert records[-1].delay == 0.0 and all(r.delay >= 0 for r in records)


def test_fail_then_succeed_sync(origin: Served) -> None:
    with httpx.Client(transport=RetryTransport(policy=FAST), base_url=origin.url) as client:
        response = client.get("/flaky", params={"key": "s", "fail": 1})
    assert response.status_code == 200
    assert origin.log.hits["s"] == 2


async def test_exhaustion_returns_last_response_and_closes_the_others(origin: Served) -> None:
    # one connection only: a discarded response that was not closed would block the next attempt
    inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(transport=AsyncRetryTransport(inner, policy=FAST), timeout=2.0) as client:
        response = await client.get(f"{origin.url}/status", params={"key": "x"})
    assert response.status_code == 503
    assert response.text == "/status 3"
    assert origin.log.hits["x"] == 3


async def test_raise_on_exhaustion(origin: Served) -> None:
    transport = AsyncRetryTransport(policy=FAST, raise_on_exhaustion=True)
    async with aclient(transport, origin.url) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get("/status", params={"key": "r"})
    exc = info.value
    assert isinstance(exc, httpx.TransportError)
    assert exc.attempts == 3
    assert exc.response is not None and exc.response.status_code == 503 and exc.response.text == "/status 3"
    assert isinstance(exc.__cause__, httpx.HTTPStatusError)


async def test_raise_on_exhaustion_after_errors_chains_the_last_error() -> None:
    transport = AsyncRetryTransport(policy=FAST, raise_on_exhaustion=True)
    async with aclient(transport, f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get("/")
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.attempts == 3


def test_raise_on_exhaustion_sync(origin: Served) -> None:
    with httpx.Client(transport=RetryTransport(policy=FAST, raise_on_exhaustion=True)) as client:
        with pytest.raises(RetriesExhausted) as info:
            client.get(f"{origin.url}/status", params={"key": "rs"})
    assert info.value.response is not None and info.value.response.status_code == 503


# -- Retry-After ---------------------------------------------------------------------------------


async def run_with_events(policy: RetryPolicy, url: str, **kwargs: object) -> tuple[httpx.Response, list[RetryEvent]]:
    events: list[RetryEvent] = []
    transport = AsyncRetryTransport(policy=policy, on_retry=events.append, on_give_up=events.append, **kwargs)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(url)
    return response, events


async def test_retry_after_delta_is_slept(origin: Served) -> None:
    started = time.monotonic()
    response, events = await run_with_events(FAST, f"{origin.url}/flaky?key=d&fail=1&retry_after=1")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert [e.kind for e in events] == ["retry"]
    assert events[0].delay == 1.0 and events[0].reason == "status 503"
    assert 0.95 <= elapsed < 3.0


async def test_retry_after_http_date(origin: Served) -> None:
    with set_testing():
        response, events = await run_with_events(FAST, f"{origin.url}/flaky?key=h&fail=1&retry_after=date%2B3")
    assert response.status_code == 200
    assert 1.0 <= events[0].delay <= 3.0  # HTTP dates have one-second resolution


async def test_retry_after_garbage_falls_back_to_backoff(origin: Served) -> None:
    response, events = await run_with_events(FAST, f"{origin.url}/flaky?key=g&fail=1&retry_after=soon")
    assert response.status_code == 200
    assert events[0].delay <= 0.001


async def test_retry_after_huge_is_capped(origin: Served) -> None:
    policy = RetryPolicy(retry_after_max=0.05)
    started = time.monotonic()
    response, events = await run_with_events(policy, f"{origin.url}/flaky?key=H&fail=1&retry_after=999999")
    assert response.status_code == 200
    assert events[0].delay == 0.05
    assert time.monotonic() - started < 2.0


async def test_retry_after_past_the_deadline_stops_at_once(origin: Served) -> None:
    started = time.monotonic()
    response, events = await run_with_events(FAST, f"{origin.url}/flaky?key=D&fail=1&retry_after=10", total_timeout=2.0)
    elapsed = time.monotonic() - started
    assert response.status_code == 503  # returned as is: no early re-send, no useless sleep
    assert origin.log.hits["D"] == 1
    assert elapsed < 1.0
    assert [(e.kind, e.reason) for e in events] == [("give_up", "retry_after")]


# -- safety by phase -----------------------------------------------------------------------------


async def test_post_not_retried_after_it_was_sent(raw_server: RawServer) -> None:
    before = raw_server.requests
    async with aclient(AsyncRetryTransport(policy=FAST), raw_server.url) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # closed, or reset
            await client.post("/", content=b"pay 10")
    assert raw_server.requests - before == 1


async def test_get_retried_after_a_reset(raw_server: RawServer) -> None:
    before = raw_server.requests
    async with aclient(AsyncRetryTransport(policy=FAST), raw_server.url) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # closed, or reset
            await client.get("/")
    assert raw_server.requests - before == 3


async def test_post_with_idempotency_key_retried_after_a_reset(raw_server: RawServer) -> None:
    before = raw_server.requests
    async with aclient(AsyncRetryTransport(policy=FAST), raw_server.url) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # closed, or reset
            await client.post("/", content=b"pay 10", headers={"Idempotency-Key": "k1"})
    assert raw_server.requests - before == 3


async def test_post_retried_after_a_connect_error() -> None:
    events: list[RetryEvent] = []
    transport = AsyncRetryTransport(policy=FAST, on_retry=events.append)
    async with aclient(transport, f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("/", content=b"pay 10")
    assert [e.reason for e in events] == ["ConnectError", "ConnectError"]


async def test_post_status_retried_only_with_idempotency_key(origin: Served) -> None:
    async with aclient(AsyncRetryTransport(policy=FAST), origin.url) as client:
        plain = await client.post("/flaky", params={"key": "p", "fail": 1}, content=b"a")
        keyed = await client.post(
            "/flaky", params={"key": "k", "fail": 1}, content=b"a", headers={"Idempotency-Key": "123"}
        )
    assert plain.status_code == 503 and origin.log.hits["p"] == 1
    assert keyed.status_code == 200 and origin.log.hits["k"] == 2


# -- streaming request bodies --------------------------------------------------------------------


async def test_generator_body_within_buffer_replays_byte_exact(origin: Served) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"alpha-", b"beta-", b"gamma"):
            yield part

    async with aclient(AsyncRetryTransport(policy=FAST), origin.url) as client:
        response = await client.put("/echo", params={"key": "g", "fail": 1}, content=body())
    assert response.status_code == 200
    assert origin.log.bodies["g"] == [b"alpha-beta-gamma", b"alpha-beta-gamma"]
    assert origin.log.partial["g"] == 0


async def test_generator_body_past_buffer_is_committed_and_original_response_returned(origin: Served) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 1000

    events: list[RetryEvent] = []
    policy = RetryPolicy(backoff_initial=0.001, body_buffer=2000)
    transport = AsyncRetryTransport(policy=policy, on_give_up=events.append)
    async with aclient(transport, origin.url) as client:
        response = await client.put("/echo", params={"key": "G", "fail": 1}, content=body())
    assert response.status_code == 503  # the original answer, not StreamConsumed
    assert origin.log.bodies["G"] == [b"x" * 8000]
    assert origin.log.partial["G"] == 0  # no half-sent request reached the origin
    assert [(e.kind, e.reason) for e in events] == [("give_up", "body")]


def test_sync_generator_body(origin: Served) -> None:
    def body() -> Iterator[bytes]:
        yield b"one-"
        yield b"two"

    with httpx.Client(transport=RetryTransport(policy=FAST), base_url=origin.url) as client:
        response = client.put("/echo", params={"key": "sg", "fail": 2}, content=body())
    assert response.status_code == 200
    assert origin.log.bodies["sg"] == [b"one-two"] * 3


async def test_generator_body_retried_after_connect_error() -> None:
    consumed: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        consumed.append(b"x")
        yield b"x"

    async with aclient(AsyncRetryTransport(policy=FAST), f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(httpx.ConnectError):
            await client.put("/", content=body())
    assert consumed == []  # nothing was read: every attempt could have sent it in full


# -- budget --------------------------------------------------------------------------------------


async def storm(origin: Served, policy: RetryPolicy, callers: int, key: str) -> int:
    transport = AsyncRetryTransport(policy=policy)
    async with httpx.AsyncClient(
        transport=transport, base_url=origin.url, limits=httpx.Limits(max_connections=50), timeout=10
    ) as client:

        async def one() -> None:
            response = await client.get("/status", params={"key": key})
            assert response.status_code == 503

        await asyncio.gather(*(one() for _ in range(callers)))
    return origin.log.hits[key]


async def test_budget_caps_origin_load_under_a_503_storm(origin: Served) -> None:
    # no per-second floor: on a loaded machine the storm may span seconds, and the floor adds 10 per second
    budgeted = RetryPolicy(attempts=3, backoff_initial=0.001, budget=RetryBudget(ratio=0.2, min_per_second=0))
    with set_testing():
        load = await storm(origin, budgeted, 100, "storm")
    assert 100 <= load <= 120


async def test_without_budget_a_storm_multiplies_load(origin: Served) -> None:
    with set_testing():
        load = await storm(origin, RetryPolicy(attempts=3, budget=None), 100, "nobudget")
    assert load == 300


# -- deadline ------------------------------------------------------------------------------------


async def test_total_timeout_caps_a_slow_call(origin: Served) -> None:
    started = time.monotonic()
    async with aclient(AsyncRetryTransport(policy=FAST, total_timeout=0.3), origin.url) as client:
        with pytest.raises(httpx.TimeoutException):
            await client.get("/slow", params={"ms": 3000})
    assert time.monotonic() - started < 1.5


async def test_deadline_covers_reading_the_body(origin: Served) -> None:
    started = time.monotonic()
    async with aclient(AsyncRetryTransport(policy=FAST, total_timeout=0.4), origin.url) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/drip", params={"chunks": 30, "gap_ms": 50})
    assert time.monotonic() - started < 1.5


def test_deadline_covers_reading_the_body_sync(origin: Served) -> None:
    started = time.monotonic()
    with httpx.Client(transport=RetryTransport(policy=FAST, total_timeout=0.4), base_url=origin.url) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get("/drip", params={"chunks": 30, "gap_ms": 50})
    assert time.monotonic() - started < 1.5


async def test_attempt_timeout_then_retry_succeeds(origin: Served) -> None:
    transport = AsyncRetryTransport(policy=FAST, total_timeout=5.0, attempt_timeout=0.2)
    async with aclient(transport, origin.url) as client:
        slow = await client.get("/slow", params={"ms": 50})
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/slow", params={"ms": 1000, "key": "t"})
    assert slow.status_code == 200
    assert origin.log.hits["t"] <= 3


async def test_no_leaked_connections(origin: Served) -> None:
    transport = AsyncRetryTransport(policy=FAST)
    async with aclient(transport, origin.url) as client:
        for i in range(5):
            response = await client.get("/flaky", params={"key": f"leak{i}", "fail": 2})
            assert response.status_code == 200
        async with client.stream("GET", "/status", params={"key": "leak"}) as streamed:
            assert streamed.status_code == 503
    deadline = time.monotonic() + 5
    while origin.open_connections() and time.monotonic() < deadline:  # noqa: ASYNC110 - polling another thread
        await asyncio.sleep(0.02)
    assert origin.open_connections() == 0
