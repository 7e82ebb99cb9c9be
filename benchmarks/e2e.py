"""End-to-end load and chaos suite: the full stack under uvicorn with real workers, Redis and faults.

    python benchmarks/e2e.py            # full run (4 workers, plus a 1-worker throughput comparison)
    python benchmarks/e2e.py --quick    # the small CI variant (also run by ``pytest -m e2e``)

Starts on 127.0.0.1 only: a throw-away redis-server, a controllable origin (benchmarks/e2e_origin.py)
and the API (benchmarks/e2e_app.py) under ``uvicorn --workers N``, wrapped by the full stack with
Redis-backed rate limits and cache, plus the same API bare for the baseline. Load comes from a bounded
async httpx loop (fixed request count and concurrency, capped in time). Prints a throughput table
(bare vs stack, the ratio is what matters) and one PASS/FAIL line per scenario; exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asgi_resilience.testing import RedisServer
from benchmarks._support import LOAD_TABLE_HEADERS, RawResult, Uvicorn, load, percentile, print_table, raw_pressure


@dataclass
class Sizes:
    workers: int = 4
    exact_keys: int = 10
    exact_per_key: int = 200  # 10 x 200 = 2 000 requests, 100 admitted per key
    concurrency: int = 100
    chaos_seconds: float = 9.0
    outage_at: float = 1.5
    outage_for: float = 5.0
    storm_seconds: float = 10.0
    storm_rate_loops: int = 8
    slow_requests: int = 40
    slow_bursts: int = 5
    stampede_requests: int = 500
    overload_limit: int = 4  # per worker
    overload_seconds: float = 5.0
    throughput_seconds: float = 5.0


QUICK = Sizes(
    exact_keys=4,
    exact_per_key=150,
    concurrency=50,
    chaos_seconds=8.0,
    storm_seconds=5.0,
    storm_rate_loops=6,
    slow_requests=20,
    slow_bursts=3,
    stampede_requests=200,
    overload_seconds=3.0,
    throughput_seconds=1.5,
)


@dataclass
class Outcome:
    name: str
    passed: bool
    details: list[str] = field(default_factory=list)


@dataclass
class Env:
    sizes: Sizes
    redis: RedisServer
    origin: Uvicorn
    api: Uvicorn

    def control(self, **settings: Any) -> None:
        httpx.post(self.origin.url + "/__control", json=settings, timeout=5).raise_for_status()

    def origin_requests(self, reset: bool = False) -> int:
        response = httpx.request("POST" if reset else "GET", self.origin.url + "/__stats", timeout=5)
        return int(response.json()["requests"])

    def redis_get(self, key: str) -> int:
        import redis

        client = redis.Redis.from_url(self.redis.url)
        try:
            return int(client.get(key) or 0)
        finally:
            client.close()


def _is_problem(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/problem+json")


async def exactness(env: Env) -> Outcome:
    sizes = env.sizes
    keys = [f"key-{uuid.uuid4().hex[:8]}-{i}" for i in range(sizes.exact_keys)]
    total = sizes.exact_keys * sizes.exact_per_key
    per_key: dict[str, Counter[int]] = defaultdict(Counter)

    def count(response: httpx.Response) -> None:
        per_key[response.request.headers["x-api-key"]][response.status_code] += 1

    result = await load(
        "exactness",
        env.api.url + "/keyed",
        requests=total,
        concurrency=sizes.concurrency,
        headers=lambda i: {"x-api-key": keys[i % len(keys)]},
        on_response=count,
    )
    admitted = sorted(per_key[k][200] for k in keys)
    passed = admitted == [100] * len(keys) and result.statuses[200] + result.statuses[429] == total
    return Outcome(
        "1. exactness",
        passed,
        [
            f"{total} requests, {len(keys)} keys, {sizes.workers} workers, 100/minute per key",
            f"admitted per key: {admitted}; statuses {dict(result.statuses)} errors {dict(result.errors)}",
        ],
    )


async def redis_outage(env: Env) -> Outcome:
    sizes = env.sizes
    started = time.monotonic()
    records: list[tuple[float, str, int, httpx.Headers]] = []
    cache_path = f"/cached?v={uuid.uuid4().hex[:8]}"
    stop_at = started + sizes.chaos_seconds
    marks: dict[str, float] = {}

    async def chaos() -> None:
        await asyncio.sleep(sizes.outage_at)
        marks["kill"] = time.monotonic() - started
        env.redis.kill()
        await asyncio.sleep(sizes.outage_for)
        await asyncio.to_thread(env.redis.start)
        marks["restart"] = time.monotonic() - started

    async def loop(client: httpx.AsyncClient, n: int) -> None:
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            path = cache_path if (i + n) % 2 else "/keyed"
            try:
                response = await client.get(path, headers={"x-api-key": f"outage-{n}-{i % 50}"})
            except httpx.HTTPError:
                records.append((time.monotonic() - started, path, 0, httpx.Headers()))
                continue
            records.append((time.monotonic() - started, path, response.status_code, response.headers))
            await asyncio.sleep(0.01)

    async with httpx.AsyncClient(base_url=env.api.url, timeout=10) as client:
        await asyncio.gather(chaos(), *(loop(client, n) for n in range(8)))

    statuses = Counter(status for _, _, status, _ in records)
    kill, restart = marks["kill"], marks["restart"]
    outage = [r for r in records if kill + 0.3 < r[0] < restart]
    limited_during = [r for r in outage if r[1] == "/keyed" and r[2] != 200]
    after = [r for r in records if r[0] > restart]
    first_limited = next((t for t, p, s, h in after if p == "/keyed" and "ratelimit" in h), None)
    first_hit = next((t for t, p, s, h in after if p != "/keyed" and "hit" in h.get("cache-status", "")), None)
    limiter_recovery = None if first_limited is None else first_limited - restart
    cache_recovery = None if first_hit is None else first_hit - restart
    cache_during = Counter(s for _, p, s, _ in outage if p != "/keyed")
    passed = (
        statuses.get(500, 0) == 0
        and statuses.get(0, 0) == 0
        and not limited_during  # on_store_error="open": every request admitted while Redis is down
        and cache_during.keys() <= {200}  # the cache serves from the app
        and limiter_recovery is not None
        and limiter_recovery <= 1.0
        and cache_recovery is not None
        and cache_recovery <= 1.0 + 0.25  # + one app computation (200 ms) to refill the entry
    )
    return Outcome(
        "2. redis killed and restarted",
        passed,
        [
            f"{len(records)} requests; Redis killed at {kill:.1f} s, restarted at {restart:.1f} s",
            f"statuses {dict(statuses)}; during the outage: /keyed non-200 {len(limited_during)}, "
            f"/cached {dict(cache_during)}",
            f"recovery after restart: limiter {_fmt(limiter_recovery)}, cache hit {_fmt(cache_recovery)}",
        ],
    )


def _fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


STORM_MAX_BREAK = 4.0  # the breaker's max_break_duration in benchmarks/e2e_app.py


async def origin_storm(env: Env) -> Outcome:
    sizes = env.sizes
    env.origin_requests(reset=True)
    env.control(fail=True, latency=0.0)
    offered = Counter[str]()
    fast_rejections: list[float] = []
    bad: list[str] = []
    recovered: list[int] = []
    started = time.monotonic()
    heal_at = started + sizes.storm_seconds
    # A worker's breaker that opened again just before the origin healed stays open for up to its
    # longest break (max_break_duration=4 s in benchmarks/e2e_app.py), then one probe closes it: the
    # recovery is judged in the second after that.
    end_at = heal_at + STORM_MAX_BREAK + 2.0
    origin_during = 0

    async def loop(client: httpx.AsyncClient) -> None:
        while (now := time.monotonic()) < end_at:
            t0 = time.perf_counter()
            try:
                response = await client.get("/upstream")
            except httpx.HTTPError as exc:
                bad.append(type(exc).__name__)
                continue
            elapsed = time.perf_counter() - t0
            if now < heal_at:
                offered["during"] += 1
                if response.status_code == 503:
                    if not (_is_problem(response) and response.headers.get("retry-after", "").isdigit()):
                        bad.append("503 without problem+json or Retry-After")
                    fast_rejections.append(elapsed)
                elif response.status_code != 502:
                    bad.append(f"status {response.status_code} while the origin fails")
            elif now > end_at - 1.0:
                recovered.append(response.status_code)
            await asyncio.sleep(0.02)

    async def heal() -> None:
        nonlocal origin_during
        await asyncio.sleep(sizes.storm_seconds)
        origin_during = await asyncio.to_thread(env.origin_requests)
        await asyncio.to_thread(env.control, fail=False)

    async with httpx.AsyncClient(base_url=env.api.url, timeout=10) as client:
        await asyncio.gather(heal(), *(loop(client) for _ in range(sizes.storm_rate_loops)))

    ratio = origin_during / max(1, offered["during"])
    p95_reject = sorted(fast_rejections)[int(0.95 * (len(fast_rejections) - 1))] if fast_rejections else None
    passed = (
        ratio <= 1.2
        and len(fast_rejections) > 0
        and p95_reject is not None
        and p95_reject < 0.1
        and not bad
        and recovered
        and all(s == 200 for s in recovered)
    )
    return Outcome(
        "3. origin 503 storm",
        passed,
        [
            f"offered {offered['during']} requests in {sizes.storm_seconds:.0f} s; origin saw {origin_during} "
            f"({ratio:.2f}x, limit 1.2x)",
            f"fast 503 rejections (breaker open): {len(fast_rejections)}, p95 {_fmt(p95_reject)}; problems: {bad[:3]}",
            f"{STORM_MAX_BREAK + 1:.0f}-{STORM_MAX_BREAK + 2:.0f} s after healing: {dict(Counter(recovered))}",
        ],
    )


async def _debug_state(env: Env, probes: int = 40) -> dict[int, int]:
    seen: dict[int, int] = {}
    for _ in range(probes):
        # a new connection each time, so the probes spread over the workers
        async with httpx.AsyncClient(base_url=env.api.url, timeout=5) as client:
            data = (await client.get("/_debug/state")).json()
        seen[data["pid"]] = min(seen.get(data["pid"], 10**9), data["tasks"])
    return seen


def _connections_to(port: int) -> int:
    """ESTABLISHED TCP connections whose remote end is 127.0.0.1:port (from /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote, state = parts[2], parts[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


async def warm_workers(env: Env, path: str, *, seconds: float = 10.0) -> int:
    """Send ``path`` on new connections until every worker has answered it; returns how many did.

    A route's first requests in a worker meet the cache's request collapsing: until a response has
    shown that the route is not stored (hit-for-pass), concurrent misses wait for one leader, across
    workers too. That is the cache's cold start, not what the latency scenarios measure, and a few
    warm-up requests do not reach every worker for sure: the kernel hands connections to whichever
    worker accepts first, and on a busy machine one worker can miss all of them.
    """
    seen: set[str] = set()
    stop_at = time.monotonic() + seconds
    while len(seen) < env.sizes.workers and time.monotonic() < stop_at:
        result = await raw_pressure(
            "127.0.0.1",
            env.api.port,
            path,
            concurrency=2 * env.sizes.workers,
            seconds=1.0,
            requests_per_connection=1,
            capture=(b"x-worker",),
        )
        for status in result.fields:
            seen.update(result.values(status, b"x-worker"))
    return len(seen)


async def slow_origin(env: Env) -> Outcome:
    sizes = env.sizes
    timeout_ms = 500.0  # the /slow route's timeout (benchmarks/e2e_app.py)
    # The route is in service before the origin slows down (the fault is the slowdown, not a cold
    # start): every worker answers it once while the origin is healthy.
    warmed = await warm_workers(env, "/slow")
    tasks_before = await _debug_state(env)
    conns_before = _connections_to(env.origin.port)
    env.control(fail=False, latency=2.0)
    bursts: list[RawResult] = []
    try:
        for _ in range(sizes.slow_bursts):
            bursts.append(
                await raw_pressure(
                    "127.0.0.1",
                    env.api.port,
                    "/slow",
                    concurrency=sizes.slow_requests,
                    seconds=10.0,
                    requests_per_connection=1,
                )
            )
    finally:
        env.control(latency=0.0)
    await asyncio.sleep(2.5)  # the origin's own sleeps end; connections and tasks settle
    tasks_after = await _debug_state(env)
    conns_after = _connections_to(env.origin.port)
    statuses = sum((burst.statuses for burst in bursts), Counter[int]())
    errors = sum((burst.errors for burst in bursts), Counter[str]())
    latencies = [lat for burst in bursts for values in burst.latencies.values() for lat in values]
    slowest = max(latencies) if latencies else float("inf")
    # how late the 504 leaves the server: its server-side time (entering the app to the response head)
    # beyond the route's timeout
    late = [float(v) - timeout_ms for burst in bursts for v in burst.header_values.get(504, []) if v]
    expected = sizes.slow_bursts * sizes.slow_requests
    sample = bursts[-1].samples.get(504, b"").lower() if bursts else b""
    all_504 = statuses == Counter({504: expected}) and b"application/problem+json" in sample
    leaked_tasks = {pid: tasks_after.get(pid, 0) - n for pid, n in tasks_before.items() if tasks_after.get(pid, 0) > n}
    # The 504 leaves within 25 ms of the deadline for the typical request (p50), and every one within
    # half the timeout: a time slice lost to the other processes on a busy 2-core machine delays all the
    # requests of one worker at once, so the tail is bounded in order of magnitude only (a timeout that
    # does not fire shows up as the origin's 2 s). The p99 is printed; docs/performance.md gives it over
    # many runs. The client's own view adds connecting many sockets at once from a load generator that
    # shares the 2 cores; it is printed, and only bounded loosely.
    passed = (
        all_504
        and not errors
        and warmed == sizes.workers
        and percentile(late, 50) <= 25.0
        and max(late, default=float("inf")) <= timeout_ms / 2
        and slowest <= 1.0
        and not leaked_tasks
        and conns_after <= conns_before
    )
    return Outcome(
        "4. slow origin",
        passed,
        [
            f"{sizes.slow_bursts} bursts of {sizes.slow_requests} concurrent requests (new connections), route "
            f"timeout 0.5 s, origin latency 2 s, every worker warmed ({warmed}/{sizes.workers}): statuses "
            f"{dict(statuses)} errors {dict(errors)}",
            f"504 server-side beyond the deadline: p50 {percentile(late, 50):.1f} ms (limit 25), p99 "
            f"{percentile(late, 99):.1f} ms, max {max(late, default=float('nan')):.1f} ms "
            f"(limit {timeout_ms / 2:.0f}); client-side, connecting included: slowest {slowest * 1000:.0f} ms, "
            f"p50 {percentile(latencies, 50) * 1000:.0f} ms",
            f"tasks per worker before {sorted(tasks_before.values())} after {sorted(tasks_after.values())}; "
            f"connections to the origin before {conns_before} after {conns_after}",
        ],
    )


async def stampede(env: Env) -> Outcome:
    sizes = env.sizes
    path = f"/cached?v={uuid.uuid4().hex[:8]}"
    before = env.redis_get("e2e:cached_calls")
    result = await load(
        "stampede", env.api.url + path, requests=sizes.stampede_requests, concurrency=sizes.stampede_requests
    )
    calls = env.redis_get("e2e:cached_calls") - before
    passed = calls <= sizes.workers and result.statuses == Counter({200: sizes.stampede_requests})
    return Outcome(
        "5. cache stampede",
        passed,
        [
            f"{sizes.stampede_requests} concurrent requests for one cold key, {sizes.workers} workers: "
            f"{calls} app calls (limit {sizes.workers}); statuses {dict(result.statuses)}"
        ],
    )


async def overload(env: Env) -> Outcome:
    """Load shedding: 10x the limit in clients; the excess gets fast 503s and the admitted are not slowed.

    What the limiter adds to an admitted request is measured directly: ``x-stack-ms``, the time from
    entering the stack to entering the route. The rest of a request's server-side time is the route's
    own 50 ms plus whatever the machine adds: on 2 cores that also run the load generator and other
    jobs, a worker that loses the CPU for a few hundred ms delays every request it holds, limited or
    not. So the tails are printed next to a control measured at the same time (the same route
    without the limit, ``/work-free``, as many keep-alive clients as the limit has slots) and to the
    unloaded run, and bounded in order of magnitude only: two samples of a few hundred requests do
    not catch the same stalls, and their p99s were seen 3x apart by chance alone.
    """
    sizes = env.sizes
    limit = sizes.overload_limit * sizes.workers
    port = env.api.port
    capture = (b"x-stack-ms",)
    warmed = min(await warm_workers(env, "/work"), await warm_workers(env, "/work-free"))
    unloaded = await raw_pressure("127.0.0.1", port, "/work", concurrency=max(1, limit // 4), seconds=1.5)
    # 10x the limit in clients. A rejected client tries again after 100 ms (sooner than the Retry-After
    # it was given): with instant retries a closed loop turns fast 503s into an unbounded request rate
    # and measures how busy the 2 cores are, not the limiter.
    loaded, control = await asyncio.gather(
        raw_pressure(
            "127.0.0.1",
            port,
            "/work",
            concurrency=limit * 10,
            seconds=sizes.overload_seconds,
            pause_after={503: OVERLOAD_RETRY_PAUSE},
            capture=capture,
        ),
        raw_pressure(
            "127.0.0.1",
            port,
            "/work-free",
            concurrency=limit,
            seconds=sizes.overload_seconds,
            capture=capture,
        ),
    )
    control_ok = control.statuses.keys() <= {200} and not control.errors

    def server_times(result: RawResult, status: int) -> list[float]:
        return [float(v) / 1000 for v in result.header_values.get(status, []) if v]

    p50_unloaded = percentile(server_times(unloaded, 200), 50)
    p99_unloaded = percentile(server_times(unloaded, 200), 99)
    p99_admitted = percentile(server_times(loaded, 200), 99)
    p99_control = percentile(server_times(control, 200), 99)
    p50_control = percentile(server_times(control, 200), 50)
    p50_admitted = percentile(server_times(loaded, 200), 50)
    waits = [float(v) / 1000 for v in loaded.values(200, b"x-stack-ms")]
    p90_wait, p99_wait = percentile(waits, 90), percentile(waits, 99)
    p95_rejected = percentile(server_times(loaded, 503), 95)
    sample = loaded.samples.get(503, b"").lower()
    well_formed = b"content-type: application/problem+json" in sample and b"retry-after:" in sample
    passed = (
        warmed == sizes.workers
        and loaded.statuses.get(503, 0) > 0
        and well_formed
        and loaded.statuses.keys() <= {200, 503}
        and not loaded.errors
        and control_ok
        # admitted without waiting for a slot: the wait before the route is a tenth of a route call at
        # most (a queue would make it several calls; 160 clients on 16 slots, about ten)
        and p90_wait <= p50_unloaded / 10
        # a rejection takes less than a route call
        and p95_rejected < p99_unloaded
        # the overload does not take the server down for everyone (order of magnitude)
        and p50_admitted <= 10 * p50_unloaded
        and p50_control <= 10 * p50_unloaded
    )
    rate = sum(loaded.statuses.values()) / sizes.overload_seconds

    def ms(value: float) -> str:
        return f"{value * 1000:.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"

    return Outcome(
        "6. overload",
        passed,
        [
            f"limit {limit} ({sizes.overload_limit} per worker), {limit * 10} concurrent clients (a rejected "
            f"one retries after {OVERLOAD_RETRY_PAUSE * 1000:.0f} ms) for {sizes.overload_seconds:.0f} s "
            f"({rate:,.0f} req/s): statuses {dict(loaded.statuses)} errors {dict(loaded.errors)}; every worker "
            f"warmed ({warmed}/{sizes.workers})",
            f"server-side p50/p99: admitted under overload {ms(p50_admitted)}/{ms(p99_admitted)}, the same route "
            f"without the limit at the same time {ms(p50_control)}/{ms(p99_control)} (statuses "
            f"{dict(control.statuses)}), unloaded {ms(p50_unloaded)}/{ms(p99_unloaded)}; p50 limit 10x unloaded",
            f"admitted: wait before the route p90 {ms(p90_wait)} (limit {ms(p50_unloaded / 10)}), p99 {ms(p99_wait)}; "
            f"503 p95 {ms(p95_rejected)} (limit {ms(p99_unloaded)})",
            f"client-side p99: unloaded {percentile(unloaded.latencies.get(200, []), 99) * 1000:.0f} ms, admitted "
            f"{percentile(loaded.latencies.get(200, []), 99) * 1000:.0f} ms, rejected "
            f"{percentile(loaded.latencies.get(503, []), 99) * 1000:.0f} ms; 503 is problem+json with Retry-After: "
            f"{well_formed}",
        ],
    )


OVERLOAD_RETRY_PAUSE = 0.1


SCENARIOS: list[Callable[[Env], Any]] = [exactness, stampede, slow_origin, overload, origin_storm, redis_outage]


def _raw_row(name: str, result: RawResult, seconds: float) -> list[str]:
    latencies = [lat for values in result.latencies.values() for lat in values]
    count = sum(result.statuses.values())
    statuses = " ".join(f"{k}:{v}" for k, v in sorted(result.statuses.items()))
    errors = " ".join(f"{k}:{v}" for k, v in sorted(result.errors.items()))
    return [
        name,
        str(count),
        f"{count / seconds:,.0f}",
        f"{percentile(latencies, 50) * 1000:.1f}",
        f"{percentile(latencies, 95) * 1000:.1f}",
        f"{percentile(latencies, 99) * 1000:.1f}",
        (statuses + " " + errors).strip(),
    ]


async def throughput(sizes: Sizes, redis_url: str, origin_url: str) -> list[list[str]]:
    """Closed-loop load on /hello for a fixed time, bare app then full stack, 1 and N workers."""
    rows: list[list[str]] = []
    seconds = sizes.throughput_seconds
    for workers in (1, sizes.workers):
        results: dict[str, RawResult] = {}
        for mode in ("bare", "stack"):
            env = {"E2E_MODE": mode, "REDIS_URL": redis_url, "ORIGIN_URL": origin_url}
            with Uvicorn("benchmarks.e2e_app:app", workers=workers, env=env) as api:
                await raw_pressure("127.0.0.1", api.port, "/hello", concurrency=20, seconds=0.5)  # warm-up
                results[mode] = await raw_pressure("127.0.0.1", api.port, "/hello", concurrency=50, seconds=seconds)
            rows.append(_raw_row(f"{mode}, {workers} worker(s)", results[mode], seconds))
        bare, stack = (rows[-2], rows[-1])
        ratio = [
            f"{float(b.replace(',', '')) and float(a.replace(',', '')) / float(b.replace(',', '')):.2f}"
            for a, b in zip(stack[2:6], bare[2:6], strict=True)
        ]
        rows.append([f"stack / bare, {workers} worker(s)", "", *ratio, ""])
    return rows


@contextmanager
def environment(sizes: Sizes) -> Iterator[Env]:
    with RedisServer() as redis_server:
        origin = Uvicorn("benchmarks.e2e_origin:app", workers=1).start()
        try:
            env = {"E2E_MODE": "stack", "REDIS_URL": redis_server.url, "ORIGIN_URL": origin.url}
            with Uvicorn(
                "benchmarks.e2e_app:app",
                workers=sizes.workers,
                env={**env, "E2E_WORK_LIMIT": str(sizes.overload_limit)},
            ) as api:
                yield Env(sizes, redis_server, origin, api)
        finally:
            origin.stop()


async def run(sizes: Sizes, *, with_throughput: bool = True, only: str | None = None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with environment(sizes) as env:
        for scenario in SCENARIOS:
            if only and not re.search(only, scenario.__name__):
                continue
            t0 = time.perf_counter()
            try:
                outcome = await scenario(env)
            except Exception as exc:  # a crashed scenario is a failed one, with the reason shown
                outcome = Outcome(scenario.__name__, False, [f"crashed: {type(exc).__name__}: {exc}"])
            outcome.details.append(f"took {time.perf_counter() - t0:.1f} s")
            outcomes.append(outcome)
            print(f"\n{'PASS' if outcome.passed else 'FAIL'}  {outcome.name}")
            for line in outcome.details:
                print(f"      {line}")
            sys.stdout.flush()
        # last: its servers come and go under heavy load, which the scenarios' timings should not inherit
        if with_throughput:
            rows = await throughput(sizes, env.redis.url, env.origin.url)
            print("\nThroughput on /hello (plain JSON), bare app vs full stack, same run:\n")
            print_table(LOAD_TABLE_HEADERS, rows)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small CI variant")
    parser.add_argument("--no-throughput", action="store_true", help="skip the bare-vs-stack throughput table")
    parser.add_argument("--only", help="run only scenarios whose function name matches this regex")
    args = parser.parse_args()
    # SIGTERM (a test's timeout, Ctrl-C in CI) unwinds the with-blocks so every server is stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    sizes = QUICK if args.quick else Sizes()
    started = time.perf_counter()
    outcomes = asyncio.run(run(sizes, with_throughput=not args.no_throughput, only=args.only))
    failed = [o.name for o in outcomes if not o.passed]
    print(f"\n{len(outcomes) - len(failed)}/{len(outcomes)} scenarios passed in {time.perf_counter() - started:.0f} s")
    if failed:
        print("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
