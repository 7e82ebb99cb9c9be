"""Every non-cache header parser, fed arbitrary Unicode: nothing escapes, only ASCII digits count.

RFC 5234 ``DIGIT`` is ``%x30-39``. Python's ``str.isdigit()`` is also true for ``"²"``, ``"٣"`` and
``"５"``, which ``int()`` then rejects or reads as a number; a header value must never reach that.
ASGI header values are bytes, so the text is sent both as UTF-8 and, where it fits, as Latin-1 (which
is how ``"²"`` arrives as one byte).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_resilience import ConfigurationError, RateLimitMiddleware, Rule, TimeoutMiddleware
from asgi_resilience._proxy import TrustedProxies, network_key, parse_forwarded, parse_x_forwarded_for
from asgi_resilience._redis import redis_client
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.timeouts._headers import client_timeout, parse_grpc_timeout, parse_timeout_ms
from asgi_resilience.types import Receive, Scope, Send

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNICODE_DIGITS = "²³¹٣५５𝟗"  # isdigit() is True for each, none is an RFC 5234 DIGIT
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.builds(
    lambda a, d, b: a + d + b, st.text(max_size=5), st.sampled_from(UNICODE_DIGITS), st.text(max_size=5)
)


def encodings(value: str) -> list[bytes]:
    out = [value.encode("utf-8")]
    try:
        out.append(value.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    return out


@FUZZ
@given(text)
def test_deadline_header_parsers(value: str) -> None:
    for raw in encodings(value):
        grpc = parse_grpc_timeout(raw)
        if grpc is not None:
            assert re.fullmatch(rb"[0-9]{1,8}[HMSmun]", raw.strip()) and grpc > 0
        ms = parse_timeout_ms(raw)
        if ms is not None:
            assert re.fullmatch(rb"[0-9]{1,10}", raw.strip()) and ms > 0
        names = frozenset({b"grpc-timeout", b"connect-timeout-ms", b"x-request-timeout"})
        found = client_timeout([(b"grpc-timeout", raw), (b"x-request-timeout", raw)], names)
        assert found is None or found > 0


@pytest.mark.parametrize("digit", list(UNICODE_DIGITS))
def test_unicode_digits_are_not_digits_in_deadline_headers(digit: str) -> None:
    for raw in encodings(f"1{digit}0"):
        assert parse_timeout_ms(raw) is None
        assert parse_grpc_timeout(raw + b"m") is None


def _is_ip(node: str) -> bool:
    try:
        ipaddress.ip_address(node)
    except ValueError:
        return False
    return node.isascii()


@FUZZ
@given(st.lists(text, max_size=4))
def test_forwarding_header_parsers(values: list[str]) -> None:
    for nodes in (parse_forwarded(values), parse_x_forwarded_for(values)):
        assert all(node is None or _is_ip(node) for node in nodes)


@FUZZ
@given(text, text, st.sampled_from(["auto", "forwarded", "x-forwarded-for"]))
def test_client_address_from_arbitrary_forwarding_headers(forwarded: str, xff: str, header: Any) -> None:
    for raw_forwarded, raw_xff in zip(encodings(forwarded), encodings(xff), strict=False):
        scope = http_scope(
            headers=[(b"forwarded", raw_forwarded), (b"x-forwarded-for", raw_xff)], client=("10.0.0.1", 1)
        )
        for proxies in (TrustedProxies(["10.0.0.0/8"], header=header), TrustedProxies(2, header=header)):
            ip = proxies.client_ip(scope)
            assert ip is None or _is_ip(ip)


@FUZZ
@given(text)
def test_network_key_never_raises(value: str) -> None:
    assert isinstance(network_key(value), str)


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@FUZZ
@given(text, st.sampled_from(["grpc-timeout", "connect-timeout-ms", "x-request-timeout", "x-forwarded-for"]))
def test_the_middlewares_answer_arbitrary_header_values_without_an_error(value: str, name: str) -> None:
    limiter = RateLimitMiddleware(
        _ok,
        rules=[Rule("1000/minute"), Rule("1000/minute", key="header:X-Key", name="by-key")],
        trusted_proxies=["10.0.0.0/8"],
        telemetry=False,
    )
    timed = TimeoutMiddleware(_ok, timeout=5.0, trusted_proxies=1, telemetry=False)

    async def main() -> None:
        for raw in encodings(value):
            headers = [(name.encode(), raw), (b"x-key", raw), (b"forwarded", raw)]
            for app in (limiter, timed):
                h = await ASGIHarness().run(app, http_scope(headers=headers, client=("10.0.0.1", 1)))
                assert h.status == 200

    anyio.run(main)


@FUZZ
@given(text)
def test_redis_url_port_and_database_numbers(value: str) -> None:
    """``redis+sentinel://host:<port>/service/<db>``: a port of Unicode digits is refused, never crashes."""
    for url in (f"redis+sentinel://127.0.0.1:{value}/mymaster", f"redis+sentinel://127.0.0.1:26379/mymaster/{value}"):
        try:
            redis_client(url)
        except ConfigurationError:
            assert value and not (value.isascii() and value.isdigit())
        except ValueError:
            pass  # redis-py refused the value itself (say a port out of range): its own clear error


@pytest.mark.parametrize("digit", list(UNICODE_DIGITS))
def test_unicode_digits_in_a_sentinel_port_are_refused(digit: str) -> None:
    with pytest.raises(ConfigurationError, match="ASCII digits"):
        redis_client(f"redis+sentinel://127.0.0.1:2637{digit}/mymaster")


def test_a_sentinel_node_without_a_port_uses_the_default() -> None:
    redis_client("redis+sentinel://127.0.0.1:26379,127.0.0.2/mymaster/2")
