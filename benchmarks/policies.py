"""Per-call overhead of the function policies against tenacity, stamina, pybreaker, aiobreaker and
purgatory, on a no-op function, in one run.

    python benchmarks/policies.py [--calls 20000] [--rounds 9]

Every variant awaits the same no-op ``async def`` (pybreaker, whose async support needs Tornado,
wraps the same no-op as a plain function, next to our breaker on that plain function). Variants
run interleaved, round after round; the table reports the median over rounds of the time per
call, the overhead over the bare call measured in the same rounds, and the ratio to it. Then the
open-breaker path: the time to refuse a call while the breaker is open (exception caught).

Peers (the ``bench`` extra): tenacity, stamina, pybreaker, aiobreaker, purgatory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asgi_resilience.policies import bulkhead, circuit_breaker, pipeline, retry, time_limit

logging.getLogger("asgi_resilience").setLevel(logging.ERROR)  # the open-path setup logs transitions


async def noop() -> None:
    return None


def sync_noop() -> None:
    return None


async def failing() -> None:
    raise ConnectionError


def sync_failing() -> None:
    raise ConnectionError


def success_variants() -> dict[str, tuple[Callable[[], Any], bool]]:
    """name -> (callable, is_async)."""
    import pybreaker
    import stamina
    import tenacity
    from aiobreaker import CircuitBreaker as AioBreaker
    from purgatory import AsyncCircuitBreakerFactory

    purgatory_factory = AsyncCircuitBreakerFactory()
    aio = AioBreaker()
    pyb = pybreaker.CircuitBreaker()
    return {
        "baseline: await noop()": (noop, True),
        "asgi_resilience retry": (retry(on=ConnectionError)(noop), True),
        "asgi_resilience retry (budget=None)": (retry(on=ConnectionError, budget=None)(noop), True),
        "tenacity retry": (tenacity.retry(stop=tenacity.stop_after_attempt(3))(noop), True),
        "stamina retry": (stamina.retry(on=ConnectionError, attempts=3)(noop), True),
        "asgi_resilience circuit_breaker": (circuit_breaker("bench-ok")(noop), True),
        "aiobreaker": (aio(noop), True),
        "purgatory": (purgatory_factory("bench-ok")(noop), True),
        "asgi_resilience pipeline (retry+breaker+bulkhead)": (
            pipeline(retry(on=ConnectionError), circuit_breaker("bench-pipe"), bulkhead("bench", 1000))(noop),
            True,
        ),
        "asgi_resilience pipeline + time_limit": (
            pipeline(time_limit(30), retry(on=ConnectionError), circuit_breaker("bench-pipe2"))(noop),
            True,
        ),
        "baseline: sync noop()": (sync_noop, False),
        "asgi_resilience circuit_breaker (sync)": (circuit_breaker("bench-sync")(sync_noop), False),
        "pybreaker (sync)": (pyb(sync_noop), False),
    }


async def open_variants() -> dict[str, tuple[Callable[[], Any], bool, type[BaseException]]]:
    import pybreaker
    from aiobreaker import CircuitBreaker as AioBreaker
    from aiobreaker import CircuitBreakerError as AioOpen
    from purgatory import AsyncCircuitBreakerFactory
    from purgatory.domain.model import OpenedState

    from asgi_resilience import CircuitOpenError

    ours = circuit_breaker(
        "bench-open", consecutive_failures=1, minimum_calls=100, break_duration=3600, max_break_duration=3600
    )
    ours_async = ours(failing)
    ours_sync = circuit_breaker(
        "bench-open-sync", consecutive_failures=1, minimum_calls=100, break_duration=3600, max_break_duration=3600
    )(sync_failing)
    aio = AioBreaker(fail_max=1)
    aio_call = aio(failing)
    pyb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    pyb_call = pyb(sync_failing)
    purgatory_factory = AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=3600)
    purgatory_call = purgatory_factory("bench-open")(failing)
    for call in (ours_async, aio_call, purgatory_call):
        try:
            await call()
        except BaseException:
            pass
    for sync_call in (ours_sync, pyb_call):
        try:
            sync_call()
        except BaseException:
            pass
    assert ours.state == "open"
    return {
        "asgi_resilience circuit_breaker": (ours_async, True, CircuitOpenError),
        "aiobreaker": (aio_call, True, AioOpen),
        "purgatory": (purgatory_call, True, OpenedState),
        "asgi_resilience circuit_breaker (sync)": (ours_sync, False, CircuitOpenError),
        "pybreaker (sync)": (pyb_call, False, pybreaker.CircuitBreakerError),
    }


async def time_calls(call: Callable[[], Any], is_async: bool, calls: int, catch: type[BaseException] | None) -> float:
    """Seconds per call over ``calls`` calls."""
    if catch is None:
        if is_async:
            started = time.perf_counter()
            for _ in range(calls):
                await call()
            return (time.perf_counter() - started) / calls
        started = time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - started) / calls
    started = time.perf_counter()
    for _ in range(calls):
        try:
            result = call()
            if is_async:
                await result
        except catch:
            pass
    return (time.perf_counter() - started) / calls


def table(title: str, results: dict[str, list[float]], baselines: dict[bool, str], kinds: dict[str, bool]) -> None:
    print(f"\n{title}")
    print(f"{'variant':<52} {'us/call':>9} {'overhead us':>12} {'x baseline':>11}")
    for name, samples in results.items():
        median = statistics.median(samples)
        base = statistics.median(results[baselines[kinds[name]]]) if baselines else None
        if base is None:
            print(f"{name:<52} {median * 1e6:>9.2f}")
        else:
            print(f"{name:<52} {median * 1e6:>9.2f} {(median - base) * 1e6:>12.2f} {median / base:>11.1f}")


async def run(calls: int, rounds: int) -> None:
    variants = success_variants()
    kinds = {name: is_async for name, (_, is_async) in variants.items()}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (call, is_async) in variants.items():
            results[name].append(await time_calls(call, is_async, calls, None))
    baselines = {True: "baseline: await noop()", False: "baseline: sync noop()"}
    table(f"Success path (median of {rounds} rounds x {calls} calls)", results, baselines, kinds)

    opened = await open_variants()
    open_results: dict[str, list[float]] = {name: [] for name in opened}
    for _ in range(rounds):
        for name, (call, is_async, catch) in opened.items():
            open_results[name].append(await time_calls(call, is_async, calls // 4, catch))
    print(f"\nOpen-breaker refusal (median of {rounds} rounds x {calls // 4} calls, exception caught)")
    print(f"{'variant':<52} {'us/call':>9}")
    for name, samples in open_results.items():
        print(f"{name:<52} {statistics.median(samples) * 1e6:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, asyncio")
    asyncio.run(run(args.calls, args.rounds))


if __name__ == "__main__":
    main()
