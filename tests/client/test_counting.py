"""Every response counts exactly once in the breaker: pre-read, read later, closed early or never read.

Responses whose body is already in memory (``httpx.MockTransport`` handlers returning
``httpx.Response(503)``, respx routes, an ``httpx.ByteStream``) count when they arrive; streaming
bodies count when closed, so errors while reading them count too (issue #6).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
import respx

from asgi_resilience import (
    AsyncCircuitBreakerTransport,
    AsyncResilientTransport,
    BreakerPolicy,
    CircuitBreakerTransport,
    CircuitOpenError,
    ResilientTransport,
    RetryPolicy,
)
from asgi_resilience.client import BreakerTransition, RetryEvent

URL = "http://count.test/items"
POLICY = BreakerPolicy(minimum_calls=3, failure_rate=0.5, break_duration=5.0)
FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.002, budget=None)


class Counter:
    """A MockTransport handler answering ``status`` and counting what reached it."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        status = self.statuses[min(self.calls, len(self.statuses)) - 1]
        return httpx.Response(status, text="body")


def moves(transitions: list[BreakerTransition]) -> list[tuple[str, str]]:
    return [(t.from_state.value, t.to_state.value) for t in transitions]


# -- pre-read responses from MockTransport and respx -----------------------------------------------


async def test_async_breaker_opens_after_minimum_calls_of_mock_503s() -> None:
    handler = Counter(503)
    transitions: list[BreakerTransition] = []
    transport = AsyncCircuitBreakerTransport(
        httpx.MockTransport(handler), policy=POLICY, shared=False, on_transition=transitions.append
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            assert (await client.get(URL)).status_code == 503
        with pytest.raises(CircuitOpenError) as refused:
            await client.get(URL)
    assert handler.calls == 3  # the refusal never reached the transport
    assert refused.value.origin == "http://count.test:80"
    assert moves(transitions) == [("closed", "open")]


def test_sync_breaker_opens_after_minimum_calls_of_mock_503s() -> None:
    handler = Counter(503)
    transport = CircuitBreakerTransport(httpx.MockTransport(handler), policy=POLICY, shared=False)
    with httpx.Client(transport=transport) as client:
        for _ in range(3):
            assert client.get(URL).status_code == 503
        with pytest.raises(CircuitOpenError):
            client.get(URL)
    assert handler.calls == 3


@respx.mock
async def test_breaker_opens_on_respx_503s() -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(503))
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(policy=POLICY, shared=False)) as client:
        for _ in range(3):
            assert (await client.get(URL)).status_code == 503
        with pytest.raises(CircuitOpenError):
            await client.get(URL)
    assert route.call_count == 3


@respx.mock
async def test_respx_503s_count_even_when_never_read_or_closed() -> None:
    """``stream=True`` responses nobody reads or closes: respx's body is in memory, so each counts."""
    route = respx.get(URL).mock(return_value=httpx.Response(503))
    transport = AsyncCircuitBreakerTransport(policy=POLICY, shared=False)
    async with httpx.AsyncClient(transport=transport) as client:
        held = [await client.send(client.build_request("GET", URL), stream=True) for _ in range(3)]
        assert [r.is_closed for r in held] == [False, False, False]
        with pytest.raises(CircuitOpenError):
            await client.get(URL)
    assert route.call_count == 3


@respx.mock
def test_sync_breaker_opens_on_respx_503s() -> None:
    respx.get(URL).mock(return_value=httpx.Response(503))
    transport = CircuitBreakerTransport(policy=POLICY, shared=False)
    with httpx.Client(transport=transport) as client:
        for _ in range(3):
            client.get(URL)
        with pytest.raises(CircuitOpenError):
            client.get(URL)


async def test_byte_stream_response_counts_once_whether_read_or_not() -> None:
    """Used without a client (nobody reads it), then read and closed: one result, not two."""
    policy = BreakerPolicy(minimum_calls=2, failure_rate=1.0, break_duration=5.0)
    mock = httpx.MockTransport(lambda request: httpx.Response(503, stream=httpx.ByteStream(b"down")))
    transport = AsyncCircuitBreakerTransport(mock, policy=policy, shared=False)
    first = await transport.handle_async_request(httpx.Request("GET", URL))
    assert not first.is_closed
    assert await first.aread() == b"down"
    await first.aclose()
    second = await transport.handle_async_request(httpx.Request("GET", URL))  # counted twice: refused here
    assert second.status_code == 503  # never read nor closed, and still counted:
    with pytest.raises(CircuitOpenError):
        await transport.handle_async_request(httpx.Request("GET", URL))


async def test_4xx_from_mock_transport_do_not_count() -> None:
    handler = Counter(404, 429, 400, 404, 409, 404)
    transitions: list[BreakerTransition] = []
    transport = AsyncCircuitBreakerTransport(
        httpx.MockTransport(handler), policy=POLICY, shared=False, on_transition=transitions.append
    )
    async with httpx.AsyncClient(transport=transport) as client:
        statuses = [(await client.get(URL)).status_code for _ in range(6)]
    assert statuses == [404, 429, 400, 404, 409, 404]
    assert handler.calls == 6
    assert transitions == []


async def test_pre_read_success_closes_a_half_open_breaker() -> None:
    handler = Counter(503, 503, 503, 200, 200)
    transitions: list[BreakerTransition] = []
    policy = BreakerPolicy(minimum_calls=3, failure_rate=0.5, break_duration=0.05, max_break_duration=0.05)
    transport = AsyncCircuitBreakerTransport(
        httpx.MockTransport(handler), policy=policy, shared=False, on_transition=transitions.append
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            await client.get(URL)
        with pytest.raises(CircuitOpenError):
            await client.get(URL)
        await anyio.sleep(0.07)  # the break elapses: the next call is the single probe
        assert (await client.get(URL)).status_code == 200
        assert (await client.get(URL)).status_code == 200  # closed: no probe limit any more
    assert moves(transitions) == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_sync_pre_read_success_closes_a_half_open_breaker() -> None:
    handler = Counter(500, 500, 500, 200)
    transitions: list[BreakerTransition] = []
    policy = BreakerPolicy(minimum_calls=3, failure_rate=0.5, break_duration=0.05, max_break_duration=0.05)
    transport = CircuitBreakerTransport(
        httpx.MockTransport(handler), policy=policy, shared=False, on_transition=transitions.append
    )
    with httpx.Client(transport=transport) as client:
        for _ in range(3):
            client.get(URL)
        time.sleep(0.07)
        assert client.get(URL).status_code == 200
    assert moves(transitions) == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


# -- streaming responses keep counting at close ---------------------------------------------------


class Drip(httpx.AsyncByteStream, httpx.SyncByteStream):
    """A streaming body (not in memory) that may fail after its first chunk."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"first"
        if self.fail:
            raise httpx.ReadError("connection reset while reading the body")
        yield b"second"

    def __iter__(self) -> Iterator[bytes]:
        yield b"first"
        if self.fail:
            raise httpx.ReadError("connection reset while reading the body")
        yield b"second"

    async def aclose(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True


async def test_streaming_200_that_fails_mid_body_counts_as_a_failure_at_close() -> None:
    policy = BreakerPolicy(minimum_calls=2, failure_rate=1.0, break_duration=5.0)
    transport = AsyncCircuitBreakerTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, stream=Drip(fail=True))), policy=policy, shared=False
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(2):
            with pytest.raises(httpx.ReadError):
                await client.get(URL)
        with pytest.raises(CircuitOpenError):
            await client.get(URL)


async def test_streaming_503_counts_when_closed_not_before() -> None:
    policy = BreakerPolicy(minimum_calls=2, failure_rate=1.0, break_duration=5.0)
    bodies: list[Drip] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(Drip())
        return httpx.Response(503, stream=bodies[-1])

    transport = AsyncCircuitBreakerTransport(httpx.MockTransport(handler), policy=policy, shared=False)
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", URL) as first, client.stream("GET", URL) as second:
            assert (first.status_code, second.status_code) == (503, 503)
            third = await client.get(URL)  # the two open streams have not counted yet
            assert third.status_code == 503
        # now all three counted (two closed early, unread), exactly once each
        with pytest.raises(CircuitOpenError):
            await client.get(URL)
    assert [b.closed for b in bodies] == [True, True, True]


def test_sync_streaming_200_that_fails_mid_body_counts_as_a_failure() -> None:
    policy = BreakerPolicy(minimum_calls=2, failure_rate=1.0, break_duration=5.0)
    transport = CircuitBreakerTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, stream=Drip(fail=True))), policy=policy, shared=False
    )
    with httpx.Client(transport=transport) as client:
        for _ in range(2):
            with pytest.raises(httpx.ReadError):
                client.get(URL)
        with pytest.raises(CircuitOpenError):
            client.get(URL)


# -- slow calls are measured to the response headers ----------------------------------------------


async def test_holding_a_streaming_body_open_is_not_a_slow_call() -> None:
    policy = BreakerPolicy(minimum_calls=2, slow_call_duration=0.03, slow_call_rate=1.0, break_duration=5.0)
    transport = AsyncCircuitBreakerTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, stream=Drip())), policy=policy, shared=False
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            async with client.stream("GET", URL) as response:
                await anyio.sleep(0.05)  # the caller is slow, not the origin
                assert await response.aread() == b"firstsecond"
        assert (await client.get(URL)).status_code == 200


async def test_a_slow_pre_read_response_is_a_slow_call() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(0.04)
        return httpx.Response(200, text="late")

    policy = BreakerPolicy(minimum_calls=2, slow_call_duration=0.03, slow_call_rate=1.0, break_duration=5.0)
    transitions: list[BreakerTransition] = []
    transport = AsyncCircuitBreakerTransport(
        httpx.MockTransport(slow), policy=policy, shared=False, on_transition=transitions.append
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(2):
            assert (await client.get(URL)).status_code == 200
        with pytest.raises(CircuitOpenError):
            await client.get(URL)
    assert [t.reason for t in transitions] == ["slow_call_rate"]


# -- the breaker inside the standard pipeline, and retries with respx end to end ------------------


async def test_resilient_transport_breaker_counts_every_mock_attempt() -> None:
    """Each retried attempt counts once: 2 calls x 2 attempts of 503 reach minimum_calls=4."""
    handler = Counter(503)
    transport = AsyncResilientTransport(
        httpx.MockTransport(handler),
        retry=RetryPolicy(attempts=2, backoff_initial=0.001, backoff_max=0.002, budget=None),
        breaker=BreakerPolicy(minimum_calls=4, failure_rate=0.5, break_duration=5.0),
        shared=False,
        max_concurrent=1,
        total_timeout=5,
        attempt_timeout=5,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(2):
            assert (await client.get(URL)).status_code == 503  # one slot: each call released it
        with pytest.raises(CircuitOpenError):
            await client.get(URL)
    assert handler.calls == 4


def test_sync_resilient_transport_breaker_counts_mock_503s() -> None:
    handler = Counter(503)
    transport = ResilientTransport(
        httpx.MockTransport(handler), retry=None, breaker=POLICY, shared=False, total_timeout=5, attempt_timeout=5
    )
    with httpx.Client(transport=transport) as client:
        for _ in range(3):
            client.get(URL)
        with pytest.raises(CircuitOpenError):
            client.get(URL)
    assert handler.calls == 3


@respx.mock
async def test_respx_fail_then_succeed_through_the_resilient_transport() -> None:
    route = respx.get(URL).mock(side_effect=[httpx.Response(503), httpx.Response(502), httpx.Response(200, text="ok")])
    retries: list[RetryEvent] = []
    transport = AsyncResilientTransport(retry=FAST, shared=False, on_retry=retries.append)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(URL)
    assert (response.status_code, response.text) == (200, "ok")
    assert route.call_count == 3
    assert [(e.attempt, e.status) for e in retries] == [(1, 503), (2, 502)]
    assert [a.outcome for a in response.extensions["resilience"]] == ["failure", "failure", "success"]


@respx.mock
async def test_respx_retry_after_is_honoured_end_to_end() -> None:
    route = respx.get(URL).mock(
        side_effect=[httpx.Response(503, headers={"Retry-After": "1"}), httpx.Response(200, text="ok")]
    )
    retries: list[RetryEvent] = []
    transport = AsyncResilientTransport(retry=FAST, shared=False, on_retry=retries.append)
    async with httpx.AsyncClient(transport=transport) as client:
        started = time.monotonic()
        response = await client.get(URL)
    assert response.status_code == 200
    assert route.call_count == 2
    assert [e.delay for e in retries] == [1.0]  # the server's wait, not the 1-2 ms backoff
    assert time.monotonic() - started >= 0.95


@respx.mock
async def test_respx_retry_after_past_the_deadline_returns_the_response() -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(503, headers={"Retry-After": "30"}))
    transport = AsyncResilientTransport(retry=FAST, shared=False, total_timeout=2, attempt_timeout=2)
    async with httpx.AsyncClient(transport=transport) as client:
        started = time.monotonic()
        response = await client.get(URL)
    assert response.status_code == 503
    assert route.call_count == 1  # never re-sent before the server said so
    assert time.monotonic() - started < 1.0


@respx.mock
def test_sync_respx_fail_then_succeed() -> None:
    route = respx.get(URL).mock(side_effect=[httpx.ConnectError("refused"), httpx.Response(200)])
    with httpx.Client(transport=ResilientTransport(retry=FAST, shared=False)) as client:
        assert client.get(URL).status_code == 200
    assert route.call_count == 2
