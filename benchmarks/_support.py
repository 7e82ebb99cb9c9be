"""Shared helpers for the benchmark and end-to-end scripts: processes on loopback, load, tables.

Every process is started here and stopped by its own pid; every load loop is bounded in request count
and in time.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from asgi_resilience.testing import free_port, stop_process
from asgi_resilience.types import Message, Receive, Scope, Send

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "RawResult",
    "minimal_app",
    "null_receive",
    "null_send",
    "raw_pressure",
    "LOAD_TABLE_HEADERS",
    "ROOT",
    "LoadResult",
    "Uvicorn",
    "load",
    "percentile",
    "print_table",
    "wait_http",
]


_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
_BODY = {"type": "http.response.body", "body": b"ok", "more_body": False}
_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def minimal_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The in-process baseline: one start, one body message."""
    await send(_START)
    await send(_BODY)


async def null_receive() -> Message:
    return _REQUEST


async def null_send(message: Message) -> None:
    return None


def wait_http(url: str, *, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers anything (or fail if ``process`` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class Uvicorn:
    """``uvicorn <app> --workers N`` on 127.0.0.1 in a subprocess, stopped by its own pid."""

    def __init__(
        self,
        app: str,
        *,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.workers = workers
        self.port = port or free_port()
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_path: str = "/healthz") -> Uvicorn:
        cmd = [
            sys.executable, "-m", "uvicorn", self.app,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers), "--log-level", "warning", "--no-access-log",
            *self.extra,
        ]  # fmt: skip
        # its own session: the workers form a process group that stop() ends as a whole
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, start_new_session=True)
        wait_http(self.url + ready_path, process=self.process)
        if self.workers > 1:
            time.sleep(0.5 + 0.2 * self.workers)  # let every worker finish booting before the load
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process, timeout=10, group=True)

    def __enter__(self) -> Uvicorn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; infinity when there are none."""
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@dataclass
class LoadResult:
    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0


async def load(
    name: str,
    url: str,
    *,
    requests: int,
    concurrency: int,
    method: str = "GET",
    headers: Callable[[int], Mapping[str, str]] | None = None,
    timeout: float = 30.0,
    max_seconds: float = 120.0,
    on_response: Callable[[httpx.Response], None] | None = None,
) -> LoadResult:
    """Send ``requests`` requests with ``concurrency`` workers (bounded in count and in time)."""
    result = LoadResult(name)
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                try:
                    response = await client.request(method, url, headers=headers(i) if headers else None)
                except httpx.HTTPError as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.statuses[response.status_code] += 1
                if on_response is not None:
                    on_response(response)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed = time.perf_counter() - started
    return result


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


LOAD_TABLE_HEADERS = ["run", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "statuses"]


def _quickack(writer: asyncio.StreamWriter) -> None:
    """Acknowledge at once (Linux TCP_QUICKACK: sends a pending ACK now; it resets itself).

    uvicorn's worker processes (``--workers`` > 1) write the response head and body in two segments
    without TCP_NODELAY; with the client's delayed ACK that costs 40 ms per response, which would be
    measured as server latency. Real clients pay it too; it is not what these scenarios measure.
    """
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "TCP_QUICKACK", None)
    if sock is not None and option is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)
        except OSError:
            pass


@dataclass
class RawResult:
    """What :func:`raw_pressure` saw: per status, client latencies and a chosen response header."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: dict[int, list[float]] = field(default_factory=dict)
    header_values: dict[int, list[str]] = field(default_factory=dict)
    samples: dict[int, bytes] = field(default_factory=dict)  # one raw response head per status
    # per status, one dict per response: the ``capture`` headers it carried (lower-case names)
    fields: dict[int, list[dict[bytes, str]]] = field(default_factory=dict)

    def values(self, status: int, name: bytes) -> list[str]:
        """The values of captured header ``name`` on the responses with ``status`` that carried it."""
        return [f[name] for f in self.fields.get(status, []) if name in f]


async def raw_pressure(
    host: str,
    port: int,
    path: str,
    *,
    concurrency: int,
    seconds: float,
    header: bytes = b"x-server-ms",
    requests_per_connection: int | None = None,
    pause_after: Mapping[int, float] | None = None,
    capture: Sequence[bytes] = (),
    reconnect: bool = False,
) -> RawResult:
    """Closed-loop HTTP/1.1 keep-alive load over raw sockets: ``concurrency`` connections for ``seconds``.

    A few microseconds of client CPU per request (httpx needs far more), so that on a small machine the
    load generator does not starve the server it measures. GET only; bodies must carry Content-Length.
    ``requests_per_connection`` stops each connection after that many requests (a burst: 1), and the
    latency then includes connecting. ``pause_after`` maps a status to seconds the connection waits
    before its next request (a client backing off after a 503). ``capture``: more response headers to
    keep per response (in :attr:`RawResult.fields`). ``reconnect``: after ``requests_per_connection``
    requests a connection is replaced by a new one until ``seconds`` are over (requests spread over the
    workers of a multi-process server, which each accept connections).
    """
    result = RawResult()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: e2e\r\n\r\n".encode()
    stop_at = time.monotonic() + seconds
    prefix = header.lower() + b":"
    wanted = {name.lower() for name in capture}

    async def connection() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        sent = 0
        while time.monotonic() < stop_at and (requests_per_connection is None or sent < requests_per_connection):
            sent += 1
            try:
                started = time.perf_counter()
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                if requests_per_connection is None:
                    started = time.perf_counter()  # steady state: keep-alive latency only
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                _quickack(writer)  # a pending delayed ACK goes out now, releasing the body segment
                elapsed = time.perf_counter() - started
                lines = head.split(b"\r\n")
                status = int(lines[0].split(b" ", 2)[1])
                length, close, value = 0, False, ""
                captured: dict[bytes, str] = {}
                for line in lines[1:]:
                    lower = line.lower()
                    if wanted:
                        name = lower.split(b":", 1)[0]
                        if name in wanted:
                            captured[name] = line.split(b":", 1)[1].strip().decode("latin-1")
                    if lower.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                    elif lower.startswith(b"connection:") and b"close" in lower:
                        close = True
                    elif lower.startswith(prefix):
                        value = line.split(b":", 1)[1].strip().decode("latin-1")
                if length:
                    await reader.readexactly(length)
                result.statuses[status] += 1
                result.latencies.setdefault(status, []).append(elapsed)
                result.header_values.setdefault(status, []).append(value)
                result.samples.setdefault(status, head)
                if wanted:
                    result.fields.setdefault(status, []).append(captured)
                if close:
                    writer.close()
                    reader = writer = None
                if pause_after and status in pause_after:
                    await asyncio.sleep(pause_after[status])
                if reconnect and requests_per_connection is not None and sent >= requests_per_connection:
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    sent = 0
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                result.errors[type(exc).__name__] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return result
