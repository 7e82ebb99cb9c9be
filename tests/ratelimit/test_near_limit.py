"""The dashboard's near-limit count: how many clients have at most 10 % of a quota left."""

from __future__ import annotations

from asgi_resilience import RateLimitMiddleware, Rule
from asgi_resilience.testing import ASGIHarness, ManualClock, http_scope
from asgi_resilience.types import Receive, Scope, Send


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def hit(mw: RateLimitMiddleware, ip: str, times: int) -> list[int]:
    statuses = []
    for _ in range(times):
        h = await ASGIHarness().run(mw, http_scope(client=(ip, 1234)))
        statuses.append(h.status)
    return statuses


async def test_near_limit_counts_clients_not_requests_and_forgets_after_reset() -> None:
    clock = ManualClock(1000.0)
    mw = RateLimitMiddleware(ok_app, rules=[Rule("10/minute", name="api")], clock=clock, telemetry=False)
    assert mw.snapshot()["near_limit"] == {}
    await hit(mw, "192.0.2.1", 8)  # 2 left: not yet near
    await hit(mw, "192.0.2.2", 3)
    assert mw.snapshot()["near_limit"] == {}
    await hit(mw, "192.0.2.1", 1)  # 1 left of 10: near
    assert mw.snapshot()["near_limit"] == {"api": 1}
    assert await hit(mw, "192.0.2.3", 12) == [200] * 10 + [429] * 2  # limited clients count too
    assert mw.snapshot()["near_limit"] == {"api": 2}
    assert "192.0.2" not in repr(mw.snapshot())  # a count, never the client keys
    clock.advance(61)
    assert mw.snapshot()["near_limit"] == {"api": 0}


async def test_each_rule_counts_its_own_near_clients() -> None:
    clock = ManualClock(1000.0)
    rules = [Rule("100/minute", name="wide"), Rule("3/minute", path="/tight", name="tight")]
    mw = RateLimitMiddleware(ok_app, rules=rules, clock=clock, telemetry=False)
    for _ in range(3):
        await ASGIHarness().run(mw, http_scope(path="/tight", client=("192.0.2.9", 1)))
    assert mw.snapshot()["near_limit"] == {"tight": 1}
