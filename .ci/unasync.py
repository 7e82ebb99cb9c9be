#!/usr/bin/env python3
"""Generate the synchronous twins from their async source (hishel's ``scripts/unasync`` idea).

    python .ci/unasync.py            # rewrite the generated files
    python .ci/unasync.py --check    # fail (exit 1) if a generated file is out of date

Plain ordered text substitutions, no dependency: what cannot be expressed as one (cancel scopes,
semaphores, awaiting hooks) lives in hand-written helper modules that are themselves mapped
(``_aio`` -> ``_sio``, ``_async_run`` -> ``_sync_run``).
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMON = [
    ("async def ", "def "),
    ("async with ", "with "),
    ("async for ", "for "),
    ("await ", ""),
    ("handle_async_request", "handle_request"),
    ("def aclose(", "def close("),
    (".aclose()", ".close()"),
    (".aread()", ".read()"),
    ("anyio.sleep", "time.sleep"),
    ("AsyncBody", "SyncBody"),
    (".acheck(", ".check("),
    (".aopened(", ".opened("),
    (".aclosed(", ".closed("),
    ("AsyncRetryTransport", "RetryTransport"),
    ("AsyncCircuitBreakerTransport", "CircuitBreakerTransport"),
    ("AsyncResilientTransport", "ResilientTransport"),
    ("httpx.AsyncBaseTransport", "httpx.BaseTransport"),
    ("httpx.AsyncHTTPTransport", "httpx.HTTPTransport"),
    ("asynchronous=True", "asynchronous=False"),
    ("import anyio\n", ""),
    ("_aio", "_sio"),
    ("_async_run", "_sync_run"),
    ("AsyncFn", "SyncFn"),
    ("fall_back(", "fall_back_sync("),
    ("async_", "sync_"),
    ("(async source)", "(generated synchronous twin)"),
    ("(asyncio and trio)", "(threads)"),
]

FILES = [
    ("asgi_resilience/client/_async_transports.py", "asgi_resilience/client/_sync_transports.py"),
    ("asgi_resilience/policies/_async_run.py", "asgi_resilience/policies/_sync_run.py"),
]

HEADER = "# Generated from {source} by .ci/unasync.py: do not edit (edit the source, then run the script).\n"


def unasync(text: str, source: str) -> str:
    for old, new in COMMON:
        text = text.replace(old, new)
    return HEADER.format(source=Path(source).name) + text


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = 0
    for source, target in FILES:
        expected = unasync((ROOT / source).read_text(encoding="utf-8"), source)
        path = ROOT / target
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == expected:
            continue
        if check:
            stale += 1
            sys.stdout.writelines(
                difflib.unified_diff(current.splitlines(True), expected.splitlines(True), target, source)
            )
            print(f"{target} is out of date: run python .ci/unasync.py")
        else:
            path.write_text(expected, encoding="utf-8")
            print(f"wrote {target}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
