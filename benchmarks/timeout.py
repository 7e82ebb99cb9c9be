"""Per-request overhead of TimeoutMiddleware and ConcurrencyLimitMiddleware against the bare app.

In-process, one asyncio event loop, no server and no network: each configuration serves the same
minimal ASGI app (one start and one body message) ``REQUESTS`` times sequentially; the best of
``ROUNDS`` rounds is reported, and every middleware is compared with the bare app measured in the
same run. Run: ``python benchmarks/timeout.py`` (bounded: a few seconds).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asgi_resilience import ConcurrencyLimitMiddleware, TimeoutMiddleware
from asgi_resilience.testing import http_scope
from asgi_resilience.types import ASGIApp, Receive, Scope, Send
from benchmarks._support import minimal_app as bare
from benchmarks._support import null_receive as receive
from benchmarks._support import null_send as send
from benchmarks._support import print_table

REQUESTS = 20_000
ROUNDS = 5
TARGET_US = 3.0


async def one_round_us(app: ASGIApp) -> float:
    scope = http_scope()
    gc.collect()
    started = time.perf_counter()
    for _ in range(REQUESTS):
        await app(scope, receive, send)
    return (time.perf_counter() - started) / REQUESTS * 1e6


async def in_anyio_cancel_scope(scope: Scope, receive: Receive, send: Send) -> None:
    """Reference floor: the bare app inside an (un-timed) anyio cancel scope, nothing else."""
    with anyio.CancelScope():
        await bare(scope, receive, send)


CONFIGS: list[tuple[str, Callable[[ASGIApp], Any]]] = [
    ("(reference) bare app in anyio.CancelScope()", lambda app: in_anyio_cancel_scope),
    ("TimeoutMiddleware(timeout=10)", lambda app: TimeoutMiddleware(app, timeout=10.0)),
    (
        "TimeoutMiddleware(timeout=10, telemetry=False)",
        lambda app: TimeoutMiddleware(app, timeout=10.0, telemetry=False),
    ),
    (
        "TimeoutMiddleware(mode='complete', idle_timeout=5)",
        lambda app: TimeoutMiddleware(app, timeout=10.0, mode="complete", idle_timeout=5.0),
    ),
    ("ConcurrencyLimitMiddleware(max_concurrent=100)", lambda app: ConcurrencyLimitMiddleware(app, max_concurrent=100)),
    (
        "ConcurrencyLimitMiddleware(max_concurrent=100, telemetry=False)",
        lambda app: ConcurrencyLimitMiddleware(app, max_concurrent=100, telemetry=False),
    ),
    (
        "ConcurrencyLimitMiddleware(adaptive=True)",
        lambda app: ConcurrencyLimitMiddleware(app, max_concurrent=100, adaptive=True),
    ),
]


async def main() -> None:
    apps = [bare, *(build(bare) for _, build in CONFIGS)]
    best = [float("inf")] * len(apps)
    for _ in range(ROUNDS):  # interleaved rounds: a noisy moment hurts every configuration alike
        for i, app in enumerate(apps):
            best[i] = min(best[i], await one_round_us(app))
    base = best[0]
    rows = [["bare app (baseline)", f"{base:.2f}", "-", "1.00x", "-"]]
    for (label, _), took in zip(CONFIGS, best[1:], strict=True):
        overhead = took - base
        verdict = "ok" if overhead <= TARGET_US else f"> {TARGET_US:g} us"
        rows.append([label, f"{took:.2f}", f"+{overhead:.2f}", f"{took / base:.2f}x", verdict])
    print(f"Python {sys.version.split()[0]}, asyncio, {REQUESTS} sequential requests, best of {ROUNDS} rounds")
    print_table(["configuration", "us/request", "overhead us", "ratio", f"target +{TARGET_US:g} us"], rows)


if __name__ == "__main__":
    asyncio.run(main())
