"""An MCP server (the official SDK's MCPServer, Streamable HTTP) behind the stack, per exchange.

pip install 'asgi-resilience[demo]' mcp && python examples/mcp_server.py
Then, with the SDK's client (session-based: mode="legacy"; sessionless: mode="2026-07-28"):

    async with mcp.Client("http://127.0.0.1:8000/mcp") as client:
        await client.call_tool("echo", {"text": "hi"})      # 30 tool calls per client per minute
        await client.call_tool("slow", {"seconds": 5})      # MCPError -32004, data.status 504 after 1 s;
                                                            # the tool is cancelled on the server
        await client.call_tool("forecast", {"city": "Oslo"})  # guarded by breaker, bulkhead, time limit

Rejections reach the client as JSON-RPC errors: 429 -> -32029 and 503 -> -32003 with
``data.retryAfter`` (seconds); the standing GET stream and the session's DELETE are never limited.
"""

import asyncio
import os

from mcp.server.mcpserver import MCPServer

from asgi_resilience.integrations.mcp import resilient_mcp
from asgi_resilience.policies import bulkhead, circuit_breaker, fallback, pipeline, time_limit

server = MCPServer("resilient-tools")
CANCELLED: list[str] = []  # tools the deadline cancelled (read by the tests)


@server.tool()
async def echo(text: str) -> str:
    """Say it back."""
    return text


@server.tool()
async def slow(seconds: float) -> str:
    """Take a while (longer than the 1 s deadline is cut short)."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        CANCELLED.append("slow")
        raise
    return f"slept {seconds} s"


async def fetch_forecast(city: str) -> str:
    if city == "nowhere":
        raise ConnectionError("upstream weather service unreachable")
    await asyncio.sleep(0.01)
    return f"sunny in {city}"


# The function policies guard one tool: fallback -> total time limit -> breaker -> bulkhead.
guarded = pipeline(
    fallback("forecast unavailable, try again later"),
    time_limit(2.0),
    circuit_breaker("mcp-forecast"),
    bulkhead("mcp-forecast", 5),
)


@server.tool()
@guarded
async def forecast(city: str) -> str:
    """Today's weather for a city."""
    return await fetch_forecast(city)


app = resilient_mcp(
    server.streamable_http_app(),
    tool_rate_limit="30/minute",  # tool calls per client (initialize, tools/list, notifications are free)
    tool_limits={"slow": "5/minute"},  # per client and tool name
    timeout=1.0,  # each POST exchange, event-stream answers included
    concurrency=10,  # POST exchanges in flight; the standing GET streams take no slot
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
