"""Rate-limit benchmark: in-process ASGI calls on one Starlette endpoint, ratios against the bare app.

    .venv/bin/python benchmarks/ratelimit.py [--requests 2000] [--rounds 5]

Rows: the bare app; RateLimitMiddleware (default sliding-window, draft-10 headers) on memory and on
Redis; slowapi (``pip install 'asgi-resilience[bench]'``) with headers on, as its pure ASGI middleware
(SlowAPIASGIMiddleware) and its BaseHTTPMiddleware (SlowAPIMiddleware), on memory and on Redis. Every
row limits every request by client address with a limit that is never reached. Times are the best
of ``--rounds`` interleaved rounds of ``--requests`` sequential requests, chosen by CPU time; "CPU"
is this process's CPU time per request (``time.process_time``: stable on a shared machine, excludes
the Redis server), "wall" is elapsed time (includes the Redis round trips); p99 is over the best
round. Redis rows use a throw-away ``redis-server`` on loopback (stopped by its pid). "cmds/req" is
the total of ``INFO commandstats`` (commands run inside Lua scripts included) and "round trips/req"
counts the client's requests to Redis (a pipeline or a script call is one).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
import redis.asyncio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_resilience import RateLimitMiddleware, Rule
from asgi_resilience.testing import RedisServer, redis_command_counts

ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
LIMIT = "1000000/hour"
ROUND_TRIPS = 0


def count_round_trips() -> None:
    """Count every request a redis-py client (sync or asyncio) sends: one per command or pipeline."""

    def wrap(cls: Any, name: str) -> None:
        original = getattr(cls, name)
        if asyncio.iscoroutinefunction(original):

            async def counted_async(self: Any, *args: Any, **kwargs: Any) -> Any:
                global ROUND_TRIPS
                ROUND_TRIPS += 1
                return await original(self, *args, **kwargs)

            setattr(cls, name, counted_async)
        else:

            def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
                global ROUND_TRIPS
                ROUND_TRIPS += 1
                return original(self, *args, **kwargs)

            setattr(cls, name, counted)

    wrap(redis.client.Redis, "execute_command")
    wrap(redis.client.Pipeline, "execute")
    wrap(redis.asyncio.client.Redis, "execute_command")
    wrap(redis.asyncio.client.Pipeline, "execute")


async def home(request: Request) -> Response:
    return PlainTextResponse("ok")


def bare() -> Any:
    return Starlette(routes=[Route("/", home)])


def ours(storage: str) -> Any:
    return Starlette(
        routes=[Route("/", home)],
        middleware=[Middleware(RateLimitMiddleware, rules=[Rule(LIMIT)], storage=storage, store_timeout=1.0)],
    )


def slowapi(storage: str, *, asgi: bool) -> Any:
    from slowapi import Limiter
    from slowapi.middleware import SlowAPIASGIMiddleware, SlowAPIMiddleware
    from slowapi.util import get_remote_address

    limiter = Limiter(key_func=get_remote_address, default_limits=[LIMIT], headers_enabled=True, storage_uri=storage)
    app = Starlette(
        routes=[Route("/", home)],
        middleware=[Middleware(SlowAPIASGIMiddleware if asgi else SlowAPIMiddleware)],
    )
    app.state.limiter = limiter
    return app


async def call(app: ASGI) -> tuple[int, list[tuple[bytes, bytes]]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("192.0.2.10", 50000),
        "server": ("bench", 80),
    }
    sent: list[dict[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], list(sent[0].get("headers", []))


async def measure(app: ASGI, requests: int) -> tuple[float, float, float]:
    """(wall mean, wall p99, CPU mean) per request over ``requests`` sequential calls, in seconds."""
    samples = []
    cpu_started = time.process_time()
    for _ in range(requests):
        started = time.perf_counter()
        await call(app)
        samples.append(time.perf_counter() - started)
    cpu = (time.process_time() - cpu_started) / requests
    samples.sort()
    return statistics.fmean(samples), samples[max(0, int(len(samples) * 0.99) - 1)], cpu


def commandstats(url: str) -> int:
    return sum(redis_command_counts(url).values())


async def main(requests: int, rounds: int) -> None:
    global ROUND_TRIPS
    count_round_trips()
    try:
        import slowapi as _
    except ImportError:
        print("slowapi is not installed: pip install 'asgi-resilience[bench]'", file=sys.stderr)
        have_slowapi = False
    else:
        have_slowapi = True
    rows: list[list[str]] = []
    with RedisServer() as server:
        url = server.url
        variants: list[tuple[str, Callable[[], Any], bool]] = [
            ("bare app", bare, False),
            ("asgi-resilience, memory", lambda: ours("memory://"), False),
            ("asgi-resilience, Redis", lambda: ours(url), True),
        ]
        if have_slowapi:
            variants += [
                ("slowapi ASGI middleware, memory", lambda: slowapi("memory://", asgi=True), False),
                ("slowapi ASGI middleware, Redis", lambda: slowapi(url, asgi=True), True),
                ("slowapi BaseHTTPMiddleware, memory", lambda: slowapi("memory://", asgi=False), False),
                ("slowapi BaseHTTPMiddleware, Redis", lambda: slowapi(url, asgi=False), True),
            ]
        apps = []
        for label, factory, uses_redis in variants:
            app = factory()
            status, response_headers = await call(app)
            if status != 200:
                raise RuntimeError(f"{label}: status {status}")
            names = sorted({k.decode().lower() for k, _ in response_headers if b"ratelimit" in k.lower()})
            for _ in range(300):  # warm up (connections, scripts, caches)
                await call(app)
            apps.append((label, app, uses_redis, names))
        # rounds interleave the variants, so that load from other processes hits them alike; best round wins
        best: dict[str, tuple[float, float, float]] = {}
        deadline = time.monotonic() + 300
        for _ in range(rounds):
            for label, app, _, _ in apps:
                result = await measure(app, requests)
                if label not in best or result[2] < best[label][2]:
                    best[label] = result
            if time.monotonic() > deadline:
                break
        # Redis traffic, counted in a separate pass
        per_request: dict[str, tuple[float, float]] = {}
        for label, app, uses_redis, _ in apps:
            if uses_redis:
                redis.Redis.from_url(url).config_resetstat()
                before = ROUND_TRIPS
                for _ in range(500):
                    await call(app)
                per_request[label] = ((ROUND_TRIPS - before) / 500, commandstats(url) / 500)
        base_wall, _, base_cpu = best["bare app"]
        for label, _, uses_redis, names in apps:
            wall, p99, cpu = best[label]
            trips, cmds = per_request.get(label, (0.0, 0.0))
            rows.append(
                [
                    label,
                    f"{cpu * 1e6:.1f}",
                    f"{cpu / base_cpu:.2f}x",
                    f"+{(cpu - base_cpu) * 1e6:.1f}" if label != "bare app" else "",
                    f"{wall * 1e6:.1f}",
                    f"{p99 * 1e6:.1f}",
                    f"{wall / base_wall:.2f}x",
                    f"{trips:.2f}" if uses_redis else "-",
                    f"{cmds:.2f}" if uses_redis else "-",
                    ", ".join(names) or "-",
                ]
            )
    headers = [
        "variant",
        "CPU us/req",
        "CPU vs bare",
        "CPU overhead us",
        "wall us/req",
        "wall p99 us",
        "wall vs bare",
        "round trips/req",
        "cmds/req",
        "headers",
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    if not (1 <= options.requests <= 100_000 and 1 <= options.rounds <= 10):
        parser.error("--requests must be 1..100000 and --rounds 1..10")
    asyncio.run(main(options.requests, options.rounds))
