"""RateLimitMiddleware on raw ASGI apps: exact messages, headers, keys, proxies, WebSocket, shadow."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from asgi_resilience import RateLimitMiddleware, Rule
from asgi_resilience._proxy import TrustedProxies
from asgi_resilience.errors import ConfigurationError
from asgi_resilience.observability import Telemetry
from asgi_resilience.ratelimit import MemoryStorage
from asgi_resilience.testing import ASGIHarness, ManualClock, http_scope
from asgi_resilience.types import Message, Receive, Scope, Send

from .conftest import ok_app, parse_headers, retry_after


def limiter(*rules: Rule, app: Any = ok_app, clock: ManualClock | None = None, **options: Any) -> RateLimitMiddleware:
    return RateLimitMiddleware(app, rules=list(rules), clock=clock or ManualClock(1000.0), **options)


async def run(mw: Any, method: str = "GET", path: str = "/", **kw: Any) -> ASGIHarness:
    return await ASGIHarness().run(mw, http_scope(method, path, **kw))


STRATEGIES = ["sliding-window", "fixed-window", "moving-window", "gcra"]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_limit_then_429_problem_with_headers(strategy: str) -> None:
    clock = ManualClock(1000.0)
    mw = limiter(Rule("3/minute", name="basic"), clock=clock, strategy=strategy)
    for expected_remaining in (2, 1, 0):
        h = await run(mw)
        assert h.status == 200 and h.body == b"ok"
        policy, state = parse_headers(h)
        assert policy == {"basic": {"q": 3, "w": 60}}
        assert state["basic"]["r"] == expected_remaining
        assert h.header("retry-after") is None  # only on 429
    h = await run(mw)
    assert h.types == ["http.response.start", "http.response.body"]
    assert h.status == 429
    assert h.header("content-type") == "application/problem+json"
    body = h.json()
    assert body["type"].endswith("rate-limited") and body["status"] == 429
    assert body["violated_policies"] == ["basic"]
    wait = retry_after(h)
    _, state = parse_headers(h)
    assert state["basic"]["r"] == 0 and state["basic"]["t"] == wait  # headers agree with the decision
    # Retry-After is never earlier than the real reset: a retry one second before it still fails ...
    clock.advance(wait - 1)
    assert (await run(mw)).status == 429
    # ... and one at Retry-After succeeds
    clock.advance(1)
    assert (await run(mw)).status == 200


async def test_app_never_runs_when_rejected() -> None:
    calls = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["path"])
        await ok_app(scope, receive, send)

    mw = limiter(Rule("1/minute"), app=app)
    await run(mw)
    await run(mw)
    assert calls == ["/"]


async def test_retry_after_rounds_up_fractional_waits() -> None:
    clock = ManualClock(1000.4)
    mw = limiter(Rule("1/second"), clock=clock, strategy="fixed-window")
    await run(mw)
    h = await run(mw)
    assert retry_after(h) == 1  # 0.6 s -> 1, never 0
    mw = limiter(Rule("2/minute"), clock=ManualClock(1000.0), strategy="gcra")
    await run(mw)
    await run(mw)
    assert retry_after(await run(mw)) == 30


@pytest.mark.parametrize("status", [401, 404, 500])
async def test_headers_on_every_response_status(status: int) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": ((b"x-app", b"1"),)})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})

    h = await run(limiter(Rule("5/minute"), app=app))
    assert h.status == status
    assert h.header("x-app") == "1"
    assert h.body == b"parttwo"  # streamed through, not buffered
    assert h.types == ["http.response.start", "http.response.body", "http.response.body"]
    _, state = parse_headers(h)
    assert state["5/minute"]["r"] == 4


async def test_app_exception_propagates_unchanged() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await run(limiter(Rule("5/minute"), app=app))


async def test_head_request_gets_429_without_body() -> None:
    mw = limiter(Rule("1/minute"))
    await run(mw, "HEAD")
    h = await run(mw, "HEAD")
    assert h.status == 429 and h.body == b""


async def test_several_rules_and_multi_limit_policies_parse() -> None:
    mw = limiter(
        Rule("100/minute", name="all"),
        Rule("2/second;5/minute", path="/api/*", methods=["POST"], name="writes"),
        strategy="gcra",
    )
    h = await run(mw, "POST", "/api/items")
    policy, state = parse_headers(h)
    assert policy == {"all": {"q": 100, "w": 60}, "writes/1s": {"q": 2, "w": 1}, "writes/60s": {"q": 5, "w": 60}}
    assert state["writes/1s"]["r"] == 1 and state["writes/60s"]["r"] == 4 and state["all"]["r"] == 99
    h = await run(mw, "GET", "/api/items")  # the POST-only rule does not match
    policy, state = parse_headers(h)
    assert set(policy) == {"all"}
    await run(mw, "POST", "/api/items")
    h = await run(mw, "POST", "/api/items")
    assert h.status == 429 and h.json()["violated_policies"] == ["writes"]
    _, state = parse_headers(h)
    assert state["all"]["r"] == 97  # the rejected request consumed nothing


async def test_legacy_and_both_and_no_headers() -> None:
    h = await run(limiter(Rule("5/minute"), Rule("2/second", name="fast"), headers="legacy", strategy="fixed-window"))
    assert h.header("ratelimit") is None and h.header("ratelimit-policy") is None
    assert (h.header("x-ratelimit-limit"), h.header("x-ratelimit-remaining")) == ("2", "1")
    assert h.header("x-ratelimit-reset") == "1"
    h = await run(limiter(Rule("5/minute"), headers="both"))
    assert h.header("x-ratelimit-remaining") == "4" and h.header("ratelimit") is not None
    mw = limiter(Rule("1/minute"), headers=None)
    h = await run(mw)
    assert not [k for k, _ in h.headers if "ratelimit" in k]
    h = await run(mw)
    assert h.status == 429 and h.header("retry-after") is not None
    assert not [k for k, _ in h.headers if "ratelimit" in k]


async def test_policy_names_are_escaped_structured_strings() -> None:
    h = await run(limiter(Rule("5/minute", name='say "hi" \\ there')))
    policy, _ = parse_headers(h)
    assert list(policy) == ['say "hi" \\ there']


async def test_exempt_paths_and_callables() -> None:
    mw = limiter(Rule("1/minute"), exempt=["/health", "/metrics*"])
    for _ in range(3):
        h = await run(mw, path="/health")
        assert h.status == 200 and h.header("ratelimit") is None
        assert (await run(mw, path="/metrics/x")).status == 200
    assert (await run(mw, path="/")).status == 200
    assert (await run(mw, path="/")).status == 429
    mw = limiter(Rule("1/minute"), exempt="/ping")
    await run(mw, path="/ping")
    assert (await run(mw, path="/ping")).status == 200

    async def is_internal(scope: Scope) -> bool:
        return scope["client"][0].startswith("10.")

    mw = limiter(Rule("1/minute"), exempt=is_internal)
    for _ in range(3):
        assert (await run(mw, client=("10.1.1.1", 1))).status == 200
    await run(mw, client=("8.8.8.8", 1))
    assert (await run(mw, client=("8.8.8.8", 1))).status == 429
    mw = limiter(Rule("1/minute"), exempt=lambda scope: scope["path"] == "/sync")
    await run(mw, path="/sync")
    assert (await run(mw, path="/sync")).status == 200


async def test_shadow_rule_and_global_shadow_never_reject(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry()
    mw = limiter(Rule("1/minute", name="dark", shadow=True), Rule("5/minute", name="real"), telemetry=telemetry)
    with caplog.at_level(logging.INFO, logger="asgi_resilience.ratelimit"):
        statuses = [(await run(mw)).status for _ in range(5)]
    assert statuses == [200] * 5
    assert (await run(mw)).status == 429  # the enforced rule still applies
    totals = dict(telemetry.snapshot()["metrics"].items())["asgi_resilience.rate_limit.requests"]
    counted = {(e["attributes"]["rule"], e["attributes"]["result"]): e["value"] for e in totals}
    assert counted[("dark", "shadow_limited")] == 5 and counted[("dark", "allowed")] == 1
    assert counted[("real", "limited")] == 1 and counted[("real", "allowed")] == 5
    assert any("shadow" in r.getMessage() and "dark" in r.getMessage() for r in caplog.records)

    mw = limiter(Rule("1/minute"), shadow=True)
    for _ in range(4):
        h = await run(mw)
        assert h.status == 200
    _, state = parse_headers(h)
    assert state["1/minute"]["r"] == 0


async def test_key_shorthands() -> None:
    mw = limiter(Rule("1/minute", key="header:X-API-Key"))
    assert (await run(mw, headers=[("x-api-key", "a")])).status == 200
    assert (await run(mw, headers=[("x-api-key", "b")])).status == 200
    assert (await run(mw, headers=[("x-api-key", "a")])).status == 429
    # no header: keyed by the client address instead
    assert (await run(mw, client=("1.1.1.1", 1))).status == 200
    assert (await run(mw, client=("1.1.1.1", 1))).status == 429
    assert (await run(mw, client=("2.2.2.2", 1))).status == 200

    mw = limiter(Rule("1/minute", key="global"))
    assert (await run(mw, client=("1.1.1.1", 1))).status == 200
    assert (await run(mw, client=("2.2.2.2", 1))).status == 429

    class User:
        is_authenticated = True

        def __init__(self, name: str) -> None:
            self.username = name

    class Anonymous:
        is_authenticated = False

    mw = limiter(Rule("1/minute", key="user"))
    assert (await run(mw, user=User("ann"), client=("1.1.1.1", 1))).status == 200
    assert (await run(mw, user=User("bob"), client=("1.1.1.1", 1))).status == 200
    assert (await run(mw, user=User("ann"), client=("2.2.2.2", 1))).status == 429
    assert (await run(mw, user={"id": 7})).status == 200
    assert (await run(mw, user={"id": 7})).status == 429
    assert (await run(mw, user=Anonymous(), client=("3.3.3.3", 1))).status == 200
    assert (await run(mw, client=("3.3.3.3", 1))).status == 429  # anonymous: by address

    async def tenant(scope: Scope) -> str | None:
        return dict(scope["headers"]).get(b"x-tenant", b"").decode() or None

    mw = limiter(Rule("1/minute", key=tenant))
    assert (await run(mw, headers=[("x-tenant", "t1")])).status == 200
    assert (await run(mw, headers=[("x-tenant", "t1")])).status == 429
    for _ in range(3):  # None: the rule does not apply
        h = await run(mw)
        assert h.status == 200 and h.header("ratelimit") is None
    mw = limiter(Rule("1/minute", key=lambda scope: scope["path"]))
    assert (await run(mw, path="/a")).status == 200
    assert (await run(mw, path="/b")).status == 200
    assert (await run(mw, path="/a")).status == 429


async def test_cost_int_and_callables() -> None:
    mw = limiter(Rule("10/minute", cost=4))
    assert [(await run(mw)).status for _ in range(3)] == [200, 200, 429]

    async def by_size(scope: Scope) -> int:
        return int(dict(scope["headers"]).get(b"x-size", b"1"))

    mw = limiter(Rule("10/minute", cost=by_size))
    h = await run(mw, headers=[("x-size", "7")])
    _, state = parse_headers(h)
    assert state["10/minute"]["r"] == 3
    assert (await run(mw, headers=[("x-size", "4")])).status == 429
    assert (await run(mw, headers=[("x-size", "3")])).status == 200


async def test_tiers_through_a_callable_limit() -> None:
    tiers = {"free": "10/minute", "standard": "60/minute", "premium": "300/minute", "enterprise": "1000/minute"}
    keys = {"k-free": "free", "k-std": "standard", "k-prem": "premium", "k-ent": "enterprise"}

    async def plan(scope: Scope) -> str | None:
        api_key = dict(scope["headers"]).get(b"x-api-key", b"").decode()
        if api_key == "k-internal":
            return None  # unlimited
        return tiers[keys.get(api_key, "free")]

    mw = limiter(Rule(plan, key="header:X-API-Key", name="plan"))
    for api_key, quota in [("k-free", 10), ("k-std", 60), ("k-prem", 300), ("k-ent", 1000)]:
        statuses = [(await run(mw, headers=[("x-api-key", api_key)])).status for _ in range(quota + 2)]
        assert statuses.count(200) == quota, api_key
        h = await run(mw, headers=[("x-api-key", api_key)])
        policy, _ = parse_headers(h)
        assert policy == {"plan": {"q": quota, "w": 60}}
    for _ in range(20):
        h = await run(mw, headers=[("x-api-key", "k-internal")])
        assert h.status == 200 and h.header("ratelimit") is None

    mw = limiter(Rule(lambda scope: "2/minute", name="sync"))
    assert [(await run(mw)).status for _ in range(3)] == [200, 200, 429]


async def test_a_failing_callable_fails_only_its_own_rule(caplog: pytest.LogCaptureFixture) -> None:
    """X-Batch-Size: abc used to drop every rule: 20 of 20 admitted against a 5/minute per-IP rule."""

    def batch_size(request: Any) -> int:
        return int(request.headers.get("x-batch-size", "1"))  # raises on "abc"

    rules = [Rule("5/minute", name="per-ip"), Rule("1000/minute", key="global", cost=batch_size, name="batch")]
    for mode, first in (("skip", 200), ("deny", 429)):
        mw = limiter(*rules, on_callable_error=mode, telemetry=Telemetry())
        with caplog.at_level(logging.ERROR, logger="asgi_resilience.ratelimit"):
            statuses = [(await run(mw, headers=[("x-batch-size", "abc")])).status for _ in range(20)]
        if mode == "skip":  # the failing rule is left out; the per-IP rule still counts
            assert statuses == [200] * 5 + [429] * 15
        else:  # the failing rule refuses, with nothing to wait for
            assert statuses == [429] * 20
            h = await run(mw, headers=[("x-batch-size", "abc")])
            assert h.header("retry-after") is None and h.json()["violated_policies"] == ["batch"]
        assert statuses[0] == first
        totals = mw._telemetry.instrument("asgi_resilience.rate_limit.requests").totals
        assert sum(v for k, v in totals.items() if dict(k)["result"] == "callable_error") >= 20
    # logged once per interval per rule (with the traceback), not once per request
    assert len([r for r in caplog.records if "callable failed" in r.getMessage()]) == 2


async def test_bad_callable_results_are_callable_errors_too() -> None:
    for rule in (
        Rule("5/minute", cost=lambda request: -3),
        Rule(lambda request: "not a rate"),
        Rule(lambda request: "20000/minute"),
    ):
        options: dict[str, Any] = {"strategy": "moving-window"}
        assert (await run(limiter(rule, on_callable_error="skip", **options))).status == 200
        assert (await run(limiter(rule, **options))).status == 429


async def test_a_cost_above_the_limit_is_refused_without_a_retry_after_that_cannot_come_true() -> None:
    mw = limiter(Rule("5/minute", cost=lambda request: 10, name="bulk"))
    h = await run(mw)
    assert h.status == 429 and h.header("retry-after") is None
    assert h.json()["violated_policies"] == ["bulk"]
    shadow = limiter(Rule("5/minute", cost=lambda request: 10, shadow=True))
    assert (await run(shadow)).status == 200
    with pytest.raises(ConfigurationError, match="no request could ever be admitted"):
        Rule("5/minute", cost=6)


async def test_trusted_proxy_and_spoofing() -> None:
    # no trusted proxy: a spoofed X-Forwarded-For does not give a fresh bucket
    mw = limiter(Rule("1/minute"))
    assert (await run(mw, client=("9.9.9.9", 1), headers=[("x-forwarded-for", "1.1.1.1")])).status == 200
    assert (await run(mw, client=("9.9.9.9", 1), headers=[("x-forwarded-for", "2.2.2.2")])).status == 429

    mw = limiter(Rule("1/minute"), trusted_proxies=["10.0.0.0/8"])
    via_proxy = {"client": ("10.0.0.5", 1)}
    # the proxy appended the real client; the leftmost entry is the client's own spoof
    h = await run(mw, headers=[("x-forwarded-for", "6.6.6.6, 1.1.1.1")], **via_proxy)
    assert h.status == 200
    assert (await run(mw, headers=[("x-forwarded-for", "7.7.7.7, 1.1.1.1")], **via_proxy)).status == 429
    assert (await run(mw, headers=[("x-forwarded-for", "2.2.2.2")], **via_proxy)).status == 200
    assert (await run(mw, headers=[("forwarded", 'for="[2001:db8::1]:443"')], **via_proxy)).status == 200
    assert (await run(mw, headers=[("forwarded", "for=2001:db8::2")], **via_proxy)).status == 429  # same /64
    # an untrusted peer cannot speak for others
    assert (await run(mw, client=("5.5.5.5", 1), headers=[("x-forwarded-for", "3.3.3.3")])).status == 200
    assert (await run(mw, client=("5.5.5.5", 1), headers=[("x-forwarded-for", "4.4.4.4")])).status == 429

    mw = limiter(Rule("1/minute"), trusted_proxies=1)
    assert (await run(mw, client=("203.0.113.1", 1), headers=[("x-forwarded-for", "6.6.6.6, 1.1.1.1")])).status == 200
    assert (await run(mw, client=("203.0.113.2", 1), headers=[("x-forwarded-for", "1.1.1.1")])).status == 429
    mw = limiter(Rule("1/minute"), trusted_proxies=TrustedProxies(["10.0.0.0/8"], header="x-forwarded-for"))
    assert mw.proxies.enabled


async def test_forwarding_header_without_trusted_proxy_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    mw = limiter(Rule("100/minute"))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            await run(mw, headers=[("x-forwarded-for", "1.1.1.1")])
    assert len([r for r in caplog.records if "trusted_proxies" in r.getMessage()]) == 1


async def test_ipv6_clients_are_keyed_by_prefix() -> None:
    mw = limiter(Rule("1/minute"))
    assert (await run(mw, client=("2001:db8:1:2::1", 1))).status == 200
    assert (await run(mw, client=("2001:db8:1:2:ffff::9", 1))).status == 429  # same /64
    # rotating /64s inside one /56 earns no fresh quota (the default prefix is /56)
    for subnet in range(3, 8):
        assert (await run(mw, client=(f"2001:db8:1:{subnet}::1", 1))).status == 429
    assert (await run(mw, client=("2001:db8:1:100::1", 1))).status == 200  # the next /56
    mw = limiter(Rule("1/minute"), ipv6_prefix=64)
    assert (await run(mw, client=("2001:db8:1:2::1", 1))).status == 200
    assert (await run(mw, client=("2001:db8:1:3::1", 1))).status == 200  # next /64
    mw = limiter(Rule("1/minute"), ipv6_prefix=128)
    assert (await run(mw, client=("2001:db8::1", 1))).status == 200
    assert (await run(mw, client=("2001:db8::2", 1))).status == 200
    mw = limiter(Rule("1/minute"), ipv6_prefix=48)
    assert (await run(mw, client=("2001:db8:1:2::1", 1))).status == 200
    assert (await run(mw, client=("2001:db8:1:9::1", 1))).status == 429
    mw = limiter(Rule("1/minute"))
    assert (await run(mw, client=None)).status == 200
    assert (await run(mw, client=None)).status == 429  # no peer: one shared "unknown" bucket


async def test_clients_behind_a_unix_socket_proxy_get_their_own_buckets() -> None:
    """nginx -> uvicorn --uds: the peer has no address; "unix" (or a hop count) trusts it."""
    for trusted in (["unix"], 1):
        mw = limiter(Rule("1/minute"), trusted_proxies=trusted)
        for client_ip, expected in (("198.51.100.1", 200), ("198.51.100.2", 200), ("198.51.100.1", 429)):
            h = await run(mw, client=None, headers=[("x-forwarded-for", client_ip)])
            assert h.status == expected, (trusted, client_ip)


def ws_scope(extensions: dict[str, Any] | None = None, **kw: Any) -> Scope:
    return http_scope(path="/ws", type="websocket", extensions=extensions or {}, **kw)


class WSClient:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.received = 0

    async def receive(self) -> Message:
        self.received += 1
        if self.received == 1:
            return {"type": "websocket.connect"}
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(self, message: Message) -> None:
        self.sent.append(dict(message))


async def ws_app(scope: Scope, receive: Receive, send: Send) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": 1000})


async def test_websocket_handshake_denied_with_http_response_extension() -> None:
    mw = limiter(Rule("1/minute"), app=ws_app)
    first = WSClient()
    await mw(ws_scope({"websocket.http.response": {}}), first.receive, first.send)
    assert [m["type"] for m in first.sent] == ["websocket.accept", "websocket.close"]
    names = [k for k, _ in first.sent[0]["headers"]]
    assert b"ratelimit" in names and b"ratelimit-policy" in names
    second = WSClient()
    await mw(ws_scope({"websocket.http.response": {}}), second.receive, second.send)
    assert [m["type"] for m in second.sent] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert second.sent[0]["status"] == 429
    headers = dict(second.sent[0]["headers"])
    assert headers[b"content-type"] == b"application/problem+json" and int(headers[b"retry-after"]) > 0
    assert b"rate-limited" in second.sent[1]["body"]


async def test_websocket_handshake_denied_with_close_1008_without_extension() -> None:
    mw = limiter(Rule("1/minute"), app=ws_app, headers=None)
    first = WSClient()
    await mw(ws_scope(), first.receive, first.send)
    assert first.sent[0] == {"type": "websocket.accept"}
    second = WSClient()
    await mw(ws_scope(), second.receive, second.send)
    assert len(second.sent) == 1
    assert second.sent[0]["type"] == "websocket.close" and second.sent[0]["code"] == 1008


async def test_lifespan_and_other_scopes_pass_through() -> None:
    seen = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    mw = limiter(Rule("1/minute", key="global"), app=app)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    for _ in range(3):
        await mw({"type": "lifespan"}, receive, send)
    await mw({"type": "custom"}, receive, send)
    assert seen == ["lifespan"] * 3 + ["custom"]


async def test_no_matching_rule_passes_through_without_headers() -> None:
    h = await run(limiter(Rule("1/minute", path="/api/*")), path="/other")
    assert h.status == 200 and h.header("ratelimit") is None


async def test_per_request_state_is_not_shared_between_concurrent_requests() -> None:
    import anyio

    mw = limiter(Rule("50/minute"))
    results: list[int] = []

    async def one() -> None:
        h = await run(mw)
        results.append(h.status)

    async with anyio.create_task_group() as tg:
        for _ in range(80):
            tg.start_soon(one)
    assert results.count(200) == 50 and results.count(429) == 30


async def test_reset_and_snapshot() -> None:
    telemetry = Telemetry()
    mw = limiter(Rule("1/minute", name="one"), telemetry=telemetry)
    await run(mw)
    assert (await run(mw)).status == 429
    snap = telemetry.snapshot()["components"]["rate_limit"]
    assert snap["storage"] == "memory" and snap["rules"] == ["one"] and snap["keys"] == 1
    await mw.reset()
    assert (await run(mw)).status == 200


async def test_custom_storage_object_is_used() -> None:
    storage = MemoryStorage(clock=ManualClock(0.0))
    mw = RateLimitMiddleware(ok_app, rules=[Rule("1/minute")], storage=storage)
    await run(mw)
    assert len(storage) == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"strategy": "leaky-bucket"}, "strategy"),
        ({"rules": ["100/minute"]}, "Rule objects"),
        ({"rules": [Rule("1/second"), Rule("2/second", name="1/second")]}, "unique"),
        ({"on_store_error": "ignore"}, "on_store_error"),
        ({"store_timeout": 0}, "store_timeout"),
        ({"store_cooldown": 99}, "store_cooldown"),
        ({"headers": "draft-7"}, "headers"),
        ({"ipv6_prefix": 129}, "ipv6_prefix"),
        ({"ipv6_prefix": True}, "ipv6_prefix"),
        ({"exempt": [3]}, "exempt"),
        ({"storage": "memcached://x"}, "storage"),
        ({"storage": 42}, "storage"),
        ({"trusted_proxies": ["nope"]}, "trusted_proxies"),
        ({"rules": [Rule("20000/minute")], "strategy": "moving-window"}, "moving-window"),
        ({"telemetry": "yes"}, "telemetry"),
    ],
)
def test_configuration_errors(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RateLimitMiddleware(ok_app, **options)


async def test_failing_exempt_callable_and_custom_storage_never_500(caplog: pytest.LogCaptureFixture) -> None:
    def broken_exempt(scope: Scope) -> bool:
        raise RuntimeError("exempt lookup down")

    mw = limiter(Rule("1/minute"), exempt=broken_exempt)
    with caplog.at_level(logging.ERROR, logger="asgi_resilience.ratelimit"):
        assert (await run(mw)).status == 200
        assert (await run(mw)).status == 429  # not exempt: still limited
    assert any("exempt" in r.getMessage() for r in caplog.records)

    class BrokenStorage(MemoryStorage):
        name = "broken"

        async def hit(self, strategy: str, checks: Any) -> Any:
            raise ValueError("bug in a custom storage")

    for mode, status in (("open", 200), ("closed", 503), ("local", 200)):
        mw = RateLimitMiddleware(ok_app, rules=[Rule("5/minute")], storage=BrokenStorage(), on_store_error=mode)
        assert (await run(mw)).status == status
