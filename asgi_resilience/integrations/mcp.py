"""MCP servers (Model Context Protocol, Streamable HTTP) behind the stack, per JSON-RPC exchange.

::

    from mcp.server.mcpserver import MCPServer
    from asgi_resilience.integrations.mcp import resilient_mcp

    server = MCPServer("tools")
    app = resilient_mcp(
        server.streamable_http_app(),
        tool_rate_limit="30/minute",            # tool calls per client
        tool_limits={"search": "5/minute"},     # per client and tool name
        timeout=10.0,                           # every POST exchange, event-stream answers included
        tool_timeouts={"report": 60.0},
        concurrency=10,                         # POST exchanges in flight; never the standing GET stream
    )

Generic HTTP rules do not fit MCP: every message goes to one path, a POST may be answered with an
event stream, the standing ``GET`` stream lives as long as the session, and clients read JSON-RPC,
not problem documents. :class:`MCPMiddleware` (outermost) reads each POST's JSON-RPC message once
and, for the MCP endpoint:

* **bounds each POST exchange**, whatever the response's content type: on the deadline the app is
  cancelled, the client gets a JSON-RPC error *for that request id* (a 504 ``application/json``
  response, or a last event on a stream that already started), and in a session-based connection
  the server is told ``notifications/cancelled`` for the request, so the tool itself is cancelled;
* routes the standing ``GET`` stream and the session's ``DELETE`` around the stack: neither is
  timed, takes a concurrency slot nor counts against a rate limit;
* exposes the parsed message as ``scope["asgi_resilience.mcp"]`` (an :class:`MCPCall`), so rate-limit
  rules count **tool calls** (``tools/call``; not ``initialize``, ``tools/list``, notifications)
  per client and per tool name;
* turns our own rejections (429, 503, 504, and any problem document from the stack) into a
  JSON-RPC error body (``application/json``; ``error.data`` carries ``status``, ``retryAfter`` and
  the problem ``type``) with the usual ``Retry-After``/``RateLimit`` headers kept, so the SDK's
  client can tell "retry after N s" from a server fault.

Both protocol generations work: session-based (``initialize``, ``Mcp-Session-Id``) and sessionless
(2026-07-28, one self-contained POST per request). Guard each tool with the function policies
(``asgi_resilience.policies``: ``circuit_breaker``, ``time_limit``, ``bulkhead``, ``fallback``) as
decorators under ``@server.tool()``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import anyio

from asgi_resilience._asgi import get_header
from asgi_resilience._deadline import deadline_scope
from asgi_resilience._proxy import TrustedProxies, network_key
from asgi_resilience.errors import ConfigurationError
from asgi_resilience.observability._telemetry import Telemetry, resolve_telemetry
from asgi_resilience.ratelimit import Rule
from asgi_resilience.stack import ConcurrencyLayer, ResilienceStack
from asgi_resilience.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SCOPE_KEY", "MCPCall", "MCPMiddleware", "resilient_mcp", "tool_rules"]

SCOPE_KEY = "asgi_resilience.mcp"
A = TypeVar("A", bound=ASGIApp)

_TOOL_CALL = "tools/call"
_CANCEL_GRACE = 1.0  # seconds the server gets to accept the cancellation notification


@dataclass(frozen=True, slots=True)
class MCPCall:
    """The JSON-RPC message of one MCP POST, as the middleware read it.

    ``method`` is None when the body is not one JSON-RPC message (too large, not JSON, a batch):
    such a POST counts as a tool call, so it cannot slip past the tool limits.
    """

    method: str | None
    id: str | int | None
    tool: str | None
    session: str | None

    @property
    def is_tool_call(self) -> bool:
        return self.method == _TOOL_CALL or self.method is None


def _parse(body: bytes, session: str | None) -> MCPCall:
    try:
        message = json.loads(body)
    except ValueError:
        return MCPCall(None, None, None, session)
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        if isinstance(message, dict) and ("result" in message or "error" in message):
            return MCPCall("response", None, None, session)  # a client's answer to a server request
        return MCPCall(None, None, None, session)
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        request_id = None
    params = message.get("params")
    tool = params.get("name") if isinstance(params, dict) and message["method"] == _TOOL_CALL else None
    return MCPCall(message["method"], request_id, tool if isinstance(tool, str) else None, session)


def _error_code(status: int) -> int:
    # JSON-RPC reserves -32000..-32099 for server errors: -32000 - (status % 100), e.g. 429 -> -32029
    return -32603 if status == 500 else -32000 - status % 100


def _jsonrpc_error(request_id: Any, status: int, title: str, data: dict[str, Any]) -> bytes:
    error = {"code": _error_code(status), "message": title, "data": {"status": status, **data}}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":")).encode()


class _Exchange:
    """The send side of one POST exchange: problem documents become JSON-RPC errors."""

    __slots__ = ("_held", "_held_body", "_send", "call", "ended", "started", "stream")

    def __init__(self, send: Send, call: MCPCall) -> None:
        self._send = send
        self.call = call
        self.started = False
        self.stream = False
        self.ended = False
        self._held: Message | None = None
        self._held_body = b""

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            content_type = _header(message, b"content-type")
            if content_type.startswith(b"application/problem+json"):
                self._held = message  # ours (the MCP SDK never sends problem documents): rewritten below
                return
            self.started = True
            self.stream = content_type.startswith(b"text/event-stream")
        elif kind == "http.response.body":
            if self._held is not None:
                self._held_body += message.get("body", b"")
                if not message.get("more_body", False):
                    await self._send_rewritten()
                return
            if not message.get("more_body", False):
                self.ended = True
        await self._send(message)

    async def _send_rewritten(self) -> None:
        start, self._held = cast(Message, self._held), None
        status: int = start["status"]
        try:
            problem = json.loads(self._held_body)
        except ValueError:
            problem = {}
        data: dict[str, Any] = {}
        if isinstance(problem, dict):
            data = {k: problem[k] for k in ("type", "detail", "violated_policies") if k in problem}
        retry_after = _header(start, b"retry-after")
        if retry_after.isascii() and retry_after.isdigit():  # "²".isdigit() is True; int() refuses it
            data["retryAfter"] = int(retry_after)
        title = problem.get("title") if isinstance(problem, dict) else None
        body = _jsonrpc_error(self.call.id, status, str(title or "Error"), data)
        headers = [
            (name, value)
            for name, value in start["headers"]
            if name.lower() not in (b"content-type", b"content-length")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        self.ended = True

    async def deadline_exceeded(self, limit: float) -> None:
        """End the exchange with a JSON-RPC error for its request id, whatever was sent so far."""
        if self.ended:
            return
        body = _jsonrpc_error(
            self.call.id, 504, "Request timed out", {"type": "timeout", "detail": f"no answer within {limit:g} s"}
        )
        if not self.started:
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await self._send({"type": "http.response.start", "status": 504, "headers": headers})
            await self._send({"type": "http.response.body", "body": body, "more_body": False})
        elif self.stream:
            event = b"event: message\r\ndata: " + body + b"\r\n\r\n"
            await self._send({"type": "http.response.body", "body": event, "more_body": True})
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        self.ended = True


def _header(message: Message, name: bytes) -> bytes:
    for key, value in message.get("headers", ()):
        if key.lower() == name:
            return bytes(value).lower()
    return b""


class MCPMiddleware:
    """Per-exchange deadlines, JSON-RPC rejections and stream routing for an MCP endpoint.

    Args:
        app: the MCP app, usually already wrapped in the stack (rate limits, concurrency).
        passthrough: the app that serves the standing ``GET`` stream and the session ``DELETE``
            (the bare MCP app, so that neither is timed, limited nor takes a concurrency slot);
            None serves them with ``app``.
        path: the MCP endpoint (the SDK's default ``/mcp``); other paths pass through untouched.
        timeout: seconds for one POST exchange, from its arrival to the last byte of its answer
            (None: untimed).
        tool_timeouts: per tool name, instead of ``timeout`` (None: that tool is untimed).
        max_body_size: larger POST bodies are not parsed (and count as tool calls).
        telemetry: count deadlines in ``asgi_resilience.timeouts{phase}``; False for none.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        passthrough: ASGIApp | None = None,
        path: str = "/mcp",
        timeout: float | None = 30.0,
        tool_timeouts: Mapping[str, float | None] | None = None,
        max_body_size: int = 4 * 1024 * 1024,
        telemetry: Telemetry | bool = True,
    ) -> None:
        self.app = app
        self._timeouts = resolve_telemetry(telemetry).instrument("asgi_resilience.timeouts")
        self.passthrough = passthrough if passthrough is not None else app
        if not path.startswith("/"):
            raise ConfigurationError(f"path must start with '/', got {path!r}")
        self.path = path.rstrip("/") or "/"
        self.timeout = _check_seconds(timeout, "timeout")
        self.tool_timeouts = {
            name: _check_seconds(value, f"tool_timeouts[{name!r}]") for name, value in (tool_timeouts or {}).items()
        }
        if isinstance(max_body_size, bool) or not isinstance(max_body_size, int) or max_body_size < 1:
            raise ConfigurationError(f"max_body_size must be a positive number of bytes, got {max_body_size!r}")
        self.max_body_size = max_body_size

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.app, name)  # the wrapped app's attributes (``.stack`` of the ResilientApp...)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope.get("path", "").rstrip("/") or "/") != self.path:
            await self.app(scope, receive, send)
            return
        method = scope.get("method")
        if method in ("GET", "DELETE"):
            await self.passthrough(scope, receive, send)  # the standing stream and the session's end
            return
        if method != "POST":
            await self.app(scope, receive, send)
            return
        arrival = anyio.current_time()
        body, complete, replay = await self._read(receive)
        session_header = get_header(scope, b"mcp-session-id")
        session = session_header.decode("latin-1") if session_header else None
        call = _parse(body, session) if complete else MCPCall(None, None, None, session)
        scope[SCOPE_KEY] = call
        limit = self.tool_timeouts.get(call.tool, self.timeout) if call.tool in self.tool_timeouts else self.timeout
        exchange = _Exchange(send, call)
        if limit is None or call.id is None:  # notifications and responses are answered at once (202)
            await self.app(scope, replay, exchange.send)
            return
        deadline = arrival + limit
        with anyio.CancelScope(deadline=deadline) as timed, deadline_scope(_monotonic_deadline(limit)):
            await self.app(scope, replay, exchange.send)
        if timed.cancelled_caught:
            self._timeouts.add(1, {"phase": "after_start" if exchange.started else "before_start"})
            await exchange.deadline_exceeded(limit)
            if session is not None:
                await self._cancel_in_session(scope, call)

    async def _read(self, receive: Receive) -> tuple[bytes, bool, Receive]:
        """The request body (up to ``max_body_size``), whether it is complete, and a receive that replays it."""
        chunks: list[Message] = []
        size = 0
        complete = False
        while True:
            message = await receive()
            chunks.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                complete = True
                break
            if size > self.max_body_size:
                break
        body = b"".join(m.get("body", b"") for m in chunks if m["type"] == "http.request")

        async def replay() -> Message:
            if chunks:
                return chunks.pop(0)
            return await receive()

        return body, complete and size <= self.max_body_size, replay

    async def _cancel_in_session(self, scope: Scope, call: MCPCall) -> None:
        """Tell a session-based server that the request is cancelled (its tool runs in the session's task)."""
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": call.id, "reason": "deadline exceeded"},
            }
        ).encode()
        keep = {b"mcp-session-id", b"mcp-protocol-version", b"host", b"authorization", b"origin", b"cookie"}
        headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() in keep]
        headers += [
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"content-length", str(len(body)).encode()),
        ]
        notification = {k: v for k, v in scope.items() if k != SCOPE_KEY}
        notification["headers"] = headers
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def discard(message: Message) -> None:
            pass

        with anyio.move_on_after(_CANCEL_GRACE, shield=True):
            try:
                await self.passthrough(notification, receive, discard)
            except Exception:  # the client already has its answer; a failed cancellation is not its error
                pass


def _monotonic_deadline(limit: float) -> float:
    import time

    return time.monotonic() + limit


def _check_seconds(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(f"{what} must be a positive number of seconds or None, got {value!r}")
    return float(value)


def tool_rules(
    *,
    tool_rate_limit: str | None = "60/minute",
    tool_limits: Mapping[str, str] | None = None,
    trusted_proxies: Any = None,
) -> list[Rule]:
    """Rate-limit rules that count MCP tool calls per client, and per client and tool name.

    Only POSTs that :class:`MCPMiddleware` read as ``tools/call`` (or could not read) count:
    ``initialize``, ``tools/list``, notifications and the session's streams do not.
    """
    proxies = trusted_proxies if isinstance(trusted_proxies, TrustedProxies) else TrustedProxies(trusted_proxies)
    limits = dict(tool_limits or {})

    def tool_call(request: Any) -> MCPCall | None:
        call = request.scope.get(SCOPE_KEY)
        return call if isinstance(call, MCPCall) and call.is_tool_call else None

    def client(request: Any) -> str:
        ip = proxies.client_ip(request.scope)
        return "unknown" if ip is None else network_key(ip)

    def per_client(request: Any) -> str | None:
        return None if tool_call(request) is None else "mcp:" + client(request)

    def per_tool(request: Any) -> str | None:
        call = tool_call(request)
        if call is None or call.tool not in limits:
            return None
        return f"mcp:{client(request)}:{call.tool}"

    def tool_limit(request: Any) -> str | None:
        call = tool_call(request)
        return None if call is None else limits.get(call.tool or "")

    rules = []
    if tool_rate_limit is not None:
        rules.append(Rule(tool_rate_limit, key=per_client, name="mcp-tools"))
    if limits:
        for name, rate in limits.items():
            Rule(rate)  # validate each rate string now
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"tool_limits keys must be tool names, got {name!r}")
        rules.append(Rule(tool_limit, key=per_tool, name="mcp-tool"))
    return rules


def resilient_mcp(
    app: A,
    *,
    path: str = "/mcp",
    tool_rate_limit: str | None = "60/minute",
    tool_limits: Mapping[str, str] | None = None,
    timeout: float | None = 30.0,
    tool_timeouts: Mapping[str, float | None] | None = None,
    concurrency: ConcurrencyLayer = 100,
    storage: str | Any = "memory://",
    trusted_proxies: Any = None,
    redis: str | Any | None = None,
    telemetry: Telemetry | bool = True,
) -> A:
    """The stack for an MCP app: :class:`MCPMiddleware` outermost, then problems, tool rate limits
    and the concurrency limit (the POST exchanges are timed by the MCP middleware itself).

    Typed as the app you passed (like :func:`~asgi_resilience.resilient`); the returned object
    forwards attribute access to it.

    .. versionadded:: 0.1.0
    """
    rules = tool_rules(tool_rate_limit=tool_rate_limit, tool_limits=tool_limits, trusted_proxies=trusted_proxies)
    stack = ResilienceStack(
        rate_limit={"rules": rules, "storage": storage, "trusted_proxies": trusted_proxies} if rules else False,
        concurrency=concurrency,
        redis=redis,
        telemetry=telemetry,
    )
    wrapped = MCPMiddleware(
        stack.wrap(app),
        passthrough=app,
        path=path,
        timeout=timeout,
        tool_timeouts=tool_timeouts,
        telemetry=stack.telemetry,
    )
    return cast(A, wrapped)
