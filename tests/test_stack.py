"""The stack builder: order, options and shorthands, shared Redis client, validation at construction.

The first half replaces the middleware classes with recording fakes, so order and wiring are checked
independently of each layer's behaviour; the second half builds the real layers.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import asgi_resilience.stack as stack_module
from asgi_resilience import ConfigurationError, ResilienceStack, ResilientApp, Telemetry, resilient
from asgi_resilience.observability import NOOP, default_telemetry
from asgi_resilience.stack import LAYER_ORDER
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import ASGIApp, Message, Receive, Scope, Send


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


class Rule:  # stands in for asgi_resilience.Rule (matched by class name, like the real one)
    def __init__(self, limit: str) -> None:
        self.limit = limit


def make_fake(name: str, trace: list[str], built: list[tuple[str, dict[str, Any]]]) -> type[Any]:
    class Fake:
        def __init__(
            self,
            app: ASGIApp,
            *,
            rules: Any = None,
            storage: Any = None,
            backend: Any = None,
            timeout: Any = None,
            max_concurrent: Any = None,
            queue_timeout: Any = None,
            mapping: Any = None,
            telemetry: Telemetry | bool = True,
        ) -> None:
            self.app = app
            options = {
                k: v
                for k, v in {
                    "rules": rules,
                    "storage": storage,
                    "backend": backend,
                    "timeout": timeout,
                    "max_concurrent": max_concurrent,
                    "queue_timeout": queue_timeout,
                    "mapping": mapping,
                    "telemetry": telemetry,
                }.items()
                if v is not None
            }
            built.append((name, options))

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            trace.append(name)
            await self.app(scope, receive, send)

    Fake.__name__ = f"Fake{name.title()}"
    return Fake


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    trace: list[str] = []
    built: list[tuple[str, dict[str, Any]]] = []
    classes = {name: make_fake(name, trace, built) for name in LAYER_ORDER}
    monkeypatch.setattr(stack_module, "_load_class", lambda spec: classes[spec.name])
    return trace, built


async def test_layers_run_in_the_documented_order(fakes: Any) -> None:
    trace, built = fakes
    telemetry = Telemetry()
    app = resilient(
        hello,
        rate_limit={"rules": [Rule("1/second")]},
        cache=True,
        timeout=5.0,
        concurrency=10,
        telemetry=telemetry,
    )
    assert isinstance(app, ResilientApp)
    assert app.stack.layers == ("problems", "rate_limit", "cache", "timeout", "concurrency")
    assert list(app.layers) == list(app.stack.layers)
    harness = await ASGIHarness().run(app, http_scope())
    assert harness.body == b"hello"
    assert trace == ["problems", "rate_limit", "cache", "timeout", "concurrency"]
    # built innermost first; every layer got the stack's telemetry object
    assert [name for name, _ in built] == ["concurrency", "timeout", "cache", "rate_limit", "problems"]
    assert all(options["telemetry"] is telemetry for _, options in built)
    assert app.app is hello
    assert app.layers["concurrency"].app is hello
    assert app.layers["problems"].app is app.layers["rate_limit"]
    assert "problems" in repr(app) and "problems" in repr(app.stack)


async def test_false_and_none_leave_layers_out(fakes: Any) -> None:
    trace, _ = fakes
    app = resilient(hello, problems=False, rate_limit=None, cache=False, timeout=2, concurrency=False)
    assert app.stack.layers == ("timeout",)
    await ASGIHarness().run(app, http_scope())
    assert trace == ["timeout"]
    bare = resilient(hello, problems=False)
    assert bare.stack.layers == () and bare.layers == {}
    assert (await ASGIHarness().run(bare, http_scope())).body == b"hello"


def test_shorthands_become_the_middleware_options(fakes: Any) -> None:
    _, built = fakes
    rule = Rule("5/minute")
    stack = ResilienceStack(
        rate_limit=rule, cache="memory://", timeout=timedelta(seconds=1.5), concurrency=3, telemetry=False
    )
    assert stack.options("rate_limit") == {"rules": [rule]}
    assert stack.options("cache") == {"backend": "memory://"}
    assert stack.options("timeout") == {"timeout": 1.5}
    assert stack.options("concurrency") == {"max_concurrent": 3}
    assert stack.options("problems") == {}
    with pytest.raises(KeyError):
        stack.options("nope")
    assert ResilienceStack(rate_limit=[rule, rule]).options("rate_limit") == {"rules": [rule, rule]}
    assert ResilienceStack(rate_limit=(rule,)).options("rate_limit") == {"rules": [rule]}
    assert ResilienceStack(problems={"mapping": {KeyError: 404}}).options("problems") == {"mapping": {KeyError: 404}}
    stack.wrap(hello)
    assert all(options["telemetry"] is NOOP for _, options in built)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "positive"),
        ({"timeout": float("nan")}, "positive"),
        ({"timeout": "10s"}, "number of seconds"),
        ({"concurrency": 0}, "at least 1"),
        ({"concurrency": 2.5}, "maximum number of concurrent"),
        ({"cache": 3}, "backend URL"),
        ({"rate_limit": 5}, "rate string"),
        ({"problems": "yes"}, "ProblemDetailsMiddleware options"),
        ({"cache": {1: "x"}}, "string keys"),
        ({"cache": {"bakend": "memory://"}}, "has no option 'bakend'"),
        ({"timeout": {"timeout": 1.0, "telemetry": False}}, "set telemetry= on the stack"),
        ({"timeout": 1.0, "concurrency": {"max_concurrent": 2, "queue_timeout": 1.0}}, "queue_timeout"),
        ({"timeout": {"timeout": 1.0}, "concurrency": {"max_concurrent": 2, "queue_timeout": "x"}}, "seconds"),
        ({"telemetry": "on"}, "telemetry must be"),
        ({"redis": "http://localhost"}, "redis://"),
    ],
)
def test_invalid_configurations_fail_at_construction(fakes: Any, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ResilienceStack(**options)


def test_a_queue_timeout_shorter_than_the_timeout_is_fine(fakes: Any) -> None:
    stack = ResilienceStack(timeout={"timeout": 2.0}, concurrency={"max_concurrent": 2, "queue_timeout": 0.5})
    assert stack.layers == ("problems", "timeout", "concurrency")


async def test_one_redis_client_is_shared_and_closed_on_shutdown(fakes: Any) -> None:
    _, built = fakes
    stack = ResilienceStack(
        rate_limit=[Rule("1/second")], cache=True, timeout=1.0, redis="redis://127.0.0.1:1/0", telemetry=False
    )
    client = stack.redis
    assert client is not None
    assert stack.options("rate_limit")["storage"] is client
    assert stack.options("cache")["backend"] is client
    assert "storage" not in stack.options("timeout")
    # a layer that names its own storage keeps it
    own = ResilienceStack(cache={"backend": "memory://"}, redis=client)
    assert own.options("cache") == {"backend": "memory://"}
    assert own.redis is client  # a client passed in is used as is ...

    closed: list[str] = []

    async def aclose() -> None:
        closed.append("closed")

    client.aclose = aclose  # type: ignore[method-assign]
    app = stack.wrap(hello)
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[Message] = []

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "lifespan.shutdown.complete":
            assert closed == ["closed"]  # closed before the server is told shutdown is complete

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    await own.aclose()  # ... and never closed by the stack
    assert closed == ["closed"]


def test_default_telemetry_and_transport_needs_redis_for_shared_state(fakes: Any) -> None:
    stack = ResilienceStack()
    assert stack.telemetry is default_telemetry()
    with pytest.raises(ConfigurationError, match="telemetry"):
        stack.transport(telemetry=False)
    with pytest.raises(ConfigurationError, match="redis"):
        stack.transport(shared_breaker_state=True)


async def test_problems_layer_is_real_and_maps_exceptions() -> None:
    async def boom(scope: Scope, receive: Receive, send: Send) -> None:
        raise KeyError("x")

    app = resilient(boom, problems={"mapping": {KeyError: 404}}, telemetry=Telemetry())
    harness = await ASGIHarness().run(app, http_scope())
    assert harness.status == 404
    assert harness.header("content-type") == "application/problem+json"


# --- the real layers --------------------------------------------------------------------------------------------


def counting_app(calls: dict[str, int], *, slow: dict[str, float] | None = None) -> ASGIApp:
    """Cacheable for 60 s; counts calls per path; sleeps ``slow[path]`` seconds when asked."""
    import anyio

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        calls[path] = calls.get(path, 0) + 1
        if slow and path in slow:
            await anyio.sleep(slow[path])
        if path == "/boom":
            raise RuntimeError("secret detail")
        headers = [(b"content-type", b"text/plain"), (b"cache-control", b"public, max-age=60, stale-if-error=600")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": f"{path} #{calls[path]}".encode()})

    return app


async def test_cached_responses_still_count_against_the_rate_limit() -> None:
    calls: dict[str, int] = {}
    app = resilient(counting_app(calls), rate_limit="3/minute", cache=True, telemetry=Telemetry())
    statuses = []
    for _ in range(4):
        harness = await ASGIHarness().run(app, http_scope(path="/item"))
        statuses.append(harness.status)
    assert statuses == [200, 200, 200, 429]
    assert calls == {"/item": 1}  # two of the three admitted requests were cache hits
    assert harness.header("content-type") == "application/problem+json"
    assert harness.json()["status"] == 429
    assert int(harness.header("retry-after") or 0) >= 1


async def test_stale_if_error_answers_for_a_timed_out_app() -> None:
    from asgi_resilience.testing import ManualClock

    clock = ManualClock(1_000_000.0)
    calls: dict[str, int] = {}
    slow: dict[str, float] = {}
    app = resilient(
        counting_app(calls, slow=slow),
        cache={"clock": clock},
        timeout=0.2,
        telemetry=Telemetry(),
    )
    first = await ASGIHarness().run(app, http_scope(path="/report"))
    assert first.status == 200 and first.body == b"/report #1"
    clock.advance(120)  # stale now, but within stale-if-error
    slow["/report"] = 5.0  # the app now takes longer than the timeout
    second = await ASGIHarness().run(app, http_scope(path="/report"))
    assert second.status == 200
    assert second.body == b"/report #1"  # the stored response answered for the 504
    assert calls["/report"] == 2


async def test_cache_hits_take_no_concurrency_slot() -> None:
    import anyio

    calls: dict[str, int] = {}
    app = resilient(
        counting_app(calls, slow={"/slow": 0.5}),
        cache=True,
        concurrency={"max_concurrent": 1, "max_queue": 0},
        telemetry=Telemetry(),
    )
    assert (await ASGIHarness().run(app, http_scope(path="/cached"))).status == 200  # now stored
    results: dict[str, int] = {}

    async def hit(path: str) -> None:
        results[path] = (await ASGIHarness().run(app, http_scope(path=path))).status

    async with anyio.create_task_group() as group:
        group.start_soon(hit, "/slow")  # holds the only slot for 0.5 s
        await anyio.sleep(0.1)
        await hit("/cached")  # served by the cache, outside the limiter
        await hit("/other")  # needs the app: shed
    assert results == {"/slow": 200, "/cached": 200, "/other": 503}
    assert calls == {"/cached": 1, "/slow": 1}


async def test_exceptions_of_the_app_become_problems_outermost() -> None:
    calls: dict[str, int] = {}
    app = resilient(counting_app(calls), rate_limit="10/minute", cache=True, timeout=1.0, concurrency=4)
    harness = await ASGIHarness().run(app, http_scope(path="/boom"))
    assert harness.status == 500
    assert harness.header("content-type") == "application/problem+json"
    assert b"secret" not in harness.body


async def test_in_starlette_error_problems_still_pass_through_every_layer() -> None:
    """ProblemDetailsMiddleware answers from inside Starlette, so the limiter's headers reach the 500 too."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def boom(request: Request) -> Response:
        raise RuntimeError("secret detail")

    app = resilient(Starlette(routes=[Route("/boom", boom)]), rate_limit="10/minute", timeout=1.0, concurrency=4)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "secret" not in response.text
    assert "ratelimit-policy" in response.headers


def test_real_layers_reject_unknown_options_and_take_a_cache_object() -> None:
    from asgi_resilience import Cache
    from asgi_resilience import Rule as RealRule

    rules = ResilienceStack(rate_limit=["5/second", RealRule("100/minute", name="m")]).options("rate_limit")["rules"]
    assert [type(rule) for rule in rules] == [RealRule, RealRule] and rules[1].name == "m"
    with pytest.raises(ConfigurationError, match="RateLimitMiddleware has no option 'rule'"):
        ResilienceStack(rate_limit={"rule": "1/second"})
    from asgi_resilience import CacheRule

    rule = CacheRule("/products/*", ttl=60)
    assert ResilienceStack(cache=rule).options("cache") == {"rules": [rule]}
    assert ResilienceStack(cache=[rule, rule]).options("cache") == {"rules": [rule, rule]}
    with pytest.raises(ConfigurationError, match="CacheRule"):
        ResilienceStack(cache=[rule, "x"])
    shared = Cache()
    stack = ResilienceStack(cache=shared, redis="redis://127.0.0.1:1/0")
    assert stack.options("cache") == {"cache": shared}  # the Cache brings its own backend
    with pytest.raises(ConfigurationError, match="queue_timeout"):
        resilient(hello, timeout=0.5, concurrency={"max_concurrent": 2, "queue_timeout": 2.0})


@pytest.mark.redis
async def test_one_redis_client_serves_the_limiter_and_the_cache(redis_url: str) -> None:
    import redis.asyncio as aioredis

    calls: dict[str, int] = {}
    app = resilient(counting_app(calls), rate_limit="5/minute", cache=True, redis=redis_url, telemetry=Telemetry())
    client = app.stack.redis
    assert isinstance(client, aioredis.Redis)
    assert app.stack.options("rate_limit")["storage"] is client
    assert app.stack.options("cache")["backend"] is client
    for _ in range(3):
        assert (await ASGIHarness().run(app, http_scope(path="/shared"))).status == 200
    assert calls == {"/shared": 1}
    keys = [key.decode() async for key in client.scan_iter()]
    assert any("cache" in key for key in keys), keys
    assert len(keys) >= 2, keys  # limiter counters and cache entries, in the same Redis
    # a second app (another worker) sharing Redis sees the same limit and the same cache
    other = resilient(counting_app(calls), rate_limit="5/minute", cache=True, redis=redis_url, telemetry=Telemetry())
    statuses = [(await ASGIHarness().run(other, http_scope(path="/shared"))).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert calls == {"/shared": 1}
    await app.stack.aclose()
    await other.stack.aclose()


@pytest.mark.redis
async def test_stack_transport_keeps_opt_in_breaker_state_in_the_same_redis(redis_url: str) -> None:
    import httpx

    from asgi_resilience import CircuitOpenError
    from asgi_resilience.client import BreakerPolicy

    calls = 0

    async def down(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"down"})

    stack = ResilienceStack(rate_limit="5/minute", redis=redis_url, telemetry=Telemetry())
    policy = BreakerPolicy(minimum_calls=2, failure_rate=0.5, break_duration=30.0)
    first = stack.transport(
        httpx.ASGITransport(app=down), shared_breaker_state=True, retry=None, breaker=policy, shared=False
    )
    async with httpx.AsyncClient(transport=first, base_url="http://shared-origin.test") as client:
        with pytest.raises(CircuitOpenError):
            for _ in range(5):
                await client.get("/")
    assert calls == 2
    keys = [key.decode() async for key in stack.redis.scan_iter()]
    assert any("shared-origin.test" in key for key in keys), keys
    # another worker's transport (its own local breaker, closed) learns from Redis that the origin is open
    second = stack.transport(
        httpx.ASGITransport(app=down), shared_breaker_state=True, retry=None, breaker=policy, shared=False
    )
    async with httpx.AsyncClient(transport=second, base_url="http://shared-origin.test") as client:
        with pytest.raises(CircuitOpenError):
            await client.get("/")
    assert calls == 2  # refused without touching the origin
    assert await stack.redis.ping()  # the transports did not close the stack's client
    await stack.aclose()


async def test_websockets_and_lifespan_pass_through_the_whole_stack() -> None:
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    started: list[str] = []

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        started.append("up")
        yield
        started.append("down")

    inner = Starlette(routes=[WebSocketRoute("/ws", echo)], lifespan=lifespan)
    app = resilient(inner, rate_limit="2/minute", cache=True, timeout=1.0, concurrency=2, telemetry=Telemetry())

    async def talk() -> list[Message]:
        incoming: list[Message] = [
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "hi"},
            {"type": "websocket.disconnect", "code": 1000},
        ]
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        await app(http_scope(path="/ws", type="websocket"), receive, send)
        return sent

    for _ in range(2):
        sent = await talk()
        assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
        assert sent[1]["text"] == "hi"
    denied = await talk()  # the third handshake is over the limit: refused before the app accepts it
    assert denied[0]["type"] in ("websocket.close", "websocket.http.response.start")
    assert all(m["type"] != "websocket.accept" for m in denied)

    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    lifespan_sent: list[Message] = []

    async def lifespan_receive() -> Message:
        return next(messages)

    async def lifespan_send(message: Message) -> None:
        lifespan_sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, lifespan_receive, lifespan_send)
    assert [m["type"] for m in lifespan_sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert started == ["up", "down"]
