"""Response cache benchmark: in-process ASGI calls on one FastAPI endpoint, ratios against the bare app.

    .venv/bin/python benchmarks/cache.py [--requests 2000]

Rows: the bare app computing the response; CacheMiddleware hit/miss on memory, Redis (L1 off) and
L1+Redis; fastapi-cache2 (``pip install 'asgi-resilience[bench]'``) hit/miss on the same endpoint with
its in-memory and Redis backends. A miss is a new URL every request (compute + store). Redis rows use
a throw-away ``redis-server`` on loopback (stopped by its pid); "redis cmds/req" comes from
``INFO commandstats`` around the measured loop.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asgi_resilience import Cache, CacheMiddleware
from asgi_resilience import cache as cache_endpoint
from asgi_resilience.testing import RedisServer, redis_command_counts

ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def compute(pid: int) -> dict[str, Any]:
    """The work the endpoint does: build and return a product page (100 items)."""
    items = [{"id": i, "name": f"item {pid}-{i}", "price": round(i * 1.17, 2), "tags": ["a", "b"]} for i in range(100)]
    return {"product": pid, "items": items, "total": sum(item["price"] for item in items)}


def fastapi_app(decorate: Callable[[Any], Any] | None = None) -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    async def product(pid: int) -> dict[str, Any]:
        return compute(pid)

    endpoint = decorate(product) if decorate is not None else product
    app.get("/products/{pid}")(endpoint)
    return app


async def call(app: ASGI, path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"accept", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
        "state": {},
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


REPEATS = 3


async def measure(app: ASGI, *, requests: int, miss: bool, offset: int = 0) -> float:
    """Seconds per request: the best of ``REPEATS`` runs (after a warm-up), to damp a busy machine's noise."""
    for i in range(20):
        await call(app, f"/products/{offset + 10_000_000 + i if miss else 1}")
    best = float("inf")
    for repeat in range(REPEATS):
        base = offset + repeat * requests
        started = time.perf_counter()
        for i in range(requests):
            status = await call(app, f"/products/{base + i if miss else 1}")
            if status != 200:
                raise RuntimeError(f"unexpected status {status}")
        best = min(best, (time.perf_counter() - started) / requests)
    return best


def redis_commands(url: str) -> int:
    return sum(redis_command_counts(url).values())


async def ours(backend: str, *, l1: int, requests: int, url: str | None) -> list[tuple[str, float, str]]:
    app = fastapi_app(cache_endpoint(ttl=600))
    shared = Cache(backend, l1_entries=l1, telemetry=False)
    app.add_middleware(CacheMiddleware, cache=shared, telemetry=False)
    label = "memory" if backend == "memory://" else ("L1+Redis" if l1 else "Redis")
    rows = []
    for miss in (False, True):
        before = redis_commands(url) if url else 0
        seconds = await measure(app, requests=requests, miss=miss, offset=0 if not miss else 1_000_000 * (l1 + 1))
        per = f"{(redis_commands(url) - before) / (requests * REPEATS + 20):.2f}" if url else "-"
        rows.append((f"asgi-resilience {label} {'miss' if miss else 'hit'}", seconds, per))
    await shared.aclose()
    return rows


async def fastapi_cache2(backend: str, *, requests: int, url: str | None) -> list[tuple[str, float, str]]:
    try:
        from fastapi_cache import FastAPICache
        from fastapi_cache.backends.inmemory import InMemoryBackend
        from fastapi_cache.decorator import cache as fc_cache
    except ImportError as exc:
        return [(f"fastapi-cache2 {backend} (not installed: {exc.name})", float("nan"), "-")]
    client = None
    if backend == "memory":
        FastAPICache.init(InMemoryBackend(), prefix="bench")
    else:
        from fastapi_cache.backends.redis import RedisBackend
        from redis.asyncio import Redis

        client = Redis.from_url(url or "")
        FastAPICache.init(RedisBackend(client), prefix="bench")
    app = fastapi_app(fc_cache(expire=600))
    rows = []
    for miss in (False, True):
        before = redis_commands(url) if url else 0
        seconds = await measure(app, requests=requests, miss=miss, offset=5_000_000)
        per = f"{(redis_commands(url) - before) / (requests * REPEATS + 20):.2f}" if url else "-"
        rows.append((f"fastapi-cache2 {backend} {'miss' if miss else 'hit'}", seconds, per))
    FastAPICache.reset()
    if client is not None:
        await client.aclose()
    return rows


async def main(requests: int) -> None:
    bare = await measure(fastapi_app(), requests=requests, miss=False)
    rows: list[tuple[str, float, str]] = [("bare FastAPI app (computes every time)", bare, "-")]
    rows += await ours("memory://", l1=0, requests=requests, url=None)
    rows += await fastapi_cache2("memory", requests=requests, url=None)
    with RedisServer() as server:
        rows += await ours(server.url, l1=0, requests=requests, url=server.url)
        rows += await ours(server.url, l1=10_000, requests=requests, url=server.url)
        rows += await fastapi_cache2("redis", requests=requests, url=server.url)
    print(f"{requests} sequential in-process requests per run, best of {REPEATS} runs, Python {sys.version.split()[0]}")
    print()
    print("| run | µs/request | vs bare | redis cmds/req |")
    print("|---|---:|---:|---:|")
    for name, seconds, per in rows:
        print(f"| {name} | {seconds * 1e6:,.0f} | {seconds / bare:.2f}x | {per} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per run (bounded: 1..100000)")
    args = parser.parse_args()
    asyncio.run(main(max(1, min(args.requests, 100_000))))
