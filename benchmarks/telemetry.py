"""What telemetry costs per request: off, on without an SDK, on with the OpenTelemetry SDK.

In-process, one asyncio event loop, no server and no network. The full stack
(``resilient(app, rate_limit=..., cache=True, timeout=10, concurrency=1000)``, memory storage) serves
the same minimal ASGI app ``REQUESTS`` times sequentially; rounds are interleaved and the best of
``ROUNDS`` is kept. Every figure is compared with ``telemetry=False`` measured in the same run.

"Telemetry off vs no telemetry at all": with ``telemetry=False`` each instrument is a no-op object, so
what remains is one empty method call per metric event. The script counts those calls per request,
times one call, and compares their total with the run-to-run noise of two identical builds: the
overhead is "not measurable" when it is below that noise.

Run: ``python benchmarks/telemetry.py`` (bounded: a few seconds).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from asgi_resilience import Telemetry, resilient
from asgi_resilience.observability import NOOP, Instrument
from asgi_resilience.testing import http_scope
from asgi_resilience.types import ASGIApp, Scope
from benchmarks._support import minimal_app as bare
from benchmarks._support import null_receive as receive
from benchmarks._support import null_send as send
from benchmarks._support import print_table

REQUESTS = 5_000
ROUNDS = 5


def stack(telemetry: Telemetry | bool) -> ASGIApp:
    return resilient(
        bare,
        rate_limit="1000000000/minute",
        cache=True,
        timeout=10.0,
        concurrency=1000,
        telemetry=telemetry,
    )


class CountingTelemetry(Telemetry):
    """Counts every instrument call (to know how many no-op calls ``telemetry=False`` leaves)."""

    def __init__(self) -> None:
        super().__init__(enabled=False)
        self.calls = 0

    def instrument(self, name: str) -> Instrument:
        inner = super().instrument(name)
        outer = self

        class Counted(Instrument):
            __slots__ = ()

            def add(self, value: float, attributes: Any = None) -> None:
                outer.calls += 1
                inner.add(value, attributes)

            def record(self, value: float, attributes: Any = None) -> None:
                outer.calls += 1
                inner.record(value, attributes)

        return Counted(name, inner.kind, None)


async def one_round_us(app: ASGIApp, scope: Scope) -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(REQUESTS):
        await app(scope, receive, send)
    return (time.perf_counter() - started) / REQUESTS * 1e6


async def main() -> None:
    scope = http_scope(path="/items", client=("127.0.0.1", 5000))
    counting = CountingTelemetry()
    counted_app = stack(counting)
    for _ in range(100):
        await counted_app(scope, receive, send)
    calls_per_request = counting.calls / 100

    noop = NOOP.instrument("asgi_resilience.cache.requests")
    attributes = {"result": "miss"}
    ns_per_call = min(timeit.repeat(lambda: noop.add(1, attributes), number=200_000, repeat=5)) / 200_000 * 1e9
    off_cost_us = calls_per_request * ns_per_call / 1000

    reader = InMemoryMetricReader()
    configs: list[tuple[str, Callable[[], ASGIApp]]] = [
        ("stack, telemetry=False (baseline)", lambda: stack(False)),
        ("stack, telemetry=False (second identical build)", lambda: stack(False)),
        ("stack, telemetry=True, no SDK configured", lambda: stack(Telemetry())),
        (
            "stack, telemetry=True, OpenTelemetry SDK + in-memory reader",
            lambda: stack(Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))),
        ),
    ]
    apps = [build() for _, build in configs]
    best = [float("inf")] * len(apps)
    for _ in range(ROUNDS):  # interleaved: a noisy moment hurts every configuration alike
        for i, app in enumerate(apps):
            best[i] = min(best[i], await one_round_us(app, scope))
    base = best[0]
    noise = abs(best[1] - best[0])
    rows = []
    for (label, _), took in zip(configs, best, strict=True):
        rows.append([label, f"{took:.2f}", f"{took - base:+.2f}", f"{took / base:.3f}x"])
    rows.append(
        [
            f"computed: {calls_per_request:g} no-op calls x {ns_per_call:.0f} ns (telemetry off vs none)",
            f"{off_cost_us:.3f}",
            f"{off_cost_us / base * 100:.2f} % of a request",
            "not measurable" if off_cost_us < max(noise, 0.01 * base) else "measurable",
        ]
    )
    print(
        f"Python {sys.version.split()[0]}, asyncio, full stack on memory storage, {REQUESTS} sequential requests, "
        f"best of {ROUNDS} rounds; run-to-run noise of identical builds: {noise:.2f} us"
    )
    print_table(["configuration", "us/request", "vs telemetry=False", "ratio"], rows)


if __name__ == "__main__":
    asyncio.run(main())
