"""An httpx client with retries, a retry budget, a per-origin circuit breaker and one deadline.

python examples/client_resilient.py

It runs offline: a flaky upstream is simulated with ``httpx.MockTransport`` (swap it for nothing,
i.e. ``transport=None``, to use the network). Output, roughly:

    GET /flaky -> 200 after attempts: failure, failure, success
    POST /pay (no Idempotency-Key) -> 503, not re-sent
    POST /pay (Idempotency-Key) -> 200 after attempts: failure, success
      log: circuit breaker for https://upstream.example:443: closed -> open (failure_rate)
    /down: 503 503 then CircuitOpenError(origin=https://upstream.example:443, retry_after=2.0)
    sync client: 200
"""

import asyncio
import itertools
import logging

import httpx

from asgi_resilience import (
    AsyncResilientTransport,
    BreakerPolicy,
    CircuitOpenError,
    RetryBudget,
    RetryPolicy,
    resilient_client,
)

counters = {}


def upstream(request: httpx.Request) -> httpx.Response:
    """Fails the first two calls per path (503 + Retry-After: 0), /down always fails."""
    key = (request.url.path, request.headers.get("idempotency-key"))
    count = counters.setdefault(key, itertools.count(1))
    if request.url.path == "/down" or next(count) <= (1 if request.method == "POST" else 2):
        return httpx.Response(503, headers={"Retry-After": "0"})
    return httpx.Response(200, json={"ok": True})


async def main() -> None:
    transport = AsyncResilientTransport(
        httpx.MockTransport(upstream),
        retry=RetryPolicy(attempts=3, backoff_initial=0.05, budget=RetryBudget(ratio=0.2, min_per_second=10)),
        breaker=BreakerPolicy(minimum_calls=8, failure_rate=0.5, break_duration=2.0),
        total_timeout=5.0,  # the whole call, waits included; also capped by an inbound TimeoutMiddleware deadline
        attempt_timeout=2.0,
        on_give_up=lambda event: None,  # keep the demo output short (the default logs a warning)
    )
    async with httpx.AsyncClient(transport=transport, base_url="https://upstream.example") as client:
        response = await client.get("/flaky")
        outcomes = ", ".join(a.outcome for a in response.extensions["resilience"])
        print(f"GET /flaky -> {response.status_code} after attempts: {outcomes}")

        response = await client.post("/pay", json={"amount": 10})
        print(f"POST /pay (no Idempotency-Key) -> {response.status_code}, not re-sent")
        response = await client.post("/pay", json={"amount": 10}, headers={"Idempotency-Key": "order-42"})
        outcomes = ", ".join(a.outcome for a in response.extensions["resilience"])
        print(f"POST /pay (Idempotency-Key) -> {response.status_code} after attempts: {outcomes}")

        statuses = []
        try:
            for _ in range(10):
                statuses.append((await client.get("/down", extensions={"retry": False})).status_code)
        except CircuitOpenError as exc:  # also an httpx.TransportError
            print(
                f"/down: {' '.join(map(str, statuses))} then CircuitOpenError(origin={exc.origin}, "
                f"retry_after={exc.retry_after:.1f})"
            )

    # the sync twin, built so that limits/http2/verify/proxy still reach the connection pool
    with resilient_client(transport=httpx.MockTransport(upstream), retry=RetryPolicy(backoff_initial=0.01)) as client:
        print("sync client:", client.get("https://upstream.example/other").status_code)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="  log: %(message)s")  # breaker transitions are logged
    asyncio.run(main())
