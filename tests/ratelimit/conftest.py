from __future__ import annotations

import math
from typing import Any

import http_sf

from asgi_resilience.testing import ASGIHarness
from asgi_resilience.types import Receive, Scope, Send


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def parse_headers(h: ASGIHarness) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Parse RateLimit-Policy and RateLimit with a structured-field parser; both must be valid Lists."""
    policy_raw = h.header("ratelimit-policy")
    state_raw = h.header("ratelimit")
    assert policy_raw is not None and state_raw is not None
    policies = http_sf.parse(policy_raw.encode(), tltype="list")
    states = http_sf.parse(state_raw.encode(), tltype="list")
    policy = {name: params for name, params in policies}
    state = {name: params for name, params in states}
    assert set(policy) == set(state), (policy_raw, state_raw)
    for name, params in policy.items():
        assert isinstance(name, str)
        assert isinstance(params["q"], int) and params["q"] > 0
        assert isinstance(params["w"], int) and params["w"] > 0
        assert isinstance(state[name]["r"], int) and 0 <= state[name]["r"] <= params["q"]
        assert isinstance(state[name]["t"], int) and state[name]["t"] >= 0
    return policy, state


def retry_after(h: ASGIHarness) -> int:
    value = h.header("retry-after")
    assert value is not None and value.isdigit(), value
    return int(value)


def ceil(x: float) -> int:
    return math.ceil(x)
