"""The one path-pattern language: every layer's path rules read a pattern the same way."""

from __future__ import annotations

from typing import Any

import pytest

from asgi_resilience import ConfigurationError
from asgi_resilience.testing import http_scope

PATTERNS = [
    ("/api/*", "/api/v1/users", True),
    ("/api/*", "/api/", True),
    ("/api/*", "/api", False),
    ("/a?c", "/abc", False),  # '?' is literal (it was "any character" in the limiter)
    ("/a?c", "/a?c", True),
    ("/v[12]/x", "/v1/x", False),  # '[' is literal (it was a character class in the limiter)
    ("/v[12]/x", "/v[12]/x", True),
    ("/a.c", "/abc", False),
    ("/a+", "/aa", False),
    ("*", "/anything/at/all", True),
    ("*.json", "/a/b.json", True),
    ("/x", "/x/y", False),
    ("/x", "/X", False),
    ("/files/*", "/files/a\nb", True),
]


def _matchers(pattern: str) -> dict[str, Any]:
    from asgi_resilience import CacheRule, Rule
    from asgi_resilience.timeouts._rules import PathRules

    rule = Rule("5/minute", path=pattern)
    cache_rule = CacheRule(path=pattern, ttl=1)
    timeout_rules = PathRules({pattern: 1.0})
    return {
        "Rule(path=)": lambda path: rule.matches("GET", path),
        "CacheRule(path=)": cache_rule.matches,
        "TimeoutMiddleware(rules=)": lambda path: timeout_rules.match(path)[0],
    }


@pytest.mark.parametrize(("pattern", "path", "expected"), PATTERNS)
def test_every_layer_reads_a_path_pattern_the_same_way(pattern: str, path: str, expected: bool) -> None:
    for layer, matches in _matchers(pattern).items():
        assert matches(path) is expected, (layer, pattern, path)


@pytest.mark.parametrize(("pattern", "path", "expected"), PATTERNS)
async def test_the_limiter_exempt_patterns_use_the_same_language(pattern: str, path: str, expected: bool) -> None:
    from asgi_resilience import RateLimitMiddleware, Rule
    from asgi_resilience.testing import ASGIHarness

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = RateLimitMiddleware(app, rules=[Rule("1/minute")], exempt=[pattern], telemetry=False)
    statuses = [(await ASGIHarness().run(mw, http_scope(path=path))).status for _ in range(2)]
    assert statuses == ([200, 200] if expected else [200, 429])


@pytest.mark.parametrize("pattern", ["api/*", "", "reports", 3])
def test_every_layer_refuses_a_pattern_that_cannot_match_a_path(pattern: Any) -> None:
    from asgi_resilience import CacheRule, RateLimitMiddleware, Rule, TimeoutMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    for build in (
        lambda: Rule("5/minute", path=pattern),
        lambda: RateLimitMiddleware(app, exempt=[pattern]),
        lambda: CacheRule(path=pattern),
        lambda: TimeoutMiddleware(app, rules={pattern: 1.0}),
    ):
        with pytest.raises(ConfigurationError):
            build()
