"""What each layer costs per request, alone and all together, beside the peers a user would pick instead.

    .venv/bin/python benchmarks/stack.py [--requests 2000] [--rounds 7] [--seconds 4] [--no-uvicorn]

In-process part: a Starlette app with one trivial JSON route (``Cache-Control: no-store``,
``benchmarks/stack_app.py``), each middleware added with ``app.add_middleware``, called
``--requests`` times in a row on one asyncio loop (no server, no network), timed in this process's
CPU time (``time.process_time``: on a shared machine, time spent descheduled is not counted; nothing
here waits on I/O). The configurations are measured in interleaved rounds (a noisy moment hurts all
of them alike); a row shows the median µs/request over the rounds and the median of its per-round
ratio to the bare app measured in the same round. Our layers are measured with telemetry off
(``telemetry=False``) and on (the default: the OpenTelemetry API installed, no SDK configured). The
peers: slowapi's ASGI middleware (memory, one default limit), Starlette's ``BaseHTTPMiddleware``
timeout recipe (``asyncio.wait_for(call_next(...))``) and fastapi-cache2 (memory; on a FastAPI app,
since it is an endpoint decorator for FastAPI, compared with a bare FastAPI app and with our
CacheMiddleware on the same app).

uvicorn part: ``uvicorn benchmarks.stack_app:app`` with 1 and 4 workers, bare and with the whole stack
(rate limiter and cache on a throw-away ``redis-server``), loaded with ``wrk -t2 -c16`` on ``/``
(installed with apt-get when missing; otherwise the built-in generator of ``benchmarks/_support.py``),
bare and stack alternating; the ratio is the median over the rounds. Every process runs on loopback
and is stopped by its pid; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asgi_resilience import CacheMiddleware
from asgi_resilience import cache as cache_endpoint
from asgi_resilience.testing import RedisServer, http_scope
from asgi_resilience.types import ASGIApp, Message
from benchmarks import stack_app
from benchmarks._support import Uvicorn, print_table, raw_pressure

GOALS = {  # the per-layer goal, µs over the bare endpoint (telemetry on adds at most 1 µs per layer)
    "problems": 1.0,
    "rate_limit": 4.0,
    "cache": 4.0,
    "timeout": 3.0,
    "concurrency": 2.0,
}
STACK_GOAL = 2.0  # the whole stack, × the bare endpoint (stretch goal 1.5×)
UVICORN_GOAL = 0.85  # the whole stack's req/s, × the bare app's


_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


async def receive() -> Message:
    return _REQUEST


class Recorder:
    """A ``send`` that keeps the last response status (checked once per configuration)."""

    def __init__(self) -> None:
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


async def _null_send(message: Message) -> None:
    return None


class Config:
    """One measured row: a label, the app, the path it is called on, and its goal in µs (if any)."""

    def __init__(self, label: str, app: ASGIApp, *, path: str = "/", goal: float | None = None, base: str = "bare"):
        self.label = label
        self.app = app
        self.scope = http_scope(path=path, client=("192.0.2.10", 50000))
        self.goal = goal
        self.base = base
        self.times: list[float] = []

    async def check(self) -> None:
        recorder = Recorder()
        for _ in range(3):  # the first call builds Starlette's middleware stack and warms the caches
            await self.app(dict(self.scope), receive, recorder)
        if recorder.status != 200:
            raise RuntimeError(f"{self.label}: status {recorder.status}")

    async def round(self, requests: int) -> None:
        app, scope = self.app, self.scope
        gc.collect()
        started = time.process_time()
        for _ in range(requests):
            await app(scope.copy(), receive, _null_send)  # a fresh scope per request, as a server gives
        self.times.append((time.process_time() - started) / requests * 1e6)


def our_configs() -> list[Config]:
    build = stack_app.build
    configs = [Config("bare endpoint", build())]
    rows: list[tuple[str, tuple[str, ...], str, float | None]] = [
        ("+ ProblemDetailsMiddleware", ("problems",), "/", GOALS["problems"]),
        ("+ RateLimitMiddleware (memory, one rule)", ("rate_limit",), "/", GOALS["rate_limit"]),
        ("+ CacheMiddleware (memory; response not storable)", ("cache",), "/", GOALS["cache"]),
        ("+ CacheMiddleware (memory; hit)", ("cache",), "/cached", 0.0),
        ("+ TimeoutMiddleware(timeout=10)", ("timeout",), "/", GOALS["timeout"]),
        ("+ ConcurrencyLimitMiddleware", ("concurrency",), "/", GOALS["concurrency"]),
        ("all five (problems + rate limit + cache pass + timeout + concurrency)", stack_app.LAYERS, "/", None),
    ]
    for telemetry in (False, True):
        suffix = ", telemetry on" if telemetry else ""
        for label, layers, path, goal in rows:
            if telemetry and goal is not None:
                goal += len(layers)  # the telemetry allowance: +1 µs per layer
            configs.append(Config(label + suffix, build(layers, telemetry=telemetry), path=path, goal=goal))
    return configs


async def _wait_for_call_next(call_next: Any, request: Any) -> Any:
    return await call_next(request)


def peer_configs() -> list[Config]:
    configs: list[Config] = []
    try:
        from slowapi import Limiter
        from slowapi.middleware import SlowAPIASGIMiddleware
        from slowapi.util import get_remote_address
    except ImportError:
        print("slowapi is not installed (pip install 'asgi-resilience[bench]'): its row is skipped", file=sys.stderr)
    else:
        app = stack_app.build()
        app.state.limiter = Limiter(key_func=get_remote_address, default_limits=[stack_app.LIMIT], headers_enabled=True)
        app.add_middleware(SlowAPIASGIMiddleware)
        configs.append(Config("peer: slowapi SlowAPIASGIMiddleware (memory, one limit)", app))

    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import JSONResponse

    async def timeout_recipe(request: Any, call_next: Any) -> Any:
        try:
            return await asyncio.wait_for(call_next(request), timeout=10.0)
        except asyncio.TimeoutError:
            return JSONResponse({"detail": "timeout"}, status_code=504)

    app = stack_app.build()
    app.add_middleware(BaseHTTPMiddleware, dispatch=timeout_recipe)
    configs.append(Config("peer: BaseHTTPMiddleware + asyncio.wait_for timeout recipe", app))
    return configs


def fastapi_configs() -> list[Config]:
    """fastapi-cache2 is a FastAPI endpoint decorator: its rows run on a FastAPI app of their own."""
    try:
        from fastapi import FastAPI
        from fastapi_cache import FastAPICache
        from fastapi_cache.backends.inmemory import InMemoryBackend
        from fastapi_cache.decorator import cache as fc_cache
    except ImportError:
        print("fastapi-cache2 is not installed (pip install 'asgi-resilience[bench]'): rows skipped", file=sys.stderr)
        return []

    def fastapi_app(decorate: Callable[[Any], Any] | None = None) -> Any:
        app = FastAPI()

        async def hello(q: int = 0) -> dict[str, Any]:
            return {"hello": "world", "q": q}

        app.get("/")(decorate(hello) if decorate is not None else hello)
        return app

    FastAPICache.init(InMemoryBackend(), prefix="bench")
    ours_hit = fastapi_app(cache_endpoint(ttl=600))
    ours_hit.add_middleware(CacheMiddleware, telemetry=False)
    ours_pass = fastapi_app()
    ours_pass.add_middleware(CacheMiddleware, telemetry=False)
    return [
        Config("FastAPI: bare endpoint (the base of the FastAPI rows)", fastapi_app(), base="fastapi"),
        Config("FastAPI: CacheMiddleware (memory; not storable)", ours_pass, base="fastapi"),
        Config("FastAPI: CacheMiddleware (memory; hit)", ours_hit, base="fastapi"),
        Config("FastAPI: peer: fastapi-cache2 (memory; hit)", fastapi_app(fc_cache(expire=600)), base="fastapi"),
    ]


async def in_process(requests: int, rounds: int, only: str = "") -> tuple[list[list[str]], dict[str, float]]:
    ours, peers, fastapi = our_configs(), peer_configs(), fastapi_configs()
    if only:  # the bases always run: every ratio is against a base measured in the same rounds
        ours = [c for i, c in enumerate(ours) if i == 0 or only.lower() in c.label.lower()]
        peers = [c for c in peers if only.lower() in c.label.lower()]
        fastapi = [
            c for i, c in enumerate(fastapi) if i == 0 and "fastapi" in only.lower() or only.lower() in c.label.lower()
        ]
    configs = ours + peers + fastapi
    for config in configs:
        await config.check()
    calls_before = stack_app.CALLS["cached"]
    deadline = time.monotonic() + 600
    for _ in range(rounds):
        for config in configs:
            await config.round(requests)
        if time.monotonic() > deadline:
            break
    hit_calls = stack_app.CALLS["cached"] - calls_before
    if hit_calls:
        raise RuntimeError(f"the cache-hit rows called the endpoint {hit_calls} times: they were not hits")
    bases = {"bare": configs[0]}
    if fastapi:
        bases["fastapi"] = fastapi[0]
    rows: list[list[str]] = []
    summary: dict[str, float] = {}
    for config in configs:
        base = bases[config.base]
        median = statistics.median(config.times)
        ratio = statistics.median(t / b for t, b in zip(config.times, base.times, strict=True))
        extra = statistics.median(t - b for t, b in zip(config.times, base.times, strict=True))
        summary[config.label] = ratio
        if config is base:
            rows.append([config.label, f"{median:.1f}", "1.00x", "-", "-"])
            continue
        verdict = "-"
        if config.goal is not None:
            if config.goal == 0.0:  # the hit row: faster than the bare endpoint
                verdict = "met" if ratio < 1.0 else f"missed ({ratio:.2f}x)"
            else:
                verdict = "met" if extra <= config.goal else f"missed by {extra - config.goal:.1f} us"
            verdict = f"{'< bare' if config.goal == 0.0 else f'<= +{config.goal:g}'}: {verdict}"
        elif config.label.startswith("all five"):
            verdict = f"<= {STACK_GOAL:g}x: {'met' if ratio <= STACK_GOAL else 'missed'}"
        rows.append([config.label, f"{median:.1f}", f"{ratio:.2f}x", f"{extra:+.1f}", verdict])
    return rows, summary


# -- uvicorn ----------------------------------------------------------------------------------------


def find_wrk() -> str | None:
    found = shutil.which("wrk")
    if found is None and shutil.which("apt-get") is not None and os.geteuid() == 0:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        subprocess.run(
            ["apt-get", "install", "-y", "wrk"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300
        )
        found = shutil.which("wrk")
    return found


def load(wrk: str | None, url: str, seconds: float) -> tuple[float, int]:
    """(requests per second, non-2xx responses) for ``seconds`` of 16 keep-alive connections on ``url``."""
    if wrk is not None:
        out = subprocess.run(
            [wrk, "-t2", "-c16", f"-d{max(1, round(seconds))}s", url],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        ).stdout  # fmt: skip
        rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
        bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
        errors = re.search(r"Socket errors:.*", out)
        if rate is None:
            raise RuntimeError(f"cannot read wrk's output:\n{out}")
        return float(rate.group(1)), (int(bad.group(1)) if bad else 0) + (1 if errors else 0)
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    result = asyncio.run(raw_pressure(host, int(port), "/", concurrency=16, seconds=seconds))
    total = sum(result.statuses.values())
    return total / seconds, total - result.statuses.get(200, 0) + sum(result.errors.values())


def under_uvicorn(rounds: int, seconds: float) -> tuple[list[list[str]], dict[int, float], str]:
    wrk = find_wrk()
    generator = "wrk -t2 -c16" if wrk else "benchmarks/_support.py raw_pressure, 16 connections"
    rows: list[list[str]] = []
    ratios: dict[int, float] = {}
    with RedisServer() as redis:
        for workers in (1, 4):
            rates: dict[str, list[float]] = {"bare": [], "stack": []}
            for _ in range(rounds):
                for mode in ("bare", "stack"):
                    env = {"STACK_MODE": mode, "REDIS_URL": redis.url}
                    with Uvicorn("benchmarks.stack_app:app", workers=workers, env=env) as server:
                        load(wrk, server.url + "/", 1.0)  # warm-up: connections, Redis scripts
                        rate, bad = load(wrk, server.url + "/", seconds)
                    if bad:
                        raise RuntimeError(f"{mode}, {workers} worker(s): {bad} failed or non-2xx responses")
                    rates[mode].append(rate)
            ratio = statistics.median(s / b for s, b in zip(rates["stack"], rates["bare"], strict=True))
            ratios[workers] = ratio
            rows.append(
                [
                    f"{workers} worker{'s' if workers > 1 else ''}",
                    f"{statistics.median(rates['bare']):,.0f}",
                    f"{statistics.median(rates['stack']):,.0f}",
                    f"{ratio:.2f}x",
                    f">= {UVICORN_GOAL:g}x: {'met' if ratio >= UVICORN_GOAL else 'missed'}",
                ]
            )
    return rows, ratios, generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per round (1..100000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved in-process rounds (1..30)")
    parser.add_argument("--uvicorn-rounds", type=int, default=3, help="bare/stack alternations per worker count")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of load per uvicorn run (1..60)")
    parser.add_argument("--no-uvicorn", action="store_true", help="skip the uvicorn part")
    parser.add_argument("--only", default="", help="in-process rows whose label contains this text (and the bases)")
    args = parser.parse_args()
    if not (1 <= args.requests <= 100_000 and 1 <= args.rounds <= 30 and 1 <= args.uvicorn_rounds <= 10):
        parser.error("--requests must be 1..100000, --rounds 1..30, --uvicorn-rounds 1..10")
    if not 1 <= args.seconds <= 60:
        parser.error("--seconds must be 1..60")
    print(
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.requests} sequential in-process requests per round, median of {args.rounds} interleaved rounds"
    )
    print()
    rows, _ = asyncio.run(in_process(args.requests, args.rounds, args.only))
    print_table(["configuration", "us/request", "vs bare", "us over bare", "goal"], rows)
    if args.no_uvicorn:
        return
    uvicorn_rows, _, generator = under_uvicorn(args.uvicorn_rounds, args.seconds)
    print()
    print(
        f"uvicorn benchmarks.stack_app:app, GET /, {generator}, {args.seconds:g} s per run, limiter and cache on "
        f"Redis, median of {args.uvicorn_rounds} alternating runs"
    )
    print()
    print_table(["uvicorn", "bare req/s", "stack req/s", "stack vs bare", "goal"], uvicorn_rows)


if __name__ == "__main__":
    main()
