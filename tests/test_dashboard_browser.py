"""The dashboard in a real headless Chromium (the system package, driven by Playwright; no browser download).

The page must load with no console errors, and a breaker opened by the test must show as open within
2 seconds. A screenshot is saved under ``test-output/``.
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
    app = Starlette(routes=[Mount("/_resilience", dashboard_app(telemetry, allow_unauthenticated=True, interval=0.2))])
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
            page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert (OUTPUT / "dashboard.png").stat().st_size > 1000
