"""Overhead of the outbound transports against a loopback uvicorn origin, in one run.

    python benchmarks/client.py [--calls 2000] [--rounds 5]

Every variant sends the same sequential GETs over keep-alive to one uvicorn worker (a separate
process, stopped by its pid). Variants run interleaved, round after round, and the table reports
the median over rounds of the mean time per call, and its overhead against bare httpx measured in
the same rounds. Then the time to refuse a call with an open breaker, at the transport and through
the client, against pybreaker's open-state refusal.

Peers (the ``bench`` extra): httpx-retries, pybreaker.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from asgi_resilience import (  # noqa: E402
    AsyncCircuitBreakerTransport,
    AsyncResilientTransport,
    AsyncRetryTransport,
    BreakerPolicy,
    CircuitBreakerTransport,
    CircuitOpenError,
    ResilientTransport,
    RetryTransport,
)
from benchmarks._support import Uvicorn, print_table  # noqa: E402

try:
    import httpx_retries
except ImportError:  # pragma: no cover - optional peer
    httpx_retries = None
try:
    import pybreaker
except ImportError:  # pragma: no cover - optional peer
    pybreaker = None

MAX_SECONDS = 240.0


def sync_variants(url: str) -> dict[str, Callable[[], httpx.Client]]:
    variants: dict[str, Callable[[], httpx.Client]] = {
        "bare httpx": lambda: httpx.Client(),
        "RetryTransport": lambda: httpx.Client(transport=RetryTransport(telemetry=False)),
        "CircuitBreakerTransport": lambda: httpx.Client(transport=CircuitBreakerTransport(telemetry=False)),
        "ResilientTransport": lambda: httpx.Client(transport=ResilientTransport(telemetry=False)),
        "ResilientTransport (telemetry on)": lambda: httpx.Client(transport=ResilientTransport()),
    }
    if httpx_retries is not None:
        variants["httpx-retries RetryTransport"] = lambda: httpx.Client(transport=httpx_retries.RetryTransport())
    return variants


def async_variants(url: str) -> dict[str, Callable[[], httpx.AsyncClient]]:
    variants: dict[str, Callable[[], httpx.AsyncClient]] = {
        "bare httpx": lambda: httpx.AsyncClient(),
        "AsyncRetryTransport": lambda: httpx.AsyncClient(transport=AsyncRetryTransport(telemetry=False)),
        "AsyncCircuitBreakerTransport": lambda: httpx.AsyncClient(
            transport=AsyncCircuitBreakerTransport(telemetry=False)
        ),
        "AsyncResilientTransport": lambda: httpx.AsyncClient(transport=AsyncResilientTransport(telemetry=False)),
    }
    if httpx_retries is not None:
        variants["httpx-retries RetryTransport"] = lambda: httpx.AsyncClient(
            transport=httpx_retries.RetryTransport()
        )
    return variants


def run_sync(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    clients = {name: make() for name, make in sync_variants(url).items()}
    calls_for: dict[str, Callable[[], object]] = {name: (lambda c=c: c.get(url)) for name, c in clients.items()}
    if pybreaker is not None:
        breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
        bare = httpx.Client()
        clients["pybreaker around bare httpx"] = bare
        calls_for["pybreaker around bare httpx"] = lambda: breaker.call(bare.get, url)
    samples: dict[str, list[float]] = {name: [] for name in calls_for}
    stop = time.monotonic() + MAX_SECONDS
    for fn in calls_for.values():  # warm up connections
        for _ in range(50):
            fn()
    for _ in range(rounds):
        for name, fn in calls_for.items():
            if time.monotonic() > stop:
                break
            started = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - started) / calls)
    for client in clients.values():
        client.close()
    return samples


async def run_async(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    clients = {name: make() for name, make in async_variants(url).items()}
    samples: dict[str, list[float]] = {name: [] for name in clients}
    stop = time.monotonic() + MAX_SECONDS
    for client in clients.values():
        for _ in range(50):
            await client.get(url)
    for _ in range(rounds):
        for name, client in clients.items():
            if time.monotonic() > stop:
                break
            started = time.perf_counter()
            for _ in range(calls):
                await client.get(url)
            samples[name].append((time.perf_counter() - started) / calls)
    for client in clients.values():
        await client.aclose()
    return samples


def overhead_rows(samples: dict[str, list[float]]) -> list[list[str]]:
    base = statistics.median(samples["bare httpx"])
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        ratio = median / base
        rows.append([name, f"{median * 1e6:.0f}", f"{ratio:.3f}", f"{(ratio - 1) * 100:+.1f} %"])
    return rows


def time_per_call(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        try:
            fn()
        except Exception:  # the refusal under test
            pass
    return (time.perf_counter() - started) / n


async def atime_per_call(fn: Callable[[], Awaitable[object]], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        try:
            await fn()
        except Exception:
            pass
    return (time.perf_counter() - started) / n


async def rejection_rows(n: int) -> list[list[str]]:
    url = "http://127.0.0.1:9/never"  # nothing is sent while the breaker is open
    policy = BreakerPolicy(consecutive_failures=1, break_duration=600.0, max_break_duration=600.0)

    class Failing(httpx.BaseTransport, httpx.AsyncBaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("down", request=request)

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("down", request=request)

    sync_transport = CircuitBreakerTransport(Failing(), policy=policy, shared=False, telemetry=False)
    async_transport = AsyncCircuitBreakerTransport(Failing(), policy=policy, shared=False, telemetry=False)
    request = httpx.Request("GET", url)
    for transport_call in (lambda: sync_transport.handle_request(request),):
        try:
            transport_call()
        except httpx.ConnectError:
            pass
    try:
        await async_transport.handle_async_request(request)
    except httpx.ConnectError:
        pass

    rows: list[list[str]] = []

    def check(fn: Callable[[], object]) -> None:
        try:
            fn()
        except CircuitOpenError:
            return
        raise AssertionError("the breaker is not open")

    check(lambda: sync_transport.handle_request(request))
    rows.append(
        ["CircuitBreakerTransport.handle_request", f"{time_per_call(lambda: sync_transport.handle_request(request), n) * 1e6:.2f}"]
    )
    async_us = await atime_per_call(lambda: async_transport.handle_async_request(request), n) * 1e6
    rows.append(["AsyncCircuitBreakerTransport.handle_async_request", f"{async_us:.2f}"])
    with httpx.Client(transport=sync_transport) as client:
        rows.append(["httpx.Client.get through CircuitBreakerTransport", f"{time_per_call(lambda: client.get(url), n) * 1e6:.2f}"])
    if pybreaker is not None:
        breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=600)

        def down() -> None:
            raise ConnectionError("down")

        try:
            breaker.call(down)
        except (ConnectionError, pybreaker.CircuitBreakerError):
            pass
        rows.append(["pybreaker.CircuitBreaker.call (open)", f"{time_per_call(lambda: breaker.call(down), n) * 1e6:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per variant and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    parser.add_argument("--rejections", type=int, default=20000, help="refusals timed per open-breaker row")
    args = parser.parse_args()
    headers = ["variant", "us/call (median)", "x bare", "overhead"]
    with Uvicorn("benchmarks.e2e_origin:app", extra=["--no-server-header"]) as origin:
        url = origin.url + "/data"
        print(f"origin: uvicorn (1 worker) on {origin.url}; {args.calls} sequential GETs x {args.rounds} rounds\n")
        print("Sync httpx.Client")
        print_table(headers, overhead_rows(run_sync(url, args.calls, args.rounds)))
        print("\nAsync httpx.AsyncClient (asyncio)")
        print_table(headers, overhead_rows(asyncio.run(run_async(url, args.calls, args.rounds))))
    print(f"\nRefusal by an open breaker (nothing sent), mean of {args.rejections}")
    print_table(["path", "us/refusal"], asyncio.run(rejection_rows(args.rejections)))


if __name__ == "__main__":
    main()
