"""Hedging in the async transports: idempotent requests only, first good response wins, losers
cancelled (counted in flight at the origin) or closed, hedges paid from the retry budget."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from asgi_resilience import ConfigurationError
from asgi_resilience.client import (
    AsyncResilientTransport,
    AsyncRetryTransport,
    BreakerPolicy,
    HedgePolicy,
    ResilientTransport,
    RetryBudget,
    RetryPolicy,
    RetryTransport,
    async_resilient_client,
    resilient_client,
)
from asgi_resilience.observability import Telemetry
from asgi_resilience.policies import reset_policies
from asgi_resilience.types import Receive, Scope, Send


@pytest.fixture(autouse=True)
def fresh_state() -> Any:
    reset_policies()  # per-origin budgets and breakers are process-wide
    yield
    reset_policies()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Origin:
    """An ASGI origin that counts requests and those in flight; ``slow`` requests hang for 10 s,
    except the ones numbered in ``quick`` (1-based, in arrival order)."""

    def __init__(self, *, quick: set[int], status: dict[int, int] | None = None) -> None:
        self.quick = quick
        self.status = status or {}
        self.arrived = 0
        self.in_flight = 0
        self.peak = 0
        self.methods: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.arrived += 1
        me = self.arrived
        self.methods.append(scope["method"])
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(0.001 if me in self.quick else 10)
            status = self.status.get(me, 200)
            await send({"type": "http.response.start", "status": status, "headers": [(b"x-attempt", str(me).encode())]})
            await send({"type": "http.response.body", "body": str(me).encode()})
        finally:
            self.in_flight -= 1


class Body(httpx.AsyncByteStream):
    """A response body that records whether it was closed."""

    closed = False

    async def __aiter__(self) -> Any:
        yield b"x"

    async def aclose(self) -> None:
        self.closed = True


def counted(telemetry: Telemetry, name: str) -> dict[str, int]:
    return {dict(key)["policy"]: value for key, value in telemetry.instrument(name).totals.items()}


def client(origin: Origin, **options: Any) -> httpx.AsyncClient:
    transport = AsyncResilientTransport(httpx.ASGITransport(app=origin), **options)
    return httpx.AsyncClient(transport=transport, base_url="http://origin")


async def test_a_slow_get_is_hedged_the_first_good_response_wins_and_the_loser_is_cancelled() -> None:
    origin = Origin(quick={2})
    telemetry = Telemetry()
    async with client(origin, hedge=HedgePolicy(delay=0.02), telemetry=telemetry) as http:
        with anyio.fail_after(5):
            response = await http.get("/item")
        assert response.status_code == 200 and response.headers["x-attempt"] == "2"
        assert origin.peak == 2 and origin.arrived == 2
        assert origin.in_flight == 0  # the first attempt was cancelled before get() returned
    assert counted(telemetry, "asgi_resilience.hedge.started") == {"http://origin:80": 1}
    assert counted(telemetry, "asgi_resilience.hedge.won") == {"http://origin:80": 1}


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
async def test_every_idempotent_method_is_hedged(method: str) -> None:
    origin = Origin(quick={2})
    async with client(origin, hedge=HedgePolicy(delay=0.01)) as http:
        with anyio.fail_after(5):
            response = await http.request(method, "/item", content=b"body" if method == "PUT" else None)
    assert response.status_code == 200 and origin.methods == [method, method] and origin.in_flight == 0


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_non_idempotent_request_is_never_hedged(method: str) -> None:
    origin = Origin(quick={1})
    async with client(origin, hedge=HedgePolicy(delay=0)) as http:
        response = await http.request(method, "/item", content=b"once")
    assert response.status_code == 200 and origin.arrived == 1 and origin.peak == 1


async def test_configured_methods_and_the_per_request_switch() -> None:
    origin = Origin(quick={1, 2, 3})
    async with client(origin, hedge=HedgePolicy(delay=0, methods={"post"})) as http:
        await http.get("/item")  # GET is not in methods any more
        assert origin.arrived == 1
        await http.post("/item", content=b"x", extensions={"hedge": False})
        assert origin.arrived == 2


async def test_a_streaming_body_is_never_hedged() -> None:
    origin = Origin(quick={1})

    async def body() -> Any:
        yield b"chunk"

    async with client(origin, hedge=HedgePolicy(delay=0)) as http:
        response = await http.put("/item", content=body())
    assert response.status_code == 200 and origin.arrived == 1


async def test_hedges_are_paid_from_the_retry_budget() -> None:
    origin = Origin(quick={1})
    empty = RetryPolicy(budget=RetryBudget(ratio=0, min_per_second=0))
    async with client(origin, retry=empty, hedge=HedgePolicy(delay=0)) as http:
        origin.quick = {1}
        response = await http.get("/item")
        assert response.status_code == 200 and origin.arrived == 1  # no budget: no hedge

    origin = Origin(quick={2})
    budget = RetryBudget(ratio=0, min_per_second=1)  # one retry (or hedge) per second
    async with client(origin, retry=RetryPolicy(budget=budget), hedge=HedgePolicy(delay=0.01)) as http:
        with anyio.fail_after(5):
            assert (await http.get("/a")).headers["x-attempt"] == "2"
        origin.quick = {3}
        with anyio.fail_after(5):
            response = await http.get("/b")  # the hedge of this call would be the second this second
        assert response.headers["x-attempt"] == "3" and origin.arrived == 3


async def test_a_rejected_response_launches_the_hedge_at_once_and_is_closed() -> None:
    """A 503 (which the retry policy would retry) does not win: the hedge starts without waiting
    for the delay, its 200 wins, and the 503's response is closed."""
    opened: list[Body] = []

    class Recording(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            opened.append(Body())
            return httpx.Response(503 if len(opened) == 1 else 200, stream=opened[-1], request=request)

    transport = AsyncRetryTransport(Recording(), policy=RetryPolicy(attempts=1), hedge=HedgePolicy(delay=60))
    async with httpx.AsyncClient(transport=transport) as http:
        with anyio.fail_after(5):
            async with http.stream("GET", "http://origin/") as response:
                assert response.status_code == 200
                assert len(opened) == 2 and opened[0].closed and not opened[1].closed
            assert opened[1].closed


async def test_every_response_that_does_not_win_is_closed() -> None:
    """Two attempts answer at the same moment: the one not returned is cancelled or, if it
    already had its response, closed; nothing leaks either way."""
    bodies: list[Body] = []
    both = anyio.Event()

    class Twins(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            bodies.append(Body())
            number = len(bodies)
            response = httpx.Response(200, stream=bodies[-1], request=request, headers={"x-attempt": str(number)})
            if number == 1:
                await both.wait()
            else:
                both.set()
            return response

    transport = AsyncRetryTransport(Twins(), hedge=HedgePolicy(delay=0.01))
    async with httpx.AsyncClient(transport=transport) as http:
        with anyio.fail_after(5):
            async with http.stream("GET", "http://origin/") as response:
                winner = int(response.headers["x-attempt"])
                assert len(bodies) == 2 and bodies[2 - winner].closed and not bodies[winner - 1].closed


async def test_all_attempts_failing_hands_the_last_outcome_to_the_retry_policy() -> None:
    origin = Origin(quick={1, 2, 3, 4}, status={1: 503, 2: 503, 3: 503, 4: 200})
    policy = RetryPolicy(attempts=2, backoff_initial=0.001, backoff_max=0.001, budget=None)
    async with client(origin, retry=policy, hedge=HedgePolicy(delay=10), breaker=None) as http:
        with anyio.fail_after(5):
            response = await http.get("/item")
    # attempt 1: the original and its hedge (launched at once on the 503) both answer 503;
    # attempt 2 (a retry after the backoff): the original 503 again, its hedge 200
    assert response.status_code == 200 and origin.arrived == 4


async def test_the_breaker_sees_each_hedged_attempt_and_ignores_the_cancelled_one() -> None:
    origin = Origin(quick={2})
    breaker = BreakerPolicy(consecutive_failures=1, minimum_calls=1, window=10)
    async with client(origin, breaker=breaker, hedge=HedgePolicy(delay=0.01)) as http:
        with anyio.fail_after(5):
            assert (await http.get("/item")).status_code == 200
        origin.quick = {3}
        with anyio.fail_after(5):
            assert (await http.get("/item")).status_code == 200  # the cancellation did not open the breaker


def test_hedging_is_refused_by_the_sync_transports() -> None:
    with pytest.raises(ConfigurationError, match="async transport"):
        RetryTransport(hedge=HedgePolicy())
    with pytest.raises(ConfigurationError, match="async transport"):
        ResilientTransport(hedge=HedgePolicy())
    with pytest.raises(ConfigurationError, match="async transport"):
        resilient_client(hedge=HedgePolicy())
    async_resilient_client(hedge=HedgePolicy())


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"delay": -1}, "delay"),
        ({"delay": "p100"}, "percentile"),
        ({"delay": "fast"}, "percentile"),
        ({"max_hedges": 0}, "max_hedges"),
        ({"methods": "GET"}, "methods"),
    ],
)
def test_hedge_policy_validation(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        HedgePolicy(**options)
    with pytest.raises(ConfigurationError, match="HedgePolicy"):
        AsyncResilientTransport(hedge=0.1)  # type: ignore[arg-type]


def test_methods_are_normalised() -> None:
    assert HedgePolicy(methods=["get", "Head"]).methods == frozenset({"GET", "HEAD"})
