"""Overhead of the outbound transports against a loopback uvicorn origin, in one run.

    python benchmarks/client.py [--calls 300] [--rounds 15]

Every variant sends the same sequential GETs over keep-alive to one uvicorn worker (a separate
process, stopped by its pid). Variants run interleaved, round after round, and the table reports
the median over rounds of the mean wall time per call and of the client's CPU time per call, each
against bare httpx measured in the same rounds (on a busy machine the CPU column is the stable one:
waiting for the origin costs the client no CPU). Then the time to refuse a call with an open
breaker, at the transport and through the client, against pybreaker's open-state refusal.

Peers (the ``bench`` extra): httpx-retries, pybreaker.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from asgi_resilience import (
    AsyncCircuitBreakerTransport,
    AsyncResilientTransport,
    AsyncRetryTransport,
    BreakerPolicy,
    CircuitBreakerTransport,
    CircuitOpenError,
    ResilientTransport,
    RetryTransport,
)
from benchmarks._support import Uvicorn, print_table

try:
    import httpx_retries
except ImportError:  # pragma: no cover - optional peer
    httpx_retries = None
try:
    import pybreaker
except ImportError:  # pragma: no cover - optional peer
    pybreaker = None

MAX_SECONDS = 240.0
_RANDOM = random.Random(6)
T = TypeVar("T")


def shuffled(variants: dict[str, T]) -> list[tuple[str, T]]:
    """A new order every round, so no variant always runs right after another (position bias)."""
    items = list(variants.items())
    _RANDOM.shuffle(items)
    return items


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
        variants["httpx-retries RetryTransport"] = lambda: httpx.AsyncClient(transport=httpx_retries.RetryTransport())
    return variants


def run_sync(url: str, calls: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    clients = {name: make() for name, make in sync_variants(url).items()}
    calls_for: dict[str, Callable[[], object]] = {name: (lambda c=c: c.get(url)) for name, c in clients.items()}
    if pybreaker is not None:
        breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
        bare = httpx.Client()
        clients["pybreaker around bare httpx"] = bare
        calls_for["pybreaker around bare httpx"] = lambda: breaker.call(bare.get, url)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in calls_for}
    stop = time.monotonic() + MAX_SECONDS
    for fn in calls_for.values():  # warm up connections
        for _ in range(50):
            fn()
    for _ in range(rounds):
        for name, fn in shuffled(calls_for):
            if time.monotonic() > stop:
                break
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                fn()
            samples[name].append(((time.perf_counter() - started) / calls, (time.process_time() - cpu) / calls))
    for client in clients.values():
        client.close()
    return samples


async def run_async(url: str, calls: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    clients = {name: make() for name, make in async_variants(url).items()}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    stop = time.monotonic() + MAX_SECONDS
    for client in clients.values():
        for _ in range(50):
            await client.get(url)
    for _ in range(rounds):
        for name, client in shuffled(clients):
            if time.monotonic() > stop:
                break
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                await client.get(url)
            samples[name].append(((time.perf_counter() - started) / calls, (time.process_time() - cpu) / calls))
    for client in clients.values():
        await client.aclose()
    return samples


def overhead_rows(samples: dict[str, list[tuple[float, float]]]) -> list[list[str]]:
    """Wall time per call, and client CPU time per call (what the client itself spends: robust to a
    busy machine, since waiting for the origin costs no CPU)."""
    base_wall = statistics.median(w for w, _ in samples["bare httpx"])
    base_cpu = statistics.median(c for _, c in samples["bare httpx"])
    rows = []
    for name, values in samples.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        rows.append(
            [
                name,
                f"{wall * 1e6:.0f}",
                f"{(wall / base_wall - 1) * 100:+.1f} %",
                f"{cpu * 1e6:.0f}",
                f"{(cpu - base_cpu) * 1e6:+.0f}",
                f"{(cpu / base_cpu - 1) * 100:+.1f} %",
            ]
        )
    return rows


def time_per_call(fn: Callable[[], object], n: int) -> float:
    """Client CPU seconds per call (a refusal does no I/O: CPU time is immune to a busy machine)."""
    started = time.process_time()
    for _ in range(n):
        try:
            fn()
        except Exception:  # the refusal under test
            pass
    return (time.process_time() - started) / n


async def atime_per_call(fn: Callable[[], Awaitable[object]], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        try:
            await fn()
        except Exception:
            pass
    return (time.process_time() - started) / n


class _Failing(httpx.BaseTransport, httpx.AsyncBaseTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down", request=request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down", request=request)


async def rejection_rows(n: int) -> list[list[str]]:
    url = "http://127.0.0.1:9/never"  # nothing is sent while the breaker is open
    policy = BreakerPolicy(consecutive_failures=1, break_duration=600.0, max_break_duration=600.0)
    quiet = {"shared": False, "telemetry": False, "on_transition": lambda transition: None}
    sync_transport = CircuitBreakerTransport(_Failing(), policy=policy, **quiet)  # type: ignore[arg-type]
    async_transport = AsyncCircuitBreakerTransport(_Failing(), policy=policy, **quiet)  # type: ignore[arg-type]
    request = httpx.Request("GET", url)
    for opener in (lambda: sync_transport.handle_request(request),):
        try:
            opener()
        except httpx.ConnectError:
            pass
    try:
        await async_transport.handle_async_request(request)
    except httpx.ConnectError:
        pass
    try:
        sync_transport.handle_request(request)
        raise AssertionError("the breaker is not open")
    except CircuitOpenError:
        pass

    def us(seconds: float) -> str:
        return f"{seconds * 1e6:.2f}"

    rows = [
        [
            "CircuitBreakerTransport.handle_request",
            us(time_per_call(lambda: sync_transport.handle_request(request), n)),
        ],
        [
            "AsyncCircuitBreakerTransport.handle_async_request",
            us(await atime_per_call(lambda: async_transport.handle_async_request(request), n)),
        ],
    ]
    with httpx.Client(transport=sync_transport) as client:
        rows.append(["httpx.Client.get through CircuitBreakerTransport", us(time_per_call(lambda: client.get(url), n))])
    if pybreaker is not None:
        breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=600)

        def down() -> None:
            raise ConnectionError("down")

        try:
            breaker.call(down)
        except (ConnectionError, pybreaker.CircuitBreakerError):
            pass
        rows.append(
            ["pybreaker.CircuitBreaker.call (open), reference", us(time_per_call(lambda: breaker.call(down), n))]
        )
    return rows


class _StubBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        yield b'{"ok": true}'

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"ok": true}'


class _Stub(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Answers at once with a fresh (unread) body, so every wrapper of ours is exercised."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_StubBody())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_StubBody())


def isolated_rows(calls: int, rounds: int, loopback: dict[str, float]) -> list[list[str]]:
    """Client CPU per call over a stub transport: our own cost, free of network noise."""
    sync_clients: dict[str, httpx.Client] = {
        "bare httpx": httpx.Client(transport=_Stub()),
        "RetryTransport": httpx.Client(transport=RetryTransport(_Stub(), telemetry=False)),
        "CircuitBreakerTransport": httpx.Client(transport=CircuitBreakerTransport(_Stub(), telemetry=False)),
        "ResilientTransport": httpx.Client(transport=ResilientTransport(_Stub(), telemetry=False)),
    }
    async_clients: dict[str, httpx.AsyncClient] = {
        "bare httpx": httpx.AsyncClient(transport=_Stub()),
        "AsyncRetryTransport": httpx.AsyncClient(transport=AsyncRetryTransport(_Stub(), telemetry=False)),
        "AsyncCircuitBreakerTransport": httpx.AsyncClient(
            transport=AsyncCircuitBreakerTransport(_Stub(), telemetry=False)
        ),
        "AsyncResilientTransport": httpx.AsyncClient(transport=AsyncResilientTransport(_Stub(), telemetry=False)),
    }
    if httpx_retries is not None:
        sync_clients["httpx-retries RetryTransport"] = httpx.Client(transport=httpx_retries.RetryTransport(_Stub()))
        async_clients["httpx-retries RetryTransport"] = httpx.AsyncClient(
            transport=httpx_retries.RetryTransport(_Stub())
        )
    url = "http://stub.invalid/data"
    samples: dict[tuple[str, str], list[float]] = {}

    async def async_round(client: httpx.AsyncClient) -> float:
        started = time.process_time()
        for _ in range(calls):
            await client.get(url)
        return (time.process_time() - started) / calls

    for _ in range(rounds):
        for name, client in shuffled(sync_clients):
            started = time.process_time()
            for _ in range(calls):
                client.get(url)
            samples.setdefault(("sync", name), []).append((time.process_time() - started) / calls)
        for name, aclient in shuffled(async_clients):
            samples.setdefault(("async", name), []).append(asyncio.run(async_round(aclient)))
    rows = []
    for flavour, names in (("sync", list(sync_clients)), ("async", list(async_clients))):
        base = statistics.median(samples[(flavour, "bare httpx")])
        for name in names:
            values = samples[(flavour, name)]
            cost = statistics.median(values) - base
            share = cost / loopback[flavour] * 100 if name != "bare httpx" else 0.0
            rows.append(
                [flavour, name, f"{statistics.median(values) * 1e6:.1f}", f"{cost * 1e6:+.1f}", f"{share:.1f} %"]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per variant and round")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (the median is reported)")
    parser.add_argument("--rejections", type=int, default=20000, help="refusals timed per open-breaker row")
    args = parser.parse_args()
    headers = ["variant", "wall us/call", "wall vs bare", "client CPU us/call", "CPU us vs bare", "CPU vs bare"]
    with Uvicorn("benchmarks.e2e_origin:app", extra=["--no-server-header"]) as origin:
        url = origin.url + "/data"
        print(f"origin: uvicorn (1 worker) on {origin.url}; {args.calls} sequential GETs x {args.rounds} rounds\n")
        print("Sync httpx.Client")
        sync_samples = run_sync(url, args.calls, args.rounds)
        print_table(headers, overhead_rows(sync_samples))
        print("\nAsync httpx.AsyncClient (asyncio)")
        async_samples = asyncio.run(run_async(url, args.calls, args.rounds))
        print_table(headers, overhead_rows(async_samples))
    loopback = {
        "sync": statistics.median(w for w, _ in sync_samples["bare httpx"]),
        "async": statistics.median(w for w, _ in async_samples["bare httpx"]),
    }
    print("\nOur own cost, isolated: client CPU per call over a stub transport (no network), and that cost")
    print("as a share of one bare loopback call measured above")
    print_table(
        ["flavour", "variant", "CPU us/call", "us vs bare", "share of a loopback call"],
        isolated_rows(max(args.calls * 4, 1000), args.rounds, loopback),
    )
    print(f"\nRefusal by an open breaker (nothing sent), CPU time, mean of {args.rejections}")
    print_table(["path", "us/refusal"], asyncio.run(rejection_rows(args.rejections)))


if __name__ == "__main__":
    main()
