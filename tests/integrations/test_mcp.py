"""MCP end to end: the official SDK's MCPServer behind resilient_mcp under uvicorn on loopback, driven
by the SDK's own client in both protocol generations (session-based "legacy" and sessionless)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import uvicorn
from mcp import Client, MCPError
from mcp.server.mcpserver import MCPServer

from asgi_resilience import Telemetry
from asgi_resilience.integrations.mcp import MCPCall, MCPMiddleware, _parse, resilient_mcp
from asgi_resilience.policies import circuit_breaker, fallback, pipeline
from asgi_resilience.testing import free_port

MODES = ["legacy", "2026-07-28"]


def make_server(events: list[str]) -> MCPServer:
    server = MCPServer("test-tools")

    @server.tool()
    async def echo(text: str) -> str:
        return text

    @server.tool()
    async def slow(seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            events.append("slow cancelled")
            raise
        events.append("slow finished")
        return "done"

    @server.tool()
    async def fail() -> str:
        raise ValueError("tool failed")

    async def upstream(city: str) -> str:
        raise ConnectionError("unreachable")

    @server.tool()
    @pipeline(fallback("no forecast"), circuit_breaker(f"test-forecast-{id(events)}"))
    async def forecast(city: str) -> str:
        return await upstream(city)

    return server


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - polls uvicorn's flag, no event to wait on
                await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            server.should_exit = True


def build(events: list[str], **options: Any) -> Any:
    defaults: dict[str, Any] = {"tool_rate_limit": "100/minute", "timeout": 1.0, "concurrency": 10}
    return resilient_mcp(make_server(events).streamable_http_app(), **{**defaults, **options})


async def error_of(call: Callable[[], Any]) -> MCPError:
    with pytest.raises(MCPError) as caught:
        await call()
    return caught.value


@pytest.mark.parametrize("mode", MODES)
async def test_tools_work_and_tool_errors_stay_tool_errors(mode: str) -> None:
    async with serving(build([])) as url, Client(url, mode=mode) as client:
        result = await client.call_tool("echo", {"text": "hi"})
        assert result.content[0].text == "hi"  # type: ignore[union-attr]
        failed = await client.call_tool("fail", {})
        assert failed.is_error
        guarded = await client.call_tool("forecast", {"city": "Oslo"})
        assert guarded.content[0].text == "no forecast"  # type: ignore[union-attr]  # the policies' fallback


@pytest.mark.parametrize("mode", MODES)
async def test_a_slow_tool_gets_a_jsonrpc_timeout_and_is_cancelled(mode: str) -> None:
    events: list[str] = []
    telemetry = Telemetry()
    async with serving(build(events, timeout=0.5, telemetry=telemetry)) as url, Client(url, mode=mode) as client:
        started = time.monotonic()
        error = await error_of(lambda: client.call_tool("slow", {"seconds": 5}))
        elapsed = time.monotonic() - started
        assert error.code == -32004 and error.data["status"] == 504 and error.data["type"] == "timeout"
        assert elapsed < 2.5  # the 0.5 s deadline, not the tool's 5 s
        with anyio.fail_after(3):
            while "slow cancelled" not in events:  # noqa: ASYNC110 - the server's task records it
                await anyio.sleep(0.02)
        assert "slow finished" not in events
        counted = telemetry.snapshot()["metrics"]["asgi_resilience.timeouts"]
        assert sum(point["value"] for point in counted) == 1  # counted once, not logged
        assert (await client.call_tool("echo", {"text": "still here"})).content[0].text == "still here"  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", MODES)
async def test_tool_calls_are_limited_per_tool_with_retry_after_in_the_error(mode: str) -> None:
    app = build([], tool_rate_limit="6/minute", tool_limits={"echo": "2/minute"})
    async with serving(app) as url, Client(url, mode=mode) as client:
        for _ in range(5):
            await client.list_tools()  # protocol traffic is not counted
        for _ in range(2):
            await client.call_tool("echo", {"text": "x"})
        error = await error_of(lambda: client.call_tool("echo", {"text": "x"}))
        assert error.code == -32029 and error.data["status"] == 429
        assert error.data["retryAfter"] > 0 and error.data["type"] == "rate-limited"
        assert (await client.call_tool("fail", {})).is_error  # another tool still has quota (a tool error)
        admitted = 0
        for _ in range(6):
            try:
                await client.call_tool("forecast", {"city": "x"})
            except MCPError as exc:
                assert exc.code == -32029 and "mcp-tools" in exc.data["violated_policies"]
                break
            admitted += 1
        assert admitted == 3  # 6 per client: 2 echo and 1 fail admitted (the rejected echo took nothing)


async def test_standing_streams_take_no_concurrency_slot_and_sessions_end() -> None:
    """Session-based clients each hold a standing GET stream; with one slot, tool calls still pass."""
    async with serving(build([], concurrency=1)) as url:
        async with Client(url, mode="legacy") as first, Client(url, mode="legacy") as second:
            await anyio.sleep(0.2)  # both standing GET streams are open
            for client in (first, second, first):
                assert (await client.call_tool("echo", {"text": "ok"})).content[0].text == "ok"  # type: ignore[union-attr]
        # each client's DELETE went through (the context exits without an error); a third client works
        async with Client(url, mode="legacy") as third:
            await third.call_tool("echo", {"text": "ok"})


@pytest.mark.parametrize("mode", MODES)
async def test_overload_is_a_jsonrpc_error_with_retry_after(mode: str) -> None:
    async with serving(build([], concurrency=1, timeout=5.0)) as url:
        async with Client(url, mode=mode) as busy, Client(url, mode=mode) as other:
            results: list[Any] = []

            async def hold() -> None:
                results.append(await busy.call_tool("slow", {"seconds": 0.8}))

            async with anyio.create_task_group() as group:
                group.start_soon(hold)
                await anyio.sleep(0.3)
                error = await error_of(lambda: other.call_tool("echo", {"text": "x"}))
            assert error.code == -32003 and error.data["status"] == 503 and error.data["retryAfter"] >= 1
            assert results[0].content[0].text == "done"


def test_parse_reads_method_id_and_tool() -> None:
    call = _parse(b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}', "s1")
    assert call == MCPCall("tools/call", 7, "echo", "s1") and call.is_tool_call
    assert not _parse(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', None).is_tool_call
    assert not _parse(b'{"jsonrpc":"2.0","method":"notifications/initialized"}', None).is_tool_call
    assert not _parse(b'{"jsonrpc":"2.0","id":1,"result":{}}', None).is_tool_call
    assert _parse(b"not json", None).is_tool_call  # unreadable bodies count as tool calls
    assert _parse(b"[]", None).is_tool_call


def test_bad_options_fail_clearly() -> None:
    from asgi_resilience import ConfigurationError

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(ConfigurationError, match="timeout"):
        MCPMiddleware(app, timeout=0)
    with pytest.raises(ConfigurationError, match="path"):
        MCPMiddleware(app, path="mcp")
    with pytest.raises(ValueError):
        resilient_mcp(app, tool_limits={"echo": "lots"})


@pytest.mark.parametrize("mode", MODES)
async def test_the_example_end_to_end(mode: str) -> None:
    from tests.test_examples import ROOT, load

    example = load(ROOT / "examples" / "mcp_server.py")
    async with serving(example.app) as url, Client(url, mode=mode) as client:
        assert (await client.call_tool("echo", {"text": "hi"})).content[0].text == "hi"  # type: ignore[union-attr]
        forecast = await client.call_tool("forecast", {"city": "nowhere"})
        assert forecast.content[0].text == "forecast unavailable, try again later"  # type: ignore[union-attr]
        error = await error_of(lambda: client.call_tool("slow", {"seconds": 5}))
        assert error.code == -32004 and error.data["status"] == 504
        with anyio.fail_after(3):
            while example.CANCELLED != ["slow"]:  # noqa: ASYNC110 - the server's task records it
                await anyio.sleep(0.02)
