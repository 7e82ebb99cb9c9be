"""The dashboard in a real headless Chromium (the system package, driven by Playwright; no browser download).

The page must load with no console errors, show real rates and drawn charts on its first paint, show
a breaker opened by the test as open within 2 seconds, and show the function-level policies (a named
breaker driven open, a bulkhead driven full, fallbacks, retries and hedges) next to the origins.
Screenshots are saved under ``test-output/``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from asgi_resilience import CircuitOpenError, Telemetry, dashboard_app
from asgi_resilience.testing import free_port
from asgi_resilience.types import ASGIApp

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"


def require_browser() -> Any:
    hint = "needs the system chromium (apt-get install chromium) and the playwright package"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if CHROMIUM is None or sync_playwright is None:
        if IN_CI:
            pytest.fail(f"CI=true but the browser test {hint}")
        pytest.skip(hint)
    return sync_playwright


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port in a thread; stop it afterwards."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def open_breaker(telemetry: Telemetry, origin: str) -> float:
    """Send failing calls through a real breaker transport until it opens; return when it opened."""
    from asgi_resilience.client import AsyncCircuitBreakerTransport, BreakerPolicy

    async def down(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"down"})

    failing = httpx.ASGITransport(app=down)
    transport = AsyncCircuitBreakerTransport(
        failing,
        policy=BreakerPolicy(minimum_calls=3, failure_rate=0.5, break_duration=60.0),
        telemetry=telemetry,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(20):
            try:
                await client.get(f"{origin}/fail")
            except CircuitOpenError:
                return time.monotonic()
    raise AssertionError("the breaker never opened")


async def steady_traffic(telemetry: Telemetry, stop: threading.Event) -> None:
    """Requests from ever new clients through a real stack (some allowed, some limited) until ``stop``."""
    from asgi_resilience import resilient
    from asgi_resilience.testing import ASGIHarness, http_scope

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"cache-control", b"max-age=60")]})
        await send({"type": "http.response.body", "body": b"ok"})

    app = resilient(ok, rate_limit="2/minute", cache=True, telemetry=telemetry)
    client = 0
    while not stop.is_set():
        client += 1
        for _ in range(3):  # 2 allowed, 1 limited per client
            await ASGIHarness().run(app, http_scope(path="/item", client=(f"10.0.{client // 250}.{client % 250}", 1)))
        await asyncio.sleep(0.05)


# Each drawn line: how many points, how many distinct heights, how wide on screen.
CHART_SHAPES = """(id) => [...document.querySelectorAll(`svg[data-chart="${id}"] path.line`)].map((path) => {
    const points = (path.getAttribute("d").match(/[ML][^ML]+/g) || []).map((p) => p.slice(1).trim().split(" "));
    return {series: path.dataset.series, points: points.length, heights: new Set(points.map((p) => p[1])).size,
            width: path.getBoundingClientRect().width};
})"""


def test_first_paint_shows_rates_and_charts_of_traffic_from_before_the_page_opened() -> None:
    sync_playwright = require_browser()
    telemetry = Telemetry()
    # events 2 s apart: what the page shows right after its first event is the first paint
    dashboard = dashboard_app(telemetry, allow_unauthenticated=True, interval=2.0)
    app = Starlette(routes=[Mount("/_resilience", dashboard)])
    problems: list[str] = []
    OUTPUT.mkdir(exist_ok=True)
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool, serve(app) as base, sync_playwright() as playwright:
        traffic = pool.submit(asyncio.run, steady_traffic(telemetry, stop))
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            time.sleep(4.5)  # two samples of history with traffic in them before anybody looks
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{base}/_resilience/")
            page.wait_for_selector('#rate-limit tr[data-rule="2/minute"]', timeout=5000)
            # one evaluation, so that all of it is read from the same paint
            events, allowed, limited, decisions = page.evaluate(
                "() => {"
                "  const row = document.querySelector('#rate-limit tr[data-rule=\"2/minute\"]');"
                "  return [document.body.dataset.events, row.children[1].textContent, row.children[2].textContent,"
                f"          ({CHART_SHAPES})('rate-limit')];"
                "}"
            )
            assert events == "1"  # still the first paint (the next event is 2 s away)
            assert float(allowed) > 0 and float(limited) > 0  # not a row of 0.0/s waiting for a second sample
            lines = {shape["series"]: shape for shape in decisions}
            assert lines["allowed"]["points"] >= 2 and lines["allowed"]["width"] > 100
            page.screenshot(path=str(OUTPUT / "dashboard-first-paint.png"), full_page=True)
        finally:
            stop.set()
            browser.close()
            dashboard.close()
        traffic.result(timeout=10)
    assert problems == []


async def serve_some_requests(telemetry: Telemetry) -> None:
    """Traffic through a real stack, so every panel has something to render."""
    from asgi_resilience import resilient
    from asgi_resilience.testing import ASGIHarness, http_scope

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"cache-control", b"public, max-age=60")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    app = resilient(ok, rate_limit="2/minute", cache=True, timeout=1.0, concurrency=2, telemetry=telemetry)
    for _ in range(3):
        await ASGIHarness().run(app, http_scope(path="/item"))


def test_dashboard_shows_an_opened_breaker_within_two_seconds() -> None:
    sync_playwright = require_browser()
    telemetry = Telemetry()
    dashboard = dashboard_app(telemetry, allow_unauthenticated=True, interval=0.2)
    app = Starlette(routes=[Mount("/_resilience", dashboard)])
    origin = "http://browser-test.invalid"
    problems: list[str] = []
    OUTPUT.mkdir(exist_ok=True)
    with serve(app) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{base}/_resilience/")
            # (selectors, not wait_for_function: the page's CSP forbids the eval that polling needs)
            page.wait_for_selector("#status:text-is('live')", timeout=5000)
            page.wait_for_selector("#breakers", timeout=5000)
            assert page.query_selector("tr.breaker") is None  # nothing outbound yet
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, serve_some_requests(telemetry)).result(timeout=30)
            page.wait_for_selector('#rate-limit tr[data-rule="2/minute"]', timeout=3000)
            page.wait_for_selector("#cache-hit-ratio:text-matches('^[0-9]+%$')", timeout=3000)
            page.wait_for_selector("#cache-bytes:text-matches('MiB in memory$')", timeout=3000)
            page.wait_for_selector('#concurrency tr[data-partition="default"]', timeout=3000)
            time.sleep(0.5)  # a few more samples
            # the charts are drawn: a line per series across the panel, going up and down with the traffic
            lines = {shape["series"]: shape for shape in page.evaluate(CHART_SHAPES, "rate-limit")}
            assert set(lines) == {"allowed", "limited"}  # never a store error: no line drawn for it
            for series in ("allowed", "limited"):
                assert lines[series]["points"] >= 3 and lines[series]["heights"] >= 2 and lines[series]["width"] > 100
            cache_lines = {shape["series"]: shape for shape in page.evaluate(CHART_SHAPES, "cache")}
            assert cache_lines["hit"]["heights"] >= 2 and cache_lines["miss"]["heights"] >= 2

            # Playwright's sync API owns this thread's event loop: drive the client from another thread.
            with ThreadPoolExecutor(1) as pool:
                opened_at = pool.submit(asyncio.run, open_breaker(telemetry, origin)).result(timeout=30)
            selector = f'tr.breaker[data-origin^="{origin}"][data-state="open"]'
            page.wait_for_selector(selector, timeout=2000)
            shown_after = time.monotonic() - opened_at
            assert shown_after < 2.0
            # the page re-renders every event: read everything in one evaluation, never from a stale handle
            text, colour, panel_class = page.evaluate(
                """(selector) => {
                    const cell = document.querySelector(selector + " td.state");
                    return [cell.textContent, getComputedStyle(cell).backgroundColor,
                            document.getElementById("breakers").className];
                }""",
                selector,
            )
            assert text.lower() == "open"
            assert colour == "rgb(214, 51, 47)"  # the red of an open breaker
            assert "lvl-red" in panel_class
            # the components panel shows labelled values, not raw JSON
            page.wait_for_selector('#components .card[data-component="rate_limit"] td:text-is("strategy")')
            assert page.query_selector("#components pre") is None
            page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)
        finally:
            browser.close()
            dashboard.close()
    assert problems == []
    assert (OUTPUT / "dashboard.png").stat().st_size > 1000


async def drive_policies(telemetry: Telemetry, full: threading.Event, release: threading.Event) -> None:
    """Through the public decorators: open the named breaker "llm", take fallbacks, retries and a won
    hedge, then hold the bulkhead "db" full (every slot in use, its queue full, one caller refused)
    until ``release``. (``telemetry=`` only keeps other tests' metrics off this page; users leave it
    to the process default, which the default stack reports to as well.)"""
    from asgi_resilience import Overloaded
    from asgi_resilience.policies import bulkhead, circuit_breaker, fallback, hedge, retry

    @circuit_breaker("llm", minimum_calls=3, failure_rate=0.5, break_duration=60.0, telemetry=telemetry)
    async def complete(prompt: str) -> str:
        raise ConnectionError("the LLM is down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await complete("hi")
    for _ in range(4):
        with pytest.raises(CircuitOpenError):
            await complete("hi")  # refused while open

    @fallback("a cached answer", name="answer", telemetry=telemetry)
    @circuit_breaker("llm")
    async def answer(prompt: str) -> str:
        raise AssertionError("never called while the breaker is open")

    assert [await answer("hi") for _ in range(2)] == ["a cached answer"] * 2

    tries = 0

    @retry(attempts=3, on=ConnectionError, wait_initial=0.0, wait_max=0.0, name="flaky", telemetry=telemetry)
    async def flaky() -> str:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise ConnectionError("flaky")
        return "ok"

    assert await flaky() == "ok"

    searches = 0

    @hedge(idempotent=True, delay=0.01, name="search", telemetry=telemetry)
    async def search() -> int:
        nonlocal searches
        searches += 1
        mine = searches
        if mine == 1:
            await asyncio.sleep(10)  # the slow first attempt: the hedge wins and this one is cancelled
        return mine

    assert await search() == 2

    db = bulkhead("db", max_concurrent=2, max_queue=1, queue_timeout=30.0, telemetry=telemetry)

    @db
    async def query() -> None:
        await asyncio.to_thread(release.wait, 30)

    holders = [asyncio.ensure_future(query()) for _ in range(3)]  # 2 in their slots, 1 queued
    while db.snapshot()["queued"] < 1:  # noqa: ASYNC110 - the bulkhead's own counters, no event to wait on
        await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await query()  # no slot, no room in the queue
    full.set()
    await asyncio.gather(*holders)


def test_dashboard_shows_named_breakers_bulkheads_and_fallbacks_next_to_the_origins() -> None:
    sync_playwright = require_browser()
    telemetry = Telemetry()
    dashboard = dashboard_app(telemetry, allow_unauthenticated=True, interval=0.2)
    app = Starlette(routes=[Mount("/_resilience", dashboard)])
    problems: list[str] = []
    OUTPUT.mkdir(exist_ok=True)
    full, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool, serve(app) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        driver = None
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{base}/_resilience/")
            page.wait_for_selector("#status:text-is('live')", timeout=5000)
            assert page.query_selector("#named-breakers") is None  # no policy used yet: no empty panels

            driver = pool.submit(asyncio.run, drive_policies(telemetry, full, release))
            assert full.wait(30), (
                driver.exception(timeout=0) if driver.done() else "the driver never filled the bulkhead"
            )
            breaker_row = '#named-breakers tr.named-breaker[data-name="llm"][data-state="open"]'
            bulkhead_row = '#bulkheads tr.bulkhead[data-name="db"][data-full="true"]'
            page.wait_for_selector(breaker_row, timeout=2000)
            page.wait_for_selector(bulkhead_row, timeout=2000)
            time.sleep(0.6)  # a few samples, so that the rates have a history to draw
            shown = page.evaluate(
                """([breaker, bulkhead]) => {
                    const texts = (row) => [...document.querySelector(row).children].map((td) => td.textContent);
                    const colour = (sel) => getComputedStyle(document.querySelector(sel)).backgroundColor;
                    const policy = (name) => texts(`#policy-calls tr[data-policy="${name}"]`);
                    return {breaker: texts(breaker), bulkhead: texts(bulkhead),
                            breakerColour: colour(breaker + " td.state"),
                            bulkheadColour: colour(bulkhead + " td.state"),
                            panels: ["named-breakers", "bulkheads"].map((id) => document.getElementById(id).className),
                            origins: document.querySelectorAll("#breakers tr.breaker").length,
                            answer: policy("answer"), flaky: policy("flaky"), search: policy("search")};
                }""",
                [breaker_row, bulkhead_row],
            )
            # breaker, state, status, calls in window, failure rate, slow calls, refused/s, refused, transitions
            name, state, status, calls, failure_rate, _, refused_rate, refused, transitions = shown["breaker"]
            assert (name, state.lower(), calls, failure_rate) == ("llm", "open", "3", "100%")
            assert status.startswith("retry in ") and refused == "6" and float(refused_rate) > 0
            assert "closed\u2192open (failure_rate)" in transitions
            # bulkhead, state, in use / max, queued / max queue, rejected/s, rejected, wait p50, wait p99
            name, state, in_use, queued, rejected_rate, rejected, _, _ = shown["bulkhead"]
            assert (name, state, in_use, queued, rejected) == ("db", "full", "2 / 2", "1 / 1", "1")
            assert float(rejected_rate) > 0
            assert shown["breakerColour"] == shown["bulkheadColour"] == "rgb(214, 51, 47)"  # red
            assert all("lvl-red" in panel for panel in shown["panels"])
            assert shown["origins"] == 0  # a named breaker is not an outbound origin
            # policy, fallbacks/s, fallbacks by kind, retries/s, retries, hedges/s, hedges won
            assert shown["answer"][0] == "answer" and shown["answer"][2] == "value 2"
            assert shown["flaky"][4] == "2"
            assert shown["search"][6] == "1 of 1"
            refusals = {shape["series"]: shape for shape in page.evaluate(CHART_SHAPES, "named-breakers")}
            assert refusals["refused"]["heights"] >= 2 and refusals["refused"]["width"] > 100
            rejections = {shape["series"]: shape for shape in page.evaluate(CHART_SHAPES, "bulkheads")}
            assert rejections["queue full"]["heights"] >= 2
            page.screenshot(path=str(OUTPUT / "dashboard-policies.png"), full_page=True)

            release.set()  # the queued call gets its slot: its wait is timed
            driver.result(timeout=30)
            page.wait_for_selector('#bulkheads tr.bulkhead[data-name="db"][data-full="false"]', timeout=2000)
            page.wait_for_selector(
                '#bulkheads tr.bulkhead[data-name="db"] td:nth-child(7):text-matches("s$")', timeout=2000
            )
            page.wait_for_selector(
                '#chart-bulkhead-wait svg path.dot[data-series="p99"]', state="attached", timeout=2000
            )
            page.screenshot(path=str(OUTPUT / "dashboard-policies-released.png"), full_page=True)
        finally:
            release.set()
            browser.close()
            dashboard.close()
            if driver is not None:
                driver.result(timeout=30)
    assert problems == []
