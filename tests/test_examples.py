"""Every file in ``examples/`` and the demo, exercised.

* every example imports cleanly and, when it defines an ASGI ``app``, answers ``GET /`` without a 5xx
  (an example may also define ``smoke()``, sync or async, which is then called);
* every example without an ``app`` runs its ``async def main()`` (client examples run offline);
* every example that reads ``PORT`` runs as a script (``python examples/x.py``) and serves requests;
* the examples of this issue and the demo get behaviour checks (429, 504, breaker, shared Redis).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

from asgi_resilience.policies import reset_policies
from asgi_resilience.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
RUNNABLE = [p for p in EXAMPLES if 'os.environ.get("PORT"' in p.read_text() and p.stem != "multiworker_redis"]


def needs_redis(path: Path) -> bool:
    text = path.read_text()
    return "REDIS_URL" in text or "redis://" in text


def load(path: Path) -> ModuleType:
    """Import an example file as a fresh module (never as ``__main__``, so no server starts)."""
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}_{time.monotonic_ns()}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # frameworks (Litestar) resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def client_for(app: Any, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 5000), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost")


@pytest.fixture(autouse=True)
def fresh_policies() -> Iterator[None]:
    """An example runs like a fresh process: it configures its named policies at import."""
    reset_policies()
    yield
    reset_policies()


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """An example may configure logging like an application does (Litestar's default config makes
    the root logger INFO with its own handler): the rest of the suite gets the logging it had."""
    manager = logging.Logger.manager
    root = logging.getLogger()
    saved = (root.level, root.handlers[:], root.disabled, manager.disable)
    levels = {
        name: (logger.level, logger.handlers[:], logger.propagate, logger.disabled)
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    root.disabled = saved[2]
    logging.disable(saved[3])
    for name, logger in list(manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):
            continue
        level, handlers, propagate, disabled = levels.get(name, (logging.NOTSET, [], True, False))
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.disabled = disabled


@pytest.fixture
def example_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    def prepare(path: Path) -> dict[str, str]:
        env: dict[str, str] = {}
        if needs_redis(path):
            env["REDIS_URL"] = request.getfixturevalue("redis_url")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return prepare


def test_there_are_examples() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"raw_asgi", "litestar_app", "multiworker_redis", "problem_details"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def test_every_example_imports_and_serves(path: Path, example_env: Any) -> None:
    example_env(path)
    module = load(path)
    smoke = getattr(module, "smoke", None)
    if callable(smoke):
        result = smoke()
        if inspect.isawaitable(result):
            await result
    app = getattr(module, "app", None)
    if app is None:
        main = getattr(module, "main", None)
        assert smoke is not None or main is not None, f"{path.name} defines neither app, main nor smoke"
        if inspect.iscoroutinefunction(main) and not inspect.signature(main).parameters:
            with anyio.fail_after(60):  # client examples run offline against simulated upstreams
                await main()
        return
    async with client_for(app) as client:
        response = await client.get("/")
    assert response.status_code < 500, response.text
    # close what the example opened at import time (a shared Cache, the stack's Redis client)
    stack = getattr(app, "stack", None)
    if stack is not None:
        await stack.aclose()
    for value in list(vars(module).values()):
        if type(value).__module__.startswith("asgi_resilience.") and callable(getattr(value, "aclose", None)):
            await value.aclose()


@contextmanager
def run_script(args: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Start a script, wait until it listens on ``port`` (without spending a request), stop it by pid."""
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **env, "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"{args} exited with {process.returncode}:\n{output}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{args} did not listen on {port} within 30 s") from None
                time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        if process.stdout:
            process.stdout.close()


@pytest.mark.parametrize("path", RUNNABLE, ids=[p.stem for p in RUNNABLE])
def test_examples_run_as_scripts(path: Path, example_env: Any) -> None:
    env = example_env(path)
    port = free_port()
    with run_script([str(path)], env, port):
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert response.status_code < 500


async def test_raw_asgi_example_limits_times_out_and_shows_the_dashboard() -> None:
    module = load(ROOT / "examples" / "raw_asgi.py")
    async with client_for(module.app) as client:
        statuses = [(await client.get("/")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        slow = await client.get("/slow", headers={"X-Forwarded-For": "1.2.3.4"})
        assert slow.status_code in (429, 504)  # the same client: limited before it can time out
        snapshot = await client.get("/_resilience/snapshot.json")
        assert snapshot.status_code == 200
        assert snapshot.json()["layers"] == ["problems", "rate_limit", "timeout", "concurrency"]
    async with client_for(module.app, "127.0.0.2") as client:
        slow = await client.get("/slow")
        assert slow.status_code == 504
        assert slow.headers["content-type"] == "application/problem+json"
    async with client_for(module.app, "203.0.113.1") as client:
        assert (await client.get("/_resilience/")).status_code == 403  # the dashboard is loopback only


async def test_litestar_example_limits_items_and_mounts_the_dashboard() -> None:
    module = load(ROOT / "examples" / "litestar_app.py")
    async with client_for(module.app) as client:
        statuses = [(await client.get("/items/1")).status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        limited = await client.get("/items/2")
        assert limited.headers["content-type"] == "application/problem+json"
        page = await client.get("/_resilience/")
        assert page.status_code == 200 and "EventSource" in page.text
        snapshot = (await client.get("/_resilience/snapshot.json")).json()
        assert snapshot["layers"] == ["problems", "rate_limit", "cache", "timeout", "concurrency"]
        assert snapshot["metrics"]["asgi_resilience.rate_limit.requests"]
    async with client_for(module.app, "127.0.0.2") as client:
        first, second = await client.get("/items/3"), await client.get("/items/3")
        assert first.json() == second.json() and "age" in second.headers  # @cache on the route handler
        missing = await client.get("/items/0")
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
        started = time.monotonic()
        slow = await client.get("/slow")
        assert slow.status_code == 504 and time.monotonic() - started < 1.5  # @timeout(0.5), not the stack's 2 s


def test_django_example_under_uvicorn() -> None:
    """The Django example as a script (uvicorn on loopback): per-view options and problem+json errors."""
    port = free_port()
    with run_script(["examples/django_app.py"], {}, port):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            first = client.get("/items/1")
            assert first.status_code == 200
            for _ in range(40):  # the store completes after the response was sent: wait for it, bounded
                second = client.get("/items/1")
                if "age" in second.headers:
                    break
                time.sleep(0.05)
            assert "age" in second.headers and first.json() == second.json()  # @cache(ttl=30)
            missing = client.get("/items/0")
            assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
            assert client.get("/admin-only").status_code == 403
            started = time.monotonic()
            slow = client.get("/slow")
            assert slow.status_code == 504 and time.monotonic() - started < 1.5  # @timeout(0.5), not 2 s
            assert slow.headers["content-type"] == "application/problem+json"
            statuses = [client.get("/login").status_code for _ in range(4)]
            assert statuses == [200, 200, 200, 429]  # @rate_limit("3/minute")


@pytest.mark.redis
def test_multiworker_example_shares_limits_and_cache_through_redis(redis_url: str) -> None:
    """Two servers of the example (separate processes, as workers are) on one Redis, asked in turn:
    one rate limit and one cached report for both. Which worker of a ``--workers N`` server accepts a
    connection is up to the kernel, so separate ports are what makes "both answered" certain."""
    script = str(ROOT / "examples" / "multiworker_redis.py")
    ports = [free_port(), free_port()]
    env = {"REDIS_URL": redis_url}
    with (
        run_script([script, "--workers", "1", "--port", str(ports[0])], env, ports[0]),
        run_script([script, "--workers", "1", "--port", str(ports[1])], env, ports[1]),
    ):
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        statuses: list[int] = []
        answered_by: set[int] = set()
        for i in range(14):
            with httpx.Client() as client:
                response = client.get(f"{bases[i % 2]}/")
                statuses.append(response.status_code)
                if response.status_code == 200:
                    answered_by.add(response.json()["pid"])
        assert statuses == [200] * 10 + [429] * 4  # one limit for all processes
        assert len(answered_by) == 2
        reports = []
        for i in range(6):  # one public host name in front of both, as behind a load balancer
            with httpx.Client(headers={"Host": "api.example"}) as client:
                reports.append(client.get(f"{bases[i % 2]}/report").json())
        assert len({r["generated_at"] for r in reports}) == 1  # one cached report for all processes


@pytest.mark.redis
def test_multiworker_example_serves_with_several_workers(redis_url: str) -> None:
    port = free_port()
    script = str(ROOT / "examples" / "multiworker_redis.py")
    with run_script([script, "--workers", "2", "--port", str(port)], {"REDIS_URL": redis_url}, port):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get("/").status_code == 200
            assert isinstance(client.get("/pid").json()["pid"], int)


# --- the demo ----------------------------------------------------------------------------------------------------


async def test_demo_app_shows_each_layer() -> None:
    from asgi_resilience.demo import build_demo

    demo = build_demo()
    try:
        async with client_for(demo.app) as client:
            index = await client.get("/")
            assert "/_resilience/" in index.json()["endpoints"]
            hello = [(await client.get("/hello")).status_code for _ in range(6)]
            assert hello == [200] * 5 + [429]
            first = await client.get("/products/1")
            second = await client.get("/products/1")
            assert first.json() == second.json()
            assert "hit" in second.headers["cache-status"]
            bad = await client.get("/slow", params={"seconds": "soon"})
            assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
            assert (await client.get("/chaos", params={"failure_rate": "2"})).status_code == 400
            assert (await client.get("/chaos", params={"failure_rate": "x"})).status_code == 400
            healthy = await client.get("/quote")
            assert healthy.status_code in (200, 502)
            assert (await client.get("/chaos", params={"failure_rate": "1"})).json()["failure_rate"] == 1.0
            statuses = [(await client.get("/quote")).status_code for _ in range(12)]
            assert 502 in statuses and statuses[-1] == 503  # failing, then the breaker opened
            opened = await client.get("/quote")
            assert opened.json()["type"] == "circuit-open" and int(opened.headers["retry-after"]) >= 1
            snapshot = (await client.get("/_resilience/snapshot.json")).json()
            (breaker,) = [b for b in snapshot["components"]["circuit_breakers"] if "flaky-upstream" in b["origin"]]
            assert breaker["state"] == "open"
            assert (await client.get("/chaos", params={"failure_rate": "0"})).json()["failure_rate"] == 0.0
    finally:
        await demo.client.aclose()
        await demo.stack.aclose()


@pytest.mark.redis
async def test_demo_with_redis_shares_one_client(redis_url: str) -> None:
    from asgi_resilience.demo import build_demo

    demo = build_demo(redis=redis_url)
    try:
        assert demo.stack.redis is not None
        assert demo.stack.options("rate_limit")["storage"] is demo.stack.redis
        assert demo.stack.options("cache")["backend"] is demo.stack.redis
        async with client_for(demo.app) as client:
            assert [(await client.get("/hello")).status_code for _ in range(6)] == [200] * 5 + [429]
        assert await demo.stack.redis.dbsize() > 0
    finally:
        await demo.client.aclose()
        await demo.stack.aclose()


def test_demo_runs_with_the_readme_command_and_prints_the_urls() -> None:
    port = free_port()
    command = ["-m", "asgi_resilience.demo", "--port", str(port), "--no-traffic", "--summary-every", "0.3"]
    with run_script(command, {}, port) as process:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            statuses = [client.get("/hello").status_code for _ in range(6)]
            assert statuses == [200] * 5 + [429]
            assert client.get("/_resilience/").status_code == 200
            client.get("/chaos", params={"failure_rate": "1"})
            quotes = [client.get("/quote").status_code for _ in range(12)]
            assert quotes.count(503) >= 3  # the breaker opened: refused without calling the upstream
            time.sleep(0.8)  # at least one summary interval after the traffic
        os.kill(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=15)[0].decode()
    assert f"{base}/_resilience/" in output
    assert f"curl -s -o /dev/null -w '%{{http_code}} ' {base}/hello" in output
    assert "Traceback" not in output
    # one summary line per interval, not one line per refused or retried request
    assert "mapped to 503" not in output and "retrying" not in output and "giving up" not in output
    summaries = [line for line in output.splitlines() if "asgi_resilience.demo: last 0.3 s:" in line]
    assert any("1 rate-limited (429)" in line for line in summaries)
    assert any("CircuitOpenError" in line for line in summaries) and any("retries" in line for line in summaries)
    assert "closed -> open" in output  # a breaker transition is rare and worth its own line


async def test_demo_summary_counts_since_the_last_line_and_the_filter_drops_per_request_records() -> None:
    import logging

    from asgi_resilience import Telemetry
    from asgi_resilience.demo._summary import PerRequestFilter, Summary

    telemetry = Telemetry()
    summary = Summary(telemetry)
    assert summary.line() is None  # nothing happened
    telemetry.instrument("asgi_resilience.rate_limit.requests").add(3, {"rule": "r", "result": "limited"})
    telemetry.instrument("asgi_resilience.exceptions").add(2, {"error.type": "CircuitOpenError", "result": "handled"})
    assert summary.line() == "3 rate-limited (429); mapped to problem responses: 2 CircuitOpenError"
    telemetry.instrument("asgi_resilience.timeouts").add(1, {"phase": "before_start"})
    assert summary.line() == "1 timed out (504)"  # only what is new
    assert summary.line() is None

    def record(name: str, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)

    keep = PerRequestFilter().filter
    assert not keep(record("asgi_resilience.errors", "%s mapped to %d while serving %s", "X", 503, "GET /"))
    assert not keep(record("asgi_resilience.client", "giving up on %s %s%s after %d attempt(s): %s", 1, 2, 3, 4, 5))
    assert keep(record("asgi_resilience.client", "circuit breaker for %s: %s -> %s (%s)", "o", "closed", "open", "x"))
    assert keep(record("asgi_resilience.errors", "Unhandled exception while serving %s", "GET /"))


def test_demo_reports_a_bad_redis_url_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from asgi_resilience.demo.__main__ import main

    assert main(["--redis", "http://not-redis", "--no-traffic"]) == 2
    assert "redis://" in capsys.readouterr().err


async def test_tier_example_gives_invented_api_keys_no_fresh_buckets() -> None:
    """Made-up keys share their address's free-tier bucket; a real key keeps its own plan."""
    module = load(ROOT / "examples" / "ratelimit_tiers_fastapi.py")
    async with client_for(module.app, "198.51.100.7") as client:
        statuses = [(await client.get("/items", headers={"X-API-Key": f"made-up-{i}"})).status_code for i in range(11)]
        assert statuses == [200] * 10 + [429]  # the free tier (10/minute), not 11 fresh buckets
        assert (await client.get("/items", headers={"X-API-Key": "key-premium"})).status_code == 200
    async with client_for(module.app, "198.51.100.8") as client:
        reports = [
            (await client.post("/items/report", headers={"X-API-Key": f"other-{i}"})).status_code for i in range(3)
        ]
        assert reports == [200, 200, 429]  # @rate_limit("2/minute") per known key or address
