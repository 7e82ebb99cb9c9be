"""The public test helpers: ManualClock, ASGIHarness, RedisServer."""

from __future__ import annotations

import socket

import pytest

from asgi_resilience.testing import ASGIHarness, ManualClock, RedisServer, http_scope
from asgi_resilience.types import Receive, Scope, Send

from .conftest import require_redis_binary


def test_manual_clock_moves_only_forward() -> None:
    clock = ManualClock(10)
    assert clock() == 10
    clock.advance(2.5)
    assert clock() == 12.5
    clock.set(20)
    assert clock() == 20
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.set(1)


async def test_harness_records_messages_and_body_chunks() -> None:
    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": body[:3], "more_body": True})
        await send({"type": "http.response.body", "body": body[3:]})
        assert (await receive())["type"] == "http.disconnect"

    h = await ASGIHarness(chunks=[b"hel", b"lo"]).run(echo, http_scope("POST", "/x"))
    assert h.types == ["http.response.start", "http.response.body", "http.response.body"]
    assert (h.status, h.body, h.header("X-A"), h.complete, h.start_count) == (201, b"hello", "1", True, 1)
    assert h.header_values("x-a") == ["1"]


async def test_harness_send_after_disconnect_raises() -> None:
    h = ASGIHarness(disconnect_after=1)
    await h.send({"type": "http.response.start", "status": 200, "headers": []})
    await h.send({"type": "http.response.body", "body": b"a", "more_body": True})
    assert (await h.receive())["type"] == "http.request"
    assert (await h.receive())["type"] == "http.disconnect"
    with pytest.raises(OSError):
        await h.send({"type": "http.response.body", "body": b"b"})
    with pytest.raises(AssertionError, match="no http.response.start"):
        _ = ASGIHarness().start


def test_http_scope_websocket_and_host() -> None:
    scope = http_scope("GET", "/ws", type="websocket", headers=[("X-Y", "z")])
    assert scope["type"] == "websocket" and "method" not in scope and scope["scheme"] == "ws"
    assert (b"host", b"testserver") in scope["headers"] and (b"x-y", b"z") in scope["headers"]


@pytest.mark.redis
def test_redis_server_kill_and_restart_on_the_same_port() -> None:
    require_redis_binary()
    with RedisServer() as server:
        assert server.ping()
        port = server.port
        server.kill()
        assert not server.ping()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        server.start()
        assert server.ping() and server.port == port
        assert server.url == f"redis://127.0.0.1:{port}/0"


@pytest.mark.redis
def test_redis_url_fixture_gives_a_flushed_server(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("k", "v")
    finally:
        client.close()


@pytest.mark.redis
def test_redis_command_counts_leaves_out_its_own_bookkeeping(redis_url: str) -> None:
    import redis

    from asgi_resilience.testing import redis_command_counts

    before = redis_command_counts(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("a", 1)
        client.set("b", 2)
        client.get("a")
    finally:
        client.close()
    after = redis_command_counts(redis_url)
    assert after.get("set", 0) - before.get("set", 0) == 2
    assert after.get("get", 0) - before.get("get", 0) == 1
    assert "info" not in after and "hello" not in after
