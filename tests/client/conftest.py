"""A real flaky origin on loopback (uvicorn in a thread) and a raw-socket misbehaving server.

The origin counts what reaches it per ``key`` query parameter, including request bodies and
whether each body arrived complete, so tests assert what the network actually carried.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qs

import pytest
import uvicorn

from asgi_resilience.client import _core
from asgi_resilience.testing import free_port
from asgi_resilience.types import Receive, Scope, Send


@dataclass
class OriginLog:
    hits: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    bodies: defaultdict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    partial: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, key: str) -> int:
        with self.lock:
            self.hits[key] += 1
            return self.hits[key]


class FlakyOrigin:
    """Endpoints (all take ``key=`` to count separately):

    * ``/status?code=503&retry_after=...``: always that status.
    * ``/flaky?fail=N&code=503&retry_after=...``: the first N calls per key fail, then 200.
    * ``/slow?ms=``: answers 200 after ``ms`` milliseconds.
    * ``/drip?chunks=&gap_ms=``: a body in chunks with gaps.
    * ``/echo?fail=N``: reads the whole body (logs it, or logs a partial body), fails N times.
    """

    def __init__(self) -> None:
        self.log = OriginLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        key = query.get("key", "default")
        path = scope["path"]
        log = self.log
        with log.lock:
            log.in_flight += 1
            log.max_in_flight = max(log.max_in_flight, log.in_flight)
        try:
            body = b""
            complete = True
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    complete = False
                    break
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
            if not complete:
                with log.lock:
                    log.partial[key] += 1
                return
            count = log.hit(key)
            if path == "/echo":
                with log.lock:
                    log.bodies[key].append(body)
            status = 200
            headers: list[tuple[bytes, bytes]] = [(b"content-type", b"text/plain")]
            if path in ("/status", "/flaky", "/echo"):
                fail = int(query.get("fail", "0")) if path != "/status" else 1_000_000
                if count <= fail:
                    status = int(query.get("code", "503"))
                    if "retry_after" in query:
                        value = query["retry_after"]
                        if value.startswith("date+"):
                            value = formatdate(time.time() + float(value[5:]), usegmt=True)
                        headers.append((b"retry-after", value.encode()))
            if path == "/slow":
                await asyncio.sleep(int(query.get("ms", "100")) / 1000)
            if path == "/drip":
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                for _ in range(int(query.get("chunks", "5"))):
                    await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
                    await asyncio.sleep(int(query.get("gap_ms", "50")) / 1000)
                await send({"type": "http.response.body", "body": b""})
                return
            payload = f"{path} {count}".encode()
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
        finally:
            with log.lock:
                log.in_flight -= 1


class Served:
    def __init__(self, app: FlakyOrigin, server: uvicorn.Server, port: int) -> None:
        self.app = app
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.alias_url = f"http://localhost:{port}"  # same server, another origin (host differs)

    @property
    def log(self) -> OriginLog:
        return self.app.log

    def open_connections(self) -> int:
        return len(self.server.server_state.connections)

    def reset(self) -> None:
        self.app.log = OriginLog()


@pytest.fixture(scope="session")
def served_origin() -> Iterator[Served]:
    app = FlakyOrigin()
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off", backlog=512)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="flaky-origin", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the flaky origin did not start")
        time.sleep(0.01)
    try:
        yield Served(app, server, port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def origin(served_origin: Served) -> Served:
    served_origin.reset()
    return served_origin


class RawServer:
    """Accepts connections, reads the request head, then closes without answering (a reset)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="raw-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                if data:
                    self.requests += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def raw_server() -> Iterator[RawServer]:
    server = RawServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def fresh_registries() -> Iterator[None]:
    """Breakers and budgets are process-wide by design; every test starts from a clean slate."""
    _core.BREAKERS.clear()
    _core.BUDGETS.clear()
    yield
    _core.BREAKERS.clear()
    _core.BUDGETS.clear()


def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    return free_port()
