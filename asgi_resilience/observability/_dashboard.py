"""The live dashboard: one self-contained HTML page, a JSON snapshot and a Server-Sent Events stream.

Mount it where you want it (it is off unless mounted)::

    app.mount("/_resilience", dashboard_app(stack, auth=check_token))

Routes, relative to the mount point: ``/`` (the page), ``/snapshot.json`` and ``/stream``
(``text/event-stream``, one ``data:`` line of the snapshot every ``interval`` seconds). The page has
no external resources (no CDN, no build step) and reads the stream with ``EventSource``; colours
follow the Hystrix dashboard (green healthy, amber degraded, red open or shedding). Next to the
per-origin breakers of the httpx transports it shows the function policies of
``asgi_resilience.policies`` that report to the same telemetry: named breakers (the
``circuit_breakers`` component rows with ``"kind": "named"``), bulkheads (the ``bulkheads``
component) and the fallback, retry and hedge counters, each panel once a policy is used.

From the moment it is built, the dashboard samples the instruments every ``interval`` seconds into a
ring of ``history_seconds`` (see ``_history.py``): every snapshot carries ``history`` (rates, values
and latency percentiles per interval), so the page shows real rates and draws its charts (inline
SVG) on first paint. The first stream event carries the whole ring, later ones only what is new.

Access needs an ``auth`` callable, or ``allow_unauthenticated=True``, which serves loopback clients
only (and refuses requests that came through a proxy, since a proxy on the same host makes every
client look local, and requests for a ``Host`` that is not local, which is what DNS rebinding sends).
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import ipaddress
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import anyio
import anyio.lowlevel

from asgi_resilience._asgi import send_problem
from asgi_resilience.errors._exceptions import ConfigurationError
from asgi_resilience.errors._problem import ProblemDetails
from asgi_resilience.observability._history import History
from asgi_resilience.observability._names import METRICS
from asgi_resilience.observability._telemetry import NOOP, Telemetry, default_telemetry
from asgi_resilience.types import Message, Receive, Scope, Send

__all__ = ["DashboardApp", "DashboardAuth", "dashboard_app"]

logger = logging.getLogger("asgi_resilience.dashboard")

DashboardAuth = Callable[[Any], "bool | Awaitable[bool]"]
"""Called with the ``starlette.requests.Request``; returns (or awaits) True to let it in."""

_FORWARDING_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")


def _snapshot_source(source: Any) -> tuple[Callable[[], dict[str, Any]], Telemetry]:
    if source is True:
        source = default_telemetry()
    if isinstance(source, Telemetry):
        return source.snapshot, source
    stack = getattr(source, "stack", None)  # a ResilientApp
    if stack is not None and callable(getattr(stack, "snapshot", None)):
        return stack.snapshot, _telemetry_of(stack)
    snapshot = getattr(source, "snapshot", None)  # a ResilienceStack
    if callable(snapshot):
        return snapshot, _telemetry_of(source)
    raise ConfigurationError(
        f"dashboard_app needs a ResilienceStack, the app resilient() returned, or a Telemetry; got {source!r}"
    )


def _telemetry_of(stack: Any) -> Telemetry:
    telemetry = getattr(stack, "telemetry", None)
    return telemetry if isinstance(telemetry, Telemetry) else NOOP


def _kind(name: str) -> str:
    spec = METRICS.get(name)
    return spec.kind if spec is not None else "gauge"


def _is_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False


def _is_loopback_host(host: bytes) -> bool:
    """Whether a Host header names this machine: localhost or a loopback address, any port."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):  # [::1]:8000
        name = text[1 : text.find("]")] if "]" in text else ""
    else:
        name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, default=str, separators=(",", ":"), allow_nan=False).encode()


def _clean(value: Any) -> Any:
    """JSON cannot carry NaN or infinity; the page shows them as missing."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class DashboardApp:
    """The ASGI app :func:`dashboard_app` returns; :meth:`close` ends open event streams (on shutdown)."""

    def __init__(
        self,
        snapshot: Callable[[], dict[str, Any]],
        *,
        auth: DashboardAuth | None,
        allow_unauthenticated: bool,
        interval: float,
        stream_seconds: float,
        history: History | None = None,
    ) -> None:
        self._snapshot = snapshot
        self.history = history
        self._auth = auth
        self._allow_unauthenticated = allow_unauthenticated
        self._interval = interval
        self._stream_seconds = stream_seconds
        self.closed = False
        script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
        self._page_headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (
                b"content-security-policy",
                (
                    "default-src 'none'; connect-src 'self'; img-src data:; style-src 'unsafe-inline'; "
                    f"script-src 'sha256-{script_hash}'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
                ).encode(),
            ),
        ]

    def close(self) -> None:
        """End every open event stream within one interval (servers wait for open requests on shutdown)
        and stop sampling the history."""
        self.closed = True
        if self.history is not None:
            self.history.close()

    def data(self, since: float | None = None) -> dict[str, Any]:
        """The snapshot, with the history (only the intervals that end after ``since``, if given)."""
        data = dict(self._snapshot())
        data["time"] = time.time()
        data["interval"] = self._interval
        if self.history is not None:
            self.history.take_if_due()
            data["history"] = self.history.series(since)
        return _clean(data)  # type: ignore[no-any-return]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return  # lifespan: nothing to start or stop
        if not await self._allowed(scope):
            return await send_problem(
                send,
                ProblemDetails(status=403, detail="the resilience dashboard is not open to this client"),
                head=scope.get("method") == "HEAD",
            )
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            return await send_problem(
                send, ProblemDetails(status=405), extra_headers=[(b"allow", b"GET, HEAD")], head=False
            )
        # Starlette keeps the full path and extends root_path; Litestar strips the mount path instead.
        root = scope.get("root_path", "")
        path: str = scope.get("path", "")
        route = (path[len(root) :] if root and path.startswith(root) else path).rstrip("/")
        head = method == "HEAD"
        if route == "":
            await send({"type": "http.response.start", "status": 200, "headers": self._page_headers})
            await send({"type": "http.response.body", "body": b"" if head else _PAGE_BYTES})
        elif route in ("/snapshot.json", "/snapshot"):
            body = _json_bytes(self.data())
            headers = [
                (b"content-type", b"application/json"),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if head else body})
        elif route == "/stream":
            await self._stream(receive, send, head)
        else:
            await send_problem(send, ProblemDetails(status=404), head=head)

    async def _allowed(self, scope: Scope) -> bool:
        if self._auth is None:
            if not self._allow_unauthenticated or not _is_loopback(scope):
                return False
            headers = scope.get("headers", ())
            # A reverse proxy on this host makes every client look like loopback.
            if any(name in _FORWARDING_HEADERS for name, _ in headers):
                return False
            # DNS rebinding: a web page whose name resolves to 127.0.0.1 would be same-origin with us.
            host = next((value for name, value in headers if name == b"host"), None)
            return host is None or _is_loopback_host(host)
        from starlette.requests import Request

        try:
            verdict = self._auth(Request(scope))
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:
            logger.exception("the dashboard auth callable raised; access denied")
            return False
        return verdict is True

    async def _stream(self, receive: Receive, send: Send, head: bool) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        deadline = anyio.current_time() + self._stream_seconds
        async with anyio.create_task_group() as group:

            async def watch_disconnect() -> None:
                while True:
                    message: Message = await receive()
                    if message["type"] == "http.disconnect":
                        group.cancel_scope.cancel()
                        return
                    # a receive that answers without ever suspending (request messages again and again)
                    # must not starve the stream or make this task deaf to its cancellation
                    await anyio.lowlevel.checkpoint()

            group.start_soon(watch_disconnect)
            try:
                await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
                since: float | None = None  # the first event carries the whole history, later ones what is new
                while not self.closed and anyio.current_time() < deadline:
                    data = self.data(since)
                    times = data.get("history", {}).get("times")
                    if times:
                        since = times[-1]
                    event = b"data: " + _json_bytes(data) + b"\n\n"
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                    await anyio.sleep(self._interval)
                # The browser reconnects by itself; ending bounds how long one connection lives.
                await send({"type": "http.response.body", "body": b""})
            except OSError:
                pass  # the client went away while we were writing (ASGI spec >= 2.4 servers)
            group.cancel_scope.cancel()


def dashboard_app(
    stack_or_telemetry: Any,
    *,
    auth: DashboardAuth | None = None,
    allow_unauthenticated: bool = False,
    interval: float = 1.0,
    stream_seconds: float = 300.0,
    history_seconds: float = 300.0,
) -> DashboardApp:
    """An ASGI app showing the live state of a stack: mount it, it is never on by itself.

    Args:
        stack_or_telemetry: a :class:`~asgi_resilience.ResilienceStack`, the app
            :func:`~asgi_resilience.resilient` returned, a :class:`Telemetry`, or True for the process
            default telemetry (what components built with ``telemetry=True`` report to).
        auth: called with the ``starlette.requests.Request`` (sync or async); only ``True`` lets the
            request in, anything else (or an exception) answers 403.
        allow_unauthenticated: serve without ``auth``, to loopback clients only; requests carrying
            ``Forwarded``/``X-Forwarded-For``/``X-Real-IP`` are refused, and so is a ``Host`` other than
            ``localhost`` or a loopback address (DNS rebinding).
        interval: seconds between two stream events.
        stream_seconds: how long one stream connection lives before the browser reconnects.
        history_seconds: how far back the charts go (sampled every ``interval``, at most 600 samples)
            by a daemon thread that reads instrument totals only; ``close()`` stops it.

    .. versionadded:: 0.1.0
    """
    snapshot, telemetry = _snapshot_source(stack_or_telemetry)
    if auth is None and not allow_unauthenticated:
        raise ConfigurationError(
            "dashboard_app needs auth=<callable(request) -> bool> or allow_unauthenticated=True "
            "(which serves loopback clients only)"
        )
    if auth is not None and allow_unauthenticated:
        raise ConfigurationError("pass either auth= or allow_unauthenticated=True, not both")
    if auth is not None and not callable(auth):
        raise ConfigurationError(f"auth must be a callable taking the request, got {auth!r}")
    for name, value in (
        ("interval", interval),
        ("stream_seconds", stream_seconds),
        ("history_seconds", history_seconds),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
            raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    history = History(telemetry.sample, _kind, interval=float(interval), seconds=float(history_seconds))
    history.start()
    return DashboardApp(
        snapshot,
        auth=auth,
        allow_unauthenticated=allow_unauthenticated,
        interval=float(interval),
        stream_seconds=float(stream_seconds),
        history=history,
    )


def _load_page() -> tuple[str, str]:
    page = resources.files("asgi_resilience.observability").joinpath("dashboard.html").read_text(encoding="utf-8")
    script = page[page.index("<script>") + len("<script>") : page.index("</script>")]
    return page, script


_PAGE, _SCRIPT = _load_page()
_PAGE_BYTES = _PAGE.encode()
