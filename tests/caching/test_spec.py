"""The request state machine without ASGI: each transition of on_request / on_response (RFC 9111, RFC 5861)."""

from __future__ import annotations

from typing import Any

import pytest

from asgi_resilience.caching._policy import CacheRule, Entry, build_entry, decide_store, request_directives
from asgi_resilience.caching._spec import (
    Forward,
    FreshHit,
    Miss,
    NotCached,
    Pass,
    RequestFacts,
    Revalidate,
    StaleHit,
    StaleOnError,
    StorePolicy,
    StoreStreamed,
    StoreWhole,
    UseUpdated,
    on_request,
    on_response,
)

T = 1_700_000_000.0
POLICY = StorePolicy(max_body_size=100)


def facts(cache_control: str = "", **kw: Any) -> RequestFacts:
    headers = [(b"cache-control", cache_control.encode())] if cache_control else []
    return RequestFacts(method=kw.pop("method", "GET"), directives=request_directives(headers), **kw)


def stored(cache_control: str = "max-age=60", **kw: Any) -> Entry:
    headers = [(b"cache-control", cache_control.encode()), *kw.pop("extra", [])]
    decision = decide_store(
        method="GET",
        status=200,
        headers=headers,
        request_time=T,
        response_time=T,
        has_authorization=False,
        rule=None,
        default_swr=0.0,
        default_sie=0.0,
    )
    assert decision.store
    return build_entry(
        decision, status=200, headers=headers, body=b"x", request_time=T, response_time=T, vary=(), tags=(), index="/"
    )


def respond(req: RequestFacts, status: int = 200, *pairs: tuple[str, str], **kw: Any) -> Any:
    headers = [(k.encode(), v.encode()) for k, v in pairs]
    return on_response(
        req, status, headers, request_time=T, response_time=kw.pop("now", T), rule=None, policy=POLICY, **kw
    )


def test_request_side_transitions() -> None:
    entry = stored("max-age=60, stale-while-revalidate=30")
    assert on_request(entry, facts(), T + 10) == FreshHit(entry)
    assert on_request(entry, facts(), T + 70) == StaleHit(entry)  # within stale-while-revalidate
    assert on_request(entry, facts(), T + 100) == Revalidate(entry)  # beyond it
    assert on_request(entry, facts("no-cache"), T + 10) == Revalidate(entry)
    assert on_request(entry, facts("max-age=5"), T + 10) == Revalidate(entry)
    assert on_request(entry, facts("max-stale=60"), T + 100) == FreshHit(entry)
    assert on_request(None, facts(), T) == Miss()
    assert on_request(None, facts("only-if-cached"), T) == NotCached()
    assert on_request(None, facts(), T, passing=True) == Pass()
    assert on_request(entry, facts(), T + 10, passing=True) == FreshHit(entry)  # never skipped
    assert on_request(entry, facts(has_auth=True), T + 10) == Miss()  # stored for anonymous requests only


def test_must_revalidate_never_serves_stale() -> None:
    entry = stored("max-age=60, must-revalidate, stale-while-revalidate=30")
    assert on_request(entry, facts(), T + 70) == Revalidate(entry)


def test_response_side_transitions() -> None:
    req = facts()
    assert isinstance(respond(req, 200, ("cache-control", "max-age=60"), ("content-length", "5")), StoreWhole)
    assert isinstance(respond(req, 200, ("cache-control", "max-age=60")), StoreStreamed)
    assert respond(req, 200, ("cache-control", "max-age=60"), ("content-length", "500")) == Forward("too-large", True)
    # Transfer-Encoding makes the announced length meaningless
    te = respond(req, 200, ("cache-control", "max-age=60"), ("content-length", "5"), ("transfer-encoding", "chunked"))
    assert isinstance(te, StoreStreamed)
    assert respond(req, 200, ("cache-control", "no-store")) == Forward("no-store", True)
    assert respond(req, 200, ("cache-control", "max-age=60"), ("content-type", "text/event-stream")) == Forward(
        "event-stream", True
    )
    assert respond(facts(method="HEAD"), 200, ("cache-control", "max-age=60")) == Forward("method")
    assert respond(req, 200, ("cache-control", "max-age=60"), trailers=True) == Forward("trailers")
    entry = stored("max-age=10, stale-if-error=60", extra=[(b"etag", b'"a"')])
    assert respond(req, 304, validated=True, stale=entry, now=T + 20) == UseUpdated()
    assert respond(req, 503, stale=entry, now=T + 20) == StaleOnError()
    assert respond(req, 503, stale=entry, now=T + 200) == Forward("not-fresh", True)  # beyond stale-if-error


@pytest.mark.parametrize(
    "kw", [{"has_auth": True}, {"ranged": True}, {"conditional": True}], ids=["authorization", "range", "conditional"]
)
def test_only_eligible_requests_mark_hit_for_pass(kw: dict[str, Any]) -> None:
    assert respond(facts(**kw), 200, ("cache-control", "private")) == Forward("private", False)


def test_a_fresh_entry_keeps_its_key_out_of_hit_for_pass() -> None:
    fresh = stored()
    assert respond(facts("no-cache"), 200, ("cache-control", "no-store"), stale=fresh, now=T + 1) == Forward(
        "no-store", False
    )
    assert respond(facts(), 200, ("cache-control", "no-store"), stale=fresh, now=T + 100) == Forward("no-store", True)


def test_rule_statuses_reach_the_store_decision() -> None:
    rule = CacheRule(ttl=60, statuses={200})
    step = on_response(facts(), 404, [], request_time=T, response_time=T, rule=rule, policy=POLICY)
    assert step == Forward("status", True)
    step = on_response(facts(), 404, [], request_time=T, response_time=T, rule=CacheRule(ttl=60), policy=POLICY)
    assert isinstance(step, StoreStreamed) and step.decision.lifetime == 60
