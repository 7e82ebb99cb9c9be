"""Test helpers for applications that use asgi-resilience (and for our own suite).

* :class:`ManualClock`: a clock that moves only when told to; every policy takes ``clock=``.
* :class:`ASGIHarness`: drives an ASGI app with a scripted ``receive`` and records every message
  it sends, so a test can assert the exact message sequence (``TestClient`` hides it).
* :func:`http_scope`: a well-formed HTTP scope.
* :func:`set_testing`: no retry backoff sleeps (and optionally fewer attempts) in the httpx
  transports, as a call or a context manager.
* :class:`RedisServer`: starts a throw-away ``redis-server`` on a free loopback port and stops it by
  its own process id; it can be killed and restarted on the same port to test outages.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

import anyio

from asgi_resilience._clock import ManualClock
from asgi_resilience.policies._config import set_testing
from asgi_resilience.types import ASGIApp, Message, Scope

__all__ = [
    "ASGIHarness",
    "ManualClock",
    "RedisServer",
    "free_port",
    "http_scope",
    "redis_command_counts",
    "set_testing",
    "stop_process",
]


def http_scope(
    method: str = "GET",
    path: str = "/",
    *,
    query_string: bytes = b"",
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    server: tuple[str, int] | None = ("testserver", 80),
    scheme: str = "http",
    type: str = "http",
    **extra: Any,
) -> Scope:
    """A complete ASGI HTTP (or websocket) scope; header names are lower-cased."""
    raw = [
        (
            (k.encode("latin-1") if isinstance(k, str) else k).lower(),
            v.encode("latin-1") if isinstance(v, str) else v,
        )
        for k, v in headers
    ]
    if not any(k == b"host" for k, _ in raw) and server is not None:
        raw.insert(0, (b"host", server[0].encode("latin-1")))
    scope: Scope = {
        "type": type,
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": scheme if type == "http" else ("wss" if scheme == "https" else "ws"),
        "path": path,
        "raw_path": path.encode("latin-1"),
        "root_path": "",
        "query_string": query_string,
        "headers": raw,
        "client": client,
        "server": server,
        "state": {},
        "extensions": {},
    }
    if type == "websocket":
        scope.pop("method")
        scope["subprotocols"] = []
    scope.update(extra)
    return scope


class ASGIHarness:
    """Run an ASGI app once with a scripted ``receive`` and record what it sends.

    ``receive`` yields the request body (``body`` or ``chunks``), then waits until the response is
    complete (or ``disconnect_after`` body messages were sent) and reports ``http.disconnect``.
    Exceptions from the app propagate out of :meth:`run`; :attr:`messages` keeps what was sent.
    """

    def __init__(
        self,
        *,
        body: bytes = b"",
        chunks: Sequence[bytes] | None = None,
        disconnect_after: int | None = None,
        disconnect_immediately: bool = False,
    ) -> None:
        parts = list(chunks) if chunks is not None else [body]
        self._incoming: list[Message] = [
            {"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)
        ]
        if disconnect_immediately:
            self._incoming = [{"type": "http.disconnect"}]
        self._disconnect_after = disconnect_after
        self._done = anyio.Event()
        self.messages: list[Message] = []
        self.receive_calls = 0

    async def receive(self) -> Message:
        self.receive_calls += 1
        if self._incoming:
            return self._incoming.pop(0)
        await self._done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self._done.is_set() and message["type"].startswith("http."):
            raise OSError("the client has disconnected")  # as servers with ASGI spec >= 2.4 do
        self.messages.append(dict(message))
        body_count = sum(1 for m in self.messages if m["type"] == "http.response.body")
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._done.set()
        elif self._disconnect_after is not None and body_count >= self._disconnect_after:
            self._done.set()

    async def run(self, app: ASGIApp, scope: Scope | None = None) -> ASGIHarness:
        await app(scope if scope is not None else http_scope(), self.receive, self.send)
        return self

    @property
    def types(self) -> list[str]:
        """The ``type`` of every message sent, in order."""
        return [m["type"] for m in self.messages]

    @property
    def start_count(self) -> int:
        return sum(1 for m in self.messages if m["type"] == "http.response.start")

    @property
    def start(self) -> Message:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        if not starts:
            raise AssertionError(f"the app sent no http.response.start (messages: {self.types})")
        return starts[0]

    @property
    def status(self) -> int:
        return int(self.start["status"])

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in self.start.get("headers", [])]

    def header(self, name: str) -> str | None:
        """The first value of response header ``name`` (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    @property
    def complete(self) -> bool:
        """Whether a final body message (``more_body`` false) was sent."""
        return any(m["type"] == "http.response.body" and not m.get("more_body", False) for m in self.messages)

    def json(self) -> Any:
        return json.loads(self.body)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(
    process: subprocess.Popen[Any] | None,
    sig: signal.Signals = signal.SIGTERM,
    *,
    timeout: float = 5.0,
    group: bool = False,
) -> None:
    """Stop ``process`` by its own pid with ``sig``, escalating to SIGKILL after ``timeout`` seconds.

    With ``group=True`` (for a process started with ``start_new_session=True``, such as a server
    with worker processes), the signals go to the process group whose id is the process's pid, and
    whatever is left of that group is killed at the end even when the leader itself has exited: a
    worker orphaned by its master would otherwise hold the caller's pipes open for ever.
    """
    if process is None:
        return

    def signal_it(signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(process.pid, signum)
            else:
                os.kill(process.pid, signum)

    if process.poll() is None:
        signal_it(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_it(signal.SIGKILL)
            process.wait(timeout=5)
    if group:
        signal_it(signal.SIGKILL)


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1, nothing persisted, stopped by its own pid.

    ``with RedisServer() as server: server.url``. :meth:`kill` and :meth:`start` simulate an outage
    and a recovery on the same port.
    """

    def __init__(self, port: int | None = None, *, binary: str | None = None, args: Sequence[str] = ()) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not on PATH; install it (apt-get install redis-server)")
        self.binary = found
        self.port = port or free_port()
        self.args = list(args)
        self._dir = tempfile.mkdtemp(prefix="asgi-resilience-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--daemonize", "no",
            *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode} on port {self.port}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crash would."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), escalating to SIGKILL after 5 seconds."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        stop_process(process, sig)

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


_OWN_COMMANDS = frozenset({"info", "hello", "client|setinfo", "config|resetstat"})


def redis_command_counts(url: str) -> dict[str, int]:
    """Calls per command the server at ``url`` ran so far (``INFO commandstats``; commands inside Lua
    scripts included), without the bookkeeping of readers like this one (INFO, HELLO, CLIENT SETINFO,
    CONFIG RESETSTAT). ``sum(...)`` of two readings around a loop gives commands per request.
    """
    import redis

    redis_cls: Any = redis.Redis  # typed from redis-py 5.0.x, typed later: one spelling for both
    client = redis_cls.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    counts = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    return {name: calls for name, calls in counts.items() if name not in _OWN_COMMANDS}
