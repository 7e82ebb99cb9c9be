"""The live dashboard app: access rules, routes, the JSON snapshot and the SSE stream."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from asgi_resilience import ConfigurationError, ResilienceStack, Telemetry, dashboard_app, resilient
from asgi_resilience.observability import default_telemetry
from asgi_resilience.testing import ASGIHarness
from asgi_resilience.testing import http_scope as base_scope
from asgi_resilience.types import Receive, Scope, Send


def http_scope(method: str = "GET", path: str = "/", **options: Any) -> Any:
    """Like the harness default, but addressed to localhost (the unauthenticated dashboard checks Host)."""
    options.setdefault("server", ("localhost", 8000))
    return base_scope(method, path, **options)


def open_dashboard(telemetry: Telemetry | None = None, **options: Any) -> Any:
    options.setdefault("allow_unauthenticated", True)
    return dashboard_app(telemetry or Telemetry(), **options)


def test_mounting_needs_auth_or_an_explicit_unauthenticated_opt_in() -> None:
    telemetry = Telemetry()
    with pytest.raises(ConfigurationError, match="auth=.*allow_unauthenticated=True"):
        dashboard_app(telemetry)
    with pytest.raises(ConfigurationError, match="either"):
        dashboard_app(telemetry, auth=lambda request: True, allow_unauthenticated=True)
    with pytest.raises(ConfigurationError, match="callable"):
        dashboard_app(telemetry, auth="secret")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="interval"):
        dashboard_app(telemetry, allow_unauthenticated=True, interval=0)
    with pytest.raises(ConfigurationError, match="stream_seconds"):
        dashboard_app(telemetry, allow_unauthenticated=True, stream_seconds=float("inf"))
    with pytest.raises(ConfigurationError, match="ResilienceStack"):
        dashboard_app(object(), allow_unauthenticated=True)


@pytest.mark.parametrize(
    ("client", "headers", "status"),
    [
        (("127.0.0.1", 5000), [], 200),
        (("127.9.9.9", 5000), [], 200),
        (("::1", 5000), [], 200),
        (("10.0.0.1", 5000), [], 403),
        (("2001:db8::1", 5000), [], 403),
        (("not-an-ip", 5000), [], 403),
        (None, [], 403),
        # a proxy on the same host makes everybody look local: forwarded requests are refused
        (("127.0.0.1", 5000), [("X-Forwarded-For", "203.0.113.9")], 403),
        (("127.0.0.1", 5000), [("Forwarded", "for=203.0.113.9")], 403),
        (("127.0.0.1", 5000), [("X-Real-IP", "203.0.113.9")], 403),
        # DNS rebinding: a foreign name that resolves to 127.0.0.1 is refused, local names are fine
        (("127.0.0.1", 5000), [("Host", "evil.example:8000")], 403),
        (("127.0.0.1", 5000), [("Host", "testserver")], 403),
        (("127.0.0.1", 5000), [("Host", "localhost:8000")], 200),
        (("127.0.0.1", 5000), [("Host", "app.localhost")], 200),
        (("127.0.0.1", 5000), [("Host", "127.0.0.1:8000")], 200),
        (("::1", 5000), [("Host", "[::1]:8000")], 200),
        (("::1", 5000), [("Host", "[::1")], 403),
        (("127.0.0.1", 5000), [("Host", "::1")], 200),
    ],
)
async def test_unauthenticated_mode_serves_loopback_clients_only(
    client: tuple[str, int] | None, headers: list[tuple[str, str]], status: int
) -> None:
    harness = await ASGIHarness().run(open_dashboard(), http_scope(path="/", client=client, headers=headers))
    assert harness.status == status
    assert harness.complete
    if status == 403:
        assert harness.header("content-type") == "application/problem+json"
        assert harness.json()["status"] == 403


async def test_auth_callable_sync_async_and_raising() -> None:
    seen: list[str | None] = []

    def sync_auth(request: Request) -> bool:
        seen.append(request.headers.get("authorization"))
        return request.headers.get("authorization") == "Bearer s3cret"

    async def async_auth(request: Request) -> bool:
        return request.headers.get("x-token") == "t"

    def broken(request: Request) -> bool:
        raise RuntimeError("auth backend down")

    def truthy(request: Request) -> Any:
        return "yes"  # only True lets a request in

    telemetry = Telemetry()
    remote = ("203.0.113.5", 4000)
    sync_app = dashboard_app(telemetry, auth=sync_auth)
    ok = await ASGIHarness().run(sync_app, http_scope(client=remote, headers=[("Authorization", "Bearer s3cret")]))
    assert ok.status == 200
    denied = await ASGIHarness().run(sync_app, http_scope(client=remote, headers=[("Authorization", "Bearer x")]))
    assert denied.status == 403
    assert seen == ["Bearer s3cret", "Bearer x"]
    async_app = dashboard_app(telemetry, auth=async_auth)
    assert (await ASGIHarness().run(async_app, http_scope(client=remote, headers=[("X-Token", "t")]))).status == 200
    assert (await ASGIHarness().run(async_app, http_scope(client=remote))).status == 403
    assert (await ASGIHarness().run(dashboard_app(telemetry, auth=broken), http_scope(client=remote))).status == 403
    assert (await ASGIHarness().run(dashboard_app(telemetry, auth=truthy), http_scope(client=remote))).status == 403


async def test_page_is_self_contained_with_a_strict_content_security_policy() -> None:
    harness = await ASGIHarness().run(open_dashboard(), http_scope(path="/"))
    assert harness.status == 200
    assert harness.header("content-type") == "text/html; charset=utf-8"
    assert harness.header("cache-control") == "no-store"
    page = harness.body.decode()
    csp = harness.header("content-security-policy") or ""
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    # the one inline script is allowed by its hash, nothing else can run
    import base64
    import hashlib

    script = page[page.index("<script>") + len("<script>") : page.index("</script>")]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp
    # no external resource of any kind
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "EventSource" in page


async def test_page_is_served_at_the_mount_root_with_or_without_slash() -> None:
    for scope in (
        http_scope(path="/_resilience", root_path="/_resilience"),  # Starlette Mount
        http_scope(path="/_resilience/", root_path="/_resilience"),
        http_scope(path="/", root_path=""),  # Litestar strips the mount path
        http_scope(path="", root_path=""),
    ):
        harness = await ASGIHarness().run(open_dashboard(), scope)
        assert harness.status == 200 and b"<title>asgi-resilience dashboard</title>" in harness.body
    stripped = await ASGIHarness().run(open_dashboard(), http_scope(path="/snapshot.json/"))
    assert stripped.status == 200 and "metrics" in stripped.json()
    head = await ASGIHarness().run(open_dashboard(), http_scope("HEAD", path="/"))
    assert head.status == 200 and head.body == b""


async def test_snapshot_reports_metrics_components_and_transitions() -> None:
    telemetry = Telemetry()
    telemetry.instrument("asgi_resilience.rate_limit.requests").add(3, {"rule": "api", "result": "allowed"})
    transitions = telemetry.instrument("asgi_resilience.circuit_breaker.transitions")
    transitions.add(1, {"origin": "http://up:80", "from": "closed", "to": "open"})
    telemetry.register_snapshot("weird", lambda: {"nan": float("nan"), "inf": float("-inf"), "tuple": (1, 2)})
    app = open_dashboard(telemetry)
    harness = await ASGIHarness().run(app, http_scope(path="/_resilience/snapshot.json", root_path="/_resilience"))
    assert harness.status == 200
    assert harness.header("content-type") == "application/json"
    data = harness.json()
    assert data["metrics"]["asgi_resilience.rate_limit.requests"] == [
        {"attributes": {"result": "allowed", "rule": "api"}, "value": 3}
    ]
    assert data["components"]["weird"] == {"nan": None, "inf": None, "tuple": [1, 2]}
    (event,) = data["events"]["asgi_resilience.circuit_breaker.transitions"]
    assert event["attributes"] == {"origin": "http://up:80", "from": "closed", "to": "open"}
    assert data["time"] > 0 and data["interval"] == 1.0
    # the plain name works too, and HEAD sends no body
    head = await ASGIHarness().run(app, http_scope("HEAD", path="/snapshot"))
    assert head.status == 200 and head.body == b""


async def test_snapshot_of_a_stack_lists_its_layers_in_order() -> None:
    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    stack = ResilienceStack(telemetry=Telemetry())
    wrapped = stack.wrap(ok)
    for source in (stack, wrapped):
        data = (await ASGIHarness().run(open_dashboard(source), http_scope(path="/snapshot.json"))).json()
        assert data["layers"] == ["problems"]
    data = (await ASGIHarness().run(open_dashboard(True), http_scope(path="/snapshot.json"))).json()
    assert set(data) >= {"metrics", "components", "events"}
    assert default_telemetry().snapshot().keys() == {"metrics", "components", "events"}
    assert resilient(ok).stack.telemetry is default_telemetry()


async def test_unknown_paths_methods_and_scopes() -> None:
    app = open_dashboard()
    missing = await ASGIHarness().run(app, http_scope(path="/nope"))
    assert missing.status == 404 and missing.header("content-type") == "application/problem+json"
    post = await ASGIHarness().run(app, http_scope("POST", path="/"))
    assert post.status == 405 and post.header("allow") == "GET, HEAD"
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    await app(http_scope(path="/stream", type="websocket"), receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
    await app({"type": "lifespan"}, receive, send)  # nothing to do, nothing sent
    assert len(sent) == 1


async def test_stream_sends_snapshots_until_the_client_disconnects() -> None:
    telemetry = Telemetry()
    telemetry.instrument("asgi_resilience.timeouts").add(1, {"phase": "before_start"})
    app = open_dashboard(telemetry, interval=0.01)
    harness = await ASGIHarness(disconnect_after=4).run(app, http_scope(path="/stream"))
    assert harness.status == 200
    assert harness.header("content-type") == "text/event-stream; charset=utf-8"
    assert harness.header("cache-control") == "no-store"
    bodies = [m["body"] for m in harness.messages if m["type"] == "http.response.body"]
    assert bodies[0] == b"retry: 2000\n\n"
    events = [b for b in bodies[1:] if b]
    assert len(events) >= 3
    for event in events:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        data = json.loads(event[len(b"data: ") :])
        assert data["metrics"]["asgi_resilience.timeouts"] == [{"attributes": {"phase": "before_start"}, "value": 1}]


async def test_stream_ends_after_stream_seconds_and_head_has_no_body() -> None:
    app = open_dashboard(interval=0.01, stream_seconds=0.05)
    harness = await ASGIHarness().run(app, http_scope(path="/stream"))
    assert harness.complete
    assert harness.messages[-1] == {"type": "http.response.body", "body": b""}
    assert sum(1 for m in harness.messages if m.get("body", b"").startswith(b"data: ")) >= 2
    head = await ASGIHarness().run(app, http_scope("HEAD", path="/stream"))
    assert head.status == 200 and head.body == b"" and head.complete


async def test_stream_stops_quietly_when_send_fails() -> None:
    app = open_dashboard(interval=0.01)
    calls = 0

    async def receive() -> Any:
        import anyio

        await anyio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError("client gone")

    await app(http_scope(path="/stream"), receive, send)
    assert calls == 3


async def test_mounted_in_starlette_next_to_a_resilient_app() -> None:
    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    telemetry = Telemetry()
    stack = ResilienceStack(telemetry=telemetry)
    app = Starlette(routes=[Route("/", home), Mount("/_resilience", dashboard_app(stack, allow_unauthenticated=True))])
    wrapped = stack.wrap(app)
    transport = httpx.ASGITransport(app=wrapped, client=("127.0.0.1", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        assert (await client.get("/")).text == "hi"
        page = await client.get("/_resilience/")
        assert page.status_code == 200 and "EventSource" in page.text
        snap = await client.get("/_resilience/snapshot.json")
        assert snap.json()["layers"] == ["problems"]
    remote = httpx.ASGITransport(app=wrapped, client=("198.51.100.7", 1234))
    async with httpx.AsyncClient(transport=remote, base_url="http://localhost") as client:
        assert (await client.get("/_resilience/snapshot.json")).status_code == 403


async def test_close_ends_open_streams_within_one_interval() -> None:
    import anyio

    app = open_dashboard(interval=0.01, stream_seconds=60)
    harness = ASGIHarness()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(harness.run, app, http_scope(path="/stream"))
            await anyio.sleep(0.05)
            assert not harness.complete
            app.close()
    assert harness.complete and harness.messages[-1] == {"type": "http.response.body", "body": b""}
    late = await ASGIHarness().run(app, http_scope(path="/stream"))  # after close: retry hint, then the end
    assert [m.get("body") for m in late.messages[1:]] == [b"retry: 2000\n\n", b""]


async def test_the_first_snapshot_already_carries_rates_and_series() -> None:
    import anyio

    telemetry = Telemetry()
    requests = telemetry.instrument("asgi_resilience.rate_limit.requests")
    app = open_dashboard(telemetry, interval=0.05)
    try:
        for _ in range(4):  # traffic while nobody watches: the sampler thread keeps the history
            requests.add(10, {"rule": "api", "result": "allowed"})
            await anyio.sleep(0.06)
        data = (await ASGIHarness().run(app, http_scope(path="/snapshot.json"))).json()
    finally:
        app.close()
    history = data["history"]
    assert history["interval"] == 0.05 and history["since"] is None and len(history["times"]) >= 3
    (series,) = [s for s in history["series"] if s["name"] == "asgi_resilience.rate_limit.requests"]
    assert series["attributes"] == {"rule": "api", "result": "allowed"}
    assert len(series["rate"]) == len(history["times"])
    assert sum(1 for rate in series["rate"] if rate > 0) >= 2  # real rates on first paint, not 0.0/s


async def test_the_stream_sends_the_whole_history_first_then_only_what_is_new() -> None:
    telemetry = Telemetry()
    telemetry.instrument("asgi_resilience.timeouts").add(1, {"phase": "before_start"})
    app = open_dashboard(telemetry, interval=0.02)
    try:
        harness = await ASGIHarness(disconnect_after=6).run(app, http_scope(path="/stream"))
    finally:
        app.close()
    events = [
        json.loads(m["body"][len(b"data: ") :]) for m in harness.messages if m.get("body", b"").startswith(b"data")
    ]
    assert len(events) >= 4
    assert events[0]["history"]["since"] is None
    sent: list[float] = []
    increments = 0
    for event in events:
        history = event["history"]
        if history["since"] is None:  # the whole ring: until a first interval was sent
            assert not sent
            sent = list(history["times"])
        else:  # only intervals newer than the last one sent, never a repeated one
            assert history["since"] == sent[-1]
            assert all(t > sent[-1] for t in history["times"])
            sent += history["times"]
            increments += 1
    assert increments >= 2 and sent == sorted(set(sent)) and len(sent) >= 3


async def test_close_stops_the_history_sampler() -> None:
    import anyio

    app = open_dashboard(interval=0.01)
    assert app.history is not None
    app.close()
    await anyio.sleep(0.05)
    size = len(app.history._ring)
    await anyio.sleep(0.05)
    assert len(app.history._ring) == size


@pytest.mark.timeout(15)
async def test_a_receive_that_never_suspends_cannot_keep_the_stream_alive() -> None:
    # Without a checkpoint in the disconnect watcher, this receive starves the event loop for ever:
    # the stream never ends and the task never sees its cancellation.
    app = open_dashboard(interval=0.01, stream_seconds=0.05)
    calls = 0

    async def receive() -> Any:
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    try:
        await app(http_scope(path="/stream"), receive, send)
    finally:
        app.close()
    assert sent[-1] == {"type": "http.response.body", "body": b""} and calls > 1


async def test_snapshot_carries_what_the_policy_panels_show() -> None:
    """Named breakers and bulkheads (live state), refusals, rejections, fallbacks and retries (series)."""
    import anyio

    from asgi_resilience import CircuitOpenError, Overloaded
    from asgi_resilience.policies import bulkhead, circuit_breaker, fallback, retry

    telemetry = Telemetry()
    app = open_dashboard(telemetry, interval=0.05)
    breaker = circuit_breaker("llm", consecutive_failures=1, minimum_calls=1, break_duration=60, telemetry=telemetry)
    db = bulkhead("db", max_concurrent=1, max_queue=0, telemetry=telemetry)
    tries = 0

    @fallback("cached", name="answer", telemetry=telemetry)
    @retry(attempts=2, on=ConnectionError, wait_initial=0, wait_max=0, name="answer", telemetry=telemetry)
    @breaker
    async def answer() -> str:
        nonlocal tries
        tries += 1
        raise ConnectionError("down")

    try:
        assert await answer() == "cached"  # fails, opens the breaker; the retry is refused; falls back
        with pytest.raises(CircuitOpenError):
            await breaker(anyio.sleep)(0)
        async with db:
            with pytest.raises(Overloaded):
                async with db:
                    pass
            await anyio.sleep(0.12)  # a sample or two with the slot held
            data = (await ASGIHarness().run(app, http_scope(path="/snapshot.json"))).json()
    finally:
        app.close()
    assert tries == 1
    (named,) = [b for b in data["components"]["circuit_breakers"] if b["kind"] == "named"]
    assert named["origin"] == "llm" and named["state"] == "open" and named["failure_rate"] == 1.0
    assert data["components"]["bulkheads"] == [
        {"name": "db", "active": 1, "queued": 0, "max_concurrent": 1, "max_queue": 0, "rejected": 1}
    ]
    metrics = data["metrics"]
    assert metrics["asgi_resilience.circuit_breaker.refused"] == [{"attributes": {"policy": "llm"}, "value": 2}]
    assert metrics["asgi_resilience.bulkhead.rejected"] == [
        {"attributes": {"bulkhead": "db", "reason": "queue_full"}, "value": 1}
    ]
    assert metrics["asgi_resilience.fallbacks"] == [{"attributes": {"policy": "answer", "kind": "value"}, "value": 1}]
    assert metrics["asgi_resilience.retries"] == [{"attributes": {"policy": "answer"}, "value": 1}]
    charted = {s["name"] for s in data["history"]["series"] if "rate" in s and sum(s["rate"]) > 0}
    assert {"asgi_resilience.circuit_breaker.refused", "asgi_resilience.bulkhead.rejected"} <= charted
